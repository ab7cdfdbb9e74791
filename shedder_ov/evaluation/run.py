"""`shedder-ov eval` and prune-and-export's eval stage: PPL and zero-shot accuracy of one model
variant (torch checkpoint or IR) as one JSON record."""

from __future__ import annotations

from pathlib import Path

from ..errors import ShedderError
from .ppl import evaluate_ppl
from .runtime import open_model
from .zeroshot import evaluate_zeroshot


def parse_list(value: str, allowed, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise ShedderError(f"{what}: unknown {', '.join(unknown)} (allowed: {', '.join(allowed)}, or none)")
    return items


def evaluate(
    model_path: Path, datasets: list[str], tasks: list[str], data_root: Path, seq_len: int = 512,
    ppl_windows: int | None = None, limit: int | None = None, device: str = "CPU", precision: str = "f32",
    batch_size: int = 4, chunk: int | None = None,
) -> dict:
    model = open_model(model_path, device, precision, chunk)
    record = {"model": str(model_path), "kind": model.kind, "device": device, "precision": precision, "chunk": chunk,
              "num_params": model.num_params}
    if datasets:
        record["ppl"] = evaluate_ppl(model, datasets, data_root, seq_len, ppl_windows, batch_size)
    if tasks:
        record["zeroshot"] = evaluate_zeroshot(model, tasks, Path(data_root) / "eval", limit, batch_size)
    return record
