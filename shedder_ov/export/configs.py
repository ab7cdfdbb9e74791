"""OpenVINO export configs, registered with optimum-intel's TasksManager for every family we
export: the stock mamba / falcon_mamba / zamba2 / granitemoehybrid entries are replaced (their
graphs are slow — a per-token scan — and some inexact on long prompts, Zamba2's is wrong on
OpenVINO >= 2026.1, several are capped at older transformers), mamba2, falcon_h1 (optimum-intel
has no export for them) and our pruned types are added. One config class serves every family;
what differs (the traced graph, the per-layer states) comes from `FAMILY_EXPORTS`."""

from __future__ import annotations

from typing import Callable, NamedTuple

from optimum.exporters.openvino import utils as ov_export_utils
from optimum.exporters.openvino.model_configs import TextDecoderOpenVINOConfig
from optimum.exporters.tasks import TasksManager
from optimum.utils.input_generators import DummyInputGenerator, DummyTextInputGenerator
from optimum.utils.normalized_config import NormalizedTextConfig

from ..adapters import adapter_class_for, supported_model_types
from . import graph, graph_falcon_h1, graph_granitemoehybrid, graph_zamba2, states
from .patchers import ShedderMambaPatcher

TASKS = ("text-generation", "text-generation-with-past")
TESTED_TRANSFORMERS = "5.5.4"
DUMMY_PAST = 2  # traced KV states hold a few past tokens, so the IR keeps their length dynamic


class FamilyExport(NamedTuple):
    graph: Callable  # forward_with_states(adapter, input_ids, attention_mask, states) -> logits, new states
    states: Callable  # (config, batch, past) -> per layer {kind: shape}, in the graph's order


FAMILY_EXPORTS = {
    "mamba": FamilyExport(graph.forward_with_states, states.mamba_states),
    "falcon_mamba": FamilyExport(graph.forward_with_states, states.mamba_states),
    "mamba2": FamilyExport(graph.forward_with_states, states.mamba2_states),
    "zamba2": FamilyExport(graph_zamba2.forward_with_states, states.zamba2_states),
    "falcon_h1": FamilyExport(graph_falcon_h1.forward_with_states, states.falcon_h1_states),
    "granitemoehybrid": FamilyExport(graph_granitemoehybrid.forward_with_states, states.granitemoehybrid_states),
}


def family_export(config) -> FamilyExport:
    return FAMILY_EXPORTS[adapter_class_for(config.model_type).family]


def layer_states(config, batch: int = 1, past: int = 0) -> list[dict[str, list[int]]]:
    return family_export(config).states(config, batch, past)


class MambaStateDummyInputGenerator(DummyInputGenerator):
    """Random per-layer states as one flat list, shaped from the config (pruned layers differ)."""

    SUPPORTED_INPUT_NAMES = ("cache_params",)

    def __init__(self, task, normalized_config, batch_size=2, **kwargs):
        self.config = normalized_config.config
        self.batch_size = batch_size

    def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
        shapes = [shape for layer in layer_states(self.config, self.batch_size, DUMMY_PAST) for shape in layer.values()]
        return [self.random_float_tensor(shape, framework=framework, dtype=float_dtype) for shape in shapes]


class KVCacheAtF32(dict):
    """Runtime options of the IR (its rt_info, applied by every compile_model: openvino.genai's,
    OVModelForCausalLM's) with the KV cache kept at f32. optimum-intel's export asks for f16, which
    makes the hybrids' f32-hint greedy tokens in genai differ from torch's; a compile that passes
    its own KV_CACHE_PRECISION (our runtime: the inference precision) still overrides it."""

    def __setitem__(self, key, value):
        super().__setitem__(key, "f32" if key == "KV_CACHE_PRECISION" else value)


class ShedderMambaOpenVINOConfig(TextDecoderOpenVINOConfig):
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, MambaStateDummyInputGenerator)
    DUMMY_PKV_GENERATOR_CLASS = MambaStateDummyInputGenerator
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    MAX_TRANSFORMERS_VERSION = TESTED_TRANSFORMERS
    _MODEL_PATCHER = ShedderMambaPatcher

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runtime_options = KVCacheAtF32(KV_CACHE_PRECISION="f32")

    @property
    def family(self) -> FamilyExport:
        return family_export(self._normalized_config.config)

    def input_order(self) -> list[str]:
        """The traced inputs, in the order of the patcher's forward signature (optimum-intel
        binds the example inputs positionally by it)."""
        return ["input_ids", "attention_mask"] + (["cache_params"] if self.use_past_in_inputs else [])

    @property
    def inputs(self):
        inputs = {}
        for name in self.input_order():
            if name == "cache_params":
                self.add_past_key_values(inputs, direction="inputs")
            else:  # the mask may cover the past tokens too: its own length symbol (same names share one)
                inputs[name] = {0: "batch_size", 1: "sequence_length" if name == "input_ids" else "past_sequence_length + sequence_length"}
        return inputs

    def add_past_key_values(self, inputs_or_outputs, direction):
        kind = "past" if direction == "inputs" else "present"
        for name, state in states.state_names(layer_states(self._normalized_config.config), kind):
            inputs_or_outputs[name] = states.dynamic_axes(state, kind)

    def generate_dummy_inputs(self, framework="pt", **kwargs):
        generators = self._create_dummy_input_generator_classes(**kwargs)
        dummy = {}
        for name in self.input_order():
            generator = next(g for g in generators if g.supports_input(name))
            dummy[name] = self.overwrite_shape_and_generate_input(generator, name, framework, input_shapes=kwargs)
        return dummy


def register() -> None:
    """Register the config for every model type an adapter handles in a family we export (idempotent)."""
    register_in_tasks_manager = TasksManager.create_register("openvino", overwrite_existing=True)
    for model_type in supported_model_types():
        if adapter_class_for(model_type).family not in FAMILY_EXPORTS:
            continue
        if model_type not in ov_export_utils.SSM_MODELS:  # stateful SSM handling + OVModelWithMambaForCausalLM
            ov_export_utils.SSM_MODELS.append(model_type)
        # no torch.jit.trace re-check: it traces the model twice more (at 64 layers, GBs of graph and
        # minutes); the export's parity check runs the IR itself against torch
        if model_type not in ov_export_utils.SKIP_CHECK_TRACE_MODELS:  # a tuple
            ov_export_utils.SKIP_CHECK_TRACE_MODELS += (model_type,)
        register_in_tasks_manager(model_type, *TASKS, library_name="transformers")(ShedderMambaOpenVINOConfig)
