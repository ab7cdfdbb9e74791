"""Sequence and norm kernels for the blocks: mamba-ssm / causal-conv1d on CUDA when installed,
else the pure-torch ops. Resolved once per device type; the adapters call through `kernels_for`.

All three take and return the layouts of the pure-torch ops (dt / delta already softplus'ed),
so the fallback and the kernels are interchangeable inside one forward. SHEDDER_KERNELS=torch
forces the fallback (to compare both paths on one GPU)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F

from .ops import selective_scan, ssd_scan

log = logging.getLogger("shedder_ov")


def _torch_ssd(x, dt, A, B, C, chunk_size, D):
    y, _ = ssd_scan(x, dt, A, B, C, chunk_size)
    return y + x.float() * D.float()[:, None]


def _torch_selective_scan(u, delta, A, B, C, D):
    y, _ = selective_scan(u, delta, A, B, C, D)
    return y


def _torch_conv(x, weight, bias):
    """Depthwise causal conv + SiLU; weight [d, 1, k] as nn.Conv1d holds it."""
    return F.silu(F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]])


def _torch_rms_norm(norm, x):
    return norm(x)


def _torch_gated_norm(norm, y, z):
    return norm(y, z)


@dataclass(frozen=True)
class Kernels:
    """ssd: x [b,l,h,p], dt [b,l,h], A [h], B/C [b,l,g,n], chunk, D [h] → y [b,l,h,p] (with D skip).
    selective_scan: u/delta [b,d,l], A [d,n], B/C [b,l,n], D [d] → y [b,d,l].
    conv: x [b,d,l], weight [d,1,k], bias [d] → silu(causal conv) [b,d,l].
    rms_norm: (an RMSNorm module, x) → its output; gated_norm: (a gated RMSNorm module, y, z) →
    rmsnorm(y · silu(z)), as transformers' MambaRMSNormGated computes it."""

    ssd: Callable
    selective_scan: Callable
    conv: Callable
    rms_norm: Callable
    gated_norm: Callable
    names: tuple[str, ...] = ("torch",) * 5


TORCH = Kernels(_torch_ssd, _torch_selective_scan, _torch_conv, _torch_rms_norm, _torch_gated_norm)


def _import_past_package_init(module: str):
    """mamba_ssm/__init__ imports the CUDA selective-scan extension even for its Triton ops;
    without that extension, import the Triton modules with an empty package in its place."""
    try:
        return importlib.import_module(module)
    except ImportError:
        root = module.split(".")[0]
        spec = importlib.util.find_spec(root)
        if spec is None or not spec.submodule_search_locations:
            raise
        stub = types.ModuleType(root)
        stub.__path__, stub.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules[root] = stub
        return importlib.import_module(module)


def _mamba_ssm_ssd():
    combined = _import_past_package_init("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined

    def ssd(x, dt, A, B, C, chunk_size, D):
        return combined(x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size, D=D.float())

    return ssd


def _mamba_ssm_selective_scan():
    scan = _import_past_package_init("mamba_ssm.ops.selective_scan_interface").selective_scan_fn

    def selective(u, delta, A, B, C, D):
        return scan(u, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float())

    return selective


def _causal_conv1d():
    conv = importlib.import_module("causal_conv1d").causal_conv1d_fn
    importlib.import_module("causal_conv1d_cuda")

    def fused(x, weight, bias):
        return conv(x.contiguous(), weight.squeeze(1), bias, activation="silu")

    return fused


def _mamba_ssm_rms_norm():
    fused = _import_past_package_init("mamba_ssm.ops.triton.layer_norm").rms_norm_fn

    def rms_norm(norm, x):
        return fused(x, norm.weight, None, eps=norm.variance_epsilon)

    return rms_norm


def _mamba_ssm_gated_norm():
    fused = _import_past_package_init("mamba_ssm.ops.triton.layernorm_gated").rmsnorm_fn

    def gated_norm(norm, y, z):
        group_size = getattr(norm, "group_size", None)  # Zamba2's norm is grouped; transformers' Mamba-2 one is not
        return fused(y, norm.weight, None, z=z, eps=norm.variance_epsilon, group_size=group_size, norm_before_gate=False)

    return gated_norm


@functools.cache
def kernels_for(device_type: str) -> Kernels:
    """The best kernels for a device type; says once which fall back to pure torch and why."""
    if device_type != "cuda" or os.environ.get("SHEDDER_KERNELS") == "torch":
        return TORCH
    chosen, names, missing = [], [], []
    for label, loader, fallback in (
        ("ssd", _mamba_ssm_ssd, TORCH.ssd),
        ("selective_scan", _mamba_ssm_selective_scan, TORCH.selective_scan),
        ("causal_conv1d", _causal_conv1d, TORCH.conv),
        ("rms_norm", _mamba_ssm_rms_norm, TORCH.rms_norm),
        ("gated_norm", _mamba_ssm_gated_norm, TORCH.gated_norm),
    ):
        try:
            chosen.append(loader())
            names.append("cuda")
        except Exception as error:  # a missing or broken extension is a fallback, not a failure
            chosen.append(fallback)
            names.append("torch")
            missing.append(f"{label} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    if missing:
        log.warning("GPU kernels unavailable, using pure-torch ops for: %s; install the [gpu] extra (docs/gpu.md)", "; ".join(missing))
    return Kernels(*chosen, names=tuple(names))
