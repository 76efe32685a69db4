#!/usr/bin/env bash
# The one prepared GPU check (scripts/gpu_check.py): on an SD1.5-sized pipeline (random weights, built once,
# saved in float16), every method in bfloat16 and float16 for a few iterations, 8 images at 512 px, and one
# igmu evaluate on the GPU; prints one table. Meant to finish in under 8 minutes on one GPU.
#   bash scripts/gpu_check.sh                  # after `make install` on a machine with a CUDA GPU
#   DEVICE=cuda:1 WORK=/scratch/gc bash scripts/gpu_check.sh
#   python scripts/gpu_check.py --toy --device cpu   # the CPU fallback at toy size (no GPU needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py --device "${DEVICE:-cuda}" --work "${WORK:-out/gpu_check}" "$@"
