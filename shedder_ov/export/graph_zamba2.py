"""The exported graph of a (possibly pruned) Zamba2 model (`ShedderZamba2ForCausalLM`).

Per layer, as `modeling_shedder_zamba2` defines it: the shared block invocation (attention over
[hidden, embeddings] with a KV cache, gated MLP, the layer's `linear`), then the Mamba-2 mixer
of `graph` (chunked SSD on prompts, one step on decode). Each layer takes and returns its
states in `states.zamba2_states` order: key, value [b, kv_heads, past, head_dim] (the present
ones are the past with the new tokens' RoPE'd k/v appended), SSM state, conv window. The past
length, hence the positions, is read off a key state: every attention invocation has seen the
same tokens. Attention is `F.scaled_dot_product_attention` on the concatenated cache: the CPU
plugin fuses ReadValue → Concat → SDPA → Assign into its own KV-cache SDPA (no per-token copy of
the cache; zamba2-tiny decodes 1.6-1.8x faster than with matmul/softmax attention). Padding is
zeroed for the mixers, as in the Mamba graphs, and masked for attention where the caller's mask
covers the cached tokens too (`attention_bias`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.zamba2.modeling_zamba2 import apply_rotary_pos_emb, repeat_kv

from .graph import current_tokens_mask, mamba2_mixer, mamba2_ssm_less_mixer


@torch.jit.script
def attention_bias(q: torch.Tensor, keys: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Additive mask [b, 1, l, past + l]: -inf where a key lies after its query (the last l keys
    are the l queries' own tokens) or is padding, a 0 in the caller's mask — which may cover every
    token so far (then left-padded batches attend exactly as one by one) or only the new ones
    (then the earlier keys count as real). A query always sees its own key: padded queries get
    finite values, which the mixers' mask zeroes, never NaN."""
    length, total = q.shape[2], keys.shape[2]
    query_position = torch.arange(total - length, total, device=q.device)[:, None]
    key_position = torch.arange(total, device=q.device)[None, :]
    earlier = torch.ones_like(attention_mask[:, :1]).expand(-1, total)
    real = torch.cat([earlier, attention_mask], dim=1)[:, -total:] > 0  # [b, total]
    allowed = ((key_position <= query_position)[None] & real[:, None, :]) | (key_position == query_position)[None]
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, -torch.inf)
    return bias[:, None]


def attention(attn, layer, hidden, rope, key_state, value_state, attention_mask):
    """The shared block's self-attention with the invocation's q/k/v adapters, of the new tokens
    over the cached and their own keys; returns the output and the grown key / value states."""
    batch, length = hidden.shape[0], hidden.shape[1]
    q, k, v = attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)
    if layer.q_adapter is not None:
        q, k, v = q + layer.q_adapter(hidden), k + layer.k_adapter(hidden), v + layer.v_adapter(hidden)
    q, k, v = (t.view(batch, length, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))
    if rope is not None:
        q, k = apply_rotary_pos_emb(q, k, *rope)
    groups = attn.num_heads // attn.num_key_value_heads
    out, key_state, value_state = cached_attention(q, k, v, key_state, value_state, groups, attn.scaling, attention_mask)
    return attn.o_proj(out), key_state, value_state


def cached_attention(q, k, v, key_state, value_state, groups: int, scale: float, attention_mask):
    """Causal SDPA of the new tokens' q [b, heads, l, d] over the cached keys and their own k, v
    [b, kv_heads, l, d] (RoPE'd), padding masked by the caller's `attention_mask`; returns the
    output [b, l, heads * d] and the grown key / value states. (GQA repeats by the stock
    `repeat_kv`, the mask reads the length off the unrepeated cache: the forms the CPU plugin's
    KV-cache fusion recognises.) Shared by the hybrids' graphs.
    The length is read off v: RoPE'd q/k may carry a dynamic length from the positions' Range,
    which would keep the decode step's If alive downstream."""
    batch, length = v.shape[0], v.shape[2]
    key_state, value_state = torch.cat([key_state, k], dim=2), torch.cat([value_state, v], dim=2)
    keys, values = repeat_kv(key_state, groups), repeat_kv(value_state, groups)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attention_bias(q, key_state, attention_mask), scale=scale)
    return out.transpose(1, 2).reshape(batch, length, -1), key_state, value_state


def forward_with_states(adapter, input_ids, attention_mask, states):
    """The whole model continuing `states` (a flat list in `states.zamba2_states` order);
    returns logits and the new states in the same order."""
    model = adapter.model.model
    emb = model.embed_tokens(input_ids)
    hidden, mask = emb, current_tokens_mask(attention_mask, input_ids).to(emb.dtype)
    pending, present, rope = list(states), [], None
    for layer in model.layers:
        spec, transformed = layer.spec, None
        if layer.linear is not None:  # the invocation runs attention and/or the MLP
            block, x = model.blocks[layer.block], hidden
            if spec["attention"]:
                key_state, value_state = pending.pop(0), pending.pop(0)
                if rope is None and getattr(model, "rotary_emb", None) is not None:
                    past = key_state.shape[2]
                    positions = torch.arange(past, past + input_ids.shape[1], device=emb.device)[None]
                    rope = model.rotary_emb(emb, positions)
                normed = block.input_layernorm(torch.cat([hidden, emb], dim=-1))
                x, key_state, value_state = attention(block.self_attn, layer, normed, rope, key_state, value_state, attention_mask)
                present += [key_state, value_state]
            if spec["mlp"]:
                x = block.feed_forward(block.pre_ff_layernorm(x), layer.gate_up_adapter)
            transformed = layer.linear(x)
        if layer.mamba is not None:
            normed = layer.input_layernorm(hidden if transformed is None else hidden + transformed)
            if spec["ssm"]:
                ssm_state, conv_state = pending.pop(0), pending.pop(0)
                dt_range = (layer.mamba.time_step_min, float("inf"))  # Zamba2's CPU path: clamp(dt, min)
                mixed, conv_state, ssm_state = mamba2_mixer(layer.mamba, normed, mask, conv_state, ssm_state, dt_range)
                present += [ssm_state, conv_state]
            else:
                mixed, conv_state = mamba2_ssm_less_mixer(layer.mamba, normed, mask, pending.pop(0))
                present.append(conv_state)
            hidden = hidden + mixed
        elif transformed is not None:
            hidden = hidden + transformed
    logits = adapter.model.lm_head(model.final_layernorm(hidden)).float()
    return logits, present
