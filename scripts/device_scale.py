"""The exact search at the paper's size on the device GPU (issue #18 item 4), sized by the defaults.

A RANDOM-weight model of mamba2-2.7b's shape in bf16 (64 layers, hidden 2560, 80 heads of 64,
state 128, vocabulary 50288) and 256 random-token windows of 2048 (the timings do not depend on
the tokens), kernels on. Prints and writes to --out/scale.json: the memory plan's line, one
full PPL, seconds per candidate over SSM candidates spread evenly over the layers (the average
cost of a step's candidates) with the defaults and with the old defaults (a 2 GiB cache budget,
half the free memory for stacking), the peak memory against the plan, CUDA time by kernel of one
batch's sweep (where the time goes), and the 24-SSM search (1,260 evaluations) it implies.

    python3 scripts/device_scale.py --out $OUT [--sample 16] [--old 4] [--batches 8,16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from collections import Counter
from pathlib import Path

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

sys.modules.setdefault("shedder_ov.export", types.ModuleType("shedder_ov.export"))  # OpenVINO export: not on the device
import shedder_ov  # noqa: F401,E402  (registers the pruned classes)
from shedder_ov.adapters import adapter_for  # noqa: E402
from shedder_ov.kernels import kernels_for  # noqa: E402
from shedder_ov.search import PerplexityScorer  # noqa: E402

GiB = float(1 << 30)
SSM_SEARCH = sum(64 - k for k in range(24))  # the reference's 24-SSM run: 1,260 evaluations


def random_mamba2_2_7b() -> torch.nn.Module:
    config = Mamba2Config(
        hidden_size=2560, num_hidden_layers=64, state_size=128, head_dim=64, num_heads=80, expand=2, n_groups=1,
        vocab_size=50288, chunk_size=256, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Mamba2ForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    return model


def memory(where: str) -> str:
    free, total = torch.cuda.mem_get_info()
    line = (f"memory {where}: allocated {torch.cuda.memory_allocated() / GiB:.1f} GiB, reserved "
            f"{torch.cuda.memory_reserved() / GiB:.1f} GiB, free {free / GiB:.1f} of {total / GiB:.1f} GiB")
    print(line, flush=True)
    return line


def live_by_origin(top: int = 12) -> str:
    """Live CUDA allocations grouped by the first frames of ours that made them (with --trace:
    torch.cuda.memory._record_memory_history; else empty): what holds memory the plan did not count."""
    by = Counter()
    for segment in torch.cuda.memory._snapshot()["segments"]:
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                frames = [f for f in block.get("frames", []) if "shedder_ov" in f["filename"] or "device_scale" in f["filename"]]
                by[" <- ".join(f"{Path(f['filename']).name}:{f['line']}" for f in frames[:3]) or "?"] += block["size"]
    return "\n".join(f"{count / GiB:8.2f} GiB  {origin}" for origin, count in by.most_common(top) if origin != "?")


def timed(work) -> tuple[object, float]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    value = work()
    torch.cuda.synchronize()
    return value, time.perf_counter() - started


def per_candidate(scorer: PerplexityScorer, candidates: list) -> dict:
    """The base PPL (rebase: every layer once, caching; then the head), then seconds per candidate
    scored in the scorer's groups as the search does; peak memory. A 24-SSM search costs about
    1,260 candidates and 24 rebases (each from the removed layer on: half a rebase on average)."""
    torch.cuda.reset_peak_memory_stats()
    _, rebase = timed(lambda: scorer.rebase(0))
    memory(f"after the rebase ({len(scorer._cache)} cached streams)")
    print(live_by_origin(), flush=True)
    ppl, head = timed(scorer.perplexity)
    memory("after the base PPL")
    _, seconds = timed(lambda: [scorer.perplexities(candidates[i : i + scorer.group_size]) for i in range(0, len(candidates), scorer.group_size)])
    return {
        "plan": scorer.plan.describe(), "stride": scorer.stride, "group_size": scorer.group_size, "ppl": ppl,
        "full_ppl_s": rebase + head, "candidates": len(candidates), "seconds_per_candidate": seconds / len(candidates),
        "peak_gib": torch.cuda.max_memory_allocated() / GiB,
        "ssm_search_24_h": (seconds / len(candidates) * SSM_SEARCH + 24 * rebase / 2) / 3600,
    }  # fmt: skip


def measure(setting: str, make, candidates: list, profile: bool = False) -> dict:
    """One setting's row; running out of memory is a result too."""
    try:
        scorer = make()
        print(scorer.plan.describe(), flush=True)
        memory("with the scorer")
        row = {"setting": setting, **per_candidate(scorer, candidates)}
        if profile:
            row["profile"] = where_time_goes(scorer, candidates)
    except torch.OutOfMemoryError as error:
        memory("at the failure")
        print(live_by_origin(), flush=True)
        row = {"setting": setting, "error": str(error).splitlines()[0]}
    print(json.dumps({k: v for k, v in row.items() if k != "profile"}), "\n" + row.get("profile", ""), flush=True)
    scorer = None
    torch.cuda.empty_cache()
    return row


@torch.no_grad()  # _sweep is the scorer's inner loop: with grad on, it kept every layer's activations (the OOM of the sized plan)
def where_time_goes(scorer: PerplexityScorer, candidates: list, top: int = 14) -> str:
    """CUDA time by kernel, and the host's wall time, of one batch's sweep over a group."""
    group = candidates[: scorer.group_size]
    scorer._sweep(group, 0, scorer.batches[0])  # warm
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        _, wall = timed(lambda: scorer._sweep(group, 0, scorer.batches[0]))
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    table = events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=70)
    return f"one batch, {len(group)} candidates stacked: wall {wall:.3f} s, GPU busy {gpu:.3f} s\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=16, help="SSM candidates, spread evenly over the layers")
    parser.add_argument("--old", type=int, default=4, help="candidates timed with the old defaults (0: skip)")
    parser.add_argument("--batches", default="8", help="batch sizes to time with the sizing defaults")
    parser.add_argument("--trace", action="store_true", help="record allocations: live memory by origin after the rebase and at a failure")
    args = parser.parse_args()
    if args.trace:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "kernels": kernels_for("cuda").names}
    print(report, flush=True)
    memory("at start")
    model, build = timed(random_mamba2_2_7b)
    report["memory"] = [memory("after the model")]
    adapter = adapter_for(model)
    report["memory"].append(memory("after the adapter"))
    windows = torch.randint(0, 50277, (256, 2048), generator=torch.Generator().manual_seed(0))
    report["model"] = {"params": sum(p.numel() for p in model.parameters()), "build_s": build, "dtype": "bfloat16 (RANDOM weights)"}
    with torch.no_grad():  # (with grad, the unused logits kept 19 GiB of activations alive through the run)
        _, warm = timed(lambda: adapter.logits(windows[:2].cuda()))  # Triton compile / autotune out of the timings
    report["warm_up_s"] = warm
    report["memory"].append(memory("after the warm-up"))
    ssm = adapter.candidates(["ssm"])
    sample = ssm[:: len(ssm) // args.sample][: args.sample]
    cuda = torch.device("cuda")
    rows = []
    for k, batch in enumerate(int(b) for b in args.batches.split(",")):
        rows.append(measure(f"defaults, batch {batch}", lambda: PerplexityScorer(adapter, windows, batch, cuda), sample, profile=k == 0))
    if args.old:
        free = torch.cuda.mem_get_info()[0]
        old = lambda: PerplexityScorer(adapter, windows, 8, cuda, cache_budget_bytes=2 << 30, group_budget_bytes=free // 2)  # noqa: E731
        rows.append(measure("old defaults (2 GiB cache budget, half the free memory to stack), batch 8", old, ssm[:: len(ssm) // args.old][: args.old]))
    report["rows"] = rows
    (args.out / "scale.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
