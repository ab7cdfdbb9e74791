"""Mamba-1 and FalconMamba: selective-scan mixers with per-channel decays."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM

from ..modeling import MambaMixerWithoutSSM
from ..errors import ShedderError
from ..kernels import kernels_for
from .base import MambaFamilyAdapter


class MambaAdapter(MambaFamilyAdapter):
    family = "mamba"
    model_types = ("mamba", "shedder_mamba")
    base_config_class = MambaConfig
    base_model_class = MambaForCausalLM
    ssm_less_mixer = MambaMixerWithoutSSM

    def ssm_inputs(self, mixer, time_step, B, C):
        """Hook for families that normalise the SSM inputs (FalconMamba)."""
        return time_step, B, C

    def __init__(self, model):
        super().__init__(model)
        if model.config.hidden_act not in ("silu", "swish"):
            raise ShedderError(f"{self.family} with hidden_act={model.config.hidden_act!r} is not supported (silu only)")

    def mixer_forward(self, mixer, hidden):
        kernels = kernels_for(hidden.device.type)
        x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        x = kernels.conv(x, mixer.conv1d.weight, mixer.conv1d.bias)
        time_step, B, C = torch.split(
            mixer.x_proj(x.transpose(1, 2)), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1
        )
        time_step, B, C = self.ssm_inputs(mixer, time_step, B, C)
        delta = F.softplus(mixer.dt_proj(time_step)).transpose(1, 2)
        y = kernels.selective_scan(x, delta, -torch.exp(mixer.A_log.float()), B, C, mixer.D)
        y = y.to(hidden.dtype) * mixer.act(z)
        return mixer.out_proj(y.transpose(1, 2))

    def ssm_less_tensors(self, mixer):
        kept = {"in_proj.weight": mixer.in_proj.weight, "conv1d.weight": mixer.conv1d.weight}
        for name in ("in_proj.bias", "conv1d.bias", "out_proj.bias"):
            tensor = mixer.get_parameter(name) if _has(mixer, name) else None
            if tensor is not None:
                kept[name] = tensor
        kept["out_proj.weight"] = mixer.out_proj.weight
        return kept


class FalconMambaAdapter(MambaAdapter):
    family = "falcon_mamba"
    model_types = ("falcon_mamba", "shedder_falcon_mamba")
    base_config_class = FalconMambaConfig
    base_model_class = FalconMambaForCausalLM

    def ssm_inputs(self, mixer, time_step, B, C):
        from transformers.models.falcon_mamba.modeling_falcon_mamba import rms_forward

        return tuple(rms_forward(t, variance_epsilon=mixer.rms_eps) for t in (time_step, B, C))


def _has(module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner), attr, None) is not None
