# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both set up .venv themselves; a machine that already has torch (a GPU box) keeps its own.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) -m diffusers_sparse_vdit.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15
