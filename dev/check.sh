#!/usr/bin/env bash
# The one check script: lint, format, types, tests. CI runs it through `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; python -m pytest -q "$@"
