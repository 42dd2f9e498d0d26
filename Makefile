# Inf-590K toolkit. `make install` then `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_DIR ?= demo-out
DEMO_EXTRA ?=

.PHONY: install test test-fast demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(BIN)/inf590k demo --out $(DEMO_DIR) $(foreach source,$(DEMO_EXTRA),--extra $(source))

bench: install
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
