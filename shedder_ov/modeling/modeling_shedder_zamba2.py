"""ShedderZamba2ForCausalLM: every Zamba2 model, stock or pruned, in one class.

Shipped verbatim into every Zamba2 checkpoint (auto_map), so it imports only torch, transformers and
its config, and loads with `trust_remote_code=True` where shedder_ov is not installed.

Zamba2 is Mamba-2 layers plus shared transformer blocks (model.blocks), invoked by the hybrid layers,
each invocation with its own adapters and `linear`. A block is referenced by index (layer.block),
never registered under several layers, so every weight has one state_dict key. One layer:
  t = linear(mlp(attention(norm([hidden, emb]))))   when the layer invokes a block (either part may be off)
  hidden = hidden + mamba(norm(hidden + t))          when it keeps its Mamba part (else hidden + t)
Without its SSM a mixer keeps z, the conv over x and the gated norm: y = out_proj(norm(silu(conv(x)), z)).
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.zamba2.modeling_zamba2 import (
    Zamba2MambaMixer,
    Zamba2PreTrainedModel,
    Zamba2RMSNorm,
    Zamba2RMSNormGated,
    Zamba2RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_shedder_zamba2 import ShedderZamba2Config


def _adapter(in_features, rank, out_features):
    """A per-invocation LoRA-style adapter, shaped as stock Zamba2's."""
    return nn.Sequential(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=False))


def _project(linear, adapter, x):
    """A shared projection plus this invocation's adapter, if it has one."""
    return linear(x) if adapter is None else linear(x) + adapter(x)


def _mask_padding(x, attention_mask):
    """Zero padding positions as the stock mixer does; a decode step's mask (longer than x) is not applied."""
    if attention_mask is None or attention_mask.shape[1] != x.shape[1]:
        return x
    return (x * attention_mask[:, :, None]).to(x.dtype)


class Zamba2MixerWithoutSSM(nn.Module):
    """Zamba2 Mamba-2 mixer after SSM removal: in_proj keeps only z and x, conv1d only x's channels."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = int(config.mamba_expand * config.hidden_size)
        inner = self.intermediate_size
        self.in_proj = nn.Linear(config.hidden_size, 2 * inner, bias=config.add_bias_linear)
        self.conv1d = nn.Conv1d(inner, inner, config.mamba_d_conv, groups=inner, padding=config.mamba_d_conv - 1)
        self.act = nn.SiLU()
        self.norm = Zamba2RMSNormGated(inner, group_size=inner // config.mamba_ngroups, eps=1e-5)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states, cache_params=None, attention_mask=None):
        z, x = self.in_proj(_mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)
        x = self.act(self._conv(x.transpose(1, 2), cache_params).transpose(1, 2))
        return self.out_proj(self.norm(_mask_padding(x, attention_mask), z))

    def _conv(self, x, cache):
        """Causal depthwise conv over x [b, inner, l]; a cache keeps the last kernel-size inputs, as stock."""
        if cache is not None and cache.has_previous_state(self.layer_idx):
            window = cache.update_conv_state(x, self.layer_idx)
            return (torch.sum(window * self.conv1d.weight[:, 0, :], dim=-1) + self.conv1d.bias).unsqueeze(-1)
        if cache is not None:
            cache.update_conv_state(nn.functional.pad(x, (self.conv1d.kernel_size[0] - x.shape[-1], 0)), self.layer_idx)
        return self.conv1d(x)[..., : x.shape[-1]]


class ShedderZamba2Attention(nn.Module):
    """Stock Zamba2 attention over [hidden, embeddings]; the invocation passes its adapters and cache slot."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.attention_head_dim
        self.scaling = (self.head_dim / 2) ** -0.5
        self.is_causal = True
        width = config.attention_hidden_size
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, adapters, layer_idx, attention_mask, position_embeddings, cache):
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (
            _project(linear, adapter, x).view(shape).transpose(1, 2)
            for linear, adapter in zip((self.q_proj, self.k_proj, self.v_proj), adapters)
        )
        if position_embeddings is not None:
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, _ = attention(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling)
        return self.o_proj(out.reshape(*x.shape[:-1], -1))


class ShedderZamba2MLP(nn.Module):
    """Stock shared gated MLP, at the (possibly channel-pruned) width of its block."""

    def __init__(self, config, width):
        super().__init__()
        self.width = width
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * width, bias=config.add_bias_linear)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=config.add_bias_linear)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x, adapter=None):
        gate, up = _project(self.gate_up_proj, adapter, x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class ShedderZamba2SharedBlock(nn.Module):
    """One stored shared transformer block; its attention or MLP is absent once no invocation uses it."""

    def __init__(self, config, spec):
        super().__init__()
        attention, mlp = spec["attention"], spec["mlp"]
        self.input_layernorm = Zamba2RMSNorm(config.attention_hidden_size, eps=config.rms_norm_eps) if attention else None
        self.self_attn = ShedderZamba2Attention(config) if attention else None
        self.pre_ff_layernorm = Zamba2RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if mlp else None
        self.feed_forward = ShedderZamba2MLP(config, spec["mlp_width"]) if mlp else None


class ShedderZamba2Layer(nn.Module):
    """One layer: an optional invocation of a shared block (own adapters and linear), then an optional Mamba part."""

    def __init__(self, config, layer_idx):
        super().__init__()
        spec = config.layer_specs[layer_idx]
        self.spec, self.block, self.layer_idx = spec, spec["block"], layer_idx
        self.invocation = None
        if self.block is not None:
            self.invocation = sum(s["block"] is not None for s in config.layer_specs[:layer_idx])
        invokes = self.block is not None and (spec["attention"] or spec["mlp"])
        hidden, rank, width = config.hidden_size, config.adapter_rank, config.attention_hidden_size
        self.linear = nn.Linear(hidden, hidden, bias=False) if invokes else None
        adapters = invokes and config.invocation_adapters
        self.q_adapter = self.k_adapter = self.v_adapter = None
        if adapters and config.use_shared_attention_adapter and spec["attention"]:
            # stock shapes; k/v sized to their projections, which differs from stock (which then fails) only under GQA
            kv_width = config.num_key_value_heads * config.attention_head_dim
            self.q_adapter = _adapter(width, rank, config.num_attention_heads * config.attention_head_dim)
            self.k_adapter, self.v_adapter = _adapter(width, rank, kv_width), _adapter(width, rank, kv_width)
        self.gate_up_adapter = None
        if adapters and spec["mlp"]:
            self.gate_up_adapter = _adapter(hidden, rank, 2 * config.block_specs[self.block]["mlp_width"])
        self.input_layernorm = Zamba2RMSNorm(hidden, eps=config.rms_norm_eps) if spec["mamba"] else None
        self.mamba = None
        if spec["mamba"]:
            self.mamba = (Zamba2MambaMixer if spec["ssm"] else Zamba2MixerWithoutSSM)(config, layer_idx=layer_idx)

    def forward(self, hidden, emb, block, attention_mask, causal_mask, position_embeddings, cache):
        t = None
        if self.linear is not None:
            t = self.linear(self._invoke(block, hidden, emb, causal_mask, position_embeddings, cache))
        if self.mamba is None:
            return hidden if t is None else hidden + t
        x = self.input_layernorm(hidden if t is None else hidden + t)
        return hidden + self.mamba(x, cache_params=cache, attention_mask=attention_mask)

    def _invoke(self, block, hidden, emb, causal_mask, position_embeddings, cache):
        """This layer's invocation of the shared block: attention over [hidden, emb], then the MLP."""
        x = hidden
        if self.spec["attention"]:
            adapters = (self.q_adapter, self.k_adapter, self.v_adapter)
            x = block.input_layernorm(torch.cat([hidden, emb], dim=-1))
            x = block.self_attn(x, adapters, self.layer_idx, causal_mask, position_embeddings, cache)
        if self.spec["mlp"]:
            x = block.feed_forward(block.pre_ff_layernorm(x), self.gate_up_adapter)
        return x


class ShedderZamba2PreTrainedModel(Zamba2PreTrainedModel):
    """Stock Zamba2 weight init (Mamba A/dt/D included), with our config and layer classes."""

    config_class = ShedderZamba2Config
    _no_split_modules = ["ShedderZamba2Layer"]
    _can_record_outputs = None


class ShedderZamba2Model(ShedderZamba2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.blocks = nn.ModuleList(ShedderZamba2SharedBlock(config, spec) for spec in config.block_specs)
        self.layers = nn.ModuleList(ShedderZamba2Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = Zamba2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.use_mem_rope:
            self.rotary_emb = Zamba2RotaryEmbedding(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        causal_mask, position_embeddings = self._attention_inputs(inputs_embeds, attention_mask, position_ids, past_key_values)
        hidden = inputs_embeds
        for layer in self.layers:
            block = None if layer.block is None else self.blocks[layer.block]
            hidden = layer(hidden, inputs_embeds, block, attention_mask, causal_mask, position_embeddings, past_key_values)
        return BaseModelOutputWithPast(
            last_hidden_state=self.final_layernorm(hidden), past_key_values=past_key_values if use_cache else None
        )

    def _attention_inputs(self, inputs_embeds, attention_mask, position_ids, cache):
        """Causal mask and RoPE as stock; none when no invocation attends (the cache then has no length)."""
        if set(self.config.layer_types) == {"mamba"}:
            return None, None
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids) if self.config.use_mem_rope else None
        return causal_mask, position_embeddings


class ShedderZamba2ForCausalLM(ShedderZamba2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = ShedderZamba2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No: generate would ask its cache for a length, which a layout without attention cannot tell;
        the model makes its own cache on the first forward instead (as stock Mamba models do)."""
        return False

    def create_masks_for_generate(self, attention_mask=None, **kwargs):
        """Called by generate only for a compileable cache, i.e. a layout without attention: the mixers take
        the 2D padding mask (stock would build per-layer-type 4D masks and fail on "mamba")."""
        return attention_mask

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, kept])
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
