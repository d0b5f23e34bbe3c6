# Two commands set everything up: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-isa test-all lint bench install clean system-deps readme-figures docs figures

$(STAMP): pyproject.toml setup.py $(wildcard src/attnlab/functional/kernels/*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch lies on disk here; asking for it by version keeps pip off the multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) system-deps

# The main job on built-in data: a tour of the core on a real pretrained model in the terminal,
# then `attnlab tour`: four small models trained on built-in data (each step printed as the
# command it is) and their attention drawn, every page linked from runs/demo/index.html.
# A second `make demo` resumes the finished runs.
demo: $(STAMP)
	$(VENV)/bin/attnlab demo
	$(VENV)/bin/attnlab tour --out runs/demo

# The quick suite; the slowest tests are listed at the end (none unmarked should take 10 s).
PYTEST_QUICK := -q -m "not slow" --durations=15

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_QUICK)

# Debian packages, installed as root when missing: Chromium and CJK fonts (the viewer's browser test
# drives Debian's Chromium) and tcmalloc (`attnlab train` runs under it: flat memory on long runs).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="chromium fonts-noto-cjk"; \
	/sbin/ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal\.so' || missing="$$missing libtcmalloc-minimal4"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } \
	|| echo "make: not installed:$$missing (as root: apt-get install$$missing); the browser test skips without chromium"

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

# `attnlab bench`: the suite against the peers with MFU (benchmarks/results/bench.json); `attnlab
# bench --readme` then writes the README's table. The benchmarks after it measure what the suite
# does not (decoding's thin products, capture, the viewer under load).
bench: $(STAMP)
	$(VENV)/bin/attnlab bench
	$(PY) -m benchmarks.thin_products
	$(PY) -m benchmarks.capture
	$(PY) -m benchmarks.serve_load

# The README's figures, each made by an attnlab command (the tour's steps; fashion_vit trains 4 minutes).
readme-figures: $(STAMP)
	$(VENV)/bin/attnlab tour --out runs/readme --only translation --only minilm --only fashion_vit
	cp runs/readme/translation/figures/cross_1_mean.png docs/images/alignment_dates.png
	cp runs/readme/minilm/figures/bert_5_head_view.png docs/images/minilm_head_view.png
	cp runs/readme/fashion_vit/figures/vit_5_class_token.png docs/images/fashion_vit_class_token.png

# The documentation site (mkdocs.yml, pages in docs/site): built offline into site/, every warning an error.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Every figure and result table of the site, one experiment each (src/attnlab/experiments), seeded.
figures: $(STAMP)
	$(VENV)/bin/attnlab experiment --all --out docs/site/figures

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
