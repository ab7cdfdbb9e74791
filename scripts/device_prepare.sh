#!/usr/bin/env bash
# Fill the ignored folder .device/ with what a device run needs (it has no network):
# wheels of our Python needs for its python3.12, the mamba-ssm / causal-conv1d sdists, the
# real tiny models (compressed: the call carries 64 MiB at most) and pre-tokenized windows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODELS=${MODELS:-../shared/models}
mkdir -p .device/whl .device/src .device/models
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/whl \
  transformers==5.5.4 huggingface_hub==1.21.0 tokenizers==0.22.2 safetensors==0.8.0 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
# metadata of these sdists needs torch+CUDA; skipping the CUDA build lets pip read it here
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
  $PY -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d .device/src mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
if [ ! -f .device/models/tiny.tar.xz ]; then
  tmp=$(mktemp -d)
  for m in mamba2-tiny mamba1-tiny; do mkdir -p "$tmp/$m"; cp "$MODELS/$m"/{config.json,model*.safetensors*} "$tmp/$m/"; done
  tar cf - -C "$tmp" mamba2-tiny mamba1-tiny | xz -6 -T2 > .device/models/tiny.tar.xz
  rm -rf "$tmp"
fi
$PY - <<'PY'
import torch
from shedder_ov.checkpoints import load_tokenizer
from shedder_ov.data import load_windows
from shedder_ov.recipe import CalibrationSpec

tokenizer = load_tokenizer("../shared/models/mamba2-tiny")
spec = CalibrationSpec(path="../shared/data/tinystories/train.txt", num_samples=32, seq_len=512)
torch.save(load_windows(spec, tokenizer, 42), ".device/calib.pt")
PY
du -sh .device/whl .device/src .device/models .device/calib.pt
