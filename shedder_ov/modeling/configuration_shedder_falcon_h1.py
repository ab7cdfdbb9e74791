"""Config of ShedderFalconH1ForCausalLM, the class of Falcon-H1 models whose layers differ.

Shipped verbatim into every pruned Falcon-H1 checkpoint (auto_map), so it imports only
transformers. The stock config holds one width of each kind for all layers; a pruned layer may
have lost its attention or Mamba branch, the scan of its Mamba branch, heads of either, its MLP
or MLP channels. The layout lives in one list, one entry per layer:
  layer_specs[i] = {"kv_heads": int,    # KV heads kept (each with its query heads); 0: no attention
                    "mamba_heads": int, # SSM heads kept; 0: no Mamba branch
                    "ssm": bool,        # whether the Mamba branch kept its scan
                    "mlp_width": int}   # MLP channels kept; 0: no MLP
`source_layers` maps each layer to the original model's."""

from transformers import FalconH1Config

_CACHE_KIND = {(True, True): "hybrid", (True, False): "full_attention", (False, True): "mamba", (False, False): "moe"}


class ShedderFalconH1Config(FalconH1Config):
    model_type = "shedder_falcon_h1"

    layer_specs: list[dict] | None = None
    source_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.layer_specs is None:
            self.layer_specs = [self.full_layer_spec() for _ in range(self.num_hidden_layers)]
        if self.source_layers is None:
            self.source_layers = list(range(len(self.layer_specs)))
        self.num_hidden_layers = len(self.layer_specs)

    def full_layer_spec(self) -> dict:
        return {"kv_heads": self.num_key_value_heads, "mamba_heads": self.mamba_n_heads, "ssm": True, "mlp_width": self.intermediate_size}

    @property
    def layers_block_type(self) -> list[str]:
        """Cache kind per layer for DynamicCache(config=...): KV where attention runs, conv/SSM
        state where a Mamba branch runs, nothing (an empty linear layer) where neither does."""
        if self.layer_specs is None:  # read by the parent's __post_init__, before the specs exist
            return ["hybrid"] * self.num_hidden_layers
        return [_CACHE_KIND[spec["kv_heads"] > 0, spec["mamba_heads"] > 0] for spec in self.layer_specs]
