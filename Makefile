# Two entry points that work on a fresh machine (see README):
#   make demo   set up .venv, train the tiny text-to-video model on synthetic shapes, sample, probe
#   make test   set up .venv (with the dev extra), run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: demo test venv clean

# torch first, pinned: on these machines 2.13.0 is a local CPU wheel, while an unpinned torch
# would pull several GB of CUDA packages.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python examples/demo.py --out $(DEMO_DIR)

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs
