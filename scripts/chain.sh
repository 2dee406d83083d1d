#!/usr/bin/env bash
# preprocess -> train -> generate -> evaluate on one corpus, on CPU.
#   scripts/chain.sh CORPUS RUN_DIR
# Tunable by environment: WINDOW (128), UNITS (128), EMBEDDING (32),
# BATCH (64), TRAIN_STEPS (600), SAMPLE_TOKENS (300), NUM_SAMPLES (3).
set -euo pipefail
CORPUS="$1"
RUN="$2"
BIN="${BIN:-$(dirname "$0")/../.venv/bin}"
WINDOW="${WINDOW:-128}"
STEPS="${TRAIN_STEPS:-600}"
start=$(date +%s)

"$BIN/textgen-preprocess" --input="$CORPUS" --output_dir="$RUN/data" --overwrite \
  --tokenizer=char --window_length="$WINDOW" --split_mode=tail \
  --validation_fraction=0.1 --direct_num_workers=1 --direct_running_mode=in_memory

rm -rf "$RUN/model"  # a fresh model each time: the dataset was just rebuilt
"$BIN/textgen-train" --dataset_dir="$RUN/data" --model_dir="$RUN/model" \
  --units="${UNITS:-128}" --embedding_dim="${EMBEDDING:-32}" --num_layers=2 \
  --batch_size="${BATCH:-64}" --train_steps="$STEPS" --learning_rate=1e-2 \
  --schedule=cosine --warmup_steps=50 --eval_every="$STEPS" \
  --checkpoint_every=100 --log_every=50

printf 'ROMEO:\nFirst Citizen:\nKING HENRY:\n' > "$RUN/prompts.txt"
"$BIN/textgen-generate" --model_dir="$RUN/model" --prompts="$RUN/prompts.txt" \
  --num_samples="${NUM_SAMPLES:-3}" --max_new_tokens="${SAMPLE_TOKENS:-300}" \
  --temperature=0.8 --seed=0 --output="$RUN/samples.jsonl" --overwrite

"$BIN/textgen-eval" --model_dir="$RUN/model" --dataset_dir="$RUN/data" \
  --split=validation --output="$RUN/eval.json"

"$BIN/python" - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
training = json.load(open(f"{run}/model/export/training.json"))
total = json.load(open(f"{run}/eval.json"))["total"]
print(f"\nValidation loss {training['validation']['loss']:.3f} nats/token "
      f"after {training['step']} steps (each window from a zero state); "
      f"{total['loss']:.3f} nats/token = {total['bits_per_byte']:.3f} bits/byte "
      "with the state carried over the whole split (textgen-eval).")
print(f"Samples: {run}/samples.jsonl. The first two:\n")
for line in list(open(f"{run}/samples.jsonl"))[:2]:
    r = json.loads(line)
    print("---", r["prompt"])
    print(r["prompt"] + r["text"])
PY
echo "Done in $(( $(date +%s) - start )) s."
