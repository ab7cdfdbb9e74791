"""Which MLP channels should go first? The same channel-group search on an unshared Zamba2 with
each `channel_order`, through the real `prune` stage; calibration PPL per step and held-out
TinyStories PPL of each pruned model.

    python scripts/channel_order_study.py --shared ../shared --out runs/channel-order --steps 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shedder_ov.evaluation.run import evaluate
from shedder_ov.io import write_json
from shedder_ov.pipeline import run_prune
from shedder_ov.recipe import parse_recipe

ORDERS = ("first", "weight_l1", "activation")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--model", default="zamba2-tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/channel-order"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=256)
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of 256 tokens")
    args = parser.parse_args()

    model = args.shared / "models" / args.model
    base = evaluate(model, ["tinystories"], [], args.shared / "data", 256, args.windows)["ppl"]["tinystories"]["ppl"]
    rows = []
    for order in ORDERS:
        recipe = parse_recipe({
            "model": str(model),
            "calibration": {"path": str(args.shared / "data/tinystories/train.txt"), "num_samples": 16, "seq_len": 128},
            "search": {"unshare": True, "targets": ["mlp_channels"], "group_size": args.group_size,
                       "channel_order": order, "stop": {"num_components": args.steps}},
            "output": str(args.out / order),
        })  # fmt: skip
        result = run_prune(recipe)
        held_out = evaluate(args.out / order / "pruned", ["tinystories"], [], args.shared / "data", 256, args.windows)
        rows.append({
            "order": order,
            "ppl_original": result["ppl_original"],
            "ppl_path": [r["ppl"] for r in result["removed"]],
            "removed": [r["candidate"] for r in result["removed"]],
            "params": result["params"],
            "held_out_ppl": held_out["ppl"]["tinystories"]["ppl"],
        })  # fmt: skip
        print(json.dumps(rows[-1]))
    write_json(args.out / "study.json", {"model": args.model, "group_size": args.group_size, "held_out_ppl_original": base, "rows": rows})


if __name__ == "__main__":
    main()
