#!/usr/bin/env bash
# Installs everything (./install.sh), then runs preprocess -> train ->
# generate on the bundled corpus (data/tinyshakespeare.txt) into
# runs/shakespeare/, and prints two samples. About 5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
scripts/chain.sh data/tinyshakespeare.txt runs/shakespeare
