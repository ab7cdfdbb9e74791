"""Pruned model classes, registered with the transformers Auto classes on import."""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_shedder import ShedderFalconMambaConfig, ShedderMamba2Config, ShedderMambaConfig
from .configuration_shedder_falcon_h1 import ShedderFalconH1Config
from .configuration_shedder_granitemoehybrid import ShedderGraniteMoeHybridConfig
from .configuration_shedder_zamba2 import ShedderZamba2Config
from .modeling_shedder import (
    Mamba2MixerWithoutSSM,
    MambaMixerWithoutSSM,
    ShedderFalconMambaForCausalLM,
    ShedderMamba2ForCausalLM,
    ShedderMambaForCausalLM,
)
from .modeling_shedder_falcon_h1 import FalconH1MixerWithoutSSM, ShedderFalconH1ForCausalLM
from .modeling_shedder_granitemoehybrid import GraniteMoeHybridMambaLayerWithoutSSM, ShedderGraniteMoeHybridForCausalLM
from .modeling_shedder_zamba2 import ShedderZamba2ForCausalLM, Zamba2MixerWithoutSSM

_MAMBA_FILES = [Path(__file__).with_name("configuration_shedder.py"), Path(__file__).with_name("modeling_shedder.py")]
_ZAMBA2_FILES = [Path(__file__).with_name("configuration_shedder_zamba2.py"), Path(__file__).with_name("modeling_shedder_zamba2.py")]
_FALCON_H1_FILES = [Path(__file__).with_name("configuration_shedder_falcon_h1.py"), Path(__file__).with_name("modeling_shedder_falcon_h1.py")]
_GRANITE_FILES = [Path(__file__).with_name("configuration_shedder_granitemoehybrid.py"), Path(__file__).with_name("modeling_shedder_granitemoehybrid.py")]

# Per family, the two files (config, modeling) written into its checkpoints so they load without this package.
REMOTE_CODE_FILES = {
    "mamba": _MAMBA_FILES,
    "falcon_mamba": _MAMBA_FILES,
    "mamba2": _MAMBA_FILES,
    "zamba2": _ZAMBA2_FILES,
    "falcon_h1": _FALCON_H1_FILES,
    "granitemoehybrid": _GRANITE_FILES,
}

PRUNED_CLASSES = {
    "mamba": (ShedderMambaConfig, ShedderMambaForCausalLM),
    "falcon_mamba": (ShedderFalconMambaConfig, ShedderFalconMambaForCausalLM),
    "mamba2": (ShedderMamba2Config, ShedderMamba2ForCausalLM),
    "zamba2": (ShedderZamba2Config, ShedderZamba2ForCausalLM),
    "falcon_h1": (ShedderFalconH1Config, ShedderFalconH1ForCausalLM),
    "granitemoehybrid": (ShedderGraniteMoeHybridConfig, ShedderGraniteMoeHybridForCausalLM),
}

for _config_class, _model_class in PRUNED_CLASSES.values():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)


def auto_map(family: str) -> dict[str, str]:
    config_class, model_class = PRUNED_CLASSES[family]
    config_file, modeling_file = REMOTE_CODE_FILES[family]
    return {
        "AutoConfig": f"{config_file.stem}.{config_class.__name__}",
        "AutoModelForCausalLM": f"{modeling_file.stem}.{model_class.__name__}",
    }


__all__ = [
    "FalconH1MixerWithoutSSM",
    "ShedderFalconH1Config",
    "ShedderFalconH1ForCausalLM",
    "GraniteMoeHybridMambaLayerWithoutSSM",
    "ShedderGraniteMoeHybridConfig",
    "ShedderGraniteMoeHybridForCausalLM",
    "PRUNED_CLASSES",
    "REMOTE_CODE_FILES",
    "Mamba2MixerWithoutSSM",
    "MambaMixerWithoutSSM",
    "ShedderZamba2Config",
    "ShedderZamba2ForCausalLM",
    "Zamba2MixerWithoutSSM",
    "auto_map",
]
