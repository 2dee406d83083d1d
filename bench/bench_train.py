r"""Training throughput against the tutorial recipe, FLOPs and matmul peak.

  python bench/bench_train.py [--steps=20]

For a char model (tinyshakespeare; 2x LSTM 256, embedding 64, window 128,
batch 64) and a word model (PTB train, 10k vocab; 2x LSTM 200, embedding 200,
window 35, batch 64), in the same run:
  ours:     trainer.train.Trainer: loss on all `window` positions, sparse
            targets, compiled multi-step loop, tf.data from TFRecords.
  tutorial: Keras Sequential Embedding -> LSTM -> LSTM -> Dense(softmax),
            categorical cross-entropy on one-hot labels, one next-token
            target per window, model.train_on_batch on numpy arrays.
Prints target tokens/s for both and the ratio, the model's training FLOPs per
token (3x forward), and the fraction of this machine's measured float32
matmul peak that our training reaches.
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import machine  # pylint: disable=wrong-import-position
from beam_preprocess import config as pre_config  # pylint: disable=wrong-import-position
from beam_preprocess import pipeline  # pylint: disable=wrong-import-position
from dataspec import metadata  # pylint: disable=wrong-import-position
from dataspec import tokenizer  # pylint: disable=wrong-import-position
from trainer import config as train_config  # pylint: disable=wrong-import-position
from trainer import train  # pylint: disable=wrong-import-position

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_SHARED = flags.DEFINE_string(
    "shared_data", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "Folder with the corpora.")

CASES = {
    "char": dict(corpus="tinyshakespeare/input.txt",
                 tok=tokenizer.TokenizerSpec(type="char"), vocab=0,
                 window=128, units=256, embedding=64, batch=64),
    "word": dict(corpus="ptb/ptb.train.txt",
                 tok=tokenizer.TokenizerSpec(type="word", punctuation="keep"),
                 vocab=10001, window=35, units=200, embedding=200, batch=64),
}


def train_flops_per_token(vocab, embedding, units, layers) -> float:
  forward, width = 0, embedding
  for _ in range(layers):
    forward += 2 * (width + units) * 4 * units
    width = units
  forward += 2 * width * vocab
  return 3 * forward


def bench_ours(case, dataset_dir, work) -> float:
  config = train_config.TrainConfig(
      dataset_dir=dataset_dir, model_dir=os.path.join(work, "model"),
      embedding_dim=case["embedding"], units=case["units"], num_layers=2,
      batch_size=case["batch"], train_steps=10_000, shuffle_buffer=1000)
  trainer = train.Trainer(config)
  iterator, _ = trainer._train_iterator(0)  # pylint: disable=protected-access
  trainer._train_loop(iterator, tf.constant(3))  # pylint: disable=protected-access  (trace)
  start = time.perf_counter()
  out = trainer._train_loop(iterator, tf.constant(_STEPS.value))  # pylint: disable=protected-access
  float(out[0])
  elapsed = time.perf_counter() - start
  trainer.store.close()
  trainer.best_store.close()
  return _STEPS.value * case["batch"] * case["window"] / elapsed


def tutorial_model(*, vocab, window, embedding, units, layers) -> keras.Model:
  """The tutorial's model: Embedding -> LSTM x layers -> Dense softmax on the
  last position, categorical cross-entropy on one-hot labels, Adam."""
  model = keras.Sequential(
      [keras.Input((window,), dtype="int32"), keras.layers.Embedding(vocab, embedding)] +
      [keras.layers.LSTM(units, return_sequences=i + 1 < layers) for i in range(layers)] +
      [keras.layers.Dense(vocab, activation="softmax")])
  model.compile(loss="categorical_crossentropy", optimizer="adam")
  return model


def bench_tutorial(case, ids, vocab) -> float:
  model = tutorial_model(vocab=vocab, window=case["window"], embedding=case["embedding"],
                         units=case["units"], layers=2)
  rng = np.random.default_rng(0)
  def batch():
    starts = rng.integers(0, len(ids) - case["window"] - 1, case["batch"])
    x = np.stack([ids[s:s + case["window"]] for s in starts])
    y = keras.utils.to_categorical(ids[starts + case["window"]], vocab)  # one-hot
    return x, y
  for _ in range(2):
    model.train_on_batch(*batch())
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    model.train_on_batch(*batch())
  return _STEPS.value * case["batch"] / (time.perf_counter() - start)


def main(_):
  print(machine.describe())
  case = CASES["char"]
  peaks = machine.peak_report(machine.lstm_gemm_shapes(
      batch=case["batch"], embedding=case["embedding"], units=case["units"],
      vocab=68).items())
  peak = max(peaks.values()) * 1e9
  print("float32 matmul peak (TensorFlow, best of 5): " +
        ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()) + "\n")
  rows = []
  for name, case in CASES.items():
    work = tempfile.mkdtemp(prefix=f"bench-train-{name}-")
    meta = pipeline.run(pre_config.PreprocessConfig(
        input=(os.path.join(_SHARED.value, case["corpus"]),),
        output_dir=os.path.join(work, "data"), tokenizer=case["tok"],
        window_length=case["window"], split_mode="tail", validation_fraction=0.05,
        max_vocab_size=case["vocab"]), pipeline_args=["--direct_num_workers=1"])
    ours = bench_ours(case, os.path.join(work, "data"), work)
    tok = tokenizer.Tokenizer(case["tok"], vocab=metadata.load_vocab_for(
        os.path.join(work, "data"), meta))
    text = open(os.path.join(_SHARED.value, case["corpus"]), encoding="utf-8").read()
    ids = tok.encode(text[:2_000_000])  # the tutorial's in-memory id array
    tutorial = bench_tutorial(case, ids, meta.vocab_size)
    flops = train_flops_per_token(meta.vocab_size, case["embedding"], case["units"], 2)
    rows.append((name, case, meta.vocab_size, ours, tutorial, flops))
  print("| model | ours tokens/s | tutorial tokens/s | speed-up | train FLOPs/token | ours GFLOP/s | of matmul peak |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name, case, vocab, ours, tutorial, flops in rows:
    print(f"| {name} (2x{case['units']}, emb {case['embedding']}, vocab {vocab}, "
          f"window {case['window']}, batch {case['batch']}) | {ours:,.0f} | "
          f"{tutorial:,.1f} | {ours / tutorial:,.0f}x | {flops / 1e6:.2f} MFLOP | "
          f"{ours * flops / 1e9:.1f} | {ours * flops / peak:.1%} |")


if __name__ == "__main__":
  app.run(main)
