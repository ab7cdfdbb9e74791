#!/usr/bin/env bash
# On the device machine (no network): the distributed search on one GPU, then the search at the
# paper's size (scripts/device_scale.py). Carry .device/whl (scripts/device_prepare.sh's wheels)
# and .device/c, filled here by:
#   mkdir -p .device/c/{src,cc-src,models}; pip download --no-deps --no-binary :all: -d .device/c/src \
#     mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0; cp .device/c/src/causal_conv1d-* .device/c/cc-src/
#   head -c 400000 ../shared/data/tinystories/train.txt > .device/c/stories.txt
#   tar cf - -C ../shared/models mamba2-tiny | xz -3 -T2 > .device/c/models/mamba2-tiny.tar.xz
# then run: bash scripts/device_distributed.sh [device_scale.py options]
# 1. mamba2-tiny (real, fp32) pruned by 1 rank and by 2 ranks sharing the GPU (gloo: NCCL refuses
#    two ranks on one GPU): removal order, logged PPLs, wall time; 2. device_scale.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep 'Model name'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
started=$(date +%s)
# Mamba-2 needs causal-conv1d's CUDA extension (built here for sm_90, forward only) and mamba-ssm's
# Triton ops (no build); a wheel from an earlier run in .device/c/kext skips the build.
mkdir -p "$OUT/kext" .device/c/kext
ls .device/c/kext/causal_conv1d-*.whl >/dev/null 2>&1 || timeout 300 python3 scripts/device_build_kernels.py \
  --src .device/c/cc-src --out "$OUT/kext" --arch 90 || echo "kernel build failed (log in $OUT/kext)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls "$OUT"/kext/*.whl .device/c/kext/*.whl 2>/dev/null)
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip install -q --no-index --no-deps --no-build-isolation \
  --no-cache-dir --target /tmp/site .device/c/src/mamba_ssm-*.tar.gz || echo "mamba-ssm install failed: torch fallback"
echo "kernels ready in $(( $(date +%s) - started )) s"
mkdir -p /tmp/models /tmp/runs && tar xJf .device/c/models/mamba2-tiny.tar.xz -C /tmp/models
for ranks in $([ "${SKIP_TINY:-0}" = 1 ] || echo 1 2); do
  cat > /tmp/runs/r$ranks.yaml <<EOF
model: /tmp/models/mamba2-tiny
calibration: {path: .device/c/stories.txt, num_samples: 64, seq_len: 256, batch_size: 4}
search: {targets: [mamba_block], stop: {num_components: 3}}
device: cuda
output: /tmp/runs/r$ranks
EOF
  t0=$(date +%s%N)
  python3 -m torch.distributed.run --standalone --nproc-per-node $ranks tests/test_distributed.py /tmp/runs/r$ranks.yaml 2>&1 \
    | grep -v "Loading weights\|Writing model" | grep -v "^[│┃┏┡└]" | tail -8
  echo "ranks=$ranks wall $(( ($(date +%s%N) - t0) / 1000000 )) ms"
done
[ "${SKIP_TINY:-0}" = 1 ] || python3 - <<'PY'
import json, sys, types
sys.modules["shedder_ov.export"] = types.ModuleType("shedder_ov.export")  # no OpenVINO here
from shedder_ov.search.log import SearchLog
r = {n: json.load(open(f"/tmp/runs/r{n}/search/result.json")) for n in (1, 2)}
logs = {n: SearchLog(f"/tmp/runs/r{n}/search/log.jsonl").evaluations() for n in (1, 2)}
order = [[row["candidate"] for row in r[n]["removed"]] for n in (1, 2)]
rel = max(abs(logs[2][k] / logs[1][k] - 1) for k in logs[1])
print(json.dumps({"same_order": order[0] == order[1], "order": order, "same_keys": logs[1].keys() == logs[2].keys(),
                  "evaluations": len(logs[1]), "max_rel_ppl_diff": rel,
                  "search_s": [r[n]["search"]["seconds"] for n in (1, 2)], "memory": [r[n]["search"]["memory"] for n in (1, 2)]}))
PY
cp /tmp/runs/r2/search/log.jsonl "$OUT/log-2ranks.jsonl" 2>/dev/null
python3 scripts/device_scale.py --out "$OUT" "$@"
