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
    info["kind"] = cpu_kind(info["flags"])
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

    precision: str  # INFERENCE_PRECISION_HINT; also the precision the plugin stores the states in
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
        """The CPU plugin properties these defaults set."""
        return {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.resolved_threads(),
                "NUM_STREAMS": self.streams, **self.dq_properties()}


# CPU kind → defaults, each from scripts/bench_vs_llamacpp.py / scripts/bench_defaults.py on that
# kind (random 790m Mamba-1 / 780m Mamba-2 int8 and int4 IRs, 2 vCPU; docs/speed.md "Defaults").
DEFAULTS = {
    "amx": RuntimeDefaults("f32", None, 1, None, "Xeon 5th gen: f32 decodes int8 1.36-1.41x and int4 1.04-1.34x "
                           "faster than bf16 (integer FullyConnected); bf16 prefills 1.2-1.7x faster but stores the "
                           "state in bf16"),
    "avx512_bf16": RuntimeDefaults("f32", None, 1, None, "Zen 4: f32 decodes int8 1.6x and int4 1.04x faster than "
                                   "bf16; bf16 prefill +7% at +0.1-1.3% PPL through the state"),
    "avx2": RuntimeDefaults("f32", None, 1, None, "Zen 3 (no AVX-512, no bf16): f32 is the only native precision; "
                            "DQ group sizes 0-256 move a FullyConnected by less than the noise"),
}


def cpu_kind(flags: list[str]) -> str:
    """The DEFAULTS row of a CPU by the instructions OpenVINO's CPU kernels pick from."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "avx2"


def runtime_defaults() -> RuntimeDefaults:
    """The defaults for the CPU this process runs on (no AMX probe: flags only)."""
    return DEFAULTS[cpu_kind(cpu_flags())]


@functools.cache
def cpu_flags() -> list[str]:
    """The SIMD_FLAGS /proc/cpuinfo lists for this CPU (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [flag for flag in SIMD_FLAGS if flag in flags]
