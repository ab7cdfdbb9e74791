"""prune-and-export end to end on a tiny random model: every stage, then the report."""

from __future__ import annotations

import json
import os

from shedder_ov.recipe import parse_recipe
from shedder_ov.workflow import run_prune_and_export, up_to_date

from .conftest import SHARED, TRAIN_TEXT, require


def test_prune_and_export_writes_the_study_report(tmp_path, tiny_checkpoint):
    (tmp_path / "calib.txt").write_text(require(TRAIN_TEXT).read_text()[:6000])
    recipe = parse_recipe({
        "model": str(tiny_checkpoint("mamba2")),
        "calibration": {"path": str(tmp_path / "calib.txt"), "num_samples": 4, "seq_len": 32, "batch_size": 4},
        "search": {"stop": {"num_components": 1}},
        "export": {"variants": ["fp32", "int8"]},
        "eval": {"data_root": str(SHARED / "data"), "datasets": ["tinystories"], "seq_len": 32, "windows": 2,
                 "tasks": ["piqa", "hellaswag"], "limit": 4, "bench": {"lengths": [16], "new_tokens": 4, "repeats": 1}},
        "output": str(tmp_path / "out"),
    })
    summary = run_prune_and_export(recipe)
    out = tmp_path / "out"
    assert set(summary["variants"]) == {"fp32", "int8"}
    assert summary["variants"]["fp32"]["parity_max_abs_diff"] < 1e-3
    assert summary["variants"]["fp32"]["ppl"] == json.loads((out / "eval" / "pruned-fp32.json").read_text())["ppl"]["tinystories"]["ppl"]
    report = json.loads((out / "report.json").read_text())
    rows = {(r["variant"], r["precision"]): r for r in report["rows"] if r["ir_mb"]}
    assert set(rows) == {(v, p) for v in ("original", "pruned") for p in ("fp32", "int8")}
    assert all(r["ppl"] and r["avg_acc"] is not None and r["decode_tok_s"] for r in rows.values())
    assert rows[("original", "fp32")]["decode_speedup"] == 1.0
    assert rows[("pruned", "fp32")]["params"] < rows[("original", "fp32")]["params"]
    assert (out / "search_path.png").stat().st_size and (out / "pareto.png").stat().st_size
    assert "| original | fp32 |" in (out / "report.md").read_text()
    bench = json.loads((out / "bench.json").read_text())  # the CPU and the defaults it picked are on record
    assert bench["cpu"]["model_name"] and bench["cpu_defaults"]["precision"] == bench["precision"]

    (out / "eval" / "original-int8.json").unlink()  # a finished stage is skipped; only the missing one reruns
    before = {name: (out / name).stat().st_mtime_ns for name in ("eval/pruned-int8.json", "bench.json", "ov/int8/openvino_model.bin")}
    run_prune_and_export(recipe)
    assert (out / "eval" / "original-int8.json").is_file()
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before


def test_results_of_a_regenerated_input_are_redone(tmp_path):
    """A stage's output counts as done only when written after its inputs: an IR re-exported
    (e.g. from a new recovered checkpoint) makes its eval and bench records stale."""
    ir, checkpoint, record = tmp_path / "ir", tmp_path / "ckpt", tmp_path / "eval.json"
    for folder, marker in ((ir, "openvino_model.xml"), (checkpoint, "config.json")):
        folder.mkdir()
        (folder / marker).write_text("{}")
    assert not up_to_date(record, ir)  # not written yet
    record.write_text("{}")
    os.utime(record, ns=(2_000_000_000_000_000_000,) * 2)
    assert up_to_date(record, ir, checkpoint)
    os.utime(ir / "openvino_model.xml", ns=(3_000_000_000_000_000_000,) * 2)  # the IR written again later
    assert not up_to_date(record, ir) and up_to_date(record, checkpoint)
