"""The exported graph of a (possibly pruned) GraniteMoeHybrid (Granite-4.0-H) model: stock
`GraniteMoeHybridForCausalLM` or our `ShedderGraniteMoeHybridForCausalLM` (mixer-less layers,
SSM-less Mamba mixers, per-layer heads, widths and experts).

Per layer, as stock GraniteMoeHybrid (every multiplier honoured):
  h = h + residual_multiplier · mixer(input_layernorm(h))       (Mamba-2 or attention; may be gone)
  n = post_attention_layernorm(h)
  h = h + residual_multiplier · (shared_mlp(n) + experts(n))     (either may be gone)
Embeddings are scaled by `embedding_multiplier`, logits divided by `logits_scaling`. Mamba-2: the
mixers of `graph` (chunked SSD / one step, dt clamped to `time_step_limit` as stock's CPU path,
the mixer's own gated RMSNorm over all its channels). Attention: RoPE at the key state's length
where the config has it (Granite-4.0-H itself is NoPE), `attention_multiplier` as the SDPA
scale, one SDPA over the grown KV cache (`graph_zamba2.cached_attention`). Experts: stock's
top-k gating (softmax over the k best router logits), every expert run on every token and
weighted by its gate, zero where unrouted: the same sum as stock's sort-and-split, with static
shapes. Each layer takes and returns its states in `states.granitemoehybrid_states` order: key,
value [b, kv_heads, past, head_dim], or SSM state [b, heads, head_dim, n] and conv window [b,
channels, k-1]. Padding is zeroed for the mixers and masked for attention (`graph_zamba2.attention_bias`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import apply_rotary_pos_emb

from .graph import current_tokens_mask, mamba2_mixer, mamba2_ssm_less_mixer
from .graph_falcon_h1 import scaled
from .graph_zamba2 import cached_attention


def attention(attn, hidden, rope, key_state, value_state, attention_mask):
    """`GraniteMoeHybridAttention` (per-layer heads, GQA) of the new tokens over the cache."""
    batch, length = hidden.shape[0], hidden.shape[1]
    q, k, v = (
        proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    if rope is not None:
        q, k = apply_rotary_pos_emb(q, k, *rope)
    out, key_state, value_state = cached_attention(q, k, v, key_state, value_state, attn.num_key_value_groups, attn.scaling, attention_mask)
    return attn.o_proj(out), key_state, value_state


def experts(moe, hidden):
    """`GraniteMoeHybridMoE` on hidden [b, l, d]: the router's top-k softmax gates scattered over
    all experts, each expert's gated MLP on every token ([E, b·l, ·] batched matmuls)."""
    batch, length, width = hidden.shape
    x = hidden.reshape(-1, width)
    logits = moe.router.layer(x).float()
    top_logits, top_indices = logits.topk(moe.router.top_k, dim=1)
    gates = torch.zeros_like(logits).scatter(1, top_indices, torch.softmax(top_logits, dim=1)).to(hidden.dtype)
    # x expanded to [E, t, d]: broadcasting it in the MatMul miscompiles on the CPU plugin (OpenVINO 2026.4)
    x = x.expand(moe.input_linear.num_experts, -1, -1)
    gate, up = torch.matmul(x, moe.input_linear.weight.transpose(1, 2)).chunk(2, dim=-1)  # [E, t, h]
    out = torch.matmul(moe.activation(gate) * up, moe.output_linear.weight.transpose(1, 2))  # [E, t, d]
    return (out * gates.t()[:, :, None]).sum(0).reshape(batch, length, width)


def feed_forward(layer, hidden):
    """The layer's shared MLP plus its experts on the post-mixer norm; None when it has neither."""
    mlp, moe = layer.shared_mlp, getattr(layer, "block_sparse_moe", None)
    if mlp is None and moe is None:
        return None
    normed = layer.post_attention_layernorm(hidden)
    out = None if moe is None else experts(moe, normed)
    if mlp is not None:
        out = mlp(normed) if out is None else out + mlp(normed)
    return out


def forward_with_states(adapter, input_ids, attention_mask, states):
    """The whole model continuing `states` (a flat list in `states.granitemoehybrid_states`
    order); returns logits and the new states in the same order."""
    model = adapter.model.model
    hidden = scaled(model.embed_tokens(input_ids), model.embedding_multiplier)
    mask = current_tokens_mask(attention_mask, input_ids).to(hidden.dtype)
    pending, present, rope = list(states), [], None
    for layer in adapter.layers:
        mixed = None
        if layer.self_attn is not None:
            key_state, value_state = pending.pop(0), pending.pop(0)
            if rope is None and model.rotary_emb is not None:  # every attention layer has seen the same tokens
                # arange(l) + past: a static-shape compile knows the positions' length (see graph_falcon_h1)
                positions = torch.arange(input_ids.shape[1], device=hidden.device)[None] + key_state.shape[2]
                rope = model.rotary_emb(hidden, positions)
            mixed, key_state, value_state = attention(
                layer.self_attn, layer.input_layernorm(hidden), rope, key_state, value_state, attention_mask
            )
            present += [key_state, value_state]
        elif layer.mamba is not None:
            normed = layer.input_layernorm(hidden)
            if hasattr(layer.mamba, "A_log"):
                ssm_state, conv_state = pending.pop(0), pending.pop(0)
                dt_range = layer.mamba.time_step_limit
                mixed, conv_state, ssm_state = mamba2_mixer(layer.mamba, normed, mask, conv_state, ssm_state, dt_range)
                present += [ssm_state, conv_state]
            else:
                mixed, conv_state = mamba2_ssm_less_mixer(layer.mamba, normed, mask, pending.pop(0))
                present.append(conv_state)
        if mixed is not None:
            hidden = hidden + scaled(mixed, layer.residual_multiplier)
        out = feed_forward(layer, hidden)
        if out is not None:
            hidden = hidden + scaled(out, layer.residual_multiplier)
    logits, scaling = adapter.model.lm_head(model.norm(hidden)), adapter.model.config.logits_scaling
    return (logits if float(scaling) == 1.0 else logits / scaling).float(), present
