"""Recovery tuning: LoRA under the pruned heterogeneous classes, merge exactness, training,
exact resume, the saved checkpoint, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.cli import app
from shedder_ov.data import load_windows
from shedder_ov.errors import ShedderError
from shedder_ov.modeling import REMOTE_CODE_FILES
from shedder_ov.pipeline import save_checkpoint
from shedder_ov.recipe import parse_recipe
from shedder_ov.recovery import merged, prepare, run_recovery
from shedder_ov.training import train

from .conftest import EVAL_TEXT, FAMILIES, MODELS, TRAIN_TEXT, require, tiny_model

REMOVAL = [Candidate(1, "ssm"), Candidate(2, "mamba_block")]  # heterogeneous Shedder* class
BLOCKS_ONLY = [Candidate(2, "mamba_block")]  # the stock transformers class
IDS = torch.randint(0, 8192, (2, 24), generator=torch.Generator().manual_seed(3))


def pruned_tiny(family: str, removal=REMOVAL):
    return adapter_for(tiny_model(family)).pruned_model(removal)


def make_recipe(tmp_path, recovery: dict, model="unused", **top):
    data = {
        "model": str(model),
        "search": {"targets": ["mamba_block", "ssm"], "apply": str(tmp_path / "removal.json")},
        "output": str(tmp_path / "out"),
        "recovery": {
            "data": {"path": str(tmp_path / "train.txt")},
            "held_out": {"path": str(tmp_path / "eval.txt")},
            "held_out_windows": 2,
            "seq_len": 32,
            "batch_size": 2,
            "max_steps": 3,
            **recovery,
        },
        **top,
    }
    return parse_recipe(data)


@pytest.fixture
def texts(tmp_path):
    (tmp_path / "train.txt").write_text(require(TRAIN_TEXT).read_text()[:6000])
    (tmp_path / "eval.txt").write_text(require(EVAL_TEXT).read_text()[:3000])
    return tmp_path


@pytest.fixture
def pruned_output(texts, tokenizer):
    """A recipe output dir holding a pruned tiny checkpoint, as `prune` leaves it."""

    def make(family: str = "mamba2"):
        save_checkpoint(pruned_tiny(family), tokenizer, texts / "out" / "pruned")
        return texts

    return make


@pytest.mark.parametrize("removal", [REMOVAL, BLOCKS_ONLY], ids=["ssm+block", "block"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_lora_on_pruned_model_merges_exactly(family, removal, tmp_path):
    model = pruned_tiny(family, removal)
    keys = set(model.state_dict())
    adapter = adapter_for(model)
    spec = make_recipe(tmp_path, {"method": "lora", "lora": {"rank": 4, "alpha": 8}}).recovery
    module = prepare(model, adapter, spec)
    assert any("lora_" in n for n, p in module.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    for name, param in module.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.05)  # LoRA starts as a no-op; make it change the model
    module.eval()
    with_lora = adapter.logits(IDS)
    assert not torch.allclose(with_lora, adapter_for(pruned_tiny(family, removal)).logits(IDS), atol=1e-3)
    plain = merged(model, module)
    assert set(plain.state_dict()) == keys  # same architecture, no LoRA leftovers
    assert type(plain) is type(pruned_tiny(family, removal))
    assert torch.allclose(adapter_for(plain).logits(IDS), with_lora, atol=1e-4)


@pytest.mark.parametrize("method,lr", [("lora", 1e-2), ("full", 2e-3)])
def test_loss_decreases_on_tiny_overfit(method, lr, tmp_path):
    model = pruned_tiny("mamba")
    adapter = adapter_for(model)
    spec = make_recipe(tmp_path, {"method": method, "lr": lr, "max_steps": 12, "lora": {"dropout": 0.0}}).recovery
    module = prepare(model, adapter, spec)
    windows = torch.randint(0, 8192, (4, 16), generator=torch.Generator().manual_seed(0))
    result = train(adapter, module, windows, spec, 0, torch.device("cpu"), tmp_path / "ck.pt", {})
    assert result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < 0.8 * result.losses[0]


def test_killed_run_resumes_exactly(tmp_path, monkeypatch):
    """Kill after the 5th optimizer step (checkpoint at 4); the resumed run ends bit-equal.
    LoRA dropout is on, so the RNG state has to be restored too."""
    spec = make_recipe(tmp_path, {"max_steps": 7, "save_every": 2, "lr": 1e-2, "lora": {"dropout": 0.2}}).recovery
    windows = torch.randint(0, 8192, (5, 16), generator=torch.Generator().manual_seed(0))

    def run(checkpoint):
        torch.manual_seed(0)
        model = pruned_tiny("mamba2")
        adapter = adapter_for(model)
        module = prepare(model, adapter, spec)
        result = train(adapter, module, windows, spec, 7, torch.device("cpu"), checkpoint, {"run": 1})
        return result, {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    straight, expected = run(tmp_path / "a.pt")

    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt")
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    resumed, weights = run(tmp_path / "b.pt")
    assert resumed.resumed_from == 4
    assert resumed.losses == straight.losses
    assert all(torch.equal(weights[n], expected[n]) for n in expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_recovery_writes_a_plain_pruned_checkpoint(family, pruned_output):
    root = pruned_output(family)
    recipe = make_recipe(root, {"method": "lora", "lr": 5e-3})
    result = run_recovery(recipe)
    out = root / "out"
    assert json.loads((out / "recovery" / "result.json").read_text())["ppl_after"] == result["ppl_after"]
    assert result["method"] == "lora" and result["steps"] == 3 and result["trainable_params"] > 0
    assert result["ppl_after"] != result["ppl_before"]
    assert not (out / "recovery" / "checkpoint.pt").exists()
    config = json.loads((out / "recovered" / "config.json").read_text())
    assert config["model_type"] == json.loads((out / "pruned" / "config.json").read_text())["model_type"]
    assert config["model_type"] == f"shedder_{family}"
    assert all((out / "recovered" / f.name).is_file() for f in REMOTE_CODE_FILES[family])
    reloaded = AutoModelForCausalLM.from_pretrained(out / "recovered")
    assert type(reloaded).__name__ == f"Shedder{''.join(p.title() for p in family.split('_'))}ForCausalLM"
    with torch.no_grad():
        assert torch.allclose(adapter_for(reloaded).logits(IDS), reloaded(IDS, use_cache=False).logits, atol=1e-4)
    assert run_recovery(recipe) == result  # done: skipped


def test_recovered_checkpoint_keeps_a_16_bit_storage(texts, tokenizer):
    """A pruned checkpoint stored in bf16 (as pruning a bf16 source writes it) gives a recovered
    one stored in bf16 too, and the held-out PPL the result reports is that of the stored weights."""
    from shedder_ov.checkpoints import load_checkpoint, stored_dtype
    from shedder_ov.recovery import held_out_ppl

    save_checkpoint(pruned_tiny("mamba2"), tokenizer, texts / "out" / "pruned", stored_as=torch.bfloat16)
    recipe = make_recipe(texts, {"method": "lora", "lr": 5e-3})
    result = run_recovery(recipe)
    recovered = texts / "out" / "recovered"
    assert stored_dtype(recovered) == "bfloat16" and result["stored_dtype"] == "bfloat16"
    held_out = load_windows(recipe.recovery.held_out, tokenizer, recipe.seed, seq_len=32)[:2]
    reloaded = load_checkpoint(recovered, "float32")
    assert held_out_ppl(adapter_for(reloaded), held_out, 2, "cpu") == pytest.approx(result["ppl_after"], rel=1e-6)


def test_full_finetune_and_settings_change_refused(pruned_output):
    root = pruned_output("mamba")
    result = run_recovery(make_recipe(root, {"method": "full", "lr": 1e-3}))
    assert result["trainable_params"] == result["total_params"]
    changed = make_recipe(root, {"method": "full", "lr": 2e-3})
    with pytest.raises(ShedderError, match="other settings; use --force"):
        run_recovery(changed)
    assert run_recovery(changed, force=True)["fingerprint"]["recovery"]["lr"] == 2e-3


def test_errors_are_one_line(pruned_output, tmp_path):
    root = pruned_output("mamba2")
    with pytest.raises(ShedderError, match=r"up_proj not in a mamba2 model \(valid: in_proj, out_proj\)"):
        run_recovery(make_recipe(root, {"lora": {"target_modules": ["in_proj", "up_proj"]}}))
    (root / "empty.txt").write_text("  \n")
    with pytest.raises(ShedderError, match="no text found"):
        run_recovery(make_recipe(root, {"data": {"path": str(root / "empty.txt")}}))
    with pytest.raises(ShedderError, match="text too short"):
        run_recovery(make_recipe(root, {"seq_len": 100_000}))
    with pytest.raises(ShedderError, match="run `shedder-ov prune`"):
        run_recovery(make_recipe(root, {}, output=str(tmp_path / "elsewhere")))
    no_section = root / "no-recovery.yaml"
    no_section.write_text(f"model: x\nsearch: {{apply: r.json}}\noutput: {root / 'out'}\n")
    outcome = CliRunner().invoke(app, ["recover", str(no_section)])
    assert outcome.exit_code == 2 and "no recovery section" in outcome.output


@pytest.mark.slow
def test_real_mamba2_tiny_short_recovery(tmp_path, tokenizer):
    """Blocks 11 and 12 removed from the real mamba2-tiny, 4 LoRA steps on CPU."""
    from shedder_ov.pipeline import run_prune

    (tmp_path / "removal.json").write_text(json.dumps({"pruned_mamba_block_idx": [11, 12]}))
    (tmp_path / "train.txt").write_text(require(TRAIN_TEXT).read_text()[:40_000])
    (tmp_path / "eval.txt").write_text(require(EVAL_TEXT).read_text()[:8_000])
    recipe = make_recipe(
        tmp_path, {"seq_len": 64, "max_steps": 4, "held_out_windows": 4, "lr": 1e-3}, model=require(MODELS / "mamba2-tiny")
    )
    run_prune(recipe)
    result = run_recovery(recipe)
    assert result["trainable_params"] > 0 and result["steps"] == 4
    assert result["ppl_after"] < 1.5 * result["ppl_before"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "recovered")
    assert reloaded.config.num_hidden_layers == 22
    ids = load_windows(recipe.recovery.held_out, tokenizer, 0, seq_len=64)[:1]
    assert torch.isfinite(adapter_for(reloaded).logits(ids)).all()
