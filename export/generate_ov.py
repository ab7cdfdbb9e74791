"""Greedy generation with a shedder-ov IR using only OpenVINO, NumPy and `tokenizers`
(no torch, no transformers, no optimum).

The IR is stateful: every layer's conv window and SSM state are OpenVINO variables. A call
with the whole prompt fills them (prefill), then each call with one token advances them
(decode); reset_state() starts a new sequence. Decode runs on a second compile of the same
model reshaped to one token: with a static length OpenVINO drops each layer's prefill branch
(2-2.6x faster decode); the prompt's state is copied into it once.

    python export/generate_ov.py OUTPUT/ov/int4 "Once upon a time" --max-new-tokens 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import openvino as ov
from tokenizers import Tokenizer

# The defaults shedder_ov.cpu.DEFAULTS measured on every CPU kind so far (this script runs
# without shedder_ov; tests/test_cpu.py keeps the two equal)
PRECISION, THREADS, STREAMS = "f32", None, 1


def one_token(model):
    """A copy of the model for input [1, 1]: static shapes, state variables included."""
    model = model.clone()
    model.reshape({"input_ids": [1, 1], "attention_mask": [1, 1], "beam_idx": [1]})
    for variable in model.get_variables():
        info = variable.info
        shape = info.data_shape
        shape[0] = 1
        info.data_shape = shape
        variable.update(info)
    model.validate_nodes_and_infer_types()
    return model


def generate(ir_dir: Path, prompt: str, max_new_tokens: int, precision: str = PRECISION,
             threads: int | None = THREADS, streams: int = STREAMS) -> tuple[str, float]:
    """The prompt's greedy continuation and the decode speed in tokens/s. One stream: batch-1
    decode is latency-bound, extra streams only split the cores. The precision hint is also the
    precision the CPU plugin stores the states in: f32 keeps them exact, bf16 is faster."""
    tokenizer = Tokenizer.from_file(str(ir_dir / "tokenizer.json"))
    eos = json.loads((ir_dir / "config.json").read_text()).get("eos_token_id")
    config = {"NUM_STREAMS": streams, "INFERENCE_PRECISION_HINT": precision}
    config |= {"INFERENCE_NUM_THREADS": threads} if threads else {}
    core = ov.Core()
    model = core.read_model(ir_dir / "openvino_model.xml")
    prefill = core.compile_model(model, "CPU", config).create_infer_request()
    decode = core.compile_model(one_token(model), "CPU", config).create_infer_request()
    print("state variables:", len(prefill.query_state()))

    def step(request, ids: list[int]) -> int:
        ids_array = np.array([ids], dtype=np.int64)
        inputs = {"input_ids": ids_array, "attention_mask": np.ones_like(ids_array), "beam_idx": np.zeros(1, np.int32)}
        return int(request.infer(inputs)["logits"][0, -1].argmax())

    prefill.reset_state()
    tokens = [step(prefill, tokenizer.encode(prompt).ids)]
    start = time.perf_counter()
    states = {state.name: state.state for state in prefill.query_state()}
    for state in decode.query_state():
        state.state = states[state.name]
    while len(tokens) < max_new_tokens and tokens[-1] != eos:
        tokens.append(step(decode, [tokens[-1]]))
    elapsed = time.perf_counter() - start
    return tokenizer.decode(tokens), (len(tokens) - 1) / max(elapsed, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir_dir", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--precision", default=PRECISION, help="INFERENCE_PRECISION_HINT and state precision: f32 (exact) or bf16 (faster)")
    parser.add_argument("--threads", type=int, default=THREADS, help="INFERENCE_NUM_THREADS (default: all cores)")
    parser.add_argument("--streams", type=int, default=STREAMS, help="NUM_STREAMS")
    args = parser.parse_args()
    text, speed = generate(args.ir_dir, args.prompt, args.max_new_tokens, args.precision, args.threads, args.streams)
    print(args.prompt + text)
    print(f"decode: {speed:.1f} tok/s")


if __name__ == "__main__":
    main()
