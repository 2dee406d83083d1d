#!/usr/bin/env bash
# Installs everything (./install.sh), then runs preprocess -> train ->
# generate on the bundled corpus (data/tinyshakespeare.txt) into
# runs/shakespeare/, and prints two samples. On 2 CPU cores: a 1-3 minute
# install, then a 1-7 minute run, depending on the machine (README, "Quick
# start").
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
scripts/chain.sh data/tinyshakespeare.txt runs/shakespeare
