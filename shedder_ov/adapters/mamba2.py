"""Mamba-2: multi-head SSD mixers with a scalar decay per head."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mamba2Config, Mamba2ForCausalLM

from ..errors import ShedderError
from ..modeling import Mamba2MixerWithoutSSM
from ..kernels import kernels_for
from .base import MambaFamilyAdapter


class Mamba2Adapter(MambaFamilyAdapter):
    family = "mamba2"
    model_types = ("mamba2", "shedder_mamba2")
    base_config_class = Mamba2Config
    base_model_class = Mamba2ForCausalLM
    ssm_less_mixer = Mamba2MixerWithoutSSM

    def __init__(self, model):
        super().__init__(model)
        config = model.config
        inner = int(config.expand * config.hidden_size)
        expected = 2 * inner + 2 * config.n_groups * config.state_size + config.num_heads
        for layer in self.layers:
            mixer = layer.mixer
            if self.has_ssm(mixer.layer_idx) and mixer.in_proj.out_features != expected:
                raise ShedderError("Mamba-2 mixers with an extra MLP slice (d_mlp > 0) are not supported")
            if self.has_ssm(mixer.layer_idx) and not config.rms_norm:
                raise ShedderError("Mamba-2 without the gated RMSNorm (rms_norm: false) is not supported")
        if config.hidden_act not in ("silu", "swish"):
            raise ShedderError(f"Mamba-2 with hidden_act={config.hidden_act!r} is not supported (silu only)")

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


def ssm_less_tensors(self, mixer):
        return ssm_less_tensors(mixer)


def split_projection(mixer, projected):
    """in_proj's output of a Mamba-2 mixer as z, xBC (the conv's input), dt."""
    return projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)


def ssd_mixer_forward(mixer, hidden, dt_limit: tuple[float, float]):
    """A Mamba-2 mixer (transformers' attribute names) on a whole sequence from zero state:
    conv over [x, B, C], chunked SSD, gated RMSNorm. dt is clamped to `dt_limit`."""
    batch, seq_len, _ = hidden.shape
    kernels = kernels_for(hidden.device.type)
    heads, head_dim = mixer.num_heads, mixer.head_dim
    groups, state = mixer.n_groups, mixer.ssm_state_size
    z, xBC, dt = split_projection(mixer, mixer.in_proj(hidden))
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
    return mixer.out_proj(kernels.gated_norm(mixer.norm, y.reshape(batch, seq_len, -1), z).to(hidden.dtype))


def ssm_less_tensors(mixer) -> dict[str, torch.Tensor]:
    """Views of what a Mamba-2 mixer keeps without its SSM: the z and x rows of in_proj, the conv
    over x, the gated norm and out_proj."""
    inner = mixer.intermediate_size
    kept = {
        "in_proj.weight": mixer.in_proj.weight[: 2 * inner],
        "conv1d.weight": mixer.conv1d.weight[:inner],
        "norm.weight": mixer.norm.weight,
        "out_proj.weight": mixer.out_proj.weight,
    }
    if mixer.in_proj.bias is not None:
        kept["in_proj.bias"] = mixer.in_proj.bias[: 2 * inner]
    if mixer.conv1d.bias is not None:
        kept["conv1d.bias"] = mixer.conv1d.bias[:inner]
    if mixer.out_proj.bias is not None:
        kept["out_proj.bias"] = mixer.out_proj.bias
    return kept
