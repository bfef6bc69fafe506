#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (slow tests included) and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
exec python -m pytest -q "$@"
