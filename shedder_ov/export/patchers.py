"""Model patcher: during tracing, the model's forward becomes the family's graph
(`graph.forward_with_states`, `graph_zamba2.forward_with_states`) on explicit per-layer
states, which optimum-intel then hides as OpenVINO state variables."""

from __future__ import annotations

from optimum.exporters.openvino.model_patcher import ModelPatcher

from ..adapters import adapter_for


class ShedderMambaPatcher(ModelPatcher):
    """One patcher for every family: the config supplies the family's graph, the adapter the
    family's details."""

    def __init__(self, config, model, model_kwargs=None):
        super().__init__(config, model, model_kwargs)
        adapter, graph = adapter_for(model), config.family.graph

        def patched_forward(input_ids, attention_mask, cache_params):
            logits, present = graph(adapter, input_ids, attention_mask, cache_params)
            return {"logits": logits, "cache_params_present": present}

        # optimum-intel binds the example inputs (in `config.input_order()`, this signature's order)
        # to names by the signature of `orig_forward`: make that ours, whatever the model's own
        # forward takes (Zamba2's has no cache_params, Mamba-2's puts it before attention_mask)
        self.model_forward, self.orig_forward = self.orig_forward, patched_forward
        self.patched_forward = patched_forward

    def __enter__(self):
        super().__enter__()
        setattr(self._model, self.orig_forward_name, self.patched_forward)

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        setattr(self._model, self.orig_forward_name, self.model_forward)
