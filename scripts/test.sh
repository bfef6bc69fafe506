#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (slow tests included) and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System services the tests start for real (each test skips with a reason where one is missing).
TEST_APT_PACKAGES="slurm-wlm munge chromium chromium-driver"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $TEST_APT_PACKAGES) >/dev/null 2>&1 \
    || echo "test: could not install $TEST_APT_PACKAGES; the tests that need them will be skipped" >&2
fi
. .venv/bin/activate
ruff check .
lint-imports  # the floors of docs/architecture.md (contracts in setup.cfg)
exec python -m pytest -q --durations=30 "$@"
