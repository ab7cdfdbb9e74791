"""shedder-ov: training-free Mamba-Shedder pruning, OpenVINO export and NNCF compression.

Importing the package registers the pruned model classes with the transformers Auto classes."""

from . import modeling  # noqa: F401

__version__ = "0.1.0"
