"""Model patcher: during tracing, the model's forward becomes `graph.forward_with_states`
on explicit per-layer states, which optimum-intel then hides as OpenVINO state variables."""

from __future__ import annotations

import inspect

from optimum.exporters.openvino.model_patcher import ModelPatcher

from ..adapters import adapter_for
from .graph import forward_with_states


class ShedderMambaPatcher(ModelPatcher):
    """One patcher for every family: the adapter supplies the family's mixer details."""

    def __init__(self, config, model, model_kwargs=None):
        super().__init__(config, model, model_kwargs)
        adapter = adapter_for(model)

        def patched_forward(input_ids, attention_mask, cache_params):
            logits, present = forward_with_states(adapter, input_ids, attention_mask, cache_params)
            return {"logits": logits, "cache_params_present": present}

        # optimum-intel orders the example inputs by this signature: keep the config's order
        parameters = inspect.signature(patched_forward).parameters
        patched_forward.__signature__ = inspect.Signature([parameters[name] for name in config.input_order()])

        self.patched_forward = patched_forward

    def __enter__(self):
        super().__enter__()
        setattr(self._model, self.orig_forward_name, self.patched_forward)

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        setattr(self._model, self.orig_forward_name, self.orig_forward)
