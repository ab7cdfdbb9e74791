"""ShedderGraniteMoeHybridForCausalLM: Granite-4.0-H with per-layer mixers, heads, widths and experts.

Shipped verbatim into every pruned GraniteMoeHybrid checkpoint (auto_map), so it imports only
torch, transformers and its config, and loads with `trust_remote_code=True` where shedder_ov is
not installed. State-dict keys are stock GraniteMoeHybrid's; a removed part has no module (and no
keys).

Each layer is stock's, every multiplier kept (r = residual_multiplier):
  h = h + r · mixer(input_layernorm(h))                        (the mixer may be gone)
  n = post_attention_layernorm(h)
  h = h + r · (experts(n) + shared_mlp(n))                     (either may be gone)
The stock attention, Mamba and MLP classes are built from a per-layer copy of the config that
holds the layer's head counts and widths. A Mamba mixer without its scan keeps z, the conv over x
and the gated norm: y = act(conv(x)) in place of the SSM's output."""

import copy
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import (
    GraniteMoeHybridAttention,
    GraniteMoeHybridMambaLayer,
    GraniteMoeHybridMLP,
    GraniteMoeHybridMoE,
    GraniteMoeHybridPreTrainedModel,
    GraniteMoeHybridRMSNorm,
    GraniteMoeHybridRMSNormGated,
    GraniteMoeHybridRotaryEmbedding,
    apply_mask_to_padding_states,
)

from .configuration_shedder_granitemoehybrid import ShedderGraniteMoeHybridConfig


def layer_config(config, spec):
    """A copy of the config with one layer's head counts and widths in the stock fields. The Mamba
    width is int(mamba_expand · hidden_size) in stock: an exact fraction keeps any head count."""
    local = copy.copy(config)
    groups = config.num_attention_heads // config.num_key_value_heads
    kv_heads, mamba_heads = max(spec["kv_heads"], 1), max(spec["mamba_heads"], 1)
    local.__dict__.update(
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        num_key_value_heads=kv_heads,
        num_attention_heads=kv_heads * groups,
        mamba_n_heads=mamba_heads,
        mamba_expand=Fraction(mamba_heads * config.mamba_d_head, config.hidden_size),
        shared_intermediate_size=max(spec["mlp_width"], 1),
        num_local_experts=spec["experts"],
    )
    return local


class GraniteMoeHybridMambaLayerWithoutSSM(nn.Module):
    """A Granite Mamba-2 mixer after scan removal: in_proj keeps the z and x rows, conv1d x's
    channels; y = act(conv(x)), then the stock gated norm and out_proj."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = inner = int(config.mamba_expand * config.hidden_size)
        self.in_proj = nn.Linear(config.hidden_size, 2 * inner, bias=config.mamba_proj_bias)
        kernel = config.mamba_d_conv
        self.conv1d = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1, bias=config.mamba_conv_bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = GraniteMoeHybridRMSNormGated(inner, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=config.mamba_proj_bias)

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        dtype = hidden_states.dtype
        z, x = self.in_proj(apply_mask_to_padding_states(hidden_states, attention_mask)).chunk(2, dim=-1)
        x = self.act(self._conv(x.transpose(1, 2), cache_params).transpose(1, 2))
        x = apply_mask_to_padding_states(x, attention_mask)
        return self.out_proj(self.norm(x, z).to(dtype))

    def _conv(self, x, cache):
        """Causal depthwise conv over x [b, inner, l]; a cache keeps the last kernel-size inputs, as stock."""
        if cache is not None and cache.has_previous_state(self.layer_idx) and x.shape[-1] == 1:
            window = cache.update_conv_state(x, self.layer_idx)
            out = torch.sum(window * self.conv1d.weight[:, 0, :], dim=-1)
            return (out if self.conv1d.bias is None else out + self.conv1d.bias).unsqueeze(-1)
        if cache is not None:
            cache.update_conv_state(F.pad(x, (self.conv1d.kernel_size[0] - x.shape[-1], 0)), self.layer_idx)
        return self.conv1d(x)[..., : x.shape[-1]]


class ShedderGraniteMoeHybridDecoderLayer(nn.Module):
    """Stock GraniteMoeHybrid layer whose mixer, shared MLP and experts may each be absent."""

    def __init__(self, config, layer_idx):
        super().__init__()
        spec = config.layer_specs[layer_idx]
        local = layer_config(config, spec)
        self.mamba = self.self_attn = None
        if spec["mixer"] == "mamba":
            self.mamba = (GraniteMoeHybridMambaLayer if spec["ssm"] else GraniteMoeHybridMambaLayerWithoutSSM)(local, layer_idx)
        elif spec["mixer"] == "attention":
            self.self_attn = GraniteMoeHybridAttention(local, layer_idx)
        self.input_layernorm = GraniteMoeHybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if spec["mixer"] else None
        self.block_sparse_moe = GraniteMoeHybridMoE(local) if spec["experts"] else None
        self.shared_mlp = GraniteMoeHybridMLP(local) if spec["mlp_width"] else None
        has_mlp = self.shared_mlp is not None or self.block_sparse_moe is not None
        self.post_attention_layernorm = GraniteMoeHybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if has_mlp else None
        self.residual_multiplier = config.residual_multiplier

    def forward(self, hidden_states, attention_mask=None, mamba_mask=None, past_key_values=None, position_embeddings=None, **kwargs):
        if self.mamba is not None:
            mixed = self.mamba(self.input_layernorm(hidden_states), cache_params=past_key_values, attention_mask=mamba_mask)
            hidden_states = hidden_states + mixed * self.residual_multiplier
        elif self.self_attn is not None:
            mixed, _ = self.self_attn(
                self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = hidden_states + mixed * self.residual_multiplier
        if self.post_attention_layernorm is not None:
            normed = self.post_attention_layernorm(hidden_states)
            if self.block_sparse_moe is None:
                out = self.shared_mlp(normed)
            else:
                out = self.block_sparse_moe(normed)
                if self.shared_mlp is not None:
                    out = out + self.shared_mlp(normed)
            hidden_states = hidden_states + out * self.residual_multiplier
        return hidden_states


class ShedderGraniteMoeHybridPreTrainedModel(GraniteMoeHybridPreTrainedModel):
    config_class = ShedderGraniteMoeHybridConfig
    _no_split_modules = ["ShedderGraniteMoeHybridDecoderLayer"]
    _can_record_outputs = None


class ShedderGraniteMoeHybridModel(ShedderGraniteMoeHybridPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(ShedderGraniteMoeHybridDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GraniteMoeHybridRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = GraniteMoeHybridRotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.embedding_multiplier = config.embedding_multiplier
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, use_cache=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds * self.embedding_multiplier
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        mixers = [spec["mixer"] for spec in self.config.layer_specs]
        attends = [i for i, mixer in enumerate(mixers) if mixer == "attention"]
        mamba = [i for i, mixer in enumerate(mixers) if mixer == "mamba"]
        causal_mask = position_embeddings = None
        if attends:
            if position_ids is None:
                past = past_key_values.get_seq_length(attends[0]) if past_key_values is not None else 0
                position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past
            causal_mask = create_causal_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, past_key_values=past_key_values, position_ids=position_ids
            )
            if self.rotary_emb is not None:
                position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        mamba_mask = attention_mask  # not needed on a cached step or without padding (as stock)
        if (mamba and past_key_values is not None and past_key_values.has_previous_state(mamba[0])) or (
            attention_mask is not None and torch.all(attention_mask == 1)
        ):
            mamba_mask = None
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, causal_mask, mamba_mask, past_key_values, position_embeddings)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=past_key_values if use_cache else None)


class ShedderGraniteMoeHybridForCausalLM(ShedderGraniteMoeHybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = ShedderGraniteMoeHybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache
        )
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, kept]) / self.config.logits_scaling
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
