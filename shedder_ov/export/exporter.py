"""`shedder-ov export`: a checkpoint folder → a stateful OpenVINO IR folder that
OVModelForCausalLM loads, checked for parity against the torch model it came from."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from ..adapters import adapter_for
from ..checkpoints import load_checkpoint, load_tokenizer
from ..errors import ShedderError
from ..io import atomic_dir, write_json
from .parity import check_parity

REPORT_FILE = "shedder_export.json"


def export_model(model, out_dir: Path) -> None:
    """Trace `model` through our registered optimum-intel config into a stateful IR."""
    from optimum.exporters.openvino import export_from_model

    config = model.config
    if config.model_type.endswith("mamba2") and not hasattr(config, "intermediate_size"):
        config.intermediate_size = int(config.expand * config.hidden_size)  # read by OVModelWithMambaForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        export_from_model(model, out_dir, task="text-generation-with-past", stateful=True)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, strict: bool = False, parity: bool = True) -> dict:
    """Export, save the tokenizer, compare with torch; writes shedder_export.json in the IR folder.

    With `strict`, a parity failure is an error and no IR folder is left behind."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model = load_checkpoint(checkpoint, "float32", "cpu")
    adapter = adapter_for(model, str(checkpoint))
    try:
        tokenizer = load_tokenizer(checkpoint)
    except ShedderError:
        tokenizer = None
    with atomic_dir(out_dir) as tmp:
        start = time.perf_counter()
        export_model(model, tmp)
        seconds = time.perf_counter() - start
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report = {
            "source": str(checkpoint),
            "model_type": model.config.model_type,
            "export_seconds": round(seconds, 2),
            "parity": check_parity(tmp, adapter, tokenizer) if parity else None,
        }
        if strict and report["parity"] and not report["parity"]["ok"]:
            p = report["parity"]
            raise ShedderError(
                f"{checkpoint}: IR does not match torch (max abs diff short {p['max_abs_diff_short']:.2e}, "
                f"long {p['max_abs_diff_long']:.2e}, greedy equal: {p['greedy_equal']})"
            )
        write_json(tmp / REPORT_FILE, report)
    return report
