"""A stateful IR as a plain OpenVINO infer request: the runtime the parity checks, PPL and
decode timing use (the same calls export/generate_ov.py makes, without torch)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ShedderError

IR_FILE = "openvino_model.xml"
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def read_ir(ir_dir: str | Path):
    """The ov.Model of an IR folder; a missing or corrupted IR is one clear error."""
    import openvino as ov

    xml = Path(ir_dir) / IR_FILE
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise ShedderError(f"{ir_dir}: not an OpenVINO IR folder (no {IR_FILE} + .bin)")
    try:
        return ov.Core().read_model(xml)
    except RuntimeError as error:
        raise ShedderError(f"{ir_dir}: corrupted IR ({str(error).splitlines()[0][:200]})") from None


class StatefulIR:
    """Prefill / decode on an IR whose conv and SSM states are OpenVINO variables."""

    def __init__(self, ir_dir: str | Path, config: dict | None = None):
        import openvino as ov

        model = read_ir(ir_dir)
        if not model.get_sinks():
            raise ShedderError(f"{ir_dir}: IR is not stateful (export with shedder-ov export)")
        try:
            self.request = ov.Core().compile_model(model, "CPU", config or {}).create_infer_request()
        except RuntimeError as error:
            raise ShedderError(f"{ir_dir}: IR does not compile ({str(error).splitlines()[0][:200]})") from None

    def reset(self) -> None:
        self.request.reset_state()

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Logits [b, l, vocab] for ids [b, l], continuing from the current state."""
        ids = np.asarray(ids, dtype=np.int64)
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "beam_idx": np.arange(ids.shape[0], dtype=np.int32)}
        return self.request.infer(inputs)["logits"].copy()

    def greedy(self, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float]:
        """Greedy continuation of one prompt [l] from zero state; returns tokens and decode tok/s."""
        self.reset()
        logits = self(prompt[None])
        tokens = [int(logits[0, -1].argmax())]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            tokens.append(int(self(np.array([[tokens[-1]]]))[0, -1].argmax()))
        elapsed = time.perf_counter() - start
        return tokens, (new_tokens - 1) / elapsed if elapsed > 0 else float("inf")
