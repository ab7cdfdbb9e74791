"""Speed of full-size shapes with RANDOM weights (no such checkpoints offline): original vs
25% of blocks removed, each exported to fp32 and compressed to int8 / int4, side by side.

    python scripts/bench_random.py mamba2-780m runs/bench/mamba2-780m   (or mamba-790m)

Weights are random, so only speed and size mean anything here, never quality."""

from __future__ import annotations

import json
import sys
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


def main(shape: str, out: Path, lengths=(128, 512, 2048)) -> None:
    torch.manual_seed(0)
    model = SHAPES[shape]().eval()
    layers = model.config.num_hidden_layers
    removed = [Candidate(i, "mamba_block") for i in range(1, layers, 4)]  # 25% of blocks, spread out
    variants = {"original": model, "pruned25": adapter_for(model).pruned_model(removed)}
    paths, labels = [], []
    for name, variant in variants.items():
        fp32 = out / name / "fp32"
        if not (fp32 / "openvino_model.xml").is_file():
            export_model(variant, fp32)
        for mode, tag in (("int8_asym", "int8"), ("int4_sym", "int4")):
            if not (out / name / tag / "openvino_model.xml").is_file():
                compress_ir(fp32, out / name / tag, CompressOptions(mode=mode))
        for tag in ("fp32", "int8", "int4"):
            paths.append(out / name / tag)
            labels.append(f"{shape} RANDOM {name} {tag}")
    del model, variants
    result = run_bench(paths, labels, prompt_lengths=lengths, repeats=2, profile=True)
    result["weights"] = "random (speed/size only)"
    write_json(out / "bench.json", result)
    (out / "bench.md").write_text(format_table(result) + "\n")
    print(format_table(result))
    for row in result["rows"]:
        print(row["label"], json.dumps(row.get("top_ops", [])[:5]))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
