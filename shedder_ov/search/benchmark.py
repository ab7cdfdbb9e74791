"""`bench-search`: the search methods on one model, data and device, timed side by side.

Each method runs the same number of greedy steps from scratch (fresh log in a temp dir);
agreement is measured against the first exact method run (naive, else fast)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..adapters import FamilyAdapter
from ..recipe import StopRule
from .greedy import GreedySearch, Stage
from .log import SearchLog
from .scorer import PerplexityScorer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(
    adapter: FamilyAdapter,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    targets: list[str],
    steps: int,
    method: str,
    halving_keep: float = 0.25,
    seed: int = 42,
    shortlist: int = 8,
) -> dict:
    """One search of `steps` removals; the adapter's masks are left as they were."""
    before = set(adapter.masked)
    with tempfile.TemporaryDirectory() as tmp:
        _sync(device)
        started = time.perf_counter()
        scorer = PerplexityScorer(adapter, windows, batch_size, device, reuse_prefix=method != "naive")
        search = GreedySearch(
            adapter,
            scorer,
            [Stage(adapter.candidates(targets), StopRule(num_components=steps))],
            SearchLog(Path(tmp) / "log.jsonl"),
            show_progress=False,
            method=method,
            halving_keep=halving_keep,
            shortlist=shortlist,
            seed=seed,
        )
        found = search.run()
        _sync(device)
        seconds = time.perf_counter() - started
        log = SearchLog(Path(tmp) / "log.jsonl")
    adapter.masked = before
    evaluations = sum(r.get("type") == "eval" for r in log.records)
    return {
        "method": method,
        "seconds": seconds,
        "evaluations": evaluations,
        "evals_per_s": evaluations / seconds,
        "decisions": [r["candidate"] for r in found.removed],
        "ppls": [r["ppl"] for r in found.removed],
        "ppl_original": found.ppl_original,
        "halving_differs": sum(r.get("differs_from_exact_on_first_batches", False) for r in log.records),
    }


def compare(rows: list[dict]) -> list[dict]:
    """Speed-up, decision agreement and final-PPL gap of each row against the exact reference."""
    reference = next((r for m in ("naive", "fast") for r in rows if r["method"] == m), rows[0])
    for row in rows:
        same = sum(a == b for a, b in zip(row["decisions"], reference["decisions"]))
        row["speedup"] = reference["seconds"] / row["seconds"]
        row["agreement"] = same / max(1, len(reference["decisions"]))
        row["final_ppl_gap_pct"] = (row["ppls"][-1] / reference["ppls"][-1] - 1) * 100 if row["ppls"] else 0.0
        row["reference"] = reference["method"]
    return rows


def bench_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "wall s", "evals", "evals/s", f"speed-up vs {rows[0]['reference']}", "same decisions", "final PPL", "PPL gap %", "decisions"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["method"],
            f"{r['seconds']:.2f}",
            str(r["evaluations"]),
            f"{r['evals_per_s']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['agreement'] * 100:.0f}%",
            f"{r['ppls'][-1]:.4f}" if r["ppls"] else "-",
            f"{r['final_ppl_gap_pct']:+.3f}",
            " ".join(d.removeprefix("layers.") for d in r["decisions"]),
        )
    return table


def run_bench(recipe_path: Path, methods: list[str], steps: int, json_out: Path | None = None) -> list[dict]:
    """Load the recipe's model and calibration windows once, then bench each method on them."""
    from ..adapters import adapter_for
    from ..checkpoints import load_checkpoint, load_tokenizer, resolve_device
    from ..data import load_windows
    from ..errors import ShedderError
    from ..recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if recipe.calibration is None:
        raise ShedderError(f"{recipe_path}: bench-search needs a calibration section")
    device = resolve_device(recipe.device)
    model = load_checkpoint(recipe.model, recipe.dtype, str(device))
    adapter = adapter_for(model, str(recipe.model))
    windows = load_windows(recipe.calibration, load_tokenizer(recipe.model, recipe.tokenizer), recipe.seed)
    rows = [
        bench_method(
            adapter, windows, recipe.calibration.batch_size, device, recipe.search.targets, steps, m,
            recipe.search.halving_keep, recipe.seed, recipe.search.shortlist,
        )
        for m in methods
    ]
    compare(rows)
    title = f"{recipe.model.name} on {device.type}: {tuple(windows.shape)} tokens, {steps} steps, targets {recipe.search.targets}"
    Console().print(bench_table(rows, title))
    if json_out:
        json_out.write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    return rows
