# Two entry points that work on a fresh machine (see README):
#   make demo   set up .venv, train the tiny text-to-video model on synthetic shapes, sample, probe
#   make test   set up .venv (with the dev extra), run the test suite
#   make test-numerics   the float-comparing tests again on ATen's portable kernels (CI runs both)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: demo test test-numerics venv clean

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

# The tests that compare floats, rerun with ATen's portable (non-SIMD) kernels: their other
# summation orders and roundings stand in for another CPU's, so a tolerance too tight for
# float32 fails here rather than on someone else's machine.
NUMERICS := tests/models tests/diffusion tests/metrics tests/compressors tests/autoencoders tests/perf \
	tests/distributed/test_precision.py tests/distributed/test_checkpointing.py tests/distributed/test_sequence_parallel.py
test-numerics: venv
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q $(NUMERICS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs
