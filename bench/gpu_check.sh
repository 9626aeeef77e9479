#!/usr/bin/env bash
# On a GPU machine: build pyopt with its CUDA extension, run the GPU tests and the GPU benchmarks, print
# a short table. Designed to finish within 8 minutes (each step has its own time limit).
#
#   bench/gpu_check.sh [LOGDIR]    (LOGDIR default: $OUT if set, else a temp dir; python: $PY, default
#                                   .venv/bin/python if present, else python3)
#
# GPU tests: the test ids containing "cuda" (tests parametrised over devices get a cuda-* id when a GPU is
# present), plus the tie tests (whose skip reasons, shown by -rs, say how this torch rounds ties).
# TRITON_INTERPRET=0 so the Triton kernels are compiled for the GPU instead of interpreted.
# Benchmarks: `pyopt bench --gpu` (each family's run_gpu: every GPU backend in its own row, each case
# checked once against a reference, "[check] ... MISMATCH" lines flag a wrong result), then
# bench/tune_int8_gpu.py: the Triton int8 GEMM's candidate launch configurations, timed against bf16.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LOG=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$LOG"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
start=$(date +%s)
results=()
elapsed() { echo $(( $(date +%s) - start )); }
record() { results+=("| $1 | $2 | $(elapsed) s |"); }

echo "== environment"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton',
      triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null

echo "== build (CUDA extension for this GPU's architecture only, to keep it short)"
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "8.0;9.0")
if TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-16} timeout 200 \
    $PY -m pip install --no-build-isolation --no-deps -e . >"$LOG/build.log" 2>&1; then
  record build "ok (arch $arch)"
else
  record build "FAILED (see build.log)"
  grep -E -m 20 'error|Error' "$LOG/build.log"
fi
$PY -m pyopt info 2>&1 | tee "$LOG/info.log"

echo "== GPU benchmarks"
stem=$(mktemp -d)/gpu
if timeout 120 $PY -m pyopt bench --gpu --out "$stem" 2>&1 | tee "$LOG/bench.log"; then
  cp "$stem.md" "$stem.json" "$LOG/" 2>/dev/null
  met=$(grep -c '| yes |' "$stem.md" || true)
  missed=$(grep -c '| NO |' "$stem.md" || true)
  record benchmarks "targets met: $met, missed: $missed"
else
  record benchmarks "FAILED or timed out (see bench.log)"
fi
bad=$(grep -c 'MISMATCH' "$LOG/bench.log" || true)
record "bench result checks" "$bad mismatches"

echo "== GPU tests"
tmo=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout 60")
timeout 130 $PY -m pytest tests -k "cuda or ties" -p no:cacheprovider -rfEs --tb=short $tmo >"$LOG/tests.log" 2>&1
tail -25 "$LOG/tests.log"
record "GPU tests" "$(grep -E '(passed|failed|error)' "$LOG/tests.log" | tail -1 | tr -d '=' | xargs)"

echo "== Triton int8 GEMM configurations (last: a timeout here loses nothing above; rows print as measured)"
timeout 120 $PY bench/tune_int8_gpu.py 2>&1 | tee "$LOG/tune.log" | tail -45
record "int8 config sweep" "$(grep -c '| ok |' "$LOG/tune.log" || true) ok, $(grep -c 'MISMATCH' "$LOG/tune.log" || true) mismatches (tune.log)"

echo
echo "| step | result | at |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}" | tee "$LOG/summary.md"
