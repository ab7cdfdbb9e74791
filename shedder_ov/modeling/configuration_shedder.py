"""Configs of pruned Mamba-family models whose layers differ in shape.

Shipped verbatim into every pruned checkpoint (auto_map), so it imports only transformers.
`ssm_removed_layers` lists the layers (numbered in the pruned model) that keep their gated
convolution path but lost the SSM; `source_layers` maps each layer to the original model's."""

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
