"""The exported graph: one function per mixer kind, each taking and returning its layer's
recurrent state (conv window, SSM state) so the IR can keep them as OpenVINO variables.

Same math as the adapters' torch forward. A call with L > 1 tokens (prefill, from any state)
runs a chunked scan; L == 1 (decode) runs one recurrence step. The choice is a TorchScript
`if` on the traced length, which OpenVINO turns into an If op: decode does only decode work.
(No einsum in scripted code: OpenVINO cannot read its equation inside an If body.)

* Mamba-2: the chunked SSD of `ops.ssd` (TorchScript-compatible, dynamic length).
* Mamba-1: `chunked_scan`, 16-position chunks processed in parallel with unrolled steps and a
  doubling scan over chunks (a TorchScript `while`, an OpenVINO Loop of log2(chunks) turns).
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
def chunked_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 prefill in chunks of 16 positions, all chunks in parallel on [b, chunks, n, d]:
    pass 1 runs 16 unrolled recurrence steps from zero state to get each chunk's end state, a
    doubling scan over chunks carries the history, pass 2 reruns the steps from each chunk's
    entering state and reads y. No [l, d, n] tensor is built, only decays in (0, 1] are
    multiplied (long prompts stay exact), and d is innermost so OpenVINO's fused elementwise
    kernels run long vectors (n = 16 innermost made them ~10x slower)."""
    batch, channels, length = u.shape[0], u.shape[1], u.shape[2]
    pad = (-length) % 16
    chunks = (length + pad) // 16
    du = F.pad((delta * u).float(), (0, pad)).reshape(batch, channels, chunks, 16).permute(3, 0, 2, 1)[:, :, :, None]
    delta = F.pad(delta.float(), (0, pad)).reshape(batch, channels, chunks, 16).permute(3, 0, 2, 1)[:, :, :, None]
    B = F.pad(B.float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, -1).permute(2, 0, 1, 3)[..., None]
    C = F.pad(C.float(), (0, 0, 0, pad)).reshape(batch, chunks, 16, -1).permute(2, 0, 1, 3)[..., None]
    A = A.t()  # [n, d]; delta[t], du[t] [b, chunks, 1, d]; B[t], C[t] [b, chunks, n, 1]
    h = du[0] * B[0]
    for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15):  # a tuple literal: TorchScript unrolls it
        h = torch.exp(delta[t] * A) * h + du[t] * B[t]
    decay = torch.exp(delta.sum(0) * A)  # over each whole chunk
    state = state.float().transpose(1, 2)[:, None]  # [b, 1, n, d]
    h = torch.cat([h[:, :1] + decay[:, :1] * state, h[:, 1:]], dim=1)
    step = 1
    while step < chunks:  # h[c] accumulates the chunks (c - 2·step, c]
        h = h + decay * torch.cat([torch.zeros_like(h[:, :step]), h[:, : chunks - step]], 1)
        decay = decay * torch.cat([torch.ones_like(decay[:, :step]), decay[:, : chunks - step]], 1)
        step = step * 2
    final = h[:, -1].transpose(1, 2)
    h = torch.cat([state, h[:, :-1]], dim=1)  # the state entering each chunk
    h = torch.exp(delta[0] * A) * h + du[0] * B[0]
    y = (h * C[0]).sum(2, keepdim=True)
    for t in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15):  # (a list + stack fails OpenVINO's normalize step)
        h = torch.exp(delta[t] * A) * h + du[t] * B[t]
        y = torch.cat([y, (h * C[t]).sum(2, keepdim=True)], dim=2)
    y = y.permute(0, 3, 1, 2).reshape(batch, channels, chunks * 16)[:, :, :length]
    return y, final


@torch.jit.script
def selective_update(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 SSM over u, delta [b, d, l] from `state` [b, d, n]; B, C [b, l, n]; no D skip."""
    if u.shape[2] == 1:
        delta1 = delta.float()[:, :, 0, None]  # [b, d, 1]
        new_state = torch.exp(delta1 * A) * state + (delta1 * u.float()[:, :, 0, None]) * B.float()[:, 0, None, :]
        y = (new_state * C.float()[:, 0, None, :]).sum(-1)[:, :, None]
    else:
        y, new_state = chunked_scan(u, delta, A, B, C, state)
    return y, new_state


def causal_conv(conv1d, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv of x [b, d, l] continuing `conv_state` (the last kernel-1 inputs)."""
    window = torch.cat([conv_state.to(x.dtype), x], dim=-1)
    out = F.conv1d(window, conv1d.weight, conv1d.bias, groups=conv1d.groups)
    return out, window[:, :, -(conv1d.kernel_size[0] - 1) :]


def mamba_mixer(adapter, mixer, hidden, mask, conv_state, ssm_state):
    """Mamba-1 / FalconMamba mixer (the family's `ssm_inputs` hook normalises dt, B, C)."""
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x, conv_state = causal_conv(mixer.conv1d, x * mask[:, None], conv_state)
    x = mixer.act(x) * mask[:, None]
    time_step, B, C = torch.split(
        mixer.x_proj(x.transpose(1, 2)), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1
    )
    time_step, B, C = adapter.ssm_inputs(mixer, time_step, B, C)
    delta = F.softplus(mixer.dt_proj(time_step)).transpose(1, 2)
    y, ssm_state = selective_update(x, delta, -torch.exp(mixer.A_log.float()), B, C, ssm_state)
    y = (y + x.float() * mixer.D.float()[:, None]).to(hidden.dtype) * mixer.act(z)
    return mixer.out_proj(y.transpose(1, 2)), conv_state, ssm_state


def mamba_ssm_less_mixer(adapter, mixer, hidden, mask, conv_state):
    """Mamba-1 / FalconMamba mixer without SSM: act(conv(x)) * act(z)."""
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x, conv_state = causal_conv(mixer.conv1d, x * mask[:, None], conv_state)
    return mixer.out_proj((mixer.act(x) * mixer.act(z)).transpose(1, 2)), conv_state


def mamba2_mixer(adapter, mixer, hidden, mask, conv_state, ssm_state):
    """Mamba-2 mixer: conv over [x, B, C], chunked SSD / one step, gated RMSNorm."""
    batch = hidden.shape[0]
    groups, state = mixer.n_groups, mixer.ssm_state_size
    z, xBC, dt = adapter.split_projection(mixer, mixer.in_proj(hidden * mask[..., None]))
    xBC, conv_state = causal_conv(mixer.conv1d, xBC.transpose(1, 2), conv_state)
    xBC = mixer.act(xBC).transpose(1, 2) * mask[..., None]
    x, B, C = xBC.split([mixer.intermediate_size, groups * state, groups * state], dim=-1)
    dt = torch.clamp(F.softplus(dt + mixer.dt_bias), mixer.time_step_limit[0], mixer.time_step_limit[1])
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
    return mixer.out_proj(mixer.norm(y, z).to(hidden.dtype)), conv_state, ssm_state


def mamba2_ssm_less_mixer(adapter, mixer, hidden, mask, conv_state):
    """Mamba-2 mixer without SSM: gated_rmsnorm(act(conv(x)), z)."""
    z, x = mixer.in_proj(hidden * mask[..., None]).chunk(2, dim=-1)
    x, conv_state = causal_conv(mixer.conv1d, x.transpose(1, 2), conv_state)
    x = mixer.act(x).transpose(1, 2) * mask[..., None]
    return mixer.out_proj(mixer.norm(x, z).to(hidden.dtype)), conv_state


MIXERS = {"mamba": (mamba_mixer, mamba_ssm_less_mixer), "falcon_mamba": (mamba_mixer, mamba_ssm_less_mixer)}
MIXERS["mamba2"] = (mamba2_mixer, mamba2_ssm_less_mixer)


def forward_with_states(adapter, input_ids, attention_mask, states):
    """The whole model continuing `states`, a flat list in `states.state_names` order (per layer:
    its SSM state if it has one, then its conv window). Returns logits and the new states."""
    hidden = adapter.embed(input_ids)
    mask = attention_mask.to(hidden.dtype)
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
