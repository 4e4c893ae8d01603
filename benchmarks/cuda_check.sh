#!/usr/bin/env bash
# One go on a GPU machine (~8 min): the CUDA tests, then the layer and training-step tables on CUDA.
# Without a GPU the tests skip (saying why) and the tables run as the quick CPU subset, so the script is checked.
#   bash benchmarks/cuda_check.sh            # uses .venv/bin/python (make .venv/.njet-installed first)
#   PY=python bash benchmarks/cuda_check.sh
set -u
PY=${PY:-.venv/bin/python}
cd "$(dirname "$0")/.."
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    layer_args=(--device cuda --rounds 5 --batches 32 --sizes 32 112 --channels-large 64 --max-gmacs 200 --nets)
    step_args=(--device cuda --rounds 5 --no-layers --mobilenet-size 224 --mobilenet-batch 32 --step-batch 128)
else
    echo "torch.cuda.is_available() is False: CUDA tests skip; tables run as the quick CPU subset"
    layer_args=(--quick --nets)
    step_args=(--quick --no-layers)
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', \
torch.cuda.device_count())"
echo "== CUDA tests"
timeout 240 "$PY" -m pytest -m cuda -q -rs tests/test_cuda.py || status=1
echo "== layer table"
timeout 240 "$PY" benchmarks/layer_speed.py "${layer_args[@]}" || status=1
echo "== combine: BLAS product against 1x1 convolution"
timeout 60 "$PY" benchmarks/combine_throughput.py --rounds 5 || status=1
echo "== training steps"
timeout 150 "$PY" benchmarks/layer_speed.py "${step_args[@]}" || status=1
exit $status
