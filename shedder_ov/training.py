"""The recovery training loop: next-token loss through the adapter's pure-torch forward (it is
differentiable and, on CPU, far faster than the transformers Mamba-2 path), resumable.

Resuming is exact: the batch order is a pure function of (seed, micro-batch index), and each
checkpoint holds the trainable weights, optimizer, scheduler, step and RNG states."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from .adapters import FamilyAdapter
from .io import atomic_file
from .recipe import RecoverySpec

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def total_steps(spec: RecoverySpec, num_windows: int) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    per_step = spec.batch_size * spec.grad_accum
    return max(1, math.ceil(spec.epochs * num_windows / per_step))


def micro_batch(num_windows: int, batch_size: int, seed: int, index: int) -> torch.Tensor:
    """Window indices of micro-batch `index` in a stream of per-epoch seeded permutations."""
    start = index * batch_size
    picked = []
    while len(picked) < batch_size:
        epoch, offset = divmod(start + len(picked), num_windows)
        order = torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        picked.extend(order[offset : offset + batch_size - len(picked)].tolist())
    return torch.tensor(picked)


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    seconds: float = 0.0  # training time over all (resumed) runs
    resumed_from: int = 0


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    adapter: FamilyAdapter,
    module: nn.Module,
    windows: torch.Tensor,
    spec: RecoverySpec,
    seed: int,
    device: torch.device,
    checkpoint: Path,
    fingerprint: dict,
) -> TrainResult:
    """Train `module`'s trainable parameters (the forward goes through `adapter`, which shares
    them); continue from `checkpoint` when it holds the same run (same `fingerprint`)."""
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps = total_steps(spec, len(windows))
    scheduler = get_scheduler(
        SCHEDULES[spec.schedule], optimizer, num_warmup_steps=min(spec.warmup_steps, steps), num_training_steps=steps
    )
    result = TrainResult(steps=steps)
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["fingerprint"] == fingerprint:
            with torch.no_grad():
                for name, tensor in state["trainable"].items():
                    trainable[name].copy_(tensor)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            step = result.resumed_from = state["step"]
            result.losses, result.seconds = state["losses"], state["seconds"]

    def save() -> None:
        with atomic_file(checkpoint) as tmp:
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "trainable": {name: p.detach() for name, p in trainable.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "losses": result.losses,
                    "seconds": result.seconds,
                },
                tmp,
            )

    use_bf16 = spec.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    module.train()
    bar = tqdm(total=steps, initial=step, desc=f"recover ({spec.method})", unit="step", dynamic_ncols=True)
    started = time.perf_counter() - result.seconds
    while step < steps:
        step_loss = 0.0
        for accum in range(spec.grad_accum):
            ids = windows[micro_batch(len(windows), spec.batch_size, seed, step * spec.grad_accum + accum)].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = next_token_loss(adapter.logits(ids), ids) / spec.grad_accum
            loss.backward()
            step_loss += loss.item()
        if spec.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(trainable.values(), spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        result.losses.append(step_loss)
        result.seconds = time.perf_counter() - started
        bar.update()
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % spec.save_every == 0 or step == steps:
            save()
    bar.close()
    module.eval()
    return result
