"""Zamba2 export: our stateful graph (KV cache of the attention invocations + conv/SSM states)
for the stock layout and a heterogeneous pruned one, its runtime, compression, the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shedder_ov.adapters import adapter_for
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.graph_zamba2 import forward_with_states
from shedder_ov.export.parity import genai_greedy, torch_greedy
from shedder_ov.export.states import zamba2_states
from shedder_ov.modeling import ShedderZamba2Config, ShedderZamba2ForCausalLM
from shedder_ov.runtime import StatefulIR, read_ir

from .conftest import (
    also_real,
    MODELS,
    assert_genai_batch_matches_single,
    assert_real_model_exports,
    assert_runtime_matches_dynamic,
    assert_stock_optimum_matches_torch,
    assert_layer_groups_match_whole,
    exported_layouts,
    require,
)

COMMON = dict(
    hidden_size=64, num_hidden_layers=6, layers_block_type=["mamba", "hybrid"] * 3, vocab_size=8192, n_mamba_heads=4,
    mamba_d_state=16, chunk_size=16, num_attention_heads=4, intermediate_size=128, adapter_rank=8, use_mem_rope=True,
    bos_token_id=0, eos_token_id=0, pad_token_id=0,
)


def spec(mamba=True, ssm=True, block=None, attention=False, mlp=False):
    return {"mamba": mamba, "ssm": ssm, "block": block, "attention": attention, "mlp": mlp}


LAYOUTS = {
    # 1 shared block invoked by layers 1, 3, 5; q/k/v adapters (they need num_key_value_heads = heads)
    "stock": dict(num_key_value_heads=4, use_shared_attention_adapter=True),
    # MLP-only and attention-only invocations, a hybrid layer without Mamba, an SSM-less layer,
    # a narrower MLP (80: no multiple of the int4 group), GQA
    "pruned": dict(
        num_key_value_heads=2,
        layer_specs=[
            spec(), spec(block=0, mlp=True), spec(ssm=False),
            spec(mamba=False, ssm=False, block=0, attention=True, mlp=True), spec(), spec(block=0, attention=True),
        ],
        block_specs=[{"attention": True, "mlp": True, "mlp_width": 80}],
    ),
}


def tiny_zamba2(layout: str) -> ShedderZamba2ForCausalLM:
    torch.manual_seed(0)
    model = ShedderZamba2ForCausalLM(ShedderZamba2Config(**COMMON, **LAYOUTS[layout])).eval()
    with torch.no_grad():  # spread A/dt so the SSMs matter
        for layer in model.model.layers:
            if hasattr(layer.mamba, "A_log"):
                layer.mamba.A_log.uniform_(-1.0, 1.5)
    return model


def state_count(config) -> int:
    return sum(len(layer) for layer in zamba2_states(config, 1, 0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    return exported_layouts(tmp_path_factory, tokenizer, tiny_zamba2)


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_graph_in_pieces_matches_model(layout):
    """The traced function itself (torch): a prompt fed as 11 + 1 + 20 tokens, states carried
    (KV grows, RoPE at the offset), gives the model's own cache-free logits."""
    model = tiny_zamba2(layout)
    ids = torch.randint(0, 8192, (2, 32), generator=torch.Generator().manual_seed(1))
    states = [torch.zeros(shape) for layer in zamba2_states(model.config, 2, 0) for shape in layer.values()]
    pieces = []
    for start, end in ((0, 11), (11, 12), (12, 32)):
        logits, states = forward_with_states(adapter_for(model), ids[:, start:end], torch.ones(2, end - start), states)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), model(ids, use_cache=False).logits, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_parity_and_states(exported, layout):
    checkpoint, ir_dir, report = exported(layout)
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_equal"] and parity["long_prompt_tokens"] >= 1024
    assert parity["genai_greedy_equal"] is True  # openvino.genai's LLMPipeline, short and long prompt
    assert max(parity["max_abs_diff_short"], parity["max_abs_diff_long"]) <= 1e-3
    config = ShedderZamba2Config.from_pretrained(checkpoint)
    variables = {v.info.variable_id: v.info.data_shape for v in read_ir(ir_dir).get_variables()}
    assert len(variables) == state_count(config) == {"stock": 3 * 2 + 6 + 6, "pruned": 2 * 2 + 4 + 5}[layout]
    keys = [shape for name, shape in variables.items() if ".key." in name]
    assert keys and all(shape[2].is_dynamic and shape[0].is_dynamic for shape in keys)


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
    """Attention, MLP, adapter, linear and mixer MatMul weights are compressed; the conv taps
    (multiply-adds in our graph) and RoPE's inv_freq stay float; the IR loads in optimum-intel
    and generates (the fp32 one: the torch model's greedy tokens)."""
    import openvino as ov
    from optimum.intel import OVModelForCausalLM

    checkpoint, ir_dir, _ = exported("pruned")
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    if mode == "int8_asym":
        fp32 = OVModelForCausalLM.from_pretrained(ir_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
        out = fp32.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        model = ShedderZamba2ForCausalLM.from_pretrained(checkpoint).eval()
        assert out[0, 5:].tolist() == torch_greedy(adapter_for(model), prompt[0].numpy(), 8)
    report = compress_ir(ir_dir, tmp_path / mode, CompressOptions(mode=mode))
    assert report["ir_bytes"] < (ir_dir / "openvino_model.bin").stat().st_size / 2
    constants = [op for op in read_ir(tmp_path / mode).get_ordered_ops() if op.get_type_name() == "Constant"]
    weight_types = [op.get_output_element_type(0) for op in constants if op.get_friendly_name().endswith(".weight")]
    assert len(weight_types) == 24 and set(weight_types) <= {ov.Type.u8, ov.Type.i8, ov.Type.u4, ov.Type.i4}
    conv_taps = [op for op in constants if op.get_output_shape(0) in ([1, 1, 160], [1, 1, 128])]  # 4 per mixer
    assert len(conv_taps) == 5 * 4 and all(op.get_output_element_type(0) == ov.Type.f32 for op in conv_taps)
    inv_freq = [op for op in constants if "rotary_emb" in op.get_friendly_name() and len(op.get_output_shape(0)) == 3]
    assert len(inv_freq) == 1 and inv_freq[0].get_output_element_type(0) == ov.Type.f32  # RoPE: never quantized
    model = OVModelForCausalLM.from_pretrained(tmp_path / mode)
    assert model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == 9
    ids = np.arange(3, 40)
    assert genai_greedy(tmp_path / mode, [ids], [8]) == [StatefulIR(tmp_path / mode, specialize=False).greedy(ids, 8)[0]]  # genai: the same dynamic compile


@pytest.mark.slow
@also_real  # test_export_granitemoehybrid.py exports the real granitemoehybrid-tiny in every run
def test_real_zamba2_tiny(tmp_path):
    """The trained zamba2-tiny (4 attention invocations, RoPE, 2048-wide MLP) exports with strict
    parity and continues the model card's story."""
    story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine."
    # stock model_type zamba2, loaded into our class
    assert_real_model_exports(require(MODELS / "zamba2-tiny"), tmp_path / "ir", 4 * 2 + 16 + 16, story)
