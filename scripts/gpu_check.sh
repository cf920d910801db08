#!/usr/bin/env bash
# GPU check (Colab or any CUDA machine with torch + triton): the Triton kernels against their
# references, a short GPT training run with Triton kernels vs the reference path, and the kernel
# benchmark. Usage: scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-_build/gpu_check}"; mkdir -p "$out"
export PYTHONPATH="$PWD/lib:${PYTHONPATH:-}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo ">> kernels vs references on CUDA"
LLMCOURSE_KERNEL_TEST_DEVICE=cuda timeout "${KERNEL_TEST_TIMEOUT:-240}" python3 -m pytest tests/kernels/triton_cases.py -q -p no:cacheprovider -x 2>&1 | tail -25
echo ">> GPT training: Triton kernels vs reference"
timeout 120 python3 scripts/gpu_train_compare.py 2>&1 | tail -15
echo ">> kernel benchmark"
timeout "${BENCH_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --quick --out "$out" 2>&1 | tail -40
