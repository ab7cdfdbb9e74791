"""shedder-ov: training-free Mamba-Shedder pruning, OpenVINO export and NNCF compression.

Importing the package registers the pruned model classes with the transformers Auto classes
and our OpenVINO export configs with optimum-intel (so OVModelForCausalLM loads our IRs)."""

from . import export, modeling  # noqa: F401

__version__ = "0.1.0"
