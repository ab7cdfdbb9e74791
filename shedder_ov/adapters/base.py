"""The one interface the search, surgery, export, compression and report stages use.

An adapter wraps a loaded transformers model of one family and knows: its removable
candidates, how to mask one in place (no weight copies), a fast cache-free forward that
honours the masks, parameter counts, and how to build the physically smaller model."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ShedderError
from ..kernels import kernels_for
from ..modeling import PRUNED_CLASSES, auto_map

GRANULARITIES = ("mamba_block", "ssm")
_NAME = re.compile(r"^layers\.(\d+)\.(block|ssm)$")


@dataclass(frozen=True, order=True)
class Candidate:
    """A removable component, named by its layer in the model being pruned."""

    layer: int
    kind: str  # "mamba_block" | "ssm"

    @property
    def name(self) -> str:
        return f"layers.{self.layer}.{'block' if self.kind == 'mamba_block' else 'ssm'}"

    @classmethod
    def parse(cls, name: str) -> "Candidate":
        match = _NAME.match(name)
        if not match:
            raise ShedderError(f"{name!r} is not a candidate name (expected layers.<i>.block or layers.<i>.ssm)")
        return cls(int(match.group(1)), "mamba_block" if match.group(2) == "block" else "ssm")


def count_params(module: nn.Module) -> int:
    """Parameters of a module, tied tensors counted once."""
    return sum(p.numel() for p in module.parameters())


class MambaFamilyAdapter(ABC):
    """Shared mechanics of the Mamba families; subclasses supply the mixer math."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    base_config_class: ClassVar[type]
    base_model_class: ClassVar[type]
    ssm_less_mixer: ClassVar[type]
    # recovery LoRA's default targets: the paper adapts the mixers' in/out projections
    lora_targets: ClassVar[tuple[str, ...]] = ("in_proj", "out_proj")

    def __init__(self, model: nn.Module):
        self.model = model
        self.masked: set[Candidate] = set()
        self._ssm_less_views: dict[int, nn.Module] = {}

    # ---- structure -------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.backbone.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def has_ssm(self, layer: int) -> bool:
        return not isinstance(self.layers[layer].mixer, self.ssm_less_mixer)

    def candidates(self, targets: list[str]) -> list[Candidate]:
        """Every removable component of the requested granularities, in layer order."""
        found = []
        for layer in range(self.num_layers):
            if "mamba_block" in targets:
                found.append(Candidate(layer, "mamba_block"))
            if "ssm" in targets and self.has_ssm(layer):
                found.append(Candidate(layer, "ssm"))
        return found

    def validate(self, candidate: Candidate) -> None:
        if candidate.layer >= self.num_layers:
            raise ShedderError(f"{candidate.name}: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        if candidate.kind == "ssm" and not self.has_ssm(candidate.layer):
            raise ShedderError(f"{candidate.name}: this layer has no SSM left to remove")

    # ---- masking -----------------------------------------------------------------
    def mask(self, candidate: Candidate) -> None:
        self.validate(candidate)
        self.masked.add(candidate)

    def unmask(self, candidate: Candidate) -> None:
        self.masked.discard(candidate)

    def block_masked(self, layer: int) -> bool:
        return Candidate(layer, "mamba_block") in self.masked

    def ssm_masked(self, layer: int) -> bool:
        return Candidate(layer, "ssm") in self.masked

    def _ssm_less_view(self, layer: int) -> nn.Module:
        """The SSM-less mixer of a layer, its parameters views of the full mixer's weights."""
        if layer not in self._ssm_less_views:
            mixer = self.layers[layer].mixer
            with torch.device("meta"):
                view = self.ssm_less_mixer(self.model.config, layer_idx=layer)
            for name, tensor in self.ssm_less_tensors(mixer).items():
                owner_name, _, attr = name.rpartition(".")
                setattr(view.get_submodule(owner_name), attr, nn.Parameter(tensor, requires_grad=False))
            if hasattr(view, "norm"):
                view.norm.variance_epsilon = mixer.norm.variance_epsilon
            self._ssm_less_views[layer] = view
        return self._ssm_less_views[layer]

    # ---- forward -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.embeddings(input_ids)

    def layer_forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """One residual block without cache, honouring the masks."""
        if self.block_masked(layer):
            return hidden
        block = self.layers[layer]
        normed = kernels_for(hidden.device.type).rms_norm(block.norm, hidden.to(dtype=block.norm.weight.dtype))
        residual = hidden.to(torch.float32) if block.residual_in_fp32 else hidden
        if self.ssm_masked(layer):
            mixed = self._ssm_less_view(layer)(normed)
        elif not self.has_ssm(layer):
            mixed = block.mixer(normed)
        else:
            mixed = self.mixer_forward(block.mixer, normed)
        return residual + mixed

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.model.backbone.norm_f(hidden)
        return self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype)).float()

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full forward of the (masked) model, fast pure-torch path, no cache."""
        hidden = self.embed(input_ids)
        for layer in range(self.num_layers):
            hidden = self.layer_forward(layer, hidden)
        return self.head(hidden)

    @abstractmethod
    def mixer_forward(self, mixer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The full mixer on a whole sequence, from zero state (chunked scan)."""

    @abstractmethod
    def ssm_less_tensors(self, mixer: nn.Module) -> dict[str, torch.Tensor]:
        """Views of the weights an SSM-less mixer keeps, by its parameter names."""

    # ---- sizes ---------------------------------------------------------------------
    def num_params(self) -> int:
        return count_params(self.model)

    def removed_params(self, removed: list[Candidate]) -> int:
        """Parameters that physically removing `removed` deletes."""
        blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        total = sum(count_params(self.layers[i]) for i in blocks)
        for c in removed:
            if c.kind == "ssm" and c.layer not in blocks:
                mixer = self.layers[c.layer].mixer
                kept = sum(t.numel() for t in self.ssm_less_tensors(mixer).values())
                total += count_params(mixer) - kept
        return total

    # ---- surgery -------------------------------------------------------------------
    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        """A new, physically smaller model without the removed components (weights cloned)."""
        for candidate in removed:
            self.validate(candidate)
        blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        new_ssm_less = {c.layer for c in removed if c.kind == "ssm"} - blocks
        keep = [i for i in range(self.num_layers) if i not in blocks]
        if not keep:
            raise ShedderError("cannot remove every block of the model")
        ssm_less = [new for new, old in enumerate(keep) if old in new_ssm_less or not self.has_ssm(old)]

        config_dict = self.model.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "ssm_removed_layers"):
            config_dict.pop(key, None)
        source = config_dict.pop("source_layers", None) or list(range(self.num_layers))
        config_dict["num_hidden_layers"] = len(keep)
        if ssm_less:
            config_class, model_class = PRUNED_CLASSES[self.family]
            config = config_class(
                **config_dict, ssm_removed_layers=ssm_less, source_layers=[source[i] for i in keep]
            )
            config.auto_map = auto_map(self.family)
        else:
            config_class, model_class = self.base_config_class, self.base_model_class
            config = config_class(**config_dict)
        config.architectures = [model_class.__name__]

        state = {}
        for key, tensor in self.model.state_dict().items():
            match = re.match(r"^backbone\.layers\.(\d+)\.(.*)$", key)
            if not match:
                state[key] = tensor.clone()
                continue
            old, rest = int(match.group(1)), match.group(2)
            if old in blocks or (old in new_ssm_less and rest.startswith("mixer.")):
                continue
            state[f"backbone.layers.{keep.index(old)}.{rest}"] = tensor.clone()
        for old in new_ssm_less:
            for name, tensor in self.ssm_less_tensors(self.layers[old].mixer).items():
                state[f"backbone.layers.{keep.index(old)}.mixer.{name}"] = tensor.clone()

        dtype = next(self.model.parameters()).dtype
        pruned = model_class(config).to(dtype)
        pruned.load_state_dict(state, strict=True)
        pruned.tie_weights()
        pruned.eval()
        return pruned
