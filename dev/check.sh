#!/usr/bin/env bash
# The one check script: lint, format, types, tests. CI runs it through `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy"; mypy
# One pytest worker per core (xdist): most tests are single-threaded torch on small
# models or wait on subprocesses, so two workers on CI's two cores nearly halve the time.
echo "== pytest"; python -m pytest -q -n "${FEDSIM_TEST_WORKERS:-auto}" "$@"
