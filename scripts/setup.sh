#!/usr/bin/env bash
# Create .venv with the pinned CPU stack (torch==2.13.0 CPU wheel, snakemake, dvc, ...)
# and install this package into it (editable). Idempotent: reruns only when
# pyproject.toml changed. Needs only python3 (3.11) and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "environment ready: $(pwd)/.venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
