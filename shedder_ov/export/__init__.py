"""OpenVINO export (optimum-intel extension), parity checks and NNCF weight compression.

Importing this package registers our export configs with optimum-intel."""

from .configs import register

register()
