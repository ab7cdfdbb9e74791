"""The `recover` stage: a short fine-tune that brings back what removal cost (Mamba-Shedder's
recovery), LoRA adapters merged into the weights or full fine-tuning.

Input OUTPUT/pruned/ (from `prune`); outputs OUTPUT/recovered/ (a plain checkpoint of the same
pruned architecture, so export needs nothing new) and OUTPUT/recovery/result.json with the
held-out PPL before and after. A killed run resumes from OUTPUT/recovery/checkpoint.pt."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from .adapters import FamilyAdapter, adapter_for
from .checkpoints import DTYPES, load_checkpoint, load_tokenizer, resolve_device, stored_dtype
from .data import load_windows
from .errors import ShedderError
from .io import read_json, write_json
from .pipeline import save_checkpoint
from .recipe import Recipe, RecoverySpec
from .search import PerplexityScorer
from .training import train
from .validate import check_recovery_inputs

console = Console(stderr=True)


def lora_targets(adapter: FamilyAdapter, spec: RecoverySpec) -> list[str]:
    """The recipe's LoRA targets, or the family's defaults that the pruned model still has (a
    pruned hybrid may have lost every MLP, say)."""
    valid = adapter.lora_target_choices()
    targets = spec.lora.target_modules or [t for t in adapter.lora_targets if t in valid]
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise ShedderError(
            f"recovery.lora.target_modules: {', '.join(unknown)} not in a {adapter.family} model "
            f"(valid: {', '.join(valid)})"
        )
    return targets


def prepare(model: nn.Module, adapter: FamilyAdapter, spec: RecoverySpec) -> nn.Module:
    """The module whose trainable parameters are tuned: `model` itself (full), or a PEFT
    wrapper of its residual blocks with LoRA injected in place, so the adapter's forward runs
    through it. PEFT wraps the blocks, not the model, because it refuses LoRA on out_proj for
    Mamba model types: the transformers CUDA path bypasses that module. Our forward calls it
    and the adapters are merged before saving, so that path never sees them."""
    if spec.method == "full":
        return model.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=lora_targets(adapter, spec),
    )
    model.requires_grad_(False)
    return get_peft_model(adapter.tuned_layers, config)


def merged(model: nn.Module, module: nn.Module) -> nn.Module:
    """`model` with the LoRA adapters of `module` folded into its weights (full: as is)."""
    if module is not model:
        module.merge_and_unload()
    return model


def held_out_ppl(adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int, device) -> float:
    return PerplexityScorer(adapter, windows, batch_size, device, reuse_prefix=False).perplexity()


def fingerprint(recipe: Recipe, seed: int) -> dict:
    """What decides the tuned weights: the pruned model (its prune run) and the recovery settings."""
    spec = recipe.recovery.model_dump(mode="json", exclude={"save_every", "held_out", "held_out_windows"})
    spec["data"]["path"] = str(Path(spec["data"]["path"]).resolve())
    prune_result = recipe.output / "search" / "result.json"
    pruned_by = read_json(prune_result).get("fingerprint") if prune_result.is_file() else None
    return {"pruned_by": pruned_by, "recovery": spec, "seed": seed}


def _check_output(recipe: Recipe, current: dict, force: bool) -> None:
    recovery_dir = recipe.output / "recovery"
    if force:
        shutil.rmtree(recovery_dir, ignore_errors=True)
        shutil.rmtree(recipe.output / "recovered", ignore_errors=True)
        return
    run_path = recovery_dir / "run.json"
    if run_path.is_file() and read_json(run_path)["fingerprint"] != current:
        raise ShedderError(f"output: {recovery_dir} holds a recovery run with other settings; use --force to start over")


def run_recovery(recipe: Recipe, force: bool = False) -> dict:
    """Tune OUTPUT/pruned/ per `recipe.recovery`, save OUTPUT/recovered/, return the result."""
    spec = recipe.recovery
    if spec is None:
        raise ShedderError("recipe: no recovery section (add recovery: {method: lora, data: {path: ...}})")
    out = recipe.output
    pruned_dir, recovered_dir, recovery_dir = out / "pruned", out / "recovered", out / "recovery"
    result_path, checkpoint = recovery_dir / "result.json", recovery_dir / "checkpoint.pt"
    if not (pruned_dir / "config.json").is_file():
        raise ShedderError(f"output: {pruned_dir} has no pruned checkpoint; run `shedder-ov prune` with this recipe first")
    check_recovery_inputs(recipe, pruned_dir)
    seed = recipe.seed if spec.seed is None else spec.seed
    current = fingerprint(recipe, seed)
    _check_output(recipe, current, force)
    if result_path.is_file() and (recovered_dir / "config.json").is_file():
        result = read_json(result_path)
        if result.get("fingerprint") == current:
            console.print(f"recover: already done ({result_path}); --force redoes it")
            return result

    started = time.perf_counter()
    torch.manual_seed(seed)
    device = resolve_device(spec.device)
    model = load_checkpoint(pruned_dir, "float32", str(device))  # fp32 master weights
    tokenizer = load_tokenizer(pruned_dir, recipe.tokenizer)
    adapter = adapter_for(model, str(pruned_dir))
    train_windows = load_windows(spec.data, tokenizer, seed, seq_len=spec.seq_len)
    held_out = load_windows(spec.held_out, tokenizer, seed, seq_len=spec.seq_len)[: spec.held_out_windows]
    write_json(recovery_dir / "run.json", {"fingerprint": current})

    ppl_before = held_out_ppl(adapter, held_out, spec.batch_size, device)
    console.print(f"recover: held-out PPL before {ppl_before:.3f} ({len(held_out)} windows of {spec.seq_len})")
    module = prepare(model, adapter, spec)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    trained = train(adapter, module, train_windows, spec, seed, device, checkpoint, current)
    # stored as the pruned checkpoint is (16-bit for 16-bit sources: the recovered model is no
    # larger than the pruned one); its PPL is that of the weights as stored. Rounding the merged
    # weights to bf16 moved granitemoehybrid-tiny's held-out PPL 22.1171 → 22.1176.
    stored = DTYPES[stored_dtype(pruned_dir)]
    tuned = merged(model, module).eval().to(stored).to(DTYPES[recipe.dtype])
    ppl_after = held_out_ppl(adapter_for(tuned), held_out, spec.batch_size, device)
    save_checkpoint(tuned, tokenizer, recovered_dir, generation_source=pruned_dir, stored_as=stored)

    result = {
        "ppl_before": ppl_before,
        "ppl_after": ppl_after,
        "method": spec.method,
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in tuned.parameters()),
        "steps": trained.steps,
        "stored_dtype": str(stored).removeprefix("torch."),
        "resumed_from_step": trained.resumed_from,
        "train_windows": len(train_windows),
        "tokens_seen": trained.steps * spec.batch_size * spec.grad_accum * spec.seq_len,
        "held_out": {"path": str(spec.held_out.path), "windows": len(held_out), "seq_len": spec.seq_len},
        "loss_first": trained.losses[0] if trained.losses else None,
        "loss_last": trained.losses[-1] if trained.losses else None,
        "train_seconds": round(trained.seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),  # this invocation: load, PPLs, training, save
        "device": str(device),
        "fingerprint": current,
    }
    write_json(result_path, result)
    checkpoint.unlink(missing_ok=True)  # the recovered checkpoint supersedes it
    console.print(
        f"recover ({spec.method}): held-out PPL {ppl_before:.3f} → {ppl_after:.3f} in {trained.steps} steps; "
        f"checkpoint: {recovered_dir}"
    )
    return result
