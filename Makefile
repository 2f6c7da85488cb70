# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Used only when no torch is importable yet; a machine that already has torch keeps it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/tessera demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check tessera tests bench examples
	$(PY) -m mypy tessera

bench: setup
	$(PY) bench/communication.py --json bench/results/communication.json

clean:
	rm -rf $(VENV) .tessera
