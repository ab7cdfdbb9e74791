"""Reproduce the recovery table: original → pruned → recovered held-out PPL per model, method
and training data, through the real `prune` and `recover` stages.

    python scripts/recovery_table.py --shared ../shared --out runs/recovery-table --steps 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shedder_ov.adapters import adapter_for
from shedder_ov.checkpoints import load_checkpoint, load_tokenizer, resolve_device
from shedder_ov.data import load_windows
from shedder_ov.io import write_json
from shedder_ov.pipeline import run_prune
from shedder_ov.recipe import parse_recipe
from shedder_ov.recovery import held_out_ppl, run_recovery


BLOCKS = [12, 11, 17, 20, 18, 22]  # the 6 cheapest single blocks of mamba2-tiny (MODEL_CARD.md)
RUNS = [  # model, method, data, lr
    ("mamba2-tiny", "lora", "tinystories/train.txt", 1e-3),
    ("mamba2-tiny", "full", "tinystories/train.txt", 1e-4),
    ("mamba2-tiny", "lora", "alpaca/alpaca_data_1k.json", 1e-3),
    ("mamba1-tiny", "lora", "tinystories/train.txt", 1e-3),
    ("mamba1-tiny", "full", "tinystories/train.txt", 1e-4),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("runs/recovery-table"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--only", default=None, help="comma-separated run indices")
    args = parser.parse_args()
    removal = args.out / "removal.json"
    write_json(removal, {"pruned_mamba_block_idx": BLOCKS})
    rows, original = [], {}
    picked = range(len(RUNS)) if args.only is None else [int(i) for i in args.only.split(",")]
    for index in picked:
        model, method, data, lr = RUNS[index]
        recipe = parse_recipe(
            {
                "model": str(args.shared / "models" / model),
                "search": {"targets": ["mamba_block"], "apply": str(removal)},
                "output": str(args.out / model),
                "recovery": {
                    "method": method,
                    "data": {"path": str(args.shared / "data" / data)},
                    "held_out": {"path": str(args.shared / "data" / "tinystories" / "eval.txt")},
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "max_steps": args.steps,
                    "lr": lr,
                    "warmup_steps": max(1, args.steps // 20),
                },
            }
        )
        run_prune(recipe)
        if model not in original:  # the unpruned model on the same held-out windows
            device = resolve_device("auto")
            full = load_checkpoint(recipe.model, "float32", str(device))
            windows = load_windows(recipe.recovery.held_out, load_tokenizer(recipe.model), 42, seq_len=args.seq_len)
            original[model] = held_out_ppl(adapter_for(full), windows[:32], args.batch_size, device)
        result = run_recovery(recipe, force=True)
        rows.append(
            {"model": model, "removed": f"{len(BLOCKS)} blocks", "method": method, "data": data, "steps": args.steps,
             "lr": lr, "ppl_original": original[model], "ppl_pruned": result["ppl_before"],
             "ppl_recovered": result["ppl_after"], "seconds": result["seconds"], "train_seconds": result["train_seconds"],
             "trainable_params": result["trainable_params"], "device": result["device"],
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        )
        write_json(args.out / "table.json", rows)
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
