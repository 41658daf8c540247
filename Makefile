# The README's two commands: `make demo` and `make test`. Each builds what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 lies on the development machines' disk, so pip takes it from
# there. Elsewhere, point TORCH at the build you want (e.g. a CPU wheel) to avoid a CUDA download.
TORCH ?= torch==2.13.0

.PHONY: test demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,cli,data,images,report]"
	touch $@

# the tests spread over the cores (pytest-xdist), one torch thread each (tests/conftest.py)
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist worksteal

demo: $(VENV)/.installed
	$(PY) -m l2b demo

# every benchmark in its --quick smoke mode (each writes only under runs/; the full commands are
# in benchmarks/RESULTS.md beside their results)
bench: $(VENV)/.installed
	$(PY) benchmarks/step_cost.py --quick
	$(PY) benchmarks/decode.py --quick
	$(PY) benchmarks/paper_regime.py --quick
	$(PY) benchmarks/memorisation.py --quick
	$(PY) benchmarks/fashion_mnist.py --quick
	$(PY) benchmarks/label_issue_cut.py --quick
	$(PY) benchmarks/label_issues.py --quick
	$(PY) benchmarks/label_issue_imbalance.py --quick
	$(PY) benchmarks/last_layer.py --quick
	$(PY) benchmarks/no_clean_set.py --quick --grid runs/bench-paper-regime-quick
	$(PY) benchmarks/device_check.py --device cpu --quick --out runs/device-check-quick

clean:
	rm -rf $(VENV) .pytest_cache src/*.egg-info
