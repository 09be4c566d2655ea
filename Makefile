# The commands of the README: `make run` (the pipeline), `make test` (the tests) and, on a GPU,
# `make gpu-check DATA=cifar100.npz` (tfkd acceptance; TIME_CAP seconds for its training run).
# Each installs what it needs into .venv first. Override TORCH for another build of PyTorch.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/tfkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) -e '.[dvc,test]'
	touch $@

install: $(BIN)/tfkd

run: install  # only the active profile's stages (tfkd stages): a skipped one is not even launched
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro $$(PATH="$(CURDIR)/$(BIN):$$PATH" tfkd stages)
	PATH="$(CURDIR)/$(BIN):$$PATH" tfkd report

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

DATA ?=
TIME_CAP ?= 540
gpu-check: install
	PATH="$(CURDIR)/$(BIN):$$PATH" tfkd acceptance $(if $(DATA),--data $(DATA)) --time-cap $(TIME_CAP)

.PHONY: install run test gpu-check
