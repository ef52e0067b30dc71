# The commands of the README. Each sets everything up (venv, pinned packages, the
# Fashion-MNIST data) and then does its job.
#   make run          – the default Snakemake study on Fashion-MNIST, then its HTML report
#   make verify       – regenerate the study from scratch in a temporary folder and compare
#                       every committed table with the new one (exit 1 if one disagrees)
#   make clean-study  – delete the study's results, so that `make run` regenerates them all
#   make test         – lint (ruff) and the whole test suite (the explorer's in headless Chromium)
#   make explore      – open the study's explorer (results/$(STUDY)/explorer/index.html)
PYTHON ?= python3
VENV ?= .venv
STUDY ?= default
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run verify test explore setup data allocator browser clean-study

run: setup data allocator
	$(BIN)/eebench check --study config/$(STUDY).yaml >/dev/null
	$(BIN)/snakemake --profile profiles/default --configfile config/$(STUDY).yaml
	$(BIN)/snakemake --profile profiles/default --configfile config/$(STUDY).yaml \
		--report results/$(STUDY)/report.html

verify: setup data
	$(BIN)/eebench verify --study config/$(STUDY).yaml

test: setup data browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# Fashion-MNIST: Debian's dataset-fashion-mnist package when apt-get is usable,
# otherwise torchvision's download into data/.
data: setup
	@$(BIN)/eebench data fashion_mnist --root data >/dev/null 2>&1 \
	|| (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	    && (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist))) \
	|| $(BIN)/eebench data fashion_mnist --root data --download
	@$(BIN)/eebench data fashion_mnist --root data

# tcmalloc for the workflow's jobs (pipelines/services/allocator.py: faster, same numbers):
# Debian's libtcmalloc-minimal4 when apt-get is usable (as root) and EEBENCH_ALLOCATOR does
# not choose; else the system's malloc.
allocator: setup
	@$(BIN)/python -c 'import os; from eebench.pipelines.services.allocator import fast_allocator as f; \
	    exit(os.environ.get("EEBENCH_ALLOCATOR", "auto") == "auto" and f() is None)' \
	|| (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	    && (apt-get install -y -q libtcmalloc-minimal4 || (apt-get update -q && apt-get install -y -q libtcmalloc-minimal4))) \
	|| echo "no tcmalloc (apt-get install libtcmalloc-minimal4): the jobs use the system's malloc, a few % slower"

explore: setup
	$(BIN)/eebench explorer --study config/$(STUDY).yaml --open

# Chromium for the explorer's browser tests: Debian's chromium package when apt-get is
# usable (as root); without one those tests are skipped, saying so (they fail under CI=true).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	|| [ -n "$$EEBENCH_CHROMIUM" ] \
	|| (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	    && (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))) \
	|| echo "no Chromium (apt-get install chromium): the explorer's browser tests are skipped"

clean-study:
	rm -rf results/$(STUDY) .snakemake
