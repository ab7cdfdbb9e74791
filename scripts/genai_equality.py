"""openvino.genai's greedy tokens against torch's and our runtime's, per model × variant × prompt:
the table a deployment needs before it trusts an IR in LLMPipeline.

    python scripts/genai_equality.py runs/genai-equality [--models ../shared/models/mamba1-tiny ...] [--new-tokens 16]

Each checkpoint is exported (fp32) and compressed (int8_asym, int4_sym), each IR folder run
through `LLMPipeline` (f32 hint) on the parity check's short story prompt and its 1024-token one.
Each row compares genai's tokens with torch's (fp32: must match; compressed: for information,
torch cannot run NNCF's weights) and with our runtime on the same IR, both as it runs by default
(static-shape pieces and steps) and on one dynamic compile, as genai compiles it. Writes table.md and
result.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from shedder_ov.adapters import adapter_for
from shedder_ov.checkpoints import load_checkpoint, load_tokenizer
from shedder_ov.export.parity import genai_greedy, prompts, torch_greedy
from shedder_ov.io import write_json
from shedder_ov.recipe import ExportSpec
from shedder_ov.runtime import StatefulIR
from shedder_ov.workflow import export_variant

SHARED = Path(__file__).parents[1] / "../shared/models"
MODELS = ["mamba1-tiny", "mamba2-tiny", "zamba2-tiny", "falcon-h1-tiny", "granitemoehybrid-tiny"]
EXPORT = ExportSpec(parity=False, int8_mode="int8_asym", int4_mode="int4_sym")  # fp32, int8, int4; made once


def main(checkpoints: list[Path], out: Path, new_tokens: int) -> None:
    rows = []
    for checkpoint in checkpoints:
        adapter = adapter_for(load_checkpoint(checkpoint))
        short, long = prompts(load_tokenizer(checkpoint), adapter.model.config.vocab_size)
        reference = {len(p): torch_greedy(adapter, p, new_tokens) for p in (short, long)}
        for tag, folder in export_variant(checkpoint, out / checkpoint.name, EXPORT).items():
            genai = genai_greedy(folder, [short, long], [new_tokens, new_tokens])
            lean, dynamic = StatefulIR(folder), StatefulIR(folder, specialize=False)
            for prompt, tokens in zip((short, long), genai):
                rows.append({"model": checkpoint.name, "family": adapter.family, "variant": tag, "prompt_tokens": int(prompt.size),
                             "genai_eq_torch": tokens == reference[prompt.size],
                             "genai_eq_runtime": tokens == lean.greedy(prompt, new_tokens)[0],
                             "genai_eq_runtime_dynamic": tokens == dynamic.greedy(prompt, new_tokens)[0]})
                print(rows[-1], flush=True)
    lines = ["| model | family | variant | prompt tokens | genai = torch | genai = our runtime | genai = our runtime, dynamic compile |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['family']} | {r['variant']} | {r['prompt_tokens']} | {r['genai_eq_torch']} | {r['genai_eq_runtime']} "
              f"| {r['genai_eq_runtime_dynamic']} |" for r in rows]
    write_json(out / "result.json", {"new_tokens": new_tokens, "hint": "f32", "rows": rows})
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", nargs="*", type=Path, default=[SHARED / name for name in MODELS])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    main(args.models, args.out, args.new_tokens)
