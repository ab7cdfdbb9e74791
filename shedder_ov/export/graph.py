"""The exported graph: one function per mixer kind, each taking and returning its layer's
recurrent state (conv window, SSM state) so the IR can keep them as OpenVINO variables.

Same math as the adapters' torch forward. A call with L > 1 tokens (prefill, from any state)
runs a chunked scan; L == 1 (decode) runs one recurrence step. The choice is a TorchScript
`if` on the traced length, which OpenVINO turns into an If op; compiled for a static length
(`shedder_ov.runtime`), OpenVINO folds it away, so decode does only decode work. Activations
stay channels-last [b, l, c] as the projections want them (the depthwise conv is k shifted
multiply-adds). (No einsum in scripted code: OpenVINO cannot read its equation inside an If.)

* Mamba-2: the chunked SSD of `ops.ssd` (TorchScript-compatible, dynamic length).
* Mamba-1: `chunked_scan`, 16-position chunks processed in parallel with unrolled steps, the
  history carried across chunks by `carry_chunks` (unrolled up to 32 chunks, else a doubling scan).
  Like `ops.selective_scan` it only multiplies decays in (0, 1], so it stays exact on long
  prompts.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ..ops.ssd import ssd_scan


@torch.jit.script
def ssd_update(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSM over x [b, l, h, p] from `state` [b, h, p, n]; returns y [b, l, h, p], new state."""
    if x.shape[1] == 1:
        repeat = x.shape[2] // B.shape[2]
        B1 = B[:, 0].float().repeat_interleave(repeat, dim=1)  # [b, h, n]
        C1 = C[:, 0].float().repeat_interleave(repeat, dim=1)
        dt1 = dt[:, 0].float()  # [b, h]
        drive = (x[:, 0].float() * dt1[:, :, None])[:, :, :, None] * B1[:, :, None, :]
        new_state = state * torch.exp(dt1 * A)[:, :, None, None] + drive
        y = (new_state @ C1[:, :, :, None]).squeeze(-1)[:, None]
    else:
        y, new_state = ssd_scan(x, dt, A, B, C, chunk_size, state)
    return y, new_state


@torch.jit.script
def doubling_turn(h: torch.Tensor, decay: torch.Tensor, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One turn of the doubling scan over chunks (dim 1): afterwards h[c] accumulates the chunks
    (c - 2·step, c] and decay[c] is their total decay."""
    size = h.shape[1]
    h = h + decay * F.pad(h, (0, 0, 0, 0, step, 0))[:, :size]
    decay = decay * F.pad(decay, (0, 0, 0, 0, step, 0), value=1.0)[:, :size]
    return h, decay


@torch.jit.script
def carry_chunks(ends: torch.Tensor, decay: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The state entering each chunk [b, chunks, n, d] and the final one, from each chunk's end
    state from zero (`ends`), its total decay and the state before the first chunk [b, 1, n, d].

    A doubling scan: log2(chunks) turns over whole tensors. Up to 32 chunks (a 512-token piece)
    its five turns are unrolled (in a static-shape compile OpenVINO keeps only this branch);
    longer prompts take a TorchScript `while` (an OpenVINO Loop)."""
    chunks = ends.shape[1]
    h = torch.cat([ends[:, :1] + decay[:, :1] * state, ends[:, 1:]], dim=1)
    if chunks <= 32:
        for step in (1, 2, 4, 8, 16):  # turns with step >= chunks change nothing
            h, decay = doubling_turn(h, decay, step)
    else:
        step = 1
        while step < chunks:
            h, decay = doubling_turn(h, decay, step)
            step = step * 2
    return torch.cat([state, h[:, :-1]], dim=1), h[:, -1]


@torch.jit.script
def chunked_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 prefill over u, delta [b, l, d] in chunks of 16 positions, all chunks in parallel
    on [b, chunks, n, d]: pass 1 runs 16 unrolled recurrence steps from zero state to get each
    chunk's end state, `carry_chunks` carries the history across chunks, pass 2 reruns the steps
    from each chunk's entering state and reads y. No [l, d, n] tensor is built, only decays in
    (0, 1] are multiplied (long prompts stay exact), and d is innermost, as in the projections
    around it: OpenVINO's fused elementwise kernels run long vectors and nothing is transposed
    but the step axis."""
    batch, length, channels = u.shape[0], u.shape[1], u.shape[2]
    pad = (-length) % 16
    chunks = (length + pad) // 16
    du = F.pad((delta * u).float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, 1, channels).permute(2, 0, 1, 3, 4)
    delta = F.pad(delta.float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, 1, channels).permute(2, 0, 1, 3, 4)
    B = F.pad(B.float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, -1, 1).permute(2, 0, 1, 3, 4)
    C = F.pad(C.float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, -1, 1).permute(2, 0, 1, 3, 4)
    A = A.t()  # [n, d]; delta[t], du[t] [b, chunks, 1, d]; B[t], C[t] [b, chunks, n, 1]
    h = du[0] * B[0]
    for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15):  # a tuple literal: TorchScript unrolls it
        h = torch.exp(delta[t] * A) * h + du[t] * B[t]
    h, final = carry_chunks(h, torch.exp(delta.sum(0) * A), state.float().transpose(1, 2)[:, None])
    h = torch.exp(delta[0] * A) * h + du[0] * B[0]
    y = (h * C[0]).sum(2, keepdim=True)
    for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15):  # (a list + cat fails OpenVINO's normalize step)
        h = torch.exp(delta[t] * A) * h + du[t] * B[t]
        y = torch.cat([y, (h * C[t]).sum(2, keepdim=True)], dim=2)
    y = y.reshape(batch, chunks * 16, channels)[:, :length]
    return y, final.transpose(1, 2)


@torch.jit.script
def selective_update(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 SSM over u, delta [b, l, d] from `state` [b, d, n]; B, C [b, l, n]; no D skip."""
    if u.shape[1] == 1:
        delta1 = delta.float()[:, 0, :, None]  # [b, d, 1]
        new_state = torch.exp(delta1 * A) * state + (delta1 * u.float()[:, 0, :, None]) * B.float()[:, 0, None, :]
        y = (new_state * C.float()[:, 0, None, :]).sum(-1)[:, None]
    else:
        y, new_state = chunked_scan(u, delta, A, B, C, state)
    return y, new_state


def current_tokens_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The mask of this call's tokens: the last input_ids.shape[1] columns of the caller's mask.
    Callers differ in what they pass on a decode step: transformers' generate, openvino.genai and
    optimum-intel the mask of every token so far, our runtime that of the new tokens only; both
    must give the same output (a [b, past + l] mask broadcast against [b, l] activations would
    change the model)."""
    return attention_mask[:, attention_mask.shape[1] - input_ids.shape[1] :]


def causal_conv(conv1d, x: torch.Tensor, conv_state: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv of channels-last x [b, l, c] continuing `conv_state` [b, c, k-1]
    (the last k-1 inputs), as k shifted multiply-adds: no transposes of [l, c] activations.
    `mask` [b, l] zeroes padded inputs. It multiplies the concatenated window, not x: with x
    masked before the concat, OpenVINO 2026.4.1's dynamic-shape CPU compile of the Mamba-1 graph
    returned wrong prefill logits at some first-call lengths (test_dynamic_compile_on_growing_prompts)."""
    kernel, length = conv1d.kernel_size[0], x.shape[1]
    window = torch.cat([conv_state.to(x.dtype).transpose(1, 2), x], dim=1)  # [b, k-1+l, c]
    if mask is not None:
        window = window * F.pad(mask, (kernel - 1, 0), value=1.0)[..., None]
    weight = conv1d.weight[:, 0].t()  # [k, c]
    out = window[:, :length] * weight[0]
    for j in range(1, kernel):
        out = out + window[:, j : j + length] * weight[j]
    if conv1d.bias is not None:
        out = out + conv1d.bias
    return out, window[:, -(kernel - 1) :].transpose(1, 2)


def mamba_mixer(adapter, mixer, hidden, mask, conv_state, ssm_state):
    """Mamba-1 / FalconMamba mixer (the family's `ssm_inputs` hook normalises dt, B, C)."""
    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
    x, conv_state = causal_conv(mixer.conv1d, x, conv_state, mask)
    x = mixer.act(x) * mask[..., None]
    time_step, B, C = torch.split(
        mixer.x_proj(x), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1
    )
    time_step, B, C = adapter.ssm_inputs(mixer, time_step, B, C)
    delta = F.softplus(mixer.dt_proj(time_step))
    y, ssm_state = selective_update(x, delta, -torch.exp(mixer.A_log.float()), B, C, ssm_state)
    y = (y + x.float() * mixer.D.float()).to(hidden.dtype) * mixer.act(z)
    return mixer.out_proj(y), conv_state, ssm_state


def mamba_ssm_less_mixer(adapter, mixer, hidden, mask, conv_state):
    """Mamba-1 / FalconMamba mixer without SSM: act(conv(x)) * act(z)."""
    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
    x, conv_state = causal_conv(mixer.conv1d, x, conv_state, mask)
    return mixer.out_proj(mixer.act(x) * mixer.act(z)), conv_state


def mamba2_scan(mixer, projected, mask, conv_state, ssm_state, dt_range):
    """A Mamba-2 mixer's conv over [x, B, C] and its scan, on in_proj's output, continuing the
    conv window and SSM state; dt is clamped to `dt_range`, where the families differ. Returns y
    (D skip included, [b, l, inner]), z and the new states; the gating is the family's."""
    batch = projected.shape[0]
    groups, state = mixer.n_groups, mixer.ssm_state_size
    z, xBC, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
    xBC, conv_state = causal_conv(mixer.conv1d, xBC, conv_state)
    xBC = mixer.act(xBC) * mask[..., None]
    x, B, C = xBC.split([mixer.intermediate_size, groups * state, groups * state], dim=-1)
    dt = torch.clamp(F.softplus(dt + mixer.dt_bias), dt_range[0], dt_range[1])
    x = x.reshape(batch, -1, mixer.num_heads, mixer.head_dim)
    y, ssm_state = ssd_update(
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        B.reshape(batch, -1, groups, state),
        C.reshape(batch, -1, groups, state),
        mixer.chunk_size,
        ssm_state,
    )
    y = (y + x.float() * mixer.D.float()[:, None]).reshape(batch, -1, mixer.intermediate_size)
    return y, z, conv_state, ssm_state


def mamba2_mixer(mixer, hidden, mask, conv_state, ssm_state, dt_range):
    """The Mamba-2 mixer (of Mamba-2 and Zamba2 layers): `mamba2_scan`, the mixer's own gated RMSNorm."""
    y, z, conv_state, ssm_state = mamba2_scan(mixer, mixer.in_proj(hidden * mask[..., None]), mask, conv_state, ssm_state, dt_range)
    return mixer.out_proj(mixer.norm(y, z).to(hidden.dtype)), conv_state, ssm_state


def mamba2_ssm_less_mixer(mixer, hidden, mask, conv_state):
    """The Mamba-2 mixer without SSM (Mamba-2 and Zamba2): gated_rmsnorm(act(conv(x)), z)."""
    z, x = mixer.in_proj(hidden * mask[..., None]).chunk(2, dim=-1)
    x, conv_state = causal_conv(mixer.conv1d, x, conv_state)
    x = mixer.act(x) * mask[..., None]
    return mixer.out_proj(mixer.norm(x, z).to(hidden.dtype)), conv_state


MIXERS = {
    "mamba": (mamba_mixer, mamba_ssm_less_mixer),
    "falcon_mamba": (mamba_mixer, mamba_ssm_less_mixer),
    "mamba2": (  # Mamba-2 clamps dt to the config's time_step_limit
        lambda adapter, mixer, *io: mamba2_mixer(mixer, *io, dt_range=mixer.time_step_limit),
        lambda adapter, mixer, *io: mamba2_ssm_less_mixer(mixer, *io),
    ),
}


def forward_with_states(adapter, input_ids, attention_mask, states):
    """The whole model continuing `states`, a flat list in `states.state_names` order (per layer:
    its SSM state if it has one, then its conv window). Returns logits and the new states."""
    hidden = adapter.embed(input_ids)
    mask = current_tokens_mask(attention_mask, input_ids).to(hidden.dtype)
    with_ssm, without_ssm = MIXERS[adapter.family]
    pending, present = list(states), []
    for index, block in enumerate(adapter.layers):
        normed = block.norm(hidden.to(dtype=block.norm.weight.dtype))
        residual = hidden.to(torch.float32) if block.residual_in_fp32 else hidden
        if adapter.has_ssm(index):
            ssm_state, conv_state = pending.pop(0), pending.pop(0)
            mixed, conv_state, ssm_state = with_ssm(adapter, block.mixer, normed, mask, conv_state, ssm_state)
            present += [ssm_state, conv_state]
        else:
            mixed, conv_state = without_ssm(adapter, block.mixer, normed, mask, pending.pop(0))
            present.append(conv_state)
        hidden = residual + mixed
    return adapter.head(hidden), present
