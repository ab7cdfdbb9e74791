"""Our IR vs optimum-intel's own export of the SAME random 790m-shaped Mamba-1, plus our
780m-shaped Mamba-2, benchmarked back to back in one run (`shedder_ov.bench.run_bench`).

optimum-intel's Mamba-1 export only works with transformers ≤ 5.3, so the baseline IR is made
in a separate venv (`--optimum-python`, see docs/speed.md) from a `save_pretrained` copy of the
random model; both fp32 IRs are then compressed by the same NNCF call (int8_asym, int4_sym).

    python scripts/bench_vs_optimum.py runs/bench/vs-optimum --optimum-python /tmp/oi53/bin/python

Weights are random: speed and size only, never quality."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from shedder_ov.bench import format_table, run_bench
from shedder_ov.export.exporter import export_model
from shedder_ov.io import write_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_random import SHAPES, variant  # noqa: E402


def random_checkpoint(shape: str, folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        SHAPES[shape]().eval().save_pretrained(folder)
    return folder


def ours(checkpoint: Path, out: Path) -> None:
    if not (out / "openvino_model.xml").is_file():
        from transformers import AutoModelForCausalLM

        export_model(AutoModelForCausalLM.from_pretrained(checkpoint).eval(), out)


def optimum_own(checkpoint: Path, out: Path, python: str) -> None:
    """optimum-intel's stock export (its own mamba config), in the venv that runs it."""
    if not (out / "openvino_model.xml").is_file():
        cli = Path(python).parent / "optimum-cli"
        subprocess.run([str(cli), "export", "openvino", "--model", str(checkpoint), "--task", "text-generation-with-past",
                        "--weight-format", "fp32", str(out)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--optimum-python", required=True, help="python of a venv with transformers 5.3 + optimum-intel")
    parser.add_argument("--variants", default="fp32,int8,int4", help="Mamba-1 variants, ours and optimum's")
    parser.add_argument("--mamba2-variants", default="int8", help="empty: no Mamba-2 rows")
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (0: cold first calls)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", help="INFERENCE_PRECISION_HINT for every variant")
    parser.add_argument("--optimum-runtime", choices=("dynamic", "specialized"), default="dynamic",
                        help="optimum-intel's IRs on one dynamic compile, as OVModelForCausalLM runs them, or on our runtime")
    parser.add_argument("--build-only", action="store_true", help="export and compress every IR, time nothing")
    args = parser.parse_args()
    m1 = random_checkpoint("mamba-790m", args.out / "hf-mamba-790m")
    ours(m1, args.out / "ours-mamba" / "fp32")
    optimum_own(m1, args.out / "optimum-mamba" / "fp32", args.optimum_python)
    wanted = {"optimum-mamba": args.variants, "ours-mamba": args.variants}
    if args.mamba2_variants:
        ours(random_checkpoint("mamba2-780m", args.out / "hf-mamba2-780m"), args.out / "ours-mamba2" / "fp32")
        wanted["ours-mamba2"] = args.mamba2_variants
    rows = [(f"{name} {tag}", variant(args.out / name / "fp32", tag)) for name, tags in wanted.items()
            for tag in tags.split(",")]
    if args.build_only:
        return
    lengths = tuple(int(n) for n in args.lengths.split(","))
    specialize = [not label.startswith("optimum") or args.optimum_runtime == "specialized" for label, _ in rows]
    result = run_bench([p for _, p in rows], [label for label, _ in rows], specialize=specialize, threads=args.threads, prompt_lengths=lengths,
                       new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats, precision=args.precision, profile=True)
    result["weights"] = "random (speed/size only)"
    name = f"bench-{'-'.join(map(str, lengths))}-{args.precision}-warmup{args.warmup}-optimum-{args.optimum_runtime}"
    write_json(args.out / f"{name}.json", result)
    (args.out / f"{name}.md").write_text(format_table(result) + "\n")
    print(format_table(result))


if __name__ == "__main__":
    main()
