# Entry points. Each target creates the virtual environment on first use (nothing to install by hand).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo reproduce test test-all notebook-figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m moe_sim.demo

reproduce: $(STAMP)
	$(BIN)/moe-sim reproduce all --quick --n-jobs 2 --out results   # untracked: results/NAME and results/figures

test: $(STAMP)   # without the slow statistical checks (rates over replicates, n = 1e5, the README example)
	$(BIN)/python -m pytest -m "not gpu and not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu"

notebook-figures: $(STAMP)
	$(BIN)/python figures/render_notebooks.py
