"""Pruned model classes, registered with the transformers Auto classes on import."""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_shedder import ShedderFalconMambaConfig, ShedderMamba2Config, ShedderMambaConfig
from .modeling_shedder import (
    Mamba2MixerWithoutSSM,
    MambaMixerWithoutSSM,
    ShedderFalconMambaForCausalLM,
    ShedderMamba2ForCausalLM,
    ShedderMambaForCausalLM,
)

# The two files written into every pruned checkpoint so it loads without this package.
REMOTE_CODE_FILES = [Path(__file__).with_name("configuration_shedder.py"), Path(__file__).with_name("modeling_shedder.py")]

PRUNED_CLASSES = {
    "mamba": (ShedderMambaConfig, ShedderMambaForCausalLM),
    "falcon_mamba": (ShedderFalconMambaConfig, ShedderFalconMambaForCausalLM),
    "mamba2": (ShedderMamba2Config, ShedderMamba2ForCausalLM),
}

for _config_class, _model_class in PRUNED_CLASSES.values():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)


def auto_map(family: str) -> dict[str, str]:
    config_class, model_class = PRUNED_CLASSES[family]
    return {
        "AutoConfig": f"configuration_shedder.{config_class.__name__}",
        "AutoModelForCausalLM": f"modeling_shedder.{model_class.__name__}",
    }


__all__ = [
    "PRUNED_CLASSES",
    "REMOTE_CODE_FILES",
    "Mamba2MixerWithoutSSM",
    "MambaMixerWithoutSSM",
    "auto_map",
]
