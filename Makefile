# Two commands do all the set-up: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test test-fast lint typecheck format docs docs-serve ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first and exactly 2.13.0: a bare "torch" requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install -e '.[dev,docs]'
	touch $@

# The main job (`husai pipeline`, MLproject `main`): base model (trained once) -> activations
# (cached) -> Ray Tune + Optuna over k, d_sae and lambda -> best trial registered as
# husai-sae@candidate -> report -> release gate -> summary. Exit 2 = the gate blocked: a
# result, not a failure of the demo. A second run reuses everything.
demo: $(STAMP)
	$(BIN)/husai pipeline --sweep sweeps/quick.yaml --policy gates/default.yaml || [ $$? -eq 2 ]

lint: $(DEV_STAMP)
	$(BIN)/ruff check husai tests benchmarks scripts
	$(BIN)/ruff format --check husai tests benchmarks scripts

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix husai tests benchmarks scripts
	$(BIN)/ruff format husai tests benchmarks scripts

# The documentation site (mkdocs.yml; the reference pages are generated from the code at build
# time): broken links, missing pages and pages left out of the nav fail the build.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(CURDIR)/site

docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# The whole suite, slow tests (real training, mlflow run) included: what CI runs.
test: lint typecheck docs
	$(BIN)/pytest

# For iterating: skips the slow tests.
test-fast: $(DEV_STAMP)
	$(BIN)/pytest -m "not slow"

# The demo's sweep opens on its runs table only with the address printed first (MLflow 3's UI
# otherwise opens every experiment on its GenAI overview).
ui: $(STAMP)
	@$(BIN)/python -c "from husai.console.text import ui_address; from husai.registry.tracking import Tracker; t = Tracker(); e = t.find_experiment_id('husai/quick_sweep'); print('open', ui_address(t.uri, e) if e else 'http://127.0.0.1:5000 (no demo sweep yet: run make demo)')"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info site
