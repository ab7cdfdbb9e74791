"""OpenVINO export configs, registered with optimum-intel's TasksManager for every family we
export: the stock mamba / falcon_mamba entries are replaced (their graph is slow and inexact
on long prompts, and capped at transformers 5.3), mamba2 and our pruned types are added."""

from __future__ import annotations

import inspect

from optimum.exporters.openvino import utils as ov_export_utils
from optimum.exporters.openvino.model_configs import TextDecoderOpenVINOConfig
from optimum.exporters.tasks import TasksManager
from optimum.utils.input_generators import DummyInputGenerator, DummyTextInputGenerator
from optimum.utils.normalized_config import NormalizedTextConfig

from ..adapters import adapter_class_for, supported_model_types
from .patchers import ShedderMambaPatcher
from .states import state_names, state_shapes

TASKS = ("text-generation", "text-generation-with-past")
TESTED_TRANSFORMERS = "5.5.4"


class MambaStateDummyInputGenerator(DummyInputGenerator):
    """Random per-layer states as one flat list, shaped from the config (pruned layers differ)."""

    SUPPORTED_INPUT_NAMES = ("cache_params",)

    def __init__(self, task, normalized_config, batch_size=2, **kwargs):
        self.config = normalized_config.config
        self.batch_size = batch_size

    def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
        shapes = [layer[kind] for layer in state_shapes(self.config, self.batch_size) for kind in ("ssm", "conv") if kind in layer]
        return [self.random_float_tensor(shape, framework=framework, dtype=float_dtype) for shape in shapes]


class ShedderMambaOpenVINOConfig(TextDecoderOpenVINOConfig):
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, MambaStateDummyInputGenerator)
    DUMMY_PKV_GENERATOR_CLASS = MambaStateDummyInputGenerator
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    MAX_TRANSFORMERS_VERSION = TESTED_TRANSFORMERS
    _MODEL_PATCHER = ShedderMambaPatcher

    def input_order(self) -> list[str]:
        """The inputs in the order of the model's own forward signature: optimum-intel's trace
        wrapper binds the example inputs positionally by that signature."""
        names = ["input_ids", "attention_mask"] + (["cache_params"] if self.use_past_in_inputs else [])
        model_class = adapter_class_for(self._normalized_config.config.model_type).base_model_class
        order = list(inspect.signature(model_class.forward).parameters)
        return sorted(names, key=order.index)

    @property
    def inputs(self):
        inputs = {}
        for name in self.input_order():
            if name == "cache_params":
                self.add_past_key_values(inputs, direction="inputs")
            else:
                inputs[name] = {0: "batch_size", 1: "sequence_length"}
        return inputs

    def add_past_key_values(self, inputs_or_outputs, direction):
        kind = "past" if direction == "inputs" else "present"
        for name, _ in state_names(self._normalized_config.config, kind):
            inputs_or_outputs[name] = {0: "batch_size"}

    def generate_dummy_inputs(self, framework="pt", **kwargs):
        generators = self._create_dummy_input_generator_classes(**kwargs)
        dummy = {}
        for name in self.input_order():
            generator = next(g for g in generators if g.supports_input(name))
            dummy[name] = self.overwrite_shape_and_generate_input(generator, name, framework, input_shapes=kwargs)
        return dummy


def register() -> None:
    """Register the config for every model type an adapter handles (idempotent)."""
    register_in_tasks_manager = TasksManager.create_register("openvino", overwrite_existing=True)
    for model_type in supported_model_types():
        if model_type not in ov_export_utils.SSM_MODELS:  # stateful SSM handling + OVModelWithMambaForCausalLM
            ov_export_utils.SSM_MODELS.append(model_type)
        register_in_tasks_manager(model_type, *TASKS, library_name="transformers")(ShedderMambaOpenVINOConfig)
