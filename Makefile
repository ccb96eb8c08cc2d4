# Every target installs what it needs into .venv first; nothing else is assumed on the machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run dev test lint format bench schemas clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install  ## the main job: embedded NATS + orchestrator + edge + reference agent + demo data
	$(VENV)/bin/orchestrator dev

dev: run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint
	$(PY) -m pytest

schemas: install  ## regenerate docs/schemas from the codecs
	$(PY) -m orchestrator.codecs.schema docs/schemas

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .orchestrator-data bench/results/*.json
