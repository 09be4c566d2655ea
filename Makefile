# The two commands of the README: `make run` (the pipeline) and `make test` (the tests).
# Each installs what it needs into .venv first. Override TORCH for another build of PyTorch.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/tfkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) -e '.[dvc,test]'
	touch $@

install: $(BIN)/tfkd

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" tfkd report

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

.PHONY: install run test
