"""Memory budget per stage at real model sizes, with RANDOM weights of the published shapes (no
such checkpoints offline): each stage runs as its own `shedder-ov` process under
`/usr/bin/time -v`; we record its peak resident set (VmHWM, what time reports as "Maximum
resident set size"), wall time and the bytes it wrote.

    python scripts/memory_budget.py make mamba-2.8b runs/memory/mamba-2.8b --dtype bfloat16
    flock /tmp/heavy.lock python scripts/memory_budget.py run runs/memory/mamba-2.8b --stages export,int8,int4

`make` writes a checkpoint folder (safetensors in the given dtype, the GPT-NeoX tokenizer of
../shared/data/tokenizers, a MODEL_CARD.md and `"random_weights": true` in its config saying
the weights are random); `run` appends one JSON row per stage to RUN/memory.jsonl and prints it.
Random weights: memory, time and size mean something here, quality never."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import (FalconMambaConfig, FalconMambaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig,
                          MambaForCausalLM, PreTrainedTokenizerFast)

sys.path.insert(0, str(Path(__file__).parent))
from bench_random import SHAPES as BENCH_SHAPES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
CALIBRATION = REPO.parent / "shared" / "data" / "tinystories" / "eval.txt"
SHAPES = {  # the published checkpoints' config.json shapes (vocab padded as they pad it)
    **BENCH_SHAPES,
    "mamba-2.8b": lambda: MambaForCausalLM(MambaConfig(  # state-spaces/mamba-2.8b-hf
        hidden_size=2560, num_hidden_layers=64, state_size=16, expand=2, intermediate_size=5120,
        time_step_rank=160, vocab_size=50280, tie_word_embeddings=True)),
    "mamba2-2.7b": lambda: Mamba2ForCausalLM(Mamba2Config(  # state-spaces/mamba2-2.7b
        hidden_size=2560, num_hidden_layers=64, state_size=128, head_dim=64, num_heads=80, n_groups=1,
        expand=2, vocab_size=50288, tie_word_embeddings=True)),
    "falcon-mamba-7b": lambda: FalconMambaForCausalLM(FalconMambaConfig(  # tiiuae/falcon-mamba-7b
        hidden_size=4096, num_hidden_layers=64, state_size=16, expand=2, intermediate_size=8192,
        time_step_rank=256, vocab_size=65024, tie_word_embeddings=False, mixer_rms_eps=1e-6)),
}
NO_PARITY = "from shedder_ov.export.exporter import export_checkpoint as e; import sys; e(sys.argv[1], sys.argv[2], parity=False)"  # = export --no-parity
STAGES = {  # stage -> shedder-ov arguments (MODEL: the checkpoint, RUN: the run folder); "-c": a python -c line
    "export": ["export", "{MODEL}", "{RUN}/ir/fp32"],
    "export-no-parity": ["-c", NO_PARITY, "{MODEL}", "{RUN}/ir/fp32"],
    "export-14g": ["export", "{MODEL}", "{RUN}/ir/fp32", "--max-memory", "14"],  # parity in layer groups where needed
    "int8": ["compress", "{RUN}/ir/fp32", "{RUN}/ir/int8", "--mode", "int8_asym"],
    "int4": ["compress", "{RUN}/ir/fp32", "{RUN}/ir/int4", "--mode", "int4_sym"],
    "int4-awq": ["compress", "{RUN}/ir/fp32", "{RUN}/ir/int4-awq", "--mode", "int4_sym", "--awq", "--scale-estimation",
                 "--dataset", str(CALIBRATION)],
    "eval-int4": ["eval", "{RUN}/ir/int4", "--ppl", "tinystories", "--tasks", "none", "--ppl-windows", "4"],
    "bench-int4": ["bench", "{RUN}/ir/int4", "--lengths", "512", "--new-tokens", "16", "--repeats", "1"],
}


def make(shape: str, folder: Path, dtype: str) -> None:
    """The random-weight checkpoint of `shape`, built directly in `dtype` (seed 0)."""
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, dtype))
    model = SHAPES[shape]().eval()
    model.config.random_weights = True
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>").save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    (folder / "MODEL_CARD.md").write_text(
        f"# {shape} — RANDOM WEIGHTS\n\nNot a trained model: the shape of the published {shape} "
        f"({params / 1e9:.2f} B parameters, {dtype}) with random weights, written by scripts/memory_budget.py "
        "for memory and time measurements. Its outputs mean nothing.\n"
    )


def measure(command: list[str], written: Path) -> dict:
    """Run `command` under /usr/bin/time -v: peak RSS, wall seconds, bytes under `written`, status."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    phases = [line for line in done.stderr.splitlines() if re.match(r"^(export|parity|compress|eval|bench): ", line)]
    return {
        "peak_rss_gib": round(int(peak.group(1)) / 2**20, 2) if peak else None,
        "wall_s": round(wall, 1),
        "disk_gib": round(sum(f.stat().st_size for f in written.rglob("*") if f.is_file()) / 2**30, 2) if written.exists() else 0,
        "returncode": done.returncode,
        "phases": phases,
        "error": [line for line in done.stderr.splitlines() if line.startswith("error:")][-1:] or None,
    }


def run(run_dir: Path, stages: list[str], model: Path) -> None:
    cli = str(Path(sys.executable).parent / "shedder-ov")
    for stage in stages:
        args = [a.format(MODEL=model, RUN=run_dir) for a in STAGES[stage]]
        written = Path(next((a for a in reversed(args) if "/ir/" in a), run_dir / "none"))  # the IR folder it writes
        program = sys.executable if args[0] == "-c" else cli
        row = {"stage": stage, "command": f"{Path(program).name} " + " ".join(args), **measure([program, *args], written)}
        with open(run_dir / "memory.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    maker = sub.add_parser("make", help="write a random-weight checkpoint of a published shape")
    maker.add_argument("shape", choices=sorted(SHAPES))
    maker.add_argument("out", type=Path, help="run folder (the checkpoint goes to OUT/model)")
    maker.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    runner = sub.add_parser("run", help="measure stages on RUN/model")
    runner.add_argument("run_dir", type=Path)
    runner.add_argument("--stages", default="export,int8,int4", help=f"comma-separated, of {', '.join(STAGES)}")
    args = parser.parse_args()
    if args.command == "make":
        make(args.shape, args.out / "model", args.dtype)
    else:
        run(args.run_dir, args.stages.split(","), args.run_dir / "model")
