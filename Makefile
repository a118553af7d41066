# The two commands of README: `make demo` (the main job) and `make test` (the suite).
# Each sets up its own virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

.PHONY: install demo test test-fast
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/botsq demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -ra

# The fast tier: no broker, no PostgreSQL, no child process, nothing slow (see tests/conftest.py).
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m "not services and not procs and not slow"
