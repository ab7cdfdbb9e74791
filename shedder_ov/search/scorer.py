"""Calibration perplexity of a masked model, optionally reusing the residual stream.

Masking the component of layer i changes nothing before layer i, so the exact scorer keeps
the residual stream entering every (or every k-th, within a memory budget) layer of the
current base model and recomputes a candidate only from there on.

`perplexities` scores many candidates in one sweep over the layers: the streams of all
candidates that have entered run through each shared (unmasked) layer as one batch, so the
kernels see big batches and the host syncs once per group. Same math as masking candidates
one by one; only the batching of the matmuls differs (PPLs agree to float rounding). On CPU
each candidate runs alone: there the matmuls of one batch already fill the cores, and stacking
candidates only adds copies and memory traffic (3x slower on mamba1-tiny, 2 cores)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..adapters import Candidate, FamilyAdapter
from .budget import MemoryPlan, plan_memory


class PerplexityScorer:
    def __init__(
        self,
        adapter: FamilyAdapter,
        windows: torch.Tensor,
        batch_size: int,
        device: torch.device,
        reuse_prefix: bool = True,
        cache_budget_bytes: int | None = None,
        group_budget_bytes: int | None = None,
        sharing: int = 1,
        agree: Callable[[MemoryPlan], MemoryPlan] | None = None,
    ):
        """The scorer sizes itself to the device's free memory (budget.py), shared by `sharing`
        ranks, the plan made common to all ranks by `agree`; explicit budgets replace the
        measured memory for the cache or the stacking."""
        self.adapter = adapter
        plan = plan_memory(
            adapter, windows, batch_size, device, reuse_prefix, sharing, cache_budget_bytes, group_budget_bytes, self._nll
        )
        self.plan = agree(plan) if agree else plan
        self.batches = [b.to(device) for b in windows.split(self.plan.batch_size)]
        self.reuse_prefix = self.plan.stride is not None
        self.stride = self.plan.stride or adapter.num_layers
        self.group_size = self.plan.group_size
        self._cache: dict[int, list[torch.Tensor]] = {}

    def tokens(self, batches: int | None = None) -> int:
        return sum(b[:, 1:].numel() for b in self.batches[:batches])

    def _nll(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").double()

    @torch.no_grad()
    def rebase(self, from_layer: int = 0) -> None:
        """Recompute the cached streams of the current masks from `from_layer` on."""
        if not self.reuse_prefix:
            return
        adapter = self.adapter
        start = (from_layer // self.stride) * self.stride
        if start == 0 or start not in self._cache:
            start, streams = 0, [adapter.embed(ids) for ids in self.batches]
        else:
            streams = self._cache[start]
        for layer in range(start, adapter.num_layers):
            if layer % self.stride == 0:
                self._cache[layer] = streams
            streams = [adapter.layer_forward(layer, h) for h in streams]
        self._cache[adapter.num_layers] = streams  # the base model's own PPL needs only the head

    def _entry(self, layer: int) -> int:
        return (layer // self.stride) * self.stride

    def cost(self, candidate: Candidate) -> int:
        """Layers a candidate's PPL runs, the head counted as one: what balances the ranks."""
        return self.adapter.num_layers - (self._entry(candidate.layer) if self.reuse_prefix else 0) + 1

    @torch.no_grad()
    def perplexity(self, from_layer: int = 0, batches: int | None = None) -> float:
        """PPL of the currently masked model on the first `batches` batches; layers before
        `from_layer` must be unchanged since the last `rebase`."""
        adapter = self.adapter
        total = torch.zeros((), dtype=torch.float64, device=self.batches[0].device)
        if self.reuse_prefix:
            if not self._cache:
                self.rebase(0)
            start = self._entry(from_layer)
            streams = self._cache[start]
        else:
            start, streams = 0, [None] * len(self.batches)
        for ids, hidden in zip(self.batches[:batches], streams):
            if hidden is None:
                hidden = adapter.embed(ids)
            for layer in range(start, adapter.num_layers):
                hidden = adapter.layer_forward(layer, hidden)
            total += self._nll(adapter.head(hidden), ids)
        return math.exp(total.item() / self.tokens(batches))

    @torch.no_grad()
    def perplexities(self, candidates: Sequence[Candidate], batches: int | None = None) -> list[float]:
        """PPL with each candidate masked alone (on top of the current masks), in order."""
        if not self.reuse_prefix:
            scores = []
            for candidate in candidates:
                self.adapter.mask(candidate)
                scores.append(self.perplexity(batches=batches))
                self.adapter.unmask(candidate)
            return scores
        if not self._cache:
            self.rebase(0)
        nll = torch.zeros(len(candidates), dtype=torch.float64, device=self.batches[0].device)
        for b, ids in enumerate(self.batches[:batches]):
            for first in range(0, len(candidates), self.group_size):
                group = list(candidates[first : first + self.group_size])
                nll[first : first + len(group)] += self._sweep(group, b, ids)
        return [math.exp(v / self.tokens(batches)) for v in nll.tolist()]

    def _sweep(self, group: list[Candidate], b: int, ids: torch.Tensor) -> torch.Tensor:
        """NLL sums of one batch for a group of candidates, sharing every unmasked layer."""
        adapter = self.adapter
        order = sorted(range(len(group)), key=lambda i: group[i].layer)
        rows = ids.shape[0]
        stack, members = None, []  # members[k] = index into group of rows k*rows:(k+1)*rows
        pending = list(order)
        for layer in range(self._entry(group[order[0]].layer), adapter.num_layers):
            entering = []
            while pending and self._entry(group[pending[0]].layer) == layer:
                entering.append(pending.pop(0))
            if stack is not None:
                out = adapter.layer_forward(layer, stack)
                for k, i in enumerate(members):
                    if group[i].layer == layer:  # entered earlier (stride > 1), masked here
                        out[k * rows : (k + 1) * rows] = self._masked(group[i], layer, stack[k * rows : (k + 1) * rows])
                stack = out
            for i in entering:
                cached = self._cache[layer][b]
                fresh = self._masked(group[i], layer, cached) if group[i].layer == layer else adapter.layer_forward(layer, cached)
                stack = fresh if stack is None else torch.cat([stack, fresh])
                members.append(i)
        nll = torch.zeros(len(group), dtype=torch.float64, device=ids.device)
        for k, i in enumerate(members):
            nll[i] = self._nll(adapter.head(stack[k * rows : (k + 1) * rows]), ids)
        return nll

    @torch.no_grad()
    def perturbations(self, candidates: Sequence[Candidate], batches: int | None = None) -> list[float]:
        """Per candidate, how much masking it alone changes the output of its own layer on the
        calibration stream entering that layer: sum ||masked - unmasked||² / sum ||unmasked||².
        One layer forward per candidate (the exact PPL runs every later layer and the head)."""
        if not self._cache:
            self.rebase(0)
        adapter = self.adapter
        changed = torch.zeros(len(candidates), dtype=torch.float64)
        size = torch.zeros(len(candidates), dtype=torch.float64)
        by_layer: dict[int, list[int]] = {}
        for i, candidate in enumerate(candidates):
            by_layer.setdefault(candidate.layer, []).append(i)
        for b, ids in enumerate(self.batches[:batches]):
            for layer, members in by_layer.items():
                if self.reuse_prefix:
                    hidden = self._cache[self._entry(layer)][b]
                    start = self._entry(layer)
                else:
                    hidden, start = adapter.embed(ids), 0
                for earlier in range(start, layer):
                    hidden = adapter.layer_forward(earlier, hidden)
                base = adapter.layer_forward(layer, hidden).double()
                for i in members:
                    out = self._masked(candidates[i], layer, hidden).double()
                    changed[i] += (out - base).square().sum().item()
                    size[i] += base.square().sum().item()
        return (changed / size).tolist()

    def _masked(self, candidate: Candidate, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        self.adapter.mask(candidate)
        try:
            return self.adapter.layer_forward(layer, hidden)
        finally:
            self.adapter.unmask(candidate)
