r"""Word tokenizer speed: numpy splitting (wordsplit) against re.findall.

  python bench/bench_tokenizer.py [--mb=8]

Counts (vocabulary pass) and encodes (ids pass) 1 MB chunks of the shared
corpora, single thread, with the vectorized path and with the regexes that
define the tokenizer (`Tokenizer.split_words` + Counter / dict lookups), for
each punctuation mode; checks both give the same counts and ids, and prints
ms per MB and the ratio. Best of --repeats.
"""

import collections
import itertools
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataspec import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
from dataspec import vocab as vocab_lib  # pylint: disable=wrong-import-position

_MB = flags.DEFINE_float("mb", 8, "MB of text (from the shared corpora).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (best counts).")
_SHARED = flags.DEFINE_string(
    "shared_data", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "The shared corpora.")
_FILES = ("tinyshakespeare/input.txt", "ptb/ptb.train.txt",
          "frankenstein/frankenstein.txt", "wikitext-2/valid.txt")


def best_seconds(fn, chunks):
  best = float("inf")
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    out = [fn(c) for c in chunks]
    best = min(best, time.perf_counter() - start)
  return best, out


def main(_):
  data = b"".join(open(os.path.join(_SHARED.value, f), "rb").read() for f in _FILES)
  size = int(_MB.value * 1e6)
  data = (data * (size // len(data) + 1))[:size]
  chunks = [data[i:i + (1 << 20)].decode("utf-8", errors="replace")
            for i in range(0, len(data), 1 << 20)]
  mb = len(data) / 1e6
  print(f"{mb:.1f} MB in {len(chunks)} chunks, single thread, best of {_REPEATS.value}")
  print("\n| punctuation | count: numpy ms/MB | regex ms/MB | ratio "
        "| encode: numpy ms/MB | regex ms/MB | ratio |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for punctuation in tokenizer_lib.PUNCTUATION_MODES:
    spec = tokenizer_lib.TokenizerSpec(type="word", punctuation=punctuation)
    chunks_n = [tokenizer_lib.normalize_text(c, spec) for c in chunks]
    counter = tokenizer_lib.Tokenizer(spec, vocab=list(tokenizer_lib.RESERVED_TOKENS))

    def regex_count(text):
      counts = collections.Counter(counter.split_words(text))
      counts.pop("\n", None)
      return counts

    fast_count_s, fast_counts = best_seconds(counter._count_words_vectorized, chunks_n)  # pylint: disable=protected-access
    regex_count_s, regex_counts = best_seconds(regex_count, chunks_n)
    assert fast_counts == regex_counts, "counts differ"
    total = collections.Counter()
    for c in regex_counts:
      total.update(c)
    tok = tokenizer_lib.Tokenizer(spec, vocab=vocab_lib.select_vocab(
        total, max_vocab_size=10_000, min_count=1))

    def regex_encode(text):
      words = tok.split_words(text)
      return np.fromiter(map(tok._ids.get, words, itertools.repeat(tokenizer_lib.UNK_ID)),  # pylint: disable=protected-access
                         dtype=np.int32, count=len(words))

    tok._encode_words_vectorized(chunks_n[0])  # pylint: disable=protected-access  # builds the key table
    fast_encode_s, fast_ids = best_seconds(tok._encode_words_vectorized, chunks_n)  # pylint: disable=protected-access
    regex_encode_s, regex_ids = best_seconds(regex_encode, chunks_n)
    assert all(np.array_equal(a, b) for a, b in zip(fast_ids, regex_ids)), "ids differ"
    ms = lambda s: s / mb * 1e3  # pylint: disable=unnecessary-lambda-assignment
    print(f"| {punctuation} | {ms(fast_count_s):.0f} | {ms(regex_count_s):.0f} | "
          f"{regex_count_s / fast_count_s:.1f}x | {ms(fast_encode_s):.0f} | "
          f"{ms(regex_encode_s):.0f} | {regex_encode_s / fast_encode_s:.1f}x |")


if __name__ == "__main__":
  app.run(main)
