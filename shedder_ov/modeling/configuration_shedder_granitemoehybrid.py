"""Config of ShedderGraniteMoeHybridForCausalLM, the class of Granite-4.0-H models whose layers differ.

Shipped verbatim into every pruned GraniteMoeHybrid checkpoint (auto_map), so it imports only
transformers. The stock config holds one width of each kind for all layers and one mixer per
layer; a pruned layer may have lost its mixer, the scan of its Mamba mixer, heads, its shared MLP
or MLP channels, or routed experts. The layout lives in one list, one entry per layer:
  layer_specs[i] = {"mixer": "mamba" | "attention" | None,  # None: the layer lost its mixer (its MLP stays)
                    "ssm": bool,          # a Mamba mixer that kept its scan (False otherwise)
                    "mamba_heads": int,   # SSM heads kept (0 unless mixer == "mamba")
                    "kv_heads": int,      # KV heads kept, each with its query heads (0 unless mixer == "attention")
                    "mlp_width": int,     # shared MLP channels kept; 0: no shared MLP
                    "experts": int}       # routed experts kept (0 without experts)
`source_layers` maps each layer to the original model's. `layer_types` follows the specs (a
mixer-less layer is "moe": the cache keeps nothing for it)."""

from transformers import GraniteMoeHybridConfig

_LAYER_TYPE = {"mamba": "mamba", "attention": "attention", None: "moe"}


class ShedderGraniteMoeHybridConfig(GraniteMoeHybridConfig):
    model_type = "shedder_granitemoehybrid"

    layer_specs: list[dict] | None = None
    source_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.layer_specs is not None:
            self.layer_types = [_LAYER_TYPE[spec["mixer"]] for spec in self.layer_specs]
            self.num_hidden_layers = len(self.layer_specs)
        super().__post_init__(**kwargs)
        if self.layer_specs is None:
            self.layer_specs = [self.full_layer_spec(kind) for kind in self.layer_types]
        if self.source_layers is None:
            self.source_layers = list(range(len(self.layer_specs)))

    def full_layer_spec(self, layer_type: str) -> dict:
        """The spec of an unpruned layer of stock `layer_type` ("mamba" or "attention")."""
        mamba = layer_type == "mamba"
        return {
            "mixer": layer_type,
            "ssm": mamba,
            "mamba_heads": self.mamba_n_heads if mamba else 0,
            "kv_heads": 0 if mamba else self.num_key_value_heads,
            "mlp_width": self.shared_intermediate_size,
            "experts": self.num_local_experts,
        }
