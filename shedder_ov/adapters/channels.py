"""`mlp_channels`: removing gated-MLP channels in groups, in a per-layer order.

A family with gated MLPs (down(act(gate) · up)) mixes this into its adapter and supplies the MLP
layers, their widths and weight norms; its MLP forward calls `record_activations` and zeroes
`masked_channels` (exact: a zeroed channel contributes nothing to down_proj)."""

from __future__ import annotations

import torch

from ..errors import ShedderError
from .components import Candidate


def check_group_size(widths: list[int], group_size: int, where: str) -> None:
    """A group size must divide every MLP width and leave one group (`mlp` removes it all)."""
    widths = sorted(set(widths))
    wrong = [w for w in widths if w % group_size or w == group_size]
    if wrong:
        raise ShedderError(f"{where}: {group_size} must divide the MLP width(s) {widths} and be smaller")


class MlpChannels:
    group_size: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._channel_order: dict[int, torch.Tensor] = {}
        self._activations: dict[int, torch.Tensor] | None = None  # collecting |MLP activations| per layer

    # ---- what the family supplies ------------------------------------------------
    def mlp_layers(self) -> list[int]:
        """Layers whose MLP is still there."""
        raise NotImplementedError

    def mlp_width(self, layer: int) -> int:
        raise NotImplementedError

    def mlp_weight_l1(self, layer: int) -> torch.Tensor:
        """Per channel: the L1 norms of its gate and up rows and its down column, summed."""
        raise NotImplementedError

    # ---- the shared mechanics ----------------------------------------------------
    def set_channel_groups(self, group_size: int) -> None:
        check_group_size([self.mlp_width(i) for i in self.mlp_layers()], group_size, "group_size")
        self.group_size = group_size

    def channel_capacity(self, layer: int) -> int:
        return self.mlp_width(layer) // self.group_size - 1  # one group stays: `mlp` removes it all

    @torch.no_grad()
    def rank_channels(self, order: str, batches: list[torch.Tensor] | None = None) -> None:
        """Which channels each MLP loses first: `first` keeps the first N (the reference), `weight_l1`
        drops the smallest L1 norm of gate, up and down weights, `activation` the smallest mean
        |act(gate)·up| of the current (masked) model on the calibration batches."""
        layers = self.mlp_layers()
        if order == "first":
            scores = {i: -torch.arange(self.mlp_width(i), dtype=torch.float64) for i in layers}
        elif order == "weight_l1":
            scores = {i: self.mlp_weight_l1(i).double() for i in layers}
        elif order == "activation":
            self._activations = {}
            for ids in batches:
                self.logits(ids)
            scores, self._activations = self._activations, None
        else:
            raise ShedderError(f"channel_order: {order!r} (allowed: first, weight_l1, activation)")
        self._channel_order = {i: torch.sort(scores[i].double(), stable=True).indices for i in layers}

    def record_activations(self, layer: int, h: torch.Tensor) -> None:
        if self._activations is not None:
            self._activations[layer] = self._activations.get(layer, 0) + h.detach().abs().double().sum((0, 1))

    def masked_channels(self, layer: int) -> torch.Tensor | None:
        """Indices of the MLP channels masked in `layer` (the first groups of its channel order)."""
        groups = self.masked.get(Candidate(layer, "mlp_channels"), 0)
        if not groups:
            return None
        if layer not in self._channel_order:
            raise ShedderError("mlp_channels: channels have no order yet (rank_channels)")
        return self._channel_order[layer][: groups * self.group_size]

    def kept_channels(self, layer: int, groups: int) -> torch.Tensor:
        """The channels an MLP keeps after losing `groups` groups, in their original order."""
        if layer not in self._channel_order:
            raise ShedderError("mlp_channels: the MLP channels have no order yet (set_channel_groups, rank_channels)")
        gone = set(self._channel_order[layer][: groups * self.group_size].tolist())
        return torch.tensor([c for c in range(self.mlp_width(layer)) if c not in gone], dtype=torch.long)
