"""Granite-4.0-H (GraniteMoeHybrid): each layer holds one mixer, Mamba-2 or attention, then a dense
shared MLP, plus routed experts where `num_local_experts > 0`.

A Granite layer is a Falcon-H1 layer born without one of its two branches, with experts beside
its MLP: the candidate rules are Falcon-H1's (`FalconH1Adapter`, whose spec keys the Granite
spec extends), in the vocabulary of `components`:

* `layer` (`layers.i.layer`): the whole layer;
* `mamba_block` (`layers.i.block`) / `attention` (`layers.i.attn`): the layer's mixer with its
  norm; the MLP stays;
* `ssm` (`layers.i.ssm`): the Mamba mixer's scan, y = act(conv(x)) in its place;
* `mlp` / `mlp_channels`: the shared MLP, or one more group of its channels (input_linear holds
  the gate and up halves: a channel goes from both);
* `attention_heads` (`layers.i.attn.heads.j`): KV head j with its query heads (GQA stays whole);
* `ssm_heads` (`layers.i.ssm.heads.j`): the j-th head of every B/C group;
* `experts` (`layers.i.experts.j`): routed expert j; masked, its router logit is -inf before
  the top-k, which is what removing its weights and router row leaves. A layer keeps at least
  `num_experts_per_tok` experts (so it never loses them all: only `layer` empties it then).

Masked heads run exactly what physical removal leaves (see falcon_h1); Granite's gated norm spans
all kept channels. residual_multiplier, embedding_multiplier, logits_scaling (a divisor) and
attention_multiplier (the attention scale) are applied as stock does. The masked Mamba forward is
our chunked SSD (`ssd_mixer_forward`), never stock's naive CPU scan."""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

from ..errors import ShedderError
from ..modeling import GraniteMoeHybridMambaLayerWithoutSSM, ShedderGraniteMoeHybridConfig, ShedderGraniteMoeHybridForCausalLM, auto_map
from ..modeling.modeling_shedder_granitemoehybrid import layer_config
from .base import FamilyAdapter, count_params, model_holding, view_module
from .channels import check_group_size
from .components import Candidate
from .falcon_h1 import FalconH1Adapter, _prefixed
from .mamba2 import HeadViews, head_view, kept_head_tensors, ssd_mixer_forward, ssm_less_tensors

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_MIXER_TARGET = {"mamba": "mamba_block", "attention": "attention"}


def layer_spec(layer: nn.Module, mamba_head_dim: int) -> dict:
    """The config's layer spec of a stock or pruned GraniteMoeHybrid layer, read off its modules."""
    mamba, attn, mlp, moe = layer.mamba, layer.self_attn, layer.shared_mlp, layer.block_sparse_moe
    return {
        "mixer": "mamba" if mamba is not None else "attention" if attn is not None else None,
        "ssm": isinstance(mamba, GraniteMoeHybridMambaLayer),
        "mamba_heads": 0 if mamba is None else mamba.intermediate_size // mamba_head_dim,
        "kv_heads": 0 if attn is None else attn.k_proj.out_features // attn.head_dim,
        "mlp_width": 0 if mlp is None else mlp.output_linear.in_features,
        "experts": 0 if moe is None else moe.router.num_experts,
    }


class GraniteMoeHybridAdapter(FalconH1Adapter):
    family = "granitemoehybrid"
    model_types = ("granitemoehybrid", "shedder_granitemoehybrid")
    targets = ("layer", "mamba_block", "ssm", "attention", "mlp", "mlp_channels", "attention_heads", "ssm_heads", "experts")
    # PEFT matches names by suffix: the shared MLP's by its own (routed experts' are no nn.Linear)
    lora_targets = ("in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "shared_mlp.input_linear", "shared_mlp.output_linear")
    from_reference = FamilyAdapter.from_reference  # Mamba-Shedder's pruned_mamba_block_idx / pruned_ssm_idx

    def __init__(self, model: nn.Module):
        super(FalconH1Adapter, self).__init__(model)  # MlpChannels and FamilyAdapter: Falcon-H1's reads its own layers
        self.config = config = model.config
        if config.hidden_act not in ("silu", "swish"):
            raise ShedderError(f"GraniteMoeHybrid with hidden_act={config.hidden_act!r} is not supported (silu only)")
        self.specs = [layer_spec(layer, config.mamba_d_head) for layer in self.layers]
        self._head_views = HeadViews()
        self._ssm_less_views: dict[int, nn.Module] = {}

    # ---- config-only checks --------------------------------------------------------
    @classmethod
    def check_stage(cls, config, stage, where: str, unshare: bool) -> None:
        cls.check_targets(stage.targets, f"{where}.targets")
        specs = _config_specs(config)
        if "mlp_channels" in stage.targets:
            check_group_size([s["mlp_width"] for s in specs if s["mlp_width"]], stage.group_size, f"{where}.group_size")
        if "ssm_heads" in stage.targets and config.mamba_n_heads % config.mamba_n_groups:
            raise ShedderError(f"{where}.targets: ssm_heads needs mamba_n_groups ({config.mamba_n_groups}) to divide mamba_n_heads ({config.mamba_n_heads})")
        if "experts" in stage.targets and not any(s["experts"] > config.num_experts_per_tok for s in specs):
            raise ShedderError(
                f"{where}.targets: experts: no layer has more than num_experts_per_tok ({config.num_experts_per_tok}) routed experts "
                f"(num_local_experts: {config.num_local_experts})"
            )

    # ---- structure -------------------------------------------------------------
    def mlp_weight_l1(self, layer: int) -> torch.Tensor:
        mlp = self.layers[layer].shared_mlp
        gate, up = mlp.input_linear.weight.abs().sum(1).chunk(2)
        return gate + up + mlp.output_linear.weight.abs().sum(0)

    def _has(self, layer: int, kind: str) -> bool:
        spec = self.specs[layer]
        if kind == "experts":
            return spec["experts"] > self.config.num_experts_per_tok
        return super()._has(layer, kind)

    def _indices(self, layer: int, kind: str) -> list[int]:
        return list(range(self.specs[layer]["experts"])) if kind == "experts" else super()._indices(layer, kind)

    def _emptied(self, layer: int, removed: list[Candidate]) -> bool:
        """Whether `removed` leaves nothing of a layer (its mixer and MLP gone, and no experts:
        a layer's last experts never go)."""
        return super()._emptied(layer, removed) and (not self.specs[layer]["experts"] or Candidate(layer, "layer") in removed)

    def available(self, candidate: Candidate, removed: list[Candidate]) -> bool:
        if not super().available(candidate, removed):
            return False
        if candidate.kind == "experts":
            gone = self._gone(candidate.layer, "experts", removed)
            return len(gone) < self.specs[candidate.layer]["experts"] - self.config.num_experts_per_tok
        return True

    # ---- forward -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(input_ids) * self.model.model.embedding_multiplier

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model.norm(hidden)
        return (self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype)) / self.config.logits_scaling).float()

    def layer_forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """One layer from zero state, honouring the masks (see the module docstring)."""
        if self.is_masked(layer, "layer"):
            return hidden
        part, spec = self.layers[layer], self.specs[layer]
        if spec["mixer"] and not self.is_masked(layer, _MIXER_TARGET[spec["mixer"]]):
            normed = part.input_layernorm(hidden)
            mixed = self._mamba(layer, normed) if spec["mixer"] == "mamba" else self._attention(layer, normed)
            hidden = hidden + mixed * part.residual_multiplier
        mlp = spec["mlp_width"] > 0 and not self.is_masked(layer, "mlp")
        if mlp or spec["experts"]:
            normed = part.post_attention_layernorm(hidden)
            out = self._experts(layer, normed) if spec["experts"] else 0
            if mlp:
                out = out + self._mlp(layer, normed)
            hidden = hidden + out * part.residual_multiplier
        return hidden

    def _mamba(self, layer: int, normed: torch.Tensor) -> torch.Tensor:
        mixer = self.layers[layer].mamba
        if not isinstance(mixer, GraniteMoeHybridMambaLayer):
            return mixer(normed)  # already SSM-less: its own forward, from zero state
        if self.is_masked(layer, "ssm"):
            return self._ssm_less_view(layer)(normed)
        gone = frozenset(self._gone(layer, "ssm_heads", self.masked))
        if gone:
            full = mixer
            mixer = self._head_views.get(layer, gone, lambda: head_view(full, self.kept_ssm_heads(layer, set(gone))))
        return ssd_mixer_forward(mixer, normed, mixer.time_step_limit)

    def _ssm_less_view(self, layer: int) -> nn.Module:
        """The SSM-less mixer of a layer (the pruned model's class), its parameters views of the full mixer's."""
        if layer not in self._ssm_less_views:
            local = layer_config(self.config, self.specs[layer])
            tensors = ssm_less_tensors(self.layers[layer].mamba)
            self._ssm_less_views[layer] = view_module(lambda: GraniteMoeHybridMambaLayerWithoutSSM(local, layer), tensors)
        return self._ssm_less_views[layer]

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        mlp = self.layers[layer].shared_mlp
        gate, up = mlp.input_linear(x).chunk(2, dim=-1)
        h = mlp.activation(gate) * up
        self.record_activations(layer, h)
        masked = self.masked_channels(layer)
        if masked is not None:
            h = h.index_fill(-1, masked.to(h.device), 0.0)
        return mlp.output_linear(h)

    def _experts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Stock top-k routing over the experts not masked (their router logits -inf)."""
        moe = self.layers[layer].block_sparse_moe
        flat = x.reshape(-1, x.shape[-1])
        logits = moe.router.layer(flat).float()
        gone = sorted(self._gone(layer, "experts", self.masked))
        if gone:
            logits[:, gone] = float("-inf")
        top, chosen = logits.topk(moe.router.top_k, dim=1)
        gates = torch.softmax(top, dim=1).type_as(flat)
        out = torch.zeros_like(flat)
        for expert in chosen.unique().tolist():
            token, slot = (chosen == expert).nonzero(as_tuple=True)
            gate, up = F.linear(flat[token], moe.input_linear.weight[expert]).chunk(2, dim=-1)
            expert_out = F.linear(moe.activation(gate) * up, moe.output_linear.weight[expert])
            out.index_add_(0, token, expert_out * gates[token, slot, None])
        return out.view_as(x)

    # ---- sizes ---------------------------------------------------------------------
    def removed_params(self, removed: list[Candidate]) -> int:
        config, _ = self._plan(removed)
        with torch.device("meta"):
            smaller = _model_class(config)(config)
        return self.num_params() - count_params(smaller)

    def lora_target_choices(self) -> list[str]:
        """The linear layers LoRA can adapt, the shared MLP's by qualified name (see lora_targets)."""
        shared = ("input_linear", "output_linear")
        return sorted({f"shared_mlp.{n}" if n in shared else n for n in super().lora_target_choices()})

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
            gone = {kind: self._gone(i, kind, removed) for kind in self.targets}
            mixer = spec["mixer"] if spec["mixer"] and not gone[_MIXER_TARGET[spec["mixer"]]] else None
            kv = self.kept_attention_heads(i, gone["attention_heads"]) if mixer == "attention" else []
            heads = self.kept_ssm_heads(i, gone["ssm_heads"]) if mixer == "mamba" else []
            channels = removed.count(Candidate(i, "mlp_channels"))
            width = 0 if gone["mlp"] else spec["mlp_width"] - channels * (self.group_size or 0)
            experts = [e for e in range(spec["experts"]) if e not in gone["experts"]]
            new = {
                "mixer": mixer,
                "ssm": mixer == "mamba" and spec["ssm"] and not gone["ssm"],
                "mamba_heads": len(heads),
                "kv_heads": len(kv),
                "mlp_width": width,
                "experts": len(experts),
            }
            if mixer or width or experts:  # else nothing is left: the layer goes as a whole
                layers.append({"source": i, "spec": new, "kv": kv, "ssm_heads": heads, "mlp_channels": channels, "experts": experts})
        if not layers:
            raise ShedderError("cannot remove every layer of the model")
        fields = {k: v for k, v in self.config.to_dict().items() if k not in ("model_type", "transformers_version", "architectures", "auto_map")}
        for key in ("layer_specs", "source_layers"):
            fields.pop(key, None)
        source = getattr(self.config, "source_layers", None) or list(range(self.num_layers))
        specs = [entry["spec"] for entry in layers]
        fields.update(num_hidden_layers=len(layers), layer_types=[spec["mixer"] or "moe" for spec in specs])
        if all(spec["mixer"] and spec == ShedderGraniteMoeHybridConfig.full_layer_spec(self.config, spec["mixer"]) for spec in specs):
            config = GraniteMoeHybridConfig(**fields)  # only whole layers went: a stock GraniteMoeHybrid
            config.architectures = [GraniteMoeHybridForCausalLM.__name__]
        else:
            config = ShedderGraniteMoeHybridConfig(**fields, layer_specs=specs, source_layers=[source[e["source"]] for e in layers])
            config.architectures = [ShedderGraniteMoeHybridForCausalLM.__name__]
            config.auto_map = auto_map(self.family)
        return config, layers

    @torch.no_grad()
    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        config, layers = self._plan(removed)
        state = {k: v.clone() for k, v in self.model.state_dict().items() if not _LAYER_KEY.match(k)}
        for new, entry in enumerate(layers):
            part, spec = self.layers[entry["source"]], entry["spec"]
            tensors = {}
            if spec["mixer"]:
                tensors["input_layernorm.weight"] = part.input_layernorm.weight
            if spec["mixer"] == "attention":
                tensors.update(self._attention_tensors(part.self_attn, entry["kv"]))
            if spec["mixer"] == "mamba":
                tensors.update(_prefixed("mamba.", _mamba_tensors(part.mamba, entry)))
            if spec["mlp_width"] or spec["experts"]:
                tensors["post_attention_layernorm.weight"] = part.post_attention_layernorm.weight
            if spec["mlp_width"]:
                kept = self.kept_channels(entry["source"], entry["mlp_channels"]) if entry["mlp_channels"] else torch.arange(spec["mlp_width"])
                mlp = part.shared_mlp
                tensors["shared_mlp.input_linear.weight"] = mlp.input_linear.weight[torch.cat([kept, mlp.output_linear.in_features + kept])]
                tensors["shared_mlp.output_linear.weight"] = mlp.output_linear.weight[:, kept]
            if spec["experts"]:
                moe, experts = part.block_sparse_moe, entry["experts"]
                for name in ("input_linear.weight", "output_linear.weight", "router.layer.weight"):
                    tensors[f"block_sparse_moe.{name}"] = moe.get_parameter(name)[experts]
            state.update({f"model.layers.{new}.{k}": v.clone() for k, v in tensors.items()})
        pruned = model_holding(_model_class(config), config, state, next(self.model.parameters()).dtype)
        pruned.generation_config = copy.deepcopy(self.model.generation_config)
        return pruned.eval()


def _mamba_tensors(mixer: nn.Module, entry: dict) -> dict[str, torch.Tensor]:
    if not isinstance(mixer, GraniteMoeHybridMambaLayer):
        return dict(mixer.state_dict())
    if not entry["spec"]["ssm"]:
        return ssm_less_tensors(mixer)
    return kept_head_tensors(mixer, entry["ssm_heads"])


def _config_specs(config) -> list[dict]:
    specs = getattr(config, "layer_specs", None)
    if specs:
        return specs
    return [ShedderGraniteMoeHybridConfig.full_layer_spec(config, kind) for kind in config.layer_types]  # a stock config


def _model_class(config) -> type[nn.Module]:
    return ShedderGraniteMoeHybridForCausalLM if isinstance(config, ShedderGraniteMoeHybridConfig) else GraniteMoeHybridForCausalLM
