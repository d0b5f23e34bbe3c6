# Two commands set everything up: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch lies on disk here; asking for it by version keeps pip off the multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job on built-in data: a tour of the core on a real pretrained model, then a
# Transformer trained on generated English -> Japanese dates (96 s here; a second
# `make demo` resumes the finished run) and the alignment behind two of its translations.
DEMO_RUN := runs/demo_translation

demo: $(STAMP)
	$(VENV)/bin/attnlab demo
	$(VENV)/bin/attnlab train configs/generated_transformer.yaml output_dir=$(DEMO_RUN) training.max_steps=1000 training.max_minutes=4
	$(VENV)/bin/attnlab translate $(DEMO_RUN) --show-attention --text "March 15, 2024" --text "three hundred and twelve"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

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
