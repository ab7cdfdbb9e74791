"""`shedder-ov bench`: OpenVINO speed of IR variants side by side (never a timed unit test).

Lean loops over plain infer requests (no HF generate): prefill latency per prompt length,
time to first token, batch-1 decode tokens/s, compile time, IR size, peak RSS. Each variant
runs in its own process so peak RSS is its own. Batch-1 decode is memory-bound, so every
row also gets bytes read per token and the fraction of measured copy bandwidth it reaches."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from .cpu import cpu_facts, runtime_defaults
from .errors import ShedderError
from .runtime import StatefulIR, compile_precisions, genai_generate, ir_file

STREAMS = 1  # batch-1 latency: more streams only split the cores


def _stats(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def memory_bandwidth(threads: int = 2, megabytes: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth in GB/s (bytes read + written) with `threads` torch threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    torch.set_num_threads(previous)
    return 2 * src.numel() * 4 / best / 1e9


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process image (fresh after exec, as in the
    spawned bench processes); ru_maxrss would carry over a big parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_limits(folder: Path) -> tuple[int | None, int]:
    """(max prompt length or None, vocab size) from the IR folder's config / tokenizer config."""
    config, tokenizer = ({} if not (folder / name).is_file() else json.loads((folder / name).read_text())
                         for name in ("config.json", "tokenizer_config.json"))
    limit = config.get("max_position_embeddings") or config.get("n_positions") or tokenizer.get("model_max_length")
    return (int(limit) if limit and limit < 1e9 else None), config.get("vocab_size", 1000)


def weight_bytes(xml: Path, precision: str) -> int:
    """Bytes of weights one decode step reads: every Constant once, f32 ones at the width of
    the inference precision (the CPU plugin converts them when it compiles for bf16/f16)."""
    import openvino as ov

    f32_width = 2 if precision in ("bf16", "f16") else 4
    total = 0
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0)
            count = int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
            total += count * f32_width if kind == ov.Type.f32 else count * kind.bitwidth // 8
    return total


def ir_size(xml: Path) -> int:
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def bench_ir(path: str, device: str = "CPU", prompt_lengths=(128, 512, 2048), new_tokens: int = 128,
             warmup: int = 1, repeats: int = 3, threads: int = 2, precision: str = "f32", profile: bool = False,
             specialize: bool = True, ov_config: dict | None = None) -> dict:
    """Time one IR through `StatefulIR` (`specialize=False`: one dynamic compile computing every
    position's logits, as OVModelForCausalLM runs it); with `profile`, also the top ops of the
    longest prefill's last piece and of a decode step (OV performance counters); `ov_config`:
    more CPU plugin properties (e.g. DYNAMIC_QUANTIZATION_GROUP_SIZE)."""
    xml = ir_file(Path(path))
    if xml is None:
        raise ShedderError(f"{path}: not an OpenVINO IR (no openvino_model.xml)")
    limit, vocab = model_limits(xml.parent)
    too_long = [n for n in prompt_lengths if limit and n > limit]
    if too_long:
        raise ShedderError(f"prompt length {too_long[0]} is above the model's limit of {limit} tokens")
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": STREAMS, "PERF_COUNT": profile,
              **runtime_defaults().dq_properties(), **(ov_config or {})}
    start = time.perf_counter()
    ir = StatefulIR(xml, device, precision, config, specialize=specialize, last_logits=specialize)
    ir.prepare(1, prompt_lengths)
    row = {"ir": str(xml.parent), "ir_mb": ir_size(xml) / 2**20, "compile_s": time.perf_counter() - start,
           "runtime": "specialized" if ir.specialize else "dynamic", "prefill_piece": ir.piece}
    rng = np.random.default_rng(0)

    def prefill(length: int) -> np.ndarray:
        ir.reset()
        return ir(rng.integers(2, vocab, (1, length)), last_only=True)[:, -1].argmax(-1)[:, None]

    row["prefill_ms"] = {}
    for length in prompt_lengths:
        samples = [_timed(lambda: prefill(length)) * 1e3 for _ in range(warmup + repeats)][warmup:]
        row["prefill_ms"][length] = _stats(samples)
    row["ttft_ms"] = row["prefill_ms"][prompt_lengths[0]]["median"]
    if profile:  # the last call was a prefill at the longest prompt length
        row["top_ops_prefill"] = top_ops(ir.live)
    if not ir.stateful:
        row["decode"] = None
        row["note"] = "stateless IR: no decode loop"
        return row | {"peak_rss_mb": peak_rss_mb()}

    def decode() -> float:
        token = prefill(prompt_lengths[0])
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = ir(token, last_only=True)[:, -1].argmax(-1)[:, None]
        return new_tokens / (time.perf_counter() - start)

    rates = [decode() for _ in range(warmup + repeats)][warmup:]
    state_bytes = sum(s.state.data.nbytes for s in ir.live.query_state())
    row["decode"] = {"tok_s": _stats(rates), "state_mb": state_bytes / 2**20,
                     "bytes_per_token": weight_bytes(xml, ir.decode_hint) + 2 * state_bytes}
    row["peak_rss_mb"] = peak_rss_mb()
    if profile:
        row["top_ops"] = top_ops(ir.live)
    return row


def bench_genai(path: str, device: str = "CPU", prompt_lengths=(128, 512, 2048), new_tokens: int = 128,
                warmup: int = 1, repeats: int = 3, threads: int = 2, precision: str = "f32", **_) -> dict:
    """Time one IR through openvino.genai's LLMPipeline, as deployments run it (token ids in, so
    tokenization is not timed): prefill = its time to first token, decode = its time per output
    token after the first prompt length, from the pipeline's own perf metrics."""
    import openvino_genai

    xml = ir_file(Path(path))
    start = time.perf_counter()
    pipe = openvino_genai.LLMPipeline(str(xml.parent), device, INFERENCE_NUM_THREADS=threads, NUM_STREAMS=STREAMS,
                                      INFERENCE_PRECISION_HINT=compile_precisions(precision)[0])  # one compile: the prompt's
    row = {"ir": str(xml.parent), "ir_mb": ir_size(xml) / 2**20, "compile_s": time.perf_counter() - start, "runtime": "genai"}
    _, vocab = model_limits(xml.parent)
    rng = np.random.default_rng(0)

    def generate(length: int, count: int):
        return genai_generate(pipe, rng.integers(2, vocab, length), count).perf_metrics

    row["prefill_ms"] = {}
    for length in prompt_lengths:
        samples = [generate(length, 1).get_ttft().mean for _ in range(warmup + repeats)][warmup:]
        row["prefill_ms"][length] = _stats(samples)
    row["ttft_ms"] = row["prefill_ms"][prompt_lengths[0]]["median"]
    rates = [1e3 / generate(prompt_lengths[0], new_tokens + 1).get_tpot().mean for _ in range(warmup + repeats)][warmup:]
    row["decode"] = {"tok_s": _stats(rates)}  # bytes per token: run_bench takes them from our runtime's row
    return row | {"peak_rss_mb": peak_rss_mb()}


def top_ops(request, count: int = 8) -> list[dict]:
    """Where the last inference spent its time, summed by op type."""
    by_type: dict[str, float] = {}
    for info in request.get_profiling_info():
        key = f"{info.node_type} ({info.exec_type})"
        by_type[key] = by_type.get(key, 0.0) + info.real_time.total_seconds() * 1e6
    total = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])[:count]
    return [{"op": op, "us": us, "share": us / total} for op, us in ranked]


def _worker(queue, args, kwargs):
    try:
        runtime = bench_genai if kwargs.pop("genai", False) else bench_ir
        queue.put(runtime(*args, **kwargs))
    except ShedderError as error:
        queue.put({"error": str(error)})


def bench_isolated(path: str, **kwargs) -> dict:
    """bench_ir in a fresh process, so peak RSS and compile time are the variant's own. Forked
    from a server process that has only imported this module: no 5 s of imports per variant."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    queue = context.Queue()
    process = context.Process(target=_worker, args=(queue, (path,), kwargs))
    process.start()
    process.join()  # rows are small: they fit the queue's pipe, so joining first cannot deadlock
    if queue.empty():
        raise ShedderError(f"{path}: benchmark process died (exit code {process.exitcode}; out of memory?)")
    row = queue.get()
    if "error" in row:
        raise ShedderError(row["error"])
    return row


def run_bench(paths: list[Path], labels: list[str] | None = None, threads: int = 2, precision: str = "f32",
              specialize: list[bool] | None = None, genai: bool = False, **kwargs) -> dict:
    """Every variant side by side; ratios against the first; bandwidth fraction of decode.
    `specialize` (per path, default all True) picks the runtime, see `bench_ir`; with `genai`,
    each IR also runs through openvino.genai's LLMPipeline, in the row after its own."""
    import openvino as ov

    for path in paths:
        if ir_file(Path(path)) is None:
            raise ShedderError(f"{path}: not an OpenVINO IR (no openvino_model.xml)")
    bandwidth = memory_bandwidth(threads)
    rows = []
    labels = labels or [Path(p).name for p in paths]
    for label, path, fast in zip(labels, paths, specialize or [True] * len(paths)):
        lean = {"label": label, **bench_isolated(str(path), threads=threads, precision=precision, specialize=fast, **kwargs)}
        variant_rows = [lean]
        if genai and lean.get("decode"):
            row = {"label": f"{label} genai", **bench_isolated(str(path), threads=threads, precision=precision, genai=True, **kwargs)}
            row["decode"] |= {key: lean["decode"][key] for key in ("state_mb", "bytes_per_token")}
            row["vs_lean"] = {  # > 1: genai faster than our lean loop on the same IR
                "prefill": {n: lean["prefill_ms"][n]["median"] / row["prefill_ms"][n]["median"] for n in row["prefill_ms"]},
                "decode": row["decode"]["tok_s"]["median"] / lean["decode"]["tok_s"]["median"],
            }
            variant_rows.append(row)
        for row in variant_rows:
            if row.get("decode"):
                rate = row["decode"]["tok_s"]["median"]
                row["decode"]["bandwidth_fraction"] = row["decode"]["bytes_per_token"] * rate / (bandwidth * 1e9)
        rows += variant_rows
    base = rows[0]
    for row in rows:
        row["vs_first"] = {
            "prefill": {n: base["prefill_ms"][n]["median"] / row["prefill_ms"][n]["median"] for n in row["prefill_ms"]},
            "decode": row["decode"]["tok_s"]["median"] / base["decode"]["tok_s"]["median"]
            if row.get("decode") and base.get("decode") else None,
        }
    facts = cpu_facts()
    return {"openvino": ov.get_version(), "threads": threads, "streams": STREAMS, "precision": precision, "cpu_count": os.cpu_count(),
            "cpu": facts, "cpu_defaults": {"kind": facts["kind"], **dataclasses.asdict(runtime_defaults())},
            "bandwidth_gbs": bandwidth, "rows": rows}


def format_table(result: dict) -> str:
    lengths = list(result["rows"][0]["prefill_ms"])
    head = ["variant", "runtime", "IR MB", "compile s"] + [f"prefill {n} ms" for n in lengths] + [
        "decode tok/s", "decode ×", "B/token MB", "BW frac", "RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        decode = row.get("decode") or {}
        tok = decode.get("tok_s", {})
        cells = [row["label"], row.get("runtime", "-"), f"{row['ir_mb']:.1f}", f"{row['compile_s']:.1f}"]
        cells += [f"{row['prefill_ms'][n]['median']:.1f} ({row['prefill_ms'][n]['min']:.1f}-{row['prefill_ms'][n]['max']:.1f})"
                  for n in lengths]
        cells += [f"{tok['median']:.1f} ({tok['min']:.1f}-{tok['max']:.1f})" if tok else "-",
                  f"{row['vs_first']['decode']:.2f}" if row["vs_first"]["decode"] else "-",
                  f"{decode['bytes_per_token'] / 2**20:.1f}" if decode else "-",
                  f"{decode['bandwidth_fraction']:.2f}" if decode else "-", f"{row['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nOpenVINO {result['openvino']}, {result['threads']} threads, INFERENCE_PRECISION_HINT {result.get('precision', 'f32')}, copy bandwidth {result['bandwidth_gbs']:.1f} GB/s"
