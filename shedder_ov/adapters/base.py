"""The one interface the search, surgery, export, compression and report stages use.

An adapter wraps a loaded transformers model of one family and knows: its removable candidates
(in the vocabulary of `components`), how to mask one in place (no weight copies), a fast
cache-free forward that honours the masks, parameter counts, and how to build the physically
smaller model. `FamilyAdapter` is the interface; `MambaFamilyAdapter` the Mamba-only families."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from typing import ClassVar

import torch
from torch import nn

from ..errors import ShedderError
from ..kernels import kernels_for
from ..modeling import PRUNED_CLASSES, auto_map
from .components import REPEATABLE, Candidate


def model_holding(model_class: type[nn.Module], config, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """The model of `config` with `state` as its weights, in `dtype`, built without a randomly
    initialised full-size copy first (parameters on the meta device, then assigned): at 2.8B that
    copy was the peak of physical removal."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.to(dtype).eval()


def count_params(module: nn.Module | None) -> int:
    """Parameters of a module, tied tensors counted once."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def view_module(build, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """`build()` made on the meta device, its parameters then set to `tensors` (views, no copies)."""
    with torch.device("meta"):
        view = build()
    for name, tensor in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        setattr(view.get_submodule(owner_name), attr, nn.Parameter(tensor, requires_grad=False))
    return view


class FamilyAdapter(ABC):
    """What every stage may ask of a family. Masks are a multiset: a repeatable candidate
    (`mlp_channels`) masked twice has two groups masked."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    targets: ClassVar[tuple[str, ...]]  # the component targets this family has
    # recovery LoRA's default targets: the paper adapts the mixers' in/out projections
    lora_targets: ClassVar[tuple[str, ...]] = ("in_proj", "out_proj")
    group_size: int | None = None  # channels per `mlp_channels` removal, once set

    def __init__(self, model: nn.Module):
        self.model = model
        self.masked: Counter[Candidate] = Counter()

    @classmethod
    def load_pretrained(cls, path, dtype: torch.dtype) -> nn.Module:
        """The model of a checkpoint folder of this family."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    # ---- structure -------------------------------------------------------------
    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The residual layers of the model; candidates are named by their indices."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def stream_width(self) -> int:
        """Features per token of the stream `embed` returns and `layer_forward` carries."""
        return self.model.config.hidden_size

    @classmethod
    def check_targets(cls, targets: list[str], where: str = "search.targets") -> None:
        unknown = [t for t in targets if t not in cls.targets]
        if unknown:
            raise ShedderError(f"{where}: {', '.join(unknown)} not in a {cls.family} model (it has: {', '.join(cls.targets)})")

    @classmethod
    def empty_model(cls, config) -> nn.Module:
        """The model load_checkpoint builds for `config`, on the meta device: names and shapes only."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)

    @classmethod
    def stored_names(cls, config, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The stored weights' shapes under the names the built model gives them."""
        return shapes

    @classmethod
    def check_search(cls, config, search) -> None:
        """Refuse, from the config alone (no weights loaded), a search this model cannot run."""
        if search.unshare:
            cls.check_unshare(config)
        if search.apply is not None:
            cls.check_targets(search.targets)
            return
        for index, stage in enumerate(search.staged):
            cls.check_stage(config, stage, "search" if search.stages is None else f"search.stages.{index}", search.unshare)

    @classmethod
    def check_stage(cls, config, stage, where: str, unshare: bool) -> None:
        cls.check_targets(stage.targets, f"{where}.targets")

    @classmethod
    def check_unshare(cls, config) -> None:
        raise ShedderError(f"search.unshare: a {cls.family} model has no shared blocks to unshare")

    @abstractmethod
    def candidates(self, targets: list[str]) -> list[Candidate]:
        """Every removable component of the requested targets, in layer order."""

    @abstractmethod
    def validate(self, candidate: Candidate) -> None:
        """Refuse (ShedderError) a candidate this model does not have."""

    @abstractmethod
    def removes_layer(self, candidate: Candidate) -> bool:
        """Whether removing `candidate` drops its whole residual layer."""

    def capacity(self, candidate: Candidate) -> int:
        """How often a candidate can be removed (repeatable ones: groups that may go)."""
        return 1

    def contains(self, outer: Candidate, inner: Candidate) -> bool:
        """Whether removing `outer` also removes `inner` (same layer, a part of it)."""
        return outer.layer == inner.layer and self.removes_layer(outer)

    def available(self, candidate: Candidate, removed: list[Candidate]) -> bool:
        """Still removable after `removed`; the last whole layer of the model never is."""
        count = removed.count(candidate)
        if count >= self.capacity(candidate) or (count and candidate.kind not in REPEATABLE):
            return False
        if any(self.contains(gone, candidate) for gone in set(removed) if gone != candidate):
            return False
        if self.removes_layer(candidate):
            gone = {c.layer for c in removed if self.removes_layer(c)}
            return len(gone) < self.num_layers - 1
        return True

    # ---- masking -----------------------------------------------------------------
    def mask(self, candidate: Candidate) -> None:
        self.validate(candidate)
        self.masked[candidate] += 1

    def unmask(self, candidate: Candidate) -> None:
        self.masked[candidate] -= 1
        if self.masked[candidate] <= 0:
            del self.masked[candidate]

    def is_masked(self, layer: int, kind: str) -> bool:
        return Candidate(layer, kind) in self.masked

    # ---- forward -----------------------------------------------------------------
    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The stream entering layer 0 (`stream_width` features per token)."""

    @abstractmethod
    def layer_forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """One residual layer without cache, honouring the masks."""

    @abstractmethod
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float logits from the stream leaving the last layer."""

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full forward of the (masked) model, fast pure-torch path, no cache."""
        hidden = self.embed(input_ids)
        for layer in range(self.num_layers):
            hidden = self.layer_forward(layer, hidden)
        return self.head(hidden)

    # ---- sizes ---------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters as stored (shared weights once)."""
        return count_params(self.model)

    def num_params_unshared(self) -> int:
        """Parameters with every shared block counted once per use (the reference's count)."""
        return self.num_params()

    @abstractmethod
    def removed_params(self, removed: list[Candidate]) -> int:
        """Parameters that physically removing `removed` deletes."""

    def unshared(self) -> "FamilyAdapter":
        """An adapter on a copy of the model in which no block is shared (`search.unshare`)."""
        raise ShedderError(f"search.unshare: a {self.family} model has no shared blocks to unshare")

    def set_channel_groups(self, group_size: int) -> None:
        """Make `mlp_channels` candidates remove `group_size` channels each."""
        raise ShedderError(f"mlp_channels: a {self.family} model has no MLPs")

    # ---- surgery -------------------------------------------------------------------
    @abstractmethod
    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        """A new, physically smaller model without the removed components (weights cloned)."""

    def from_reference(self, data: dict, source: str) -> list[Candidate]:
        """Candidates of a reference `pruning_config.json` (its `pruned_*` lists)."""
        keys = {"pruned_mamba_block_idx": "mamba_block", "pruned_ssm_idx": "ssm"}
        unsupported = [k for k, v in data.items() if k.startswith("pruned_") and k not in keys and v]
        if unsupported:
            raise ShedderError(f"{source}: {', '.join(unsupported)} not applicable to a {self.family} model")
        return [Candidate(int(i), kind) for key, kind in keys.items() for i in (data.get(key) or [])]

    # ---- recovery ------------------------------------------------------------------
    @property
    def tuned_layers(self) -> nn.Module:
        """The module holding the residual layers, which recovery's LoRA wraps."""
        return self.layers

    def lora_target_choices(self) -> list[str]:
        """Names of the linear layers inside the residual layers, which LoRA can adapt."""
        names = {name.rsplit(".", 1)[-1] for name, m in self.tuned_layers.named_modules() if isinstance(m, nn.Linear)}
        return sorted(n for n in names if not n.isdigit())  # not the positions inside an nn.Sequential


class MambaFamilyAdapter(FamilyAdapter):
    """Shared mechanics of the Mamba-only families; subclasses supply the mixer math."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    base_config_class: ClassVar[type]
    base_model_class: ClassVar[type]
    ssm_less_mixer: ClassVar[type]
    # recovery LoRA's default targets: the paper adapts the mixers' in/out projections
    lora_targets: ClassVar[tuple[str, ...]] = ("in_proj", "out_proj")

    targets = ("layer", "mamba_block", "ssm")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._ssm_less_views: dict[int, nn.Module] = {}

    # ---- structure -------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.backbone.layers

    def has_ssm(self, layer: int) -> bool:
        return not isinstance(self.layers[layer].mixer, self.ssm_less_mixer)

    def candidates(self, targets: list[str]) -> list[Candidate]:
        """Every removable component of the requested targets, in layer order (a layer here is
        its Mamba block, so `layer` and `mamba_block` name the same candidates)."""
        self.check_targets(targets)
        found = []
        for layer in range(self.num_layers):
            if "mamba_block" in targets or "layer" in targets:
                found.append(Candidate(layer, "mamba_block"))
            if "ssm" in targets and self.has_ssm(layer):
                found.append(Candidate(layer, "ssm"))
        return found

    def validate(self, candidate: Candidate) -> None:
        if candidate.kind not in ("mamba_block", "ssm"):
            raise ShedderError(f"{candidate.name}: a {self.family} model has only blocks and SSMs (layers.<i>.block, layers.<i>.ssm)")
        if candidate.layer >= self.num_layers:
            raise ShedderError(f"{candidate.name}: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        if candidate.kind == "ssm" and not self.has_ssm(candidate.layer):
            raise ShedderError(f"{candidate.name}: this layer has no SSM left to remove")

    def removes_layer(self, candidate: Candidate) -> bool:
        return candidate.kind == "mamba_block"

    # ---- masking -----------------------------------------------------------------
    def block_masked(self, layer: int) -> bool:
        return self.is_masked(layer, "mamba_block")

    def ssm_masked(self, layer: int) -> bool:
        return self.is_masked(layer, "ssm")

    def _ssm_less_view(self, layer: int) -> nn.Module:
        """The SSM-less mixer of a layer, its parameters views of the full mixer's weights."""
        if layer not in self._ssm_less_views:
            mixer = self.layers[layer].mixer
            view = view_module(lambda: self.ssm_less_mixer(self.model.config, layer_idx=layer), self.ssm_less_tensors(mixer))
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

    @abstractmethod
    def mixer_forward(self, mixer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The full mixer on a whole sequence, from zero state (chunked scan)."""

    @abstractmethod
    def ssm_less_tensors(self, mixer: nn.Module) -> dict[str, torch.Tensor]:
        """Views of the weights an SSM-less mixer keeps, by its parameter names."""

    # ---- sizes ---------------------------------------------------------------------
    def removed_params(self, removed: list[Candidate]) -> int:
        blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        total = sum(count_params(self.layers[i]) for i in blocks)
        for c in removed:
            if c.kind == "ssm" and c.layer not in blocks:
                mixer = self.layers[c.layer].mixer
                kept = sum(t.numel() for t in self.ssm_less_tensors(mixer).values())
                total += count_params(mixer) - kept
        return total

    # ---- surgery -------------------------------------------------------------------
    layer_fields: ClassVar[tuple[str, ...]] = ("ssm_removed_layers",)  # our configs' per-layer fields

    def pruned_mixers(self, removed: list[Candidate], keep: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """The tensors of each kept layer's mixer that changes (by its source layer): here the
        SSM-less remainder of a newly removed SSM."""
        gone = {c.layer for c in removed if c.kind == "ssm"}
        return {old: self.ssm_less_tensors(self.layers[old].mixer) for old in keep if old in gone}

    def pruned_layer_fields(self, removed: list[Candidate], keep: list[int]) -> dict:
        """Per-layer config fields beyond `ssm_removed_layers` the pruned model needs (none here)."""
        return {}

    def pruned_model(self, removed: list[Candidate]) -> nn.Module:
        for candidate in removed:
            self.validate(candidate)
        blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        keep = [i for i in range(self.num_layers) if i not in blocks]
        if not keep:
            raise ShedderError("cannot remove every block of the model")
        mixers = self.pruned_mixers(removed, keep)
        gone_ssm = {c.layer for c in removed if c.kind == "ssm"}
        ssm_less = [new for new, old in enumerate(keep) if old in gone_ssm or not self.has_ssm(old)]
        fields = self.pruned_layer_fields(removed, keep)

        config_dict = self.model.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", *self.layer_fields):
            config_dict.pop(key, None)
        source = config_dict.pop("source_layers", None) or list(range(self.num_layers))
        config_dict["num_hidden_layers"] = len(keep)
        if ssm_less or fields:
            config_class, model_class = PRUNED_CLASSES[self.family]
            config = config_class(
                **config_dict, ssm_removed_layers=ssm_less or None, source_layers=[source[i] for i in keep], **fields
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
            if old in blocks or (old in mixers and rest.startswith("mixer.")):
                continue
            state[f"backbone.layers.{keep.index(old)}.{rest}"] = tensor.clone()
        for old, tensors in mixers.items():
            for name, tensor in tensors.items():
                state[f"backbone.layers.{keep.index(old)}.mixer.{name}"] = tensor.detach().clone()

        return model_holding(model_class, config, state, next(self.model.parameters()).dtype)
