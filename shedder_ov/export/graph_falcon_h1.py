"""The exported graph of a (possibly pruned) Falcon-H1 model: stock `FalconH1ForCausalLM` or our
`ShedderFalconH1ForCausalLM` (branches absent, SSM-less mixers, per-layer heads and widths).

Per layer, as stock Falcon-H1 (every muP multiplier honoured):
  n = input_layernorm(h)
  h = h + ssm_out · mamba(n) + attn_out · attention(attn_in · n)    (either branch may be gone)
  h = h + mlp(pre_ff_layernorm(h))                                    (the MLP may be gone)
Attention: k scaled by `key_multiplier` before RoPE, RoPE positions from the key state's length,
one SDPA over the grown KV cache (`graph_zamba2.cached_attention`: the form the CPU plugin fuses
into its KV-cache SDPA). Mamba branch: in_proj of `ssm_in_multiplier · n` times the mixer's
`mup_vector` (z, x, B, C, dt multipliers), the conv of `graph.causal_conv`, chunked SSD / one step
(`graph.mamba2_scan`), dt clamped to `time_step_limit`, then y · silu(z) (`mamba_rms_norm: false`)
or the grouped gated RMSNorm. An SSM-less branch: act(conv(x)) in place of the scan's output.
Each layer takes and returns its states in `states.falcon_h1_states` order: key, value
[b, kv_heads, past, head_dim], SSM state [b, heads, head_dim, n], conv window [b, channels, k-1].
The mask is causal only; padding is zeroed for the mixers, as in the other graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.falcon_h1.modeling_falcon_h1 import apply_rotary_pos_emb

from .graph import causal_conv, current_tokens_mask, mamba2_scan
from .graph_zamba2 import cached_attention


def scaled(x: torch.Tensor, multiplier) -> torch.Tensor:
    """x · multiplier (a number or a tensor); a multiplier of exactly 1 adds no op to the IR."""
    if isinstance(multiplier, torch.Tensor):
        return x if bool((multiplier == 1).all()) else x * multiplier
    return x if float(multiplier) == 1.0 else x * multiplier


def gated_output(mixer, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Stock Falcon-H1's gating of the scan (or conv) output y [b, l, inner] by z: y · silu(z), or
    `FalconH1RMSNormGated` (RMS over each of n_groups channel groups) before / after the gate.
    Written out so a one-token call keeps its [b, 1, inner] shape (the stock norm squeezes it)."""
    if not mixer.mamba_rms_norm:
        return y * F.silu(z)
    norm = mixer.norm
    if not norm.norm_before_gate:
        y = y * F.silu(z.float())
    batch, length = y.shape[0], y.shape[1]
    grouped = y.float().reshape(batch, length, norm.n_groups, -1)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    y = (norm.weight.reshape(norm.n_groups, -1) * grouped).reshape(batch, length, -1)
    if norm.norm_before_gate:
        y = y * F.silu(z.float())
    return y


def mixer_with_ssm(mixer, hidden, mask, conv_state, ssm_state):
    """The Falcon-H1 Mamba-2 branch (`FalconH1Mixer`, per-layer heads); returns out, conv, SSM state."""
    projected = scaled(mixer.in_proj(scaled(hidden * mask[..., None], mixer.ssm_in_multiplier)), mixer.mup_vector)
    y, z, conv_state, ssm_state = mamba2_scan(mixer, projected, mask, conv_state, ssm_state, mixer.time_step_limit)
    return mixer.out_proj(gated_output(mixer, y, z).to(hidden.dtype)), conv_state, ssm_state


def mixer_without_ssm(mixer, hidden, mask, conv_state):
    """A Mamba branch after scan removal (`FalconH1MixerWithoutSSM`): gate(act(conv(x)), z)."""
    projected = scaled(mixer.in_proj(scaled(hidden * mask[..., None], mixer.ssm_in_multiplier)), mixer.mup_vector)
    z, x = projected.chunk(2, dim=-1)
    x, conv_state = causal_conv(mixer.conv1d, x, conv_state)
    x = mixer.act(x) * mask[..., None]
    return mixer.out_proj(gated_output(mixer, x, z).to(hidden.dtype)), conv_state


def attention(attn, hidden, rope, key_state, value_state, attention_mask):
    """`FalconH1Attention` (per-layer heads, GQA) of the new tokens over the cache."""
    batch, length = hidden.shape[0], hidden.shape[1]
    q, k, v = (
        proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    q, k = apply_rotary_pos_emb(q, scaled(k, attn.key_multiplier), *rope)
    out, key_state, value_state = cached_attention(q, k, v, key_state, value_state, attn.num_key_value_groups, attn.scaling, attention_mask)
    return attn.o_proj(out), key_state, value_state


def forward_with_states(adapter, input_ids, attention_mask, states):
    """The whole model continuing `states` (a flat list in `states.falcon_h1_states` order);
    returns logits and the new states in the same order."""
    model = adapter.model.model
    hidden = scaled(model.embed_tokens(input_ids), model.embedding_multiplier)
    mask = current_tokens_mask(attention_mask, input_ids).to(hidden.dtype)
    pending, present, rope = list(states), [], None
    for layer in model.layers:
        if layer.input_layernorm is not None:  # the layer has an attention and/or a Mamba branch
            normed, mixed = layer.input_layernorm(hidden), None
            if layer.self_attn is not None:
                key_state, value_state = pending.pop(0), pending.pop(0)
                if rope is None:  # every attention layer has seen the same tokens
                    # arange(l) + past, not arange(past, past + l): a static-shape compile then
                    # knows the positions' length (the decode step's Ifs fold away)
                    positions = torch.arange(input_ids.shape[1], device=hidden.device)[None] + key_state.shape[2]
                    rope = model.rotary_emb(hidden, positions)
            if layer.mamba is not None:
                if hasattr(layer.mamba, "A_log"):
                    ssm_state, conv_state = pending.pop(0), pending.pop(0)
                    out, conv_state, ssm_state = mixer_with_ssm(layer.mamba, normed, mask, conv_state, ssm_state)
                    state_out = [ssm_state, conv_state]
                else:
                    out, conv_state = mixer_without_ssm(layer.mamba, normed, mask, pending.pop(0))
                    state_out = [conv_state]
                mixed = scaled(out, layer.ssm_out_multiplier)
            if layer.self_attn is not None:
                out, key_state, value_state = attention(
                    layer.self_attn, scaled(normed, layer.attention_in_multiplier), rope, key_state, value_state, attention_mask
                )
                out = scaled(out, layer.attn_out_multiplier)
                mixed = out if mixed is None else mixed + out
                present += [key_state, value_state]
            if layer.mamba is not None:
                present += state_out
            hidden = hidden + mixed
        if layer.feed_forward is not None:
            hidden = hidden + layer.feed_forward(layer.pre_ff_layernorm(hidden))
    logits = scaled(adapter.model.lm_head(model.final_layernorm(hidden)), model.lm_head_multiplier)
    return logits.float(), present
