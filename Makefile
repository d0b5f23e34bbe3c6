# Two commands set everything up: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-isa test-all lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch lies on disk here; asking for it by version keeps pip off the multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job on built-in data: a tour of the core on a real pretrained model in the terminal,
# then `attnlab tour`: four small models trained on built-in data (each step printed as the
# command it is) and their attention drawn, every page linked from runs/demo/index.html.
# A second `make demo` resumes the finished runs.
demo: $(STAMP)
	$(VENV)/bin/attnlab demo
	$(VENV)/bin/attnlab tour --out runs/demo

# The quick suite; the slowest tests are listed at the end (none unmarked should take 10 s).
PYTEST_QUICK := -q -m "not slow" --durations=15

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_QUICK)

# The quick suite on the kernels of an older CPU, emulated here: PyTorch's AVX2 kernels and oneDNN
# without AVX-512 or bf16 instructions (another level: make test-isa ATEN_ISA=default ONEDNN_ISA=SSE41).
ATEN_ISA ?= avx2
ONEDNN_ISA ?= AVX2

test-isa: $(STAMP)
	ATEN_CPU_CAPABILITY=$(ATEN_ISA) ONEDNN_MAX_CPU_ISA=$(ONEDNN_ISA) $(PY) -m pytest $(PYTEST_QUICK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.attention
	$(PY) -m benchmarks.translation
	$(PY) -m benchmarks.thin_products
	$(PY) -m benchmarks.vision

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
