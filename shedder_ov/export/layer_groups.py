"""Running an IR a group of layers at a time, so that checking it holds one group's f32 weights
instead of the whole model's: an OpenVINO CPU compile at the f32 hint keeps an f32 copy of every
weight it runs (16.6 GiB with the mapped bf16 file at 2.7B parameters), a group only its share.

The IR is cut between layers. Every op belongs to the group of the latest layer whose weights
(Constants named `…layers.K.…`) it depends on; a tensor computed in one group and used by a later
one becomes an output of the first and an input of the second. Constants, weights several layers
share, and ops computed from the model inputs alone (masks, shapes) are shared into every group
that uses them; a state variable goes with the ops that read and write it, which must be one
group. The cut changes no op: each group computes what the whole IR computes.

A group runs all of a sequence's calls before the next group starts, so the calls are fixed up
front — teacher forcing: a greedy check feeds the expected tokens and asks that every step's
argmax be the next one, which holds exactly when the IR's own greedy generation gives them."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np

from ..errors import ShedderError
from ..runtime import ir_feeds, plugin_properties, read_ir, reshaped

IR_INPUTS = {"input_ids", "attention_mask", "position_ids", "cache_position", "beam_idx"}  # what ir_feeds makes
LAYER_WEIGHT = re.compile(r"layers\.(\d+)\.")


def layer_of(op) -> int | None:
    """The layer a Constant's name puts it in (`…layers.K.…`), else None."""
    found = LAYER_WEIGHT.search(op.get_friendly_name()) if op.get_type_name() == "Constant" else None
    return int(found.group(1)) if found else None


class LayerGroups:
    """The sub-models of an IR cut into `count` groups of consecutive layers, built one at a time
    (each cut rewires the shared graph, so group g exists only once groups < g are done)."""

    def __init__(self, model, count: int):
        self.model = model
        ops = model.get_ordered_ops()
        self.nodes = {op.get_name(): op for op in ops}
        self.constant: dict[str, bool] = {}  # Constants and what is computed from Constants alone
        consumers: dict[str, list[str]] = {name: [] for name in self.nodes}
        for op in ops:
            name, sources, kind = op.get_name(), [self.source(port)[0] for port in op.inputs()], op.get_type_name()
            for source in sources:
                consumers[source].append(name)
            self.constant[name] = kind == "Constant" or kind != "ReadValue" and bool(sources) and all(self.constant[s] for s in sources)

        def computing(name: str) -> set[str]:  # the non-constant ops a constant feeds, through its decompression
            found = set()
            for consumer in consumers[name]:
                found |= computing(consumer) if self.constant[consumer] else {consumer}
            return found

        # a layer's own weights anchor what uses them; weights several layers share (a Zamba2
        # shared block, named after one of them) are shared into each group instead
        anchors = {op.get_name(): layer for op in ops if (layer := layer_of(op)) is not None and len(computing(op.get_name())) == 1}
        layers = sorted(set(anchors.values()))
        if not layers:
            raise ShedderError("IR: no layer weights named layers.N found, cannot run it in layer groups")
        self.count = min(count, len(layers))
        anchored = {name: layers.index(layer) * self.count // len(layers) for name, layer in anchors.items()}
        self.group = self.spread(ops, anchored)
        # a state belongs to the group writing it; what a later group reads of it (a KV cache's
        # length) is handed over as it was at the start of the call
        writer = {sink.get_variable_id(): self.group[sink.get_name()] for sink in model.get_sinks()}
        anchored |= {op.get_name(): writer[op.get_variable_id()] for op in ops
                     if op.get_type_name() == "ReadValue" and writer.get(op.get_variable_id()) is not None}
        self.group = self.spread(ops, anchored)
        # outputs a later group reads: they become Results of the group computing them
        self.handed: list[set[tuple[str, int]]] = [set() for _ in range(self.count)]
        for op in ops:
            for port in op.inputs():
                key = self.source(port)
                if self.cut(key[0], self.group[op.get_name()]):
                    self.handed[self.group[key[0]]].add(key)

    def spread(self, ops, anchored: dict[str, int]) -> dict[str, int | None]:
        """Each op's group: the latest of its anchor's and its inputs' (None: depends on no anchor)."""
        group: dict[str, int | None] = {}
        for op in ops:
            name = op.get_name()
            groups = [group[s] for s in (self.source(port)[0] for port in op.inputs()) if group[s] is not None]
            group[name] = max(groups + ([anchored[name]] if name in anchored else []), default=None)
        return group

    @staticmethod
    def source(port) -> tuple[str, int]:
        output = port.get_source_output()
        return output.get_node().get_name(), output.get_index()

    def cut(self, source: str, group: int | None) -> bool:
        """Whether an edge from `source` into an op of `group` crosses groups (shared ops never do)."""
        own = self.group[source]
        return own is not None and group is not None and own < group and not self.constant[source]

    def build(self, index: int):
        """Group `index` as an ov.Model: inputs named `cut:NODE:PORT` for what earlier groups hand
        over, outputs `cut:…` for what later groups need (plus the IR's own outputs in the last)."""
        from openvino import Model, opset13

        params: dict[tuple[str, int], object] = {}
        for name, op in self.nodes.items():
            if self.group[name] != index:
                continue
            for port in op.inputs():
                key = self.source(port)
                if self.cut(key[0], index):
                    if key not in params:
                        output = port.get_source_output()
                        params[key] = opset13.parameter(output.get_partial_shape(), output.get_element_type())
                        params[key].output(0).set_names({cut_name(key)})
                    port.replace_source_output(params[key].output(0))
        results = []
        for key in sorted(self.handed[index]):
            result = opset13.result(self.nodes[key[0]].output(key[1]))
            result.output(0).set_names({cut_name(key)})
            results.append(result)
        results += [r for r in self.model.get_results() if self.group[r.get_name()] == index]
        sinks = [s for s in self.model.get_sinks() if self.group[s.get_name()] == index]
        inputs = [p for p in self.model.get_parameters() if reaches(p, results + sinks)]
        group = Model(results, sinks, inputs + list(params.values()), f"group{index}")
        read = {op.get_variable_id() for op in group.get_ops() if op.get_type_name() == "ReadValue"}
        if read != {sink.get_variable_id() for sink in sinks}:
            raise ShedderError(f"IR: layer group {index} reads states another group writes ({', '.join(sorted(read)[:3])}…), cannot cut it")
        return group


def cut_name(key: tuple[str, int]) -> str:
    return f"cut:{key[0]}:{key[1]}"


def reaches(parameter, roots) -> bool:
    """Whether `parameter` feeds any of `roots` (a walk up their inputs)."""
    target, seen, stack = parameter.get_name(), set(), list(roots)
    while stack:
        node = stack.pop()
        name = node.get_name()
        if name == target:
            return True
        if name not in seen:
            seen.add(name)
            stack.extend(port.get_source_output().get_node() for port in node.inputs())
    return False


class GroupedIR:
    """Logits of fixed sequences of calls through an IR run `groups` layers-groups at a time, at
    one precision hint, one compilation alive at a time."""

    def __init__(self, path: str | Path, groups: int, precision: str = "f32"):
        import openvino as ov

        self.path, self.groups, self.precision = Path(path), groups, precision
        self.core = ov.Core()

    def run(self, sequences: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """For each sequence (calls of token ids [batch, length], from zero state), the logits of every call."""
        from openvino import Tensor

        model = read_ir(self.path)
        logits_name = next((p.any_name for p in model.outputs if "logits" in p.names), model.outputs[0].any_name)
        cut = LayerGroups(model, self.groups)
        self.groups = cut.count  # at most one group per layer
        handed = [[{} for _ in calls] for calls in sequences]  # per call: cut tensors of earlier groups
        logits = [[None for _ in calls] for calls in sequences]
        for index in range(cut.count):
            group = cut.build(index)
            names = {port.any_name for port in group.inputs}
            compiled, shape = None, None
            for s, calls in enumerate(sequences):
                state, past = None, 0
                for c, ids in enumerate(calls):
                    feeds = {**ir_feeds(names & IR_INPUTS, ids, past), **{n: handed[s][c][n] for n in names - IR_INPUTS}}
                    signature = tuple(sorted((n, v.shape) for n, v in feeds.items()))
                    if signature != shape:  # another shape: compile it, carrying the state over
                        if compiled is not None:
                            state = {v.name: v.state.data.copy() for v in request.query_state()} if past else None
                        compiled = request = None
                        gc.collect()
                        static = reshaped(group, {n: v.shape for n, v in feeds.items()}, ids.shape[0])
                        compiled = self.core.compile_model(static, "CPU", plugin_properties(self.precision))
                        request, shape = compiled.create_infer_request(), signature
                        request.reset_state()
                        for variable in request.query_state() if state else ():
                            variable.state = Tensor(state[variable.name])
                    elif past == 0:
                        request.reset_state()
                    request.infer(feeds)
                    past += ids.shape[1]
                    for port in group.outputs:
                        value = request.get_tensor(port).data.copy()
                        if port.any_name == logits_name:
                            logits[s][c] = value
                        else:
                            handed[s][c][port.any_name] = value
            del compiled, request, group
            gc.collect()
        return logits
