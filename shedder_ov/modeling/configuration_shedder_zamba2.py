"""Config of ShedderZamba2ForCausalLM, the one class every Zamba2 model (stock or pruned) is loaded into.

Shipped verbatim into every Zamba2 checkpoint (auto_map), so it imports only transformers.
The stock config cannot describe a pruned layout (an invocation without attention or MLP, a hybrid
layer without Mamba, an SSM-less mixer, per-block MLP widths), so the layout lives in two lists:
  layer_specs[i] = {"mamba", "ssm", "block", "attention", "mlp"}   one per layer
  block_specs[b] = {"attention", "mlp", "mlp_width"}               one per stored shared block
`layers_block_type`, `hybrid_layer_ids` and `num_hidden_layers` are derived from `layer_specs`."""

from transformers import Zamba2Config


class ShedderZamba2Config(Zamba2Config):
    model_type = "shedder_zamba2"
    # `layer_types` is our per-layer cache kind (property below), not the stock alias of layers_block_type.
    attribute_map = {"head_dim": "attention_head_dim"}

    layer_specs: list[dict] | None = None
    block_specs: list[dict] | None = None
    invocation_adapters: bool = True
    source_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.layer_specs is None:
            self.layer_specs = self._stock_layer_specs()
        if self.block_specs is None:
            self.block_specs = [
                {"attention": True, "mlp": True, "mlp_width": self.intermediate_size} for _ in range(self.num_mem_blocks)
            ]
        if self.source_layers is None:
            self.source_layers = list(range(len(self.layer_specs)))
        self.layers_block_type = ["hybrid" if _runs_block(spec) else "mamba" for spec in self.layer_specs]
        self.hybrid_layer_ids = [i for i, kind in enumerate(self.layers_block_type) if kind == "hybrid"]
        self.num_hidden_layers = len(self.layer_specs)
        self._check_block_parts()

    def _stock_layer_specs(self) -> list[dict]:
        """Stock layout: hybrid layer k (k-th in order) invokes stored block k % num_mem_blocks."""
        blocks = {layer: k % self.num_mem_blocks for k, layer in enumerate(self.hybrid_layer_ids)}
        return [
            {"mamba": True, "ssm": True, "block": blocks.get(i), "attention": i in blocks, "mlp": i in blocks}
            for i in range(len(self.layers_block_type))
        ]

    def _check_block_parts(self) -> None:
        """Fail at load time, not mid-forward, when an invocation runs a part its block no longer has."""
        for i, spec in enumerate(self.layer_specs):
            if spec["block"] is None:
                continue
            block = self.block_specs[spec["block"]]
            for part in ("attention", "mlp"):
                if spec[part] and not block[part]:
                    raise ValueError(f"layer_specs[{i}] runs the {part} of shared block {spec['block']}, which has none")

    @property
    def layer_types(self) -> list[str] | None:
        """Cache kind per layer for DynamicCache(config=...): KV where attention runs, conv/SSM state where Mamba runs."""
        if self.layer_specs is None:  # read by the parent's __post_init__, before the specs exist
            return None
        kinds = {(True, True): "hybrid", (False, True): "full_attention"}
        return [kinds.get((spec["mamba"], _runs_attention(spec)), "mamba") for spec in self.layer_specs]


def _runs_attention(spec: dict) -> bool:
    return spec["block"] is not None and spec["attention"]


def _runs_block(spec: dict) -> bool:
    return spec["block"] is not None and (spec["attention"] or spec["mlp"])
