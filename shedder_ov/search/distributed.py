"""One search over several processes: `torchrun --nproc-per-node N shedder-ov prune RECIPE`.

Every rank holds a replica of the model and the calibration windows. Each round of candidates
is dealt to the ranks by the layers its PPL runs (a candidate in layer i runs the N − i layers
after the cached prefix, and the head), each rank scores its share, and an all-reduce gives
every rank all the scores, so every rank takes the same decision and keeps the same masks and
log records; rank 0 alone writes. Without torchrun there is one rank and every collective is
the identity. gloo on CPU; NCCL when every local rank has a GPU of its own (NCCL refuses two
ranks on one GPU: such runs use gloo and the scores go through host memory)."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import ShedderError
from .budget import MemoryPlan

T = TypeVar("T")
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WHAT = {"model": "weights or config", "calibration.path": "calibration windows", "recipe": "search settings"}


class Ranks:
    """This process's place among the search's processes, and the few collectives it needs."""

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1, sharing: int = 1, backend: str | None = None):
        self.device, self.rank, self.world, self.sharing, self.backend = device, rank, world, sharing, backend

    @classmethod
    def from_env(cls, device: torch.device) -> "Ranks":
        """torchrun's ranks (WORLD_SIZE > 1), or a single rank; a GPU rank takes the local GPU
        LOCAL_RANK modulo the GPUs there."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(device)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if device.type == "cuda":
            count = torch.cuda.device_count()
            device = torch.device("cuda", local_rank % count)
            torch.cuda.set_device(device)
            backend = "nccl" if local_world <= count else "gloo"
            sharing = len(range(device.index, local_world, count))
        else:
            backend, sharing = "gloo", local_world
        dist.init_process_group(backend)
        ranks = cls(device, rank, world, sharing, backend)
        atexit.register(ranks.close)
        return ranks

    def describe(self) -> str:
        return f"{self.world} ranks ({self.backend}), rank 0 on {self.device}" if self.world > 1 else ""

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device if self.backend == "nccl" else "cpu")

    def same(self, value: T) -> T:
        """Rank 0's value, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._wire(torch.empty(0)).device)
        return box[0]

    def first(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0 only; its value, or its ShedderError, reaches every rank."""
        if self.world == 1:
            return work()
        outcome: tuple[str, Any] = ("ok", None)
        if self.rank == 0:
            try:
                outcome = ("ok", work())
            except ShedderError as error:
                outcome = ("error", str(error))
        kind, value = self.same(outcome)
        if kind == "error":
            raise ShedderError(value)
        return value

    def check_same(self, digests: Callable[[], dict[str, str]]) -> None:
        """One line naming the first input (model, calibration data, recipe) a rank holds
        differently from rank 0; `digests` runs only when there are several ranks."""
        if self.world == 1:
            return
        digests = digests()
        mine = self._wire(torch.tensor([list(bytes.fromhex(d)) for d in digests.values()], dtype=torch.uint8))
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        gathered = [g.cpu() for g in gathered]
        for rank in range(1, self.world):
            for k, name in enumerate(digests):
                if not torch.equal(gathered[rank][k], gathered[0][k]):
                    raise ShedderError(
                        f"{name}: torchrun rank {rank} holds other {_WHAT.get(name, 'input')} than rank 0; "
                        "every rank must read the same model, data and recipe"
                    )

    def strictest(self, plan: MemoryPlan) -> MemoryPlan:
        """The plan every rank can afford: the smallest stacking and batch, the widest cache stride
        (ranks must agree on them: they decide the rounds and the float rounding)."""
        if self.world == 1:
            return plan
        no_cache = 1 << 30
        values = self._wire(torch.tensor([plan.group_size, plan.batch_size, -(plan.stride or no_cache)], dtype=torch.int64))
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
        group, batch, stride = (int(v) for v in values.tolist())
        return replace(plan, group_size=group, batch_size=batch, stride=None if -stride == no_cache else -stride)

    def share(self, costs: Sequence[int]) -> list[int]:
        """Indices of the items this rank takes: dealt from the costliest, forth and back over
        the ranks, so every rank gets as many items (±1) of about equal total cost."""
        order = sorted(range(len(costs)), key=lambda i: -costs[i])
        lap = list(range(self.world)) + list(reversed(range(self.world)))
        return sorted(i for k, i in enumerate(order) if lap[k % len(lap)] == self.rank)

    def gather(self, items: Sequence[T], score: Callable[[list[T]], list[float]], costs: Sequence[int] | None = None) -> list[float]:
        """score(items) computed in shares over the ranks; every rank gets all the scores."""
        if self.world == 1:
            return list(score(list(items)))
        mine = self.share(costs if costs is not None else [1] * len(items))
        total = torch.zeros(len(items), dtype=torch.float64)
        if mine:
            total[mine] = torch.tensor(score([items[i] for i in mine]), dtype=torch.float64)
        total = self._wire(total)
        dist.all_reduce(total)  # each score plus zeros from the other ranks: exact
        return total.cpu().tolist()


def tensors_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Names, shapes, dtypes and an exact integer checksum of each tensor's bits, summed where the
    tensor lives (order-free, so equal bits give equal digests on any rank and device)."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        bits = tensor.detach().reshape(-1).view(_BITS[tensor.element_size()])
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{int(bits.sum(dtype=torch.int64))};".encode())
    return digest.hexdigest()


def bytes_digest(tensor: torch.Tensor) -> str:
    """sha256 of a CPU tensor's bytes (the tokenized windows: order matters to halving's rounds)."""
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
