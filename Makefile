# The README's two commands: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv system-deps demo test lint typecheck unit bench clean

venv: $(STAMP)

# Services the tests start themselves on free loopback ports: mosquitto and influxd (InfluxDB 1.x);
# openssl makes the throwaway CA for the TLS broker test.
system-deps:
	@need=""; \
	  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need="$$need mosquitto"; \
	  command -v influxd >/dev/null || [ -x /usr/bin/influxd ] || need="$$need influxdb"; \
	  command -v openssl >/dev/null || need="$$need openssl"; \
	  [ -z "$$need" ] || { $(SUDO) apt-get update -qq && \
	    $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check agents tests benchmarks grafana
	$(VENV)/bin/ruff format --check agents tests benchmarks grafana

typecheck: venv
	$(VENV)/bin/mypy

unit: venv system-deps
	$(VENV)/bin/pytest

test: lint typecheck unit

# One host: mosquitto (installed here if apt can), cloud, edge and device agents on the sample.
demo: venv
	-@$(MAKE) --no-print-directory system-deps
	$(VENV)/bin/cascade demo --frames 1000 --json runs/demo.json

bench: venv system-deps
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
