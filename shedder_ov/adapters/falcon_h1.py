"""Falcon-H1: parallel hybrid-head layers (Hymba's design in a transformers class).

Every layer adds an attention branch and a Mamba-2 branch, both reading the same normed input,
to the residual stream, then a gated MLP. Removable parts, in the vocabulary of `components`:

* `layer` (`layers.i.layer`): the whole layer;
* `attention` (`layers.i.attn`) / `mamba_block` (`layers.i.block`): one branch's additive term;
  both gone is the reference's "hybrid-head module" (`pruned_hymba_block_idx`), the MLP stays;
* `ssm` (`layers.i.ssm`): the Mamba branch's scan, y = act(conv(x)) in its place;
* `mlp` / `mlp_channels`: the MLP, or one more group of its channels;
* `attention_heads` (`layers.i.attn.heads.j`): KV head j with its query heads (GQA stays whole);
* `ssm_heads` (`layers.i.ssm.heads.j`): the j-th head of every B/C group (groups stay equal).

Masked heads run exactly what physical removal leaves: attention heads' outputs are zeroed
before o_proj (nothing crosses heads there); SSM heads run `head_view`, the mixer with only the
kept heads (a gated norm then normalises the kept channels only). The last head of a branch
never goes (the branch target removes it all); a branch's `ssm` and its `ssm_heads` exclude each
other (the SSM-less branch stays full-width). Every muP multiplier is applied as stock does.
Recovery's LoRA defaults are the reference's Hymba recovery: in_proj, out_proj, up_proj, down_proj."""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import FalconH1Config, FalconH1ForCausalLM
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer, apply_rotary_pos_emb

from ..errors import ShedderError
from ..modeling import ShedderFalconH1Config, ShedderFalconH1ForCausalLM, auto_map
from .base import FamilyAdapter, count_params, model_holding
from .channels import MlpChannels, check_group_size
from .components import Candidate
from .mamba2 import HeadViews, group_heads, head_view, kept_head_tensors, split_projection, ssd_scan, ssm_less_tensors

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_BRANCH = {"attention": "attention", "attention_heads": "attention", "mamba_block": "mamba", "ssm": "mamba", "ssm_heads": "mamba"}


def layer_spec(layer: nn.Module, mamba_head_dim: int) -> dict:
    """{kv_heads, mamba_heads, ssm, mlp_width} of a stock or pruned Falcon-H1 layer, read off its modules."""
    attn, mamba, mlp = layer.self_attn, layer.mamba, layer.feed_forward
    return {
        "kv_heads": 0 if attn is None else attn.k_proj.out_features // attn.head_dim,
        "mamba_heads": 0 if mamba is None else mamba.intermediate_size // mamba_head_dim,
        "ssm": isinstance(mamba, FalconH1Mixer),
        "mlp_width": 0 if mlp is None else mlp.gate_proj.out_features,
    }


class FalconH1Adapter(MlpChannels, FamilyAdapter):
    family = "falcon_h1"
    model_types = ("falcon_h1", "shedder_falcon_h1")
    targets = ("layer", "mamba_block", "ssm", "attention", "mlp", "mlp_channels", "attention_heads", "ssm_heads")
    lora_targets = ("in_proj", "out_proj", "up_proj", "down_proj")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.config = model.config
        self.specs = [layer_spec(layer, self.config.mamba_d_head) for layer in self.layers]
        self._head_views = HeadViews()

    # ---- config-only checks --------------------------------------------------------
    @classmethod
    def check_stage(cls, config, stage, where: str, unshare: bool) -> None:
        cls.check_targets(stage.targets, f"{where}.targets")
        specs = _config_specs(config)
        if "mlp_channels" in stage.targets:
            check_group_size([s["mlp_width"] for s in specs if s["mlp_width"]], stage.group_size, f"{where}.group_size")
        if "ssm_heads" in stage.targets and config.mamba_n_heads % config.mamba_n_groups:
            raise ShedderError(f"{where}.targets: ssm_heads needs mamba_n_groups ({config.mamba_n_groups}) to divide mamba_n_heads ({config.mamba_n_heads})")

    # ---- structure -------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def kv_groups(self) -> int:
        """Query heads per KV head (the same in every layer)."""
        return self.config.num_attention_heads // self.config.num_key_value_heads

    def heads_per_group(self, layer: int) -> int:
        return self.specs[layer]["mamba_heads"] // self.config.mamba_n_groups

    def mlp_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.specs) if s["mlp_width"]]

    def mlp_width(self, layer: int) -> int:
        return self.specs[layer]["mlp_width"]

    def mlp_weight_l1(self, layer: int) -> torch.Tensor:
        ff = self.layers[layer].feed_forward
        return ff.gate_proj.weight.abs().sum(1) + ff.up_proj.weight.abs().sum(1) + ff.down_proj.weight.abs().sum(0)

    def _has(self, layer: int, kind: str) -> bool:
        spec = self.specs[layer]
        return {
            "layer": True,
            "attention": spec["kv_heads"] > 0,
            "attention_heads": spec["kv_heads"] > 1,
            "mamba_block": spec["mamba_heads"] > 0,
            "ssm": spec["ssm"],
            "ssm_heads": spec["ssm"] and self.heads_per_group(layer) > 1,
            "mlp": spec["mlp_width"] > 0,
            "mlp_channels": spec["mlp_width"] > 0,
        }[kind]

    def _indices(self, layer: int, kind: str) -> list[int]:
        if kind == "attention_heads":
            return list(range(self.specs[layer]["kv_heads"]))
        if kind == "ssm_heads":
            return list(range(self.heads_per_group(layer)))
        return [-1]

    def candidates(self, targets: list[str]) -> list[Candidate]:
        self.check_targets(targets)
        found = []
        for layer in range(self.num_layers):
            for kind in self.targets:
                if kind in targets and self._has(layer, kind):
                    if kind == "mlp_channels" and self.group_size is not None and self.capacity(Candidate(layer, kind)) < 1:
                        continue
                    found += [Candidate(layer, kind, j) for j in self._indices(layer, kind)]
        return found

    def validate(self, candidate: Candidate) -> None:
        kind, layer = candidate.kind, candidate.layer
        if kind not in self.targets:
            raise ShedderError(f"{candidate.name}: a {self.family} model has no {kind} (it has: {', '.join(self.targets)})")
        if not 0 <= layer < self.num_layers:
            raise ShedderError(f"{candidate.name}: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        if not self._has(layer, kind):
            branch = _BRANCH.get(kind, kind)
            raise ShedderError(f"{candidate.name}: layer {layer} has no {kind} left to remove (its {branch} is gone or down to one head)")
        if candidate.index not in self._indices(layer, kind):
            raise ShedderError(f"{candidate.name}: layer {layer} has {kind} 0..{len(self._indices(layer, kind)) - 1}")
        if kind == "mlp_channels" and self.group_size is None:
            raise ShedderError(f"{candidate.name}: mlp_channels needs a group_size")

    def removes_layer(self, candidate: Candidate) -> bool:
        return candidate.kind == "layer"

    def capacity(self, candidate: Candidate) -> int:
        return self.channel_capacity(candidate.layer) if candidate.kind == "mlp_channels" else 1

    def contains(self, outer: Candidate, inner: Candidate) -> bool:
        parts = {"attention": ("attention_heads",), "mamba_block": ("ssm", "ssm_heads"), "mlp": ("mlp_channels",)}
        return outer.layer == inner.layer and (self.removes_layer(outer) or inner.kind in parts.get(outer.kind, ()))

    def _emptied(self, layer: int, removed: list[Candidate]) -> bool:
        """Whether `removed` leaves nothing of a layer (its attention, Mamba branch and MLP all gone)."""
        kinds = {c.kind for c in removed if c.layer == layer}
        return "layer" in kinds or all(k in kinds or not self._has(layer, k) for k in ("attention", "mamba_block", "mlp"))

    def available(self, candidate: Candidate, removed: list[Candidate]) -> bool:
        if not super().available(candidate, removed):
            return False
        if self._emptied(candidate.layer, removed):  # nothing left to take (a whole layer would remove nothing)
            return False
        if self._emptied(candidate.layer, removed + [candidate]):  # emptying a layer is removing it: one must stay
            gone = {c.layer for c in removed if self._emptied(c.layer, removed)}
            return len(gone) < self.num_layers - 1
        mine = [c for c in removed if c.layer == candidate.layer]
        kinds = {c.kind for c in mine}
        if candidate.kind == "attention_heads":
            return sum(c.kind == "attention_heads" for c in mine) < self.specs[candidate.layer]["kv_heads"] - 1
        if candidate.kind == "ssm_heads":
            return "ssm" not in kinds and sum(c.kind == "ssm_heads" for c in mine) < self.heads_per_group(candidate.layer) - 1
        if candidate.kind == "ssm":
            return "ssm_heads" not in kinds
        return True

    # ---- masking -----------------------------------------------------------------
    def _gone(self, layer: int, kind: str, removed) -> set[int]:
        return {c.index for c in removed if c.layer == layer and c.kind == kind}

    def kept_attention_heads(self, layer: int, gone: set[int]) -> list[int]:
        return [k for k in range(self.specs[layer]["kv_heads"]) if k not in gone]

    def kept_ssm_heads(self, layer: int, gone: set[int]) -> torch.Tensor:
        groups = self.config.mamba_n_groups
        dropped = {h for j in gone for h in group_heads(self.specs[layer]["mamba_heads"], groups, j)}
        return torch.tensor([h for h in range(self.specs[layer]["mamba_heads"]) if h not in dropped], dtype=torch.long)

    # ---- forward -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(input_ids) * self.model.model.embedding_multiplier

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model.final_layernorm(hidden)
        return (self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype)) * self.model.model.lm_head_multiplier).float()

    def layer_forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """One layer from zero state, honouring the masks (see the module docstring)."""
        if self.is_masked(layer, "layer"):
            return hidden
        part = self.layers[layer]
        attention = part.self_attn is not None and not self.is_masked(layer, "attention")
        mamba = part.mamba is not None and not self.is_masked(layer, "mamba_block")
        if attention or mamba:
            normed = part.input_layernorm(hidden)
            mixed = 0
            if mamba:
                mixed = self._mamba(layer, normed) * part.ssm_out_multiplier
            if attention:
                mixed = mixed + self._attention(layer, normed * part.attention_in_multiplier) * part.attn_out_multiplier
            hidden = hidden + mixed
        if part.feed_forward is not None and not self.is_masked(layer, "mlp"):
            hidden = hidden + self._mlp(layer, part.pre_ff_layernorm(hidden))
        return hidden

    def _attention(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        attn = self.layers[layer].self_attn
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        if hasattr(attn, "key_multiplier"):  # Falcon-H1's muP key scale (Granite-4.0-H has none)
            k = k * attn.key_multiplier
        v = attn.v_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        if self.model.model.rotary_emb is not None:  # Granite-4.0-H may run without positions (NoPE)
            positions = torch.arange(length, device=x.device)[None]
            q, k = apply_rotary_pos_emb(q, k, *self.model.model.rotary_emb(x, positions))
        groups = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), is_causal=True, scale=attn.scaling)
        gone = self._gone(layer, "attention_heads", self.masked)
        if gone:  # a KV head's query heads are contiguous: heads k·groups .. (k+1)·groups - 1
            keep = torch.ones(q.shape[1], dtype=out.dtype, device=out.device)
            for k in gone:
                keep[k * groups : (k + 1) * groups] = 0
            out = out * keep[None, :, None, None]
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _mamba(self, layer: int, normed: torch.Tensor) -> torch.Tensor:
        mixer = self.layers[layer].mamba
        if not isinstance(mixer, FalconH1Mixer):
            return mixer(normed)  # already SSM-less: its own forward, from zero state
        gone = frozenset(self._gone(layer, "ssm_heads", self.masked))
        if gone:
            full = mixer
            mixer = self._head_views.get(layer, gone, lambda: head_view(full, self.kept_ssm_heads(layer, set(gone))))
        return mamba_branch(mixer, normed, scan=not self.is_masked(layer, "ssm"))

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        ff = self.layers[layer].feed_forward
        h = ff.up_proj(x) * ff.act_fn(ff.gate_proj(x) * ff.gate_multiplier)
        self.record_activations(layer, h)
        masked = self.masked_channels(layer)
        if masked is not None:
            h = h.index_fill(-1, masked.to(h.device), 0.0)
        return ff.down_proj(h) * ff.down_multiplier

    # ---- sizes ---------------------------------------------------------------------
    def removed_params(self, removed: list[Candidate]) -> int:
        config, _ = self._plan(removed)
        with torch.device("meta"):
            smaller = _model_class(config)(config)
        return self.num_params() - count_params(smaller)

    # ---- surgery -------------------------------------------------------------------
    def _plan(self, removed: list[Candidate]):
        """The pruned model's config, and per kept layer: its source layer and what it keeps."""
        for candidate in set(removed):
            self.validate(candidate)
        dropped = {c.layer for c in removed if c.kind == "layer"}
        layers = []
        for i, spec in enumerate(self.specs):
            if i in dropped:
                continue
            gone = {kind: {c for c in removed if c.layer == i and c.kind == kind} for kind in self.targets}
            kv = self.kept_attention_heads(i, {c.index for c in gone["attention_heads"]}) if not gone["attention"] else []
            ssm_heads = self.kept_ssm_heads(i, {c.index for c in gone["ssm_heads"]}) if not gone["mamba_block"] else torch.zeros(0)
            channels = removed.count(Candidate(i, "mlp_channels"))
            width = 0 if gone["mlp"] else spec["mlp_width"] - channels * (self.group_size or 0)
            new = {"kv_heads": len(kv), "mamba_heads": len(ssm_heads), "ssm": spec["ssm"] and not gone["ssm"], "mlp_width": width}
            if not (new["kv_heads"] or new["mamba_heads"] or new["mlp_width"]):
                continue  # nothing left: the layer goes as a whole
            layers.append({"source": i, "spec": new, "kv": kv, "ssm_heads": ssm_heads, "mlp_channels": channels})
        if not layers:
            raise ShedderError("cannot remove every layer of the model")
        fields = {k: v for k, v in self.config.to_dict().items() if k not in ("model_type", "transformers_version", "architectures", "auto_map")}
        source = getattr(self.config, "source_layers", None) or list(range(self.num_layers))
        specs = [entry["spec"] for entry in layers]
        full = ShedderFalconH1Config.full_layer_spec(self.config)
        fields["num_hidden_layers"] = len(layers)
        if all(spec == full for spec in specs):  # only whole layers went: a stock Falcon-H1
            fields.pop("layer_specs", None)
            fields.pop("source_layers", None)
            config = FalconH1Config(**fields)
            config.architectures = [FalconH1ForCausalLM.__name__]
        else:
            config = ShedderFalconH1Config(**{**fields, "layer_specs": specs, "source_layers": [source[e["source"]] for e in layers]})
            config.architectures = [ShedderFalconH1ForCausalLM.__name__]
            config.auto_map = auto_map(self.family)
        return config, layers

    @torch.no_grad()
    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        config, layers = self._plan(removed)
        state = {k: v.clone() for k, v in self.model.state_dict().items() if not _LAYER_KEY.match(k)}
        for new, entry in enumerate(layers):
            part, spec = self.layers[entry["source"]], entry["spec"]
            tensors = {}
            if spec["kv_heads"] or spec["mamba_heads"]:
                tensors["input_layernorm.weight"] = part.input_layernorm.weight
            if spec["kv_heads"]:
                tensors.update(self._attention_tensors(part.self_attn, entry["kv"]))
            if spec["mamba_heads"]:
                tensors.update(_prefixed("mamba.", self._mamba_tensors(part.mamba, entry, spec)))
            if spec["mlp_width"]:
                kept = self.kept_channels(entry["source"], entry["mlp_channels"]) if entry["mlp_channels"] else slice(None)
                ff = part.feed_forward
                tensors["pre_ff_layernorm.weight"] = part.pre_ff_layernorm.weight
                for name in ("gate_proj", "up_proj"):
                    tensors.update(_prefixed(f"feed_forward.{name}.", _rows(getattr(ff, name), kept)))
                tensors["feed_forward.down_proj.weight"] = ff.down_proj.weight[:, kept]
                if ff.down_proj.bias is not None:
                    tensors["feed_forward.down_proj.bias"] = ff.down_proj.bias
            state.update({f"model.layers.{new}.{k}": v.clone() for k, v in tensors.items()})
        model_class = _model_class(config)
        if model_class is FalconH1ForCausalLM:  # stock: mup_vector is a buffer rebuilt from the config
            state = {k: v for k, v in state.items() if not k.endswith(".mup_vector")}
        pruned = model_holding(model_class, config, state, next(self.model.parameters()).dtype)
        pruned.generation_config = copy.deepcopy(self.model.generation_config)
        return pruned.eval()

    def _attention_tensors(self, attn: nn.Module, kv: list[int]) -> dict[str, torch.Tensor]:
        head_dim, groups = attn.head_dim, self.kv_groups
        kv_rows = torch.tensor([k * head_dim + d for k in kv for d in range(head_dim)], dtype=torch.long)
        q_rows = torch.tensor([(k * groups + g) * head_dim + d for k in kv for g in range(groups) for d in range(head_dim)], dtype=torch.long)
        tensors = {}
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            tensors.update(_prefixed(f"self_attn.{name}.", _rows(getattr(attn, name), rows)))
        tensors["self_attn.o_proj.weight"] = attn.o_proj.weight[:, q_rows]
        if attn.o_proj.bias is not None:
            tensors["self_attn.o_proj.bias"] = attn.o_proj.bias
        return tensors

    def _mamba_tensors(self, mixer: nn.Module, entry: dict, spec: dict) -> dict[str, torch.Tensor]:
        if not isinstance(mixer, FalconH1Mixer):
            return dict(mixer.state_dict())
        if not spec["ssm"]:
            return {**ssm_less_tensors(mixer), "mup_vector": mixer.mup_vector[..., : 2 * mixer.intermediate_size]}
        return kept_head_tensors(mixer, entry["ssm_heads"])  # with the heads' muP multipliers

    # ---- reference configs ---------------------------------------------------------
    def from_reference(self, data: dict, source: str) -> list[Candidate]:
        """The reference's Hymba `pruning_config.json`: `pruned_hymba_block_idx` lists layers whose
        hybrid-head module (both branches) went; their MLPs stay."""
        known = {"pruned_hymba_block_idx"}
        unknown = [k for k, v in data.items() if k.startswith("pruned_") and k not in known and v]
        if unknown:
            raise ShedderError(f"{source}: {', '.join(unknown)} not applicable to a falcon_h1 model (known: pruned_hymba_block_idx)")
        found = []
        for value in data.get("pruned_hymba_block_idx") or []:
            if not isinstance(value, int) or not 0 <= value < self.num_layers:
                raise ShedderError(f"{source}: pruned_hymba_block_idx names {value!r}; this model has layers 0..{self.num_layers - 1}")
            found += [Candidate(value, "attention"), Candidate(value, "mamba_block")]
        return found


def mamba_branch(mixer: nn.Module, normed: torch.Tensor, scan: bool = True) -> torch.Tensor:
    """A Falcon-H1 Mamba branch on a whole sequence from zero state, every muP multiplier applied;
    without `scan` the conv-activated x stands in for the SSM's output."""
    projected = mixer.in_proj(normed * mixer.ssm_in_multiplier) * mixer.mup_vector
    if scan:
        y, z = ssd_scan(mixer, projected, mixer.time_step_limit)
    else:
        z, xBC, _ = split_projection(mixer, projected)
        x = xBC[..., : mixer.intermediate_size].transpose(1, 2)
        weight = mixer.conv1d.weight[: mixer.intermediate_size]
        bias = None if mixer.conv1d.bias is None else mixer.conv1d.bias[: mixer.intermediate_size]
        x = F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=mixer.intermediate_size)[..., : x.shape[-1]]
        y = mixer.act(x).transpose(1, 2)
    gated = mixer.norm(y, z) if mixer.mamba_rms_norm else y * F.silu(z.float())
    return mixer.out_proj(gated.to(normed.dtype))


def _config_specs(config) -> list[dict]:
    specs = getattr(config, "layer_specs", None)
    if specs:
        return specs
    return [ShedderFalconH1Config.full_layer_spec(config)] * config.num_hidden_layers  # a stock config: all layers full


def _model_class(config) -> type[nn.Module]:
    return ShedderFalconH1ForCausalLM if isinstance(config, ShedderFalconH1Config) else FalconH1ForCausalLM


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _rows(linear: nn.Linear, rows) -> dict[str, torch.Tensor]:
    tensors = {"weight": linear.weight[rows]}
    if linear.bias is not None:
        tensors["bias"] = linear.bias[rows]
    return tensors
