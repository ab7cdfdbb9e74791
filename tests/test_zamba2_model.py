"""ShedderZamba2ForCausalLM: equal to stock Zamba2, loads 1 and 2 memory blocks, holds pruned layouts,
ships as remote code, and generates with its cache as it computes without."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Zamba2Config, Zamba2ForCausalLM

from shedder_ov.errors import ShedderError
from shedder_ov.modeling import ShedderZamba2Config, ShedderZamba2ForCausalLM, Zamba2MixerWithoutSSM, auto_map
from shedder_ov.modeling.zamba2_convert import from_stock_state_dict, load_zamba2
from shedder_ov.pipeline import save_checkpoint

from .conftest import MODELS, load_without_package, require

M, H = "mamba", "hybrid"
IDS = torch.randint(1, 8192, (2, 20), generator=torch.Generator().manual_seed(0))
TINY = dict(
    vocab_size=8192, hidden_size=32, mamba_d_state=8, n_mamba_heads=4, chunk_size=8, num_attention_heads=2,
    intermediate_size=48, adapter_rank=4, use_mem_rope=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def stock_config(types: list[str], num_mem_blocks: int = 1) -> Zamba2Config:
    """Tiny stock Zamba2 with RoPE and attention adapters; 8-token chunks, so IDS spans several."""
    return Zamba2Config(
        **TINY, num_hidden_layers=len(types), layers_block_type=types, num_mem_blocks=num_mem_blocks,
        use_shared_attention_adapter=True,
    )  # fmt: skip


def stock_model(config: Zamba2Config, seed: int = 0) -> Zamba2ForCausalLM:
    torch.manual_seed(seed)
    return Zamba2ForCausalLM(config).eval()


def stock_folder(tmp_path, config: Zamba2Config, seed: int = 0):
    """A random stock checkpoint folder as save_pretrained writes it (tied copies and lm_head left out)."""
    model = stock_model(config, seed)
    model.save_pretrained(tmp_path / "stock")
    return tmp_path / "stock", model


def spec(block=None, attention=None, mlp=None, mamba=True, ssm=True) -> dict:
    """One layer_specs entry; an invocation runs attention and MLP unless told otherwise."""
    runs = block is not None
    return {
        "mamba": mamba, "ssm": ssm, "block": block,
        "attention": runs if attention is None else attention, "mlp": runs if mlp is None else mlp,
    }  # fmt: skip


LAYOUTS = {
    # every part the surgery can remove is off somewhere; block 1 lost its attention, both MLPs are narrower
    "mixed": dict(
        layer_specs=[
            spec(), spec(block=0), spec(ssm=False), spec(block=1, attention=False),
            spec(block=0, mlp=False, mamba=False), spec(block=0, attention=False, mlp=False),
            spec(block=1, attention=False, ssm=False),
        ],
        block_specs=[{"attention": True, "mlp": True, "mlp_width": 40}, {"attention": False, "mlp": True, "mlp_width": 24}],
        num_mem_blocks=2, num_attention_heads=4, num_key_value_heads=2,
    ),
    "no_attention": dict(
        layer_specs=[spec(), spec(block=0, attention=False), spec(ssm=False), spec(block=0, attention=False)],
        block_specs=[{"attention": False, "mlp": True, "mlp_width": 24}],
        invocation_adapters=False,
    ),
}  # fmt: skip


def shedder_model(layout: str, seed: int = 0) -> ShedderZamba2ForCausalLM:
    if layout == "stock":
        config = stock_config([M, H, M, H, H])
        return from_stock_state_dict(config, stock_model(config, seed).state_dict())
    torch.manual_seed(seed)
    config = ShedderZamba2Config(**{**TINY, **LAYOUTS[layout]}, use_shared_attention_adapter=True)
    return ShedderZamba2ForCausalLM(config).eval()


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def test_zamba2_tiny_matches_stock_and_its_model_card():
    path = require(MODELS / "zamba2-tiny")
    stock, ours = AutoModelForCausalLM.from_pretrained(path).eval(), load_zamba2(path)
    ids = torch.randint(1, 8192, (2, 64), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours(ids, use_cache=False).logits, stock(ids, use_cache=False).logits, atol=1e-4)
    assert count(ours) == count(stock)
    assert [layer.block for layer in ours.model.layers if layer.block is not None] == [0, 0, 0, 0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    generated = ours.generate(**tokenizer("Once upon a time", return_tensors="pt"), max_new_tokens=40, do_sample=False)
    assert tokenizer.decode(generated[0]) in (path / "MODEL_CARD.md").read_text()


@torch.no_grad()
def test_one_block_folder_loads_as_stock(tmp_path):
    folder, stock = stock_folder(tmp_path, stock_config([M, H, M, H, H]))
    ours = load_zamba2(folder)
    layers = ours.model.layers
    assert len(ours.model.blocks) == 1 and count(ours) == count(stock)
    assert [layer.block for layer in layers] == [None, 0, None, 0, 0]
    assert [layer.invocation for layer in layers] == [None, 0, None, 1, 2]
    assert layers[0].linear is None and layers[3].q_adapter is not None and layers[3].gate_up_adapter is not None
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert not any("shared_transformer" in key for key in ours.state_dict())
    assert torch.allclose(ours(IDS, use_cache=False).logits, stock(IDS, use_cache=False).logits, atol=1e-5)
    prompt = dict(input_ids=IDS[:, :9], attention_mask=torch.ones_like(IDS[:, :9]), max_new_tokens=6, do_sample=False)
    assert torch.equal(ours.generate(**prompt), stock.generate(**prompt))


@torch.no_grad()
def test_two_blocks_match_stock_where_stock_builds_them(tmp_path):
    """Stock 5.5 picks block layer_id % 2: right only where that is invocation % 2, as for hybrid layers 2, 5, 6."""
    folder, stock = stock_folder(tmp_path, stock_config([M, M, H, M, M, H, H], num_mem_blocks=2))
    ours = load_zamba2(folder)
    assert [layer.block for layer in ours.model.layers if layer.block is not None] == [0, 1, 0]
    assert len(ours.model.blocks) == 2 and count(ours) == count(stock)
    assert torch.allclose(ours(IDS, use_cache=False).logits, stock(IDS, use_cache=False).logits, atol=1e-5)


def two_block_state(one: dict, other: dict) -> dict:
    """Stock keys of hybrid layers 1, 3, 4 with 2 blocks: block 0 (from `one`) under layer 1, block 1 (from
    `other`) under layer 3, adapter slot k under the layer holding block k % 2; `one` is a 1-block state.
    lm_head is left out (tied), as save_pretrained does."""
    state = {}
    for key, value in one.items():
        if key == "lm_head.weight":
            continue
        if ".shared_transformer." not in key:
            state[key] = value
        elif key.startswith("model.layers.1."):
            slot = re.search(r"_adapter_list\.(\d+)\.", key)
            if slot is None:
                state[key], state[key.replace("layers.1.", "layers.3.")] = value, other[key]
            else:
                state[key.replace("layers.1.", f"layers.{[1, 3][int(slot[1]) % 2]}.")] = value
    return state


@torch.no_grad()
def test_two_blocks_in_a_layout_stock_cannot_build(tmp_path):
    one, other = (stock_model(stock_config([M, H, M, H, H]), seed).state_dict() for seed in (0, 1))
    folder = tmp_path / "two"
    folder.mkdir()
    stock_config([M, H, M, H, H], num_mem_blocks=2).save_pretrained(folder)
    save_file(two_block_state(one, other), folder / "model.safetensors")
    ours = load_zamba2(folder)
    layers, blocks = ours.model.layers, ours.model.blocks
    assert [layer.block for layer in layers] == [None, 0, None, 1, 0]
    q_proj = "model.layers.1.shared_transformer.self_attn.q_proj.weight"
    assert torch.equal(blocks[0].self_attn.q_proj.weight, one[q_proj])
    assert torch.equal(blocks[1].self_attn.q_proj.weight, other[q_proj])
    for layer, slot in ((1, 0), (3, 1), (4, 2)):
        adapter = f"model.layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.{slot}.1.weight"
        assert torch.equal(layers[layer].gate_up_adapter[1].weight, one[adapter])
    same = from_stock_state_dict(stock_config([M, H, M, H, H], num_mem_blocks=2), two_block_state(one, one))
    expected = stock_model(stock_config([M, H, M, H, H]))(IDS, use_cache=False).logits  # both blocks equal: 1 block
    assert torch.allclose(same(IDS, use_cache=False).logits, expected, atol=1e-5)


def _add_unknown(state):
    state["model.layers.0.mamba.bogus"] = torch.zeros(1)
    return "model.layers.0.mamba.bogus"


def _drop_linear(state):
    del state["model.layers.3.linear.weight"]
    return "model.layers.3.linear.weight"


def _unequal_tied_copy(state):
    key = "model.layers.1.shared_transformer.pre_ff_layernorm.weight"
    state[key.replace("layers.1.", "layers.3.")] = state[key] + 1
    return "model.layers.3.shared_transformer.pre_ff_layernorm.weight"


@pytest.mark.parametrize("damage", [_add_unknown, _drop_linear, _unequal_tied_copy])
def test_bad_weights_name_the_file_and_key(tmp_path, damage):
    folder, _ = stock_folder(tmp_path, stock_config([M, H, M, H, H]))
    state = load_file(folder / "model.safetensors")
    key = damage(state)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ShedderError, match=re.escape(str(folder / "model.safetensors")) + ".*" + re.escape(key)):
        load_zamba2(folder)


def test_adapter_slot_of_another_block_is_refused():
    state = stock_model(stock_config([M, H, M, H, H])).state_dict()  # 1 block: slot 1 under layer 1
    with pytest.raises(ShedderError, match=r"adapter_list\.1\.0\.weight has no place"):
        from_stock_state_dict(stock_config([M, H, M, H, H], num_mem_blocks=2), state)


def test_mixed_layout_structure():
    model = shedder_model("mixed")
    config, blocks, layers = model.config, model.model.blocks, model.model.layers
    assert config.layers_block_type == [M, H, M, H, H, M, H] and config.hybrid_layer_ids == [1, 3, 4, 6]
    assert config.layer_types == [M, H, M, M, "full_attention", M, M]
    assert blocks[1].self_attn is None and blocks[1].input_layernorm is None and blocks[1].feed_forward.width == 24
    assert blocks[0].self_attn.num_key_value_heads == 2 and blocks[0].self_attn.scaling == (16 / 2) ** -0.5
    assert isinstance(layers[2].mamba, Zamba2MixerWithoutSSM) and isinstance(layers[6].mamba, Zamba2MixerWithoutSSM)
    assert layers[4].mamba is None and layers[4].input_layernorm is None and layers[4].gate_up_adapter is None
    assert layers[5].linear is None and layers[5].invocation == 3
    assert layers[3].q_adapter is None and layers[3].gate_up_adapter[1].out_features == 48
    assert layers[2].mamba.in_proj.out_features == 2 * 64 and layers[2].mamba.conv1d.in_channels == 64
    with pytest.raises(ValueError, match="runs the attention of shared block 1"):
        ShedderZamba2Config(**{**TINY, **LAYOUTS["mixed"], "layer_specs": [spec(block=1)]})


@pytest.mark.parametrize("layout", ["stock", "mixed", "no_attention"])
@torch.no_grad()
def test_generate_with_cache_matches_recompute(layout):
    model = shedder_model(layout)
    prompt = IDS[:, :9]
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12, do_sample=False,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    recomputed = model(out.sequences, use_cache=False).logits[:, prompt.shape[1] - 1 : -1]
    assert torch.equal(recomputed.argmax(-1), out.sequences[:, prompt.shape[1] :])
    assert torch.allclose(torch.stack(out.logits, dim=1), recomputed, atol=1e-4)


@torch.no_grad()
def test_mixed_checkpoint_loads_without_the_package(tmp_path, tokenizer):
    model = shedder_model("mixed")
    model.config.auto_map = auto_map("zamba2")
    save_checkpoint(model, tokenizer, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["layer_specs"][4]["mamba"] is False
    loaded = load_without_package(tmp_path / "p", IDS)
    assert loaded["module"].startswith("transformers_modules.")
    expected = model(IDS, use_cache=False).logits
    assert torch.allclose(loaded["logits"], expected, atol=1e-5)
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "p")(IDS, use_cache=False).logits, expected)
