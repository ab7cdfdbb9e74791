"""GraniteMoeHybrid (Granite-4.0-H) export: our stateful graph (per-layer KV cache + conv/SSM
states) for stock GraniteMoeHybridForCausalLM (dense RoPE, MoE NoPE) and a heavily pruned
ShedderGraniteMoeHybridForCausalLM, every multiplier away from 1; its runtime, compression, a
layer-removed model that stays stock and runs through stock optimum-intel, the real
granitemoehybrid-tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.graph_granitemoehybrid import forward_with_states
from shedder_ov.export.parity import torch_greedy
from shedder_ov.export.states import granitemoehybrid_states
from shedder_ov.modeling import ShedderGraniteMoeHybridConfig, ShedderGraniteMoeHybridForCausalLM
from shedder_ov.runtime import read_ir

from .conftest import (
    MODELS,
    assert_graph_in_pieces_matches_model,
    assert_graph_steps_match_generate,
    assert_real_model_exports,
    assert_runtime_matches_dynamic,
    assert_layer_groups_match_whole,
    exported_layouts,
    require,
)

SMALL = dict(
    hidden_size=64, num_hidden_layers=4, vocab_size=8192, num_attention_heads=4, num_key_value_heads=2,
    mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=2, mamba_d_conv=4, mamba_expand=2,
    mamba_chunk_size=16, shared_intermediate_size=96, intermediate_size=48, bos_token_id=0, pad_token_id=0,
    eos_token_id=None,  # greedy runs never stop or suppress a token (min_new_tokens would suppress eos)
    layer_types=["mamba", "attention", "mamba", "attention"], num_local_experts=0, num_experts_per_tok=0,
    # every multiplier away from 1
    embedding_multiplier=1.7, residual_multiplier=0.6, attention_multiplier=0.2, logits_scaling=2.5,
)
MOE = dict(num_local_experts=4, num_experts_per_tok=2)


def spec(mixer="mamba", ssm=True, mamba_heads=8, kv_heads=0, mlp_width=96, experts=4):
    return {"mixer": mixer, "ssm": ssm, "mamba_heads": mamba_heads, "kv_heads": kv_heads, "mlp_width": mlp_width, "experts": experts}


PRUNED_SPECS = [
    spec(),  # a full Mamba layer
    spec(mamba_heads=4, experts=3),  # half the SSM heads (2 per B/C group), an expert gone
    spec("attention", ssm=False, mamba_heads=0, kv_heads=1, mlp_width=48, experts=2),  # one KV head (GQA 2:1 kept)
    spec(ssm=False, mamba_heads=6, mlp_width=0),  # an SSM-less mixer, experts only
    spec(None, ssm=False, mamba_heads=0, mlp_width=80, experts=0),  # MLP only (80: no multiple of the int4 group)
    spec("attention", ssm=False, mamba_heads=0, kv_heads=2, mlp_width=0, experts=0),  # attention only
    spec(mamba_heads=2, mlp_width=96, experts=0),  # one SSM head per group, dense MLP
]
LAYOUTS = {
    "stock": dict(cls=GraniteMoeHybridForCausalLM, config=GraniteMoeHybridConfig, fields=dict(position_embedding_type="rope")),
    "stock_moe_nope": dict(cls=GraniteMoeHybridForCausalLM, config=GraniteMoeHybridConfig, fields=MOE),
    "pruned": dict(
        cls=ShedderGraniteMoeHybridForCausalLM,
        config=ShedderGraniteMoeHybridConfig,
        fields=dict(**MOE, position_embedding_type="rope", layer_specs=PRUNED_SPECS),
    ),
}
EXPORTED = ["stock", "stock_moe_nope", "pruned"]


def tiny_granite(layout: str):
    torch.manual_seed(0)
    kind = LAYOUTS[layout]
    model = kind["cls"](kind["config"](**{**SMALL, **kind["fields"]})).eval()
    with torch.no_grad():  # spread A/dt/D so the SSMs matter
        for layer in model.model.layers:
            if hasattr(layer.mamba, "A_log"):
                layer.mamba.A_log.uniform_(-1.0, 1.5)
                layer.mamba.dt_bias.uniform_(-2.0, 0.5)
                layer.mamba.D.uniform_(0.5, 1.5)
    return model


def zero_states(config, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(shape) for layer in granitemoehybrid_states(config, batch, 0) for shape in layer.values()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    return exported_layouts(tmp_path_factory, tokenizer, tiny_granite)


def test_states_follow_the_layout():
    config = tiny_granite("pruned").config
    layers = granitemoehybrid_states(config, 1, 3)
    assert [sorted(layer) for layer in layers] == [["conv", "ssm"], ["conv", "ssm"], ["key", "value"], ["conv"], [], ["key", "value"], ["conv", "ssm"]]
    assert layers[0]["ssm"] == [1, 8, 16, 16] and layers[0]["conv"] == [1, 128 + 2 * 2 * 16, 3]
    assert layers[1]["ssm"] == [1, 4, 16, 16] and layers[1]["conv"] == [1, 64 + 64, 3]
    assert layers[2]["key"] == [1, 1, 3, 16] and layers[5]["value"] == [1, 2, 3, 16]
    assert layers[3]["conv"] == [1, 6 * 16, 3]  # SSM-less: x's channels only
    stock = granitemoehybrid_states(tiny_granite("stock").config, 2, 0)
    mamba, attention = {"ssm": [2, 8, 16, 16], "conv": [2, 192, 3]}, {"key": [2, 2, 0, 16], "value": [2, 2, 0, 16]}
    assert stock == [mamba, attention, mamba, attention]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_graph_in_pieces_matches_model(layout):
    assert_graph_in_pieces_matches_model(tiny_granite(layout), forward_with_states, zero_states)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_graph_steps_match_generate_with_cache(layout):
    assert_graph_steps_match_generate(tiny_granite(layout), forward_with_states, zero_states)


@pytest.mark.parametrize("layout", EXPORTED)
def test_export_parity_and_states(exported, layout):
    checkpoint, ir_dir, report = exported(layout)
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_equal"] and parity["long_prompt_tokens"] >= 1024
    assert max(parity["max_abs_diff_short"], parity["max_abs_diff_long"]) <= 1e-3
    config = LAYOUTS[layout]["config"].from_pretrained(checkpoint)
    variables = {v.info.variable_id: v.info.data_shape for v in read_ir(ir_dir).get_variables()}
    assert len(variables) == sum(len(layer) for layer in granitemoehybrid_states(config, 1, 0)) == {"stock": 8, "stock_moe_nope": 8, "pruned": 11}[layout]
    keys = [shape for name, shape in variables.items() if ".key." in name]
    assert keys and all(shape[2].is_dynamic and shape[0].is_dynamic for shape in keys)
    kv_heads = [layer["key"][1] for layer in granitemoehybrid_states(config, 1, 0) if "key" in layer]
    assert sorted(shape[1].get_length() for shape in keys) == sorted(kv_heads)  # per-layer KV heads


def test_layer_groups_match_whole_ir(exported):
    """The parity check's layer-group cut (large models) on the pruned hybrid: KV caches and states per group."""
    assert_layer_groups_match_whole(exported("pruned")[1], groups=3)


def test_runtime_pieces_and_decode_match_dynamic(exported):
    """Static-shape compiles (pieces, the If-free decode step with the fused KV-cache attention)
    against the single dynamic compile; a prompt fed in three calls against the whole."""
    _, ir_dir, _ = exported("pruned")
    assert_runtime_matches_dynamic(ir_dir)


@pytest.mark.parametrize("mode", ["int8_asym", "int4_asym"])
def test_compressed_variants_generate(exported, tmp_path, mode):
    """Mixer, attention, MLP and expert weights are compressed, the conv taps stay float; the IR
    loads in optimum-intel and generates (the fp32 one: the torch model's greedy tokens)."""
    import openvino as ov
    from optimum.intel import OVModelForCausalLM

    checkpoint, ir_dir, _ = exported("pruned")
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    if mode == "int8_asym":
        fp32 = OVModelForCausalLM.from_pretrained(ir_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
        out = fp32.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        model = ShedderGraniteMoeHybridForCausalLM.from_pretrained(checkpoint).eval()
        assert out[0, 5:].tolist() == torch_greedy(adapter_for(model), prompt[0].numpy(), 8)
    report = compress_ir(ir_dir, tmp_path / mode, CompressOptions(mode=mode))
    assert report["ir_bytes"] < (ir_dir / "openvino_model.bin").stat().st_size / 2
    constants = [op for op in read_ir(tmp_path / mode).get_ordered_ops() if op.get_type_name() == "Constant"]
    weight_types = [op.get_output_element_type(0) for op in constants if op.get_friendly_name().endswith(".weight")]
    # embedding + head, 4 mixers × 2, 2 attention × 4, 5 shared MLPs × 2, 4 routers + expert stacks ([E, out, in]) × 3
    assert len(weight_types) == 2 + 8 + 8 + 10 + 12 and set(weight_types) <= {ov.Type.u8, ov.Type.i8, ov.Type.u4, ov.Type.i4}
    conv_widths = ([1, 1, 192], [1, 1, 128], [1, 1, 96])  # layers 0, 1, 3 (SSM-less: 96) and 6 (32 + 64)
    conv_taps = [op for op in constants if op.get_output_shape(0) in conv_widths]
    assert len(conv_taps) == 4 * 4 and all(op.get_output_element_type(0) == ov.Type.f32 for op in conv_taps)
    model = OVModelForCausalLM.from_pretrained(tmp_path / mode)
    assert model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == 9


STOCK_OPTIMUM = """
import sys, json, torch
sys.modules["shedder_ov"] = None  # stock optimum-intel only: its own granitemoehybrid export
from optimum.intel import OVModelForCausalLM
model = OVModelForCausalLM.from_pretrained(sys.argv[1], export=True, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
out = model.generate(torch.tensor([json.loads(sys.argv[2])]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
print(json.dumps({"cls": type(model).__name__, "tokens": out[0].tolist()}))
"""


def test_layer_removal_stays_stock_and_runs_in_stock_optimum(tmp_path, tokenizer):
    """A model that only lost whole layers is a stock granitemoehybrid (layer_types shortened):
    our export has parity, and optimum-intel alone (no shedder_ov: its own export config) exports
    it and greedy-decodes the torch model's tokens."""
    from shedder_ov.export.exporter import export_checkpoint

    model = adapter_for(tiny_granite("stock")).pruned_model([Candidate(0, "layer")])
    assert type(model) is GraniteMoeHybridForCausalLM and model.config.layer_types == ["attention", "mamba", "attention"]
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    assert export_checkpoint(tmp_path / "ckpt", tmp_path / "ir", strict=True)["parity"]["ok"]
    prompt = [1, 2, 3, 4, 5, 6, 7]
    result = subprocess.run([sys.executable, "-c", STOCK_OPTIMUM, str(tmp_path / "ckpt"), json.dumps(prompt)],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    stock = json.loads(result.stdout.strip().splitlines()[-1])
    assert stock["cls"] == "OVModelWithMambaForCausalLM"
    assert stock["tokens"][len(prompt):] == torch_greedy(adapter_for(model), torch.tensor(prompt).numpy(), 10)


@pytest.mark.slow
def test_real_granitemoehybrid_tiny(tmp_path):
    """The trained granitemoehybrid-tiny (12 Mamba-2 + 4 attention layers, GQA, RoPE, chunk 128)
    exports with strict parity and continues the model card's story."""
    story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day, she saw a big, scary wolf."
    assert_real_model_exports(require(MODELS / "granitemoehybrid-tiny"), tmp_path / "ir", 12 * 2 + 4 * 2, story)
