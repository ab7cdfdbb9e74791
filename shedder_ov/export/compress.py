"""`shedder-ov compress`: NNCF weight compression of an exported IR into its own folder.

Storage policy (docs/export.md has the measurement):
* MatMul weights (in_proj, x_proj, dt_proj, out_proj) are compressed in the requested mode;
  in int4 modes the embedding / tied lm_head stays int8 (NNCF's backup precision).
* The depthwise conv1d stays float (NNCF would int8 it by default; llama.cpp keeps it float):
  4 weights per channel feed every token's recurrence, and it is <1% of the parameters.
* A_log, D, dt_bias and the norm weights are never MatMul weights, so they stay float."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..errors import ShedderError
from ..io import atomic_dir, read_json, write_json
from ..runtime import IR_FILE, read_ir
from .phases import phase, require_disk
from .stable_names import make_names_stable

Mode = Literal["int8_sym", "int8_asym", "int4_sym", "int4_asym"]
MODES = ("int8_sym", "int8_asym", "int4_sym", "int4_asym")
REPORT_FILE = "shedder_compress.json"
UNSUPPORTED = {
    "gptq": "GPTQ needs MatMuls with [tokens, features] activations; Mamba's x_proj/out_proj see transposed ones",
    "lora_correction": "LoRA correction needs MatMuls with [tokens, features] activations; Mamba's see transposed ones",
}


@dataclass(frozen=True)
class CompressOptions:
    """The subset of nncf.compress_weights this tool exposes, same names and meaning."""

    mode: Mode = "int8_asym"
    group_size: int | None = None  # int4: NNCF's default 128, smaller where a MatMul is narrower
    ratio: float | None = None  # share of int4 layers in int4 modes (rest int8)
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    lora_correction: bool = False
    compress_conv: bool = False  # the storage policy keeps the depthwise conv float
    dataset: str | None = None  # recipe YAML (its calibration) or a text file; needed by awq/scale_estimation
    num_samples: int = 32
    seq_len: int = 128

    def validate(self, hidden_size: int) -> None:
        if self.mode not in MODES:
            raise ShedderError(f"--mode: unknown compression mode {self.mode!r} (allowed: {', '.join(MODES)})")
        for option, why in UNSUPPORTED.items():
            if getattr(self, option):
                raise ShedderError(f"--{option.replace('_', '-')}: not applicable to Mamba models ({why})")
        int4 = self.mode.startswith("int4")
        if self.group_size is not None:
            if not int4:
                raise ShedderError(f"--group-size applies to int4 modes only (int8 is per-channel), got mode {self.mode}")
            if self.group_size != -1 and (self.group_size <= 0 or hidden_size % self.group_size):
                raise ShedderError(f"--group-size {self.group_size} does not divide the hidden size {hidden_size} (or use -1: per-channel)")
        if self.ratio is not None and not (int4 and 0 < self.ratio <= 1):
            raise ShedderError(f"--ratio {self.ratio}: needs an int4 mode and 0 < ratio <= 1")
        if (self.awq or self.scale_estimation) and not int4:
            raise ShedderError("--awq / --scale-estimation apply to int4 modes only")
        if (self.awq or self.scale_estimation) and self.dataset is None:
            raise ShedderError("--awq / --scale-estimation need --dataset (a recipe YAML or a text file)")


def calibration_dataset(options: CompressOptions, tokenizer):
    """nncf.Dataset of prefill inputs from a recipe's calibration data or a text file."""
    import nncf
    import numpy as np

    from ..data import load_windows
    from ..recipe import DataSpec, load_recipe

    source = Path(options.dataset)
    if source.suffix in (".yaml", ".yml"):
        recipe = load_recipe(source)
        if recipe.calibration is None:
            raise ShedderError(f"--dataset {source}: the recipe has no calibration section")
        spec = recipe.calibration
    else:
        spec = DataSpec(path=source)
    ids = load_windows(spec, tokenizer, seed=0, num_samples=options.num_samples, seq_len=options.seq_len).numpy()
    return nncf.Dataset(
        [{"input_ids": row[None], "attention_mask": np.ones_like(row[None]), "beam_idx": np.zeros(1, np.int32)} for row in ids]
    )


def compress_ir(ir_dir: str | Path, out_dir: str | Path, options: CompressOptions) -> dict:
    """Compress `ir_dir` into `out_dir` (a complete, loadable IR folder, written atomically)."""
    import nncf
    import openvino as ov

    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    model = read_ir(ir_dir)
    if not (ir_dir / "config.json").is_file():
        raise ShedderError(f"{ir_dir}: IR folder without config.json (not a complete export)")
    config = read_json(ir_dir / "config.json")
    options.validate(config["hidden_size"])
    dataset = None
    if options.dataset is not None:
        from ..checkpoints import load_tokenizer

        dataset = calibration_dataset(options, load_tokenizer(ir_dir))
    kwargs = {"mode": nncf.CompressWeightsMode[options.mode.upper()]}
    if options.mode.startswith("int4"):
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        kwargs.update(group_size=options.group_size, ratio=options.ratio, awq=options.awq or None)
        kwargs.update(scale_estimation=options.scale_estimation or None, dataset=dataset)
        # narrow MatMuls (dt_proj's input is time_step_rank wide) get the largest group that fits
        kwargs["advanced_parameters"] = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=8
        )
    if not options.compress_conv:
        kwargs["ignored_scope"] = nncf.IgnoredScope(types=["GroupConvolution"], validate=False)
    require_disk("compress", out_dir.parent, (ir_dir / "openvino_model.bin").stat().st_size)  # at most the source's size
    start = time.perf_counter()
    try:
        with phase("compress", f"NNCF {options.mode} (the IR's weights read from its memory-mapped .bin)"):
            compressed = nncf.compress_weights(model, **kwargs)
    except Exception as error:  # NNCF's own refusal, as one line
        if not type(error).__module__.startswith("nncf") and not isinstance(error, (ValueError, RuntimeError)):
            raise
        raise ShedderError(f"compress {options.mode}: NNCF refused: {str(error).splitlines()[0][:300]}") from None
    seconds = time.perf_counter() - start
    with atomic_dir(out_dir) as tmp:
        for item in ir_dir.iterdir():
            if item.is_file() and item.name not in (IR_FILE, "openvino_model.bin", REPORT_FILE):
                shutil.copy(item, tmp / item.name)
        with phase("compress", "save the IR"):
            ov.save_model(compressed, tmp / IR_FILE, compress_to_fp16=False)
        report = {
            "source": str(ir_dir),
            "options": asdict(options),
            "compress_seconds": round(seconds, 2),
            "ir_bytes": (tmp / "openvino_model.bin").stat().st_size,
        }
        make_names_stable(tmp)
        write_json(tmp / REPORT_FILE, report)
    return report
