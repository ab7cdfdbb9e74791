"""`prune-and-export`: prune → [recover] → export + compress every variant → eval → bench →
summary.json → report.

Variants are the recipe's model (`original`, IRs in ov-original/), the pruned checkpoint (`ov/`)
and, when the recipe has `recovery:`, the recovered one (`ov-recovered/`); each gets one IR
folder per precision. Every stage writes its output atomically and is skipped when it is already
there and newer than its inputs, so a killed run resumes and a regenerated input (a recovered
checkpoint, an IR) is not met by results of the old one; --force redoes them all."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from rich.console import Console

from .bench import ir_size, run_bench
from .cpu import runtime_defaults
from .errors import ShedderError
from .evaluation.run import evaluate
from .evaluation.runtime import open_model
from .export.compress import REPORT_FILE as COMPRESS_REPORT
from .export.compress import CompressOptions, compress_ir
from .export.exporter import REPORT_FILE as EXPORT_REPORT
from .export.exporter import export_checkpoint
from .export.parity import prompts
from .io import read_json, write_json
from .recipe import EvalSpec, ExportSpec, Recipe
from .report import IR_DIRS, PRECISIONS, write_report
from .validate import check_eval

console = Console(stderr=True)
LLAMA_CPP_BENCH = "bench-llamacpp.json"
OUTPUTS = (*IR_DIRS.values(), "eval", "bench.json", LLAMA_CPP_BENCH, "gguf", "summary.json", "report.md", "report.json", "search_path.png", "pareto.png")


def written_at(path: Path) -> int:
    """When an input was last written: an IR folder's model file, a checkpoint's config.json."""
    for marker in (path / "openvino_model.xml", path / "config.json"):
        if marker.is_file():
            return marker.stat().st_mtime_ns
    return path.stat().st_mtime_ns


def up_to_date(target: Path, *inputs: Path) -> bool:
    return target.is_file() and all(written_at(path) <= target.stat().st_mtime_ns for path in inputs)


def _compress_options(spec: ExportSpec, precision: str) -> CompressOptions:
    if precision == "int8":
        return CompressOptions(mode=spec.int8_mode)
    return CompressOptions(mode=spec.int4_mode, group_size=spec.group_size, ratio=spec.ratio)


def export_variant(source: Path, root: Path, spec: ExportSpec) -> dict[str, Path]:
    """fp32 IR (always: the others are compressed from it) + the recipe's compressed precisions."""
    irs = {"fp32": root / "fp32"}
    if not up_to_date(irs["fp32"] / EXPORT_REPORT, source):
        console.print(f"export: {source} → {irs['fp32']}")
        export_checkpoint(source, irs["fp32"], strict=spec.strict, parity=spec.parity)
    for precision in spec.variants:
        if precision != "fp32":
            irs[precision] = root / precision
            if not up_to_date(irs[precision] / COMPRESS_REPORT, irs["fp32"]):
                console.print(f"compress: {irs[precision]}")
                compress_ir(irs["fp32"], irs[precision], _compress_options(spec, precision))
    return {p: irs[p] for p in PRECISIONS if p in spec.variants}


def evaluate_to(target: Path, model: Path, spec: EvalSpec, zeroshot: bool = True) -> dict:
    """One eval record (PPL on the recipe's held-out text, zero-shot tasks), cached at `target`."""
    if not up_to_date(target, model):
        console.print(f"eval: {model} → {target}")
        record = evaluate(model, spec.datasets, spec.tasks if zeroshot else [], spec.data_root, spec.seq_len,
                          spec.windows, spec.limit, precision=runtime_defaults().precision)
        write_json(target, record)
    return read_json(target)


def max_logits_diff(ir: Path, reference, ids: torch.Tensor) -> float:
    """Prefill logits of an IR vs its torch checkpoint, both through evaluation.runtime."""
    return float((open_model(ir).logits(ids) - reference.logits(ids)).abs().max())


def summarize(out: Path, source: Path, result: dict, irs: dict[str, Path], spec: EvalSpec) -> dict:
    """summary.json: the pruned IRs' size, held-out PPL and logits diff vs torch."""
    torch_record = evaluate_to(out / "eval" / "pruned-torch.json", source, spec, zeroshot=False)
    reference = open_model(source)
    short, _ = prompts(reference.tokenizer, len(reference.tokenizer))
    ids = torch.from_numpy(short)[None]
    first = spec.datasets[0] if spec.datasets else None
    variants = {}
    for precision, ir in irs.items():
        record = read_json(out / "eval" / f"pruned-{precision}.json")
        variants[precision] = {
            "ir_bytes": ir_size(ir / "openvino_model.xml"),
            "ppl": record["ppl"][first]["ppl"] if first else None,
            "parity_max_abs_diff": max_logits_diff(ir, reference, ids),
        }
    timings = {"export_seconds": read_json(irs["fp32"] / EXPORT_REPORT)["export_seconds"]} if "fp32" in irs else {}
    timings |= {f"compress_seconds_{p}": read_json(ir / COMPRESS_REPORT)["compress_seconds"] for p, ir in irs.items() if p != "fp32"}
    return {
        "source_checkpoint": str(source),
        "removed": [row["candidate"] for row in result["removed"]],
        "params": result["params"],
        "eval": {"data_root": str(spec.data_root), "datasets": spec.datasets, "seq_len": spec.seq_len,
                 "windows": spec.windows, "ppl_torch": {k: v["ppl"] for k, v in torch_record.get("ppl", {}).items()}},
        "timings": timings,
        "variants": variants,
    }


def bench_llamacpp(out: Path, sources: dict[str, Path], bench) -> None:
    """llama.cpp's speed on each variant's checkpoint at Q8_0 / Q4_0 (the report's "vs llama.cpp");
    a checkpoint llama.cpp cannot convert (our pruned model types) is a row saying why."""
    from .llamacpp import LlamaCpp

    llama = LlamaCpp.at(bench.llama_cpp)
    rows: dict = {}
    for variant, checkpoint in sources.items():
        console.print(f"bench: llama.cpp on {variant} ({checkpoint})")
        try:
            files = llama.to_gguf(checkpoint, out / "gguf" / variant)
        except ShedderError as error:
            rows[variant] = {"skipped": str(error)}
            continue
        for tag, gguf in files.items():
            rows[f"{variant} {tag}"] = llama.bench(gguf, bench.threads or runtime_defaults().resolved_threads(),
                                                   bench.repeats, tuple(bench.lengths), bench.new_tokens)
    write_json(out / LLAMA_CPP_BENCH, {"rows": rows})


def run_prune_and_export(recipe: Recipe, force: bool = False) -> dict:
    from .pipeline import run_prune

    out = recipe.output
    spec, evaluation = recipe.export or ExportSpec(), recipe.eval or EvalSpec()
    check_eval(evaluation, recipe.model)  # the defaults when the recipe has no eval section
    result = run_prune(recipe, force=force)
    if "rank" in result:  # under torchrun the other ranks only searched: rank 0 goes on alone
        return result
    if force:
        for name in OUTPUTS:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    sources = {"original": recipe.model, "pruned": out / "pruned"}
    if recipe.recovery:
        from .recovery import run_recovery

        run_recovery(recipe, force=force)
        sources["recovered"] = out / "recovered"

    irs = {variant: export_variant(source, out / IR_DIRS[variant], spec) for variant, source in sources.items()}
    for variant, by_precision in irs.items():
        for precision, ir in by_precision.items():
            evaluate_to(out / "eval" / f"{variant}-{precision}.json", ir, evaluation)

    rows = [(f"{v} {p}", ir) for v, by_precision in irs.items() for p, ir in by_precision.items()]
    if evaluation.bench and not up_to_date(out / "bench.json", *(ir for _, ir in rows)):
        bench, defaults = evaluation.bench, runtime_defaults()
        console.print(f"bench: {len(rows)} IRs, prefill {bench.lengths}, {bench.new_tokens} new tokens")
        write_json(out / "bench.json", run_bench(
            [ir for _, ir in rows], [label for label, _ in rows], bench.threads or defaults.resolved_threads(),
            precision=defaults.precision, prompt_lengths=tuple(bench.lengths), new_tokens=bench.new_tokens, repeats=bench.repeats))
    if evaluation.bench and evaluation.bench.llama_cpp and not (out / LLAMA_CPP_BENCH).is_file():
        bench_llamacpp(out, sources, evaluation.bench)

    console.print("report: summary, tables and plots")
    summary_path = out / "summary.json"
    if not (up_to_date(summary_path, *irs["pruned"].values()) and set(read_json(summary_path)["variants"]) == set(irs["pruned"])):
        write_json(summary_path, summarize(out, sources["pruned"], result, irs["pruned"], evaluation))
    summary = read_json(summary_path)
    report = write_report(out)
    for name, row in summary["variants"].items():
        ppl = "–" if row["ppl"] is None else f"{row['ppl']:.3f}"
        console.print(f"pruned {name}: {row['ir_bytes'] / 2**20:.1f} MB  PPL {ppl}  max |Δlogits| {row['parity_max_abs_diff']:.1e}")
    console.print(f"report: {report}")
    return summary
