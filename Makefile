# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 2

.PHONY: demo demo-quick test test-slow test-wheel wheel lint typecheck bench data clean setup report-screenshot

setup: $(STAMP) data

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	@touch $(STAMP)

# Fashion-MNIST comes from Debian's package; install it when we are root and it is missing.
data:
	@if [ -n "$$BISSL_DATA" ] && [ -d "$$BISSL_DATA/fashion-mnist" ]; then :; \
	elif [ -d $(FMNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "could not install dataset-fashion-mnist; tests that need it will be skipped"; \
	else \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set BISSL_DATA"; \
	fi

demo: setup
	$(BIN)/bissl demo

demo-quick: setup
	$(BIN)/bissl demo --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

# The wheel (configs included) in dist/; test-wheel installs it in a fresh venv and runs the quick demo elsewhere.
wheel: $(STAMP)
	rm -rf build && $(BIN)/python -m pip wheel --no-deps -q -w dist .

test-wheel: setup
	$(BIN)/python -m pytest -m slow -q tests/test_wheel.py

bench: setup
	$(BIN)/python benchmarks/implicit.py
	$(BIN)/python benchmarks/bilevel_overhead.py
	$(BIN)/python benchmarks/augment_throughput.py

report-screenshot: setup
	$(BIN)/python -m pytest -m slow -q tests/report/test_report_screenshot.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
