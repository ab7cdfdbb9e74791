"""`shedder-ov export`: a checkpoint folder → a stateful OpenVINO IR folder that
OVModelForCausalLM loads, checked for parity against the torch model it came from."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from ..adapters import adapter_for
from ..checkpoints import has_tokenizer, load_checkpoint, load_tokenizer, save_remote_code
from ..errors import ShedderError
from ..io import atomic_dir, write_json
from .parity import GROUPED_COMPILE_BYTES, check_parity
from .stable_names import make_names_stable
from .phases import phase, release, require_disk, require_memory

REPORT_FILE = "shedder_export.json"
PARITY_OVERHEAD = 2**30  # interpreter, libraries, activations and logits of the 1024-token prompt
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")  # optimum-cli's names, what openvino.genai reads

log = logging.getLogger(__name__)


def export_model(model, out_dir: Path) -> None:
    """Trace `model` through our registered optimum-intel config into a stateful IR. A model held
    in bf16 / fp16 is traced as optimum-intel traces one (OpenVINO's 16-bit patch): its linear and
    embedding weights go into the IR as they are, each behind a Convert to f32 (every op still
    computes in f32, on the same values an f32 load would hold), its other parameters become f32
    in place; the IR then takes half the disk and no f32 copy of the weights is ever made."""
    from optimum.exporters.openvino import export_from_model

    config = model.config
    if config.model_type.endswith("mamba2") and not hasattr(config, "intermediate_size"):
        config.intermediate_size = int(config.expand * config.hidden_size)  # read by OVModelWithMambaForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        sixteen_bit = any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())
        export_from_model(model, out_dir, task="text-generation-with-past", stateful=True, patch_16bit_model=sixteen_bit)


def export_tokenizer_irs(tokenizer, out_dir: Path) -> bool:
    """Save the tokenizer and, through optimum-intel (openvino-tokenizers), its tokenizer and
    detokenizer IRs next to the model, as optimum-cli does; says so in one line when it cannot."""
    from optimum.exporters.openvino.convert import export_tokenizer

    tokenizer.save_pretrained(out_dir)
    export_tokenizer(tokenizer, out_dir, task="text-generation-with-past")
    converted = all((out_dir / name).is_file() for name in TOKENIZER_IRS)
    if not converted:
        log.warning("openvino-tokenizers could not convert the tokenizer (%s): no tokenizer IRs, openvino.genai will not load this IR folder", type(tokenizer).__name__)
    return converted


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, strict: bool = False, parity: bool = True) -> dict:
    """Export, save the tokenizer, compare with torch; writes shedder_export.json in the IR folder.

    With `strict`, a parity failure is an error and no IR folder is left behind."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    tokenizer = load_tokenizer(checkpoint) if has_tokenizer(checkpoint) else None  # none is allowed, a broken one is an error
    with phase("export", "load"):
        model = load_checkpoint(checkpoint, "stored", "cpu")
    adapter_for(model, str(checkpoint))  # an unsupported family fails here, before anything is written
    model_type, weights_dtype = model.config.model_type, str(next(model.parameters()).dtype).removeprefix("torch.")
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    require_disk("export", out_dir.parent, stored)  # the IR stores the weights as they are
    if parity:  # at least: the IR's weights as read (mapped) and one layer group's compile (parity.py)
        layer_f32 = int(max(p.numel() for p in model.parameters()) * 4 * GROUPED_COMPILE_BYTES)
        require_memory("export", "the parity check (--no-parity skips it)", stored + layer_f32 + PARITY_OVERHEAD)
    with atomic_dir(out_dir) as tmp:
        save_remote_code(model.config, tmp)  # stock optimum-intel reads the config with trust_remote_code
        start = time.perf_counter()
        with phase("export", "trace, convert and save the IR"):
            export_model(model, tmp)
        seconds = time.perf_counter() - start
        del model  # the parity check loads what it needs, when it needs it
        release(stored)
        report = {
            "source": str(checkpoint),
            "model_type": model_type,
            "weights_dtype": weights_dtype,
            "export_seconds": round(seconds, 2),
            "tokenizer_irs": tokenizer is not None and export_tokenizer_irs(tokenizer, tmp),
            "parity": check_parity(tmp, checkpoint, tokenizer) if parity else None,
        }
        if strict and report["parity"] and not report["parity"]["ok"]:
            p = report["parity"]
            raise ShedderError(
                f"{checkpoint}: IR does not match torch (max abs diff short {p['max_abs_diff_short']:.2e}, "
                f"long {p['max_abs_diff_long']:.2e}, greedy equal: {p['greedy_equal']}, in openvino.genai: {p['genai_greedy_equal']})"
            )
        make_names_stable(tmp)
        write_json(tmp / REPORT_FILE, report)
    return report
