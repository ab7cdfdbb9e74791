"""Adapters: fast forward, masking semantics, physical removal, parameter accounting."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.errors import ShedderError

from .conftest import FAMILIES, assert_generate_matches_recompute, load_without_package, tiny_model

IDS = torch.randint(0, 8192, (2, 40), generator=torch.Generator().manual_seed(1))
REMOVALS = [
    [Candidate(1, "mamba_block")],
    [Candidate(2, "ssm")],
    [Candidate(0, "ssm"), Candidate(2, "mamba_block"), Candidate(3, "ssm")],
    [Candidate(1, "ssm"), Candidate(1, "mamba_block")],  # block removal subsumes its SSM
]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_fast_forward_matches_transformers(family):
    model = tiny_model(family)
    reference = model(IDS, use_cache=False).logits
    assert torch.allclose(adapter_for(model).logits(IDS), reference, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_masked_block_passes_residual_through(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    hidden = torch.randn(2, 10, 64)
    adapter.mask(Candidate(2, "mamba_block"))
    assert torch.equal(adapter.layer_forward(2, hidden), hidden)
    adapter.unmask(Candidate(2, "mamba_block"))
    assert not torch.allclose(adapter.layer_forward(2, hidden), hidden)


@torch.no_grad()
def test_masked_ssm_semantics_mamba2():
    """Masked Mamba-2 SSM: y = conv-activated x, then gated norm and out_proj."""
    model = tiny_model("mamba2")
    adapter = adapter_for(model)
    mixer = model.backbone.layers[1].mixer
    hidden = torch.randn(1, 7, 64)
    inner = mixer.intermediate_size
    z, xbc, _ = mixer.in_proj(hidden).split([inner, mixer.conv_dim, mixer.num_heads], dim=-1)
    x = mixer.act(mixer.conv1d(xbc.transpose(1, 2))[..., :7].transpose(1, 2))[..., :inner]
    expected = mixer.out_proj(mixer.norm(x, z))
    adapter.mask(Candidate(1, "ssm"))
    assert torch.allclose(adapter._ssm_less_view(1)(hidden), expected, atol=1e-6)
    assert adapter._ssm_less_view(1).in_proj.weight.data_ptr() == mixer.in_proj.weight.data_ptr()  # a view, no copy


@torch.no_grad()
def test_masked_ssm_semantics_mamba1():
    """Masked Mamba-1 SSM: y = act(conv(x)) * act(z)."""
    model = tiny_model("mamba")
    adapter = adapter_for(model)
    mixer = model.backbone.layers[0].mixer
    hidden = torch.randn(1, 7, 64)
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    expected = mixer.out_proj((mixer.act(mixer.conv1d(x)[..., :7]) * mixer.act(z)).transpose(1, 2))
    adapter.mask(Candidate(0, "ssm"))
    assert torch.allclose(adapter._ssm_less_view(0)(hidden), expected, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("removed", REMOVALS, ids=lambda r: "+".join(c.name for c in r))
@torch.no_grad()
def test_pruned_equals_masked_and_params_drop_exactly(family, removed):
    model = tiny_model(family)
    adapter = adapter_for(model)
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(IDS)
    pruned = adapter.pruned_model(removed)
    assert torch.allclose(pruned(IDS, use_cache=False).logits, masked, atol=1e-4)
    original = sum(p.numel() for p in model.parameters())
    assert original - sum(p.numel() for p in pruned.parameters()) == adapter.removed_params(removed) > 0
    blocks = {c.layer for c in removed if c.kind == "mamba_block"}
    assert pruned.config.num_hidden_layers == 4 - len(blocks)
    only_blocks = all(c.layer in blocks for c in removed)
    assert pruned.config.model_type == (family if only_blocks else f"shedder_{family}")


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_pruned_generate_with_cache_matches_full_recompute(family):
    model = tiny_model(family)
    pruned = adapter_for(model).pruned_model([Candidate(0, "ssm"), Candidate(2, "mamba_block")])
    assert_generate_matches_recompute(pruned, IDS[:1, :12])


def test_pruned_checkpoint_loads_without_the_package(tmp_path):
    """The folder carries its modeling code: loads with trust_remote_code where shedder_ov can't be imported."""
    model = tiny_model("mamba2")
    removed = [Candidate(1, "ssm"), Candidate(3, "mamba_block")]
    adapter = adapter_for(model)
    for candidate in removed:
        adapter.mask(candidate)
    expected = adapter.logits(IDS[:1]).tolist()
    from shedder_ov.pipeline import save_checkpoint
    from transformers import AutoTokenizer

    from .conftest import MODELS

    save_checkpoint(adapter.pruned_model(removed), AutoTokenizer.from_pretrained(MODELS / "mamba2-tiny"), tmp_path / "p")
    loaded = load_without_package(tmp_path / "p", IDS[:1])
    assert loaded["cls"] == "ShedderMamba2ForCausalLM"
    assert torch.allclose(loaded["logits"], torch.tensor(expected), atol=1e-4)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "p").config.ssm_removed_layers == [1]


def test_candidates_and_validation():
    adapter = adapter_for(tiny_model("mamba2"))
    assert [c.name for c in adapter.candidates(["mamba_block", "ssm"])][:3] == ["layers.0.block", "layers.0.ssm", "layers.1.block"]
    assert Candidate.parse("layers.7.ssm") == Candidate(7, "ssm")
    with pytest.raises(ShedderError, match="4 layers"):
        adapter.mask(Candidate(9, "mamba_block"))
    with pytest.raises(ShedderError, match="not a candidate name"):
        Candidate.parse("layers.x.heads")
    pruned = adapter_for(adapter.pruned_model([Candidate(1, "ssm")]))
    assert "layers.1.ssm" not in [c.name for c in pruned.candidates(["ssm"])]
    with pytest.raises(ShedderError, match="no SSM left"):
        pruned.mask(Candidate(1, "ssm"))


def test_cannot_remove_every_block():
    adapter = adapter_for(tiny_model("mamba"))
    with pytest.raises(ShedderError, match="every block"):
        adapter.pruned_model([Candidate(i, "mamba_block") for i in range(4)])
