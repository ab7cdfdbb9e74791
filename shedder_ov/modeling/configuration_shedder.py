"""Configs of pruned Mamba-family models whose layers differ in shape.

Shipped verbatim into every pruned checkpoint (auto_map), so it imports only transformers.
`ssm_removed_layers` lists the layers (numbered in the pruned model) that keep their gated
convolution path but lost the SSM; `source_layers` maps each layer to the original model's.
Mamba-2 only: `layer_heads` gives every layer its number of SSM heads (written only when some
layer lost heads; SSM-less layers carry `num_heads`, they stay full width)."""

from transformers import FalconMambaConfig, Mamba2Config, MambaConfig


class ShedderMambaConfig(MambaConfig):
    model_type = "shedder_mamba"
    ssm_removed_layers: list[int] | None = None
    source_layers: list[int] | None = None


class ShedderFalconMambaConfig(FalconMambaConfig):
    model_type = "shedder_falcon_mamba"
    ssm_removed_layers: list[int] | None = None
    source_layers: list[int] | None = None


class ShedderMamba2Config(Mamba2Config):
    model_type = "shedder_mamba2"
    ssm_removed_layers: list[int] | None = None
    source_layers: list[int] | None = None
    layer_heads: list[int] | None = None

    def to_dict(self):
        output = super().to_dict()
        if output.get("layer_heads") is None:  # a model that lost no heads: the config as before
            output.pop("layer_heads", None)
        return output
