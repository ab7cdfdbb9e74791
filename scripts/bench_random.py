"""Speed of full-size shapes with RANDOM weights (no such checkpoints offline): original vs
25% of blocks removed, each exported to fp32 and compressed to int8 / int4, side by side.

    python scripts/bench_random.py mamba2-780m runs/bench/mamba2-780m [--lengths 128,512,2048] [--new-tokens 128]

Weights are random, so only speed and size mean anything here, never quality. Ends with the
issue's targets (int8 decode ≥ 1.7× fp32, int4 ≥ 2.5×, 25% blocks removed ≥ 1.25×) and the
share of measured copy bandwidth each decode reaches (aim ≥ 60%)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.bench import format_table, run_bench
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.exporter import export_model
from shedder_ov.io import write_json

SHAPES = {  # the published checkpoints' shapes (vocab padded as in mamba_ssm)
    "mamba2-780m": lambda: Mamba2ForCausalLM(Mamba2Config(
        hidden_size=1536, num_hidden_layers=48, state_size=128, head_dim=64, num_heads=48, n_groups=1,
        expand=2, vocab_size=50288, tie_word_embeddings=True)),
    "mamba-790m": lambda: MambaForCausalLM(MambaConfig(
        hidden_size=1536, num_hidden_layers=48, state_size=16, expand=2, intermediate_size=3072,
        time_step_rank=96, vocab_size=50280, tie_word_embeddings=True)),
}


MODES = {"int8": "int8_asym", "int4": "int4_sym"}  # NNCF modes of the compressed variants
TARGETS = {("int8", "fp32"): 1.7, ("int4", "fp32"): 2.5}
PRUNED_TARGET = 1.25


def targets(result: dict) -> list[str]:
    """One line per target: measured decode ratio, goal, met or not; then bandwidth shares."""
    rate = {tuple(r["label"].split()[-2:]): r["decode"]["tok_s"]["median"] for r in result["rows"] if r.get("decode")}
    lines = []
    for name in ("original", "pruned25"):
        for (precision, base), goal in TARGETS.items():
            ratio = rate[name, precision] / rate[name, base]
            lines.append(f"{name} {precision} vs {base}: {ratio:.2f}x (target {goal}x) {'met' if ratio >= goal else 'MISSED'}")
    for precision in ("fp32", "int8", "int4"):
        ratio = rate["pruned25", precision] / rate["original", precision]
        lines.append(f"pruned25 vs original {precision}: {ratio:.2f}x (target {PRUNED_TARGET}x) {'met' if ratio >= PRUNED_TARGET else 'MISSED'}")
    for row in result["rows"]:
        if row.get("decode"):
            d = row["decode"]
            lines.append(f"{row['label']}: {d['bytes_per_token'] / 2**20:.0f} MB/token, {100 * d['bandwidth_fraction']:.0f}% of copy bandwidth")
    return lines


def variant(fp32: Path, tag: str) -> Path:
    """The fp32 IR or its NNCF-compressed sibling folder `tag` (made once)."""
    target = fp32.parent / tag
    if tag != "fp32" and not (target / "openvino_model.xml").is_file():
        compress_ir(fp32, target, CompressOptions(mode=MODES[tag]))
    return target


def build(shape: str, name: str):
    """The random model (seed 0), or it with 25% of its blocks (every 4th from block 1) removed.
    Built only when its IR is missing: the benchmark processes need the memory."""
    torch.manual_seed(0)
    model = SHAPES[shape]().eval()
    if name == "original":
        return model
    removed = [Candidate(i, "mamba_block") for i in range(1, model.config.num_hidden_layers, 4)]
    return adapter_for(model).pruned_model(removed)


def main(shape: str, out: Path, lengths=(128, 512, 2048), new_tokens: int = 128, repeats: int = 1, threads: int = 2,
         precision: str = "bf16") -> None:
    paths, labels = [], []
    for name in ("original", "pruned25"):
        fp32 = out / name / "fp32"
        if not (fp32 / "openvino_model.xml").is_file():
            export_model(build(shape, name), fp32)
        for tag in ("fp32", "int8", "int4"):
            paths.append(variant(fp32, tag))
            labels.append(f"{shape} RANDOM {name} {tag}")
    result = run_bench(paths, labels, threads, prompt_lengths=lengths, new_tokens=new_tokens, repeats=repeats,
                       precision=precision, profile=True)
    result["weights"] = "random (speed/size only)"
    result["targets"] = targets(result)
    write_json(out / "bench.json", result)
    text = "\n".join([format_table(result), "", *result["targets"], ""] + [
        f"{row['label']} top ops, {stage}: {json.dumps(row.get(key, [])[:5])}" for row in result["rows"]
        for stage, key in (("decode", "top_ops"), ("prefill", "top_ops_prefill"))])
    (out / "bench.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--lengths", default="128,512,2048", help="prefill prompt lengths")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up (a 790m prefill at 2048 takes ~30 s here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", help="INFERENCE_PRECISION_HINT (bf16: OpenVINO's default on this CPU)")
    args = parser.parse_args()
    main(args.shape, args.out, tuple(int(n) for n in args.lengths.split(",")), args.new_tokens, args.repeats, args.threads,
         args.precision)
