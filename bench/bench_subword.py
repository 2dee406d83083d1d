r"""Unigram training's memory and time as the corpus grows, with and without
--unigram_sample_mb.

  python bench/bench_subword.py [--scales=1,4,16,64] [--vocab_size=8000]

SentencePiece's unigram trainer writes every word of its word-count table
as many times as it was counted and builds a suffix array over that text,
so its memory and time grow with the corpus, not with the distinct words.
The word counts of the shared corpora (tinyshakespeare, PTB train,
Frankenstein, WikiText-2 valid: 8 MB) multiplied by each --scales factor
stand for a corpus that many times as large with the same words; for each,
a fresh process trains the unigram model as the pipeline does
(`subword.train_model`), once with every count as counted
(--unigram_sample_mb=0) and once with the default sample size. Prints
seconds, the process's peak RSS and how much training added to it, and the
model's compression (bytes per token) on held-out text (PTB valid,
WikiText-2 test), with the 1-minute load average.
"""

import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=wrong-import-position
from dataspec import subword  # pylint: disable=wrong-import-position
from dataspec import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position

_SCALES = flags.DEFINE_list("scales", ["1", "4", "16", "64"],
                            "Count multipliers (corpus size / the shared corpora's).")
_VOCAB = flags.DEFINE_integer("vocab_size", 8000, "Pieces, reserved and bytes included.")
_SHARED = flags.DEFINE_string(
    "shared_data", os.path.join(REPO, "..", "shared", "data"), "The shared corpora.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: the counts file to train on.")
_SCALE = flags.DEFINE_integer("scale", 1, "Internal: the worker's count multiplier.")
_SAMPLE_MB = flags.DEFINE_float("sample_mb", 0, "Internal: the worker's --unigram_sample_mb.")

_TRAIN = ("tinyshakespeare/input.txt", "ptb/ptb.train.txt",
          "frankenstein/frankenstein.txt", "wikitext-2/valid.txt")
_HELD_OUT = ("ptb/ptb.valid.txt", "wikitext-2/test.txt")
_SPEC = tokenizer_lib.TokenizerSpec(type="unigram")


def read(files) -> str:
  return "".join(open(os.path.join(_SHARED.value, f), encoding="utf-8").read() for f in files)


def work(counts_file: str, scale: int, sample_mb: float) -> dict:
  """Trains one model in this process; its figures."""
  with open(counts_file, encoding="utf-8") as f:
    counts = {word: count * scale for word, count in json.load(f).items()}
  before = machine.rss_mb()
  start = time.perf_counter()
  model = subword.train_model(counts, model_type="unigram", vocab_size=_VOCAB.value,
                              unigram_sample_mb=sample_mb)
  seconds = time.perf_counter() - start
  peak = machine.peak_rss_mb()
  held_out = read(_HELD_OUT)
  tokens = len(tokenizer_lib.Tokenizer(_SPEC, vocab=model).encode(held_out))
  return {"seconds": seconds, "peak_rss_mb": peak, "added_mb": peak - before,
          "bytes_per_token": len(held_out.encode("utf-8")) / tokens,
          "text_mb": subword.training_text_bytes(list(counts.items())) / 1e6}


def main(_):
  if _WORKER.value:
    print(json.dumps(work(_WORKER.value, _SCALE.value, _SAMPLE_MB.value)))
    return
  print(machine.describe())
  train = read(_TRAIN)
  counts = tokenizer_lib.make_counter(_SPEC)(train)
  sample = subword.DEFAULT_UNIGRAM_SAMPLE_MB
  print(f"word counts of {len(train.encode('utf-8')) / 1e6:.1f} MB of text "
        f"({', '.join(_TRAIN)}): {len(counts):,} distinct words; vocab "
        f"{_VOCAB.value:,}; held out: {', '.join(_HELD_OUT)}", flush=True)
  rows = []
  with tempfile.TemporaryDirectory(prefix="bench-subword-") as work_dir:
    counts_file = os.path.join(work_dir, "counts.json")
    with open(counts_file, "w", encoding="utf-8") as f:
      json.dump(dict(counts), f)
    for scale in (int(s) for s in _SCALES.value):
      for sample_mb in (0.0, sample):
        r = machine.run_worker(__file__, f"--worker={counts_file}", f"--scale={scale}",
                               f"--sample_mb={sample_mb}", f"--vocab_size={_VOCAB.value}",
                               f"--shared_data={_SHARED.value}")
        rows.append((scale, sample_mb, r))
        print(f"x{scale} sample_mb={sample_mb:g}: {r['text_mb']:.0f} MB of counted text, "
              f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB "
              f"(+{r['added_mb']:,.0f}), {r['bytes_per_token']:.3f} bytes/token",
              flush=True)
  print(machine.describe() + " (after)")
  print()
  print("| corpus | counted text | --unigram_sample_mb | seconds | peak RSS | added by training "
        "| held-out bytes/token |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for scale, sample_mb, r in rows:
    print(f"| x{scale} | {r['text_mb']:,.0f} MB | {sample_mb:g} | {r['seconds']:.1f} | "
          f"{r['peak_rss_mb']:,.0f} MB | {r['added_mb']:,.0f} MB | "
          f"{r['bytes_per_token']:.3f} |")


if __name__ == "__main__":
  app.run(main)
