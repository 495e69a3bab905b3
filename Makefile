# The two commands: `make quickstart` (the pipeline on the bundled CIFAR-10 subset) and `make test`.
# Each sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LABELENH := $(VENV)/bin/labelenh
QS := runs/quickstart

.PHONY: setup quickstart test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) scripts/quickstart.py --out $(QS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check labelenh tests scripts

clean:
	rm -rf $(QS)
