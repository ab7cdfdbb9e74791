"""The compression-study report of one output dir: Markdown + report.json + PNG plots.

Reads whatever the stages left there and never fails on a partial run: a missing piece is a
"–" cell plus a line under "Missing" naming the command that produces it. Layout read:
  search/result.json, search/log.jsonl           prune
  pruned/, recovered/ (or recovery/)             checkpoints
  ov/<fp32|int8|int4>/, ov-original/<..>/, ov-recovered/<..>/   IRs (pruned, original, recovered)
  eval/<variant>-<precision>.json                `shedder-ov eval --json`
  bench.json                                     `shedder-ov bench --json` (labels "<variant> <precision>")
  bench-llamacpp.json                            llama.cpp on the same checkpoints (`eval.bench.llama_cpp`)"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .bench import ir_size
from .io import atomic_file, write_json

PRECISIONS = ("fp32", "int8", "int4")
IR_DIRS = {"original": "ov-original", "pruned": "ov", "recovered": "ov-recovered"}


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ir_mb(folder: Path) -> float | None:
    """The IR's size as `shedder-ov bench` and prune-and-export's console count it (xml + bin, 2^20 bytes)."""
    xml = folder / "openvino_model.xml"
    return ir_size(xml) / 2**20 if xml.is_file() and xml.with_suffix(".bin").is_file() else None


def _checkpoints(out: Path, result: dict | None) -> dict[str, Path | None]:
    recovered = next((out / n for n in ("recovered", "recovery") if (out / n / "config.json").is_file()), None)
    original = Path(result["model"]) if result and result.get("model") else None
    return {"original": original, "pruned": out / "pruned" if (out / "pruned").is_dir() else None, "recovered": recovered}


def _variant_params(params: dict, variant: str) -> int | None:
    """Stored parameters of a variant's checkpoint (the original as stored, before any unsharing)."""
    if variant == "original":
        return params.get("stored_before_unshare", params.get("original"))
    return params.get("pruned")


def collect(out: Path) -> dict:
    """Every cell of the table that the output dir can answer, and a list of what it cannot."""
    result = _read(out / "search" / "result.json")
    bench = _read(out / "bench.json") or {}
    bench_rows = {row["label"]: row for row in bench.get("rows", [])}
    llama_rows = (_read(out / "bench-llamacpp.json") or {}).get("rows", {})
    checkpoints = _checkpoints(out, result)
    params = (result or {}).get("params", {})
    rows, missing = [], []
    if result is None:
        missing.append("search/result.json (run `shedder-ov prune RECIPE`)")
    for variant, checkpoint in checkpoints.items():
        has_irs = (out / IR_DIRS[variant]).is_dir()
        if checkpoint is None and not has_irs:
            continue
        for precision in PRECISIONS:
            ir = out / IR_DIRS[variant] / precision
            evaluation = _read(out / "eval" / f"{variant}-{precision}.json") or {}
            timing = bench_rows.get(f"{variant} {precision}") or {}
            zeroshot = evaluation.get("zeroshot") or {}
            row = {
                "variant": variant, "precision": precision,
                "params": _variant_params(params, variant),
                "ir_mb": _ir_mb(ir),
                "ppl": {k: v["ppl"] for k, v in evaluation.get("ppl", {}).items()} or None,
                "avg_acc": zeroshot.get("average"), "acc_stderr": zeroshot.get("average_stderr"),
                "acc_chance": zeroshot.get("average_chance"), "at_chance": zeroshot.get("at_chance"),
                "prefill_ms": {n: v["median"] for n, v in timing.get("prefill_ms", {}).items()} or None,
                "decode_tok_s": ((timing.get("decode") or {}).get("tok_s") or {}).get("median"),
                "llama_cpp": llama_rows.get(f"{variant} {precision}") or llama_rows.get(variant),
            }
            if row["ir_mb"] is None:
                missing.append(f"{variant} {precision}: IR {ir} (run `shedder-ov prune-and-export` / `compress`)")
            elif not evaluation:
                missing.append(f"{variant} {precision}: eval (run `shedder-ov eval {ir} --json {out}/eval/{variant}-{precision}.json`)")
            if row["ir_mb"] is not None and not timing:
                missing.append(f"{variant} {precision}: speed (run `shedder-ov bench ... --json {out}/bench.json`)")
            rows.append(row)
    base = next((r["decode_tok_s"] for r in rows if r["variant"] == "original" and r["precision"] == "fp32"), None)
    for row in rows:
        row["decode_speedup"] = row["decode_tok_s"] / base if base and row["decode_tok_s"] else None
    return {"output": str(out), "search": result, "rows": rows, "missing": missing,
            "bench": {k: bench.get(k) for k in ("openvino", "threads", "bandwidth_gbs")} if bench else None}


def _fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def save_figure(figure, target: Path) -> None:
    """PNG through a temporary file, closed after: a killed report leaves no half image."""
    with atomic_file(target) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    import matplotlib.pyplot as plt

    plt.close(figure)


def plot_search(out: Path, result: dict | None, target: Path) -> Path | None:
    """PPL along the chosen path vs params removed, and every candidate the search scored."""
    if not result or not any(r.get("ppl") for r in result.get("removed", [])):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = result["params"]["original"]
    path = [(0.0, result.get("ppl_original"))] + [(100 * r["params_removed"] / total, r["ppl"]) for r in result["removed"]]
    path = [(x, y) for x, y in path if y]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(*zip(*path), marker="o")
    left.set(xlabel="params removed (%)", ylabel="calibration PPL", title="search path")
    log = out / "search" / "log.jsonl"
    evals = [json.loads(l) for l in log.read_text().splitlines() if l.strip()] if log.is_file() else []
    evals = [e for e in evals if e.get("type") == "eval" and e.get("ppl") and e.get("step")]
    if evals:
        right.scatter([e["step"] for e in evals], [e["ppl"] for e in evals], s=8, color="grey", label="candidates")
        right.plot([r["step"] for r in result["removed"] if r.get("ppl")], [r["ppl"] for r in result["removed"] if r.get("ppl")],
                   color="C1", marker="o", label="chosen")
        right.set(yscale="log", xlabel="step", ylabel="PPL", title="every scored candidate")
        right.legend()
    else:
        right.set_axis_off()
    figure.tight_layout()
    save_figure(figure, target)
    return target


def quality(row: dict) -> tuple[str, float] | None:
    """The held-out PPL a row is plotted by (its first data set): unlike zero-shot accuracy on
    small models, which sits at chance, it tells the variants apart."""
    return next(iter(row["ppl"].items())) if row["ppl"] else None


def plot_pareto(rows: list[dict], target: Path) -> Path | None:
    """Held-out PPL against decode speed and against IR size, every variant that has them."""
    points = [r for r in rows if quality(r) and r["decode_tok_s"] and r["ir_mb"]]
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = quality(points[0])[0]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (key, label) in zip(axes, (("decode_tok_s", "decode tokens/s (batch 1)"), ("ir_mb", "IR size (MB)"))):
        for row in points:
            axis.scatter(row[key], quality(row)[1])
            axis.annotate(f"{row['variant']} {row['precision']}", (row[key], quality(row)[1]), fontsize=8)
        axis.set(xlabel=label, ylabel=f"{dataset} PPL (lower is better)", yscale="log")
    axes[0].set_title("quality vs speed")
    axes[1].set_title("quality vs size")
    figure.tight_layout()
    save_figure(figure, target)
    return target


def accuracy_cell(row: dict, base: dict | None) -> str:
    """Average zero-shot accuracy ± its standard error; "chance" where it does not clear the
    chance level by two standard errors, "≈" where it is within noise of the original fp32."""
    if row["avg_acc"] is None:
        return "–"
    cell = f"{100 * row['avg_acc']:.1f}"
    if row.get("acc_stderr") is None:
        return cell
    cell += f" ±{100 * row['acc_stderr']:.1f}"
    if row["at_chance"]:
        cell += f" (chance {100 * row['acc_chance']:.1f})"
    if base and base is not row and base.get("acc_stderr") is not None:
        if abs(row["avg_acc"] - base["avg_acc"]) < 2 * math.hypot(row["acc_stderr"], base["acc_stderr"]):
            cell += " ≈"
    return cell


def versus_llamacpp(row: dict, lengths: list) -> str:
    """Our speed over llama.cpp's at the same weight precision (Q8_0 for int8, Q4_0 for int4) on
    the same checkpoint: prefill at the first prompt length, decode; or why there is none."""
    llama = row["llama_cpp"]
    if not llama or row["precision"] == "fp32":
        return "–"
    if "skipped" in llama:
        return "no GGUF: " + llama["skipped"].split(" (")[0].removeprefix("llama.cpp: ")
    if not (row["prefill_ms"] and row["decode_tok_s"]):
        return "–"
    length = lengths[0]
    prefill = llama["prefill_tok_s"].get(str(length), llama["prefill_tok_s"].get(length))
    ours = int(length) / (row["prefill_ms"][length] / 1e3)
    return f"{ours / prefill:.2f}× / {row['decode_tok_s'] / llama['decode_tok_s']:.2f}×"


def write_report(output_dir: str | Path) -> Path:
    """Write report.md, report.json and the plots into output_dir; returns report.md."""
    out = Path(output_dir)
    data = collect(out)
    plots = {name: plot(out / f"{name}.png") for name, plot in (
        ("search_path", lambda t: plot_search(out, data["search"], t)), ("pareto", lambda t: plot_pareto(data["rows"], t)))}
    data["plots"] = {k: v.name for k, v in plots.items() if v}
    lines = [f"# Compression study: {out.name}", ""]
    search = data["search"]
    if search:
        p = search["params"]
        lines += [f"Model `{search.get('model')}` ({search.get('family')}): removed {len(search['removed'])} components, "
                  f"params {p['original']:,} → {p['pruned']:,} (−{100 * (1 - p['pruned'] / p['original']):.1f}%)"
                  + (f"; searched after unsharing its blocks ({p['stored_before_unshare']:,} stored before)"
                     if "stored_before_unshare" in p else "") + ".", ""]
    lengths = sorted({n for r in data["rows"] for n in (r["prefill_ms"] or {})}, key=int)
    head = ["variant", "precision", "params", "IR MB", "PPL", "avg acc"] + [f"prefill {n} ms" for n in lengths] + [
        "decode tok/s", "speedup vs original fp32"]
    with_llama = any(r["llama_cpp"] for r in data["rows"])
    if with_llama:
        head += ["vs llama.cpp (prefill / decode)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = next((r for r in data["rows"] if r["variant"] == "original" and r["precision"] == "fp32"), None)
    for r in data["rows"]:
        ppl = ", ".join(f"{k} {v:.2f}" for k, v in r["ppl"].items()) if r["ppl"] else "–"
        cells = [r["variant"], r["precision"], _fmt(r["params"], ","), _fmt(r["ir_mb"], ".1f"), ppl,
                 accuracy_cell(r, base)]
        cells += [_fmt((r["prefill_ms"] or {}).get(n), ".1f") for n in lengths]
        cells += [_fmt(r["decode_tok_s"], ".1f"), _fmt(r["decode_speedup"], ".2f") + ("×" if r["decode_speedup"] else "")]
        if with_llama:
            cells.append(versus_llamacpp(r, lengths))
        lines.append("| " + " | ".join(cells) + " |")
    if data["bench"]:
        b = data["bench"]
        lines += ["", f"Speed: OpenVINO {b['openvino']}, {b['threads']} threads, copy bandwidth {_fmt(b['bandwidth_gbs'], '.1f')} GB/s."]
    if with_llama:
        lines += ["", "vs llama.cpp: our tok/s over llama.cpp's (llama-bench, same threads) on the same checkpoint, "
                  "int8 against Q8_0 and int4 against Q4_0."]
    if any(r.get("acc_stderr") is not None for r in data["rows"]):
        lines += ["", "avg acc: mean of the zero-shot tasks' paper metrics ± its binomial standard error at the "
                  "item count used; \"chance\": within two standard errors of a uniform guess (no signal); "
                  "\"≈\": within two standard errors of the original fp32."]
    lines += [""] + [f"![{name}]({file})" for name, file in data["plots"].items()]
    if data["missing"]:
        lines += ["", "## Missing", ""] + [f"- {m}" for m in data["missing"]]
    write_json(out / "report.json", data)
    target = out / "report.md"
    with atomic_file(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return target
