"""Build the causal-conv1d and mamba-ssm CUDA extensions for one GPU architecture, fast.

Their setup.py files compile every .cu file for up to nine architectures (>18 min on the
device's 16 cores). The search only runs forward passes on one GPU, so this patches the
unpacked sdists to (1) emit code for `--arch` only and (2) build the forward kernels only: the
backward instantiations are replaced by one stub file that raises if called. Both builds run
in parallel; the wheels and build logs land in `--out`.

    python3 scripts/device_build_kernels.py --src .device/src --out /tmp/kext --arch 90
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class BackwardStub:
    """Where a package's backward kernels live and which instantiations its bindings link to."""

    sources: str  # regex of the backward .cu entries in setup.py
    anchor: str  # the setup.py source entry the stub is listed after
    stub: str
    headers: tuple[str, ...]
    params: str
    functions: tuple[str, ...]
    types: tuple[tuple[str, str], ...]

    def source(self) -> str:
        lines = ["// Forward-only build (scripts/device_build_kernels.py): no backward kernels compiled.",
                 "#include <ATen/ATen.h>", *(f'#include "{header}"' for header in self.headers)]
        for function in self.functions:
            lines += ["template <typename input_t, typename weight_t>",
                      f"void {function}({self.params} &params, cudaStream_t stream) {{",
                      f'    TORCH_CHECK(false, "{function}: backward is not built (forward-only build)");',
                      "}"]
            lines += [f"template void {function}<{i}, {w}>({self.params} &params, cudaStream_t stream);" for i, w in self.types]
        return "\n".join(lines) + "\n"


FLOATS = ("float", "at::Half", "at::BFloat16")
STUBS = {
    "mamba_ssm": BackwardStub(
        r'\s*"csrc/selective_scan/selective_scan_bwd_\w+\.cu",', '"csrc/selective_scan/selective_scan.cpp",',
        "csrc/selective_scan/selective_scan_bwd_stub.cu", ("selective_scan.h", "selective_scan_common.h"), "SSMParamsBwd",
        ("selective_scan_bwd_cuda",), tuple((i, w) for i in FLOATS for w in ("float", "complex_t"))),
    "causal_conv1d": BackwardStub(
        r'\s*"csrc/causal_conv1d_bwd\.cu",', '"csrc/causal_conv1d.cpp",', "csrc/causal_conv1d_bwd_stub.cu",
        ("causal_conv1d.h",), "ConvParamsBwd", ("causal_conv1d_bwd_cuda", "causal_conv1d_channellast_bwd_cuda"),
        tuple((i, w) for i in FLOATS for w in FLOATS)),
}


def only_arch(setup: str, arch: str) -> str:
    """Drop every `-gencode arch=compute_X,code=sm_X` pair but the one for `arch`."""
    pair = re.compile(r'cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)')
    return pair.sub(lambda m: m.group(0) if m.group(1) == arch else "pass", setup)


def forward_only(root: Path, stub: BackwardStub) -> None:
    """Replace the backward sources in setup.py by one stub that raises if called."""
    setup = root / "setup.py"
    text = re.sub(stub.sources, "", setup.read_text())
    setup.write_text(text.replace(stub.anchor, f'{stub.anchor}\n                "{stub.stub}",'))
    (root / stub.stub).write_text(stub.source())


def prepare(sdist: Path, work: Path, arch: str) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    root = work / sdist.name.removesuffix(".tar.gz")
    setup = root / "setup.py"
    setup.write_text(only_arch(setup.read_text(), arch))
    forward_only(root, STUBS[root.name.split("-")[0]])
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path, required=True, help="folder with the sdists to build (one or both)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="90")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kbuild"))
    parser.add_argument("--have", type=Path, help="folder of wheels built earlier: skip those packages")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sdists = {package: next(args.src.glob(f"{package}-*.tar.gz"), None) for package in STUBS}  # a missing sdist: not built
    todo = [p for p, sdist in sdists.items() if sdist and not (args.have and any(args.have.glob(f"{p}-*.whl")))]
    env = dict(os.environ, MAMBA_FORCE_BUILD="TRUE", CAUSAL_CONV1D_FORCE_BUILD="TRUE",
               MAX_JOBS=str(max(1, (os.cpu_count() or 16) // max(1, len(todo)))), TORCH_CUDA_ARCH_LIST=f"{args.arch[0]}.{args.arch[1:]}")
    builds = {}
    for package in todo:
        root = prepare(sdists[package], args.work, args.arch)
        log = open(args.out / f"build-{root.name}.log", "w")
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(args.out), str(root)]
        builds[root.name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.time())
    failed = False
    for name, (process, log, started) in builds.items():
        code = process.wait()
        log.close()
        print(f"{name}: exit {code} after {time.time() - started:.0f} s", flush=True)
        failed |= code != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
