#!/usr/bin/env bash
# Create .venv with the tested package set (CPU torch 2.13.0 from the local wheel cache).
# optimum-intel goes in with --no-deps: it hard-requires torchvision, which it only imports
# for vision-language models and which would pull a multi-GB CUDA torch here; its real needs
# are pinned in requirements.txt. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps optimum-intel==2.2.0
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
