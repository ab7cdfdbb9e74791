"""What the CPU is, as benchmarks record it and as runtime defaults are chosen by."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")

AMX_PROBE = r"""
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 2;
    unsigned char config[64] = {1};          /* palette 1 */
    config[16] = 64; config[48] = 16;        /* tile 0: 16 rows of 64 bytes */
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
    return 0;
}
"""


@functools.cache
def cpu_facts() -> dict:
    """lscpu's model name, vendor family/model, the SIMD flags that pick kernels, and `amx`:
    "absent", "works", "faults" (advertised, but its tiles fault: some VMs) or "unprobed"."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    lscpu = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    info = {key: lscpu.get(name, "").strip() for key, name in (("model_name", "Model name"), ("vendor", "Vendor ID"),
                                                              ("family", "CPU family"), ("model", "Model"))}
    info["flags"] = cpu_flags()
    info["amx"] = probe_amx() if "amx_tile" in info["flags"] else "absent"
    info["kind"] = cpu_kind(info["flags"], *cpu_identity())
    return info


def probe_amx() -> str:
    """Compile and run a program that loads an AMX tile configuration: "works", "faults", or
    "unprobed" where no compiler builds it."""
    with tempfile.TemporaryDirectory() as work:
        source, binary = Path(work) / "probe.c", Path(work) / "probe"
        source.write_text(AMX_PROBE)
        try:
            built = subprocess.run(["gcc", "-O1", "-mamx-tile", str(source), "-o", str(binary)], capture_output=True)
        except FileNotFoundError:
            return "unprobed"
        if built.returncode:
            return "unprobed"
        return "works" if subprocess.run([str(binary)], capture_output=True).returncode == 0 else "faults"


@dataclass(frozen=True)
class RuntimeDefaults:
    """OpenVINO CPU settings that eval, bench, the genai path and export/generate_ov.py start from."""

    precision: str  # INFERENCE_PRECISION_HINT (also the stored state precision), or "prompt/decode" hints
    threads: int | None  # INFERENCE_NUM_THREADS; None: every core this process may run on
    streams: int  # NUM_STREAMS; 1: batch-1 latency (more streams split the cores)
    dq_group_size: int | None  # DYNAMIC_QUANTIZATION_GROUP_SIZE; None: the plugin's own
    measured: str  # what the choice rests on (docs/speed.md)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def dq_properties(self) -> dict:
        """The dynamic-quantization property, where this row sets one."""
        return {} if self.dq_group_size is None else {"DYNAMIC_QUANTIZATION_GROUP_SIZE": self.dq_group_size}

    def properties(self) -> dict:
        """The CPU plugin properties these defaults set on one compile (with prompt/decode hints: the prompt's)."""
        from .runtime import compile_precisions

        return {"INFERENCE_PRECISION_HINT": compile_precisions(self.precision)[0], "INFERENCE_NUM_THREADS": self.resolved_threads(),
                "NUM_STREAMS": self.streams, **self.dq_properties()}


# CPU kind → defaults, each from scripts/bench_vs_llamacpp.py / scripts/bench_defaults.py on that
# kind (random 790m Mamba-1 / 780m Mamba-2 int8 and int4 IRs, 2 vCPU; docs/speed.md "Defaults").
DEFAULTS = {
    "amx": RuntimeDefaults("f32", None, 1, None, "Xeon 5th gen: f32 decodes int8 1.36-1.41x and int4 1.04-1.34x "
                           "faster than bf16 (integer FullyConnected); bf16 prefills 1.2-1.7x faster but stores the "
                           "state in bf16"),
    "zen5": RuntimeDefaults("f32", None, 1, None, "Zen 5 (full-width AVX-512): decode within noise across hints "
                            "(random 780m Mamba-2, 2 rounds: int8 24.0 f32 / 25.2 bf16 / 24.5 f32-prompt+bf16-decode "
                            "tok/s, int4 26.5 / 24.1 / 26.9); bf16 prefills 1.3-1.4x faster but its chunked scan "
                            "moves a 1024-token prompt's logits by up to 3.6, so f32 keeps parity"),
    "avx512_bf16": RuntimeDefaults("f32", None, 1, None, "Zen 4: f32 decodes int8 1.6x and int4 1.04x faster than "
                                   "bf16; bf16 prefill +7% at +0.1-1.3% PPL through the state"),
    "avx2": RuntimeDefaults("f32", None, 1, None, "Zen 3 (no AVX-512, no bf16): f32 is the only native precision; "
                            "DQ group sizes 0-256 move a FullyConnected by less than the noise"),
}


def cpu_kind(flags: list[str], vendor: str = "", family: int = 0) -> str:
    """The DEFAULTS row of a CPU by the instructions OpenVINO's CPU kernels pick from, and for AMD
    by the core generation where the same instructions run at another width (Zen 4 splits 512-bit
    operations in two, Zen 5 — family 26 — does not)."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "zen5" if vendor == "AuthenticAMD" and family >= 26 else "avx512_bf16"
    return "avx2"


def runtime_defaults() -> RuntimeDefaults:
    """The defaults for the CPU this process runs on (no AMX probe: flags and identity only)."""
    return DEFAULTS[cpu_kind(cpu_flags(), *cpu_identity())]


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_identity() -> tuple[str, int]:
    """vendor_id and cpu family ("", 0 where unknown)."""
    family = cpuinfo().get("cpu family", "0")
    return cpuinfo().get("vendor_id", ""), int(family) if family.isdigit() else 0


def cpu_flags() -> list[str]:
    """The SIMD_FLAGS /proc/cpuinfo lists for this CPU (empty where it cannot be read)."""
    flags = set(cpuinfo().get("flags", "").split())
    return [flag for flag in SIMD_FLAGS if flag in flags]
