"""GPU benchmark of the search (run by scripts/device_search.sh on the device machine).

1. parity: PPLs through the mamba-ssm kernels vs the pure-torch ops on the same GPU;
2. naive / fast / halving with kernels, and fast on the pure-torch ops, per model: the real
   mamba2-tiny and mamba1-tiny (fp32), and a random-weight 780m-like Mamba-2 (bf16) built from
   its config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM

sys.modules.setdefault("shedder_ov.export", types.ModuleType("shedder_ov.export"))  # OpenVINO export: not on the device
import shedder_ov  # noqa: F401,E402  (registers the pruned classes)
from shedder_ov.adapters import adapter_for
from shedder_ov.kernels import kernels_for
from shedder_ov.search import PerplexityScorer
from shedder_ov.search.benchmark import bench_method, bench_table, compare

console = Console(width=200)


def use_kernels(on: bool) -> None:
    os.environ["SHEDDER_KERNELS"] = "auto" if on else "torch"
    kernels_for.cache_clear()


def random_780m() -> torch.nn.Module:
    config = Mamba2Config(
        hidden_size=1536, num_hidden_layers=48, state_size=128, head_dim=64, num_heads=48, expand=2, n_groups=1,
        vocab_size=50288, chunk_size=256, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return Mamba2ForCausalLM(config).to(torch.bfloat16).eval()


def parity(adapter, windows, batch_size, n_candidates=6) -> dict:
    """Base PPL and a few single-removal PPLs through both paths."""
    candidates = adapter.candidates(["mamba_block", "ssm"])[:: max(1, len(adapter.candidates(["mamba_block"])) // 3)][:n_candidates]
    found = {}
    for on in (True, False):
        use_kernels(on)
        scorer = PerplexityScorer(adapter, windows, batch_size, torch.device("cuda"))
        found[on] = [scorer.perplexity()] + scorer.perplexities(candidates)
    rel = max(abs(a / b - 1) for a, b in zip(found[True], found[False]))
    return {"kernels": found[True], "torch": found[False], "max_rel_diff": rel, "candidates": [c.name for c in candidates]}


def profile_forward(adapter, batch, top=12) -> dict:
    """CUDA time by kernel for one full forward, through the kernels and through torch ops."""
    tables = {}
    for on in (True, False):
        use_kernels(on)
        for _ in range(2):
            adapter.logits(batch)  # warm-up, Triton autotune
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            adapter.logits(batch)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)
        console.print(f"profile, {'kernels' if on else 'torch ops'}:\n{table}")
        tables["kernels" if on else "torch"] = table
    return tables


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--windows", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated model names to run (default: all)")
    parser.add_argument("--methods", default="naive,fast,halving,fast-torch", help="'-torch' suffix: pure-torch ops")
    parser.add_argument("--profile", action="store_true", help="top CUDA kernels of one full forward, both paths")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    use_kernels(True)
    console.print(f"{torch.cuda.get_device_name()}: kernels ssd/selective_scan/conv = {kernels_for('cuda').names}")
    windows = torch.load(args.windows)  # [32, 512]
    tiny = windows.reshape(-1, 256)  # 64 × 256
    # 16 / 8 calibration batches, so that halving has rounds to halve. The 780m model runs 4
    # windows a batch: at batch 1 its kernel path is launch-bound (16 ms of CPU launches vs 6 ms
    # of GPU work per forward), which hides the kernels' gain behind Python.
    jobs = [
        ("mamba2-tiny", lambda: AutoModelForCausalLM.from_pretrained(args.models / "mamba2-tiny").to(device).eval(), tiny, 4),
        ("mamba1-tiny", lambda: AutoModelForCausalLM.from_pretrained(args.models / "mamba1-tiny").to(device).eval(), tiny, 4),
        ("mamba2-780m-random-bf16", random_780m, windows, 4),
    ]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "models": {}}
    if args.only:
        by_name = {job[0]: job for job in jobs}
        jobs = [by_name[name] for name in args.only.split(",")]
    for name, build, data, batch_size in jobs:
        started = time.perf_counter()
        adapter = adapter_for(build())
        entry = report["models"][name] = {"parity": parity(adapter, data, batch_size)}
        console.print(f"{name}: parity kernels vs torch, max rel PPL diff {entry['parity']['max_rel_diff']:.2e}")
        if args.profile:
            entry["profile"] = profile_forward(adapter, data[:batch_size].to(device))
        rows = []
        for spec in args.methods.split(","):
            method, kernels = spec.removesuffix("-torch"), not spec.endswith("-torch")
            use_kernels(kernels)
            adapter.logits(data[:batch_size].to(device))  # warm-up: Triton compile/autotune out of the timings
            row = bench_method(adapter, data, batch_size, device, ["mamba_block"], args.steps, method)
            row["method"] = f"{method}{'' if kernels else ' (torch ops)'}"
            rows.append(row)
            console.print(f"  {row['method']}: {row['seconds']:.2f} s")
        compare(rows)
        entry["rows"] = rows
        title = f"{name} on {report['device']}: {tuple(data.shape)} tokens, batch {batch_size}, {args.steps} steps"
        console.print(bench_table(rows, title))
        console.print(f"  (model total {time.perf_counter() - started:.1f} s)")
        del adapter
        torch.cuda.empty_cache()
        (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
