# pyopt — the two set-up commands are `make demo` and `make test`; both start from a bare machine.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
VPIP      := $(VPY) -m pip
NVCC      ?= nvcc
# the defines torch's CUDAExtension passes to nvcc (torch/utils/cpp_extension.py COMMON_NVCC_FLAGS), so that
# check-cuda here fails where the real extension build on a GPU box would
TORCH_NVCC_DEFS := -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr
NVCCFLAGS := -O3 -std=c++17 $(TORCH_NVCC_DEFS) -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -I csrc
CU_SRCS   := $(wildcard csrc/cuda/*.cu)
CU_OBJS   := $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(CU_SRCS))
NATIVE_SRCS := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.cuh)

.PHONY: all venv build demo test pytest bench bench-quick bench-pytest check-cuda check-cuda-bind lint format info clean

all: test

# A venv with torch (the CPU wheel here; a torch already importable by $(PY), e.g. on a GPU box, is kept
# by creating the venv with --system-site-packages), plus the test/demo dependencies.
$(VENV)/.deps: requirements-dev.txt
	@if [ ! -x $(VPY) ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; fi
	@$(VPY) -c "import torch" 2>/dev/null || $(VPIP) install -q torch==2.13.0
	$(VPIP) install -q -r requirements-dev.txt
	@touch $@
venv: $(VENV)/.deps

# The extension is rebuilt when a native source changes (editable install: Python edits need nothing).
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SRCS)
	$(VPIP) install -q --no-build-isolation --no-deps -e .
	@touch $@
build: $(VENV)/.built

# The demo writes pyopt-demo-out/; its table and picture are also copied to docs/demo/ (shown in the README).
demo: build
	$(VPY) -m pyopt demo --out pyopt-demo-out
	@mkdir -p docs/demo && cp pyopt-demo-out/results.md pyopt-demo-out/results.json pyopt-demo-out/tradeoffs.png docs/demo/

test: lint check-cuda pytest

pytest: build
	$(VPY) -m pytest tests

bench: build
	$(VPY) -m pyopt bench

bench-quick: build
	$(VPY) -m pyopt bench --quick

# The same cases under pytest-benchmark (groups of pyopt + baselines; add --benchmark-json / --benchmark-compare)
bench-pytest: build
	$(VPY) -m pytest bench --benchmark-only $(BENCH_ARGS)

# Every .cu includes only CUDA headers, so it compiles to an object here even though torch has no CUDA. The
# binding files (.cpp, which include torch) are compiled for syntax and types against this torch's headers
# and the CUDA toolkit's (a CPU wheel lacks only torch's generated c10/cuda/impl/cuda_cmake_macros.h: a stub).
CU_BINDS  := $(wildcard csrc/cuda/*.cpp)
check-cuda: $(CU_OBJS) check-cuda-bind
	@if command -v $(NVCC) >/dev/null; then echo "check-cuda: $(words $(CU_SRCS)) .cu file(s) compile for sm_80 and sm_90"; \
	else echo "check-cuda: skipped (no nvcc on this machine)"; fi

check-cuda-bind: $(VENV)/.deps
	@if command -v $(NVCC) >/dev/null; then \
	  cuda_inc=; for d in "$$CUDA_HOME" /usr/local/cuda /opt/cuda; do \
	    if [ -n "$$d" ] && [ -f "$$d/include/cuda_runtime.h" ]; then cuda_inc=$$d/include; break; fi; done; \
	  if [ -z "$$cuda_inc" ]; then echo "check-cuda-bind: skipped (no cuda_runtime.h found)"; exit 0; fi; \
	  torch_inc=$$($(VPY) -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))"); \
	  py_inc=$$($(VPY) -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
	  mkdir -p build/cuda-stub/c10/cuda/impl; \
	  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/cuda-stub/c10/cuda/impl/cuda_cmake_macros.h; \
	  for f in $(CU_BINDS); do \
	    $(CXX) -std=c++17 -fsyntax-only -w -Ibuild/cuda-stub $$torch_inc -I$$cuda_inc -I$$py_inc -I csrc \
	      -DTORCH_EXTENSION_NAME=_C_cuda $$f || exit 1; done; \
	  echo "check-cuda: $(words $(CU_BINDS)) CUDA binding file(s) compile against torch's headers"; \
	else echo "check-cuda-bind: skipped (no nvcc on this machine)"; fi

build/cuda-check/%.o: csrc/cuda/%.cu $(wildcard csrc/cuda/*.cuh)
	@mkdir -p $(@D)
	@if command -v $(NVCC) >/dev/null; then echo "nvcc $<"; $(NVCC) $(NVCCFLAGS) -c $< -o $@; else touch $@; fi

lint: $(VENV)/.deps
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: $(VENV)/.deps
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

info: build
	$(VPY) -m pyopt info

clean:
	rm -rf build *.egg-info pyopt/*.so $(VENV)/.built
