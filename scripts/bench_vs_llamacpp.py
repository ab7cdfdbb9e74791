"""Speed against llama.cpp on this machine's CPU: same models, same threads, back to back.

    python scripts/bench_vs_llamacpp.py [OUT=runs/bench/vs-llamacpp] [--shapes mamba2-780m,mamba-790m]
        [--hints f32,bf16] [--repeats 2] [--threads 2] [--llama-cpp DIR] [--build-only | --prepare-only]

Models: RANDOM weights of real shapes (scripts/bench_random.py's; only speed and size mean
anything), each original and with 25% of its blocks removed (every 4th from block 1, a stock
checkpoint with fewer layers). Each is written once as a `save_pretrained` folder, exported to our
IR (fp32; NNCF int8_asym and int4_sym, group 128) and converted by llama.cpp's own
convert_hf_to_gguf.py (f16), then llama-quantize'd to Q8_0 / Q4_0.

llama.cpp is built from the llama-cpp-python sdist on PyPI, which vendors it: native CPU flags,
llama-bench and llama-quantize only; AMX is switched off when the CPU advertises it but a probe
that loads a tile configuration faults (some VMs), and the result says so.

Timed, 2 threads each, each variant on its own: prefill tok/s at 512 and 2048 tokens and batch-1
decode tok/s of 64 tokens after a 512-token prompt — ours through `StatefulIR` (`shedder-ov
bench`'s runtime, one untimed run first), llama.cpp through `llama-bench` (its warm-up run, then
`--repeats`). Every decode is set against its bound: bytes read per token (weights, plus the
recurrent state read and written) over the measured copy bandwidth. Writes OUT/result.json and
OUT/table.md with `lscpu`'s model name and the flags that matter. Not part of CI (about an hour)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_random import SHAPES, build, variant
from shedder_ov import llamacpp
from shedder_ov.bench import run_bench
from shedder_ov.cpu import cpu_facts, runtime_defaults
from shedder_ov.export.exporter import export_model
from shedder_ov.io import write_json
from shedder_ov.llamacpp import GGUF_TYPES, LLAMA_CPP_PYTHON

PROMPTS = (512, 2048)
NEW_TOKENS = 64
TARGETS = {"decode": 1.2, "prefill": 1.5, "bandwidth": 0.8}  # vs llama.cpp at the same precision; share of the bound


def prepare_ours(shape: str, name: str, out: Path) -> dict[str, Path]:
    """The checkpoint (`hf/`) and our IR folders of one model by precision, made once."""
    folder = out / shape / name
    fp32 = folder / "ov" / "fp32"
    if not (fp32 / "openvino_model.xml").is_file():
        model = build(shape, name)
        model.save_pretrained(folder / "hf")
        export_model(model, fp32)
        del model
    return {tag: variant(fp32, tag) for tag in ("fp32", "int8", "int4")}


def our_rows(result: dict) -> dict:
    """Our bench rows by label: prefill tok/s, decode tok/s, bytes per token, bandwidth share."""
    rows = {}
    for row in result["rows"]:
        decode = row["decode"]
        rows[row["label"]] = {"prefill_tok_s": {n: n / (row["prefill_ms"][n]["median"] / 1e3) for n in PROMPTS},
                              "decode_tok_s": decode["tok_s"]["median"], "bytes_per_token": decode["bytes_per_token"],
                              "state_bytes": decode["state_mb"] * 2**20, "bandwidth_share": decode["bandwidth_fraction"],
                              "ir_mb": row["ir_mb"]}
    return rows


def table(result: dict) -> str:
    """Markdown: one line per model × variant, llama.cpp and ours under each hint, ratios at the same precision."""
    lines = ["| model (RANDOM) | variant | prefill 512 tok/s | prefill 2048 tok/s | decode tok/s | MB/token | % of bound | vs llama.cpp prefill 512 / 2048 / decode |",
             "|---|---|---|---|---|---|---|---|"]
    for key, model in result["models"].items():
        bandwidth = model.get("bandwidth_gbs", result.get("bandwidth_gbs", 0)) * 1e9
        for tag in ("fp32", "int8", "int4"):
            llama = model["llama.cpp"].get(tag)
            if llama:
                share = llama["bytes_per_token"] * llama["decode_tok_s"] / bandwidth
                lines.append(f"| {key} | llama.cpp {GGUF_TYPES[tag]} | {llama['prefill_tok_s'][512]:.1f} | "
                             f"{llama['prefill_tok_s'][2048]:.1f} | {llama['decode_tok_s']:.1f} | "
                             f"{llama['bytes_per_token'] / 1e6:.0f} | {100 * share:.0f}% | — |")
            for hint, rows in model["ours"].items():
                ours = rows[tag]
                ratios = "—" if not llama else " / ".join(
                    [f"{ours['prefill_tok_s'][n] / llama['prefill_tok_s'][n]:.2f}x" for n in PROMPTS]
                    + [f"{ours['decode_tok_s'] / llama['decode_tok_s']:.2f}x"])
                lines.append(f"| {key} | ours {tag}, {hint} hint | {ours['prefill_tok_s'][512]:.1f} | "
                             f"{ours['prefill_tok_s'][2048]:.1f} | {ours['decode_tok_s']:.1f} | "
                             f"{ours['bytes_per_token'] / 1e6:.0f} | {100 * ours['bandwidth_share']:.0f}% | {ratios} |")
    cpu = result["cpu"]
    measured = [m.get("bandwidth_gbs", result.get("bandwidth_gbs")) for m in result["models"].values()]
    bandwidths = f"{min(measured):.1f}–{max(measured):.1f}"
    amx = {"absent": "not advertised", "faults": "advertised, faults: llama.cpp built without it"}.get(cpu["amx"], cpu["amx"])
    return "\n".join(lines) + (
        f"\n\nCPU: {cpu['model_name']} (family {cpu['family']} model {cpu['model']}; {' '.join(cpu['flags'])}; AMX {amx}), "
        f"{result['threads']} threads, copy bandwidth {bandwidths} GB/s (measured before each model's timings); OpenVINO {result['openvino']}, "
        f"llama.cpp {result['llama.cpp_build']} (llama-cpp-python {LLAMA_CPP_PYTHON} sdist).")


def verdicts(result: dict) -> list[str]:
    """The issue's targets, one line each: ours vs llama.cpp at the same precision, bandwidth share."""
    lines = []
    for key, model in result["models"].items():
        for hint, rows in model["ours"].items():
            for tag, kind in GGUF_TYPES.items():
                ours, llama = rows[tag], model["llama.cpp"][tag]
                checks = [("decode", ours["decode_tok_s"] / llama["decode_tok_s"], TARGETS["decode"])]
                checks += [(f"prefill {n}", ours["prefill_tok_s"][n] / llama["prefill_tok_s"][n], TARGETS["prefill"]) for n in PROMPTS]
                checks += [("bandwidth share", ours["bandwidth_share"], TARGETS["bandwidth"])]
                default = " — this CPU's default" if hint == result["default_precision"] else ""
                lines += [f"{key} {tag} ({hint} hint{default}) vs {kind}: {what} {value:.2f} (target {goal}) {'met' if value >= goal else 'MISSED'}"
                          for what, value, goal in checks]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/bench/vs-llamacpp"))
    parser.add_argument("--shapes", default="mamba2-780m,mamba-790m")
    parser.add_argument("--hints", default=None, help="INFERENCE_PRECISION_HINTs of ours (default: f32, plus bf16 where the CPU has bf16 instructions, plus this CPU's default, e.g. f32/bf16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement after a warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp build folder (default: OUT/llama.cpp)")
    parser.add_argument("--build-only", action="store_true", help="only build llama.cpp")
    parser.add_argument("--prepare-only", action="store_true", help="only build llama.cpp and write every variant (checkpoints, IRs, GGUFs): the timings can then run later on an idle machine")
    args = parser.parse_args()
    unknown = sorted(set(args.shapes.split(",")) - set(SHAPES))
    if unknown:
        parser.error(f"--shapes: {', '.join(unknown)} unknown (known: {', '.join(sorted(SHAPES))})")

    cpu, default = cpu_facts(), runtime_defaults().precision
    hints = args.hints.split(",") if args.hints else ["f32"] + (["bf16"] if {"avx512_bf16", "amx_bf16"} & set(cpu["flags"]) else [])
    hints += [] if args.hints or default in hints else [default]  # this CPU's default
    llama = llamacpp.build(args.llama_cpp or args.out / "llama.cpp", amx_off=cpu["amx"] == "faults")
    if args.build_only:
        return
    result = {"cpu": cpu, "threads": args.threads, "hints": hints, "default_precision": default, "weights": "random (speed/size only)", "models": {}}
    models = [(shape, name) for shape in args.shapes.split(",") for name in ("original", "pruned25")]
    variants = {}
    for shape, name in models:  # every variant first: the timings then run back to back
        started = time.perf_counter()
        ours = prepare_ours(shape, name, args.out)
        variants[shape, name] = ours, llama.to_gguf(args.out / shape / name / "hf", args.out / shape / name / "gguf")
        print(f"{shape} {name}: variants ready ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.prepare_only:
        return
    for (shape, name), (ours, ggufs) in variants.items():
        model = {"ours": {}, "llama.cpp": {}}
        for hint in hints:
            bench = run_bench(list(ours.values()), list(ours), args.threads, precision=hint,
                              prompt_lengths=PROMPTS, new_tokens=NEW_TOKENS, repeats=args.repeats)
            model["ours"][hint] = our_rows(bench)
            model["bandwidth_gbs"] = bench["bandwidth_gbs"]  # measured next to this model's timings
            result["openvino"] = bench["openvino"]
        state = model["ours"][hints[0]]["int8"]["state_bytes"]  # same recurrent state in both runtimes (f32)
        for tag, gguf in ggufs.items():
            timing = llama.bench(gguf, args.threads, args.repeats, PROMPTS, NEW_TOKENS)
            timing["bytes_per_token"] = timing["file_mb"] * 2**20 + 2 * state
            model["llama.cpp"][tag] = timing
            result["llama.cpp_build"] = timing["build"]
        result["models"][f"{shape} {name}"] = model
        print(f"{shape} {name}: timed", flush=True)
        write_json(args.out / "result.json", result)  # after every model: a kill keeps what was measured
    result["verdicts"] = verdicts(result)
    write_json(args.out / "result.json", result)
    text = table(result) + "\n\n" + "\n".join(result["verdicts"]) + "\n"
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
