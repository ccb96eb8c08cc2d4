# Every target installs what it needs into .venv first; nothing else is assumed on the machine.
# Installs come from the hash-locked files in requirements/ (pip, setuptools and wheel included),
# never from pyproject's open ranges; `make lock` re-resolves them (README, "Dependencies").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_LOCKED := $(PY) -m pip install -q --require-hashes --no-deps
# The editable build uses the locked setuptools/wheel, not whatever PyPI serves today. setuptools
# announces its meta-path-finder editable mode with a warning about a hazard this project does not
# have (a folder named like the package, `orchestrator`), so that one warning is filtered.
PIP_EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q --no-deps --no-build-isolation -e .
UV_VERSION := 0.13.9
LOCK := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet \
	$(if $(UPGRADE),--upgrade) pyproject.toml requirements/build.in

.PHONY: install install-runtime run dev test lint format bench schemas lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One marker per lock file: a changed lock (or pyproject) re-installs on the next make.
$(VENV)/.installed-%: requirements/%.lock pyproject.toml | $(PY)
	$(PIP_LOCKED) -r $<
	$(PIP_EDITABLE)
	$(PY) -m pip check
	touch $@

# The bench lock too: tests/test_bench.py runs `python -m bench --smoke`.
install: $(VENV)/.installed-dev $(VENV)/.installed-bench  ## runtime + dev tools + bench extras

install-runtime: $(VENV)/.installed-runtime  ## runtime dependencies only

run: install-runtime  ## the main job: embedded NATS + orchestrator + edge + reference agent + demo data
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

schemas: install  ## regenerate docs/schemas, docs/asyncapi.json and docs/openapi.json
	$(PY) -m orchestrator.codecs.schema docs/schemas
	$(PY) -m orchestrator.service.contracts.asyncapi_doc docs/asyncapi.json
	$(PY) -m orchestrator.service.edge.openapi_doc docs/openapi.json

bench: $(VENV)/.installed-bench
	$(PY) -m bench

# Re-resolve the locks against PyPI: keeps current pins that still fit pyproject's ranges;
# `make lock UPGRADE=1` moves every pin to the newest allowed release. dev and bench are
# constrained by the runtime lock, so one venv holding several locks agrees on every version.
lock: | $(PY)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(LOCK) -o requirements/runtime.lock
	$(LOCK) --extra dev -c requirements/runtime.lock -o requirements/dev.lock
	$(LOCK) --extra bench -c requirements/runtime.lock -o requirements/bench.lock

clean:
	rm -rf $(VENV) .orchestrator-data bench/results/*.json
