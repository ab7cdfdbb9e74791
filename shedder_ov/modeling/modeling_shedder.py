"""Pruned Mamba-family models: the standard transformers classes, with the mixer of every
layer in `config.ssm_removed_layers` replaced by its SSM-less remainder.

Shipped verbatim into every pruned checkpoint (auto_map), so it imports only torch and
transformers and loads with `trust_remote_code=True` where shedder_ov is not installed.

Without its SSM a Mamba mixer keeps in_proj (only the rows of z and x), the causal conv over
x and out_proj; what the scan produced is replaced by the conv-activated x itself:
  Mamba-1 / FalconMamba:  y = act(conv(x)) * act(z)
  Mamba-2:                y = gated_rmsnorm(act(conv(x)), z)

A Mamba-2 model may also have lost SSM heads: `config.layer_heads` gives every layer its head
count, and a layer with fewer than `num_heads` gets a standard mixer of that many heads (its
z/x/dt rows, conv channels, gated norm and out_proj columns shrink; B/C stay per group).
"""

from fractions import Fraction

import torch
from torch import nn
from transformers import FalconMambaForCausalLM, Mamba2ForCausalLM, MambaForCausalLM
from transformers.activations import ACT2FN
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer, MambaRMSNormGated

from .configuration_shedder import ShedderFalconMambaConfig, ShedderMamba2Config, ShedderMambaConfig


def _mask_padding(hidden_states, attention_mask):
    """Zero the hidden states of left-padding tokens, as the transformers mixers do."""
    if attention_mask is not None and attention_mask.shape[1] > 1 and attention_mask.shape[0] > 1:
        hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    return hidden_states


def causal_conv(conv1d, x, cache_params=None, layer_idx=None):
    """Depthwise causal conv over x [b, d, l]; keeps the conv state in the cache when given."""
    seq_len = x.shape[-1]
    kernel = conv1d.kernel_size[0]
    if cache_params is not None and cache_params.has_previous_state(layer_idx):
        window = cache_params.update_conv_state(x, layer_idx=layer_idx)
        out = torch.sum(window.to(conv1d.weight.device) * conv1d.weight[:, 0, :], dim=-1)
        if conv1d.bias is not None:
            out = out + conv1d.bias
        return out.unsqueeze(-1).to(x.dtype)
    if cache_params is not None:
        cache_params.update_conv_state(nn.functional.pad(x, (kernel - seq_len, 0)), layer_idx=layer_idx)
    return conv1d(x)[..., :seq_len]


class MambaMixerWithoutSSM(nn.Module):
    """Mamba-1 / FalconMamba mixer after SSM removal: y = act(conv(x)) * act(z)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = config.intermediate_size
        self.in_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.use_bias)
        self.conv1d = nn.Conv1d(
            config.intermediate_size,
            config.intermediate_size,
            kernel_size=config.conv_kernel,
            groups=config.intermediate_size,
            padding=config.conv_kernel - 1,
            bias=config.use_conv_bias,
        )
        self.act = ACT2FN[config.hidden_act]
        self.out_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        if attention_mask is not None:
            x = x * attention_mask.unsqueeze(1)
        x = self.act(causal_conv(self.conv1d, x, cache_params, self.layer_idx))
        return self.out_proj((x * self.act(z)).transpose(1, 2))


class Mamba2MixerWithoutSSM(nn.Module):
    """Mamba-2 mixer after SSM removal: y = gated_rmsnorm(act(conv(x)), z)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = int(config.expand * config.hidden_size)
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=config.use_bias)
        self.conv1d = nn.Conv1d(
            self.intermediate_size,
            self.intermediate_size,
            kernel_size=config.conv_kernel,
            groups=self.intermediate_size,
            padding=config.conv_kernel - 1,
            bias=config.use_conv_bias,
        )
        self.act = ACT2FN[config.hidden_act]
        self.norm = MambaRMSNormGated(self.intermediate_size, eps=config.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=config.use_bias)

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        dtype = hidden_states.dtype
        hidden_states = _mask_padding(hidden_states, attention_mask)
        z, x = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = self.act(causal_conv(self.conv1d, x.transpose(1, 2), cache_params, self.layer_idx).transpose(1, 2))
        x = _mask_padding(x, attention_mask)
        return self.out_proj(self.norm(x, z).to(dtype))


def _replace_removed_ssms(model, mixer_class):
    for index in model.config.ssm_removed_layers or []:
        model.backbone.layers[index].mixer = mixer_class(model.config, layer_idx=index)


class ShedderMambaForCausalLM(MambaForCausalLM):
    config_class = ShedderMambaConfig

    def __init__(self, config):
        super().__init__(config)
        _replace_removed_ssms(self, MambaMixerWithoutSSM)


class ShedderFalconMambaForCausalLM(FalconMambaForCausalLM):
    config_class = ShedderFalconMambaConfig

    def __init__(self, config):
        super().__init__(config)
        _replace_removed_ssms(self, MambaMixerWithoutSSM)


class _LayerConfig:
    """A config read through, with a few fields of one layer overridden (the stock configs are
    strict: one value for every layer)."""

    def __init__(self, config, **overrides):
        self._config, self._overrides = config, overrides

    def __getattr__(self, name):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_config"], name)


def mamba2_mixer_with_heads(config, layer_idx, heads):
    """A standard Mamba-2 mixer of `heads` SSM heads (inner width heads * head_dim)."""
    if heads <= 0 or heads % config.n_groups:
        raise ValueError(f"layer_heads[{layer_idx}] = {heads}: must be a positive multiple of n_groups = {config.n_groups}")
    inner = heads * config.head_dim
    layer_config = _LayerConfig(config, num_heads=heads, expand=Fraction(inner, config.hidden_size))
    return Mamba2Mixer(layer_config, layer_idx=layer_idx, initialize_mixer_weights=False)


class ShedderMamba2ForCausalLM(Mamba2ForCausalLM):
    config_class = ShedderMamba2Config

    def __init__(self, config):
        super().__init__(config)
        _replace_removed_ssms(self, Mamba2MixerWithoutSSM)
        removed = set(config.ssm_removed_layers or [])
        layer_heads = getattr(config, "layer_heads", None)
        if layer_heads is not None and len(layer_heads) != config.num_hidden_layers:
            raise ValueError(f"layer_heads has {len(layer_heads)} entries for {config.num_hidden_layers} layers")
        for index, heads in enumerate(layer_heads or []):
            if index not in removed and heads != config.num_heads:
                self.backbone.layers[index].mixer = mamba2_mixer_with_heads(config, index, heads)
