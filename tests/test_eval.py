"""Evaluation, benchmark and report: one code path for torch and OpenVINO, clear bad-input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shedder_ov.errors import ShedderError
from shedder_ov.evaluation.ppl import evaluate_ppl
from shedder_ov.evaluation.runtime import open_model
from shedder_ov.evaluation.zeroshot import evaluate_zeroshot, task_config, write_lm_eval_tasks

from .conftest import SHARED, tiny_model

DATA = SHARED / "data"


@pytest.fixture(scope="module")
def checkpoint_and_ir(tmp_path_factory, tokenizer):
    from shedder_ov.export.exporter import export_model

    root = tmp_path_factory.mktemp("eval")
    model = tiny_model("mamba")
    model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    export_model(model, root / "ir")
    tokenizer.save_pretrained(root / "ir")
    return root / "ckpt", root / "ir"


def test_ppl_torch_and_openvino_agree(checkpoint_and_ir):
    checkpoint, ir = checkpoint_and_ir
    torch_ppl = evaluate_ppl(open_model(checkpoint), ["tinystories"], DATA, seq_len=32, limit=3)["tinystories"]
    ov_ppl = evaluate_ppl(open_model(ir), ["tinystories"], DATA, seq_len=32, limit=3)["tinystories"]
    assert torch_ppl["tokens"] == ov_ppl["tokens"] == 3 * 31
    assert ov_ppl["ppl"] == pytest.approx(torch_ppl["ppl"], rel=1e-4)


def test_ppl_through_the_carried_state(checkpoint_and_ir):
    """--chunk feeds windows in pieces: token-by-token decode scores what one prefill scores
    (f32), and a chunked torch checkpoint is refused."""
    checkpoint, ir = checkpoint_and_ir
    whole = evaluate_ppl(open_model(ir), ["tinystories"], DATA, seq_len=32, limit=2)["tinystories"]
    for chunk in (1, 5):
        pieces = evaluate_ppl(open_model(ir, chunk=chunk), ["tinystories"], DATA, seq_len=32, limit=2)["tinystories"]
        assert pieces["tokens"] == whole["tokens"] and pieces["ppl"] == pytest.approx(whole["ppl"], rel=1e-4)
    with pytest.raises(ShedderError, match="--chunk: .* torch checkpoint"):
        open_model(checkpoint, chunk=1)


def test_weight_bytes_follow_the_executed_precision(checkpoint_and_ir, tmp_path):
    """Bandwidth accounting: f32 weights count 2 bytes under a bf16 hint, int8 ones 1 byte."""
    from shedder_ov.bench import weight_bytes
    from shedder_ov.export.compress import CompressOptions, compress_ir

    xml = checkpoint_and_ir[1] / "openvino_model.xml"
    f32, bf16 = weight_bytes(xml, "f32"), weight_bytes(xml, "bf16")
    assert bf16 == pytest.approx(f32 / 2, rel=0.01) and f32 == pytest.approx(xml.with_suffix(".bin").stat().st_size, rel=0.05)
    compress_ir(checkpoint_and_ir[1], tmp_path / "int8", CompressOptions(mode="int8_asym"))
    assert weight_bytes(tmp_path / "int8" / "openvino_model.xml", "f32") < 0.35 * f32


def test_zeroshot_scores_a_few_items(checkpoint_and_ir):
    result = evaluate_zeroshot(open_model(checkpoint_and_ir[1]), ["piqa", "hellaswag"], DATA / "eval", limit=4)
    piqa = result["tasks"]["piqa"]
    assert piqa["n"] == 4 and piqa["metric"] == "acc_norm" and 0.0 <= piqa["value"] <= 1.0
    assert "not available locally" in result["tasks"]["hellaswag"]["skipped"]
    assert result["average"] == piqa["value"] and piqa["chance"] == result["average_chance"] == 0.5
    assert result["at_chance"] == (piqa["value"] - 0.5 < 2 * piqa["stderr"])


def test_lm_eval_cli_scores_our_ir_as_we_do(checkpoint_and_ir, tmp_path):
    """lm-eval's own `--model openvino` (optimum-intel) on our IR with the written include folder
    gives the numbers of `shedder-ov eval`: the labels-merged copy (piqa), a docs.py function
    (arc_easy) and lm-eval's winogrande functions."""
    import subprocess
    import sys

    tasks = ["piqa", "arc_easy", "winogrande"]
    ir = checkpoint_and_ir[1]
    ours = evaluate_zeroshot(open_model(ir), tasks, DATA / "eval", limit=6)["tasks"]
    write_lm_eval_tasks(tmp_path / "tasks", DATA / "eval", tasks)
    (tmp_path / "f32.json").write_text('{"INFERENCE_PRECISION_HINT": "f32"}')
    command = [
        str(Path(sys.executable).with_name("lm_eval")), "--model", "openvino", "--device", "cpu",
        "--model_args", f"pretrained={ir},ov_config={tmp_path / 'f32.json'}", "--include_path", str(tmp_path / "tasks"),
        "--tasks", ",".join(tasks), "--limit", "6", "--batch_size", "4", "--output_path", str(tmp_path / "out"),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            if metric in ours[task]:
                assert theirs[task][f"{metric},none"] == pytest.approx(ours[task][metric]), (task, metric)


def test_missing_task_data_is_one_clear_error(tmp_path):
    with pytest.raises(ShedderError, match="data file .* not found"):
        task_config("piqa", data_dir=tmp_path)
    assert task_config("arc_challenge", DATA / "eval")["task"] == "arc_challenge"


def test_bad_inputs(tmp_path, checkpoint_and_ir):
    from shedder_ov.bench import bench_ir

    with pytest.raises(ShedderError, match="neither a checkpoint"):
        open_model(tmp_path)
    with pytest.raises(ShedderError, match="held-out text for wikitext2 not found .*data_root"):
        evaluate_ppl(open_model(checkpoint_and_ir[1]), ["wikitext2"], tmp_path)
    with pytest.raises(ShedderError, match="above the model's limit"):
        bench_ir(str(checkpoint_and_ir[1]), prompt_lengths=(100_000,))


def test_report_from_partial_synthetic_output(tmp_path):
    from shedder_ov.report import write_report

    removed = [{"step": i, "candidate": f"layers.{i}.block", "ppl": 10.0 + i, "params_removed": 100 * i} for i in (1, 2)]
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "result.json").write_text(json.dumps(
        {"model": "m", "family": "mamba", "removed": removed, "ppl_original": 10.0, "params": {"original": 1000, "pruned": 800}}))
    log = [{"type": "eval", "step": s, "candidate": f"layers.{c}.block", "ppl": 10.0 + s + c} for s in (1, 2) for c in range(3)]
    (tmp_path / "search" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    for variant, ir in (("original", "ov-original"), ("pruned", "ov")):
        (tmp_path / ir / "fp32").mkdir(parents=True)
        for suffix in ("xml", "bin"):
            (tmp_path / ir / "fp32" / f"openvino_model.{suffix}").write_bytes(b"0" * 1000)
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"{variant}-fp32.json").write_text(json.dumps(
            {"ppl": {"tinystories": {"ppl": 20.0}}, "zeroshot": {"average": 0.4 if variant == "original" else 0.38}}))
    (tmp_path / "ov" / "int8").mkdir()
    for suffix in ("xml", "bin"):
        (tmp_path / "ov" / "int8" / f"openvino_model.{suffix}").write_bytes(b"0" * 500)
    (tmp_path / "eval" / "pruned-int8.json").write_text(json.dumps({"ppl": {"tinystories": {"ppl": 21.0}}, "zeroshot": {
        "average": 0.27, "average_stderr": 0.03, "average_chance": 0.26, "at_chance": True}}))
    (tmp_path / "eval" / "original-fp32.json").write_text(json.dumps({"ppl": {"tinystories": {"ppl": 20.0}}, "zeroshot": {
        "average": 0.30, "average_stderr": 0.03, "average_chance": 0.26, "at_chance": True}}))
    rows = [{"label": f"{v}", "prefill_ms": {"128": {"median": 5.0}}, "decode": {"tok_s": {"median": t}}}
            for v, t in (("original fp32", 100.0), ("pruned fp32", 130.0), ("pruned int8", 150.0))]
    (tmp_path / "bench.json").write_text(json.dumps({"openvino": "x", "threads": 2, "bandwidth_gbs": 10.0, "rows": rows}))
    (tmp_path / "bench-llamacpp.json").write_text(json.dumps({"rows": {
        "original": {"skipped": "llama.cpp: convert m failed (Model ShedderMamba is not supported)"},
        "pruned int8": {"prefill_tok_s": {"128": 12800.0}, "decode_tok_s": 100.0}}}))

    report = write_report(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    pruned = next(r for r in data["rows"] if r["variant"] == "pruned" and r["precision"] == "fp32")
    assert pruned["decode_speedup"] == pytest.approx(1.3)
    assert (tmp_path / "search_path.png").stat().st_size and (tmp_path / "pareto.png").stat().st_size
    text = report.read_text()
    assert "1.30×" in text and "## Missing" in text and "pruned int4: IR" in text
    line = next(l for l in text.splitlines() if l.startswith("| pruned | int8"))
    # 27% ± 3 within two standard errors of the 26% chance level and of the original's 30% ± 3;
    # prefill 128 tokens in 5 ms = 25,600 tok/s = 2x llama.cpp's 12,800; decode 150 vs 100 tok/s
    assert "27.0 ±3.0 (chance 26.0) ≈" in line and "2.00× / 1.50×" in line
    assert "no GGUF: convert m failed" in next(l for l in text.splitlines() if l.startswith("| original | int8"))
