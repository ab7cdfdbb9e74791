"""Falcon-H1: the adapter's masked forward against stock transformers, physical removal of every
target (logits equal to the masked model, exact parameter counts), generation with cache, loading
without shedder_ov, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import FalconH1Config, FalconH1ForCausalLM

from shedder_ov.adapters import Candidate, adapter_for, count_params
from shedder_ov.errors import ShedderError
from shedder_ov.recipe import SearchSpec

from .conftest import MODELS, assert_generate_matches_recompute, load_without_package


def tiny_falcon_h1_config(rms_norm: bool = False, **overrides) -> FalconH1Config:
    """4 layers; GQA 4 query / 2 KV heads; 8 SSM heads in 2 B/C groups; chunk 16; every muP
    multiplier away from 1 so a dropped one shows."""
    fields = dict(
        hidden_size=64, num_hidden_layers=4, vocab_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=96, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_d_conv=4, mamba_chunk_size=16, mamba_rms_norm=rms_norm, mamba_norm_before_gate=True,
        embedding_multiplier=1.3, lm_head_multiplier=0.7, key_multiplier=1.2, attention_in_multiplier=0.9,
        attention_out_multiplier=1.1, ssm_in_multiplier=1.05, ssm_out_multiplier=0.8, mlp_multipliers=[1.1, 0.9],
        ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.05], bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
    )
    return FalconH1Config(**{**fields, **overrides})


def tiny_falcon_h1(rms_norm: bool = False, seed: int = 0) -> FalconH1ForCausalLM:
    torch.manual_seed(seed)
    model = FalconH1ForCausalLM(tiny_falcon_h1_config(rms_norm)).eval()
    with torch.no_grad():  # spread A/dt and the norms so every part matters
        for layer in model.model.layers:
            layer.mamba.A_log.uniform_(-1.0, 1.5)
            layer.mamba.dt_bias.uniform_(-2.0, 0.5)
            if rms_norm:
                layer.mamba.norm.weight.uniform_(0.5, 1.5)
    return model


IDS = torch.randint(1, 512, (2, 40), generator=torch.Generator().manual_seed(1))

EVERYTHING = [
    Candidate(0, "attention"),
    Candidate(0, "ssm_heads", 1),
    Candidate(1, "mamba_block"),
    Candidate(1, "attention_heads", 0),
    Candidate(1, "mlp_channels"),
    Candidate(1, "mlp_channels"),
    Candidate(2, "ssm"),
    Candidate(2, "mlp"),
    Candidate(3, "ssm_heads", 0),
    Candidate(3, "ssm_heads", 2),
    Candidate(3, "mlp_channels"),
]


def masked(adapter, removed):
    for candidate in removed:
        adapter.mask(candidate)
    return adapter.logits(IDS)


@pytest.mark.parametrize("rms_norm", [False, True])
def test_adapter_forward_matches_stock(rms_norm, one_thread):
    model = tiny_falcon_h1(rms_norm)
    with torch.no_grad():
        assert torch.allclose(adapter_for(model).logits(IDS), model(IDS).logits.float(), atol=1e-5)


@pytest.mark.parametrize("rms_norm", [False, True])
def test_pruned_model_equals_masked_and_counts_exactly(rms_norm, one_thread):
    model = tiny_falcon_h1(rms_norm)
    adapter = adapter_for(model)
    adapter.set_channel_groups(16)
    adapter.rank_channels("weight_l1")
    with torch.no_grad():
        expected = masked(adapter, EVERYTHING)
        pruned = adapter.pruned_model(EVERYTHING)
        assert type(pruned).__name__ == "ShedderFalconH1ForCausalLM"
        assert count_params(model) - count_params(pruned) == adapter.removed_params(EVERYTHING)
        assert pruned.config.layer_specs == [
            {"kv_heads": 0, "mamba_heads": 6, "ssm": True, "mlp_width": 96},
            {"kv_heads": 1, "mamba_heads": 0, "ssm": True, "mlp_width": 64},
            {"kv_heads": 2, "mamba_heads": 8, "ssm": False, "mlp_width": 0},
            {"kv_heads": 2, "mamba_heads": 4, "ssm": True, "mlp_width": 80},
        ]
        assert torch.allclose(pruned(IDS).logits.float(), expected, atol=1e-5)
        assert torch.allclose(adapter_for(pruned).logits(IDS), expected, atol=1e-5)


def test_heads_removed_one_by_one_count_what_they_hold(one_thread):
    """An SSM head group is its z/x/dt rows, conv channels, A/D/dt_bias and out_proj columns; a KV
    head is its k/v rows plus its query heads' q rows and o_proj columns."""
    adapter = adapter_for(tiny_falcon_h1())
    config = adapter.config
    per_head = config.mamba_d_head * (3 * config.hidden_size + config.mamba_d_conv + 1) + config.hidden_size + 3  # z/x/out, conv, dt row, A/D/dt_bias
    ssm_head = config.mamba_n_groups * per_head
    kv_head = config.head_dim * config.hidden_size * 2 * (1 + adapter.kv_groups)
    assert adapter.removed_params([Candidate(2, "ssm_heads", 0)]) == ssm_head
    assert adapter.removed_params([Candidate(2, "attention_heads", 1)]) == kv_head


def test_only_whole_layers_removed_stays_stock(one_thread):
    model = tiny_falcon_h1()
    adapter = adapter_for(model)
    removed = [Candidate(1, "layer"), Candidate(2, "attention"), Candidate(2, "mamba_block"), Candidate(2, "mlp")]
    with torch.no_grad():
        expected = masked(adapter, removed)
        pruned = adapter.pruned_model(removed)
    assert type(pruned) is FalconH1ForCausalLM and pruned.config.num_hidden_layers == 2
    assert torch.allclose(pruned(IDS).logits.float(), expected, atol=1e-5)
    assert count_params(model) - count_params(pruned) == adapter.removed_params(removed)


def test_generation_with_cache_equals_recompute(one_thread):
    adapter = adapter_for(tiny_falcon_h1(rms_norm=True))
    adapter.set_channel_groups(16)
    adapter.rank_channels("first")
    pruned = adapter.pruned_model(EVERYTHING)
    assert_generate_matches_recompute(pruned, IDS[:1, :20])


def test_pruned_checkpoint_loads_without_the_package(tmp_path, tokenizer):
    from shedder_ov.pipeline import save_checkpoint

    adapter = adapter_for(tiny_falcon_h1())
    adapter.set_channel_groups(16)
    adapter.rank_channels("first")
    with torch.no_grad():
        expected = masked(adapter, EVERYTHING)[:1].tolist()
    save_checkpoint(adapter.pruned_model(EVERYTHING), tokenizer, tmp_path / "p")
    loaded = load_without_package(tmp_path / "p", IDS[:1])
    assert loaded["cls"] == "ShedderFalconH1ForCausalLM"
    assert torch.allclose(loaded["logits"], torch.tensor(expected), atol=1e-4)


def test_availability_rules():
    adapter = adapter_for(tiny_falcon_h1())
    a0, a1 = Candidate(0, "attention_heads", 0), Candidate(0, "attention_heads", 1)
    assert adapter.available(a1, []) and not adapter.available(a1, [a0])  # the last KV head stays
    s = [Candidate(1, "ssm_heads", j) for j in range(4)]
    assert adapter.available(s[3], s[:2]) and not adapter.available(s[3], s[:3])  # one head per group stays
    assert not adapter.available(Candidate(1, "ssm"), s[:1]) and not adapter.available(s[0], [Candidate(1, "ssm")])
    assert not adapter.available(s[0], [Candidate(1, "mamba_block")])  # the branch holds its heads
    parts = [Candidate(2, "attention"), Candidate(2, "mamba_block"), Candidate(2, "mlp")]
    assert adapter.available(Candidate(2, "layer"), parts[:2]) and not adapter.available(Candidate(2, "layer"), parts)
    names = [c.name for c in adapter.candidates(["attention_heads", "ssm_heads"]) if c.layer == 0]
    assert names == ["layers.0.attn.heads.0", "layers.0.attn.heads.1"] + [f"layers.0.ssm.heads.{j}" for j in range(4)]


def test_bad_input_is_one_line():
    adapter = adapter_for(tiny_falcon_h1())
    with pytest.raises(ShedderError, match=r"the model has 4 layers \(0..3\)"):
        adapter.validate(Candidate(9, "attention"))
    with pytest.raises(ShedderError, match=r"attention_heads 0..1"):
        adapter.validate(Candidate(0, "attention_heads", 5))
    adapter.mask(Candidate(0, "attention"))
    pruned = adapter_for(adapter.pruned_model([Candidate(0, "attention")]))
    with pytest.raises(ShedderError, match="layer 0 has no attention_heads left"):
        pruned.validate(Candidate(0, "attention_heads", 0))
    config = tiny_falcon_h1_config()
    stage = SearchSpec(targets=["mlp_channels"], stop={"num_components": 1}, group_size=40)
    with pytest.raises(ShedderError, match=r"search.group_size: 40 must divide the MLP width\(s\) \[96\]"):
        type(adapter).check_search(config, stage)
    with pytest.raises(ShedderError, match="pruned_hymba_block_idx names 28; this model has layers 0..3"):
        adapter.from_reference({"pruned_hymba_block_idx": [1, 28]}, "ref.json")
    assert adapter.from_reference({"pruned_hymba_block_idx": [1]}, "ref.json") == [Candidate(1, "attention"), Candidate(1, "mamba_block")]


@pytest.mark.slow
def test_real_falcon_h1_tiny_masked_equals_pruned():
    from shedder_ov.checkpoints import load_checkpoint

    model = load_checkpoint(MODELS / "falcon-h1-tiny")
    adapter = adapter_for(model)
    ids = torch.randint(1, 8192, (1, 300), generator=torch.Generator().manual_seed(0))  # past one 128-token chunk
    removed = [Candidate(0, "attention_heads", 1), Candidate(3, "ssm_heads", 5), Candidate(5, "ssm"), Candidate(7, "attention"), Candidate(9, "layer")]
    with torch.no_grad():
        assert torch.allclose(adapter.logits(ids), model(ids).logits.float(), atol=1e-4)
        for candidate in removed:
            adapter.mask(candidate)
        expected = adapter.logits(ids)
        pruned = adapter.pruned_model(removed)
        assert torch.allclose(adapter_for(pruned).logits(ids), expected, atol=1e-4)
    assert count_params(model) - count_params(pruned) == adapter.removed_params(removed)


@torch.no_grad()
def test_recovery_lora_defaults_merge_exactly(tmp_path):
    """The reference's Hymba recovery targets (in_proj, out_proj, up_proj, down_proj) on a pruned
    Falcon-H1, merged back into the same architecture with the tuned logits."""
    from shedder_ov.recipe import parse_recipe
    from shedder_ov.recovery import lora_targets, merged, prepare

    adapter = adapter_for(tiny_falcon_h1())
    adapter.set_channel_groups(16)
    adapter.rank_channels("first")
    pruned = adapter.pruned_model(EVERYTHING)
    spec = parse_recipe(
        {"model": "unused", "search": {"targets": ["layer"], "apply": "x.json"}, "output": str(tmp_path), "recovery": {"data": {"path": "t.txt"}}}
    ).recovery
    pruned_adapter = adapter_for(pruned)
    assert lora_targets(pruned_adapter, spec) == ["in_proj", "out_proj", "up_proj", "down_proj"]
    keys = set(pruned.state_dict())
    module = prepare(pruned, pruned_adapter, spec)
    for name, param in module.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.05)
    module.eval()
    tuned = pruned_adapter.logits(IDS)
    assert not torch.allclose(tuned, adapter_for(adapter.pruned_model(EVERYTHING)).logits(IDS), atol=1e-3)
    plain = merged(pruned, module)
    assert set(plain.state_dict()) == keys and type(plain).__name__ == "ShedderFalconH1ForCausalLM"
    assert torch.allclose(adapter_for(plain).logits(IDS), tuned, atol=1e-4)


def test_bad_recipes_are_one_line_exit_2(tmp_path, tokenizer):
    """Through the CLI, before any work: heads of a removed branch, the last head of a branch,
    a group size that does not divide the MLPs, a target size no search can reach."""
    from .test_core_pipeline import TRAIN_TEXT, _bad

    folder = tmp_path / "tiny-falcon-h1"
    tiny_falcon_h1().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    base = dict(model=str(folder), calibration={"path": str(TRAIN_TEXT), "num_samples": 4, "seq_len": 16}, output=str(tmp_path / "o"))
    removal = tmp_path / "removal.json"
    targets = ["attention", "attention_heads"]
    for names, expected in (
        (["layers.0.attn", "layers.0.attn.heads.1"], "step 2 removes layers.0.attn.heads.1, which the steps before it already removed"),
        (["layers.2.attn.heads.0", "layers.2.attn.heads.1"], "left as the last head of its branch"),
    ):
        removal.write_text(json.dumps({"removed": [{"candidate": n} for n in names]}))
        _bad(tmp_path, expected, **base, search={"targets": targets, "apply": str(removal)})
    _bad(tmp_path, "search.group_size: 40 must divide the MLP width(s) [96]", **base,
         search={"targets": ["mlp_channels"], "group_size": 40, "stop": {"num_components": 1}})  # fmt: skip
    _bad(tmp_path, "search.stop.param_reduction_pct: 60.0% is impossible with targets ['attention_heads', 'ssm_heads']", **base,
         search={"targets": ["attention_heads", "ssm_heads"], "stop": {"param_reduction_pct": 60}})  # fmt: skip
    assert not (tmp_path / "o" / "pruned").exists()
