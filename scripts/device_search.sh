#!/usr/bin/env bash
# On the device machine (no network): install the carried wheels and mamba-ssm's Triton ops,
# then run the GPU search benchmark. Prepare with scripts/device_prepare.sh; the run call
# carries .device/whl .device/src .device/models .device/calib.pt and runs this script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
python3 -V
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
started=$(date +%s)
# The CUDA extensions (causal_conv1d, Mamba-1 selective scan): wheels carried in .device/kext
# from an earlier run; with BUILD_KERNELS=1 the missing ones are built here for sm_90, forward
# only (~2-3 min each, in parallel). Without a mamba-ssm wheel, only its Triton ops (Mamba-2
# SSD, norms) are installed, which need no build (~12 s).
mkdir -p .device/kext
if [ "${BUILD_KERNELS:-0}" = 1 ]; then
  mkdir -p "$OUT/kext"
  timeout 480 python3 scripts/device_build_kernels.py --src .device/src --out "$OUT/kext" --have .device/kext --arch 90 \
    || echo "kernel build failed (logs in $OUT/kext)"
  cp "$OUT"/kext/*.whl .device/kext/ 2>/dev/null
fi
ls .device/kext/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/kext/*.whl
if ! ls .device/kext/mamba_ssm-*.whl >/dev/null 2>&1; then
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-cache-dir --target /tmp/site .device/src/mamba_ssm-*.tar.gz || echo "mamba-ssm install failed: torch fallback"
fi
echo "kernels installed in $(( $(date +%s) - started )) s"
mkdir -p /tmp/models && tar xJf .device/models/tiny.tar.xz -C /tmp/models
python3 scripts/device_bench.py --models /tmp/models --windows .device/calib.pt --out "$OUT" "$@"
