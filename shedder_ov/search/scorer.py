"""Calibration perplexity of a masked model, optionally reusing the residual stream.

Masking the component of layer i changes nothing before layer i, so the exact scorer keeps
the residual stream entering every (or every k-th, within a memory budget) layer of the
current base model and recomputes a candidate only from there on. Same floats, same order of
operations: the PPLs equal those of the full forward bit for bit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..adapters import MambaFamilyAdapter


class PerplexityScorer:
    def __init__(
        self,
        adapter: MambaFamilyAdapter,
        windows: torch.Tensor,
        batch_size: int,
        device: torch.device,
        reuse_prefix: bool = True,
        cache_budget_bytes: int = 2 << 30,
    ):
        self.adapter = adapter
        self.batches = [b.to(device) for b in windows.split(batch_size)]
        self.reuse_prefix = reuse_prefix
        self.tokens = sum(b[:, 1:].numel() for b in self.batches)
        hidden = adapter.model.config.hidden_size
        bytes_per_layer = windows.numel() * hidden * 4
        self.stride = max(1, math.ceil(adapter.num_layers * bytes_per_layer / cache_budget_bytes))
        self._cache: dict[int, list[torch.Tensor]] = {}

    def _nll(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").double()

    @torch.no_grad()
    def rebase(self, from_layer: int = 0) -> None:
        """Recompute the cached streams of the current masks from `from_layer` on."""
        if not self.reuse_prefix:
            return
        adapter = self.adapter
        start = (from_layer // self.stride) * self.stride
        if start == 0:
            streams = [adapter.embed(ids) for ids in self.batches]
        else:
            streams = self._cache[start]
        for layer in range(start, adapter.num_layers):
            if layer % self.stride == 0:
                self._cache[layer] = streams
            streams = [adapter.layer_forward(layer, h) for h in streams]

    @torch.no_grad()
    def perplexity(self, from_layer: int = 0) -> float:
        """PPL of the currently masked model; layers before `from_layer` must be unchanged
        since the last `rebase`."""
        adapter = self.adapter
        total = torch.zeros((), dtype=torch.float64, device=self.batches[0].device)
        if self.reuse_prefix:
            if not self._cache:
                self.rebase(0)
            start = (from_layer // self.stride) * self.stride
            streams = self._cache[start]
        else:
            start, streams = 0, [None] * len(self.batches)
        for ids, hidden in zip(self.batches, streams):
            if hidden is None:
                hidden = adapter.embed(ids)
            for layer in range(start, adapter.num_layers):
                hidden = adapter.layer_forward(layer, hidden)
            total += self._nll(adapter.head(hidden), ids)
        return math.exp(total.item() / self.tokens)
