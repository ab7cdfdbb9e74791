"""openvino.genai's LLMPipeline against our lean loop (`StatefulIR`) on the same IRs, side by side:
random-weight models of real shapes (speed only, never quality), int8 and int4.

    python scripts/bench_genai.py mamba2-780m runs/bench/mamba2-780m [--lengths 512] [--new-tokens 64]

The IRs are those of scripts/bench_random.py (made here when missing), given the GPT-NeoX
tokenizer's IRs (the published checkpoints' tokenizer), which LLMPipeline needs to load a folder.
Ends with genai's prefill and decode as a fraction of the lean loop's (target: within 15%)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_random import SHAPES, build, variant

from shedder_ov.bench import format_table, run_bench
from shedder_ov.checkpoints import load_tokenizer
from shedder_ov.cpu import runtime_defaults
from shedder_ov.export.exporter import export_model, export_tokenizer_irs
from shedder_ov.io import write_json

TOKENIZER = Path(__file__).parents[1] / "../shared/data/tokenizers/gpt-neox-20b/tokenizer.json"
TARGET = 0.85  # genai's speed / the lean loop's


def main(shape: str, out: Path, lengths=(512,), new_tokens: int = 64, repeats: int = 2, threads: int = 2, precision: str = "f32",
         variants=("int8", "int4")) -> None:
    fp32 = out / "original" / "fp32"
    if not (fp32 / "openvino_model.xml").is_file():
        export_model(build(shape, "original"), fp32)
    if not (fp32 / "openvino_tokenizer.xml").is_file():
        export_tokenizer_irs(load_tokenizer(TOKENIZER), fp32)
    paths = [variant(fp32, tag) for tag in variants]
    labels = [f"{shape} RANDOM {tag}" for tag in variants]
    result = run_bench(paths, labels, threads, prompt_lengths=lengths, new_tokens=new_tokens, repeats=repeats,
                       precision=precision, genai=True)
    result["weights"] = "random (speed only)"
    lines = []
    for row in result["rows"]:
        if "vs_lean" in row:
            ratios = {f"prefill {n}": r for n, r in row["vs_lean"]["prefill"].items()} | {"decode": row["vs_lean"]["decode"]}
            lines += [f"{row['label']} vs lean loop, {name}: {r:.2f} ({'met' if r >= TARGET else 'MISSED'}, target {TARGET})"
                      for name, r in ratios.items()]
    result["targets"] = lines
    write_json(out / "bench_genai.json", result)
    text = "\n".join([format_table(result), "", *lines])
    (out / "bench_genai.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--lengths", default="512", help="prefill prompt lengths; the first is also the decode prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: this CPU's (shedder_ov/cpu.py)")
    parser.add_argument("--precision", default=None, help="INFERENCE_PRECISION_HINT of both runtimes (default: this CPU's)")
    args = parser.parse_args()
    defaults = runtime_defaults()
    main(args.shape, args.out, tuple(int(n) for n in args.lengths.split(",")), args.new_tokens, args.repeats,
         args.threads or defaults.resolved_threads(), args.precision or defaults.precision)
