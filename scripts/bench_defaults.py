"""Pick the runtime defaults by measurement: one IR under every INFERENCE_PRECISION_HINT ×
INFERENCE_NUM_THREADS × DYNAMIC_QUANTIZATION_GROUP_SIZE combination (one stream, batch 1), back
to back; the CPU's lscpu model name and flags recorded with them.

    python scripts/bench_defaults.py IR_DIR OUT.json [--precisions f32,bf16,f32/bf16] [--threads 1,2]
        [--dq-group-sizes default,0,32,128] [--rounds 3]

The group size is the CPU plugin's dynamic quantization of activations for int8/int4 weights
(0: off, weights decompressed instead; "default": the plugin's own choice).

The CPU plugin stores the conv/SSM states at the inference precision (its runtime model shows
bf16 MemoryInput/MemoryOutput under the bf16 hint), so the precision rows are also the state
precision choice; `shedder-ov eval --chunk 1 --precision …` measures its PPL effect."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from shedder_ov.bench import run_bench
from shedder_ov.cpu import cpu_facts
from shedder_ov.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--precisions", default="f32,bf16", help="hints, or prompt/decode pairs such as f32/bf16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--lengths", default="512")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dq-group-sizes", default="default")
    parser.add_argument("--rounds", type=int, default=1, help="times through the whole grid, round robin: a noisy "
                        "machine's drift then hits every combination alike (medians over rounds)")
    args = parser.parse_args()
    lengths = tuple(int(n) for n in args.lengths.split(","))
    grid = [(precision, int(threads), group) for precision in args.precisions.split(",")
            for threads in args.threads.split(",") for group in args.dq_group_sizes.split(",")]
    samples: dict[tuple, list[dict]] = {combo: [] for combo in grid}
    for turn in range(args.rounds):
        for precision, threads, group in grid:
            extra = {} if group == "default" else {"DYNAMIC_QUANTIZATION_GROUP_SIZE": int(group)}
            result = run_bench([args.ir], [f"{precision} {threads}t dq {group}"], threads, prompt_lengths=lengths,
                               new_tokens=args.new_tokens, repeats=1, precision=precision, ov_config=extra)
            row = result["rows"][0]
            samples[precision, threads, group].append({
                "bandwidth_gbs": result["bandwidth_gbs"], "prefill_ms": {n: row["prefill_ms"][n]["median"] for n in lengths},
                "decode_tok_s": row["decode"]["tok_s"]["median"], "bandwidth_fraction": row["decode"]["bandwidth_fraction"]})
            r = samples[precision, threads, group][-1]
            print(f"round {turn + 1}: {precision:>8} {threads}t dq {group}: prefill {r['prefill_ms']} ms, decode "
                  f"{r['decode_tok_s']:.1f} tok/s, {100 * r['bandwidth_fraction']:.0f}% of {r['bandwidth_gbs']:.1f} GB/s", flush=True)
    rows = []
    for (precision, threads, group), runs in samples.items():
        rows.append({"precision": precision, "threads": threads, "dq_group_size": group, "rounds": runs,
                     "bandwidth_gbs": statistics.median(r["bandwidth_gbs"] for r in runs),
                     "prefill_ms": {n: statistics.median(r["prefill_ms"][n] for r in runs) for n in lengths},
                     "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
                     "bandwidth_fraction": statistics.median(r["bandwidth_fraction"] for r in runs)})
        r = rows[-1]
        print(f"median of {len(runs)}: {precision:>8} {threads}t dq {group}: prefill {r['prefill_ms']} ms, decode {r['decode_tok_s']:.1f} tok/s")
    write_json(args.out, {"ir": str(args.ir), "cpu": cpu_facts(), "rows": rows})


if __name__ == "__main__":
    main()
