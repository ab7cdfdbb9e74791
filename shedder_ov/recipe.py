"""The recipe: one YAML file drives every stage. Validated by a typed schema so that a
typo or an impossible value fails before any work starts, naming the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .adapters.components import Target
from .errors import ShedderError

DataFormat = Literal["text", "jsonl", "alpaca"]
SearchMethod = Literal["fast", "naive", "halving", "ranked", "shortgpt", "random", "last_k"]
EXACT_METHODS = ("fast", "naive")
FORMAT_BY_SUFFIX = {".txt": "text", ".raw": "text", ".jsonl": "jsonl", ".json": "alpaca"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    """Text for calibration or evaluation: plain text, JSON lines or an Alpaca JSON array."""

    path: Path
    format: DataFormat | None = Field(None, description="defaults from the file suffix")
    text_field: str = Field("text", description="field holding the text in jsonl records")

    @model_validator(mode="after")
    def _default_format(self) -> "DataSpec":
        if self.format is None:
            suffix = self.path.suffix.lower()
            if suffix not in FORMAT_BY_SUFFIX:
                raise ValueError(
                    f"cannot tell the format of {self.path} from its suffix; set format to one of text, jsonl, alpaca"
                )
            self.format = FORMAT_BY_SUFFIX[suffix]
        return self


class CalibrationSpec(DataSpec):
    num_samples: int = Field(64, gt=0)
    seq_len: int = Field(256, gt=1)
    batch_size: int = Field(8, gt=0)


class StopRule(Strict):
    """Exactly one of: a number of components, a parameter reduction, or a PPL budget."""

    num_components: int | None = Field(None, gt=0)
    param_reduction_pct: float | None = Field(None, gt=0, lt=100)
    max_ppl_increase_pct: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> "StopRule":
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of num_components, param_reduction_pct, max_ppl_increase_pct (got {given or 'none'})"
            )
        return self


ChannelOrder = Literal["first", "weight_l1", "activation"]


class StageSpec(Strict):
    """One greedy loop: its candidates compete until its stop rule holds; the next stage starts
    from the model the previous one left."""

    targets: list[Target] = Field(min_length=1)
    stop: StopRule
    group_size: int | None = Field(None, gt=0, description="mlp_channels: channels one removal takes from one MLP")
    channel_order: ChannelOrder = Field(
        "first",
        description="which channels an MLP loses first: first (the reference: keep the first N, drop the last "
        "group), weight_l1 (smallest L1 norm of the channel's weights), activation (smallest mean |activation| "
        "on the calibration windows)",
    )

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _group_size_for_channels(self) -> "StageSpec":
        if "mlp_channels" in self.targets and self.group_size is None:
            raise ValueError("mlp_channels needs group_size (channels removed per step)")
        return self


class SearchSpec(Strict):
    targets: list[Target] | None = Field(None, min_length=1, description="single-stage search (default [mamba_block])")
    stop: StopRule | None = None
    group_size: int | None = Field(None, gt=0, description="single-stage search: as in stages")
    channel_order: ChannelOrder = "first"
    stages: list[StageSpec] | None = Field(
        None, min_length=1, description="staged search: greedy loops run in order, each with its targets and stop rule"
    )
    unshare: bool = Field(
        False,
        description="hybrids with shared blocks (Zamba2): give every invocation its own copy (adapters merged) "
        "before searching, as the reference does; needed for per-invocation MLP widths; grows the stored model",
    )
    method: SearchMethod = Field(
        "fast",
        description="fast/naive: exact greedy (fast batches candidates over the reused residual stream; same "
        "decisions); halving: approximate greedy by successive halving over calibration batches; "
        "ranked: approximate greedy for many small candidates (heads, channels): rank by how much each changes "
        "its own layer's output, confirm the shortlist by PPL; shortgpt/random/last_k: fixed-order baselines",
    )
    halving_keep: float = Field(0.25, gt=0, lt=1, description="share of candidates kept per halving round")
    shortlist: int = Field(8, gt=0, description="ranked: candidates per step scored by PPL")
    apply: Path | None = Field(
        None, description="apply this removal list (our result.json or a reference pruning_config.json) instead of searching"
    )

    @model_validator(mode="after")
    def _one_plan(self) -> "SearchSpec":
        if self.stages is not None:
            given = [k for k in ("targets", "stop", "apply", "group_size") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"give either stages or {', '.join(given)} (a single-stage search), not both")
            return self
        if (self.stop is None) == (self.apply is None):
            raise ValueError("give exactly one of stop (run the search), stages (a staged search) or apply (a removal list)")
        if self.targets is None:
            self.targets = ["mamba_block"]
        if "mlp_channels" in self.targets and self.group_size is None and self.stop is not None:
            raise ValueError("mlp_channels needs group_size (channels removed per step)")
        return self

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))

    @property
    def staged(self) -> list[StageSpec]:
        """The search as stages (a single-stage search is one)."""
        if self.stages is not None:
            return self.stages
        return [StageSpec(targets=self.targets, stop=self.stop, group_size=self.group_size, channel_order=self.channel_order)]

    @property
    def all_targets(self) -> list[str]:
        """Every target any stage (or the removal list) may remove."""
        if self.stages is None:
            return self.targets
        return list(dict.fromkeys(t for stage in self.stages for t in stage.targets))


DEFAULT_DATA_ROOT = Path("../shared/data")
DEFAULT_HELD_OUT = DEFAULT_DATA_ROOT / "tinystories" / "eval.txt"
PplDataset = Literal["tinystories", "wikitext2", "alpaca"]
ZeroShotTask = Literal["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa"]


class LoraSpec(Strict):
    """LoRA settings; the defaults are the paper's Hymba recovery (r16, α32)."""

    rank: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, min_length=1, description="module names to adapt; default per family (Mamba mixers: in_proj, out_proj)"
    )


class RecoverySpec(Strict):
    """Recovery tuning of the pruned model: LoRA (merged before saving) or full fine-tuning."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec
    held_out: DataSpec = Field(default_factory=lambda: DataSpec(path=DEFAULT_HELD_OUT))
    held_out_windows: int | None = Field(32, gt=0, description="PPL on the first N held-out windows (null: all)")
    seq_len: int = Field(256, gt=1)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    epochs: float | None = Field(None, gt=0, description="default 1 when max_steps is not set")
    max_steps: int | None = Field(None, gt=0)
    lr: float = Field(3e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    save_every: int = Field(50, gt=0, description="optimizer steps between resumable checkpoints")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast where the device supports it (CUDA)")
    seed: int | None = Field(None, description="defaults to the recipe's seed")

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> "RecoverySpec":
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give epochs or max_steps, not both")
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1.0
        return self


class ExportSpec(Strict):
    """What `prune-and-export` writes under OUTPUT/ov/: one loadable IR folder per variant."""

    variants: list[Literal["fp32", "int8", "int4"]] = Field(default_factory=lambda: ["fp32", "int8", "int4"], min_length=1)
    strict: bool = Field(False, description="a parity mismatch of the fp32 IR is an error")
    parity: bool = Field(True, description="check each fp32 IR against torch (short and 1024-token prompts, greedy, "
                         "openvino.genai); false skips it: it needs one f32 compile, ~6 bytes per bf16 weight")
    int8_mode: Literal["int8_sym", "int8_asym"] = "int8_asym"
    int4_mode: Literal["int4_sym", "int4_asym"] = "int4_asym"
    group_size: int | None = Field(None, description="int4 group size (default: NNCF's 128, narrower where needed)")
    ratio: float | None = Field(None, gt=0, le=1, description="share of int4 MatMuls in the int4 variant")

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _strict_needs_parity(self) -> "ExportSpec":
        if self.strict and not self.parity:
            raise ValueError("strict: true needs parity: true (strict fails the export on a parity mismatch)")
        return self


class BenchSpec(Strict):
    """The OpenVINO speed run of prune-and-export: short by default (`shedder-ov bench` for the full one)."""

    lengths: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [128, 512], min_length=1, description="prefill prompt lengths"
    )
    new_tokens: int = Field(32, gt=0, description="batch-1 decode steps after the first prompt")
    repeats: int = Field(2, gt=0)
    threads: int | None = Field(None, gt=0, description="null: this CPU's default (shedder_ov/cpu.py)")
    llama_cpp: Path | None = Field(None, description="a llama.cpp build folder (`python scripts/bench_vs_llamacpp.py "
                                   "--build-only --llama-cpp DIR` makes one): the report then sets every variant "
                                   "against llama.cpp's Q8_0 / Q4_0 of the same checkpoint")


class EvalSpec(Strict):
    """What prune-and-export measures on every variant × precision for the report."""

    data_root: Path = Field(DEFAULT_DATA_ROOT, description="holds tinystories/eval.txt, wikitext2/, alpaca/ and eval/ (zero-shot)")
    datasets: list[PplDataset] = Field(default_factory=lambda: ["tinystories", "wikitext2"], description="held-out PPL text")
    seq_len: int = Field(256, gt=1, description="PPL window length")
    windows: int | None = Field(16, gt=0, description="first N PPL windows per dataset (null: all)")
    tasks: list[ZeroShotTask] = Field(default_factory=lambda: list(get_args(ZeroShotTask)), description="zero-shot tasks")
    limit: int | None = Field(50, gt=0, description="first N items per zero-shot task (null: all)")
    bench: BenchSpec | None = Field(default_factory=BenchSpec, description="null: no speed run")


class Recipe(Strict):
    model: Path
    tokenizer: Path | None = Field(None, description="tokenizer folder or tokenizer.json when the model folder has none")
    calibration: CalibrationSpec | None = None
    search: SearchSpec
    recovery: RecoverySpec | None = None
    export: ExportSpec | None = None
    eval: EvalSpec | None = None
    output: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 42

    @model_validator(mode="after")
    def _calibration_needed(self) -> "Recipe":
        if self.search.apply is None and self.calibration is None:
            raise ValueError("calibration is required to run the search (search.stop or search.stages is set)")
        return self


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        allowed = _allowed_keys(parent)
        message = f"unknown key (allowed: {', '.join(allowed)})"
    elif first["type"] == "literal_error":
        message = f"{message} (got {first.get('input')!r})"
    return f"{source}: {where}: {message}"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise ShedderError(_describe(error, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; relative paths resolve against the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ShedderError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ShedderError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ShedderError(f"{path}: a recipe is a YAML mapping with keys {', '.join(Recipe.model_fields)}")
    return parse_recipe(data, str(path))
