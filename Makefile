# Two set-up commands do everything on a fresh machine:
#   make run    creates .venv, installs fedsim, runs scenarios/quickstart.yaml
#   make test   creates .venv, installs fedsim[dev], runs the check script (ruff, mypy, pytest)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in pyproject) so pip takes the CPU wheel every machine has.
TORCH := torch==2.13.0

.PHONY: run test check venv clean

# `make run` installs fedsim's runtime dependencies only; `make test` adds the dev set
# (Ray, trackers, notebook, linters: gigabytes a first run does not need).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

test: $(VENV)/.installed-dev
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash dev/check.sh

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
