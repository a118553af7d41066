# The two commands of README: `make demo` (the main job) and `make test` (the suite).
# Each sets up its own virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/botsq demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -ra
