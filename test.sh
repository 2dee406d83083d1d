#!/usr/bin/env bash
# Installs everything (./install.sh) and runs the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
exec .venv/bin/python -m pytest -q "$@"
