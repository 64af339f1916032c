# The two commands of the README:
#   make dev    create .venv, install, fetch the Kafka broker, run `sluicegate dev` with the example app
#   make test   install whatever is missing, then run the whole test suite (unit, integration, e2e)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev test install broker-jars bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

broker-jars: $(STAMP)
	$(BIN)/sluicegate fetch-broker

dev: broker-jars
	$(BIN)/sluicegate dev

test: broker-jars
	$(BIN)/python -m pytest tests -q

bench: broker-jars
	$(BIN)/python -m bench B1 --quick

clean:
	rm -rf $(VENV) .sluicegate build *.egg-info
