# Set-up and everyday commands. Needs only python3 (3.11+), git and make.
#   make repro   build .venv with the pinned dependencies, then run the whole pipeline
#   make test    build .venv, then lint and run the test suite (what CI runs)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: venv repro results test lint bench lock clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

repro: venv
	dvc repro

# Rerun what changed, then copy plots/summary.md into README.md's results block.
results: repro
	python -m harclip.plot --update-readme README.md

lint: venv
	ruff check src tests benchmarks

test: lint
	pytest

bench: venv
	python benchmarks/preprocess_bench.py
	python benchmarks/train_bench.py --small --device cpu

# Re-resolve requirements.lock from requirements.in (needs the package registry).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Every package the project installs, pinned (resolved from requirements.in by \`make lock\`)."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

clean-venv:
	rm -rf $(VENV)
