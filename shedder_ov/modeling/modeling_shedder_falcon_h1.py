"""ShedderFalconH1ForCausalLM: Falcon-H1 with per-layer branches, heads and widths.

Shipped verbatim into every pruned Falcon-H1 checkpoint (auto_map), so it imports only torch,
transformers and its config, and loads with `trust_remote_code=True` where shedder_ov is not
installed. State-dict keys are stock Falcon-H1's; a removed part has no module (and no keys).

Each layer is stock Falcon-H1's parallel hybrid-head layer, every multiplier kept:
  n = input_layernorm(h)
  h = h + ssm_out · mamba(n) + attn_out · attention(attn_in · n)   (either branch may be gone)
  h = h + mlp(pre_ff_layernorm(h))                                   (the MLP may be gone)
The stock attention, mixer and MLP classes are built from a per-layer copy of the config that
holds the layer's head counts and widths. A Mamba branch without its scan keeps z, the conv
over x and the gating: y = act(conv(x)) in place of the SSM's output."""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.falcon_h1.modeling_falcon_h1 import (
    FalconH1Attention,
    FalconH1Mixer,
    FalconH1MLP,
    FalconH1PreTrainedModel,
    FalconH1RMSNorm,
    FalconH1RMSNormGated,
    FalconH1RotaryEmbedding,
    apply_mask_to_padding_states,
    compute_mup_vector,
)

from .configuration_shedder_falcon_h1 import ShedderFalconH1Config


def layer_config(config, spec):
    """A copy of the config with one layer's head counts and widths in the stock fields."""
    local = copy.copy(config)
    groups = config.num_attention_heads // config.num_key_value_heads
    local.__dict__.update(
        num_key_value_heads=max(spec["kv_heads"], 1),
        num_attention_heads=max(spec["kv_heads"], 1) * groups,
        mamba_n_heads=max(spec["mamba_heads"], 1),
        mamba_d_ssm=max(spec["mamba_heads"], 1) * config.mamba_d_head,
        intermediate_size=max(spec["mlp_width"], 1),
    )
    return local


class FalconH1MixerWithoutSSM(nn.Module):
    """A Falcon-H1 Mamba branch after scan removal: in_proj keeps the z and x rows (with their
    muP multipliers), conv1d x's channels; y = act(conv(x)), then the stock gating."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = inner = config.mamba_d_ssm
        self.n_groups = config.mamba_n_groups
        self.ssm_in_multiplier = config.ssm_in_multiplier
        self.in_proj = nn.Linear(config.hidden_size, 2 * inner, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(inner, inner, config.mamba_d_conv, groups=inner, padding=config.mamba_d_conv - 1, bias=config.mamba_conv_bias)
        self.act = ACT2FN[config.hidden_act]
        self.mamba_rms_norm = config.mamba_rms_norm
        if self.mamba_rms_norm:
            self.norm = FalconH1RMSNormGated(inner, eps=config.rms_norm_eps, n_groups=self.n_groups, norm_before_gate=config.mamba_norm_before_gate)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=config.projectors_bias)
        self.register_buffer("mup_vector", ssm_less_mup_vector(config))

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        dtype = hidden_states.dtype
        x = apply_mask_to_padding_states(hidden_states, attention_mask) * self.ssm_in_multiplier
        z, x = (self.in_proj(x) * self.mup_vector).chunk(2, dim=-1)
        x = self.act(self._conv(x.transpose(1, 2), cache_params).transpose(1, 2))
        x = apply_mask_to_padding_states(x, attention_mask)
        y = self.norm(x, z) if self.mamba_rms_norm else x * F.silu(z)
        return self.out_proj(y.to(dtype))

    def _conv(self, x, cache):
        """Causal depthwise conv over x [b, inner, l]; a cache keeps the last kernel-size inputs, as stock."""
        if cache is not None and cache.has_previous_state(self.layer_idx) and x.shape[-1] == 1:
            window = cache.update_conv_state(x, self.layer_idx)
            out = torch.sum(window * self.conv1d.weight[:, 0, :], dim=-1)
            return (out if self.conv1d.bias is None else out + self.conv1d.bias).unsqueeze(-1)
        if cache is not None:
            cache.update_conv_state(F.pad(x, (self.conv1d.kernel_size[0] - x.shape[-1], 0)), self.layer_idx)
        return self.conv1d(x)[..., : x.shape[-1]]


def ssm_less_mup_vector(config) -> torch.Tensor:
    """The muP multipliers of the z and x rows (the first two of `ssm_multipliers`)."""
    inner = config.mamba_d_ssm
    z_multiplier, x_multiplier = config.ssm_multipliers[:2]
    return torch.cat([torch.full((inner,), float(z_multiplier)), torch.full((inner,), float(x_multiplier))])[None, None]


class ShedderFalconH1DecoderLayer(nn.Module):
    """Stock Falcon-H1 layer whose attention, Mamba branch and MLP may each be absent."""

    def __init__(self, config, layer_idx):
        super().__init__()
        spec = config.layer_specs[layer_idx]
        self.local_config = local = layer_config(config, spec)
        self.self_attn = FalconH1Attention(local, layer_idx) if spec["kv_heads"] else None
        self.mamba = None
        if spec["mamba_heads"]:
            self.mamba = FalconH1Mixer(local, layer_idx) if spec["ssm"] else FalconH1MixerWithoutSSM(local, layer_idx)
            if spec["ssm"]:  # persistent here (stock rebuilds it on load): the checkpoint carries its multipliers
                self.mamba.register_buffer("mup_vector", compute_mup_vector(local))
        has_mixer = self.self_attn is not None or self.mamba is not None
        self.input_layernorm = FalconH1RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if has_mixer else None
        self.feed_forward = FalconH1MLP(local) if spec["mlp_width"] else None
        self.pre_ff_layernorm = FalconH1RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if spec["mlp_width"] else None
        self.attention_in_multiplier = config.attention_in_multiplier
        self.ssm_out_multiplier = config.ssm_out_multiplier
        self.attn_out_multiplier = config.attention_out_multiplier

    def forward(self, hidden_states, attention_mask=None, mamba_attention_mask=None, past_key_values=None, position_embeddings=None, **kwargs):
        if self.input_layernorm is not None:
            normed = self.input_layernorm(hidden_states)
            mixed = 0
            if self.mamba is not None:
                mixed = self.mamba(normed, cache_params=past_key_values, attention_mask=mamba_attention_mask) * self.ssm_out_multiplier
            if self.self_attn is not None:
                attended, _ = self.self_attn(
                    normed * self.attention_in_multiplier,
                    position_embeddings=position_embeddings,
                    attention_mask=attention_mask,
                    past_key_values=past_key_values,
                    **kwargs,
                )
                mixed = mixed + attended * self.attn_out_multiplier
            hidden_states = hidden_states + mixed
        if self.feed_forward is not None:
            hidden_states = hidden_states + self.feed_forward(self.pre_ff_layernorm(hidden_states))
        return hidden_states


class ShedderFalconH1PreTrainedModel(FalconH1PreTrainedModel):
    config_class = ShedderFalconH1Config
    _no_split_modules = ["ShedderFalconH1DecoderLayer"]
    _can_record_outputs = None


class ShedderFalconH1Model(ShedderFalconH1PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(ShedderFalconH1DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = FalconH1RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = FalconH1RotaryEmbedding(config=config)
        self.embedding_multiplier = config.embedding_multiplier
        self.lm_head_multiplier = config.lm_head_multiplier
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, use_cache=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embedding_multiplier
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        kinds = self.config.layers_block_type
        attends = [i for i, kind in enumerate(kinds) if kind in ("hybrid", "full_attention")]
        mamba = [i for i, kind in enumerate(kinds) if kind in ("hybrid", "mamba")]
        causal_mask = position_embeddings = None
        if attends:
            if position_ids is None:
                past = past_key_values.get_seq_length(attends[0]) if past_key_values is not None else 0
                position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past
            causal_mask = create_causal_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, past_key_values=past_key_values, position_ids=position_ids
            )
            position_embeddings = self.rotary_emb(inputs_embeds, position_ids=position_ids)
        mamba_mask = attention_mask  # not needed on a cached step or without padding (as stock)
        if (mamba and past_key_values is not None and past_key_values.has_previous_state(mamba[0])) or (
            attention_mask is not None and torch.all(attention_mask == 1)
        ):
            mamba_mask = None
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, causal_mask, mamba_mask, past_key_values, position_embeddings, position_ids=position_ids)
        return BaseModelOutputWithPast(last_hidden_state=self.final_layernorm(hidden), past_key_values=past_key_values if use_cache else None)


class ShedderFalconH1ForCausalLM(ShedderFalconH1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = ShedderFalconH1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache
        )
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, kept]) * self.model.lm_head_multiplier
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
