"""GraniteMoeHybrid (Granite-4.0-H): the adapter's masked forward against stock transformers,
physical removal of every target (logits equal to the masked model, exact parameter counts),
routed experts, generation with cache, loading without shedder_ov, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

from shedder_ov.adapters import Candidate, adapter_for, count_params
from shedder_ov.errors import ShedderError
from shedder_ov.recipe import SearchSpec

from .conftest import MODELS, assert_generate_matches_recompute, load_without_package

LAYER_TYPES = ["mamba", "attention", "mamba", "attention", "mamba"]


def tiny_granite_config(experts: int = 0, multipliers: bool = True, **overrides) -> GraniteMoeHybridConfig:
    """5 layers (M A M A M); GQA 4 query / 2 KV heads of 16; 8 SSM heads in 2 B/C groups; chunk
    16; RoPE; shared MLP 96 wide; every multiplier away from 1 so a dropped one shows."""
    fields = dict(
        hidden_size=64, num_hidden_layers=5, layer_types=LAYER_TYPES, vocab_size=512, num_attention_heads=4, num_key_value_heads=2,
        shared_intermediate_size=96, intermediate_size=48, num_local_experts=experts, num_experts_per_tok=2 if experts else 0,
        mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=16, mamba_expand=2,
        position_embedding_type="rope", bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
    )
    if multipliers:
        fields.update(embedding_multiplier=1.3, residual_multiplier=0.7, logits_scaling=1.6, attention_multiplier=0.09)
    return GraniteMoeHybridConfig(**{**fields, **overrides})


def tiny_granite(experts: int = 0, seed: int = 0, **overrides) -> GraniteMoeHybridForCausalLM:
    torch.manual_seed(seed)
    model = GraniteMoeHybridForCausalLM(tiny_granite_config(experts, **overrides)).eval()
    with torch.no_grad():  # spread A/dt and the norms so every part matters
        for layer in model.model.layers:
            if layer.mamba is not None:
                layer.mamba.A_log.uniform_(-1.0, 1.5)
                layer.mamba.dt_bias.uniform_(-2.0, 0.5)
                layer.mamba.norm.weight.uniform_(0.5, 1.5)
    return model


IDS = torch.randint(1, 512, (2, 40), generator=torch.Generator().manual_seed(1))

EVERYTHING = [
    Candidate(0, "ssm_heads", 1),
    Candidate(0, "mlp_channels"),
    Candidate(1, "attention_heads", 0),
    Candidate(1, "mlp"),
    Candidate(2, "ssm"),
    Candidate(2, "mlp_channels"),
    Candidate(2, "mlp_channels"),
    Candidate(3, "attention"),
    Candidate(4, "mamba_block"),
]
SPECS = [
    {"mixer": "mamba", "ssm": True, "mamba_heads": 6, "kv_heads": 0, "mlp_width": 80, "experts": 0},
    {"mixer": "attention", "ssm": False, "mamba_heads": 0, "kv_heads": 1, "mlp_width": 0, "experts": 0},
    {"mixer": "mamba", "ssm": False, "mamba_heads": 8, "kv_heads": 0, "mlp_width": 64, "experts": 0},
    {"mixer": None, "ssm": False, "mamba_heads": 0, "kv_heads": 0, "mlp_width": 96, "experts": 0},
    {"mixer": None, "ssm": False, "mamba_heads": 0, "kv_heads": 0, "mlp_width": 96, "experts": 0},
]


def masked(adapter, removed, ids=IDS):
    for candidate in removed:
        adapter.mask(candidate)
    return adapter.logits(ids)


def channel_adapter(model, order: str = "weight_l1"):
    adapter = adapter_for(model)
    adapter.set_channel_groups(16)
    adapter.rank_channels(order)
    return adapter


@pytest.mark.parametrize("experts", [0, 4])
def test_adapter_forward_matches_stock(experts, one_thread):
    model = tiny_granite(experts)
    with torch.no_grad():
        assert torch.allclose(adapter_for(model).logits(IDS), model(IDS).logits.float(), atol=1e-5)


@pytest.mark.parametrize("multipliers", [True, False])
def test_pruned_model_equals_masked_and_counts_exactly(multipliers, one_thread):
    model = tiny_granite(multipliers=multipliers)
    adapter = channel_adapter(model)
    with torch.no_grad():
        expected = masked(adapter, EVERYTHING)
        pruned = adapter.pruned_model(EVERYTHING)
        assert type(pruned).__name__ == "ShedderGraniteMoeHybridForCausalLM"
        assert count_params(model) - count_params(pruned) == adapter.removed_params(EVERYTHING)
        assert pruned.config.layer_specs == SPECS and pruned.config.layer_types == ["mamba", "attention", "mamba", "moe", "moe"]
        assert torch.allclose(pruned(IDS).logits.float(), expected, atol=1e-5)
        assert torch.allclose(adapter_for(pruned).logits(IDS), expected, atol=1e-5)


def test_experts_masked_equal_removed(one_thread):
    """A masked expert (router logit -inf before top-k) is a removed one (its weights and router
    row gone); the last num_experts_per_tok experts of a layer stay."""
    model = tiny_granite(experts=4)
    adapter = adapter_for(model)
    removed = [Candidate(0, "experts", 1), Candidate(1, "experts", 3), Candidate(1, "experts", 0), Candidate(2, "mlp"), Candidate(3, "attention")]
    assert not adapter.available(Candidate(1, "experts", 2), removed)
    per_expert = 3 * model.config.intermediate_size * model.config.hidden_size + model.config.hidden_size
    assert adapter.removed_params([Candidate(4, "experts", 2)]) == per_expert
    with torch.no_grad():
        expected = masked(adapter, removed)
        pruned = adapter.pruned_model(removed)
        assert [spec["experts"] for spec in pruned.config.layer_specs] == [3, 2, 4, 4, 4]
        assert count_params(model) - count_params(pruned) == adapter.removed_params(removed)
        assert torch.allclose(pruned(IDS).logits.float(), expected, atol=1e-5)
    assert_generate_matches_recompute(pruned, IDS[:1, :20])


def test_heads_removed_one_by_one_count_what_they_hold(one_thread):
    """An SSM head group is its z/x/dt rows, conv channels, A/D/dt_bias, norm weights and out_proj
    columns; a KV head is its k/v rows plus its query heads' q rows and o_proj columns."""
    adapter = adapter_for(tiny_granite())
    config = adapter.config
    per_head = config.mamba_d_head * (3 * config.hidden_size + config.mamba_d_conv + 1 + 1) + config.hidden_size + 3  # z/x/out, conv, conv bias, norm; dt row, A/D/dt_bias
    kv_head = 16 * config.hidden_size * 2 * (1 + adapter.kv_groups)
    assert adapter.removed_params([Candidate(2, "ssm_heads", 0)]) == config.mamba_n_groups * per_head
    assert adapter.removed_params([Candidate(1, "attention_heads", 1)]) == kv_head


def test_only_whole_layers_removed_stays_stock(tmp_path, tokenizer, one_thread):
    """An emptied layer (mixer and MLP gone) is a removed one: the result is a stock checkpoint
    that plain transformers loads."""
    from shedder_ov.pipeline import save_checkpoint

    model = tiny_granite()
    adapter = adapter_for(model)
    removed = [Candidate(1, "layer"), Candidate(2, "mamba_block"), Candidate(2, "mlp")]
    with torch.no_grad():
        expected = masked(adapter, removed)
        pruned = adapter.pruned_model(removed)
    assert type(pruned) is GraniteMoeHybridForCausalLM and pruned.config.layer_types == ["mamba", "attention", "mamba"]
    assert pruned.config.num_hidden_layers == 3
    assert torch.allclose(pruned(IDS).logits.float(), expected, atol=1e-5)
    assert count_params(model) - count_params(pruned) == adapter.removed_params(removed)
    save_checkpoint(pruned, tokenizer, tmp_path / "p")
    loaded = load_without_package(tmp_path / "p", IDS[:1])
    assert loaded["cls"] == "GraniteMoeHybridForCausalLM" and loaded["module"].startswith("transformers.")
    assert torch.allclose(loaded["logits"], expected[:1], atol=1e-4)


def test_generation_with_cache_equals_recompute(one_thread):
    pruned = channel_adapter(tiny_granite(), "first").pruned_model(EVERYTHING)
    assert_generate_matches_recompute(pruned, IDS[:1, :20])


def test_pruned_checkpoint_loads_without_the_package(tmp_path, tokenizer):
    from shedder_ov.pipeline import save_checkpoint

    adapter = channel_adapter(tiny_granite(experts=4), "first")
    removed = EVERYTHING + [Candidate(0, "experts", 2)]
    with torch.no_grad():
        expected = masked(adapter, removed)[:1]
    save_checkpoint(adapter.pruned_model(removed), tokenizer, tmp_path / "p")
    loaded = load_without_package(tmp_path / "p", IDS[:1])
    assert loaded["cls"] == "ShedderGraniteMoeHybridForCausalLM"
    assert torch.allclose(loaded["logits"], expected, atol=1e-4)


def test_availability_rules():
    adapter = adapter_for(tiny_granite())
    a0, a1 = Candidate(1, "attention_heads", 0), Candidate(1, "attention_heads", 1)
    assert adapter.available(a1, []) and not adapter.available(a1, [a0])  # the last KV head stays
    s = [Candidate(0, "ssm_heads", j) for j in range(4)]
    assert adapter.available(s[3], s[:2]) and not adapter.available(s[3], s[:3])  # one head per group stays
    assert not adapter.available(Candidate(0, "ssm"), s[:1]) and not adapter.available(s[0], [Candidate(0, "ssm")])
    assert not adapter.available(s[0], [Candidate(0, "mamba_block")])  # the mixer holds its heads
    parts = [Candidate(2, "mamba_block"), Candidate(2, "mlp")]
    assert adapter.available(Candidate(2, "layer"), parts[:1]) and not adapter.available(Candidate(2, "layer"), parts)
    assert adapter.candidates(["experts"]) == []  # a dense model
    names = [c.name for c in adapter.candidates(["attention", "attention_heads", "ssm_heads", "mlp"]) if c.layer < 2]
    assert names == ["layers.0.mlp"] + [f"layers.0.ssm.heads.{j}" for j in range(4)] + [
        "layers.1.attn", "layers.1.mlp", "layers.1.attn.heads.0", "layers.1.attn.heads.1"
    ]
    everything_but_one = [Candidate(i, "layer") for i in range(4)] + parts
    assert not adapter.available(Candidate(4, "layer"), everything_but_one)  # one layer must stay
    assert not adapter.available(Candidate(4, "mlp"), everything_but_one + [Candidate(4, "mamba_block")])


def test_bad_input_is_one_line():
    adapter = adapter_for(tiny_granite())
    with pytest.raises(ShedderError, match=r"the model has 5 layers \(0..4\)"):
        adapter.validate(Candidate(9, "attention"))
    with pytest.raises(ShedderError, match=r"layer 0 has no attention left to remove"):
        adapter.validate(Candidate(0, "attention"))
    with pytest.raises(ShedderError, match=r"attention_heads 0..1"):
        adapter.validate(Candidate(1, "attention_heads", 5))
    config = tiny_granite_config()
    with pytest.raises(ShedderError, match=r"search.group_size: 40 must divide the MLP width\(s\) \[96\]"):
        type(adapter).check_search(config, SearchSpec(targets=["mlp_channels"], stop={"num_components": 1}, group_size=40))
    with pytest.raises(ShedderError, match=r"experts: no layer has more than num_experts_per_tok \(0\)"):
        type(adapter).check_stage(config, SearchSpec.model_construct(targets=["experts"]), "search", False)


@torch.no_grad()
def test_recovery_lora_defaults_merge_exactly(tmp_path):
    """LoRA on the mixers' and shared MLPs' projections the pruned model still has (not the routed
    experts'), merged back into the same architecture with the tuned logits."""
    from shedder_ov.recipe import parse_recipe
    from shedder_ov.recovery import lora_targets, merged, prepare

    adapter = channel_adapter(tiny_granite(experts=4), "first")
    removed = EVERYTHING[:-2] + [Candidate(4, "experts", 0)]  # keeps every kind of projection
    pruned = adapter.pruned_model(removed)
    spec = parse_recipe(
        {"model": "unused", "search": {"targets": ["layer"], "apply": "x.json"}, "output": str(tmp_path), "recovery": {"data": {"path": "t.txt"}}}
    ).recovery
    pruned_adapter = adapter_for(pruned)
    expected_targets = ["in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "shared_mlp.input_linear", "shared_mlp.output_linear"]
    assert lora_targets(pruned_adapter, spec) == expected_targets
    keys = set(pruned.state_dict())
    module = prepare(pruned, pruned_adapter, spec)
    for name, param in module.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.05)
    module.eval()
    tuned = pruned_adapter.logits(IDS)
    assert not torch.allclose(tuned, adapter_for(adapter.pruned_model(removed)).logits(IDS), atol=1e-3)
    plain = merged(pruned, module)
    assert set(plain.state_dict()) == keys and type(plain).__name__ == "ShedderGraniteMoeHybridForCausalLM"
    assert torch.allclose(adapter_for(plain).logits(IDS), tuned, atol=1e-4)


@pytest.mark.slow
def test_real_granitemoehybrid_tiny_masked_equals_pruned():
    from shedder_ov.checkpoints import load_checkpoint

    model = load_checkpoint(MODELS / "granitemoehybrid-tiny")
    adapter = channel_adapter(model)
    ids = torch.randint(1, 8192, (1, 300), generator=torch.Generator().manual_seed(0))  # past two 128-token chunks
    removed = [Candidate(3, "attention_heads", 1), Candidate(4, "ssm_heads", 5), Candidate(5, "ssm"), Candidate(7, "attention"),
               Candidate(8, "mlp_channels"), Candidate(9, "layer"), Candidate(10, "mlp")]  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(adapter.logits(ids), model(ids).logits.float(), atol=1e-4)
        expected = masked(adapter, removed, ids)
        pruned = adapter.pruned_model(removed)
        assert torch.allclose(adapter_for(pruned).logits(ids), expected, atol=1e-4)
    assert count_params(model) - count_params(pruned) == adapter.removed_params(removed)

