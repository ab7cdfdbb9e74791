"""`prune-and-export`: prune → [recover] → export → compress → summary → [report].

Writes OUTPUT/ov/<variant>/ (each an optimum-intel-loadable IR folder) and OUTPUT/summary.json.
Every stage writes its folder atomically and is skipped when already there; --force redoes."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from .adapters import adapter_for
from .checkpoints import load_checkpoint, load_tokenizer
from .data import load_windows
from .export.compress import CompressOptions, compress_ir
from .export.exporter import REPORT_FILE as EXPORT_REPORT
from .export.exporter import export_checkpoint
from .export.parity import NEW_TOKENS, prompts, torch_greedy
from .export.runtime import F32, StatefulIR
from .io import read_json, write_json
from .recipe import DataSpec, ExportSpec, Recipe

console = Console(stderr=True)
EVAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "eval.txt"


def perplexity(logits_fn, windows: torch.Tensor) -> float:
    """Token-level PPL over windows, each scored from zero state."""
    nll, count = 0.0, 0
    for window in windows:
        logits = torch.as_tensor(logits_fn(window[None]))[0, :-1].float()
        nll += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        count += window.numel() - 1
    return math.exp(nll / count)


def ir_figures(ir_dir: Path, adapter, tokenizer, windows: torch.Tensor) -> dict:
    """PPL (f32 hint), logits diff and greedy agreement vs torch, decode tok/s (plugin defaults)."""
    reference = StatefulIR(ir_dir, F32)

    def ir_logits(ids):
        reference.reset()
        return reference(ids.numpy())

    short, _ = prompts(tokenizer, adapter.model.config.vocab_size)
    with torch.no_grad():
        diff = float(np.abs(ir_logits(torch.from_numpy(short)[None]) - adapter.logits(torch.from_numpy(short)[None]).numpy()).max())
    tokens, _ = reference.greedy(short, NEW_TOKENS)
    _, tok_s = StatefulIR(ir_dir).greedy(short, 64)
    return {
        "ir_bytes": (ir_dir / "openvino_model.bin").stat().st_size,
        "ppl": perplexity(ir_logits, windows),
        "parity_max_abs_diff": diff,
        "greedy_equal_torch": tokens == torch_greedy(adapter, short, NEW_TOKENS),
        "decode_tok_s": round(tok_s, 1),
    }


def _variant_options(spec: ExportSpec, variant: str) -> CompressOptions:
    if variant == "int8":
        return CompressOptions(mode=spec.int8_mode)
    return CompressOptions(mode=spec.int4_mode, group_size=spec.group_size, ratio=spec.ratio)


def run_prune_and_export(recipe: Recipe, force: bool = False) -> dict:
    from .pipeline import run_prune

    out = recipe.output
    spec = recipe.export or ExportSpec()
    result = run_prune(recipe, force=force)
    source = out / "pruned"
    if getattr(recipe, "recovery", None):
        from .recovery import run_recovery

        run_recovery(recipe, force=force)
        source = out / "recovered"

    ov_root, summary_path = out / "ov", out / "summary.json"
    if force:
        shutil.rmtree(ov_root, ignore_errors=True)
        summary_path.unlink(missing_ok=True)
    fp32 = ov_root / "fp32"
    if not (fp32 / EXPORT_REPORT).is_file():
        console.print(f"export: {source} → {fp32}")
        export_checkpoint(source, fp32, strict=spec.strict)
    timings = {"export_seconds": read_json(fp32 / EXPORT_REPORT)["export_seconds"]}
    for variant in spec.variants:
        if variant != "fp32" and not (ov_root / variant / "shedder_compress.json").is_file():
            console.print(f"compress: {variant}")
            compress_ir(fp32, ov_root / variant, _variant_options(spec, variant))
        if variant != "fp32":
            timings[f"compress_seconds_{variant}"] = read_json(ov_root / variant / "shedder_compress.json")["compress_seconds"]

    if summary_path.is_file() and set(read_json(summary_path)["variants"]) == set(spec.variants):
        console.print(f"prune-and-export: already done ({summary_path}); --force redoes it")
        return read_json(summary_path)

    model = load_checkpoint(source, "float32", "cpu")
    tokenizer = load_tokenizer(source)
    adapter = adapter_for(model, str(source))
    eval_spec = spec.eval_data or DataSpec(path=EVAL_TEXT)
    windows = load_windows(eval_spec, tokenizer, recipe.seed, num_samples=None, seq_len=spec.eval_seq_len)[: spec.eval_windows]
    with torch.no_grad():
        ppl_torch = perplexity(adapter.logits, windows)
    variants = {}
    for variant in spec.variants:
        console.print(f"evaluate: {variant}")
        variants[variant] = ir_figures(ov_root / ("fp32" if variant == "fp32" else variant), adapter, tokenizer, windows)
    summary = {
        "source_checkpoint": str(source),
        "removed": [row["candidate"] for row in result["removed"]],
        "params": result["params"],
        "eval": {"data": str(eval_spec.path), "windows": int(windows.shape[0]), "seq_len": spec.eval_seq_len, "ppl_torch": ppl_torch},
        "parity_fp32": read_json(fp32 / EXPORT_REPORT)["parity"],
        "timings": timings,
        "variants": variants,
    }
    write_json(summary_path, summary)
    if importlib.util.find_spec("shedder_ov.report") is not None:
        from .report import write_report

        write_report(out)
    for name, row in variants.items():
        console.print(f"{name}: {row['ir_bytes'] / 1e6:.1f} MB  PPL {row['ppl']:.3f} (torch {ppl_torch:.3f})  {row['decode_tok_s']} tok/s")
    return summary
