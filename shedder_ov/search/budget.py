"""How the exact scorer spends the device's memory: which layers' streams the prefix cache
keeps, how many candidates one sweep stacks, how many windows one forward holds.

Sized from what is free when the search starts (torch.cuda.mem_get_info plus what PyTorch holds
unused on a GPU, available RAM on CPU), shared equally by the ranks on that device, less a safety
margin, and from what one window costs: on a GPU measured (the peak of one forward of a couple of
windows, layer by layer and for the head: kernels, fallbacks and families differ), on CPU estimated; so that the defaults suit a 24 GiB laptop and a 141 GiB H200 alike. The cache takes up to
half of what is left after one candidate's working set (a stride of 2-4 costs a
candidate only 0.5-1.5 extra layers, no cache costs half the model); stacking candidates takes
the rest, up to 64k tokens a forward (enough to fill an H200; on CPU one candidate runs at a
time: its matmuls already fill the cores)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from ..adapters import FamilyAdapter

_LAYER_WORKSPACE = 16  # CPU estimate: activations of one layer forward per stream element (in_proj, conv, scan states)
_HEAD_BYTES = 12  # CPU estimate: per logit beyond the model dtype (the float logits, their shifted copy, log-softmax)
MEASURED_MARGIN = 1.25  # on a GPU's measured working set: allocator rounding, a stack's concatenation
GPU_MARGIN, GPU_RESERVE = 0.10, 1 << 30  # allocator fragmentation, cuBLAS / Triton workspaces
CPU_SHARE = 0.5  # of available RAM: the host runs other work too
CACHE_SHARE = 0.5
PROBE_ROWS = 2
SATURATING_ROWS = 1 << 16  # tokens one stacked forward needs to fill a GPU; more stacking only costs memory
GiB = float(1 << 30)


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    free_bytes: int  # this rank's share of the free memory
    sharing: int  # ranks on this device
    stride: int | None  # cache the stream entering every stride-th layer; None: no cache
    group_size: int  # candidates one sweep stacks
    batch_size: int  # windows one forward holds
    windows: tuple[int, int]
    stream_bytes: int  # one layer's stream over all windows
    candidate_bytes: int  # one stacked candidate's working set at batch_size
    cached_streams: int

    def describe(self) -> str:
        free = f"{size(self.free_bytes)} free on {self.device}" + (f" for each of {self.sharing} ranks" if self.sharing > 1 else "")
        if self.stride is None:
            cache = f"no prefix cache (one stream is {size(self.stream_bytes)}): every candidate from the embeddings"
        else:
            every = "every layer" if self.stride == 1 else f"every {self.stride} layers"
            cache = f"prefix cache at {every} ({self.cached_streams} streams of {size(self.stream_bytes)})"
        stack = f"{self.group_size} candidates per sweep" if self.group_size > 1 else "1 candidate per sweep"
        return f"search memory: {free} → {cache}, {stack} ({size(self.candidate_bytes)} each), batch {self.batch_size} × {self.windows[1]}"


def size(count: int) -> str:
    return f"{count / GiB:.1f} GiB" if count >= GiB else f"{count / (1 << 20):.1f} MiB"


def free_bytes(device: torch.device) -> int:
    """Memory this process can still take on `device`, before the safety margin."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


def usable_bytes(device: torch.device, free: int) -> int:
    if device.type == "cuda":
        return max(0, int(free * (1 - GPU_MARGIN)) - GPU_RESERVE)
    return int(free * CPU_SHARE)


def cached_streams(num_layers: int, stride: int) -> int:
    """Streams `rebase` keeps (every stride-th layer and the last layer's output) plus the one
    it is computing."""
    return math.ceil(num_layers / stride) + 2


@torch.no_grad()
def stream_element_size(adapter: FamilyAdapter, ids: torch.Tensor) -> int:
    """Bytes per element of the stream between layers: not always the weights' dtype (Mamba-2
    keeps its residual in f32 by default, twice a bf16 model's)."""
    return adapter.layer_forward(0, adapter.embed(ids)).element_size()


@torch.no_grad()
def measured_rows(adapter: FamilyAdapter, ids: torch.Tensor, loss: Callable) -> tuple[float, float]:
    """CUDA: peak bytes per window, beyond its input, of the widest layer forward and of the head
    with `loss`, measured on `ids` (a couple of windows; also warms the kernels up)."""
    device = ids.device
    hidden, widest = adapter.embed(ids), 0
    for layer in range(adapter.num_layers + 1):
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if layer < adapter.num_layers:
            hidden = adapter.layer_forward(layer, hidden)
            widest = max(widest, torch.cuda.max_memory_allocated(device) - before)
        else:
            loss(adapter.head(hidden), ids)
            head = torch.cuda.max_memory_allocated(device) - before
    return widest / len(ids), head / len(ids)


def plan_memory(
    adapter: FamilyAdapter,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    reuse_prefix: bool = True,
    sharing: int = 1,
    cache_budget_bytes: int | None = None,
    group_budget_bytes: int | None = None,
    loss: Callable | None = None,
) -> MemoryPlan:
    """The plan for the calibration `windows` [count, length]; on a GPU `loss(logits, ids)` is what
    the head's working set is measured with. Explicit budgets (tests, benchmarks) replace the free
    memory for the cache or the stacking."""
    device = torch.device(device)
    count, length = windows.shape
    element = stream_element_size(adapter, windows[:1].to(device))
    hidden, layers = adapter.stream_width, adapter.num_layers
    row = length * hidden * element  # one window's stream
    stream = count * row
    if device.type == "cuda" and loss is not None:
        layer_row, head_row = (MEASURED_MARGIN * b for b in measured_rows(adapter, windows[:PROBE_ROWS].to(device), loss))
    else:
        layer_row, head_row = row * _LAYER_WORKSPACE, length * adapter.model.config.vocab_size * (element + _HEAD_BYTES)

    def candidate(batch: int) -> int:
        return int(batch * (row + layer_row))  # the stacked stream and one layer forward over it

    free = free_bytes(device) // sharing
    usable = usable_bytes(device, free)
    batch = max(1, min(batch_size, count))
    while batch > 1 and candidate(batch) + batch * head_row > usable / 4:
        batch //= 2
    head = int(batch * head_row)
    stride = None
    if reuse_prefix and cache_budget_bytes is not None:
        stride = max(1, math.ceil(layers * stream / cache_budget_bytes))
    elif reuse_prefix:
        room = CACHE_SHARE * (usable - candidate(batch) - head)
        stride = next((s for s in range(1, layers + 1) if cached_streams(layers, s) * stream <= room), None)
    cache = cached_streams(layers, stride) * stream if stride else 0
    group = 1
    if stride is not None and group_budget_bytes is not None:
        group = max(1, group_budget_bytes // candidate(batch))
    elif stride is not None and device.type == "cuda":
        saturating = max(1, SATURATING_ROWS // (batch * length))
        group = max(1, min(saturating, (usable - cache - head) // candidate(batch)))
    return MemoryPlan(
        device=str(device), free_bytes=free, sharing=sharing, stride=stride, group_size=int(group), batch_size=batch,
        windows=(count, length), stream_bytes=stream, candidate_bytes=candidate(batch),
        cached_streams=cached_streams(layers, stride) if stride else 0,
    )  # fmt: skip
