"""Per-token cost of optimum-intel's `generate` vs our lean loop (`StatefulIR.greedy`) on the
same stateful IR, same compile config: the difference is Python / HF overhead, not graph work.

    python scripts/bench_generate_overhead.py IR_DIR [--new-tokens 64] [--precision bf16]"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir_dir", type=Path)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import shedder_ov  # noqa: F401  (registers our model types with optimum-intel)
    from optimum.intel import OVModelForCausalLM

    from shedder_ov.runtime import StatefulIR

    config = {"INFERENCE_PRECISION_HINT": args.precision, "INFERENCE_NUM_THREADS": args.threads}
    prompt = np.arange(2, 34)
    lean = StatefulIR(args.ir_dir, config=config, specialize=False)  # the same single compile
    lean.greedy(prompt, 4)  # warm-up
    _, lean_rate = lean.greedy(prompt, args.new_tokens)
    model = OVModelForCausalLM.from_pretrained(args.ir_dir, ov_config=config, compile=True)
    ids = torch.from_numpy(prompt)[None]
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, **kwargs)
    hf_rate = (args.new_tokens - 1) / (time.perf_counter() - start - prefill)
    result = {"ir": str(args.ir_dir), **config, "new_tokens": args.new_tokens, "lean_tok_s": lean_rate, "generate_tok_s": hf_rate,
              "overhead_ms_per_token": 1e3 / hf_rate - 1e3 / lean_rate}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
