"""The `shedder-ov` command line. Each stage lives in its own module; this file only wires
them up and turns bad input (ShedderError) into one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Callable

import typer

from .errors import ShedderError
from .io import exclusive

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mamba-Shedder pruning → OpenVINO → NNCF.")


def one_line_errors(command: Callable) -> Callable:
    """Bad input ends the command with one clear line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ShedderError as error:
            typer.echo(f"error: {error}", err=True)
            sys.exit(2)

    return wrapper


@app.callback()
def _commands() -> None:
    """Mamba-Shedder pruning of Mamba-family models → OpenVINO IR → NNCF weight compression."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "fast path is not available" notice is ours to give
    hf_logging.disable_progress_bar()  # weight loading is quick; our own bars show the long work


def run_locked(stage: Callable, recipe: Path, **options) -> None:
    """Run a recipe-driven stage while holding the lock on its output dir. Bad input leaves no
    trace: the lock file, and the output dir if this call made it and nothing else is in it, go again."""
    from .recipe import load_recipe

    spec = load_recipe(recipe)
    lock = spec.output / ".lock"
    created = [path for path in (lock, spec.output) if not path.exists()]
    try:
        with exclusive(spec.output):
            stage(spec, **options)
    except ShedderError:
        for path in created:
            with contextlib.suppress(OSError):  # a dir the stage wrote into stays
                path.rmdir() if path.is_dir() else path.unlink()
        raise


RecipeArg = typer.Argument(..., help="recipe YAML", show_default=False)


def require_positive(**options: int | None) -> None:
    """Counts and sizes given on the command line are at least 1 (one line, not a usage box)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ShedderError(f"--{name.replace('_', '-')}: {value} (must be at least 1)")


@app.command()
@one_line_errors
def prune(
    recipe: Path = RecipeArg,
    force: bool = typer.Option(False, "--force", help="discard an existing different run in the output dir"),
    resume: bool = typer.Option(False, "--resume", help="continue a run whose recipe changed only in harmless ways"),
) -> None:
    """Search (or apply a removal list) and write the physically pruned checkpoint."""
    from .pipeline import run_prune

    run_locked(run_prune, recipe, force=force, resume=resume)


@app.command()
@one_line_errors
def recover(
    recipe: Path = RecipeArg,
    force: bool = typer.Option(False, "--force", help="discard a finished or half-done recovery in the output dir"),
) -> None:
    """Recovery-tune OUTPUT/pruned/ (LoRA, merged, or full fine-tuning) into OUTPUT/recovered/."""
    from .recovery import run_recovery

    run_locked(run_recovery, recipe, force=force)


@app.command("bench-search")
@one_line_errors
def bench_search(
    recipe: Path = RecipeArg,
    methods: str = typer.Option("naive,fast,halving", help="comma-separated search methods, exact reference first"),
    steps: int = typer.Option(2, help="greedy steps per method"),
    json_out: Path = typer.Option(None, "--json", help="also write the rows as JSON"),
) -> None:
    """Time search methods on the recipe's model, calibration data and device; compare decisions."""
    from typing import get_args

    from .recipe import SearchMethod, load_recipe
    from .search.benchmark import run_bench
    from .validate import check_recipe

    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in get_args(SearchMethod)]
    if unknown or not names:
        raise ShedderError(f"--methods: {unknown[0] if unknown else 'none given'} (allowed: {', '.join(get_args(SearchMethod))})")
    check_recipe(load_recipe(recipe))
    run_bench(recipe, names, steps, json_out)


@app.command("eval")
@one_line_errors
def eval_(
    model: Path = typer.Argument(..., help="checkpoint folder or OpenVINO IR (folder or .xml)", show_default=False),
    ppl: str = typer.Option("wikitext2,tinystories,alpaca", help="PPL datasets (comma-separated, or none)"),
    tasks: str = typer.Option(
        "lambada_openai,hellaswag,piqa,arc_easy,arc_challenge,winogrande,openbookqa", help="zero-shot tasks, or none"
    ),
    data_root: Path = typer.Option(Path("../shared/data"), help="folder with tinystories/, wikitext2/, alpaca/, eval/"),
    seq_len: int = typer.Option(512, help="PPL window length"),
    ppl_windows: int = typer.Option(None, help="first N PPL windows per dataset (default: all)"),
    limit: int = typer.Option(None, help="first N items per zero-shot task (default: all)"),
    device: str = typer.Option("CPU", help="OpenVINO device for IRs"),
    precision: str = typer.Option(None, help="OpenVINO INFERENCE_PRECISION_HINT, or prompt/decode hints such as f32/bf16 (default: this CPU's, shedder_ov/cpu.py)"),
    batch_size: int = typer.Option(4),
    chunk: int = typer.Option(None, min=1, help="IRs: feed each window in calls of N tokens (1: decode; tests state precision)"),
    json_out: Path = typer.Option(None, "--json", help="write the record here"),
) -> None:
    """Perplexity on local text and zero-shot accuracy (lm-eval, offline) of a checkpoint or IR."""
    import json

    from .cpu import runtime_defaults
    from .evaluation.ppl import DATASETS
    from .evaluation.run import evaluate, parse_list
    from .evaluation.zeroshot import PAPER_TASKS
    from .io import write_json
    from .runtime import compile_precisions, ir_file
    from .validate import check_checkpoint

    require_positive(seq_len=seq_len, ppl_windows=ppl_windows, limit=limit, batch_size=batch_size)
    precision = precision or runtime_defaults().precision
    compile_precisions(precision, "--precision")
    if ir_file(model) is None and (model / "config.json").is_file():  # a torch checkpoint: its files, by their headers
        check_checkpoint(model)
    record = evaluate(model, parse_list(ppl, DATASETS, "--ppl"), parse_list(tasks, PAPER_TASKS, "--tasks"), data_root,
                      seq_len, ppl_windows, limit, device, precision, batch_size, chunk)
    if json_out:
        write_json(json_out, record)
    typer.echo(json.dumps(record, indent=2))


@app.command("lm-eval-tasks")
@one_line_errors
def lm_eval_tasks(
    out_dir: Path = typer.Argument(..., help="folder to write (lm_eval --include_path OUT_DIR)", show_default=False),
    tasks: str = typer.Option("lambada_openai,piqa,arc_easy,arc_challenge,winogrande,openbookqa", help="zero-shot tasks"),
    data_root: Path = typer.Option(Path("../shared/data"), help="folder with eval/"),
) -> None:
    """The local zero-shot tasks as an include folder for lm-eval's own CLI (e.g. `lm_eval --model openvino`)."""
    from .evaluation.run import parse_list
    from .evaluation.zeroshot import PAPER_TASKS, write_lm_eval_tasks

    written = write_lm_eval_tasks(out_dir, data_root / "eval", parse_list(tasks, PAPER_TASKS, "--tasks"))
    typer.echo(f"{out_dir}: {', '.join(written)} (lm_eval --include_path {out_dir} --tasks {','.join(written)})")


@app.command("bench")
@one_line_errors
def bench(
    irs: list[Path] = typer.Argument(..., help="IR folders; ratios are against the first", show_default=False),
    labels: str = typer.Option(None, help="comma-separated labels (report reads '<variant> <precision>')"),
    device: str = typer.Option("CPU", help="OpenVINO device (CPU, GPU)"),
    lengths: str = typer.Option("128,512,2048", help="prefill prompt lengths; the first is also the decode prompt"),
    new_tokens: int = typer.Option(128, help="decode steps (batch 1)"),
    repeats: int = typer.Option(3),
    threads: int = typer.Option(None, help="INFERENCE_NUM_THREADS and bandwidth-test threads (default: this CPU's, shedder_ov/cpu.py)"),
    precision: str = typer.Option(None, help="INFERENCE_PRECISION_HINT, also the stored state precision, or prompt/decode hints such as f32/bf16 (default: this CPU's, shedder_ov/cpu.py; docs/speed.md)"),
    profile: bool = typer.Option(False, help="also top ops of the longest prefill and a decode step (OV performance counters)"),
    dynamic: bool = typer.Option(False, help="one dynamic-shape compile per IR, as OVModelForCausalLM runs it (default: "
                                 "static-shape compiles for decode steps and 512-token prefill pieces)"),
    genai: bool = typer.Option(False, help="also run each IR through openvino.genai's LLMPipeline (row after its own)"),
    json_out: Path = typer.Option(None, "--json", help="write the results here"),
) -> None:
    """Prefill latency, TTFT, decode tok/s, compile time, IR size and peak RSS of IRs, side by side."""
    from .bench import format_table, run_bench
    from .cpu import runtime_defaults
    from .io import write_json
    from .runtime import compile_precisions, ir_file, read_ir
    from .validate import check_lengths

    defaults = runtime_defaults()
    threads, precision = threads or defaults.resolved_threads(), precision or defaults.precision
    compile_precisions(precision, "--precision")
    names = [label.strip() for label in labels.split(",")] if labels else None
    if names and len(names) != len(irs):
        raise ShedderError(f"--labels: {len(names)} labels for {len(irs)} IRs")
    try:
        prompt_lengths = tuple(int(n) for n in lengths.split(","))
    except ValueError:
        raise ShedderError(f"--lengths: {lengths!r} is not a comma-separated list of integers") from None
    require_positive(new_tokens=new_tokens, repeats=repeats, threads=threads, lengths=min(prompt_lengths))
    for ir in irs:  # a broken IR or a prompt above its limit: one line before any timing
        read_ir(ir)
        check_lengths(prompt_lengths, ir_file(ir).parent, "--lengths")
    result = run_bench(irs, names, threads, device=device, prompt_lengths=prompt_lengths, new_tokens=new_tokens,
                       repeats=repeats, precision=precision, profile=profile, specialize=[not dynamic] * len(irs), genai=genai)
    if json_out:
        write_json(json_out, result)
    typer.echo(format_table(result))


@app.command("report")
@one_line_errors
def report(output_dir: Path = typer.Argument(..., help="a run's output dir", show_default=False)) -> None:
    """Markdown + JSON + PNG study report of whatever the output dir holds (missing parts listed)."""
    from .report import write_report

    if not output_dir.is_dir():
        raise ShedderError(f"{output_dir}: output dir not found")
    typer.echo(write_report(output_dir))


@app.command()
@one_line_errors
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder (original or pruned)", show_default=False),
    out_dir: Path = typer.Argument(..., help="IR folder to write", show_default=False),
    strict: bool = typer.Option(False, "--strict", help="a parity mismatch with torch is an error"),
    no_parity: bool = typer.Option(
        False, "--no-parity", help="skip the parity check (docs/memory.md: what it holds at each size)"
    ),
    max_memory: float = typer.Option(
        None, "--max-memory", min=1, help="GiB this export may hold (default: what the machine has free); the "
        "parity check runs the IR in layer groups where one whole compile would not fit", show_default=False,
    ),
) -> None:
    """Export to a stateful OpenVINO IR (optimum-intel loadable) and check parity with torch."""
    import json

    from .export.exporter import export_checkpoint
    from .export.phases import limit_memory
    from .validate import check_checkpoint

    check_checkpoint(checkpoint)
    if max_memory:
        limit_memory(int(max_memory * 2**30))
    typer.echo(json.dumps(export_checkpoint(checkpoint, out_dir, strict=strict, parity=not no_parity), indent=2))


@app.command()
@one_line_errors
def compress(
    ir_dir: Path = typer.Argument(..., help="exported IR folder", show_default=False),
    out_dir: Path = typer.Argument(..., help="compressed IR folder to write", show_default=False),
    mode: str = typer.Option("int8_asym", help="int8_sym | int8_asym | int4_sym | int4_asym"),
    group_size: int = typer.Option(None, help="int4 group size (must divide the hidden size; -1: per-channel)"),
    ratio: float = typer.Option(None, help="share of int4 MatMuls in int4 modes (rest int8)"),
    awq: bool = typer.Option(False, "--awq", help="activation-aware scaling (int4, needs --dataset)"),
    scale_estimation: bool = typer.Option(False, "--scale-estimation", help="int4, needs --dataset"),
    gptq: bool = typer.Option(False, "--gptq", help="not applicable to Mamba (refused)"),
    lora_correction: bool = typer.Option(False, "--lora-correction", help="not applicable to Mamba (refused)"),
    compress_conv: bool = typer.Option(False, "--compress-conv", help="also int8 the depthwise conv1d (default: float)"),
    dataset: str = typer.Option(None, help="recipe YAML (its calibration) or a text file, for data-aware modes"),
) -> None:
    """NNCF weight compression of an IR into its own loadable folder."""
    import json

    from .export.compress import CompressOptions, compress_ir

    options = CompressOptions(
        mode=mode, group_size=group_size, ratio=ratio, awq=awq, scale_estimation=scale_estimation, gptq=gptq,
        lora_correction=lora_correction, compress_conv=compress_conv, dataset=dataset,
    )
    typer.echo(json.dumps(compress_ir(ir_dir, out_dir, options), indent=2))


@app.command("prune-and-export")
@one_line_errors
def prune_and_export(
    recipe: Path = RecipeArg,
    force: bool = typer.Option(False, "--force", help="redo every stage"),
) -> None:
    """prune → [recover] → export → compress (recipe `export:` variants) → OUTPUT/summary.json."""
    from .workflow import run_prune_and_export

    run_locked(run_prune_and_export, recipe, force=force)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    main()
