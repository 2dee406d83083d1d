"""The README's chain (scripts/chain.sh): preprocess -> train -> generate."""

import json
import os
import subprocess
import sys

import pytest

from testutil import REPO, shakespeare_text


@pytest.mark.slow
def test_chain_on_a_tiny_corpus(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(shakespeare_text(40_000))
  run = tmp_path / "run"
  env = dict(os.environ, BIN=os.path.dirname(sys.executable), PYTHONPATH=REPO,
             WINDOW="32", UNITS="32", EMBEDDING="16", BATCH="16", TRAIN_STEPS="30",
             SAMPLE_TOKENS="20", NUM_SAMPLES="2", CUDA_VISIBLE_DEVICES="")
  out = subprocess.run([os.path.join(REPO, "scripts", "chain.sh"), str(corpus), str(run)],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Validation loss" in out.stdout and "Done in" in out.stdout
  # train, generate and evaluate each took their tensors from the BFC allocator
  assert out.stderr.count("Peak memory of TensorFlow's CPU tensors") == 3, out.stderr[-3000:]
  rows = [json.loads(l) for l in open(run / "samples.jsonl")]
  assert len(rows) == 6  # 3 prompts x 2 samples
  assert {r["prompt"] for r in rows} == {"ROMEO:", "First Citizen:", "KING HENRY:"}
  assert all(r["num_tokens"] == 20 for r in rows)
  training = json.load(open(run / "model" / "export" / "training.json"))
  assert training["step"] == 30
