"""Mamba-2: multi-head SSD mixers with a scalar decay per head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
