"""Zamba2: Mamba-2 layers, some of which also invoke a shared transformer block.

Every Zamba2 model is held as `ShedderZamba2ForCausalLM` (stock checkpoints are converted on
load, nothing removed, blocks still shared). Removable parts, with the reference's semantics:

* `layer`: a whole layer (a plain layer is its Mamba block, named `layers.i.block`);
* `mamba_block`: the Mamba part; in a hybrid layer the invocation's output still lands in the
  residual stream (hidden + linear(block(...)));
* `ssm`: the scan, bypassed as in Mamba-2 (gated norm of the conv-activated x);
* `attention`: the attention of one invocation; its MLP then reads the Mamba stream directly;
* `mlp`: the MLP of one invocation, which then outputs the attention result;
* `mlp_channels`: one more group of the invocation's MLP channels, in the recipe's channel order.

Sharing policy: blocks stay shared and a search never grows the stored model. Removing the
attention or MLP of one invocation drops only its adapters; the block's weights go once no
invocation uses them. Per-invocation MLP widths need per-invocation weights, so `mlp_channels`
requires `search.unshare: true`, which gives every invocation its own copy of its block with its
adapters merged in (the reference's preprocessing). Parameters are reported as stored and
unshared (every use of a block counted, adapters merged: the reference's count).

The residual stream carried between layers is [hidden, embeddings] (2 x hidden features): every
invocation's attention reads the input embeddings, so the prefix-reuse scorer stays exact."""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.zamba2.modeling_zamba2 import apply_rotary_pos_emb

from ..errors import ShedderError
from ..modeling import ShedderZamba2Config, ShedderZamba2ForCausalLM, Zamba2MixerWithoutSSM, auto_map
from .base import FamilyAdapter, count_params, model_holding, view_module
from .channels import MlpChannels, check_group_size
from .components import Candidate
from .mamba2 import ssd_mixer_forward, ssm_less_tensors

_INF = float("inf")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_BLOCK_KEY = re.compile(r"^model\.blocks\.(\d+)\.(.*)$")
_ADAPTERS = ("q_adapter", "k_adapter", "v_adapter", "gate_up_adapter")
_SPEC_FLAG = {"attention": "attention", "mlp": "mlp", "mamba_block": "mamba", "ssm": "ssm"}  # candidate kind -> layer_specs key


def _project(linear: nn.Linear, adapter: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return linear(x) if adapter is None else linear(x) + adapter(x)


def _merged_weight(linear: nn.Linear, adapter: nn.Module | None) -> torch.Tensor:
    """The weight of `linear` with a (down, up) adapter folded in: W + U·D."""
    weight = linear.weight.detach()
    return weight.clone() if adapter is None else weight + adapter[1].weight.detach() @ adapter[0].weight.detach()


class Zamba2Adapter(MlpChannels, FamilyAdapter):
    family = "zamba2"
    model_types = ("zamba2", "shedder_zamba2")
    targets = ("layer", "mamba_block", "ssm", "attention", "mlp", "mlp_channels")

    def __init__(self, model: nn.Module):
        if not isinstance(model, ShedderZamba2ForCausalLM):
            raise ShedderError("zamba2: load the model with shedder_ov.checkpoints.load_checkpoint (it converts stock Zamba2)")
        super().__init__(model)
        self.config = model.config
        self._ssm_less_views: dict[int, nn.Module] = {}

    @classmethod
    def empty_model(cls, config) -> nn.Module:
        """Stock Zamba2 loads converted into our class."""
        if config.model_type != "zamba2":
            return super().empty_model(config)
        from ..modeling.zamba2_convert import shedder_config

        with torch.device("meta"):
            return ShedderZamba2ForCausalLM(shedder_config(config))

    @classmethod
    def stored_names(cls, config, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Stock Zamba2 weights are renamed on load."""
        if config.model_type != "zamba2":
            return shapes
        from ..modeling.zamba2_convert import our_key, shedder_config

        ours = shedder_config(config)
        return {our_key(ours, name) or name: shape for name, shape in shapes.items()}

    @classmethod
    def load_pretrained(cls, path, dtype):
        from transformers import AutoConfig

        from ..modeling.zamba2_convert import load_zamba2

        if AutoConfig.from_pretrained(path).model_type == "zamba2":
            return load_zamba2(path, dtype)
        return super().load_pretrained(path, dtype)

    @classmethod
    def check_stage(cls, config, stage, where: str, unshare: bool) -> None:
        cls.check_targets(stage.targets, f"{where}.targets")
        if "mlp_channels" in stage.targets:
            widths = [b["mlp_width"] for b in _block_specs(config) if b["mlp"]]
            check_group_size(widths, stage.group_size, f"{where}.group_size")
            if not unshare and _shares_blocks(config):
                raise ShedderError(
                    f"{where}.targets: mlp_channels cuts one invocation's MLP, but the invocations share their blocks; "
                    "set search.unshare: true (every invocation gets its own block, adapters merged; the stored "
                    "model grows)"
                )

    @classmethod
    def check_unshare(cls, config) -> None:
        """Unsharing is always possible here (a model without shared blocks just stays as it is)."""

    # ---- structure -------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.blocks

    @property
    def stream_width(self) -> int:
        return 2 * self.config.hidden_size

    def invokes(self, layer: int) -> bool:
        spec = self.layers[layer].spec
        return spec["block"] is not None and (spec["attention"] or spec["mlp"])

    def has_ssm(self, layer: int) -> bool:
        mixer = self.layers[layer].mamba
        return mixer is not None and not isinstance(mixer, Zamba2MixerWithoutSSM)

    def mlp_width(self, layer: int) -> int:
        return self.blocks[self.layers[layer].block].feed_forward.width

    def _parts(self, layer: int) -> dict[str, bool]:
        spec = self.layers[layer].spec
        return {
            "layer": True,
            "mamba_block": self.layers[layer].mamba is not None,
            "ssm": self.has_ssm(layer),
            "attention": spec["block"] is not None and spec["attention"],
            "mlp": spec["block"] is not None and spec["mlp"],
            "mlp_channels": spec["block"] is not None and spec["mlp"],
        }

    def candidates(self, targets: list[str]) -> list[Candidate]:
        self.check_targets(targets)
        found = []
        for layer in range(self.num_layers):
            parts = self._parts(layer)
            for kind in targets:
                if kind == "layer":
                    kind = "layer" if self.invokes(layer) else "mamba_block"
                if parts[kind] and (kind != "mlp_channels" or self.capacity(Candidate(layer, kind)) > 0):
                    found.append(Candidate(layer, kind))
        return list(dict.fromkeys(sorted(found, key=lambda c: (c.layer, self.targets.index(c.kind)))))

    def validate(self, candidate: Candidate) -> None:
        if candidate.kind not in self.targets:
            raise ShedderError(f"{candidate.name}: a zamba2 model has no {candidate.kind} (it has: {', '.join(self.targets)})")
        if not 0 <= candidate.layer < self.num_layers:
            raise ShedderError(f"{candidate.name}: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        if not self._parts(candidate.layer)[candidate.kind]:
            raise ShedderError(f"{candidate.name}: layer {candidate.layer} has no {candidate.kind} left to remove")
        if candidate.kind == "mlp_channels" and self.group_size is None:
            raise ShedderError(f"{candidate.name}: mlp_channels needs a group_size")

    def removes_layer(self, candidate: Candidate) -> bool:
        return candidate.kind == "layer" or (candidate.kind == "mamba_block" and not self.invokes(candidate.layer))

    def capacity(self, candidate: Candidate) -> int:
        if candidate.kind != "mlp_channels":
            return 1
        return self.channel_capacity(candidate.layer)

    def contains(self, outer: Candidate, inner: Candidate) -> bool:
        parts = {"mamba_block": ("ssm",), "mlp": ("mlp_channels",)}
        return outer.layer == inner.layer and (self.removes_layer(outer) or inner.kind in parts.get(outer.kind, ()))

    # ---- MLP channels ------------------------------------------------------------
    def set_channel_groups(self, group_size: int) -> None:
        if _shares_blocks(self.config):
            raise ShedderError("search.unshare: mlp_channels on zamba2 needs per-invocation MLPs; set search.unshare: true")
        super().set_channel_groups(group_size)

    def mlp_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self._parts(i)["mlp"]]

    def mlp_weight_l1(self, layer: int) -> torch.Tensor:
        ff = self.blocks[self.layers[layer].block].feed_forward
        gate_up = _merged_weight(ff.gate_up_proj, self.layers[layer].gate_up_adapter).abs().sum(1)
        gate, up = gate_up.chunk(2)
        return gate + up + ff.down_proj.weight.abs().sum(0)

    # ---- forward -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.model.model.embed_tokens(input_ids)
        return torch.cat([emb, emb], dim=-1)

    def head(self, stream: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model.final_layernorm(stream[..., : self.config.hidden_size])
        return self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype)).float()

    def layer_forward(self, layer: int, stream: torch.Tensor) -> torch.Tensor:
        """One layer from zero state, honouring the masks (see the module docstring)."""
        if self.is_masked(layer, "layer") or (self.is_masked(layer, "mamba_block") and not self.invokes(layer)):
            return stream
        hidden, emb = stream.split(self.config.hidden_size, dim=-1)
        t = self._invocation(layer, hidden, emb)
        part = self.layers[layer]
        if part.mamba is not None and not self.is_masked(layer, "mamba_block"):
            normed = part.input_layernorm(hidden if t is None else hidden + t)
            hidden = hidden + self._mixer(layer, normed)
        elif t is not None:
            hidden = hidden + t
        return torch.cat([hidden, emb], dim=-1)

    def _invocation(self, layer: int, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor | None:
        """linear(MLP(attention(...))) of this layer's invocation, without the masked parts."""
        parts = self._parts(layer)
        attention = parts["attention"] and not self.is_masked(layer, "attention")
        mlp = parts["mlp"] and not self.is_masked(layer, "mlp")
        if not (attention or mlp):
            return None
        x = self._attention(layer, hidden, emb) if attention else hidden
        if mlp:
            x = self._mlp(layer, x)
        return self.layers[layer].linear(x)

    def _attention(self, layer: int, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        part, block = self.layers[layer], self.blocks[self.layers[layer].block]
        attn = block.self_attn
        x = block.input_layernorm(torch.cat([hidden, emb], dim=-1))
        batch, length, _ = x.shape
        q, k, v = (
            _project(linear, adapter, x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
            for linear, adapter in ((attn.q_proj, part.q_adapter), (attn.k_proj, part.k_adapter), (attn.v_proj, part.v_adapter))
        )
        if self.config.use_mem_rope:
            positions = torch.arange(length, device=x.device)[None]
            q, k = apply_rotary_pos_emb(q, k, *self.model.model.rotary_emb(x, positions))
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        ff = self.blocks[self.layers[layer].block].feed_forward
        p = self.blocks[self.layers[layer].block].pre_ff_layernorm(x)
        gate, up = _project(ff.gate_up_proj, self.layers[layer].gate_up_adapter, p).chunk(2, dim=-1)
        h = ff.act_fn(gate) * up
        self.record_activations(layer, h)
        masked = self.masked_channels(layer)
        if masked is not None:
            h = h.index_fill(-1, masked.to(h.device), 0.0)
        return ff.down_proj(h)

    def _mixer(self, layer: int, normed: torch.Tensor) -> torch.Tensor:
        mixer = self.layers[layer].mamba
        if not self.has_ssm(layer):
            return mixer(normed)
        if self.is_masked(layer, "ssm"):
            return self._ssm_less_view(layer)(normed)
        return ssd_mixer_forward(mixer, normed, (self.config.time_step_min, _INF))  # the stock torch path's clamp

    def _ssm_less_view(self, layer: int) -> nn.Module:
        if layer not in self._ssm_less_views:
            mixer = self.layers[layer].mamba
            view = view_module(lambda: Zamba2MixerWithoutSSM(self.config, layer_idx=layer), ssm_less_tensors(mixer))
            view.norm.variance_epsilon = mixer.norm.variance_epsilon
            self._ssm_less_views[layer] = view
        return self._ssm_less_views[layer]

    # ---- sizes ---------------------------------------------------------------------
    def num_params_unshared(self) -> int:
        adapters = sum(count_params(getattr(p, name)) for p in self.layers for name in _ADAPTERS if getattr(p, name) is not None)
        total = self.num_params() - count_params(self.blocks) - adapters
        for part in self.layers:
            if part.block is None:
                continue
            block = self.blocks[part.block]
            if part.spec["attention"]:
                total += count_params(block.input_layernorm) + count_params(block.self_attn)
            if part.spec["mlp"]:
                total += count_params(block.pre_ff_layernorm) + count_params(block.feed_forward)
        return total

    def removed_params(self, removed: list[Candidate]) -> int:
        config, _ = self._plan(removed)
        with torch.device("meta"):
            smaller = ShedderZamba2ForCausalLM(config)
        return self.num_params() - count_params(smaller)

    # ---- surgery -------------------------------------------------------------------
    def _plan(self, removed: list[Candidate]) -> tuple[ShedderZamba2Config, dict]:
        """The pruned model's config, and how its layers, blocks and MLP channels map to ours."""
        for candidate in set(removed):
            self.validate(candidate)
        specs = copy.deepcopy(self.config.layer_specs)
        dropped = set()
        for c in set(removed):
            if self.removes_layer(c):
                dropped.add(c.layer)
            elif c.kind in _SPEC_FLAG:
                specs[c.layer][_SPEC_FLAG[c.kind]] = False
        for i, spec in enumerate(specs):
            if spec["block"] is not None and not (spec["attention"] or spec["mlp"]):
                spec["block"] = None
                if not spec["mamba"]:
                    dropped.add(i)
        keep = [i for i in range(self.num_layers) if i not in dropped]
        if not keep:
            raise ShedderError("cannot remove every layer of the model")
        groups = {i: removed.count(Candidate(i, "mlp_channels")) for i in keep if specs[i]["mlp"]}
        narrowed = {i: self.mlp_width(i) - n * self.group_size for i, n in groups.items() if n}
        used = sorted({specs[i]["block"] for i in keep if specs[i]["block"] is not None})
        block_map = {old: new for new, old in enumerate(used)}
        block_specs = []
        for old in used:
            users = [i for i in keep if specs[i]["block"] == old]
            width = self.blocks[old].feed_forward.width if self.blocks[old].feed_forward is not None else 0
            cut = [narrowed[i] for i in users if i in narrowed]  # one user: channels need an unshared block
            block_specs.append(
                {
                    "attention": any(specs[i]["attention"] for i in users),
                    "mlp": any(specs[i]["mlp"] for i in users),
                    "mlp_width": cut[0] if cut else width,
                }
            )
        layer_specs = []
        for i in keep:
            spec = dict(specs[i])
            spec["block"] = None if spec["block"] is None else block_map[spec["block"]]
            layer_specs.append(spec)
        fields = {k: v for k, v in self.config.to_dict().items() if k not in ("model_type", "transformers_version", "architectures", "auto_map")}
        fields.update(
            layer_specs=layer_specs,
            block_specs=block_specs,
            source_layers=[self.config.source_layers[i] for i in keep],
            num_hidden_layers=len(keep),
            hybrid_layer_ids=[n for n, s in enumerate(layer_specs) if s["block"] is not None],
            layers_block_type=["hybrid" if s["block"] is not None else "mamba" for s in layer_specs],
        )
        config = ShedderZamba2Config(**fields)
        config.architectures = [ShedderZamba2ForCausalLM.__name__]
        config.auto_map = auto_map(self.family)
        return config, {"keep": keep, "blocks": block_map, "groups": groups, "specs": specs}

    @torch.no_grad()
    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        config, plan = self._plan(removed)
        keep, block_map, specs = plan["keep"], plan["blocks"], plan["specs"]
        channels = {i: self.kept_channels(i, n) for i, n in plan["groups"].items() if n}
        block_channels = {block_map[specs[i]["block"]]: kept for i, kept in channels.items()}
        state = {}
        for key, tensor in self.model.state_dict().items():
            layer_match, block_match = _LAYER_KEY.match(key), _BLOCK_KEY.match(key)
            if layer_match:
                old, rest = int(layer_match.group(1)), layer_match.group(2)
                if old not in keep or not _layer_keeps(specs[old], rest, self.has_ssm(old)):
                    continue
                if rest == "gate_up_adapter.1.weight" and old in channels:
                    tensor = _gate_up_rows(tensor, channels[old])
                state[f"model.layers.{keep.index(old)}.{rest}"] = tensor.clone()
            elif block_match:
                old, rest = int(block_match.group(1)), block_match.group(2)
                if old not in block_map:
                    continue
                new = block_map[old]
                if not _block_keeps(config.block_specs[new], rest):
                    continue
                if new in block_channels:
                    tensor = _narrowed(rest, tensor, block_channels[new])
                state[f"model.blocks.{new}.{rest}"] = tensor.clone()
            else:
                state[key] = tensor.clone()
        for old in keep:
            if specs[old]["mamba"] and not specs[old]["ssm"] and self.has_ssm(old):
                for name, tensor in ssm_less_tensors(self.layers[old].mamba).items():
                    state[f"model.layers.{keep.index(old)}.mamba.{name}"] = tensor.clone()
        pruned = model_holding(ShedderZamba2ForCausalLM, config, state, next(self.model.parameters()).dtype)
        pruned.generation_config = copy.deepcopy(self.model.generation_config)
        return pruned.eval()

    @torch.no_grad()
    def unshared(self) -> "Zamba2Adapter":
        """Every invocation with its own copy of its block, its adapters merged into the copy."""
        config = copy.deepcopy(self.config)
        invocations = [i for i in range(self.num_layers) if self.layers[i].block is not None]
        config.layer_specs = [dict(s) for s in config.layer_specs]
        config.block_specs = []
        for n, i in enumerate(invocations):
            spec = config.layer_specs[i]
            width = self.mlp_width(i) if spec["mlp"] else 0
            config.block_specs.append({"attention": spec["attention"], "mlp": spec["mlp"], "mlp_width": width})
            spec["block"] = n
        config.invocation_adapters = False
        state = {k: v.clone() for k, v in self.model.state_dict().items() if not _BLOCK_KEY.match(k) and not _is_adapter(k)}
        for n, i in enumerate(invocations):
            part, block = self.layers[i], self.blocks[self.layers[i].block]
            for name, tensor in block.state_dict().items():
                state[f"model.blocks.{n}.{name}"] = tensor.clone()
            if part.spec["attention"]:
                for proj in ("q", "k", "v"):
                    linear = getattr(block.self_attn, f"{proj}_proj")
                    state[f"model.blocks.{n}.self_attn.{proj}_proj.weight"] = _merged_weight(linear, getattr(part, f"{proj}_adapter"))
            if part.spec["mlp"]:
                state[f"model.blocks.{n}.feed_forward.gate_up_proj.weight"] = _merged_weight(
                    block.feed_forward.gate_up_proj, part.gate_up_adapter
                )
        state = {k: v for k, v in state.items() if _block_keeps_key(config, k)}
        model = model_holding(ShedderZamba2ForCausalLM, config, state, next(self.model.parameters()).dtype)
        model.generation_config = copy.deepcopy(self.model.generation_config)
        return Zamba2Adapter(model.eval())

    # ---- reference configs ---------------------------------------------------------
    def from_reference(self, data: dict, source: str) -> list[Candidate]:
        """The reference's Zamba2 pruning_config.json: block/SSM indices are layers, attention/MLP
        indices and `pruned_mlp_channels` keys are invocations (hybrid layers in order), whose value is
        the MLP width that remains (the reference keeps the first channels)."""
        if self.config.source_layers != list(range(self.num_layers)):
            raise ShedderError(f"{source}: reference configs index the original model; apply it to the unpruned checkpoint")
        hybrid = [i for i in range(self.num_layers) if self.layers[i].block is not None]
        known = {"pruned_mamba_block_idx", "pruned_ssm_idx", "pruned_mha_idx", "pruned_mlp_idx", "pruned_mlp_channels"}
        unknown = [k for k, v in data.items() if k.startswith("pruned_") and k not in known and v]
        if unknown:
            raise ShedderError(f"{source}: {', '.join(unknown)} not applicable to a zamba2 model (known: {', '.join(sorted(known))})")

        def index(key: str, value, limit: int) -> int:
            if not (isinstance(value, int) or str(value).isdigit()) or not 0 <= int(value) < limit:
                raise ShedderError(f"{source}: {key} names {value!r}; this model has indices 0..{limit - 1}")
            return int(value)

        found = [Candidate(index("pruned_mamba_block_idx", i, self.num_layers), "mamba_block") for i in data.get("pruned_mamba_block_idx") or []]
        found += [Candidate(hybrid[index("pruned_mha_idx", k, len(hybrid))], "attention") for k in data.get("pruned_mha_idx") or []]
        mlps = [hybrid[index("pruned_mlp_idx", k, len(hybrid))] for k in data.get("pruned_mlp_idx") or []]
        found += [Candidate(i, "mlp") for i in mlps]
        cuts = {}
        for k, width in (data.get("pruned_mlp_channels") or {}).items():
            layer = hybrid[index("pruned_mlp_channels", k, len(hybrid))]
            full = self.mlp_width(layer)
            if not 0 < int(width) <= full:
                raise ShedderError(f"{source}: pruned_mlp_channels.{k} = {width}; invocation {k} has {full} channels")
            if layer not in mlps and int(width) < full:
                cuts[layer] = full - int(width)
        if cuts:
            self.set_channel_groups(math.gcd(*cuts.values()))
            self.rank_channels("first")
            found += [Candidate(layer, "mlp_channels") for layer, cut in cuts.items() for _ in range(cut // self.group_size)]
        found += [Candidate(index("pruned_ssm_idx", i, self.num_layers), "ssm") for i in data.get("pruned_ssm_idx") or []]
        return found


def _block_specs(config) -> list[dict]:
    return config.block_specs if getattr(config, "block_specs", None) else [
        {"attention": True, "mlp": True, "mlp_width": config.intermediate_size} for _ in range(config.num_mem_blocks)
    ]


def _shares_blocks(config) -> bool:
    """Whether some stored block is invoked by more than one layer."""
    specs = getattr(config, "layer_specs", None)
    blocks = [s["block"] for s in specs if s["block"] is not None] if specs else [
        k % config.num_mem_blocks for k in range(len(config.hybrid_layer_ids))
    ]
    return len(blocks) != len(set(blocks))


def _is_adapter(key: str) -> bool:
    return any(f".{name}." in key for name in _ADAPTERS)


def _layer_keeps(spec: dict, rest: str, had_ssm: bool) -> bool:
    """Whether weight `rest` of a layer survives its new spec (a newly SSM-less mixer is rebuilt from views)."""
    if rest.startswith(("mamba.", "input_layernorm.")):
        return spec["mamba"] and (spec["ssm"] or not had_ssm or not rest.startswith("mamba."))
    if rest.startswith("linear."):
        return spec["block"] is not None
    if rest.startswith(("q_adapter.", "k_adapter.", "v_adapter.")):
        return spec["block"] is not None and spec["attention"]
    if rest.startswith("gate_up_adapter."):
        return spec["block"] is not None and spec["mlp"]
    return True


def _block_keeps(spec: dict, rest: str) -> bool:
    if rest.startswith(("self_attn.", "input_layernorm.")):
        return spec["attention"]
    if rest.startswith(("feed_forward.", "pre_ff_layernorm.")):
        return spec["mlp"]
    return True


def _block_keeps_key(config, key: str) -> bool:
    match = _BLOCK_KEY.match(key)
    return match is None or _block_keeps(config.block_specs[int(match.group(1))], match.group(2))


def _gate_up_rows(tensor: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Rows of a [2·width, ...] gate_up tensor for the kept channels of both halves."""
    gate, up = tensor.chunk(2)
    return torch.cat([gate[kept], up[kept]])


def _narrowed(rest: str, tensor: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    if rest.startswith("feed_forward.gate_up_proj."):
        return _gate_up_rows(tensor, kept)
    if rest == "feed_forward.down_proj.weight":
        return tensor[:, kept]
    return tensor
