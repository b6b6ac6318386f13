# compresslab: `make run` sets everything up and runs the whole pipeline; `make test` sets up and tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup data run sensitivity test test-fast params benchmark benchmark-latency benchmark-data benchmark-sparse benchmark-conversion benchmark-qat-folding clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "compresslab needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies and compresslab itself

data: setup  ## write the bundled samples into data/raw and data/raw_detection (each unless it exists)
	@if [ -d data/raw ]; then echo "data/raw exists: leaving it as it is"; else $(BIN)/compresslab sample-data; fi
	@if [ -d data/raw_detection ]; then echo "data/raw_detection exists: leaving it as it is"; \
	else $(BIN)/compresslab sample-data --task detection; fi

run: data  ## set up, write the sample data and run the whole pipeline (dvc repro)
	. $(BIN)/activate && dvc repro

sensitivity: data  ## each layer pruned alone and quantized alone, and the drops they explain: reports/sensitivity/ (not in `make run`)
	. $(BIN)/activate && dvc repro analysis/dvc.yaml

# Tests run in one pytest-xdist worker per core, a module to a worker (module fixtures train once). On 2 cores
# two workers took the suite from 26.5 to 18.5 minutes; a third gained nothing (18.2: every test slower).
# --no-loadscope-reorder keeps the order tests/conftest.py gives the modules (xdist would sort them by test count).
TEST_JOBS ?= auto
PYTEST_XDIST := -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test: setup  ## set up and run the whole test suite
	. $(BIN)/activate && python -m pytest $(PYTEST_XDIST) --durations=20

test-fast: setup  ## only the fast unit tests (skips the end-to-end dvc runs)
	. $(BIN)/activate && python -m pytest $(PYTEST_XDIST) -m "not slow"

params: setup  ## rewrite params.yaml from conf/ (what dvc exp run composes; dvc repro does not) and models/dvc.yaml
	$(BIN)/compresslab params

benchmark: data  ## time the default pipeline (full run, a re-run, the smoke preset), per stage, and every file's figures
	. $(BIN)/activate && python benchmarks/pipeline.py

benchmark-latency: setup  ## time one file against baseline-float32 in five separate runs: does the ratio hold?
	. $(BIN)/activate && python benchmarks/latency_ratio.py

benchmark-data: data  ## peak memory and time of prepare and one train epoch at 5,000 images and at ten times that many
	. $(BIN)/activate && python benchmarks/data_scale.py

benchmark-conversion: setup  ## save + convert with and without Keras' per-layer traces: same bytes, how much faster?
	. $(BIN)/activate && python benchmarks/conversion.py

benchmark-qat-folding: setup  ## QAT int8 files with and without BatchNorm folded into their convolutions: operators, latency
	. $(BIN)/activate && python benchmarks/qat_folding.py

benchmark-sparse: setup  ## a pruned MobileNetV2 against its dense self: does sparsity buy speed on this CPU?
	. $(BIN)/activate && python benchmarks/sparse_inference.py

clean:  ## remove the virtual environment
	rm -rf $(VENV)
