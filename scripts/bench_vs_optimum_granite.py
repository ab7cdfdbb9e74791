"""Our IR vs optimum-intel 2.2.0's own `granitemoehybrid` export of the SAME model, side by side
in one run: granitemoehybrid-tiny (trained) and a RANDOM-weight model at Granite-4.0-H-Micro's
width (hidden 2048, its Mamba-2 / attention / MLP shapes and multipliers, NoPE, 6 of its 40 layers).

    flock /tmp/heavy.lock python scripts/bench_vs_optimum_granite.py runs/bench/vs-optimum-granite

Per model: both fp32 IRs (ours by `export_model`; optimum-intel's by `optimum-cli export
openvino` in its own process, where shedder_ov's registration cannot replace its config), each
compressed by the same `compress_ir` call (int8_asym, int4_sym); at the f32 and bf16 hints:
prefill-logit parity against torch at 16 / 512 / 2048 tokens (max abs diff and the share of
positions whose argmax agrees; torch is the adapter's exact forward, in f32), then prefill at
512 / 2048 and batch-1 decode through `shedder_ov.bench`. Ours run on our runtime (static-shape
pieces, If-free decode step), optimum-intel's on one dynamic compile as OVModelForCausalLM runs
them (the runtime then feeds the mask of every token so far, as OVModelForCausalLM does: its
attention needs it). Random weights: speed and exactness only, never quality."""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from shedder_ov import runtime
from shedder_ov.bench import ir_size, run_bench
from shedder_ov.errors import ShedderError
from shedder_ov.io import write_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_random import variant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO.parent / "shared" / "models" / "granitemoehybrid-tiny"
MICRO_LAYERS = ["mamba"] * 3 + ["attention"] + ["mamba"] * 2  # Micro: 36 Mamba-2 + 4 attention layers (every 10th)
MICRO = dict(  # Granite-4.0-H-Micro's shapes and multipliers (ibm-granite config.json)
    hidden_size=2048, shared_intermediate_size=8192, intermediate_size=8192, num_local_experts=0, num_experts_per_tok=0,
    num_attention_heads=32, num_key_value_heads=8, mamba_n_heads=64, mamba_d_head=64, mamba_d_state=128,
    mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=256, vocab_size=100352, position_embedding_type="nope",
    embedding_multiplier=12.0, attention_multiplier=0.015625, residual_multiplier=0.22, logits_scaling=8.0,
    initializer_range=0.1, max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=100257, eos_token_id=100257,
    pad_token_id=100256,
)
PARITY_LENGTHS = (16, 512, 2048)

def micro_checkpoint(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

        torch.manual_seed(0)
        config = GraniteMoeHybridConfig(**MICRO, layer_types=MICRO_LAYERS, num_hidden_layers=len(MICRO_LAYERS))
        GraniteMoeHybridForCausalLM(config).eval().save_pretrained(folder)
    return folder


def ours(checkpoint: Path, out: Path) -> Path:
    if not (out / "openvino_model.xml").is_file():
        from shedder_ov.checkpoints import load_checkpoint
        from shedder_ov.export.exporter import export_model

        export_model(load_checkpoint(checkpoint, "float32", "cpu"), out)
    return out


def optimum_own(checkpoint: Path, out: Path) -> Path:
    """optimum-intel's stock export (its GraniteMoeHybridOpenVINOConfig, per-token ov::Loop scan)."""
    if not (out / "openvino_model.xml").is_file():
        cli = Path(sys.executable).parent / "optimum-cli"
        subprocess.run([str(cli), "export", "openvino", "--model", str(checkpoint), "--task", "text-generation-with-past",
                        "--weight-format", "fp32", str(out)], check=True)
    return out


def torch_reference(checkpoint: Path, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded prompt ids [length] and torch's f32 logits for them (the adapter's exact forward)."""
    from shedder_ov.adapters import adapter_for
    from shedder_ov.checkpoints import load_checkpoint

    model = load_checkpoint(checkpoint, "float32", "cpu")
    ids = torch.randint(2, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = adapter_for(model).logits(ids[None])[0].numpy()
    return ids.numpy(), logits


def parity(ir_dir: Path, ids: np.ndarray, reference: np.ndarray, precision: str, specialize: bool) -> dict:
    """Max abs logit diff and argmax agreement of a prefill of the first n ids, per n."""
    ir, out = runtime.StatefulIR(ir_dir, precision=precision, specialize=specialize), {}
    for n in PARITY_LENGTHS:
        ir.reset()
        logits = ir(ids[None, :n])[0]
        out[n] = {"max_abs_diff": float(np.abs(logits - reference[:n]).max()),
                  "argmax_agree": float((logits.argmax(-1) == reference[:n].argmax(-1)).mean())}
    return out


def isolated_parity(*args) -> dict | str:
    """`parity` in a process of its own: optimum-intel's IR can crash the CPU plugin (SIGSEGV at the
    bf16 hint, OpenVINO 2026.4.1); the table then says so instead of the run dying."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        try:
            return pool.submit(parity, *args).result()
        except BrokenProcessPool:
            return "crashed"


def bench_row(path: Path, label: str, optimum: bool, args, precision: str) -> dict | str:
    """One `run_bench` row (its own process): ours on our runtime, optimum-intel's on the one dynamic
    compile. The long prompt goes first, so decode follows a 2048-token prompt."""
    try:
        return run_bench([path], [label], threads=args.threads, precision=precision, specialize=[not optimum],
                         prompt_lengths=(2048, 512), new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats)["rows"][0]
    except ShedderError as error:  # the benchmark process died
        print(f"{label}: {error}", flush=True)
        return "crashed"


def table(results: list[dict]) -> str:
    head = ["model", "export", "weights", "hint", "IR MB"] + [f"max |Δlogit| {n} (argmax =)" for n in PARITY_LENGTHS] + [
        "prefill 512 tok/s", "prefill 2048 tok/s", "decode tok/s", "ours / optimum: prefill 2048, decode"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["model"], r["export"], r["weights"], r["hint"]): r for r in results}
    for r in results:
        other = by_key[(r["model"], "optimum-intel", r["weights"], r["hint"])]
        timed = "prefill_tok_s" in r
        if r["export"] != "ours":
            ratio = "-"
        elif timed and "prefill_tok_s" in other:
            ratio = f"{r['prefill_tok_s'][2048] / other['prefill_tok_s'][2048]:.1f}x, {r['decode_tok_s'] / other['decode_tok_s']:.2f}x"
        else:
            ratio = "optimum-intel's run crashed"
        cells = [r["model"], r["export"], r["weights"], r["hint"], f"{r['ir_mb']:.0f}"]
        cells += (["crashed"] * len(PARITY_LENGTHS) if r["parity"] == "crashed" else
                  [f"{r['parity'][n]['max_abs_diff']:.1e} ({100 * r['parity'][n]['argmax_agree']:.0f}%)" for n in PARITY_LENGTHS])
        cells += ([f"{r['prefill_tok_s'][512]:.0f}", f"{r['prefill_tok_s'][2048]:.0f}", f"{r['decode_tok_s']:.1f}"] if timed
                  else ["crashed"] * 3)
        lines.append("| " + " | ".join(cells + [ratio]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default="tiny,micro-random")
    parser.add_argument("--variants", default="fp32,int8,int4")
    parser.add_argument("--hints", default="f32,bf16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        checkpoint = TINY if name == "tiny" else micro_checkpoint(args.out / "hf-micro-random")
        fp32 = {"ours": ours(checkpoint, args.out / name / "ours" / "fp32"),
                "optimum-intel": optimum_own(checkpoint, args.out / name / "optimum" / "fp32")}
        irs = {(export, tag): variant(path, tag) for export, path in fp32.items() for tag in args.variants.split(",")}
        ids, reference = torch_reference(checkpoint, max(PARITY_LENGTHS))
        for hint in args.hints.split(","):
            for (export, tag), ir in irs.items():
                label = f"{name} {export} {tag} {hint}"
                row = bench_row(ir, label, export != "ours", args, hint)
                result = {"model": name, "export": export, "weights": tag, "hint": hint, "ir_mb": ir_size(ir / "openvino_model.xml") / 2**20,
                          "parity": isolated_parity(ir, ids, reference, hint, export == "ours")}
                if row != "crashed":
                    result |= {"prefill_tok_s": {n: n / (row["prefill_ms"][n]["median"] / 1e3) for n in (512, 2048)},
                               "decode_tok_s": row["decode"]["tok_s"]["median"], "bench": row}
                results.append(result)
                print(label, result.get("prefill_tok_s", "crashed"), result.get("decode_tok_s", ""), flush=True)
        del reference
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), "?")
    write_json(args.out / "vs-optimum-granite.json", {"cpu": cpu, "threads": args.threads, "results": results})
    text = table(results) + f"\n\nCPU: {cpu}, {args.threads} threads; decode: {args.new_tokens} tokens after a 2048-token prompt"
    (args.out / "vs-optimum-granite.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
