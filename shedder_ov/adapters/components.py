"""The removable parts of a model, in one vocabulary for every family.

A candidate is one removable part of one layer, named readably and stably:

| target            | name                     | what one removal takes away                         |
|-------------------|--------------------------|-----------------------------------------------------|
| `layer`           | `layers.7.layer`         | a whole residual layer, whatever it holds           |
| `mamba_block`     | `layers.7.block`         | a Mamba mixer with its norm (the residual passes)   |
| `ssm`             | `layers.7.ssm`           | the scan of a Mamba mixer only                      |
| `attention`       | `layers.3.attn`          | an attention module                                 |
| `mlp`             | `layers.3.mlp`           | an MLP                                              |
| `mlp_channels`    | `layers.3.mlp.channels`  | one more group of `group_size` channels of that MLP |
| `attention_heads` | `layers.3.attn.heads.1`  | one KV head with its query heads                    |
| `ssm_heads`       | `layers.7.ssm.heads.2`   | one group-aligned set of SSM heads                  |
| `experts`         | `layers.3.experts.1`     | one routed expert of an MoE layer (its router row)  |

In a layer that holds nothing but a Mamba mixer, `layer` and `mamba_block` are the same part:
the adapter names it `layers.i.block`. `mlp_channels` is the one repeatable target: the same
candidate can be chosen again, each time taking the next group in the family's channel order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import ShedderError

Target = Literal["layer", "mamba_block", "ssm", "attention", "mlp", "mlp_channels", "attention_heads", "ssm_heads", "experts"]
TARGETS: tuple[str, ...] = get_args(Target)
REPEATABLE = frozenset({"mlp_channels"})
HEADED = frozenset({"attention_heads", "ssm_heads", "experts"})  # indexed: layers.<i>.<part>.<j>

_SUFFIX = {
    "layer": "layer",
    "mamba_block": "block",
    "ssm": "ssm",
    "attention": "attn",
    "mlp": "mlp",
    "mlp_channels": "mlp.channels",
    "attention_heads": "attn.heads",
    "ssm_heads": "ssm.heads",
    "experts": "experts",
}
_KIND = {suffix: kind for kind, suffix in _SUFFIX.items()}
_NAME = re.compile(r"^layers\.(\d+)\.([a-z.]+?)(?:\.(\d+))?$")


@dataclass(frozen=True, order=True)
class Candidate:
    """A removable part, named by its layer in the model being pruned (and its head, if any)."""

    layer: int
    kind: str
    index: int = -1  # the head (group) of a head target; -1 otherwise

    @property
    def name(self) -> str:
        head = f".{self.index}" if self.kind in HEADED else ""
        return f"layers.{self.layer}.{_SUFFIX[self.kind]}{head}"

    @classmethod
    def parse(cls, name: str) -> "Candidate":
        match = _NAME.match(name)
        kind = _KIND.get(match.group(2)) if match else None
        if kind is None or (match.group(3) is not None) != (kind in HEADED):
            raise ShedderError(
                f"{name!r} is not a candidate name (expected layers.<i>.<part> with part one of "
                f"{', '.join(_SUFFIX.values())}; heads add .<j>)"
            )
        return cls(int(match.group(1)), kind, int(match.group(3)) if kind in HEADED else -1)
