"""Mamba-2: multi-head SSD mixers with a scalar decay per head."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mamba2Config, Mamba2ForCausalLM

from ..errors import ShedderError
from ..modeling import Mamba2MixerWithoutSSM
from ..kernels import kernels_for
from .base import MambaFamilyAdapter, count_params
from .components import Candidate


class Mamba2Adapter(MambaFamilyAdapter):
    """Mamba-2, with SSM heads as a target too: candidate `layers.i.ssm.heads.j` is the j-th head
    of every B/C group of layer i (`group_heads`); a layer with heads masked runs `head_view` of
    its mixer, exactly what physical removal leaves (the gated norm then normalises over the kept
    channels only). The last head of a group always stays (`ssm` / `mamba_block` take them all);
    a layer's `ssm` goes only while it has all its heads (the SSM-less mixer stays full width),
    and its heads no more once its SSM went."""

    family = "mamba2"
    model_types = ("mamba2", "shedder_mamba2")
    base_config_class = Mamba2Config
    base_model_class = Mamba2ForCausalLM
    ssm_less_mixer = Mamba2MixerWithoutSSM
    targets = ("layer", "mamba_block", "ssm", "ssm_heads")

    def __init__(self, model):
        super().__init__(model)
        config = model.config
        for layer in self.layers:
            mixer = layer.mixer
            if not self.has_ssm(mixer.layer_idx):
                continue
            expected = 2 * mixer.intermediate_size + 2 * config.n_groups * config.state_size + mixer.num_heads
            if mixer.in_proj.out_features != expected or mixer.intermediate_size != mixer.num_heads * mixer.head_dim:
                raise ShedderError("Mamba-2 mixers with an extra MLP slice (d_mlp > 0) are not supported")
            if not config.rms_norm:
                raise ShedderError("Mamba-2 without the gated RMSNorm (rms_norm: false) is not supported")
        if config.hidden_act not in ("silu", "swish"):
            raise ShedderError(f"Mamba-2 with hidden_act={config.hidden_act!r} is not supported (silu only)")
        self._head_views = HeadViews()

    @classmethod
    def check_stage(cls, config, stage, where: str, unshare: bool) -> None:
        super().check_stage(config, stage, where, unshare)
        if "ssm_heads" in stage.targets:
            groups = config.n_groups
            counts = getattr(config, "layer_heads", None) or [config.num_heads]
            if groups < 1 or any(heads % groups for heads in [config.num_heads, *counts]):
                raise ShedderError(
                    f"{where}.targets: ssm_heads needs n_groups ({groups}) to divide num_heads ({config.num_heads}) "
                    f"of every layer, so that every B/C group keeps as many heads as the others"
                )

    # ---- structure -------------------------------------------------------------
    def num_heads(self, layer: int) -> int:
        """SSM heads of a layer as stored (a head-pruned layer has fewer than the config's)."""
        return self.layers[layer].mixer.num_heads

    def heads_per_group(self, layer: int) -> int:
        """The `ssm_heads` candidates of a layer: its heads per B/C group."""
        return self.num_heads(layer) // self.model.config.n_groups

    def full_width(self, layer: int) -> bool:
        """Whether a layer with its SSM still holds all the config's heads."""
        return self.num_heads(layer) == self.model.config.num_heads

    def candidates(self, targets):
        self.check_targets(targets)
        found = [
            c for c in super().candidates([t for t in targets if t != "ssm_heads"])
            if c.kind != "ssm" or self.full_width(c.layer)
        ]
        if "ssm_heads" in targets:
            for layer in range(self.num_layers):
                if self.has_ssm(layer) and self.heads_per_group(layer) > 1:
                    found += [Candidate(layer, "ssm_heads", j) for j in range(self.heads_per_group(layer))]
        return sorted(found)

    def validate(self, candidate: Candidate) -> None:
        if candidate.kind != "ssm_heads":
            super().validate(candidate)
            if candidate.kind == "ssm" and not self.full_width(candidate.layer):
                raise ShedderError(
                    f"{candidate.name}: this layer lost SSM heads ({self.num_heads(candidate.layer)} of "
                    f"{self.model.config.num_heads} left); its SSM can only go with its block (layers.{candidate.layer}.block)"
                )
            return
        if candidate.layer >= self.num_layers:
            raise ShedderError(f"{candidate.name}: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        if not self.has_ssm(candidate.layer):
            raise ShedderError(f"{candidate.name}: this layer has no SSM left, so no heads to remove")
        per_group = self.heads_per_group(candidate.layer)
        if not 0 <= candidate.index < per_group:
            raise ShedderError(
                f"{candidate.name}: head index out of range (layer {candidate.layer} has {per_group} heads per B/C "
                f"group: 0..{per_group - 1})"
            )

    def contains(self, outer: Candidate, inner: Candidate) -> bool:
        """A block contains its layer's SSM and heads; an SSM contains its layer's heads."""
        same = outer.layer == inner.layer
        return super().contains(outer, inner) or (same and outer.kind == "ssm" and inner.kind == "ssm_heads")

    def available(self, candidate: Candidate, removed: list[Candidate]) -> bool:
        if not super().available(candidate, removed):
            return False
        if candidate.kind == "ssm":  # not once one of its heads went
            return not any(c.kind == "ssm_heads" and c.layer == candidate.layer for c in removed)
        if candidate.kind == "ssm_heads":  # the last head of every group stays
            return len(self._heads_gone(candidate.layer, removed) | {candidate.index}) < self.heads_per_group(candidate.layer)
        return True

    @staticmethod
    def _heads_gone(layer: int, removed) -> set[int]:
        return {c.index for c in removed if c.kind == "ssm_heads" and c.layer == layer}

    def kept_heads(self, layer: int, gone: set[int]) -> torch.Tensor:
        """The heads (sorted) a layer keeps when the `ssm_heads` candidates `gone` are removed."""
        dropped = {h for j in gone for h in group_heads(self.num_heads(layer), self.model.config.n_groups, j)}
        return torch.tensor([h for h in range(self.num_heads(layer)) if h not in dropped], dtype=torch.long)

    def _removed_heads(self, removed, strict: bool = True) -> dict[int, set[int]]:
        """Per layer, the `ssm_heads` indices that go with `removed` (not those of a layer whose
        block or SSM goes too). Every head of a layer may not go: refused, or with strict=False
        (the most a list allows, as the search's feasibility check asks) all but the last."""
        subsumed = {c.layer for c in removed if c.kind in ("mamba_block", "ssm")}
        gone: dict[int, set[int]] = {}
        for c in removed:
            if c.kind == "ssm_heads" and c.layer not in subsumed:
                gone.setdefault(c.layer, set()).add(c.index)
        for layer, indices in gone.items():
            if len(indices) >= self.heads_per_group(layer):
                if strict:
                    raise ShedderError(
                        f"layers.{layer}.ssm.heads: removing all {len(indices)} heads per group leaves no SSM; "
                        f"remove layers.{layer}.ssm (or its block) instead"
                    )
                gone[layer] = set(sorted(indices)[1:])  # head groups of a layer are all the same size
        return gone

    # ---- masking -----------------------------------------------------------------
    def mask(self, candidate: Candidate) -> None:
        self.validate(candidate)
        if candidate.kind == "ssm_heads":
            self._removed_heads([c for c in self.masked if c.kind == "ssm_heads"] + [candidate])
        self.masked[candidate] += 1

    def _head_view(self, layer: int, gone: frozenset[int]) -> nn.Module:
        return self._head_views.get(layer, gone, lambda: head_view(self.layers[layer].mixer, self.kept_heads(layer, set(gone))))

    def layer_forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        gone = frozenset(self._heads_gone(layer, self.masked))
        if not gone or self.block_masked(layer) or self.ssm_masked(layer):
            return super().layer_forward(layer, hidden)
        block = self.layers[layer]
        normed = kernels_for(hidden.device.type).rms_norm(block.norm, hidden.to(dtype=block.norm.weight.dtype))
        residual = hidden.to(torch.float32) if block.residual_in_fp32 else hidden
        return residual + self.mixer_forward(self._head_view(layer, gone), normed)

    # ---- sizes ---------------------------------------------------------------------
    def removed_params(self, removed: list[Candidate]) -> int:
        total = super().removed_params([c for c in removed if c.kind != "ssm_heads"])
        for layer, gone in self._removed_heads(removed, strict=False).items():
            mixer = self.layers[layer].mixer
            total += count_params(mixer) - sum(t.numel() for t in kept_head_tensors(mixer, self.kept_heads(layer, gone)).values())
        return total

    # ---- surgery -------------------------------------------------------------------
    layer_fields = ("ssm_removed_layers", "layer_heads")

    def pruned_mixers(self, removed, keep):
        """Besides new SSM-less mixers: the layers that lose heads keep only the others' tensors."""
        mixers = super().pruned_mixers(removed, keep)
        for old, gone in self._removed_heads(removed).items():
            if old in keep:
                mixers[old] = kept_head_tensors(self.layers[old].mixer, self.kept_heads(old, gone))
        return mixers

    def pruned_layer_fields(self, removed, keep):
        """`layer_heads` (every layer's head count) once a kept layer with its SSM is short of heads;
        a model that lost no heads stays as before (no new field)."""
        gone = self._removed_heads(removed)
        without_ssm = {c.layer for c in removed if c.kind == "ssm"}
        heads = self.model.config.num_heads
        layer_heads = [
            self.num_heads(old) - len(gone.get(old, ())) * self.model.config.n_groups
            if self.has_ssm(old) and old not in without_ssm else heads
            for old in keep
        ]  # fmt: skip
        return {"layer_heads": layer_heads} if any(h != heads for h in layer_heads) else {}

    def split_projection(self, mixer, projected):
        return split_projection(mixer, projected)

    def mixer_forward(self, mixer, hidden):
        return ssd_mixer_forward(mixer, hidden, mixer.time_step_limit)

    def ssm_less_tensors(self, mixer):
        return ssm_less_tensors(mixer)


def split_projection(mixer, projected):
    """in_proj's output of a Mamba-2 mixer as z, xBC (the conv's input), dt."""
    return projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)


def ssd_scan(mixer, projected, dt_limit: tuple[float, float]):
    """The conv over [x, B, C] and the chunked SSD of a Mamba-2 mixer (transformers' attribute
    names) on in_proj's output, from zero state; returns y [b, l, inner] (D skip included) and z.
    dt is clamped to `dt_limit`."""
    batch, seq_len, _ = projected.shape
    kernels = kernels_for(projected.device.type)
    heads, head_dim = mixer.num_heads, mixer.head_dim
    groups, state = mixer.n_groups, mixer.ssm_state_size
    z, xBC, dt = split_projection(mixer, projected)
    xBC = kernels.conv(xBC.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias).transpose(1, 2)
    x, B, C = xBC.split([mixer.intermediate_size, groups * state, groups * state], dim=-1)
    dt = torch.clamp(F.softplus(dt + mixer.dt_bias), dt_limit[0], dt_limit[1])
    y = kernels.ssd(
        x.reshape(batch, seq_len, heads, head_dim),
        dt,
        -torch.exp(mixer.A_log.float()),
        B.reshape(batch, seq_len, groups, state),
        C.reshape(batch, seq_len, groups, state),
        mixer.chunk_size,
        mixer.D,
    )
    return y.reshape(batch, seq_len, -1), z


def ssd_mixer_forward(mixer, hidden, dt_limit: tuple[float, float]):
    """A Mamba-2 mixer on a whole sequence from zero state: `ssd_scan`, gated RMSNorm, out_proj."""
    y, z = ssd_scan(mixer, mixer.in_proj(hidden), dt_limit)
    return mixer.out_proj(kernels_for(hidden.device.type).gated_norm(mixer.norm, y, z).to(hidden.dtype))


def group_heads(num_heads: int, n_groups: int, index: int) -> list[int]:
    """The heads of `ssm_heads` candidate `index`: the index-th head of every B/C group, so that
    every group keeps as many heads as the others (heads of group g are contiguous)."""
    per_group = num_heads // n_groups
    return [g * per_group + index for g in range(n_groups)]


def head_rows(mixer, heads: torch.Tensor) -> dict[str, torch.Tensor]:
    """Indices that a Mamba-2 mixer keeps of each tensor when only `heads` (sorted) stay:
    `in_proj` rows (z, x of the heads; all of B, C; their dt), `conv` channels (x of the heads;
    all of B, C) and `channels` (the heads' rows of y: gated-norm weights, out_proj columns)."""
    inner, head_dim, bc = mixer.intermediate_size, mixer.head_dim, mixer.conv_dim - mixer.intermediate_size
    heads = heads.to(torch.long)
    channels = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
    conv = torch.cat([channels, inner + torch.arange(bc)])
    return {"in_proj": torch.cat([channels, inner + conv, inner + mixer.conv_dim + heads]), "conv": conv, "channels": channels, "heads": heads}


def kept_head_tensors(mixer, heads: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of a Mamba-2 mixer with only `heads` left, by parameter (and buffer) name:
    B/C stay whole (shared per group); A_log, D, dt_bias, the heads' z/x/dt rows, conv channels,
    gated-norm weights and out_proj columns are taken. Copies (index_select)."""
    rows = head_rows(mixer, heads)
    kept = {
        "in_proj.weight": mixer.in_proj.weight[rows["in_proj"]],
        "conv1d.weight": mixer.conv1d.weight[rows["conv"]],
        "out_proj.weight": mixer.out_proj.weight[:, rows["channels"]],
    }
    for name in ("A_log", "D", "dt_bias"):
        kept[name] = getattr(mixer, name)[rows["heads"]]
    if mixer.in_proj.bias is not None:
        kept["in_proj.bias"] = mixer.in_proj.bias[rows["in_proj"]]
    if mixer.conv1d.bias is not None:
        kept["conv1d.bias"] = mixer.conv1d.bias[rows["conv"]]
    if mixer.out_proj.bias is not None:
        kept["out_proj.bias"] = mixer.out_proj.bias
    if getattr(mixer, "norm", None) is not None:
        kept["norm.weight"] = mixer.norm.weight[rows["channels"]]
    if getattr(mixer, "mup_vector", None) is not None:
        kept["mup_vector"] = mixer.mup_vector[..., rows["in_proj"]]
    return kept


class HeadViews:
    """The head views of each layer's mixer for its last two masked-head sets (the search's
    committed masks and the candidate being scored): a view copies most of a mixer, and costs far
    less to build than one batch's forward, so more would only hold memory."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._views: dict[int, OrderedDict[frozenset[int], nn.Module]] = {}

    def get(self, layer: int, gone: frozenset[int], build) -> nn.Module:
        views = self._views.setdefault(layer, OrderedDict())
        if gone in views:
            views.move_to_end(gone)
        else:
            views[gone] = build()
            while len(views) > self.keep:
                views.popitem(last=False)
        return views[gone]


def head_view(mixer, heads: torch.Tensor) -> nn.Module:
    """A copy of `mixer` (same class, settings and submodule classes) holding only `heads`:
    what the search runs for a mixer with heads masked, exactly what physical removal leaves."""
    tensors = kept_head_tensors(mixer, heads)
    view = copy.copy(mixer)
    view._parameters, view._buffers = dict(mixer._parameters), dict(mixer._buffers)
    view._modules = {name: copy.copy(module) for name, module in mixer._modules.items()}
    for module in view._modules.values():
        if module is not None:
            module._parameters = dict(module._parameters)
    for name, tensor in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = view.get_submodule(owner_name) if owner_name else view
        if attr in owner._buffers:
            owner._buffers[attr] = tensor
        else:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    inner = len(heads) * mixer.head_dim
    view.num_heads, view.intermediate_size = len(heads), inner
    view.conv_dim = mixer.conv_dim - mixer.intermediate_size + inner
    view.in_proj.out_features, view.out_proj.in_features = tensors["in_proj.weight"].shape[0], inner
    view.conv1d.in_channels = view.conv1d.out_channels = view.conv1d.groups = view.conv_dim
    if getattr(view, "norm", None) is not None and hasattr(view.norm, "group_size"):
        view.norm.group_size = inner // mixer.n_groups
    return view


def ssm_less_tensors(mixer) -> dict[str, torch.Tensor]:
    """Views of what a Mamba-2 mixer keeps without its SSM: the z and x rows of in_proj, the conv
    over x, the gated norm and out_proj."""
    inner = mixer.intermediate_size
    kept = {
        "in_proj.weight": mixer.in_proj.weight[: 2 * inner],
        "conv1d.weight": mixer.conv1d.weight[:inner],
        "out_proj.weight": mixer.out_proj.weight,
    }
    if getattr(mixer, "norm", None) is not None:  # Falcon-H1 may gate without a norm
        kept["norm.weight"] = mixer.norm.weight
    if mixer.in_proj.bias is not None:
        kept["in_proj.bias"] = mixer.in_proj.bias[: 2 * inner]
    if mixer.conv1d.bias is not None:
        kept["conv1d.bias"] = mixer.conv1d.bias[:inner]
    if mixer.out_proj.bias is not None:
        kept["out_proj.bias"] = mixer.out_proj.bias
    return kept
