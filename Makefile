# Two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel first, so that the package's `torch>=2.3` range is already satisfied
# (a bare range would otherwise pull a multi-GB CUDA build). Override elsewhere, e.g.
#   make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.noisylm-installed
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m noisylm.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Every benchmark; each compares against its reference in the same run and prints a table.
# bench_train needs a local nanoGPT clone: make bench NANOGPT_DIR=/path/to/nanoGPT
# bench_gpu needs one CUDA GPU and the same clone; it runs only when asked:
#   make bench BENCH_GPU=1 NANOGPT_DIR=/path/to/nanoGPT   (table and JSON in $(BENCH_GPU_OUT))
NANOGPT_DIR ?= ../nanoGPT
BENCH_GPU ?=
BENCH_GPU_OUT ?= bench_gpu_out
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py --nanogpt-dir $(NANOGPT_DIR)
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_lgm.py
	$(BIN)/python benchmarks/bench_features.py
	$(if $(BENCH_GPU),$(BIN)/python benchmarks/bench_gpu.py --nanogpt-dir $(NANOGPT_DIR) --out $(BENCH_GPU_OUT))

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
