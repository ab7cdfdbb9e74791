"""Falcon-H1 export: our stateful graph (per-layer KV cache + conv/SSM states) for stock
FalconH1ForCausalLM and a heavily pruned ShedderFalconH1ForCausalLM, every muP multiplier away
from 1; its runtime, compression, the real falcon-h1-tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import FalconH1Config, FalconH1ForCausalLM

from shedder_ov.adapters import adapter_for
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.graph_falcon_h1 import forward_with_states
from shedder_ov.export.parity import genai_greedy, torch_greedy
from shedder_ov.export.states import falcon_h1_states
from shedder_ov.modeling import ShedderFalconH1Config, ShedderFalconH1ForCausalLM
from shedder_ov.runtime import StatefulIR, read_ir

from .conftest import (
    also_real,
    MODELS,
    assert_graph_in_pieces_matches_model,
    assert_graph_steps_match_generate,
    assert_genai_batch_matches_single,
    assert_real_model_exports,
    assert_runtime_matches_dynamic,
    assert_stock_optimum_matches_torch,
    assert_layer_groups_match_whole,
    exported_layouts,
    require,
)

SMALL = dict(
    hidden_size=64, num_hidden_layers=4, vocab_size=8192, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=2, mamba_d_conv=4,
    mamba_chunk_size=16, intermediate_size=96, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    # every multiplier away from 1 (and each of the five muP entries different)
    embedding_multiplier=1.7, lm_head_multiplier=0.6, key_multiplier=0.8, attention_in_multiplier=1.3,
    attention_out_multiplier=0.7, ssm_in_multiplier=1.2, ssm_out_multiplier=0.9,
    ssm_multipliers=[0.5, 1.5, 0.8, 1.25, 0.7], mlp_multipliers=[1.4, 0.6],
)


def spec(kv_heads=2, mamba_heads=8, ssm=True, mlp_width=96):
    return {"kv_heads": kv_heads, "mamba_heads": mamba_heads, "ssm": ssm, "mlp_width": mlp_width}


PRUNED_SPECS = [
    spec(),  # a full layer
    spec(kv_heads=0, mamba_heads=4),  # no attention, half the SSM heads (2 per B/C group)
    spec(kv_heads=1, mamba_heads=0, mlp_width=48),  # no Mamba, one KV head (GQA 2:1 kept), narrower MLP
    spec(mamba_heads=6, ssm=False, mlp_width=0),  # an SSM-less Mamba branch, no MLP
    spec(kv_heads=0, mamba_heads=0, mlp_width=80),  # MLP only (80: no multiple of the int4 group)
    spec(kv_heads=1, mamba_heads=2),  # one SSM head per group
]
LAYOUTS = {
    "stock": dict(cls=FalconH1ForCausalLM, config=FalconH1Config, fields=dict(mamba_rms_norm=False)),
    "stock_gated_norm": dict(cls=FalconH1ForCausalLM, config=FalconH1Config, fields=dict(mamba_rms_norm=True)),
    "pruned": dict(  # gated RMSNorm over 2 groups, gate before the norm
        cls=ShedderFalconH1ForCausalLM,
        config=ShedderFalconH1Config,
        fields=dict(num_hidden_layers=6, mamba_rms_norm=True, mamba_norm_before_gate=False, layer_specs=PRUNED_SPECS),
    ),
}
EXPORTED = ["stock", "pruned"]


def tiny_falcon_h1(layout: str):
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
    return [torch.zeros(shape) for layer in falcon_h1_states(config, batch, 0) for shape in layer.values()]


def state_count(config) -> int:
    return sum(len(layer) for layer in falcon_h1_states(config, 1, 0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    return exported_layouts(tmp_path_factory, tokenizer, tiny_falcon_h1)


def test_states_follow_the_layout():
    config = tiny_falcon_h1("pruned").config
    layers = falcon_h1_states(config, 1, 3)
    assert [sorted(layer) for layer in layers] == [
        ["conv", "key", "ssm", "value"], ["conv", "ssm"], ["key", "value"], ["conv", "key", "value"], [],
        ["conv", "key", "ssm", "value"],
    ]
    assert layers[0]["key"] == [1, 2, 3, 16] and layers[2]["key"] == [1, 1, 3, 16]
    assert layers[0]["ssm"] == [1, 8, 16, 16] and layers[0]["conv"] == [1, 128 + 2 * 2 * 16, 3]
    assert layers[1]["ssm"] == [1, 4, 16, 16] and layers[1]["conv"] == [1, 64 + 64, 3]
    assert layers[3]["conv"] == [1, 6 * 16, 3]  # SSM-less: x's channels only
    stock = falcon_h1_states(tiny_falcon_h1("stock").config, 2, 0)
    assert stock == [{"key": [2, 2, 0, 16], "value": [2, 2, 0, 16], "ssm": [2, 8, 16, 16], "conv": [2, 192, 3]}] * 4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_graph_in_pieces_matches_model(layout):
    assert_graph_in_pieces_matches_model(tiny_falcon_h1(layout), forward_with_states, zero_states)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_graph_steps_match_generate_with_cache(layout):
    assert_graph_steps_match_generate(tiny_falcon_h1(layout), forward_with_states, zero_states)


@pytest.mark.parametrize("layout", EXPORTED)
def test_export_parity_and_states(exported, layout):
    checkpoint, ir_dir, report = exported(layout)
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_equal"] and parity["long_prompt_tokens"] >= 1024
    assert parity["genai_greedy_equal"] is True  # openvino.genai's LLMPipeline, short and long prompt
    assert max(parity["max_abs_diff_short"], parity["max_abs_diff_long"]) <= 1e-3
    config = LAYOUTS[layout]["config"].from_pretrained(checkpoint)
    variables = {v.info.variable_id: v.info.data_shape for v in read_ir(ir_dir).get_variables()}
    assert len(variables) == state_count(config) == {"stock": 4 * 4, "pruned": 4 * 2 + 3 + 4}[layout]
    keys = [shape for name, shape in variables.items() if ".key." in name]
    assert keys and all(shape[2].is_dynamic and shape[0].is_dynamic for shape in keys)
    kv_heads = [layer["key"][1] for layer in falcon_h1_states(config, 1, 0) if "key" in layer]
    assert sorted(shape[1].get_length() for shape in keys) == sorted(kv_heads)  # per-layer KV heads


def test_layer_groups_match_whole_ir(exported):
    """The parity check's layer-group cut (large models) on the pruned hybrid: KV caches and states per group."""
    assert_layer_groups_match_whole(exported("pruned")[1], groups=3)


def test_runtime_pieces_and_decode_match_dynamic(exported):
    """Static-shape compiles (128-token pieces + remainder, the If-free decode step with the
    plugin's fused KV-cache attention, KV of any length copied between them) against the single
    dynamic compile; a prompt fed in three calls against the whole."""
    _, ir_dir, _ = exported("pruned")
    assert_runtime_matches_dynamic(ir_dir)


def test_genai_left_padded_batch_and_stock_optimum(exported):
    """A batch in openvino.genai (left-padded: attention masks the padding) equals its prompts one
    by one; stock optimum-intel (no shedder_ov) generates torch's tokens."""
    checkpoint, ir_dir, _ = exported("pruned")
    assert_genai_batch_matches_single(ir_dir)
    assert_stock_optimum_matches_torch(checkpoint, ir_dir)


@pytest.mark.parametrize("mode", ["int8_asym", "int4_asym"])
def test_compressed_variants_generate(exported, tmp_path, mode):
    """Attention, mixer and MLP MatMul weights are compressed, the conv taps and RoPE's inv_freq
    stay float; the IR loads in optimum-intel and generates (the fp32 one: the torch model's
    greedy tokens)."""
    import openvino as ov
    from optimum.intel import OVModelForCausalLM

    checkpoint, ir_dir, _ = exported("pruned")
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    if mode == "int8_asym":
        fp32 = OVModelForCausalLM.from_pretrained(ir_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
        out = fp32.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        model = ShedderFalconH1ForCausalLM.from_pretrained(checkpoint).eval()
        assert out[0, 5:].tolist() == torch_greedy(adapter_for(model), prompt[0].numpy(), 8)
    report = compress_ir(ir_dir, tmp_path / mode, CompressOptions(mode=mode))
    assert report["ir_bytes"] < (ir_dir / "openvino_model.bin").stat().st_size / 2
    constants = [op for op in read_ir(tmp_path / mode).get_ordered_ops() if op.get_type_name() == "Constant"]
    weight_types = [op.get_output_element_type(0) for op in constants if op.get_friendly_name().endswith(".weight")]
    # embedding and (tied) head + 4 attention × 4 + 4 mixers × 2 + 5 MLPs × 3
    assert len(weight_types) == 2 + 16 + 8 + 15 and set(weight_types) <= {ov.Type.u8, ov.Type.i8, ov.Type.u4, ov.Type.i4}
    conv_widths = ([1, 1, 192], [1, 1, 128], [1, 1, 96], [1, 1, 96])  # layers 0, 1, 3 (SSM-less), 5 (32 + 64)
    conv_taps = [op for op in constants if op.get_output_shape(0) in conv_widths]
    # 4 taps per mixer, and the SSM-less layer's muP vector (z, x: [1, 1, 2 · 96]), all float
    assert len(conv_taps) == 4 * 4 + 1 and all(op.get_output_element_type(0) == ov.Type.f32 for op in conv_taps)
    inv_freq = [op for op in constants if "rotary_emb" in op.get_friendly_name() and len(op.get_output_shape(0)) == 3]
    assert len(inv_freq) == 1 and inv_freq[0].get_output_element_type(0) == ov.Type.f32  # RoPE: never quantized
    model = OVModelForCausalLM.from_pretrained(tmp_path / mode)
    assert model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == 9
    ids = np.arange(3, 40)
    assert genai_greedy(tmp_path / mode, [ids], [8]) == [StatefulIR(tmp_path / mode, specialize=False).greedy(ids, 8)[0]]  # genai: the same dynamic compile


@pytest.mark.slow
@also_real  # test_export_granitemoehybrid.py exports the real granitemoehybrid-tiny in every run
def test_real_falcon_h1_tiny(tmp_path):
    """The trained falcon-h1-tiny (12 hybrid layers, GQA, RoPE, chunk 128) exports with strict
    parity and continues the model card's story."""
    story = "Once upon a time, there was a little girl named Lily. She loved to play with her toys and her friends."
    assert_real_model_exports(require(MODELS / "falcon-h1-tiny"), tmp_path / "ir", 12 * 4, story)
