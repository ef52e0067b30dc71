# The commands of the README. Each sets everything up (venv, pinned packages, the
# Fashion-MNIST data) and then does its job.
#   make run          – the default Snakemake study on Fashion-MNIST, then its HTML report
#   make verify       – regenerate the study from scratch in a temporary folder and compare
#                       every committed table with the new one (exit 1 if one disagrees)
#   make clean-study  – delete the study's results, so that `make run` regenerates them all
#   make test         – lint (ruff) and the whole test suite
PYTHON ?= python3
VENV ?= .venv
STUDY ?= default
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run verify test setup data clean-study

run: setup data
	$(BIN)/eebench check --study config/$(STUDY).yaml >/dev/null
	$(BIN)/snakemake --profile profiles/default --configfile config/$(STUDY).yaml
	$(BIN)/snakemake --profile profiles/default --configfile config/$(STUDY).yaml \
		--report results/$(STUDY)/report.html

verify: setup data
	$(BIN)/eebench verify --study config/$(STUDY).yaml

test: setup data
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

clean-study:
	rm -rf results/$(STUDY) .snakemake
