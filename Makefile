# The two commands: `make run` (the platform on its embedded default) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint typecheck pytest migrate clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when the dependency list changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: export DJANGO_DEBUG ?= 1
run: export SITE_URL ?= http://127.0.0.1:$(PORT)
run: export PORT := $(PORT)
run: $(VENV)/.installed-run
	@mkdir -p .run/broker/processed
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py demo_setup
	$(BIN)/honcho start -f Procfile

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	DJANGO_DEBUG=1 $(BIN)/mypy console inference billing

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf .run db.sqlite3 .pytest_cache .mypy_cache .ruff_cache
