"""Zamba2 in the component model: fast forward, masking semantics, physical removal equal to
masking with exact parameter accounting, unsharing, MLP channel orders, reference configs,
the staged search end to end, and bad input refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.cli import app
from shedder_ov.errors import ShedderError
from shedder_ov.modeling import ShedderZamba2Config, ShedderZamba2ForCausalLM
from shedder_ov.pipeline import run_prune, save_checkpoint
from shedder_ov.recipe import parse_recipe

from .conftest import MODELS, TRAIN_TEXT, require

M, H = "mamba", "hybrid"
IDS = torch.randint(1, 8192, (2, 24), generator=torch.Generator().manual_seed(0))
TYPES = [M, H, M, H, M, H]


def tiny_zamba2(types=TYPES, num_mem_blocks: int = 1, seed: int = 0, **extra) -> ShedderZamba2ForCausalLM:
    """A random Zamba2 in the stock layout (every invocation runs its shared block), RoPE, GQA."""
    fields = dict(
        vocab_size=8192, hidden_size=32, num_hidden_layers=len(types), layers_block_type=types,
        mamba_d_state=8, n_mamba_heads=4, chunk_size=8, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, adapter_rank=4, use_mem_rope=True, num_mem_blocks=num_mem_blocks,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    config = ShedderZamba2Config(**(fields | extra))
    torch.manual_seed(seed)
    model = ShedderZamba2ForCausalLM(config).eval()
    with torch.no_grad():  # spread the decays so the SSMs matter
        for layer in model.model.layers:
            layer.mamba.A_log.uniform_(-1.0, 1.5)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("blocks", [1, 2])
@torch.no_grad()
def test_fast_forward_matches_the_model(blocks):
    model = tiny_zamba2(num_mem_blocks=blocks, use_shared_attention_adapter=True)
    assert torch.allclose(adapter_for(model).logits(IDS), model(IDS, use_cache=False).logits, atol=1e-4)


@torch.no_grad()
def test_masking_semantics():
    """Masked attention: the MLP reads the Mamba stream; masked MLP: the invocation outputs the
    attention result; masked Mamba block of a hybrid layer: hidden + the invocation's output."""
    model = tiny_zamba2()
    adapter = adapter_for(model)
    stream = torch.randn(2, 10, 64)
    hidden, emb = stream.split(32, dim=-1)
    layer = model.model.layers[1]
    attention = adapter._attention(1, hidden, emb)
    cases = {
        "attention": layer.linear(adapter._mlp(1, hidden)),
        "mlp": layer.linear(attention),
    }
    for kind, t in cases.items():
        adapter.mask(Candidate(1, kind))
        normed = layer.input_layernorm(hidden + t)
        expected = hidden + adapter._mixer(1, normed)
        assert torch.allclose(adapter.layer_forward(1, stream)[..., :32], expected, atol=1e-6), kind
        adapter.unmask(Candidate(1, kind))
    adapter.mask(Candidate(1, "mamba_block"))
    assert torch.allclose(adapter.layer_forward(1, stream)[..., :32], hidden + layer.linear(adapter._mlp(1, attention)), atol=1e-6)
    adapter.unmask(Candidate(1, "mamba_block"))
    for whole in (Candidate(1, "layer"), Candidate(0, "mamba_block")):
        adapter.mask(whole)
        assert torch.equal(adapter.layer_forward(whole.layer, stream), stream)
        adapter.unmask(whole)
    assert [c.name for c in adapter.candidates(["layer"])][:2] == ["layers.0.block", "layers.1.layer"]


REMOVALS = [
    [Candidate(1, "attention")],
    [Candidate(3, "mlp"), Candidate(0, "ssm")],
    [Candidate(1, "mamba_block"), Candidate(5, "layer")],
    [Candidate(1, "attention"), Candidate(3, "attention"), Candidate(5, "attention"), Candidate(2, "mamba_block")],
    [Candidate(3, "attention"), Candidate(3, "mlp"), Candidate(4, "ssm")],  # layer 3 is then a plain Mamba layer
]


@pytest.mark.parametrize("removed", REMOVALS, ids=lambda r: "+".join(c.name for c in r))
@torch.no_grad()
def test_pruned_equals_masked_and_params_drop_exactly(removed, tmp_path):
    model = tiny_zamba2(num_mem_blocks=2)
    adapter = adapter_for(model)
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(IDS)
    pruned = adapter.pruned_model(removed)
    assert adapter.num_params() - sum(p.numel() for p in pruned.parameters()) == adapter.removed_params(removed)
    assert torch.allclose(adapter_for(pruned).logits(IDS), masked, atol=1e-4)
    assert torch.allclose(pruned(IDS, use_cache=False).logits, masked, atol=1e-4)
    generated = pruned.generate(IDS[:1, :6], max_new_tokens=8, do_sample=False)
    ids = IDS[:1, :6]
    for _ in range(8):  # greedy by full recompute
        ids = torch.cat([ids, pruned(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


@torch.no_grad()
def test_unshare_keeps_logits_and_counts_parameters_as_the_reference():
    model = tiny_zamba2(use_shared_attention_adapter=True)
    adapter = adapter_for(model)
    unshared = adapter.unshared()
    assert torch.allclose(unshared.logits(IDS), adapter.logits(IDS), atol=1e-5)
    assert unshared.num_params() == adapter.num_params_unshared() == unshared.num_params_unshared() > adapter.num_params()
    assert len(unshared.model.model.blocks) == 3 and unshared.model.model.layers[1].gate_up_adapter is None


@pytest.mark.parametrize("order", ["first", "weight_l1", "activation"])
@torch.no_grad()
def test_channel_groups_prune_exactly_in_every_order(order, tmp_path):
    adapter = adapter_for(tiny_zamba2()).unshared()
    with pytest.raises(ShedderError, match="group_size"):
        adapter.set_channel_groups(24)
    adapter.set_channel_groups(16)
    adapter.rank_channels(order, [IDS])
    removed = [Candidate(1, "mlp_channels")] * 2 + [Candidate(3, "mlp_channels")]
    assert adapter.capacity(removed[0]) == 3
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(IDS)
    pruned = adapter.pruned_model(removed)
    assert [b.feed_forward.width for b in pruned.model.blocks] == [32, 48, 64]
    assert adapter.num_params() - sum(p.numel() for p in pruned.parameters()) == adapter.removed_params(removed)
    assert torch.allclose(adapter_for(pruned).logits(IDS), masked, atol=1e-4)
    if order == "first":  # the reference keeps the first channels
        kept = pruned.model.blocks[0].feed_forward.down_proj.weight
        assert torch.equal(kept, adapter.model.model.blocks[0].feed_forward.down_proj.weight[:, :32])
    # the pruned model loads without shedder_ov (trust_remote_code) and gives the same logits
    save_checkpoint(pruned, _tokenizer(), tmp_path / "pruned")
    torch.save(IDS, tmp_path / "ids.pt")
    code = (
        "import sys, torch; sys.modules['shedder_ov'] = None; "  # any import of the package now fails
        "from transformers import AutoModelForCausalLM; "
        f"m = AutoModelForCausalLM.from_pretrained('{tmp_path / 'pruned'}', trust_remote_code=True); "
        f"torch.save(m(torch.load('{tmp_path / 'ids.pt'}'), use_cache=False).logits, '{tmp_path / 'out.pt'}')"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "out.pt"), masked, atol=1e-4)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require(MODELS / "zamba2-tiny"))


def test_reference_config_on_the_zamba2_2p7b_layout(tmp_path):
    """The published ratio-10 config on a random model of the Zamba2-2.7B layout (54 layers, 9
    invocations of 2 memory blocks, MLP width 10240; hidden size reduced to 32)."""
    types = ["hybrid" if i in (6, 12, 18, 24, 30, 36, 42, 47, 51) else "mamba" for i in range(54)]
    model = tiny_zamba2(types, num_mem_blocks=2, intermediate_size=10240)
    adapter = adapter_for(model)
    reference = require(MODELS.parent / "data" / "reference-configs" / "zamba2-2.7b-ratio10.pruning_config.json")
    with pytest.raises(ShedderError, match="unshare"):
        adapter.from_reference(json.loads(reference.read_text()), str(reference))
    unshared = adapter.unshared()
    removed = unshared.from_reference(json.loads(reference.read_text()), str(reference))
    assert unshared.group_size == 1024 and sum(c.kind == "ssm" for c in removed) == 18
    pruned = unshared.pruned_model(removed)
    widths = [b.feed_forward.width if b.feed_forward else 0 for b in pruned.model.blocks]
    assert widths == [3072, 4096, 8192, 10240, 6144, 9216, 0, 0, 0]
    assert unshared.num_params() - sum(p.numel() for p in pruned.parameters()) == unshared.removed_params(removed)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pruned_mha_idx": [9]}))
    with pytest.raises(ShedderError, match="pruned_mha_idx names 9; this model has indices 0..8"):
        unshared.from_reference(json.loads(bad.read_text()), str(bad))


def _write(tmp_path, model, **search):
    folder = tmp_path / "model"
    if not folder.exists():
        save_checkpoint(model, _tokenizer(), folder)
    recipe = {
        "model": str(folder),
        "calibration": {"path": str(TRAIN_TEXT), "num_samples": 4, "seq_len": 32, "batch_size": 2},
        "search": search,
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


STAGES = [
    {"targets": ["mamba_block", "attention", "mlp"], "stop": {"num_components": 2}},
    {"targets": ["mlp_channels"], "group_size": 16, "channel_order": "weight_l1", "stop": {"num_components": 3}},
    {"targets": ["ssm"], "stop": {"num_components": 2}},
]


def test_staged_search_end_to_end_and_resume(tmp_path):
    path = _write(tmp_path, tiny_zamba2(), stages=STAGES, unshare=True)
    from shedder_ov.recipe import load_recipe

    result = run_prune(load_recipe(path))
    assert [r["stage"] for r in result["removed"]] == [1, 1, 2, 2, 2, 3, 3]
    assert {c.split(".", 2)[2] for c in (r["candidate"] for r in result["removed"][2:5])} == {"mlp.channels"}
    assert result["params"]["stored_before_unshare"] < result["params"]["original"]
    assert result["params"]["original"] - result["params"]["pruned"] == result["removed"][-1]["params_removed"]
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "pruned")
    assert sum(p.numel() for p in pruned.parameters()) == result["params"]["pruned"]
    # a run killed in the channel stage resumes from its log with the identical result
    log = tmp_path / "out" / "search" / "log.jsonl"
    lines = log.read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if json.loads(line).get("step") == 4)
    log.write_text("\n".join(lines[: cut + 1]) + '\n{"type": "ev')  # torn tail
    (tmp_path / "out" / "search" / "result.json").unlink()
    again = run_prune(load_recipe(path))
    assert [r["candidate"] for r in again["removed"]] == [r["candidate"] for r in result["removed"]]
    assert [r["ppl"] for r in again["removed"]] == [r["ppl"] for r in result["removed"]]
    assert again["search"]["evaluated_in_this_run"] < result["search"]["evaluated_in_this_run"]


@pytest.mark.parametrize(
    "search, message",
    [
        ({"stages": [{"targets": ["mlp_channels"], "group_size": 16, "stop": {"num_components": 1}}]}, "set search.unshare: true"),
        ({"stages": [{"targets": ["mlp_channels"], "group_size": 24, "stop": {"num_components": 1}}], "unshare": True}, "group_size: 24 must divide"),
        ({"stages": [{"targets": ["attention"], "stop": {"num_components": 4}}]}, "num_components: 4 requested, at most 3"),
        ({"targets": ["attention_heads"], "stop": {"num_components": 1}}, "attention_heads not in a zamba2 model"),
    ],
)
def test_bad_searches_fail_before_any_work(tmp_path, search, message):
    from typer.testing import CliRunner

    path = _write(tmp_path, tiny_zamba2(), **search)
    outcome = CliRunner().invoke(app, ["prune", str(path)])
    assert outcome.exit_code == 2 and message in outcome.output, outcome.output
    assert not (tmp_path / "out" / "search").exists()


def test_family_without_the_part_refuses_it(tmp_path, tiny_checkpoint):
    from typer.testing import CliRunner

    recipe = {
        "model": str(tiny_checkpoint("mamba2")),
        "calibration": {"path": str(TRAIN_TEXT), "num_samples": 4, "seq_len": 32},
        "search": {"targets": ["attention"], "stop": {"num_components": 1}},
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    outcome = CliRunner().invoke(app, ["prune", str(tmp_path / "r.yaml")])
    assert outcome.exit_code == 2
    assert "search.targets: attention not in a mamba2 model (it has: layer, mamba_block, ssm, ssm_heads)" in outcome.output
    recipe["search"] = {"targets": ["mamba_block"], "stop": {"num_components": 1}, "unshare": True}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    outcome = CliRunner().invoke(app, ["prune", str(tmp_path / "r.yaml")])
    assert outcome.exit_code == 2 and "no shared blocks to unshare" in outcome.output


@pytest.mark.slow
def test_real_zamba2_tiny_fast_forward_and_pruned_logits():
    from shedder_ov.checkpoints import load_checkpoint

    adapter = adapter_for(load_checkpoint(require(MODELS / "zamba2-tiny")))
    ids = IDS[:1, :16]
    with torch.no_grad():
        assert torch.allclose(adapter.logits(ids), adapter.model(ids, use_cache=False).logits, atol=1e-4)
        removed = [Candidate(7, "mlp"), Candidate(3, "attention"), Candidate(9, "ssm")]
        for c in removed:
            adapter.mask(c)
        pruned = adapter.pruned_model(removed)
        assert torch.allclose(adapter_for(pruned).logits(ids), adapter.logits(ids), atol=1e-4)


def test_recovery_tunes_a_pruned_zamba2(tmp_path):
    """LoRA on the Mamba in/out projections (the reference's Zamba2 default), merged before saving."""
    from shedder_ov.recipe import load_recipe
    from shedder_ov.recovery import run_recovery

    (tmp_path / "train.txt").write_text(require(TRAIN_TEXT).read_text()[:6000])
    path = _write(tmp_path, tiny_zamba2(), targets=["attention", "mlp", "ssm"], stop={"num_components": 2})
    recipe = yaml.safe_load(path.read_text())
    recipe["recovery"] = {
        "data": {"path": str(tmp_path / "train.txt")}, "held_out": {"path": str(tmp_path / "train.txt")},
        "held_out_windows": 2, "seq_len": 32, "batch_size": 2, "max_steps": 3, "lr": 5e-3,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    run_prune(load_recipe(path))
    result = run_recovery(load_recipe(path))
    assert result["steps"] == 3 and result["trainable_params"] > 0 and result["ppl_after"] != result["ppl_before"]
    recovered = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "recovered")
    assert type(recovered).__name__ == "ShedderZamba2ForCausalLM"
    assert sum(p.numel() for p in recovered.parameters()) == result["total_params"]
    assert not any("lora" in name for name, _ in recovered.named_parameters())
