#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with CPU TensorFlow and
# the test tools. Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[cpu,test]'
