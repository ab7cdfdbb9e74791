"""Where a decode step's time goes, per op type, in the two ways an IR is compiled: with dynamic
shapes (openvino.genai's LLMPipeline, optimum-intel) and reshaped to one token (our runtime's
decode compile). Same IR, same process, one after the other.

    python scripts/profile_decode.py runs/bench/mamba2-780m/original/int4 [--steps 16]

Prints ms per step by op type (OpenVINO performance counters, summed over the steps) and the
wall time per step; docs/export.md explains the gap it shows."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov

from shedder_ov.runtime import ir_feeds, with_static_shape

WARMUP = 4


def profile(compiled, names: set[str], steps: int) -> tuple[float, Counter]:
    """Wall ms per step and ms per step by op type, from fresh states, one token per step."""
    request = compiled.create_infer_request()
    for state in request.query_state():
        state.reset()
    by_type: Counter = Counter()
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        request.infer(ir_feeds(names, np.array([[5 + step]]), past=step))
        if step >= WARMUP:
            for info in request.profiling_info:
                by_type[info.node_type] += info.real_time.total_seconds() * 1e3 / steps
    return (time.perf_counter() - start) * 1e3 / steps, by_type


def main(ir: Path, steps: int, threads: int, top: int) -> None:
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": threads}
    dynamic = core.read_model(ir / "openvino_model.xml")
    names = {port.any_name for port in dynamic.inputs}
    results = {name: profile(core.compile_model(model, "CPU", config), names, steps)
               for name, model in (("dynamic (genai)", dynamic), ("one token (lean loop)", with_static_shape(dynamic, 1, 1)))}
    print(f"{ir}, {steps} decode steps, {threads} threads, f32 hint, OpenVINO {ov.get_version()}")
    for name, (wall, by_type) in results.items():
        print(f"\n{name}: {wall:.1f} ms per step wall, {sum(by_type.values()):.1f} ms in ops")
        for op, ms in by_type.most_common(top):
            print(f"  {op:28s} {ms:7.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir", type=Path, help="an IR folder (openvino_model.xml)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    main(args.ir, args.steps, args.threads, args.top)
