#!/usr/bin/env bash
# On a GPU machine: build pyopt with its CUDA extension, run the GPU tests and the quick benchmarks, print
# a short table. Designed to finish within 8 minutes (each step has its own time limit).
#
#   bench/gpu_check.sh            (uses $PY, default: .venv/bin/python if present, else python3)
#
# GPU tests are the test ids containing "cuda" (tests parametrised over devices get a cuda-* id when a GPU
# is present; tests that need one are marked with conftest.requires_cuda). TRITON_INTERPRET=0 so the Triton
# kernels are compiled for the GPU instead of interpreted.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export TRITON_INTERPRET=0
start=$(date +%s)
results=()
elapsed() { echo $(( $(date +%s) - start )); }
record() { results+=("| $1 | $2 | $(elapsed) s |"); }

echo "== environment"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"

echo "== build (CUDA extension for this GPU's architecture only, to keep it short)"
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "8.0;9.0")
if TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-16} timeout 300 \
    $PY -m pip install -q --no-build-isolation --no-deps -e .; then
  record build ok
else
  record build FAILED
fi
$PY -m pyopt info

echo "== GPU tests"
log=$(mktemp)
timeout 150 $PY -m pytest tests -q -k cuda -p no:cacheprovider 2>&1 | tee "$log" | tail -15
record "GPU tests" "$(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$log" | tail -1 | tr -d '=' | xargs)"

echo "== quick benchmarks (CPU and GPU rows)"
out=$(mktemp -d)/gpu-check
if timeout 120 $PY -m pyopt bench --quick --out "$out"; then
  met=$(grep -c '| yes |' "$out.md" || true)
  missed=$(grep -c '| NO |' "$out.md" || true)
  record benchmarks "targets met: $met, missed: $missed ($out.md)"
else
  record benchmarks "FAILED or timed out"
fi

echo
echo "| step | result | at |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}"
