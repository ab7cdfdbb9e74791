"""Perplexity on local held-out text, identical windows for every model variant.

Windows come from data.py (one token stream, non-overlapping fixed-length windows, in
order), so a torch checkpoint and its IRs are scored on exactly the same tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F

from ..data import read_documents, token_stream, windows
from ..errors import ShedderError
from ..recipe import PplDataset
from .runtime import LogitsModel

FILES = {  # name -> (path under the data root, data.py format)
    "wikitext2": ("wikitext2/wiki.test.raw", "text"),
    "tinystories": ("tinystories/eval.txt", "text"),
    "alpaca": ("alpaca/alpaca_data_1k.json", "alpaca"),
}
DATASETS = get_args(PplDataset)


def eval_windows(name: str, tokenizer, seq_len: int, limit: int | None, data_root: Path) -> torch.Tensor:
    """The first `limit` (all if None) windows of a named dataset under `data_root`."""
    if name not in DATASETS:
        raise ShedderError(f"dataset: unknown {name!r} (allowed: {', '.join(DATASETS)})")
    relative, fmt = FILES[name]
    path = Path(data_root) / relative
    if not path.is_file():
        raise ShedderError(f"{path}: held-out text for {name} not found (set eval.data_root in the recipe, or --data-root)")
    stream = token_stream(read_documents(path, fmt), tokenizer)
    return windows(stream, seq_len, None, 0, str(path))[:limit]


def perplexity(model: LogitsModel, batches: torch.Tensor, batch_size: int = 4) -> dict:
    """exp(mean next-token NLL) over every predicted token of every window."""
    total, count = 0.0, 0
    for start in range(0, len(batches), batch_size):
        ids = batches[start : start + batch_size]
        logits = model.logits(ids)[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += ids[:, 1:].numel()
    return {"ppl": math.exp(total / count), "tokens": count, "windows": len(batches)}


def evaluate_ppl(
    model: LogitsModel, datasets: list[str], data_root: Path, seq_len: int = 512, limit: int | None = None,
    batch_size: int = 4,
) -> dict:
    return {
        name: {**perplexity(model, eval_windows(name, model.tokenizer, seq_len, limit, data_root), batch_size), "seq_len": seq_len}
        for name in datasets
    }
