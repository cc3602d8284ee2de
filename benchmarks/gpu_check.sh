#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent: one command, a few minutes, a short summary.
#   bash benchmarks/gpu_check.sh
# 1. the CUDA-marked tests (they skip without a GPU: on a CPU machine this says so);
# 2. the torch and torch_func engines' create_graph Laplacian of the PINN case
#    (cases/pde/helmholtz-pinn.toml) on CUDA beside CPU, float32 and float64;
# 3. derivcheck run on the PINN and digits cases with --device cuda.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no device')"
status=0
echo "== CUDA-marked tests =="
python -m pytest -m cuda -q -p no:cacheprovider -rs 2>&1 | tail -8 || status=1
echo "== create_graph Laplacian, CUDA vs CPU =="
python benchmarks/gpu_timing.py || status=1
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== derivcheck run --device cuda =="
  derivcheck run cases/pde/helmholtz-pinn.toml cases/digits-mlp.toml --device cuda --quiet || status=1
fi
echo "== gpu_check: $([ $status -eq 0 ] && echo OK || echo FAILED) =="
exit $status
