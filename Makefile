# openbess: the two commands. `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
# Small linear algebra in many processes: one BLAS thread each is faster on a shared machine.
export OPENBLAS_NUM_THREADS ?= 1
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SITE ?= home
SPEED ?= 1440
HTTP ?= 127.0.0.1:8000

.PHONY: run test lint typecheck pytest bench clean services

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

## run: create the venv, install, start the demo site (home, 1 day per minute, optimiser as
## EMS) with the live dashboard on http://$(HTTP)
run: $(STAMP)
	$(VENV)/bin/openbess run --site $(SITE) --speed $(SPEED) --strategy mpc --http $(HTTP)

## test: install dev extras and services, then lint, type-check and the whole test suite
test: $(STAMP) services
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n 2 -q

# Real peers for the interface tests: Debian's mosquitto (MQTT broker and clients) and
# chromium (headless browser for the dashboard tests). Installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
services:
	@if [ -x /usr/sbin/mosquitto ] && command -v mosquitto_sub >/dev/null && command -v chromium >/dev/null; then \
		true; \
	else \
		echo "installing Debian packages: mosquitto mosquitto-clients chromium"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			mosquitto mosquitto-clients chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -n 2 -q

## bench: run every benchmark (prints JSON); installs the [bench] extra (PyBaMM) first
bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	for b in benchmarks/*.py; do $(PY) $$b; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
