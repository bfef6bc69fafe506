#!/usr/bin/env bash
# Creates .venv (if needed) and installs physflow with the embedded model and test tools.
# The first run builds llama.cpp from source (about 6 minutes on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# bubblewrap gives LLM-written code a namespace sandbox (without it: Landlock + seccomp, or a refusal);
# util-linux (setpriv, unshare) lets root run that code as uid 65534 and the escape tests use a private mount namespace.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && { ! command -v bwrap || ! command -v setpriv; } >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux) >/dev/null 2>&1 \
    || echo "setup: could not install bubblewrap; the sandbox will use Landlock + seccomp, or refuse model-written code" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
# Portable llama.cpp build (no -march=native) with the vector units every x86-64 HPC node has.
if [ "$(uname -m)" = "x86_64" ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
else
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
fi
python -m pip install -q -e ".[embedded,test]"
