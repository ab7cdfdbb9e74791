"""`shedder-ov prune` end to end: recipes, search log/resume, physical removal, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.checkpoints import load_checkpoint, read_removal_list, stored_dtype
from shedder_ov.cli import app
from shedder_ov.data import read_documents

from .conftest import MODELS, REPO, SHARED, TRAIN_TEXT, require, tiny_model

runner = CliRunner()


def write_recipe(tmp_path, name="recipe.yaml", **fields) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def prune(recipe: str, *flags: str):
    return runner.invoke(app, ["prune", recipe, *flags])


def small_recipe(tmp_path, model, out="out", search=None, **search_fields):
    search = search or search_fields or {"targets": ["mamba_block"], "stop": {"num_components": 2}}
    return write_recipe(
        tmp_path,
        model=str(model),
        calibration={"path": str(require(TRAIN_TEXT)), "num_samples": 4, "seq_len": 32, "batch_size": 4},
        search=search,
        output=str(tmp_path / out),
    )


def evals_by_step(log_path):
    steps: dict[int, dict[str, float]] = {}
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "eval":
            steps.setdefault(record["step"], {})[record["candidate"]] = record["ppl"]
    return steps


def test_prune_real_mamba2_tiny(tmp_path):
    """Greedy choice = lowest logged PPL each step; pruned checkpoint = masked original."""
    model_dir = require(MODELS / "mamba2-tiny")
    recipe = small_recipe(tmp_path, model_dir, search={"targets": ["ssm"], "stop": {"num_components": 2}})
    result = prune(recipe)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    summary = json.loads((out / "search" / "result.json").read_text())
    steps = evals_by_step(out / "search" / "log.jsonl")
    assert len(steps[1]) == 24 and len(steps[2]) == 23 and steps[0][None] == summary["ppl_original"]
    for row in summary["removed"]:
        scores = steps[row["step"]]
        assert row["candidate"] == min(scores, key=scores.get)
        assert row["ppl"] == scores[row["candidate"]]

    removed = [Candidate.parse(r["candidate"]) for r in summary["removed"]]
    original = load_checkpoint(model_dir)
    adapter = adapter_for(original)
    for candidate in removed:
        adapter.mask(candidate)
    pruned = AutoModelForCausalLM.from_pretrained(out / "pruned").eval()
    ids = torch.randint(0, 8192, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(pruned(ids, use_cache=False).logits, adapter.logits(ids), atol=1e-4)
    params = summary["params"]
    assert params["original"] == 12_515_712 == sum(p.numel() for p in original.parameters())
    assert params["original"] - params["pruned"] == adapter.removed_params(removed) > 0
    assert params["pruned"] == sum(p.numel() for p in pruned.parameters())
    assert (out / "pruned" / "tokenizer.json").is_file()
    # stored as the source is (bf16: its weights are copies of the source's), computed as it is
    assert stored_dtype(out / "pruned") == stored_dtype(model_dir) == "bfloat16" and pruned.dtype == torch.float32

    again = prune(recipe)  # finished: skipped, same result
    assert again.exit_code == 0 and "already done" in again.output


def test_resume_after_kill_gives_identical_result(tmp_path):
    model_dir = require(MODELS / "mamba2-tiny")
    killed = small_recipe(tmp_path, model_dir, out="killed")
    log = tmp_path / "killed" / "search" / "log.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "shedder_ov.cli", "prune", killed],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or log.read_text().count('"eval"') < 8):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "search" / "result.json").exists(), "run finished before it was killed"
    with open(log, "a") as handle:  # a write torn by the kill
        handle.write('{"type": "eval", "step": 1, "cand')
    logged = log.read_text().count('"eval"') - 1

    assert prune(killed).exit_code == 0
    resumed = json.loads((tmp_path / "killed" / "search" / "result.json").read_text())
    assert resumed["search"]["evaluated_in_this_run"] == resumed["search"]["evaluations"] - logged
    # that the resumed decisions equal an uninterrupted run's: tests/test_kill_resume.py


def test_fast_and_naive_decide_alike_on_tiny(tmp_path, tiny_checkpoint):
    folder = tiny_checkpoint("mamba")
    results = []
    for method in ("fast", "naive"):
        recipe = small_recipe(
            tmp_path, folder, out=method, targets=["mamba_block", "ssm"], stop={"num_components": 3}, method=method
        )
        assert prune(recipe).exit_code == 0
        results.append(json.loads((tmp_path / method / "search" / "result.json").read_text())["removed"])
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "stop, check",
    [
        ({"param_reduction_pct": 8}, lambda r: (1 - r["params"]["pruned"] / r["params"]["original"]) * 100 >= 8),
        ({"max_ppl_increase_pct": 1000}, lambda r: all(x["ppl"] <= r["ppl_original"] * 11 for x in r["removed"])),
    ],
)
def test_stop_rules(tmp_path, tiny_checkpoint, stop, check):
    recipe = small_recipe(tmp_path, tiny_checkpoint("mamba2"), targets=["mamba_block", "ssm"], stop=stop)
    assert prune(recipe).exit_code == 0
    result = json.loads((tmp_path / "out" / "search" / "result.json").read_text())
    assert result["removed"] and check(result)
    assert result["search"]["stopped_by"]


def test_apply_removal_lists(tmp_path, tiny_checkpoint):
    folder = tiny_checkpoint("mamba2")
    reference = tmp_path / "pruning_config.json"
    reference.write_text(json.dumps({"pruned_ssm_idx": [3, 1]}))
    recipe = write_recipe(
        tmp_path, model=str(folder), search={"targets": ["ssm"], "apply": str(reference)}, output=str(tmp_path / "ref")
    )
    assert prune(recipe).exit_code == 0
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "pruned")
    assert pruned.config.model_type == "shedder_mamba2" and pruned.config.ssm_removed_layers == [1, 3]
    # our own result.json is a removal list too
    ours = read_removal_list(tmp_path / "ref" / "search" / "result.json", adapter_for(pruned))
    assert ours == [Candidate(3, "ssm"), Candidate(1, "ssm")]


def test_reference_configs_parse():
    configs = SHARED / "data" / "reference-configs"
    adapter = adapter_for(tiny_model("mamba2"))
    assert len(read_removal_list(require(configs / "mamba2-2.7b.pruning_config.json"), adapter)) == 24
    assert read_removal_list(configs / "mamba-2.8b.pruning_config.json", adapter)[0] == Candidate(2, "mamba_block")


def test_mamba_ssm_format_and_published_pruned_checkpoints(tmp_path):
    """mamba_ssm folders convert on load; layers missing from them are rebuilt as removed."""
    for layer in ("Mamba2", "Mamba1"):
        folder = tmp_path / layer
        folder.mkdir()
        ssm_cfg = {"layer": layer, "d_state": 16, "headdim": 16, "chunk_size": 16} if layer == "Mamba2" else {}
        config = {"d_model": 64, "n_layer": 3, "vocab_size": 100, "ssm_cfg": ssm_cfg, "rms_norm": True,
                  "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
        (folder / "config.json").write_text(json.dumps(config))
        torch.manual_seed(0)
        from shedder_ov.checkpoints import _hf_config_from_mamba_ssm

        reference = AutoModelForCausalLM.from_config(
            _hf_config_from_mamba_ssm(config, {"backbone.embedding.weight": torch.zeros(104, 64)})
        ).eval()
        state = {k.replace("backbone.embeddings.", "backbone.embedding."): v
                 for k, v in reference.state_dict().items() if k != "lm_head.weight"}
        torch.save(state, folder / "pytorch_model.bin")
        ids = torch.randint(0, 100, (1, 20))
        with torch.no_grad():
            assert torch.allclose(load_checkpoint(folder)(ids).logits, reference(ids).logits, atol=1e-5)
            # the published Mamba-Shedder layout: a removed block has no keys, a removed SSM lacks D/dt_bias
            state = {k: v for k, v in state.items() if not k.startswith("backbone.layers.1.")}
            del state["backbone.layers.2.mixer.D"]
            state.pop("backbone.layers.2.mixer.dt_bias", None)
            torch.save(state, folder / "pytorch_model.bin")
            pruned = load_checkpoint(folder)
            adapter = adapter_for(reference)
            adapter.mask(Candidate(1, "mamba_block"))
            adapter.mask(Candidate(2, "ssm"))
            assert pruned.config.num_hidden_layers == 2 and pruned.config.ssm_removed_layers == [1]
            assert torch.allclose(pruned(ids).logits, adapter.logits(ids), atol=1e-4)


def test_data_formats(tmp_path):
    alpaca = read_documents(require(SHARED / "data" / "alpaca" / "alpaca_data_1k.json"), "alpaca")
    assert len(alpaca) == 1000 and alpaca[0].startswith("Below is an instruction") and "### Response:" in alpaca[0]
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_documents(lines, "jsonl") == ["one", "two"]


# ---- bad input: one line, exit status 2, nothing that looks complete -----------------
def _bad(tmp_path, expected: str, *flags, **fields):
    recipe = write_recipe(tmp_path, "bad.yaml", **fields)
    result = prune(recipe, *flags)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and expected in message, message
    return message


def test_bad_recipes(tmp_path, tiny_checkpoint):
    folder = str(tiny_checkpoint("mamba2"))
    text = str(require(TRAIN_TEXT))
    base = dict(model=folder, calibration={"path": text, "num_samples": 4, "seq_len": 16}, output=str(tmp_path / "o"))
    stop = {"targets": ["mamba_block"], "stop": {"num_components": 1}}
    _bad(tmp_path, "calibraton: unknown key (allowed: model, tokenizer, calibration", **base, search=stop, calibraton={})
    _bad(tmp_path, "search.targets.0", **{**base, "search": {"targets": ["heads"], "stop": {"num_components": 1}}})
    _bad(tmp_path, f"model: {tmp_path / 'nope'} not found", **{**base, "model": str(tmp_path / "nope")}, search=stop)
    _bad(tmp_path, "calibration.path: ", **{**base, "calibration": {"path": str(tmp_path / "x.txt")}}, search=stop)
    _bad(tmp_path, "text too short", **{**base, "calibration": {"path": text, "num_samples": 10**6, "seq_len": 512}}, search=stop)
    _bad(tmp_path, "at most 3 removals of the 4", **base, search={"targets": ["mamba_block"], "stop": {"num_components": 9}})
    _bad(tmp_path, "is impossible", **base, search={"targets": ["ssm"], "stop": {"param_reduction_pct": 90}})
    _bad(tmp_path, "exactly one of num_components", **base, search={"stop": {"num_components": 1, "param_reduction_pct": 5}})
    _bad(tmp_path, "search.targets: mlp not in a mamba2 model (it has: layer, mamba_block, ssm, ssm_heads)", **base,
         search={"targets": ["mlp"], "stop": {"num_components": 1}})  # fmt: skip
    (tmp_path / "jamba").mkdir()
    (tmp_path / "jamba" / "config.json").write_text('{"model_type": "jamba"}')
    message = _bad(tmp_path, "unsupported architecture model_type='jamba'", **{**base, "model": str(tmp_path / "jamba")}, search=stop)
    assert "falcon_h1" in message and "zamba2" in message and "granitemoehybrid" in message
    assert not (tmp_path / "o" / "pruned").exists()


def test_output_dir_with_a_different_run(tmp_path, tiny_checkpoint):
    folder = tiny_checkpoint("mamba")
    assert prune(small_recipe(tmp_path, folder, stop={"num_components": 1}, targets=["mamba_block"])).exit_code == 0
    longer = small_recipe(tmp_path, folder, stop={"num_components": 2}, targets=["mamba_block"])
    result = prune(longer)
    assert result.exit_code == 2 and "--resume" in result.output
    resumed = prune(longer, "--resume")  # extends the search: step 1 comes from the log
    assert resumed.exit_code == 0
    summary = json.loads((tmp_path / "out" / "search" / "result.json").read_text())
    assert len(summary["removed"]) == 2 and summary["search"]["evaluated_in_this_run"] == 3
    other = small_recipe(tmp_path, folder, stop={"num_components": 1}, targets=["ssm"])
    result = prune(other)
    assert result.exit_code == 2 and "different run" in result.output and "targets" in result.output
    assert prune(other, "--force").exit_code == 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    stray = write_recipe(
        tmp_path, "stray.yaml", model=str(folder), output=str(tmp_path / "foreign"),
        calibration={"path": str(TRAIN_TEXT), "num_samples": 4, "seq_len": 16},
        search={"targets": ["ssm"], "stop": {"num_components": 1}},
    )
    result = prune(stray)
    assert result.exit_code == 2 and "not a shedder-ov run" in result.output


def test_cli_entry_point_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shedder_ov.cli", "prune", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: recipe file not found"


def test_two_runs_never_share_an_output_dir(tmp_path, tiny_checkpoint):
    from shedder_ov.io import exclusive

    recipe = small_recipe(tmp_path, tiny_checkpoint("mamba"), stop={"num_components": 1}, targets=["ssm"])
    with exclusive(tmp_path / "out"):
        result = prune(recipe)
    assert result.exit_code == 2 and "another shedder-ov process is working in" in result.output
    assert prune(recipe).exit_code == 0
