"""One model interface for every evaluation: logits for a batch of token windows.

Torch checkpoints run through the adapter's exact cache-free forward in f32 (a checkpoint stored
in bf16 stays bf16 in memory, each layer upcast while it runs); OpenVINO IRs through a
compiled model whose state (if stateful) is reset per batch, so each window starts from zero
state exactly as in torch. Same tokenizer, same windows, comparable numbers."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ShedderError
from ..runtime import IR_FILE, PIECE, StatefulIR, ir_file


@dataclass
class LogitsModel:
    """`logits(ids [B, T]) -> float32 [B, T, V]`, plus what the reports need to say about it."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: object
    kind: str  # "torch" | "openvino"
    path: Path
    num_params: int | None = None


@contextmanager
def upcast(parameters):
    """16-bit parameters held in f32 for the duration, then their stored tensors again."""
    low = [(p, p.data) for p in parameters if p.dtype in (torch.bfloat16, torch.float16)]
    for p, data in low:
        p.data = data.float()
    try:
        yield
    finally:
        for p, data in low:
            p.data = data


def f32_logits(adapter, ids: torch.Tensor) -> torch.Tensor:
    """`adapter.logits` in f32 of a model held in its stored dtype, one layer upcast at a time:
    the floats of an f32 load (bf16 → f32 is exact) without an f32 copy of the model."""
    inside = {id(p) for p in adapter.layers.parameters()}
    with torch.no_grad(), upcast([p for p in adapter.model.parameters() if id(p) not in inside]):
        hidden = adapter.embed(ids)
        for index in range(adapter.num_layers):
            with upcast(adapter.layers[index].parameters()):
                hidden = adapter.layer_forward(index, hidden)
        return adapter.head(hidden)


def openvino_logits(xml: Path, device: str = "CPU", precision: str = "f32",
                    chunk: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of whole windows from zero state; with `chunk`, each window is fed in calls of
    `chunk` tokens, so later tokens read the state the IR carried (chunk=1: pure decode)."""
    ir = StatefulIR(xml, device, precision, piece=chunk or PIECE)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        ir.reset()
        return torch.from_numpy(ir(ids.numpy()).astype(np.float32, copy=False))

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
    adapter = adapter_for(load_checkpoint(path, "stored"), str(path))

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return f32_logits(adapter, ids)

    return LogitsModel(logits, load_tokenizer(path), "torch", path, adapter.num_params())
