"""One model interface for every evaluation: logits for a batch of token windows.

Torch checkpoints run through the adapter's exact cache-free forward; OpenVINO IRs through a
compiled model whose state (if stateful) is reset per batch, so each window starts from zero
state exactly as in torch. Same tokenizer, same windows, comparable numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ShedderError

IR_FILE = "openvino_model.xml"


@dataclass
class LogitsModel:
    """`logits(ids [B, T]) -> float32 [B, T, V]`, plus what the reports need to say about it."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: object
    kind: str  # "torch" | "openvino"
    path: Path
    num_params: int | None = None


def ir_file(path: Path) -> Path | None:
    """The IR .xml of a path (the file itself or a folder holding openvino_model.xml)."""
    if path.is_file() and path.suffix == ".xml":
        return path
    if path.is_dir() and (path / IR_FILE).is_file():
        return path / IR_FILE
    return None


def compile_ir(xml: Path, device: str = "CPU", precision: str = "f32", config: dict | None = None):
    """Compile an IR; f32 inference precision by default so IR numbers match torch fp32."""
    import openvino as ov

    core = ov.Core()
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise ShedderError(f"device: {device} not available (available: {', '.join(core.available_devices)})")
    properties = {"INFERENCE_PRECISION_HINT": precision, **(config or {})}
    return core.compile_model(core.read_model(xml), device, properties)


def ir_feeds(input_names: set[str], ids: np.ndarray, past: int = 0) -> dict[str, np.ndarray]:
    """Inputs of an optimum-style decoder IR for `ids` [B, T] after `past` tokens already in its state."""
    batch, length = ids.shape
    known = {
        "input_ids": lambda: ids,
        "attention_mask": lambda: np.ones((batch, length), dtype=np.int64),  # the new tokens (Mamba IRs)
        "position_ids": lambda: np.tile(np.arange(past, past + length, dtype=np.int64), (batch, 1)),
        "cache_position": lambda: np.arange(past, past + length, dtype=np.int64),
        "beam_idx": lambda: np.arange(batch, dtype=np.int32),
    }
    unknown = sorted(input_names - set(known))
    if unknown:
        raise ShedderError(f"IR input(s) {', '.join(unknown)} not understood (known: {', '.join(known)})")
    return {name: known[name]() for name in input_names}


def openvino_logits(xml: Path, device: str = "CPU", precision: str = "f32",
                    chunk: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of whole windows from zero state; with `chunk`, each window is fed in calls of
    `chunk` tokens, so later tokens read the state the IR carried (chunk=1: pure decode)."""
    compiled = compile_ir(xml, device, precision)
    request = compiled.create_infer_request()
    names = {port.any_name for port in compiled.inputs}
    logits_port = next((p for p in compiled.outputs if "logits" in p.names), compiled.outputs[0])

    def logits(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.numpy().astype(np.int64)
        step = chunk or ids.shape[1]
        request.reset_state()
        pieces = []
        for start in range(0, ids.shape[1], step):
            request.infer(ir_feeds(names, ids[:, start : start + step], start))
            pieces.append(request.get_tensor(logits_port).data.astype(np.float32, copy=True))
        return torch.from_numpy(np.concatenate(pieces, axis=1))

    return logits


def open_model(path: str | Path, device: str = "CPU", precision: str = "f32", chunk: int | None = None) -> LogitsModel:
    """A torch checkpoint folder or an OpenVINO IR (folder or .xml), with its tokenizer; `chunk`
    (IRs only) feeds windows in calls of that many tokens."""
    from ..checkpoints import load_checkpoint, load_tokenizer

    path = Path(path)
    if not path.exists():
        raise ShedderError(f"{path}: not found")
    xml = ir_file(path)
    if xml is not None:
        return LogitsModel(openvino_logits(xml, device, precision, chunk), load_tokenizer(xml.parent), "openvino", path)
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ShedderError(f"{path}: neither a checkpoint folder (config.json) nor an OpenVINO IR ({IR_FILE})")
    from ..adapters import adapter_for

    if chunk:
        raise ShedderError(f"--chunk: {path} is a torch checkpoint; chunked feeding is for OpenVINO IRs")
    if device.upper() != "CPU":
        raise ShedderError(f"device: {device} is for OpenVINO IRs; torch checkpoints are evaluated on CPU here")
    adapter = adapter_for(load_checkpoint(path), str(path))

    def logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return adapter.logits(ids)

    return LogitsModel(logits, load_tokenizer(path), "torch", path, adapter.num_params())
