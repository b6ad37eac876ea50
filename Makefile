# Two commands on a fresh machine: `make demo` and `make test`. Each does all of its own set-up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test lint bench

setup: $(STAMP)

# torch==2.13.0 is the CPU build on this machine's disk: it is installed first, so that the
# project's `torch>=2.3` is already met and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[onnx,dev]'
	$(PY) -m pip install -q 'torchvision==0.28.*'  # test-only: real architectures nobody here wrote
	touch $@

data:
	@if [ -f $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; fi

# Trains lenet5 on Fashion-MNIST with group sparsity, compacts it, and prints the report
# (a few minutes on 2 cores). Each demo gets a fresh run folder, so nothing is overwritten.
demo: setup data
	$(VENV)/bin/compactcnn train --model lenet5 --data fashion-mnist --reg group --lam 3e-4 \
	  --lr-warmup-epochs 1 --epochs 4 --finetune-epochs 1 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# The suite runs on every core (at most 4), one torch thread per worker: on CI's 2 cores that
# halves its time, where two workers of 2 threads each would only contend.
test: setup data
	$(VENV)/bin/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --maxprocesses 4

bench: setup data
	$(PY) benchmarks/prox_step.py
	$(PY) benchmarks/compact_latency.py
