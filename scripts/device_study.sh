#!/usr/bin/env bash
# On the device machine (no network): the granularity study's searches (scripts/granularity_study.py
# device). Prepare here with `python scripts/granularity_study.py prepare` and the wheels of
# scripts/device_prepare.sh (transformers 5.5.4 etc. in .device/whl); the run call carries
# .device/whl .device/models/study.tar.xz .device/study_data.pt and runs
#   bash scripts/device_study.sh --jobs NAME,... --budget SECONDS
# and returns $OUT/study.tgz (one JSON per job, see JOBS in the script, and the log).
# Pure-torch ops only (no mamba-ssm kernels): the tiny models are launch-bound either way.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD SHEDDER_KERNELS=torch
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep 'Model name'
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
  touch /tmp/site/.done
fi
[ -d /tmp/models/mamba2-tiny ] || { mkdir -p /tmp/models && tar xJf .device/models/study.tar.xz -C /tmp/models; }
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
mkdir -p "$OUT/study"
python3 scripts/granularity_study.py device --models /tmp/models --data .device/study_data.pt --out "$OUT/study" "$@" 2>&1 | tee "$OUT/study/device.log"
# one file back (a call returns at most 8): here `tar xzf FILES_AT/study.tgz -C runs/` gives runs/study/
tar czf "$OUT/study.tgz" -C "$OUT" study && rm -rf "$OUT/study"
