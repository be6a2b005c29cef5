# Set-up and checks for dagster-sutro. Every target creates the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo

.PHONY: venv test lint typecheck pytest demo ui benchmark benchmark-quick clean

$(STAMP): pyproject.toml constraints-dev.txt example_project/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-dev.txt -e '.[dev]' -e ./example_project
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

test: lint typecheck pytest

demo: venv
	$(BIN)/python example_project/demo.py --workdir $(DEMO_DIR)

ui: venv
	$(BIN)/python example_project/ui.py --workdir $(DEMO_DIR)

benchmark: venv
	$(BIN)/python -m benchmarks.download

benchmark-quick: venv
	$(BIN)/python -m benchmarks.download --quick

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
