#!/usr/bin/env bash
# The paper-scale GPU check, in one command (under 8 minutes on one H100-class GPU):
#   1. CUDA is visible to torch (else it prints "no CUDA" and exits 0),
#   2. every HVP mode agrees with finite differences on the GPU (float64), bf16 HVP error against fp32,
#   3. pretraining images/s, SimCLR, ResNet-18 and ResNet-50, 96 px, batch 256, synthetic images, with and
#      without bf16 autocast (+ channels_last) and GPU augmentation,
#   4. seconds per BiSSL upper phase (8 steps x 5 CG iterations) for each HVP mode, and for one phase of
#      DINO on ViT-S/16 at 224 px (batch 32; paper-dino-vits16-imagenet).
# Usage, from anywhere:  bash benchmarks/gpu_check.sh [--json results.json]
# Environment: PYTHON (default .venv/bin/python, else python3); WHEELS, a folder of wheels installed offline
# for packages that are missing (kornia, for instance); GPU_CHECK_TIMEOUT (seconds, default 450).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

missing_modules() {
  "$PYTHON" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "torchvision", "kornia", "yaml", "numpy") if importlib.util.find_spec(m) is None))
PY
}
missing=$(missing_modules)
if [ -n "$missing" ]; then
  if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    packages=$(echo "$missing" | sed 's/\byaml\b/pyyaml/')
    echo "gpu_check: installing $packages from $WHEELS"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" $packages
  else
    echo "gpu_check: Python packages missing for $PYTHON: $missing; install them or set WHEELS=<folder of wheels>"
    exit 1
  fi
fi

cuda=$("$PYTHON" -c "import torch; print(torch.__version__, int(torch.cuda.is_available()))" 2>/dev/null || echo "? 0")
if [ "${cuda##* }" != 1 ]; then
  echo "gpu_check: no CUDA device visible to torch ${cuda% *}; nothing to measure here (run it on a GPU machine)"
  exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-450}" "$PYTHON" benchmarks/gpu_check.py "$@"
