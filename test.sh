#!/usr/bin/env bash
# Installs everything (./install.sh) and runs the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
# Test processes: one per core, at least 2 (the slow tests mostly wait on
# subprocesses and timeouts), at most 4 (each holds TensorFlow, ~0.6-1 GB).
# Tests of one module share a process (their module fixtures are built once).
# TEST_WORKERS=0 runs everything in this process.
cores=$(nproc 2>/dev/null || echo 2)
workers=${TEST_WORKERS:-$(( cores < 2 ? 2 : (cores > 4 ? 4 : cores) ))}
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadscope "$@"
