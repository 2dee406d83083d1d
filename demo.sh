#!/usr/bin/env bash
# Installs everything (./install.sh), then runs the main job on the bundled
# corpus (data/tinyshakespeare.txt), writing under runs/shakespeare/.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
RUN=runs/shakespeare
.venv/bin/textgen-preprocess --input=data/tinyshakespeare.txt \
  --output_dir=$RUN/data --overwrite --tokenizer=char --window_length=128 \
  --split_mode=tail --validation_fraction=0.1
echo "Dataset written to $RUN/data:"
cat $RUN/data/metadata.json
