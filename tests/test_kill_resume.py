"""`prune-and-export` killed (SIGKILL) inside every stage and re-run with the same command ends
with what an uninterrupted run writes: the same result files, byte-identical IRs, the same
eval numbers and report rows (speed aside), and no temporary left behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shedder_ov.cli import app
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.exporter import export_checkpoint
from shedder_ov.recipe import parse_recipe
from shedder_ov.workflow import run_prune_and_export

from .conftest import MODELS, SHARED, TRAIN_TEXT, require

# one stderr line that each stage prints as it starts; the kill lands right after it
KILL_POINTS = ("search", "removal:", "recover:", "export:", "compress:", "eval:", "bench:", "report:")
# what differs between any two runs: wall times, what this invocation did, the free memory it saw
VOLATILE_KEYS = {"evaluated_in_this_run", "resumed_from_step", "memory"}


def recipe_for(tmp_path: Path, checkpoint: Path, out: str) -> dict:
    text = tmp_path / "text.txt"
    if not text.exists():
        text.write_text(require(TRAIN_TEXT).read_text()[:20000])
    return {
        "model": str(checkpoint),
        "calibration": {"path": str(text), "num_samples": 4, "seq_len": 32, "batch_size": 4},
        "search": {"stop": {"num_components": 2}},
        "recovery": {"data": {"path": str(text)}, "held_out": {"path": str(text)}, "held_out_windows": 2, "seq_len": 32,
                     "batch_size": 2, "max_steps": 2, "save_every": 1},
        "export": {"variants": ["fp32", "int8"], "parity": False},  # parity has its own tests; here it is time only
        "eval": {"data_root": str(SHARED / "data"), "datasets": ["tinystories"], "seq_len": 32, "windows": 2,
                 "tasks": [], "bench": {"lengths": [16], "new_tokens": 2, "repeats": 1}},
        "output": str(tmp_path / out),
    }


def killed_at(recipe: Path, point: str, log: Path) -> bool:
    """Run the command until the stage `point` starts, then SIGKILL it; False if it finished first."""
    process = subprocess.Popen([sys.executable, "-m", "shedder_ov.cli", "prune-and-export", str(recipe)],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=recipe.parent)
    started = threading.Event()

    def watch() -> None:
        for line in process.stderr:
            if point != "search" and line.startswith(point):
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    while process.poll() is None and not started.is_set():
        if point == "search" and log.is_file() and log.read_text().count('"eval"') >= 3:
            break
        time.sleep(0.02)
    alive = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return alive


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS and "seconds" not in k}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def comparable(out: Path, name: str):
    """A result file of run `out` without wall times, counters of this invocation and its own path."""
    return without_volatile(json.loads((out / name).read_text().replace(str(out), "OUT")))


def report_rows(out: Path) -> list[dict]:
    speed = ("prefill_ms", "decode_tok_s", "decode_speedup")
    return [{k: v for k, v in row.items() if k not in speed} for row in comparable(out, "report.json")["rows"]]


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("openvino_*"))}


def test_export_and_compress_are_byte_identical(tmp_path, tiny_checkpoint):
    folder = tiny_checkpoint("mamba2")
    exported = CliRunner().invoke(app, ["export", str(folder), str(tmp_path / "a" / "fp32"), "--no-parity"])
    assert exported.exit_code == 0 and json.loads((tmp_path / "a" / "fp32" / "shedder_export.json").read_text())["parity"] is None
    export_checkpoint(folder, tmp_path / "b" / "fp32", parity=False)
    for run in ("a", "b"):
        compress_ir(tmp_path / run / "fp32", tmp_path / run / "int4", CompressOptions(mode="int4_asym"))
    assert digests(tmp_path / "a") == digests(tmp_path / "b") and len(digests(tmp_path / "a")) == 12


@pytest.mark.slow  # ~2 min on 2 cores: one whole run, nine killed or finishing ones
def test_killed_in_every_stage_resumes_to_the_same_result(tmp_path, tiny_checkpoint):
    real = os.environ.get("SHEDDER_KILL_REAL") == "1"  # by hand: the same on the trained mamba2-tiny (minutes)
    checkpoint = require(MODELS / "mamba2-tiny") if real else tiny_checkpoint("mamba2")
    run_prune_and_export(parse_recipe(recipe_for(tmp_path, checkpoint, "whole")))

    recipe = tmp_path / "killed.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(tmp_path, checkpoint, "killed")))
    out = tmp_path / "killed"
    hit = [point for point in KILL_POINTS if killed_at(recipe, point, out / "search" / "log.jsonl")]
    assert len(hit) >= len(KILL_POINTS) - 1, f"killed only at {hit}"  # the last stage may finish before its kill
    finished = subprocess.run([sys.executable, "-m", "shedder_ov.cli", "prune-and-export", str(recipe)],
                              capture_output=True, text=True, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]

    reference = tmp_path / "whole"
    records = ["search/result.json", "recovery/result.json", "summary.json"] + [f"eval/{p.name}" for p in (reference / "eval").iterdir()]
    for name in sorted(records):
        assert comparable(out, name) == comparable(reference, name), name
    assert digests(out) == digests(reference) and len(digests(out)) == 6 * 6  # 3 sources × 2 precisions × 6 IR files
    assert report_rows(out) == report_rows(reference)
    leftovers = [p for p in out.rglob(".*") if p.name != ".lock"]
    assert not leftovers, leftovers
