"""Granularity study: PPL-vs-parameters curves of block-, branch- and head-level pruning, and the
cost of a head-level search (exact greedy vs ranked vs halving), on falcon-h1-tiny and mamba2-tiny.

    python scripts/granularity_study.py prepare            # here: windows + models into .device/
    # on the GPU (scripts/device_study.sh runs this after installing the carried wheels):
    python scripts/granularity_study.py device --models /tmp/models --data .device/study_data.pt --out $OUT [--jobs a,b]
    python scripts/granularity_study.py cpu-bench --steps 2 # here: fast vs ranked on this CPU
    python scripts/granularity_study.py plot --runs runs/study   # JSON + PNG under docs/study/<model>/

Every job is one greedy search (GreedySearch, as `shedder-ov prune` runs it; channel stages get
set_channel_groups + rank_channels as in pipeline.search_stages) on the recipes' calibration:
tinystories train, 16 x 128 windows, seed 42, batch 8. A job may carry a wall-time cap: it then stops
after the last step that finished in time (the curve says how far it got). Each step records its
cumulative wall time and evaluation count, so the cost table reads any common step N off the runs.
Held-out PPL: tinystories eval.txt, the first 64 windows of 256 tokens, on chosen steps."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types
from collections import Counter
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODELS = ("falcon-h1-tiny", "mamba2-tiny")
CALIB = {"num_samples": 16, "seq_len": 128, "batch_size": 8}
SEED = 42
HELD_OUT = {"seq_len": 256, "windows": 64}
CURVE_PCT = 30.0

# name -> (model, targets, method, shortlist, stop %, cap seconds, kind). kind: "curve" is a
# PPL-vs-parameters curve; "bench" a search-cost row (targets of the cost comparison).
FALCON_HEADS = ["attention_heads", "ssm_heads"]
JOBS = {
    # search cost, falcon-h1-tiny [attention_heads, ssm_heads]
    "f-bench-fast": ("falcon-h1-tiny", FALCON_HEADS, "fast", 8, None, None, "bench"),
    "f-bench-ranked4": ("falcon-h1-tiny", FALCON_HEADS, "ranked", 4, None, None, "bench"),
    "f-bench-ranked8": ("falcon-h1-tiny", FALCON_HEADS, "ranked", 8, None, None, "bench"),
    "f-bench-ranked16": ("falcon-h1-tiny", FALCON_HEADS, "ranked", 16, None, None, "bench"),
    "f-bench-halving": ("falcon-h1-tiny", FALCON_HEADS, "halving", 8, None, None, "bench"),
    # curves, falcon-h1-tiny
    "f-layer": ("falcon-h1-tiny", ["layer"], "fast", 8, CURVE_PCT, None, "curve"),
    "f-branch": ("falcon-h1-tiny", ["attention", "mamba_block", "ssm", "mlp"], "fast", 8, CURVE_PCT, None, "curve"),
    "f-branch-layer": ("falcon-h1-tiny", ["layer", "attention", "mamba_block", "ssm", "mlp"], "fast", 8, CURVE_PCT, None, "curve"),
    "f-heads": ("falcon-h1-tiny", ["attention_heads", "ssm_heads", "mlp_channels"], "fast", 8, CURVE_PCT, 200, "curve"),
    "f-heads-ranked8": ("falcon-h1-tiny", ["attention_heads", "ssm_heads", "mlp_channels"], "ranked", 8, CURVE_PCT, 150, "curve"),
    # curves, mamba2-tiny (the ssm_heads exact curve doubles as its cost reference)
    "m-block": ("mamba2-tiny", ["mamba_block"], "fast", 8, CURVE_PCT, None, "curve"),
    "m-ssm": ("mamba2-tiny", ["ssm"], "fast", 8, CURVE_PCT, None, "curve"),
    "m-heads": ("mamba2-tiny", ["ssm_heads"], "fast", 8, CURVE_PCT, 200, "curve"),
    "m-heads-ranked8": ("mamba2-tiny", ["ssm_heads"], "ranked", 8, CURVE_PCT, 200, "curve"),
    "m-heads-ranked4": ("mamba2-tiny", ["ssm_heads"], "ranked", 4, None, None, "bench"),
    "m-heads-ranked16": ("mamba2-tiny", ["ssm_heads"], "ranked", 16, None, None, "bench"),
    "m-heads-halving": ("mamba2-tiny", ["ssm_heads"], "halving", 8, None, None, "bench"),
}
BENCH_STEPS = 16  # steps of the "bench" jobs (and the step N at which the cost table compares)
CHANNELS = {"group_size": 64, "channel_order": "weight_l1"}


def _import_shedder():
    # the OpenVINO export is not needed (nor installed) on the device
    sys.modules.setdefault("shedder_ov.export", types.ModuleType("shedder_ov.export"))
    sys.path.insert(0, str(ROOT))
    import shedder_ov  # noqa: F401  (registers the pruned classes)


# ---- prepare (here) ---------------------------------------------------------------------------
def prepare(args) -> None:
    _import_shedder()
    from shedder_ov.checkpoints import load_tokenizer
    from shedder_ov.data import load_windows
    from shedder_ov.evaluation.ppl import eval_windows
    from shedder_ov.recipe import CalibrationSpec

    data = {}
    for name in MODELS:
        tokenizer = load_tokenizer(SHARED / "models" / name)
        spec = CalibrationSpec(path=SHARED / "data/tinystories/train.txt", num_samples=CALIB["num_samples"], seq_len=CALIB["seq_len"])
        held = eval_windows("tinystories", tokenizer, HELD_OUT["seq_len"], HELD_OUT["windows"], SHARED / "data")
        data[name] = {"calibration": load_windows(spec, tokenizer, SEED), "held_out": held}
        print(name, tuple(data[name]["calibration"].shape), tuple(held.shape))
    out = ROOT / ".device"
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(data, out / "study_data.pt")
    tarball = out / "models" / "study.tar.xz"
    if not tarball.exists():
        files = " ".join(f"{m}/config.json {m}/model*.safetensors*" for m in MODELS)
        os.system(f"cd {SHARED / 'models'} && tar cf - {files} | xz -6 -T1 > {tarball}")
    print("wrote", out / "study_data.pt", tarball)


# ---- one search -------------------------------------------------------------------------------
def _capped_search_class():
    from shedder_ov.search import GreedySearch

    class CappedSearch(GreedySearch):
        """GreedySearch that stops once `deadline` (perf_counter) has passed, and records the
        cumulative wall time and evaluations after every step."""

        deadline: float = math.inf
        started: float = 0.0
        trace: list

        def _choose(self, step, stage, remaining, known, result):
            chosen = super()._choose(step, stage, remaining, known, result)
            if self.scorer.batches[0].is_cuda:
                torch.cuda.synchronize()
            self.trace.append({"step": step, "seconds": time.perf_counter() - self.started, "evaluations": result.evaluations,
                               "candidates": len(remaining)})
            return chosen

        def _done(self, stop, in_stage, removed, remaining):
            why = super()._done(stop, in_stage, removed, remaining)
            if not why and time.perf_counter() > self.deadline:
                why = f"time cap ({len(removed)} steps done)"
            return why

    return CappedSearch


def stop_rule(adapter, candidates, pct: float | None, steps: int | None):
    """`pct`% of the parameters, or as far as the candidates reach if that is less."""
    from shedder_ov.recipe import StopRule
    from shedder_ov.search.greedy import most_removable

    if pct is None:
        return StopRule(num_components=steps)
    most = most_removable(adapter, candidates)
    reachable = adapter.removed_params(most) / adapter.num_params() * 100
    if reachable <= pct:
        return StopRule(num_components=len(most))
    return StopRule(param_reduction_pct=pct)


def run_job(name: str, adapter, data: dict, device, cap: float | None, steps: int = BENCH_STEPS, held: bool = True) -> dict:
    from shedder_ov.search import PerplexityScorer, SearchLog, Stage
    import tempfile

    model, targets, method, shortlist, pct, _, kind = JOBS[name]
    adapter.masked = Counter()
    channels = "mlp_channels" in targets
    if channels:
        adapter.set_channel_groups(CHANNELS["group_size"])
    windows = data["calibration"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    scorer = PerplexityScorer(adapter, windows, CALIB["batch_size"], device, reuse_prefix=method != "naive")
    setup = partial(adapter.rank_channels, CHANNELS["channel_order"], scorer.batches) if channels else None
    if channels:
        adapter.rank_channels(CHANNELS["channel_order"], scorer.batches)  # candidates() needs the groups set
    candidates = adapter.candidates(targets)
    stage = Stage(candidates, stop_rule(adapter, candidates, pct, steps), setup)
    with tempfile.TemporaryDirectory() as tmp:
        search = _capped_search_class()(
            adapter, scorer, [stage], SearchLog(Path(tmp) / "log.jsonl"), show_progress=False,
            method=method, shortlist=shortlist, seed=SEED,
        )
        search.started, search.trace = started, []
        search.deadline = started + cap if cap else math.inf
        found = search.run()
    total = adapter.num_params()
    row = {
        "job": name, "model": model, "targets": targets, "method": method, "kind": kind,
        "shortlist": shortlist if method == "ranked" else None, "halving_keep": 0.25 if method == "halving" else None,
        "channels": CHANNELS if channels else None, "stop": stage.stop.model_dump(exclude_none=True),
        "stopped_by": found.stopped_by, "cap_s": cap, "seconds": found.seconds, "evaluations": found.evaluations,
        "params_total": total, "ppl_original": found.ppl_original, "candidates": len(candidates),
        "steps": [
            {**r, "pct_removed": r["params_removed"] / total * 100, **t}
            for r, t in zip(found.removed, search.trace)
        ],
    }
    if held:
        row["held_out"] = held_out(adapter, found.candidates, data["held_out"], device)
    adapter.masked = Counter()
    return row


def held_out(adapter, removed, windows, device, most: int = 24) -> dict:
    """Held-out PPL after steps 0 (original), a spread of steps and the last one."""
    from shedder_ov.search import PerplexityScorer

    n = len(removed)
    steps = sorted({0, n, *(round(n * k / most) for k in range(1, most))}) if n > most else list(range(n + 1))
    scorer = PerplexityScorer(adapter, windows, 8, device, reuse_prefix=False)
    found = {}
    adapter.masked = Counter()
    done = 0
    for step in steps:
        for candidate in removed[done:step]:
            adapter.mask(candidate)
        done = step
        found[str(step)] = scorer.perplexity()
    return found


def load_model(path: Path, device):
    from transformers import AutoModelForCausalLM

    from shedder_ov.adapters import adapter_for

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return adapter_for(model, str(path))


def device_run(args) -> None:
    _import_shedder()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    deadline = time.perf_counter() + args.budget
    data = torch.load(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.jobs.split(",") if args.jobs else list(JOBS)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    import transformers

    info["transformers"] = transformers.__version__
    print(info, flush=True)
    adapters = {}
    for name in names:
        model = JOBS[name][0]
        left = deadline - time.perf_counter()
        if left < 20:
            print(f"{name}: skipped, {left:.0f} s left", flush=True)
            continue
        if model not in adapters:
            adapters.clear()
            adapters[model] = load_model(args.models / model, device)
            adapters[model].logits(data[model]["calibration"][:8].to(device))  # warm-up
        cap = JOBS[name][5]
        cap = min(cap, left - 15) if cap else left - 15
        row = run_job(name, adapters[model], data[model], device, cap)
        row["device"] = info
        last = row["steps"][-1] if row["steps"] else {}
        print(f"{name}: {len(row['steps'])} steps, {row['seconds']:.1f} s, {row['evaluations']} evals, "
              f"{last.get('pct_removed', 0):.1f}% removed, PPL {row['ppl_original']:.3f} -> {last.get('ppl', 0):.3f} "
              f"({row['stopped_by']})", flush=True)
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=1))


# ---- CPU timing (here) ------------------------------------------------------------------------
def cpu_bench(args) -> None:
    """`ranked` for `--steps` greedy steps; the exact search's cost measured on a sample of its
    candidates (on CPU each candidate is scored alone, so one exact step costs the candidates'
    count times the mean seconds of one evaluation, plus the rebase)."""
    _import_shedder()
    import platform
    import subprocess

    from shedder_ov.search import PerplexityScorer

    torch.set_num_threads(args.threads)
    data = torch.load(args.data)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in lscpu if l.startswith("Model name")), platform.processor())
    machine = {"cpu": cpu, "threads": args.threads, "torch": torch.__version__, "load_1min": os.getloadavg()[0]}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    for model, targets in (("falcon-h1-tiny", FALCON_HEADS), ("mamba2-tiny", ["ssm_heads"])):
        adapter = load_model(SHARED / "models" / model, device)
        key = f"cpu-{model}-ranked8"
        if not (out / f"{key}.json").exists():
            JOBS[key] = (model, targets, "ranked", 8, None, None, "cpu")
            row = run_job(key, adapter, data[model], device, None, steps=args.steps, held=False)
            row["device"] = {**machine, "load_1min_after": os.getloadavg()[0]}
            print(f"{key}: {row['seconds']:.1f} s, {row['evaluations']} evals, {[s['candidate'] for s in row['steps']]}", flush=True)
            (out / f"{key}.json").write_text(json.dumps(row, indent=1))
        key = f"cpu-{model}-fast-sample"
        candidates = adapter.candidates(targets)
        sample = candidates[:: max(1, len(candidates) // args.sample)][: args.sample]
        started = time.perf_counter()
        scorer = PerplexityScorer(adapter, data[model]["calibration"], CALIB["batch_size"], device)
        scorer.rebase(0)
        rebase = time.perf_counter() - started
        started = time.perf_counter()
        scorer.perplexities(sample)
        per_eval = (time.perf_counter() - started) / len(sample)
        row = {"job": key, "model": model, "targets": targets, "method": "fast", "kind": "cpu-sample", "sample": len(sample),
               "candidates": len(candidates), "rebase_s": rebase, "seconds_per_evaluation": per_eval,
               "projected_step_1_s": rebase + per_eval * len(candidates),
               "device": {**machine, "load_1min_after": os.getloadavg()[0]}}
        print(f"{key}: {per_eval:.3f} s per evaluation ({len(sample)} sampled), step 1 ~ {row['projected_step_1_s']:.0f} s", flush=True)
        (out / f"{key}.json").write_text(json.dumps(row, indent=1))


# ---- tables and plots (here) ------------------------------------------------------------------
LABELS = {
    "f-layer": "block-level [layer]",
    "f-branch": "branch-level [attention, mamba_block, ssm, mlp]",
    "f-branch-layer": "branch + block [layer, attention, mamba_block, ssm, mlp]",
    "f-heads": "head-level [attention_heads, ssm_heads, mlp_channels]",
    "f-heads-ranked8": "head-level, ranked (shortlist 8)",
    "m-block": "blocks [mamba_block]",
    "m-ssm": "SSMs [ssm]",
    "m-heads": "SSM heads [ssm_heads]",
    "m-heads-ranked8": "SSM heads, ranked (shortlist 8)",
}


def cost_rows(runs: dict, model: str, steps: int) -> list[dict]:
    """The search-cost comparison at step `steps`: exact (fast) is the reference."""
    prefix = "f-bench-" if model == "falcon-h1-tiny" else "m-heads"
    names = [n for n in runs if n.startswith(prefix) and runs[n]["kind"] in ("bench", "curve") and runs[n]["model"] == model]
    exact = next(runs[n] for n in names if runs[n]["method"] == "fast")
    n = min(steps, len(exact["steps"]), *(len(runs[k]["steps"]) for k in names))
    ref = exact["steps"][n - 1]
    rows = []
    for name in sorted(names, key=lambda k: (runs[k]["method"] != "fast", runs[k]["method"], runs[k]["shortlist"] or 0)):
        run = runs[name]
        at = run["steps"][n - 1]
        same = sum(a["candidate"] == b["candidate"] for a, b in zip(run["steps"][:n], exact["steps"][:n]))
        label = run["method"] + (f" (shortlist {run['shortlist']})" if run["method"] == "ranked" else "")
        label += " (keep 0.25)" if run["method"] == "halving" else ""
        rows.append({
            "method": label, "steps": n, "seconds": at["seconds"], "evaluations": at["evaluations"],
            "speedup": ref["seconds"] / at["seconds"], "same_decisions_pct": same / n * 100,
            "same_set_pct": len(set_of(run, n) & set_of(exact, n)) / n * 100,
            "final_ppl": at["ppl"], "ppl_gap_pct": (at["ppl"] / ref["ppl"] - 1) * 100,
            "pct_removed": at["pct_removed"],
        })
    return rows


def _same_curve(a: dict, b: dict) -> bool:
    """Equal PPL at every step (removing an emptied layer's last branch = removing the layer)."""
    pa, pb = [s["ppl"] for s in a["steps"]], [s["ppl"] for s in b["steps"]]
    return len(pa) == len(pb) and all(abs(x / y - 1) < 1e-6 for x, y in zip(pa, pb))


def set_of(run: dict, n: int) -> set:
    return set(Counter(s["candidate"] for s in run["steps"][:n]).items())


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem: json.loads(p.read_text()) for p in sorted(args.runs.glob("*.json"))}
    for model in MODELS:
        curves = [n for n in LABELS if n in runs and runs[n]["model"] == model]
        if not curves:
            continue
        same = [n for n in curves if n.endswith("-branch-layer") and n.replace("-layer", "") in runs
                and _same_curve(runs[n], runs[n.replace("-layer", "")])]
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
        summary = {"model": model, "calibration": {**CALIB, "seed": SEED, "data": "tinystories train.txt"},
                   "held_out": {**HELD_OUT, "data": "tinystories eval.txt"}, "curves": {}, "cost": {}}
        for name in curves:
            run = runs[name]
            xs = [0.0] + [s["pct_removed"] for s in run["steps"]]
            ys = [run["ppl_original"]] + [s["ppl"] for s in run["steps"]]
            summary["curves"][name] = {
                "label": LABELS[name], "method": run["method"], "shortlist": run["shortlist"], "targets": run["targets"],
                "channels": run["channels"], "stopped_by": run["stopped_by"], "seconds": round(run["seconds"], 1),
                "evaluations": run["evaluations"], "device": run["device"].get("device"), "ppl_original": run["ppl_original"],
                "steps": [[s["candidate"], round(s["pct_removed"], 3), round(s["ppl"], 4)] for s in run["steps"]],
                "held_out": run["held_out"],
            }
            if name in same:
                summary["curves"][name]["same_decisions_as"] = name.replace("-layer", "")
                continue
            label = LABELS[name] + (" (with layer added: the same curve)" if f"{name}-layer" in same else "")
            label += " — exact" if run["method"] == "fast" else ""
            style = dict(linestyle="--" if run["method"] != "fast" else "-", marker="." if len(xs) < 40 else None)
            line, = ax.plot(xs, ys, label=label, **style)
            held = sorted((int(k), v) for k, v in run["held_out"].items())
            bx.plot([xs[k] for k, _ in held], [v for _, v in held], color=line.get_color(), marker=".", linestyle=style["linestyle"])
        for axis, what in ((ax, "calibration PPL (train, 16 x 128: what the search minimises)"),
                           (bx, f"held-out PPL (tinystories eval, {HELD_OUT['windows']} x {HELD_OUT['seq_len']})")):
            axis.set_xlabel("% parameters removed")
            axis.set_ylabel(what)
            axis.grid(True, alpha=0.3)
        fig.legend(loc="lower center", ncol=2, fontsize=9, frameon=False)
        fig.suptitle(f"{model}: greedy pruning at three granularities, training-free (each point one greedy step)")
        target = ROOT / "docs/study" / model
        target.mkdir(parents=True, exist_ok=True)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        fig.savefig(target / "granularity.png", dpi=110)
        try:
            summary["cost"]["gpu"] = cost_rows(runs, model, BENCH_STEPS)
        except StopIteration:
            pass
        ranked = runs.get(f"cpu-{model}-ranked8")
        exact = runs.get(f"cpu-{model}-fast-sample")
        if ranked or exact:
            summary["cost"]["cpu"] = {"machine": (ranked or exact)["device"]}
            if ranked:
                summary["cost"]["cpu"]["ranked8"] = {
                    "steps": len(ranked["steps"]), "seconds": round(ranked["seconds"], 1), "evaluations": ranked["evaluations"],
                    "seconds_per_step": round(ranked["seconds"] / max(1, len(ranked["steps"])), 1),
                    "decisions": [s["candidate"] for s in ranked["steps"]], "final_ppl": ranked["steps"][-1]["ppl"]}
            if exact:
                summary["cost"]["cpu"]["exact"] = {k: exact[k] for k in ("candidates", "sample", "rebase_s", "seconds_per_evaluation", "projected_step_1_s")}
        (target / "granularity.json").write_text(json.dumps(summary, indent=1))
        print("wrote", target / "granularity.png", target / "granularity.json")
        print(markdown(summary))


def _at(curve: dict, pct: float) -> tuple | None:
    """At the first step with at least `pct`% removed: (% removed, calibration PPL), and the
    held-out PPL of the first step with a held-out reading at or past it: (% removed, PPL)."""
    steps = curve["steps"]
    first = next((i for i, s in enumerate(steps, 1) if s[1] >= pct - 1e-9), None)
    if first is None:
        return None
    held = min((int(k) for k in curve["held_out"] if int(k) >= first), default=None)
    return (steps[first - 1][1], steps[first - 1][2]), (steps[held - 1][1], curve["held_out"][str(held)]) if held else None


def markdown(summary: dict) -> str:
    """The write-up's tables for one model."""
    lines = [f"### {summary['model']}", "", "| curve | method | steps | % removed (end) | calib PPL | held-out PPL | "
             "at ~10% (calib / held-out) | at ~20% | at ~28% | wall s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in summary["curves"].items():
        if "same_decisions_as" in c:
            continue
        n = len(c["steps"])
        end = c["steps"][-1]
        cells = []
        for pct in (10, 20, 28):
            at = _at(c, pct)
            if at is None:
                cells.append("-")
                continue
            (pc, ppl), held = at
            cells.append(f"{ppl:.3f} / {held[1]:.3f}" + (f" ({pc:.1f}%)" if abs(held[0] - pc) < 1e-6 else f" ({pc:.1f}% / {held[0]:.1f}%)"))
        method = "exact (fast)" if c["method"] == "fast" else f"{c['method']} {c['shortlist'] or ''}".strip()
        lines.append(f"| {c['label']} | {method} | {n} | {end[1]:.1f} | {c['ppl_original']:.3f} → {end[2]:.3f} | "
                     f"{c['held_out']['0']:.3f} → {c['held_out'][str(n)]:.3f} | {' | '.join(cells)} | {c['seconds']:.0f} |")
    for where, rows in summary["cost"].items():
        lines += ["", f"cost ({where})", ""]
        if where == "gpu":
            lines += ["| method | steps | wall s | evaluations | speed-up vs exact | same decisions (in order / as a set) | calib PPL | gap vs exact |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            lines += [f"| {r['method']} | {r['steps']} | {r['seconds']:.1f} | {r['evaluations']} | {r['speedup']:.2f}x | "
                      f"{r['same_decisions_pct']:.0f}% / {r['same_set_pct']:.0f}% | {r['final_ppl']:.3f} | {r['ppl_gap_pct']:+.2f}% |" for r in rows]
        else:
            lines.append(f"machine: {rows['machine']}")
            lines += ["", "| method | measured | seconds a step |", "| --- | --- | ---: |"]
            if "ranked8" in rows:
                r = rows["ranked8"]
                lines.append(f"| ranked (shortlist 8) | {r['steps']} steps in {r['seconds']} s, {r['evaluations']} evaluations | {r['seconds_per_step']} |")
            if "exact" in rows:
                e = rows["exact"]
                lines.append(f"| fast (exact) | {e['sample']} of {e['candidates']} evaluations: {e['seconds_per_evaluation']:.2f} s each, "
                             f"rebase {e['rebase_s']:.1f} s | ~{e['projected_step_1_s']:.0f} (projected, step 1) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    dev = sub.add_parser("device")
    dev.add_argument("--models", type=Path, required=True)
    dev.add_argument("--data", type=Path, required=True)
    dev.add_argument("--out", type=Path, required=True)
    dev.add_argument("--jobs", default="", help=f"comma-separated, of {', '.join(JOBS)}")
    dev.add_argument("--budget", type=float, default=540, help="wall seconds for all jobs")
    cpu = sub.add_parser("cpu-bench")
    cpu.add_argument("--data", type=Path, default=ROOT / ".device/study_data.pt")
    cpu.add_argument("--out", type=Path, default=ROOT / "runs/study")
    cpu.add_argument("--steps", type=int, default=2)
    cpu.add_argument("--threads", type=int, default=2)
    cpu.add_argument("--sample", type=int, default=24, help="exact evaluations timed (spread over the layers)")
    pl = sub.add_parser("plot")
    pl.add_argument("--runs", type=Path, default=ROOT / "runs/study")
    args = parser.parse_args()
    {"prepare": prepare, "device": device_run, "cpu-bench": cpu_bench, "plot": plot}[args.command](args)


if __name__ == "__main__":
    main()
