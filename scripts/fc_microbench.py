"""Is OpenVINO's FullyConnected the decode floor? One matrix-vector product of a decode step's
shapes, alone in a model, fp32 and every NNCF int8 / int4 format (`MODES`), timed per call and set
against the copy bandwidth: the share a lone kernel reaches bounds what the whole model can.

    python scripts/fc_microbench.py [--shapes 1536x6448,3072x1536] [--modes fp32,int8_asym] [--hints f32]
        [--dq-group-sizes default,0,32,128]

Default shapes: the Mamba-2 780m in_proj (1536 → 6448) and out_proj (3072 → 1536), and a
1536 × 50288 LM head, weights random; 2 threads, one stream, batch 1."""

from __future__ import annotations

import argparse
import time

import numpy as np

from shedder_ov.bench import memory_bandwidth
from shedder_ov.cpu import cpu_facts


def fc_model(inputs: int, outputs: int):
    """x [1, inputs] @ W.T, W [outputs, inputs] random f32: what NNCF compresses in our IRs."""
    import openvino as ov
    from openvino import opset13

    x = opset13.parameter([1, inputs], ov.Type.f32, name="x")
    weight = opset13.constant(np.random.default_rng(0).standard_normal((outputs, inputs), dtype=np.float32) * 0.02)
    return ov.Model([opset13.matmul(x, weight, False, True)], [x], "fc")


MODES = {  # NNCF settings by name: ours (int8_asym, int4_sym g128) and the alternatives OpenVINO has kernels for
    "fp32": None,
    "int8_asym": dict(mode="INT8_ASYM"),
    "int8_sym": dict(mode="INT8_SYM"),
    "int4_sym_g128": dict(mode="INT4_SYM", group_size=128),
    "int4_sym_g32": dict(mode="INT4_SYM", group_size=32),
    "int4_sym_channel": dict(mode="INT4_SYM", group_size=-1),
    "int4_asym_g128": dict(mode="INT4_ASYM", group_size=128),
}


def compressed(model, mode: str):
    import logging

    import nncf
    from nncf.common.logging import nncf_logger

    nncf_logger.setLevel(logging.ERROR)
    settings = MODES[mode]
    if settings is None:
        return model
    options = dict(settings, mode=getattr(nncf.CompressWeightsMode, settings["mode"]))
    if "group_size" in options:
        options |= dict(ratio=1.0, all_layers=True)
    return nncf.compress_weights(model.clone(), **options)


def weight_bytes(model) -> int:
    return sum(op.get_byte_size() for op in model.get_ordered_ops() if op.get_type_name() == "Constant")


def time_call(model, hint: str, threads: int, extra: dict, calls: int = 200) -> float:
    """Median seconds of one infer, after warm-up calls."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, **extra}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(1).standard_normal(tuple(model.inputs[0].shape), dtype=np.float32)
    for _ in range(20):
        request.infer({0: x})
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: x})
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1536x6448,3072x1536,1536x50288", help="INxOUT of each FullyConnected")
    parser.add_argument("--hints", default="f32")
    parser.add_argument("--dq-group-sizes", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help=f"weight formats (of {', '.join(MODES)})")
    args = parser.parse_args()
    cpu = cpu_facts()
    bandwidth = memory_bandwidth(args.threads)
    print(f"{cpu['model_name']} ({' '.join(cpu['flags'])}), {args.threads} threads, copy bandwidth {bandwidth:.1f} GB/s")
    print("| shape | weights | hint | DQ group | MB | µs/call | GB/s read | % of copy bandwidth |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        inputs, outputs = (int(n) for n in shape.split("x"))
        base = fc_model(inputs, outputs)
        for mode in args.modes.split(","):
            model = compressed(base, mode)
            size = weight_bytes(model)
            for hint in args.hints.split(","):
                for group in args.dq_group_sizes.split(",") if mode != "fp32" else ["-"]:
                    extra = {} if group in ("default", "-") else {"DYNAMIC_QUANTIZATION_GROUP_SIZE": int(group)}
                    seconds = time_call(model, hint, args.threads, extra)
                    rate = size / seconds / 1e9
                    print(f"| {shape} | {mode} | {hint} | {group} | {size / 2**20:.1f} | {seconds * 1e6:.0f} | {rate:.1f} | "
                          f"{100 * rate / bandwidth:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
