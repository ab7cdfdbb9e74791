"""Fixed removal orders to compare the greedy search against (one-shot, no re-scoring).

shortgpt: ShortGPT's block influence, 1 − cos(input, output) of each block averaged over the
calibration tokens, lowest first; for a part of a layer, 1 − cos(layer output, layer output
without that part). random: a seeded permutation. last_k: the deepest layers first."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..adapters import TARGETS, Candidate
from .scorer import PerplexityScorer


@torch.no_grad()
def block_influence(scorer: PerplexityScorer, candidates: list[Candidate]) -> list[float]:
    adapter = scorer.adapter
    sums = torch.zeros(len(candidates), dtype=torch.float64, device=scorer.batches[0].device)
    by_layer: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_layer.setdefault(c.layer, []).append(i)
    for ids in scorer.batches:
        hidden = adapter.embed(ids)
        for layer in range(adapter.num_layers):
            out = adapter.layer_forward(layer, hidden)
            for i in by_layer.get(layer, []):
                adapter.mask(candidates[i])
                other = adapter.layer_forward(layer, hidden)
                adapter.unmask(candidates[i])
                sums[i] += (1 - F.cosine_similarity(out.float(), other.float(), dim=-1)).sum().double()
            hidden = out
    tokens = sum(b.numel() for b in scorer.batches)
    return (sums / tokens).tolist()


def shortgpt_order(scorer: PerplexityScorer, candidates: list[Candidate], seed: int) -> list[Candidate]:
    influence = block_influence(scorer, candidates)
    return [c for _, c in sorted(zip(influence, candidates), key=lambda s: s[0])]


def random_order(scorer: PerplexityScorer, candidates: list[Candidate], seed: int) -> list[Candidate]:
    order = list(candidates)
    random.Random(seed).shuffle(order)
    return order


def last_k_order(scorer: PerplexityScorer, candidates: list[Candidate], seed: int) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.layer, TARGETS.index(c.kind), c.index))


BASELINES = {"shortgpt": shortgpt_order, "random": random_order, "last_k": last_k_order}
