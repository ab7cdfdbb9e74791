"""Stock Zamba2 checkpoints -> ShedderZamba2ForCausalLM, without building the stock Zamba2ForCausalLM.

transformers 5.3-5.5 cannot build Zamba2 with num_mem_blocks > 1 (issue 47994: it picks a block by
global layer index, while the weight ties and adapter slots follow hybrid order). Here, as in the
checkpoints: invocation k (the k-th hybrid layer) uses stored block k % num_mem_blocks and slot k of
that block's adapter lists; block b is stored once, under the hybrid layer of invocation b (later
hybrid layers may carry tied copies, accepted when equal)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig, Zamba2Config
from transformers.initialization import no_init_weights

from ..errors import ShedderError
from . import auto_map
from .configuration_shedder_zamba2 import ShedderZamba2Config
from .modeling_shedder_zamba2 import ShedderZamba2ForCausalLM

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_ADAPTER = re.compile(r"shared_transformer\.(?:self_attn\.linear_([qkv])|feed_forward\.gate_up_proj)_adapter_list\.(\d+)\.(.+)")
_NOT_CONFIG = ("model_type", "transformers_version", "architectures", "auto_map")


def shedder_config(config: Zamba2Config) -> ShedderZamba2Config:
    """The stock config as ours: the stock layout, nothing removed."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_CONFIG}
    ours = ShedderZamba2Config(**fields)
    ours.architectures = [ShedderZamba2ForCausalLM.__name__]
    ours.auto_map = auto_map("zamba2")
    return ours


def our_key(config: ShedderZamba2Config, key: str) -> str | None:
    """Our name for stock weight `key`; None, or a name our model lacks, when it maps nowhere."""
    match = _LAYER.fullmatch(key)
    if match is None:
        return key
    layer, rest = int(match[1]), match[2]
    hybrid = config.hybrid_layer_ids
    if layer not in hybrid or rest == "linear.weight":
        return key
    if rest.startswith("mamba_decoder."):
        return f"model.layers.{layer}.{rest.removeprefix('mamba_decoder.')}"
    if not rest.startswith("shared_transformer."):
        return None
    block = hybrid.index(layer) % config.num_mem_blocks
    adapter = _ADAPTER.fullmatch(rest)
    if adapter is None:
        return f"model.blocks.{block}.{rest.removeprefix('shared_transformer.')}"
    projection, slot, tail = adapter[1], int(adapter[2]), adapter[3]
    if slot >= len(hybrid) or slot % config.num_mem_blocks != block:
        return None
    return f"model.layers.{hybrid[slot]}.{projection or 'gate_up'}_adapter.{tail}"


def from_stock_state_dict(
    config: Zamba2Config, state: dict, *, dtype: torch.dtype = torch.float32, source: str = "state dict"
) -> ShedderZamba2ForCausalLM:
    """Our model holding the stock weights `state` (keys as Zamba2ForCausalLM saves them)."""
    ours = shedder_config(config)
    with no_init_weights():  # every weight is loaded below; this also skips the tie, so tie here
        model = ShedderZamba2ForCausalLM._from_config(ours, dtype=dtype)
    model.tie_weights()
    expected = model.state_dict()
    mapped = {}
    for key, tensor in state.items():
        target = our_key(ours, key)
        if target not in expected:
            raise ShedderError(f"{source}: weight {key} has no place in a Zamba2 model of this config")
        if target in mapped and not torch.equal(mapped[target], tensor):
            raise ShedderError(f"{source}: weight {key} differs from another copy of the same tied shared-block weight")
        mapped[target] = tensor
    if ours.tie_word_embeddings and "model.embed_tokens.weight" in mapped:
        mapped.setdefault("lm_head.weight", mapped["model.embed_tokens.weight"])
    missing = [key for key in expected if key not in mapped]
    if missing:
        raise ShedderError(f"{source}: no weight for {missing[0]} ({len(missing)} missing in all)")
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def load_zamba2(path: str | Path, dtype: torch.dtype = torch.float32) -> ShedderZamba2ForCausalLM:
    """A stock Zamba2 folder (model.safetensors, or sharded with model.safetensors.index.json) as our model."""
    path = Path(path)
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {key: value for shard in shards for key, value in load_file(path / shard).items()}
        source = index
    elif single.is_file():
        state, source = load_file(single), single
    else:
        raise ShedderError(f"{path}: no model.safetensors or model.safetensors.index.json")
    model = from_stock_state_dict(Zamba2Config.from_pretrained(path), state, dtype=dtype, source=str(source))
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model
