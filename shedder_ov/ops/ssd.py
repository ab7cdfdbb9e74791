"""Mamba-2 state-space duality (SSD) scan in chunked matmul form.

Within a chunk the scan is a masked attention-like product (C Bᵀ ∘ decay) x; across chunks a
short recurrence over the chunk states carries the history. Same math as the naive quadratic
form transformers uses on CPU, a fraction of the memory and time. TorchScript-compatible, so
the OpenVINO export scripts it and keeps the sequence length dynamic."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum(x[..., j+1 : i+1]) for j <= i, -inf above the diagonal.

    Built from masked cumulative sums (no subtraction of large cumsums), so it stays exact."""
    length = x.size(-1)
    x = x.unsqueeze(-1) + torch.zeros_like(x).unsqueeze(-2)  # x[..., i] along j
    strictly_lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~strictly_lower, 0)
    out = torch.cumsum(x, dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~lower, -torch.inf)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """y_t = C_t · h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_tᵀ.

    x [b, l, h, p], dt [b, l, h] (already softplus'ed), A [h] (negative), B, C [b, l, g, n].
    Returns y [b, l, h, p] (no D skip) and the final state [b, h, p, n]. Computes in fp32."""
    batch, length, heads = x.shape[0], x.shape[1], x.shape[2]
    head_dim, groups, state_size = x.shape[3], B.shape[2], B.shape[3]
    x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
    B = B.repeat_interleave(heads // groups, dim=2)
    C = C.repeat_interleave(heads // groups, dim=2)
    pad = (-length) % chunk_size
    if pad > 0:
        x, B, C = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
    chunks = x.shape[1] // chunk_size

    x_dt = (x * dt[..., None]).reshape(batch, chunks, chunk_size, heads, head_dim)
    B = B.reshape(batch, chunks, chunk_size, heads, state_size)
    C = C.reshape(batch, chunks, chunk_size, heads, state_size)
    a = (dt * A).reshape(batch, chunks, chunk_size, heads).permute(0, 3, 1, 2)  # [b, h, c, l]
    a_cumsum = torch.cumsum(a, dim=-1)

    # 1. outputs from inputs of the same chunk
    decay = torch.exp(segsum(a))  # [b, h, c, l, s]
    scores = (C.permute(0, 3, 1, 2, 4) @ B.permute(0, 3, 1, 4, 2)) * decay
    y = (scores @ x_dt.permute(0, 3, 1, 2, 4)).permute(0, 2, 3, 1, 4)  # [b, c, l, h, p]

    # 2. state at the end of each chunk, from that chunk's inputs
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # [b, h, c, l]
    weighted = x_dt * decay_to_end.permute(0, 2, 3, 1)[..., None]
    states = weighted.permute(0, 1, 3, 4, 2) @ B.permute(0, 1, 3, 2, 4)  # [b, c, h, p, n]

    # 3. carry states across chunks
    if initial_state is None:
        initial_state = torch.zeros_like(states[:, :1])
    else:
        initial_state = initial_state.float()[:, None]
    states = torch.cat([initial_state, states], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(a_cumsum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    flat = states.permute(0, 2, 1, 3, 4).reshape(batch, heads, chunks + 1, head_dim * state_size)
    states = (chunk_decay @ flat).reshape(batch, heads, chunks + 1, head_dim, state_size).permute(0, 2, 1, 3, 4)
    states, final_state = states[:, :-1], states[:, -1]

    # 4. outputs from the state entering each chunk
    from_state = (C.permute(0, 1, 3, 2, 4) @ states.transpose(-1, -2)) * torch.exp(a_cumsum).permute(0, 2, 1, 3)[..., None]
    y = y + from_state.permute(0, 1, 3, 2, 4)
    y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
    return y, final_state
