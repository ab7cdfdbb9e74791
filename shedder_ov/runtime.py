"""Running an OpenVINO IR: the one runtime behind parity checks, evaluation and `shedder-ov bench`.

A stateful Mamba IR takes dynamic [batch, length] inputs, and each layer holds an If between
the prefill scan and the one-token step. Compiled once as is (what OVModelForCausalLM does),
every call pays dynamic-shape planning and every decode token pays the If. So `StatefulIR`
compiles the same ov.Model once per shape it is fed:

* one token: reshaped to [batch, 1], where the If's condition is a constant and OpenVINO's
  UnrollIf keeps only the step branch (mamba1-tiny decode 110 → 285 tok/s);
* prompts: pieces of `piece` tokens on a [batch, piece] compile (static shapes prefill
  1.35–1.6x faster and bound activation memory), any remainder on the dynamic compile.

Each compilation may run at its own precision: `precision="f32/bf16"` compiles prompt pieces
(and the dynamic compile) under the f32 hint and decode steps under bf16 — an exact prefill with a
faster decode where the CPU's bf16 kernels win (docs/speed.md "Runtime defaults per CPU").

The recurrent state follows the calls: when the next call runs on another compilation, its
variables are copied over (a few MB; a Zamba2 KV cache, of whatever length it has grown to, goes
the same way). A stateless IR runs whole calls on the dynamic compile."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

from .errors import ShedderError

IR_FILE = "openvino_model.xml"
PIECE = 512  # prompt tokens per prefill call: long enough for matmul-bound work, short enough to bound memory
HINTS = ("f32", "bf16", "f16")


def compile_precisions(precision: str, field: str = "precision") -> tuple[str, str]:
    """(prompt, decode) INFERENCE_PRECISION_HINTs of a precision: "bf16" for both, or "f32/bf16"
    (prompt pieces and the dynamic compile at f32, one-token steps at bf16)."""
    parts = precision.split("/")
    if len(parts) > 2 or not set(parts) <= set(HINTS):
        raise ShedderError(f"{field}: {precision!r} is not a hint ({', '.join(HINTS)}) or a prompt/decode pair of them (e.g. f32/bf16)")
    return parts[0], parts[-1]


def ir_file(path: Path) -> Path | None:
    """The IR .xml of a path (the file itself or a folder holding openvino_model.xml)."""
    if path.is_file() and path.suffix == ".xml":
        return path
    if path.is_dir() and (path / IR_FILE).is_file():
        return path / IR_FILE
    return None


def read_ir(path: str | Path):
    """The ov.Model of an IR folder or .xml; a missing or corrupted IR is one clear error."""
    import openvino as ov

    xml = ir_file(Path(path)) or Path(path) / IR_FILE
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise ShedderError(f"{path}: not an OpenVINO IR folder (no {IR_FILE} + .bin)")
    try:
        return ov.Core().read_model(xml)
    except RuntimeError as error:
        reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]  # OpenVINO's own words come last
        raise ShedderError(f"{path}: corrupted IR ({reason[:200]})") from None


def ir_feeds(input_names: set[str], ids: np.ndarray, past: int = 0, full_mask: bool = False) -> dict[str, np.ndarray]:
    """Inputs of an optimum-style decoder IR for `ids` [B, T] after `past` tokens already in its
    state; the attention mask covers the new tokens, or with `full_mask` every token so far (as
    transformers and openvino.genai feed it; our IRs take either, optimum-intel's attention IRs
    need the latter)."""
    batch, length = ids.shape
    known = {
        "input_ids": lambda: ids,
        "attention_mask": lambda: np.ones((batch, past + length if full_mask else length), dtype=np.int64),
        "position_ids": lambda: np.tile(np.arange(past, past + length, dtype=np.int64), (batch, 1)),
        "cache_position": lambda: np.arange(past, past + length, dtype=np.int64),
        "beam_idx": lambda: np.arange(batch, dtype=np.int32),
    }
    unknown = sorted(input_names - set(known))
    if unknown:
        raise ShedderError(f"IR input(s) {', '.join(unknown)} not understood (known: {', '.join(known)})")
    return {name: known[name]() for name in input_names}


def genai_generate(pipe, prompt: np.ndarray, new_tokens: int):
    """openvino.genai `LLMPipeline.generate` on token ids [l], greedy, exactly `new_tokens` tokens
    (EOS ignored); returns its EncodedResults (tokens, perf_metrics)."""
    import openvino as ov
    import openvino_genai

    ids = prompt[None].astype(np.int64)
    inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
    return pipe.generate(inputs, openvino_genai.GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True, do_sample=False))


def plugin_properties(hint: str, config: dict | None = None) -> dict:
    """CPU plugin properties of a compile at `hint`: KV caches (hybrids' attention, fused into the
    plugin's SDPA) kept at the inference precision, as the recurrent states are (the plugin's
    default would be a lower precision)."""
    return {"INFERENCE_PRECISION_HINT": hint, "KV_CACHE_PRECISION": hint, **(config or {})}


def with_static_shape(model, batch: int, length: int):
    """A copy of `model` for inputs of exactly [batch, length], its state variables' batch included
    (a KV cache variable keeps its dynamic length: it grows by `length` each call)."""
    names = {port.any_name for port in model.inputs}
    return reshaped(model, {name: feed.shape for name, feed in ir_feeds(names, np.zeros((batch, length), np.int64)).items()}, batch)


def reshaped(model, shapes: dict, batch: int):
    """A copy of `model` with these input shapes and state variables of this batch."""
    static = model.clone()
    static.reshape(shapes)
    for variable in static.get_variables():
        info = variable.info
        shape = info.data_shape
        shape[0] = batch
        info.data_shape = shape
        variable.update(info)
    static.validate_nodes_and_infer_types()
    return static


def with_last_token_logits(model):
    """A copy of `model` whose LM head reads only the last position: a prompt that only needs
    the next token skips [length - 1, vocab] of head work (about 10% of a 790m prefill)."""
    from openvino import opset8

    model = model.clone()
    result = next(r for r in model.get_results() if "logits" in r.input_value(0).get_names())
    head = result.input_value(0).get_node()
    while head.get_type_name() != "MatMul":
        head = head.input_value(0).get_node()
    last = opset8.slice(head.input_value(0), [-1], [np.iinfo(np.int64).max], [1], [1])
    head.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return model


class StatefulIR:
    """Logits for token ids [batch, length], continuing the state of the previous calls."""

    def __init__(self, path: str | Path, device: str = "CPU", precision: str = "f32", config: dict | None = None,
                 piece: int | None = PIECE, specialize: bool = True, last_logits: bool = False, one_compile: bool = False):
        """`specialize=False` runs everything on the one dynamic compile, as OVModelForCausalLM does;
        `last_logits` computes (and returns) only each call's last position; `one_compile` keeps at
        most one compilation alive (each holds its own copy of the weights, f32 under the f32 hint:
        at 2.7B parameters, 11 GB each): a call needing another shape drops the current one, its
        state carried over."""
        import openvino as ov

        self.path = Path(path)
        self.model = read_ir(path)
        self.last_logits = last_logits
        if last_logits:
            self.model = with_last_token_logits(self.model)
        self.stateful = bool(self.model.get_sinks())
        self.specialize = specialize and self.stateful
        self.piece = piece if self.specialize else None
        self.names = {port.any_name for port in self.model.inputs}
        self.logits_name = next((p.any_name for p in self.model.outputs if "logits" in p.names), self.model.outputs[0].any_name)
        self.core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in self.core.available_devices}:
            raise ShedderError(f"device: {device} not available (available: {', '.join(self.core.available_devices)})")
        self.device = device
        self.prompt_hint, self.decode_hint = compile_precisions(precision)
        self.properties = {hint: plugin_properties(hint, config) for hint in (self.prompt_hint, self.decode_hint)}
        self.one_compile = one_compile
        self.requests: dict = {}
        self.live = None  # the request whose variables hold the current state
        self.held: dict | None = None  # the state of a dropped compilation, for the next one
        self.past = 0

    def request(self, batch: int, length: int):
        """The infer request for this input shape, compiled on first use."""
        key = (batch, length) if self.specialize and length in (1, self.piece) else None
        if key not in self.requests:
            if self.one_compile and self.requests:
                self.drop_compiles()
            model = self.model if key is None else with_static_shape(self.model, batch, length)
            hint = self.decode_hint if key is not None and length == 1 else self.prompt_hint
            try:
                compiled = self.core.compile_model(model, self.device, self.properties[hint])
            except RuntimeError as error:
                raise ShedderError(f"{self.path}: IR does not compile ({str(error).splitlines()[0][:200]})") from None
            self.requests[key] = compiled.create_infer_request()
        return self.requests[key]

    def prepare(self, batch: int, lengths) -> None:
        """Compile now what calls of these prompt lengths (and decode steps) will use."""
        for length in lengths:
            for part in self.split(length):
                self.request(batch, part)
        if self.stateful:
            self.request(batch, 1)

    def split(self, length: int) -> list[int]:
        """Lengths of the calls a prompt of `length` tokens is fed in."""
        if not self.piece or length <= 1:
            return [length]
        return [self.piece] * (length // self.piece) + ([length % self.piece] if length % self.piece else [])

    def drop_compiles(self) -> None:
        """Free every compilation, keeping a copy of the current state for the next call."""
        if self.live is not None:
            self.held = {state.name: state.state.data.copy() for state in self.live.query_state()}
        self.requests.clear()
        self.live = None
        gc.collect()

    def reset(self) -> None:
        """Zero state: the next call starts a new sequence."""
        self.live, self.held, self.past = None, None, 0

    def _infer(self, ids: np.ndarray):
        request = self.request(*ids.shape)
        if request is not self.live:
            if self.live is None:
                request.reset_state()
                if self.held:
                    from openvino import Tensor

                    for state in request.query_state():
                        state.state = Tensor(self.held[state.name])
                self.held = None
            else:
                current = {state.name: state.state for state in self.live.query_state()}
                for state in request.query_state():
                    state.state = current[state.name]
            self.live = request
        dynamic = request is self.requests.get(None)  # a static compile fixed its mask's length
        request.infer(ir_feeds(self.names, ids, self.past, full_mask=dynamic))
        self.past += ids.shape[1]
        return request.get_tensor(self.logits_name).data

    def __call__(self, ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        """Logits [b, l, vocab] (or [b, 1, vocab] with `last_only` or `last_logits`) for ids [b, l]."""
        ids = np.asarray(ids, dtype=np.int64)
        last_only = last_only or self.last_logits
        if not self.stateful:
            self.reset()
        pieces, start = [], 0
        for length in self.split(ids.shape[1]):
            logits = self._infer(ids[:, start : start + length])
            start += length
            if not last_only:
                pieces.append(logits.copy())
        return logits[:, -1:].copy() if last_only else np.concatenate(pieces, axis=1)

    def greedy(self, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float]:
        """Greedy continuation of one prompt [l] from zero state; returns tokens and decode tok/s."""
        self.reset()
        tokens = [int(self(prompt[None], last_only=True)[0, -1].argmax())]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            tokens.append(int(self(np.array([[tokens[-1]]]), last_only=True)[0, -1].argmax()))
        elapsed = time.perf_counter() - start
        return tokens, (new_tokens - 1) / elapsed if elapsed > 0 else float("inf")
