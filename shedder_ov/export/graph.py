"""The exported graph: one function per mixer kind, each taking and returning its layer's
recurrent state (conv window, SSM state) so the IR can keep them as OpenVINO variables.

Same math as the adapters' torch forward. A call with L > 1 tokens (prefill, from any state)
runs a chunked scan; L == 1 (decode) runs one recurrence step. The choice is a TorchScript
`if` on the traced length, which OpenVINO turns into an If op: decode does only decode work.
(No einsum in scripted code: OpenVINO cannot read its equation inside an If body.)

* Mamba-2: the chunked SSD of `ops.ssd` (TorchScript-compatible, dynamic length).
* Mamba-1: a doubling (Hillis-Steele) scan in log2(L) steps. Like `ops.selective_scan` it only
  multiplies decays in (0, 1], so it stays exact on long prompts, and it needs no Python loop
  over positions (a TorchScript `while` becomes an OpenVINO Loop).
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
def selective_update(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 SSM over u, delta [b, d, l] from `state` [b, d, n]; B, C [b, l, n]; no D skip."""
    decay = torch.exp(delta.float()[..., None] * A[:, None, :])  # [b, d, l, n]
    drive = (delta * u).float()[..., None] * B.float()[:, None, :, :]
    length = u.shape[2]
    if length == 1:
        states = decay * state[:, :, None] + drive
    else:
        states = torch.cat([drive[:, :, :1] + decay[:, :, :1] * state[:, :, None], drive[:, :, 1:]], dim=2)
        step = 1
        while step < length:  # states[t] accumulates the inputs of (t - 2·step, t]
            states = states + decay * torch.cat([torch.zeros_like(states[:, :, :step]), states[:, :, : length - step]], 2)
            decay = decay * torch.cat([torch.ones_like(decay[:, :, :step]), decay[:, :, : length - step]], 2)
            step = step * 2
    y = (states * C.float()[:, None]).sum(-1)
    return y, states[:, :, -1]


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
