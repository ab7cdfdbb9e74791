"""The `prune` stage: load → (search | apply a removal list) → physical removal → save.

Outputs under `recipe.output`: search/log.jsonl (one line per evaluation), search/result.json
and pruned/ (a save_pretrained folder + tokenizer). A finished stage is skipped on re-run; a
killed search resumes from its log; an output dir holding a different run is refused."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import yaml
from rich.console import Console
from rich.table import Table

from .adapters import HEADED, Candidate, adapter_for
from .checkpoints import DTYPES, load_checkpoint, load_tokenizer, read_removal_list, resolve_device, save_remote_code, stored_dtype
from .data import load_windows
from .errors import ShedderError
from .io import atomic_dir, atomic_file, read_json, write_json
from .recipe import EXACT_METHODS, Recipe
from .search import GreedySearch, PerplexityScorer, SearchLog, Stage, check_feasible
from .search.distributed import Ranks, bytes_digest, settings_digest, tensors_digest

console = Console(stderr=True)


def fingerprint(recipe: Recipe) -> dict:
    """What decides the search's scores (`scoring`) and where it stops (`stop`). A single-stage
    search without channel targets keeps the fingerprint it had before stages existed."""
    search = recipe.search
    calibration = recipe.calibration.model_dump(mode="json") if recipe.calibration else None
    if calibration:
        calibration["path"] = str(Path(calibration["path"]).resolve())
    scoring = {
        "model": str(recipe.model.resolve()),
        "calibration": calibration,
        "targets": search.all_targets,
        "dtype": recipe.dtype,
        "seed": recipe.seed,
        "apply": str(search.apply.resolve()) if search.apply else None,
        **_method_fingerprint(recipe),
    }
    if search.apply is not None and search.group_size is not None:
        scoring["channels"] = {"group_size": search.group_size, "channel_order": search.channel_order}
    elif search.stages is not None or search.group_size is not None:
        scoring["stages"] = [s.model_dump(mode="json", include={"targets", "group_size", "channel_order"}) for s in search.staged]
    if search.unshare:
        scoring["unshare"] = True
    if search.stages is not None:
        stop = [s.stop.model_dump() for s in search.stages]
    else:
        stop = search.stop.model_dump() if search.stop else None
    return {"scoring": scoring, "stop": stop}


def _method_fingerprint(recipe: Recipe) -> dict:
    """Exact methods share decisions (and logs); any other method is a different run."""
    method = recipe.search.method
    if method in EXACT_METHODS:
        return {}
    settings = {"halving": {"halving_keep": recipe.search.halving_keep}, "ranked": {"shortlist": recipe.search.shortlist}}
    return {"method": method, **settings.get(method, {})}


def _check_output(recipe: Recipe, force: bool, resume: bool) -> None:
    out = recipe.output
    log_path, result_path = out / "search" / "log.jsonl", out / "search" / "result.json"
    if force and out.exists():
        for sub in ("search", "pruned"):
            shutil.rmtree(out / sub, ignore_errors=True)
        return
    previous = None
    if result_path.exists():
        previous = read_json(result_path).get("fingerprint")
    elif log_path.exists():
        header = SearchLog(log_path).header()
        previous = header.get("fingerprint") if header else None
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        if not (out / "search").exists():
            raise ShedderError(f"output: {out} holds files that are not a shedder-ov run (choose another dir or --force)")
        return
    if previous is None:
        return
    current = fingerprint(recipe)
    if previous["scoring"] != current["scoring"]:
        changed = [k for k in current["scoring"] if previous["scoring"].get(k) != current["scoring"][k]]
        raise ShedderError(
            f"output: {out} holds a different run (recipe differs in {', '.join(changed)}); use --force to start over"
        )
    if previous["stop"] != current["stop"] and not resume:
        raise ShedderError(
            f"output: {out} holds a run with another stop rule ({previous['stop']}); "
            "use --resume to continue it with this one, or --force to start over"
        )


def _removal_from_list(recipe: Recipe, adapter) -> list[Candidate]:
    removed = read_removal_list(recipe.search.apply, adapter)
    if any(c.kind == "mlp_channels" for c in removed) and adapter.group_size is None:
        search = recipe.search
        if search.group_size is None or search.channel_order == "activation":
            raise ShedderError(
                f"search.group_size: {search.apply} removes MLP channel groups; give the group_size and the "
                "channel_order (first or weight_l1) its search used"
            )
        adapter.set_channel_groups(search.group_size)
        adapter.rank_channels(search.channel_order)
    try:
        for candidate in removed:
            adapter.validate(candidate)
    except ShedderError as error:
        raise ShedderError(f"search.apply: {recipe.search.apply}: {error}") from None
    for step, candidate in enumerate(removed):  # a head needs its branch, and one head per group stays
        if candidate.kind in HEADED and not adapter.available(candidate, removed[:step]):
            raise ShedderError(
                f"search.apply: {recipe.search.apply}: step {step + 1} removes {candidate.name}, which the steps before it "
                "already removed or left as the last head of its branch (its branch target removes it all)"
            )
    wrong = [c.name for c in removed if c.kind not in recipe.search.targets]
    if wrong:
        raise ShedderError(f"search.apply: {recipe.search.apply} removes {wrong[0]}, not among search.targets")
    return removed


def search_stages(recipe: Recipe, adapter, batches: Callable[[], list[torch.Tensor]]) -> list[Stage]:
    """The recipe's stages as candidate lists; a channel stage ranks its MLPs' channels on the
    scorer's `batches()` when it starts."""
    stages = []
    for spec in recipe.search.staged:
        setup = None
        if "mlp_channels" in spec.targets:
            adapter.set_channel_groups(spec.group_size)
            setup = partial(lambda order: adapter.rank_channels(order, batches()), spec.channel_order)
        stages.append(Stage(adapter.candidates(spec.targets), spec.stop, setup))
    return stages


def save_checkpoint(model, tokenizer, target: Path, generation_source: Path | None = None,
                    stored_as: torch.dtype | None = None) -> None:
    """save_pretrained + tokenizer (+ our modeling code for heterogeneous layers), atomically.
    `stored_as`: write the weights in this dtype (the source's 16-bit storage: lossless for
    weights that are copies of ones read from it, a rounding for recovered ones) while
    config.json keeps the model's dtype, so a default load computes as the source's does."""
    with atomic_dir(target) as tmp:
        if generation_source is not None and (generation_source / "generation_config.json").is_file():
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(generation_source)
        save_remote_code(model.config, tmp)
        compute = model.dtype
        if stored_as is not None and stored_as != compute:
            model.to(stored_as)
        model.save_pretrained(tmp)
        if model.dtype != compute:
            config = read_json(tmp / "config.json")
            config["dtype"] = str(compute).removeprefix("torch.")
            write_json(tmp / "config.json", config)
        tokenizer.save_pretrained(tmp)


def summary_table(result: dict) -> Table:
    table = Table(title=f"removed {len(result['removed'])} components")
    staged = any(row.get("stage", 1) > 1 for row in result["removed"])
    for column in ("step", *(["stage"] if staged else []), "candidate", "PPL", "Δ PPL %", "params removed"):
        table.add_column(column, justify="right")
    base = result["ppl_original"]
    table.add_row("0", *([""] if staged else []), "(original)", f"{base:.3f}" if base else "-", "", "0")
    for row in result["removed"]:
        ppl = row.get("ppl")
        delta = f"{(ppl / base - 1) * 100:+.2f}" if ppl and base else ""
        stage = [str(row.get("stage", 1))] if staged else []
        table.add_row(str(row["step"]), *stage, row["candidate"], f"{ppl:.3f}" if ppl else "-", delta, f"{row['params_removed']:,}")
    params = result["params"]
    lines = [f"params {params['original']:,} → {params['pruned']:,} (-{(1 - params['pruned'] / params['original']) * 100:.2f}%)"]
    if "stored_before_unshare" in params:
        lines.append(f"stored before unsharing: {params['stored_before_unshare']:,}")
    unshared = result.get("params_unshared")
    if unshared and unshared != {k: params[k] for k in ("original", "pruned")}:
        lines.append(f"unshared (every use of a block counted) {unshared['original']:,} → {unshared['pruned']:,}")
    table.caption = "\n".join(lines)
    return table


@torch.no_grad()
def pruned_vs_masked(adapter, pruned, removed: list[Candidate], length: int = 64) -> float:
    """Max |logits| difference of the physically pruned model and the masked one on seeded tokens:
    removal must change nothing but the storage."""
    ids = torch.randint(1, adapter.model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    masks = adapter.masked.copy()
    adapter.masked.clear()
    for candidate in removed:
        adapter.mask(candidate)
    masked = adapter.logits(ids.to(next(adapter.model.parameters()).device)).cpu()
    adapter.masked = masks
    return float((adapter_for(pruned).logits(ids.to(next(pruned.parameters()).device)).cpu() - masked).abs().max())


def check_inputs(recipe: Recipe) -> None:
    """Every recipe section against the model, every input file by its headers, before loading anything."""
    from .validate import check_recipe

    check_recipe(recipe)


def run_prune(recipe: Recipe, force: bool = False, resume: bool = False) -> dict:
    """Under torchrun every rank loads the model and data and runs the search (search/distributed.py);
    rank 0 alone checks and writes the output dir, and returns the result (the others: their rows)."""
    out = recipe.output
    result_path, pruned_dir = out / "search" / "result.json", out / "pruned"
    check_inputs(recipe)
    ranks = Ranks.from_env(resolve_device(recipe.device))
    lead = ranks.rank == 0

    def finished() -> dict | None:
        _check_output(recipe, force, resume)
        if result_path.exists() and (pruned_dir / "config.json").exists() and read_json(result_path).get("fingerprint") == fingerprint(recipe):
            return read_json(result_path)
        return None

    result = ranks.first(finished)
    if result is not None:
        if lead:
            console.print(f"prune: already done ({result_path}); --force redoes it")
            console.print(summary_table(result))
        return result

    torch.manual_seed(recipe.seed)
    device = ranks.device
    tokenizer = load_tokenizer(recipe.model, recipe.tokenizer)
    if recipe.search.apply is None:  # data problems surface before the model is loaded
        windows = load_windows(recipe.calibration, tokenizer, recipe.seed)
    model = load_checkpoint(recipe.model, recipe.dtype, str(device))
    adapter = adapter_for(model, str(recipe.model))
    stored_before_unshare = adapter.num_params()
    if recipe.search.unshare:
        adapter = adapter.unshared()
        if lead:
            console.print(f"unshare: every invocation owns its block now, {stored_before_unshare:,} → {adapter.num_params():,} parameters stored")
    original_params, original_unshared = adapter.num_params(), adapter.num_params_unshared()

    if recipe.search.apply is not None:
        removed = _removal_from_list(recipe, adapter)
        rows = [
            {"step": i, "candidate": c.name, "ppl": None, "params_removed": adapter.removed_params(removed[:i])}
            for i, c in enumerate(removed, 1)
        ]
        ppl_original, search_info = None, {"method": "apply", "source": str(recipe.search.apply)}
    else:
        paths_and_later_stages = {k: True for k in ("model", "tokenizer", "output", "device", "recovery", "export", "eval")}
        settings = recipe.model_dump(mode="json", exclude={**paths_and_later_stages, "calibration": {"path"}})
        settings["search"].pop("apply")
        ranks.check_same(lambda: {
            "model": tensors_digest(adapter.model.state_dict().items()), "calibration.path": bytes_digest(windows),
            "recipe": settings_digest(settings),
        })  # fmt: skip
        stages = search_stages(recipe, adapter, lambda: scorer.batches)
        check_feasible(adapter, stages)  # before the scorer sizes its memory on a first forward
        exact = recipe.search.method != "naive"
        scorer = PerplexityScorer(
            adapter, windows, recipe.calibration.batch_size, device, exact, sharing=ranks.sharing, agree=ranks.strictest
        )
        plan = scorer.plan
        if lead:
            console.print(plan.describe() + (f"; {ranks.describe()}" if ranks.world > 1 else ""))
        log = SearchLog(out / "search" / "log.jsonl") if lead else None
        records = ranks.same(log.records if lead else None)  # a resumed run: rank 0's log on every rank
        log = log if lead else SearchLog.replica(records)
        search = GreedySearch(
            adapter,
            scorer,
            stages,
            log,
            show_progress=lead,
            method=recipe.search.method,
            halving_keep=recipe.search.halving_keep,
            shortlist=recipe.search.shortlist,
            seed=recipe.seed,
            ranks=ranks,
        )
        if log.header() is None:  # only once the stop rule is known to be feasible
            log.append({"type": "run", "fingerprint": fingerprint(recipe), "candidates": [c.name for s in stages for c in s.candidates]})
        found = search.run()
        removed, rows, ppl_original = found.candidates, found.removed, found.ppl_original
        search_info = {
            "method": recipe.search.method,
            "stopped_by": found.stopped_by,
            "stages": found.stages,
            "evaluations": found.evaluations,
            "evaluated_in_this_run": found.evaluated_now,
            "seconds": round(found.seconds, 2),
            "memory": plan.describe(),
            "ranks": ranks.world,
        }
    if not lead:  # the other ranks only searched
        return {"removed": rows, "ppl_original": ppl_original, "rank": ranks.rank}

    console.print(f"removal: {len(removed)} components from {recipe.model} → {pruned_dir}")
    pruned = adapter.pruned_model(removed)
    pruned_params = sum(p.numel() for p in pruned.parameters())
    if original_params - pruned_params != adapter.removed_params(removed):
        raise RuntimeError("parameter accounting mismatch after physical removal")
    removal_diff = pruned_vs_masked(adapter, pruned, removed)
    source = recipe.model if recipe.model.is_dir() else None
    save_checkpoint(pruned, tokenizer, pruned_dir, generation_source=source,
                    stored_as=DTYPES[stored_dtype(source)] if source else None)  # pruned weights are copies of the source's
    result = {
        "model": str(recipe.model),
        "family": adapter.family,
        "targets": recipe.search.all_targets,
        "removed": rows,
        "ppl_original": ppl_original,
        "params": {"original": original_params, "pruned": pruned_params},
        # shared blocks counted once per use, adapters merged (the reference's count); equal without shared blocks
        "params_unshared": {"original": original_unshared, "pruned": adapter_for(pruned).num_params_unshared()},
        "layers": {"original": adapter.num_layers, "pruned": pruned.config.num_hidden_layers},
        "pruned_model_type": pruned.config.model_type,
        "pruned_vs_masked_max_abs_diff": removal_diff,
        "search": search_info,
        "fingerprint": fingerprint(recipe),
    }
    if recipe.search.unshare:
        result["params"]["stored_before_unshare"] = stored_before_unshare
    with atomic_file(out / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    write_json(result_path, result)
    console.print(summary_table(result))
    console.print(f"pruned checkpoint: {pruned_dir}")
    return result
