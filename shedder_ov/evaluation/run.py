"""`shedder-ov eval`: PPL and zero-shot accuracy of one model variant, as one JSON record."""

from __future__ import annotations

from pathlib import Path

from ..errors import ShedderError
from .ppl import DATASETS, evaluate_ppl
from .runtime import open_model
from .zeroshot import PAPER_TASKS, evaluate_zeroshot


def parse_list(value: str, allowed, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise ShedderError(f"{what}: unknown {', '.join(unknown)} (allowed: {', '.join(allowed)}, or none)")
    return items


def evaluate(
    model_path: Path, ppl: str = ",".join(DATASETS), tasks: str = ",".join(PAPER_TASKS), seq_len: int = 512,
    ppl_windows: int | None = None, limit: int | None = None, device: str = "CPU", precision: str = "f32",
    batch_size: int = 4,
) -> dict:
    datasets = parse_list(ppl, DATASETS, "--ppl")
    task_names = parse_list(tasks, PAPER_TASKS, "--tasks")
    model = open_model(model_path, device, precision)
    record = {"model": str(model_path), "kind": model.kind, "device": device, "precision": precision,
              "num_params": model.num_params}
    if datasets:
        record["ppl"] = evaluate_ppl(model, datasets, seq_len, ppl_windows, batch_size)
    if task_names:
        record["zeroshot"] = evaluate_zeroshot(model, task_names, limit, batch_size)
    return record
