# Set-up and everyday commands. Needs only python3 (3.11+), git and make.
#   make repro   build .venv with the pinned dependencies, then run the whole pipeline
#   make test    build .venv, then lint and run the test suite (what CI runs)
#   make test-fast   the suite without the tests marked slow (real pipelines, training runs)
#   make pretrained  rebuild the shipped tiny CLIP and SigLIP checkpoints (CPU, tens of minutes)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: venv repro results test test-fast lint bench lock clean-venv gpu-wheels plots-template \
	pretrained

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

# Rewrite assets/dvc-plots.html, the page `dvc plots show` fills (.dvc/config), with Vega,
# Vega-Lite and Vega-Embed inlined from the pinned vl-convert-python so it draws offline.
plots-template: venv
	python -m harclip.plot.template

lint: venv
	ruff check src tests benchmarks

# Both of CI's cores (an idle worker takes tests queued for the other); the slowest tests are
# listed so a slow addition shows in CI's log.
test: lint
	pytest -n 2 --dist worksteal --durations=15

test-fast: lint
	pytest -n 2 --dist worksteal -m "not slow" --durations=10

# The demo's pretrained starts (models/pretrained/, in git): spent once, by whoever changes the
# world or its schedule (models/pretrained/pretrain.yaml); never by `dvc repro` or CI.
pretrained: venv
	python -m harclip.pretrain clip
	python -m harclip.pretrain siglip

bench: venv
	python benchmarks/preprocess_bench.py
	python benchmarks/train_bench.py --small --device cpu

# What a GPU machine without network lacks to run the stages (its image has torch, timm,
# torchvision, numpy, pillow, pyyaml, tqdm, ...): wheels for Python 3.12, pinned as in
# requirements.lock, into .whl/. Bring .whl/ along and run `bash benchmarks/gpu_check.sh OUT`.
GPU_WHEELS := open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types \
	typing-inspection dvclive dvc dvc-data dvc-http dvc-objects dvc-render dvc-studio-client \
	scmrepo atpublic colorama diskcache dpath dulwich flatten-dict flufl.lock funcy orjson \
	pathspec pygtrie ruamel.yaml sqltrie tabulate voluptuous zc.lockfile \
	peft accelerate psutil transformers tokenizers regex huggingface_hub hf-xet safetensors \
	torchmetrics lightning-utilities albumentations albucore opencv-python-headless simsimd \
	stringzilla
gpu-wheels:
	rm -rf .whl && mkdir .whl
	for name in $(GPU_WHEELS); do \
	  pin=$$(grep -i -E "^$$name==" requirements.lock) || { echo "$$name: not pinned"; exit 1; }; \
	  $(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
	    --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d .whl "$$pin" || exit 1; \
	done
	du -sh .whl

# Re-resolve requirements.lock from requirements.in (needs the package registry).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Every package the project installs, pinned (resolved from requirements.in by \`make lock\`)."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

clean-venv:
	rm -rf $(VENV)
