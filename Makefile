# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# TORCH is the torch requirement; CI passes the CPU build (`make test TORCH=torch==2.13.0`).
PYTHON ?= python3
TORCH ?= torch
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.napo-installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,qlora,tracking,tune]"
	@touch $(STAMP)

demo: setup
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

# pytest exits 5 when it collects nothing: report it instead of failing the build.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: setup
	$(PY) -m ruff check napo data_prep recipes tests bench

bench: setup
	$(PY) bench/prep_scaling.py
	$(PY) bench/kneg.py

clean:
	rm -rf $(VENV) runs .pytest_cache
