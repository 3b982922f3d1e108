# Two commands on a fresh machine with Python >= 3.10 and make:
#   make demo   create .venv, install unetseg, run the main job on synthetic street scenes
#   make test   create or reuse .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,pretrained,onnx,video]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unetseg demo --out demo_output

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo_output runs
