"""SSM heads of Mamba-2 (issue 14, item 2): group-aware head candidates, masking = the head
view, physical removal into per-layer head counts, remote code, cached generation, the IR's
shrunken states, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

from shedder_ov.adapters import Candidate, adapter_class_for, adapter_for
from shedder_ov.errors import ShedderError
from shedder_ov.recipe import SearchSpec, StageSpec, StopRule

from .conftest import MODELS, assert_generate_matches_recompute, load_without_package, require, tiny_model

IDS = torch.randint(0, 8192, (2, 40), generator=torch.Generator().manual_seed(1))


def heads(layer: int, *indices: int) -> list[Candidate]:
    return [Candidate(layer, "ssm_heads", j) for j in indices]


def tiny(groups: int = 2, seed: int = 0):
    """4 layers, 8 heads of 16 channels; 2 groups (4 heads each) or 1 group (8 heads)."""
    torch.manual_seed(seed)
    config = Mamba2Config(
        hidden_size=64, num_hidden_layers=4, vocab_size=8192, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        num_heads=8, head_dim=16, state_size=16, n_groups=groups, chunk_size=16, expand=2,
    )
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.uniform_(-1.0, 1.5)
            layer.mixer.D.uniform_(-1.0, 1.0)
            layer.mixer.norm.weight.uniform_(0.5, 1.5)
    return model


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


REMOVALS = [
    heads(1, 2),
    heads(0, 0) + heads(0, 3) + heads(2, 1),
    heads(1, 0) + [Candidate(2, "mamba_block"), Candidate(3, "ssm")] + heads(3, 1) + heads(2, 0),  # ssm / block take theirs
]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("removed", REMOVALS, ids=lambda r: "+".join(c.name for c in r))
@torch.no_grad()
def test_pruned_equals_masked_and_params_drop_exactly(groups, removed):
    model = tiny(groups)
    adapter = adapter_for(model)
    full = adapter.logits(IDS)
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(IDS)
    assert not torch.allclose(masked, full, atol=1e-3)
    pruned = adapter.pruned_model(removed)
    assert torch.allclose(pruned(IDS, use_cache=False).logits, masked, atol=1e-5)
    assert torch.allclose(adapter_for(pruned).logits(IDS), masked, atol=1e-5)
    assert params(model) - params(pruned) == adapter.removed_params(removed) > 0
    config = pruned.config
    assert config.model_type == "shedder_mamba2"
    blocks = {c.layer for c in removed if c.kind == "mamba_block"}
    subsumed = blocks | {c.layer for c in removed if c.kind == "ssm"}
    keep = [i for i in range(4) if i not in blocks]
    expected = [8 - groups * sum(1 for c in removed if c.layer == old and c.kind == "ssm_heads" and old not in subsumed) for old in keep]
    assert config.layer_heads == expected and config.source_layers == keep
    for new, old in enumerate(keep):
        mixer = pruned.backbone.layers[new].mixer
        if old not in subsumed:
            assert mixer.num_heads == expected[new] and mixer.in_proj.out_features == 2 * 16 * expected[new] + 2 * groups * 16 + expected[new]


@torch.no_grad()
def test_candidates_and_rules():
    adapter = adapter_for(tiny(2))
    found = adapter.candidates(["mamba_block", "ssm", "ssm_heads"])
    assert [c.name for c in found[:6]] == [
        "layers.0.block", "layers.0.ssm", "layers.0.ssm.heads.0", "layers.0.ssm.heads.1", "layers.0.ssm.heads.2", "layers.0.ssm.heads.3",
    ]
    assert len(adapter.candidates(["ssm_heads"])) == 4 * 4  # 8 heads in 2 groups: 4 candidates per layer
    assert Candidate.parse("layers.1.ssm.heads.2") == Candidate(1, "ssm_heads", 2)
    removed = heads(0, 0, 1, 2)
    assert not adapter.available(Candidate(0, "ssm_heads", 3), removed)  # the last head of every group stays
    assert adapter.available(Candidate(1, "ssm_heads", 3), removed)
    assert not adapter.available(Candidate(0, "ssm"), removed) and adapter.available(Candidate(0, "mamba_block"), removed)
    assert not adapter.available(Candidate(1, "ssm_heads", 0), [Candidate(1, "ssm")])
    assert not adapter.available(Candidate(1, "ssm_heads", 0), [Candidate(1, "mamba_block")])
    assert adapter.contains(Candidate(1, "mamba_block"), Candidate(1, "ssm_heads", 0))
    assert not adapter.available(Candidate(0, "ssm_heads", 1), heads(0, 1))  # each head group goes once
    # masking = the head view, which is what removal leaves; unmasking restores the layer
    hidden = torch.randn(1, 9, 64)
    before = adapter.layer_forward(2, hidden)
    adapter.mask(Candidate(2, "ssm_heads", 1))
    assert not torch.allclose(adapter.layer_forward(2, hidden), before, atol=1e-4)
    adapter.unmask(Candidate(2, "ssm_heads", 1))
    assert torch.equal(adapter.layer_forward(2, hidden), before)
    assert set(range(8)) - set(adapter.kept_heads(2, {1}).tolist()) == {1, 5}  # head 1 of each group


@torch.no_grad()
def test_head_pruned_model_prunes_again():
    """A head-pruned model: its layers report their own head counts; more heads and blocks go;
    its SSM can no longer go alone (the SSM-less mixer is full width)."""
    model = tiny(2)
    first = adapter_for(adapter_for(model).pruned_model(heads(1, 0, 2) + heads(3, 1)))
    assert first.heads_per_group(1) == 2 and first.heads_per_group(0) == 4
    names = [c.name for c in first.candidates(["ssm", "ssm_heads"])]
    assert "layers.1.ssm" not in names and "layers.0.ssm" in names and "layers.1.ssm.heads.1" in names
    assert "layers.1.ssm.heads.2" not in names
    with pytest.raises(ShedderError, match="lost SSM heads"):
        first.mask(Candidate(1, "ssm"))
    with pytest.raises(ShedderError, match="out of range"):
        first.mask(Candidate(1, "ssm_heads", 2))
    removed = [Candidate(0, "mamba_block"), Candidate(2, "ssm")] + heads(3, 0)
    for candidate in removed:
        first.mask(candidate)
    masked = first.logits(IDS)
    second = first.pruned_model(removed)
    assert torch.allclose(second(IDS, use_cache=False).logits, masked, atol=1e-5)
    assert params(first.model) - params(second) == first.removed_params(removed)
    assert second.config.layer_heads == [4, 8, 4] and second.config.ssm_removed_layers == [1]
    assert second.config.source_layers == [1, 2, 3]
    assert first.pruned_model([Candidate(2, "mamba_block")]).config.layer_heads == [8, 4, 6]
    whole = first.pruned_model([Candidate(1, "mamba_block"), Candidate(3, "mamba_block")]).config
    assert whole.model_type == "mamba2" and "layer_heads" not in whole.to_dict()  # nothing uneven left: stock


@torch.no_grad()
def test_no_heads_lost_stays_as_before(tmp_path):
    """Without head removal nothing changes: stock type for blocks only, no layer_heads written."""
    adapter = adapter_for(tiny(2))
    assert adapter.pruned_model([Candidate(1, "mamba_block")]).config.model_type == "mamba2"
    pruned = adapter.pruned_model([Candidate(1, "ssm")])
    pruned.save_pretrained(tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["model_type"] == "shedder_mamba2" and "layer_heads" not in saved and saved["ssm_removed_layers"] == [1]


@torch.no_grad()
def test_pruned_generate_with_cache_matches_full_recompute():
    pruned = adapter_for(tiny(2)).pruned_model(heads(0, 1) + heads(1, 0, 3) + [Candidate(2, "ssm")])
    assert_generate_matches_recompute(pruned, IDS[:1, :12])


def test_head_pruned_checkpoint_loads_without_the_package(tmp_path, tokenizer):
    from shedder_ov.pipeline import save_checkpoint

    adapter = adapter_for(tiny(2))
    removed = heads(0, 2) + heads(2, 0, 1) + [Candidate(3, "ssm")]
    for candidate in removed:
        adapter.mask(candidate)
    with torch.no_grad():
        expected = adapter.logits(IDS[:1])
    save_checkpoint(adapter.pruned_model(removed), tokenizer, tmp_path / "p")
    loaded = load_without_package(tmp_path / "p", IDS[:1])
    assert loaded["cls"] == "ShedderMamba2ForCausalLM" and loaded["config"]["layer_heads"] == [6, 8, 4, 8]
    assert torch.allclose(loaded["logits"], expected, atol=1e-5)


def test_bad_input():
    stage = StageSpec(targets=["ssm_heads"], stop=StopRule(num_components=2))
    odd = Mamba2Config(hidden_size=48, num_heads=6, head_dim=16, n_groups=4, expand=2)
    with pytest.raises(ShedderError, match=r"search\.targets: ssm_heads needs n_groups \(4\) to divide num_heads \(6\)"):
        adapter_class_for("mamba2").check_search(odd, SearchSpec(targets=["ssm_heads"], stop=StopRule(num_components=2)))
    adapter_class_for("mamba2").check_stage(tiny(2).config, stage, "search", False)  # 8 heads, 2 groups: fine
    with pytest.raises(ShedderError, match="ssm_heads not in a mamba model") as error:
        adapter_class_for("mamba").check_stage(tiny_model("mamba").config, stage, "search", False)
    assert "\n" not in str(error.value)
    adapter = adapter_for(tiny(2))
    with pytest.raises(ShedderError, match=r"head index out of range \(layer 1 has 4 heads per B/C group: 0\.\.3\)"):
        adapter.pruned_model(heads(1, 4))
    with pytest.raises(ShedderError, match="out of range"):
        adapter.mask(Candidate(0, "ssm_heads", -1))
    with pytest.raises(ShedderError, match="removing all 4 heads per group"):
        adapter.pruned_model(heads(1, 0, 1, 2, 3))
    with pytest.raises(ShedderError, match="4 layers"):
        adapter.mask(Candidate(7, "ssm_heads", 0))
    ssm_less = adapter_for(adapter.pruned_model([Candidate(2, "ssm")]))
    with pytest.raises(ShedderError, match="no SSM left"):
        ssm_less.mask(Candidate(2, "ssm_heads", 0))


def test_head_pruned_ir_parity_and_states(tmp_path, tokenizer):
    """The IR of a head-pruned model: its per-layer states shrink, and it matches torch."""
    from shedder_ov.export.configs import layer_states
    from shedder_ov.export.exporter import export_checkpoint
    from shedder_ov.runtime import read_ir

    pruned = adapter_for(tiny(2)).pruned_model(heads(0, 1, 2) + heads(1, 0) + [Candidate(2, "ssm")])
    pruned.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    shapes = layer_states(pruned.config, batch=1)
    assert shapes[0] == {"ssm": [1, 4, 16, 16], "conv": [1, 4 * 16 + 2 * 2 * 16, 3]}
    assert shapes[1]["ssm"] == [1, 6, 16, 16] and shapes[2] == {"conv": [1, 128, 3]} and shapes[3]["ssm"][1] == 8
    report = export_checkpoint(tmp_path / "ckpt", tmp_path / "ir", strict=True)
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_equal"]
    assert max(parity["max_abs_diff_short"], parity["max_abs_diff_long"]) <= 1e-3
    variables = {v.get_info().variable_id: list(v.get_info().data_shape.get_min_shape())[1:] for v in read_ir(tmp_path / "ir").get_variables()}
    assert len(variables) == 4 + 3
    assert sorted(v for v in variables.values() if len(v) == 3) == [[4, 16, 16], [6, 16, 16], [8, 16, 16]]


@pytest.mark.slow
@torch.no_grad()
def test_real_mamba2_tiny_heads():
    """mamba2-tiny: a few head groups of a few layers go; masked == pruned, params exact."""
    from shedder_ov.checkpoints import load_checkpoint

    model = load_checkpoint(require(MODELS / "mamba2-tiny"))
    adapter = adapter_for(model)
    per_group = adapter.heads_per_group(0)
    removed = heads(1, 0, per_group - 1) + heads(5, 2) + [Candidate(7, "mamba_block"), Candidate(9, "ssm")] + heads(9, 1)
    ids = IDS[:1, :48] % model.config.vocab_size
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(ids)
    pruned = adapter.pruned_model(removed)
    assert torch.allclose(adapter_for(pruned).logits(ids), masked, atol=1e-4)
    assert torch.allclose(pruned(ids, use_cache=False).logits, masked, atol=1e-4)
    assert params(model) - params(pruned) == adapter.removed_params(removed)
    heads_now = pruned.config.layer_heads
    groups = model.config.n_groups
    assert heads_now[1] == model.config.num_heads - 2 * groups and heads_now[5] == model.config.num_heads - groups
