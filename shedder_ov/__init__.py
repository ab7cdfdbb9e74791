"""shedder-ov: training-free Mamba-Shedder pruning, OpenVINO export and NNCF compression.

Importing the package registers the pruned model classes with the transformers Auto classes;
importing `shedder_ov.export` (which every export, compression and IR evaluation does) registers
our OpenVINO export configs with optimum-intel, so OVModelForCausalLM loads our IRs with its
SSM-aware class. The export side is not imported here: optimum-intel's export configs take ~7 s
to import, which every `shedder-ov` command that never exports would pay."""

from . import modeling  # noqa: F401

__version__ = "0.1.0"
