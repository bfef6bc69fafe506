#!/usr/bin/env bash
# Sets everything up, then runs a real campaign: local site, embedded LLM, built-in MPI cosmology simulation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec physflow submit workflows/examples/cosmology.yaml --yes "$@"
