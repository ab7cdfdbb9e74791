"""Checks that run before any work: the whole recipe against the model's config and tokenizer,
and every input file by its headers (no weights loaded). A mistake visible in the recipe, or a
broken file, then costs one line (ShedderError), not a search or a training run first."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import ShedderError

INDEX_FILE = "model.safetensors.index.json"


# ---- checkpoint folders ------------------------------------------------------------
def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every stored tensor's shape, from the files transformers would load: safetensors headers,
    or a memory-mapped pytorch_model.bin. A truncated or corrupt file is one line naming it."""
    from safetensors import SafetensorError, safe_open

    from .io import read_json

    index = folder / INDEX_FILE
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise ShedderError(f"{index}: names {missing[0]}, which is missing from the folder")
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        weights = folder / "pytorch_model.bin"
        try:
            state = torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
        except Exception as error:  # any damage to the zip / pickle: one line
            raise ShedderError(f"{weights}: truncated or corrupt PyTorch weights file ({_first_line(error)})") from None
        return {name: tuple(tensor.shape) for name, tensor in state.items()}
    else:
        raise ShedderError(f"{folder}: no weights (model.safetensors, {INDEX_FILE} or pytorch_model.bin)")
    shapes = {}
    for name in files:
        try:
            with safe_open(folder / name, "pt") as handle:
                shapes |= {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise ShedderError(f"{folder / name}: truncated or corrupt safetensors file ({_first_line(error)})") from None
    return shapes


def check_shapes(folder: Path, config, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """config.json against the stored weights: the first tensor whose shape differs, that the
    config needs and the weights lack, or that the weights hold and the config has no place for."""
    from .adapters import adapter_class_for

    family = adapter_class_for(config.model_type, str(folder))
    model = family.empty_model(config)
    stored = family.stored_names(config, shapes)
    aliases: dict[int, list[str]] = {}  # tied weights: one stored copy serves every name
    for name, parameter in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    tied = {name: names for names in aliases.values() for name in names}
    for name, tensor in model.state_dict().items():
        expected = tuple(tensor.shape)
        if name in stored and stored[name] != expected:
            raise ShedderError(
                f"{folder}: config.json does not match the weights: {name} is {list(stored[name])} in the weights, "
                f"{list(expected)} by the config"
            )
        if not any(alias in stored for alias in tied.get(name, [name])):
            raise ShedderError(f"{folder}: config.json needs weight {name} {list(expected)}, which the weights lack")
    known = set(model.state_dict())
    extra = [name for name in stored if name not in known]
    if extra:
        raise ShedderError(f"{folder}: the weights hold {extra[0]}, which the model config.json describes has no place for")
    return model


def check_checkpoint(folder: str | Path) -> tuple[type, object, nn.Module | None]:
    """A checkpoint folder's config, weight files and their shapes (headers only: a 3 GB
    checkpoint checks in well under a second). Returns its adapter class, config and the model
    built on the meta device (None for mamba_ssm folders, whose layers may be missing by design)."""
    from .checkpoints import checkpoint_family

    folder = Path(folder)
    adapter_class, config = checkpoint_family(folder)
    shapes = weight_shapes(folder)
    if isinstance(config, dict):  # mamba_ssm format: readable is all we can say before converting
        return adapter_class, config, None
    return adapter_class, config, check_shapes(folder, config, shapes)


# ---- recipe sections ---------------------------------------------------------------
def check_device(device: str, where: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ShedderError(f"{where}: cuda requested but no CUDA device is available (use auto or cpu)")


def check_data(spec, where: str) -> None:
    """A data file exists and parses (text: UTF-8, not binary; jsonl; Alpaca JSON)."""
    from .data import read_documents

    if not spec.path.is_file():
        raise ShedderError(f"{where}: {spec.path} not found")
    read_documents(spec.path, spec.format, spec.text_field)


def check_lora_targets(spec, model: nn.Module | None, unshare: bool) -> None:
    """recovery.lora.target_modules against the model the recovery will tune (unshared first
    when the search unshares it), built on the meta device."""
    from .adapters import adapter_for
    from .recovery import lora_targets

    if model is None or spec.method != "lora" or spec.lora.target_modules is None:
        return
    adapter = adapter_for(model)
    with torch.device("meta"):
        lora_targets(adapter.unshared() if unshare else adapter, spec)


def check_recovery(spec, model: nn.Module | None, unshare: bool) -> None:
    check_device(spec.device, "recovery.device")
    check_data(spec.data, "recovery.data.path")
    check_data(spec.held_out, "recovery.held_out.path")
    check_lora_targets(spec, model, unshare)


def check_export(spec, hidden_size: int) -> None:
    """int4 group size and ratio as compress applies them: NNCF fits narrower MatMuls on its own,
    the hidden size (the input width of every mixer / attention / MLP in-projection) it cannot."""
    if "int4" not in spec.variants:
        given = [key for key in ("group_size", "ratio") if getattr(spec, key) is not None]
        if given:
            raise ShedderError(f"export.{given[0]}: applies to the int4 variant, which export.variants lacks")
        return
    size = spec.group_size
    if size is not None and size != -1 and (size <= 0 or hidden_size % size):
        raise ShedderError(
            f"export.group_size: {size} does not divide the hidden size {hidden_size} (the input width of the "
            f"in-projections int4 compresses); use a divisor of {hidden_size}, or -1 (per-channel)"
        )


def check_eval_data(spec) -> None:
    """Held-out text and every zero-shot task's local files exist."""
    from .evaluation.ppl import FILES
    from .evaluation.zeroshot import UNAVAILABLE, task_config

    for name in spec.datasets:
        path = spec.data_root / FILES[name][0]
        if not path.is_file():
            raise ShedderError(f"eval.data_root: {path} (held-out text for {name}) not found")
    for task in spec.tasks:
        if task not in UNAVAILABLE:
            task_config(task, spec.data_root / "eval")


def check_eval(spec, model_folder: Path) -> None:
    """Held-out text and zero-shot files exist; PPL windows and bench prompts fit the model."""
    check_eval_data(spec)
    check_lengths([spec.seq_len], model_folder, "eval.seq_len")
    if spec.bench:
        check_lengths(spec.bench.lengths, model_folder, "eval.bench.lengths")
        if spec.bench.llama_cpp:
            from .llamacpp import LlamaCpp

            try:
                LlamaCpp.at(spec.bench.llama_cpp)
            except ShedderError as error:
                raise ShedderError(f"eval.bench.llama_cpp: {error}") from None


def check_lengths(lengths, folder: Path, where: str) -> None:
    """Token counts within the model's limit, when its config or tokenizer config sets one."""
    from .bench import model_limits

    limit, _ = model_limits(folder)
    too_long = [n for n in lengths if limit and n > limit]
    if too_long:
        raise ShedderError(f"{where}: {too_long[0]} is above the model's limit of {limit} tokens")


def check_later_stages(recipe, model: nn.Module | None, folder: Path, unshare: bool = False) -> None:
    """The recovery, export and eval sections a recipe has, against the model they will see."""
    if recipe.recovery is not None:
        check_recovery(recipe.recovery, model, unshare)
    if model is not None and recipe.export is not None:
        check_export(recipe.export, model.config.hidden_size)
    if recipe.eval is not None:
        check_eval(recipe.eval, folder)


def check_recipe(recipe) -> None:
    """Every section of a prune recipe, before the search loads anything."""
    from .checkpoints import load_tokenizer

    needed = {"model": recipe.model, "tokenizer": recipe.tokenizer, "search.apply": recipe.search.apply}
    for field, path in needed.items():
        if path is not None and not path.exists():
            raise ShedderError(f"{field}: {path} not found")
    check_device(recipe.device, "device")
    adapter_class, config, model = check_checkpoint(recipe.model)
    load_tokenizer(recipe.model, recipe.tokenizer)
    adapter_class.check_search(config, recipe.search)
    if recipe.search.apply is None:
        check_data(recipe.calibration, "calibration.path")
    check_later_stages(recipe, model, recipe.model, recipe.search.unshare)


def check_recovery_inputs(recipe, pruned: Path) -> None:
    """`recover`: the pruned checkpoint's files and tokenizer, the later sections against it."""
    from .checkpoints import load_tokenizer

    _, _, model = check_checkpoint(pruned)
    load_tokenizer(pruned, recipe.tokenizer)
    check_later_stages(recipe, model, pruned)


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's first line: what is wrong, without the advice after it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].split(". ")[0][:200] if lines else type(error).__name__
