"""The reference's published Zamba2-2.7B ratio-10 pruning config applied to a model of the
Zamba2-2.7B layout (54 layers, hybrid invocations at 6..51 of 2 memory blocks, hidden 2560, MLP
width 10240), built on the meta device: exact parameter counts without the weights.

    python scripts/zamba2_reference_params.py --config ../shared/data/reference-configs/zamba2-2.7b-ratio10.pruning_config.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shedder_ov.adapters import adapter_for
from shedder_ov.modeling import ShedderZamba2Config, ShedderZamba2ForCausalLM

HYBRID = (6, 12, 18, 24, 30, 36, 42, 47, 51)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("../shared/data/reference-configs/zamba2-2.7b-ratio10.pruning_config.json"))
    parser.add_argument("--hidden", type=int, default=2560)
    args = parser.parse_args()
    config = ShedderZamba2Config(
        vocab_size=32000, hidden_size=args.hidden, num_hidden_layers=54,
        layers_block_type=["hybrid" if i in HYBRID else "mamba" for i in range(54)],
        mamba_d_state=64, n_mamba_heads=args.hidden * 2 // 64, chunk_size=256, num_attention_heads=32,
        intermediate_size=10240, adapter_rank=128, use_mem_rope=True, num_mem_blocks=2,
    )  # fmt: skip
    with torch.device("meta"):
        adapter = adapter_for(ShedderZamba2ForCausalLM(config))
        unshared = adapter.unshared()
        removed = unshared.from_reference(json.loads(args.config.read_text()), str(args.config))
        gone = unshared.removed_params(removed)
    kinds = {kind: sum(c.kind == kind for c in removed) for kind in dict.fromkeys(c.kind for c in removed)}
    print(json.dumps({
        "params_stored": adapter.num_params(), "params_unshared": unshared.num_params(), "removed": gone,
        "pruned": unshared.num_params() - gone, "removed_pct_of_unshared": round(100 * gone / unshared.num_params(), 2),
        "removals": kinds, "channel_group_size": unshared.group_size,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
