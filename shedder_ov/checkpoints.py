"""Loading checkpoints as users have them, and removal lists as they were published.

* Hugging Face folders of the supported families (and our pruned ones).
* mamba_ssm folders (config.json with d_model / n_layer / ssm_cfg, pytorch_model.bin), the
  format of state-spaces/mamba-* and mamba2-* and of the published Mamba-Shedder pruned
  models, whose removed blocks / SSMs are simply missing from the state dict.
* Removal lists: our result.json, or the reference pruning_config.json."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Mamba2Config, MambaConfig

from . import modeling  # noqa: F401  (registers the pruned classes with the Auto classes)
from .adapters import Candidate, FamilyAdapter, adapter_class_for, adapter_for
from .errors import ShedderError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_remote_code(config, folder: Path) -> None:
    """Our modeling code into `folder` and its name into `config` (`auto_map`) for our pruned
    model types, before the config is saved there (checkpoints, IR folders): the folder then
    loads with trust_remote_code where this package is not installed."""
    family = config.model_type.removeprefix("shedder_")
    if config.model_type.startswith("shedder_") and family in modeling.REMOTE_CODE_FILES:
        config.auto_map = modeling.auto_map(family)
        for source in modeling.REMOTE_CODE_FILES[family]:
            shutil.copy(source, folder / source.name)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ShedderError("device: cuda requested but no CUDA device is available (use auto or cpu)")
    return torch.device(device)


def is_mamba_ssm_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    return "d_model" in data and "n_layer" in data


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_tokenizer(path: str | Path, fallback: str | Path | None = None):
    """The tokenizer of a checkpoint folder (or the fallback folder/tokenizer.json)."""
    for source in (path, fallback):
        if source is None:
            continue
        source = Path(source)
        try:
            if source.is_file() and source.suffix == ".json":
                from transformers import PreTrainedTokenizerFast

                return PreTrainedTokenizerFast(tokenizer_file=str(source), eos_token="<|endoftext|>")
            if has_tokenizer(source):
                return AutoTokenizer.from_pretrained(source)
        except Exception as error:  # a damaged tokenizer file raises whatever its parser raises
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ShedderError(f"{source}: the tokenizer does not load ({reason[:200]})") from None
    raise ShedderError(f"{path}: no tokenizer in the folder (set `tokenizer:` in the recipe to a folder or tokenizer.json)")


def checkpoint_family(path: str | Path) -> tuple[type[FamilyAdapter], object]:
    """The adapter class and config of a checkpoint folder, read without loading weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ShedderError(f"{path}: not a checkpoint folder (no config.json)")
    try:
        data = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShedderError(f"{path / 'config.json'}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ShedderError(f"{path / 'config.json'}: not a model config (a JSON object with model_type)")
    if is_mamba_ssm_folder(path):
        model_type = "mamba2" if (data.get("ssm_cfg") or {}).get("layer") == "Mamba2" else "mamba"
        return adapter_class_for(model_type, str(path)), data
    adapter_class = adapter_class_for(data.get("model_type"), str(path))
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as error:  # transformers' config validation: the last line says what is wrong
        reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1:] or [type(error).__name__]
        raise ShedderError(f"{path / 'config.json'}: not a valid {adapter_class.family} config ({reason[0][:200]})") from None
    return adapter_class, config


def stored_dtype(path: Path) -> str:
    """The dtype every floating-point weight of a checkpoint is stored in (a DTYPES key), read from
    the safetensors headers (config.json's dtype may say float32 for bf16 files); float32 when
    the weights mix dtypes or are not safetensors."""
    found = set()
    for file in path.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        found |= {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"].startswith(("F", "BF"))}
    return {frozenset({"BF16"}): "bfloat16", frozenset({"F16"}): "float16"}.get(frozenset(found), "float32")


def load_checkpoint(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Load a model of a supported family from a local folder, converting mamba_ssm format;
    dtype "stored" keeps the dtype the weights are stored in (bf16 on disk: half of fp32's memory)."""
    path = Path(path)
    if not path.is_dir():
        raise ShedderError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise ShedderError(f"{path}: not a checkpoint folder (no config.json)")
    if dtype == "stored":
        dtype = stored_dtype(path)
    if is_mamba_ssm_folder(path):
        model = _load_mamba_ssm(path)
    else:
        adapter_class, _ = checkpoint_family(path)
        model = adapter_class.load_pretrained(path, DTYPES[dtype])
    return model.to(device=resolve_device(device), dtype=DTYPES[dtype]).eval()


# ---- mamba_ssm format ----------------------------------------------------------------
def _hf_config_from_mamba_ssm(data: dict, state: dict):
    ssm = dict(data.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    vocab = state["backbone.embedding.weight"].shape[0]
    common = dict(
        hidden_size=data["d_model"],
        num_hidden_layers=data["n_layer"],
        vocab_size=vocab,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=data.get("residual_in_fp32", True),
        tie_word_embeddings=data.get("tie_embeddings", True),
        expand=ssm.get("expand", 2),
        conv_kernel=ssm.get("d_conv", 4),
        use_bias=ssm.get("bias", False),
        use_conv_bias=ssm.get("conv_bias", True),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if not data.get("rms_norm", True):
        raise ShedderError("mamba_ssm config: rms_norm false (LayerNorm blocks) is not supported")
    if data.get("d_intermediate", 0):
        raise ShedderError("mamba_ssm config: d_intermediate > 0 (MLP after each mixer) is not supported")
    if layer == "Mamba2":
        inner = ssm.get("expand", 2) * data["d_model"]
        headdim = ssm.get("headdim", 64)
        return Mamba2Config(
            **common,
            num_heads=inner // headdim,
            head_dim=headdim,
            state_size=ssm.get("d_state", 128),
            n_groups=ssm.get("ngroups", 1),
            chunk_size=ssm.get("chunk_size", 256),
            time_step_limit=tuple(ssm.get("dt_limit", (0.0, float("inf")))),
        )
    if layer != "Mamba1":
        raise ShedderError(f"mamba_ssm config: ssm_cfg.layer={layer!r} (supported: Mamba1, Mamba2)")
    dt_rank = ssm.get("dt_rank", "auto")
    return MambaConfig(
        **common,
        state_size=ssm.get("d_state", 16),
        intermediate_size=ssm.get("expand", 2) * data["d_model"],
        time_step_rank=math.ceil(data["d_model"] / 16) if dt_rank == "auto" else dt_rank,
    )


def _load_mamba_ssm(path: Path):
    """Convert a mamba_ssm folder; layers missing from it (published pruned models) are
    rebuilt as removed blocks / removed SSMs of a physically pruned model."""
    weights = path / "pytorch_model.bin"
    if not weights.is_file():
        raise ShedderError(f"{path}: mamba_ssm folder without pytorch_model.bin")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    data = json.loads((path / "config.json").read_text())
    config = _hf_config_from_mamba_ssm(data, state)
    renamed = {re.sub(r"^backbone\.embedding\.", "backbone.embeddings.", k): v for k, v in state.items()}
    if config.tie_word_embeddings:
        renamed.setdefault("lm_head.weight", renamed["backbone.embeddings.weight"])
    removed = []
    for layer in range(config.num_hidden_layers):
        prefix = f"backbone.layers.{layer}."
        if not any(k.startswith(prefix) for k in renamed):
            removed.append(Candidate(layer, "mamba_block"))
        elif f"{prefix}mixer.D" not in renamed:
            removed.append(Candidate(layer, "ssm"))
    model = AutoModelForCausalLM.from_config(config)
    full = model.state_dict()
    for key, tensor in full.items():  # removed components: placeholders, never used
        renamed.setdefault(key, torch.zeros_like(tensor))
    unknown = sorted(set(renamed) - set(full))
    if unknown:
        raise ShedderError(f"{path}: unexpected weights for this config: {unknown[:3]}")
    model.load_state_dict({k: renamed[k].to(full[k].dtype) for k in full}, strict=True)
    model.tie_weights()
    if not removed:
        return model
    return adapter_for(model).pruned_model(removed)


# ---- removal lists -----------------------------------------------------------------
def read_removal_list(path: str | Path, adapter: FamilyAdapter) -> list[Candidate]:
    """Candidates from our result.json or a reference pruning_config.json, in removal order."""
    path = Path(path)
    if not path.is_file():
        raise ShedderError(f"{path}: removal list not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ShedderError(f"{path}: not a JSON file") from None
    if isinstance(data, dict) and isinstance(data.get("removed"), list):
        return [Candidate.parse(entry["candidate"]) for entry in data["removed"]]
    if not isinstance(data, dict) or not any(k.startswith("pruned_") for k in data):
        raise ShedderError(f"{path}: no removal list found (expected 'removed' or the reference's pruned_* lists)")
    found = adapter.from_reference(data, str(path))
    if not found:
        raise ShedderError(f"{path}: the removal list is empty")
    return found
