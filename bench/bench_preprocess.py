r"""Preprocessing throughput: our pipeline against a naive one, same run.

  python bench/bench_preprocess.py [--corpus_mb=21] [--workers=2]

Builds a corpus of at least --corpus_mb MB by concatenating the files in
../shared/data (repeated), then for char and word tokenizers runs
  ours:  beam_preprocess.pipeline.run (chunks, numpy tokenizing, packed
         bytes, framed records) with --workers threads (its default mode)
  naive: one element per line, re.findall per line, vocab by
         Count.PerElement, the corpus gathered into one list, one int64_list
         tf.train.Example per window, WriteToTFRecord (what a first Beam port
         of the tutorial does) with --workers processes (its faster mode:
         per-line Python holds the GIL, so threads do not run it in parallel;
         --naive_modes=multi_processing,multi_threading measures both)
on DirectRunner (FnApiRunner), and prints MB/s of raw text, windows/s and the
ratio. bpe and unigram (SentencePiece, 8,000 ids, trained from the pipeline's
word counts; no tutorial does subwords, so there is no naive row) run ours
only, in the same run on the same corpus. Each pipeline runs in a fresh
process (as `textgen-preprocess` does), which also reports its peak RSS.
Wall time includes pipeline start-up (and for subwords, training the
model), not the process's imports.
"""

import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_preprocess import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from beam_preprocess import pipeline  # pylint: disable=wrong-import-position
from dataspec import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
import machine  # pylint: disable=wrong-import-position

_CORPUS_MB = flags.DEFINE_float("corpus_mb", 21, "Least corpus size in MB.")
_WORKERS = flags.DEFINE_integer("workers", 2, "DirectRunner workers.")
_WINDOW = flags.DEFINE_integer("window_length", 128, "Window length.")
_SHARED = flags.DEFINE_string(
    "shared_data", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "Folder with the corpora.")
_TOKENIZERS = flags.DEFINE_list("tokenizers", ["char", "word", "bpe", "unigram"],
                                "Tokenizers to run (bpe, unigram: ours only).")
_MODE = flags.DEFINE_string("mode", "multi_threading", "Our --direct_running_mode.")
_NAIVE_MODES = flags.DEFINE_list("naive_modes", ["multi_processing"],
                                 "Naive --direct_running_mode(s); the fastest counts (empty: ours only).")

_WORKER = flags.DEFINE_enum("worker", None, ["ours", "naive"],
                            "Internal: run one pipeline and print its result.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "char", "Internal: the worker's tokenizer.")
_CORPUS = flags.DEFINE_string("corpus", None, "Internal: the worker's corpus file.")
_OUT = flags.DEFINE_string("out", None, "Internal: the worker's output directory.")

_FILES = ("tinyshakespeare/input.txt", "ptb/ptb.train.txt",
          "frankenstein/frankenstein.txt", "wikitext-2/valid.txt",
          "wikitext-2/test.txt")


def build_corpus(path: str, min_bytes: int) -> int:
  data = b"".join(open(os.path.join(_SHARED.value, f), "rb").read() for f in _FILES)
  with open(path, "wb") as out:
    while out.tell() < min_bytes:
      out.write(data)
    return out.tell()


def pipeline_args(workers: int, mode: str):
  mode = mode if workers > 1 else "in_memory"
  return [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]


def run_naive(corpus: str, out_dir: str, spec, window_length: int, workers: int,
              mode: str) -> int:
  """The tutorial ported line by line to Beam. Returns windows written."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def tokens(line):
    tok = tokenizer_lib.Tokenizer(spec, vocab=list(tokenizer_lib.RESERVED_TOKENS))
    if spec.type == "char":
      return list(line + "\n")
    return [w for w in tok.split_words(line + "\n") if w != "\n"]

  def windows(all_ids):
    ids = [i for line in all_ids for i in line]
    size = window_length + 1
    for start in range(0, len(ids) - size + 1, window_length):
      yield ids[start:start + size]

  def to_example(window):
    return tf.train.Example(features=tf.train.Features(feature={
        "token_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=window))
    })).SerializeToString()

  opts = PipelineOptions(pipeline_args(workers, mode))
  with beam.Pipeline(runner=pipeline.choose_runner(opts), options=opts) as p:
    lines = p | "Read" >> beam.io.ReadFromText(corpus)
    toks = lines | "Tokenize" >> beam.Map(tokens)
    vocab = (toks | "Flat" >> beam.FlatMap(lambda t: t)
             | "Count" >> beam.combiners.Count.PerElement()
             | "Ids" >> beam.combiners.ToList()
             | "Dict" >> beam.Map(lambda kv: {t: i + 3 for i, (t, _) in enumerate(
                 sorted(kv, key=lambda x: (-x[1], x[0])))}))
    ids = toks | "Encode" >> beam.Map(lambda t, v: [v.get(x, 1) for x in t],
                                      v=beam.pvalue.AsSingleton(vocab))
    examples = (ids | "All" >> beam.combiners.ToList()
                | "Window" >> beam.FlatMap(windows)
                | "Example" >> beam.Map(to_example))
    _ = examples | "Write" >> beam.io.WriteToTFRecord(
        os.path.join(out_dir, "train"), file_name_suffix=".tfrecord.gz")
    _ = (examples | "CountWindows" >> beam.combiners.Count.Globally()
         | "Save" >> beam.Map(lambda n: open(os.path.join(out_dir, "n"), "w").write(str(n))))
  return int(open(os.path.join(out_dir, "n")).read())


def measure(worker: str, tok: str, mode: str, corpus: str, out_dir: str) -> dict:
  """Runs one pipeline in a fresh process: {"seconds", "windows", "peak_rss_mb"}.

  A process per pipeline, as `textgen-preprocess` runs: several pipelines in
  one process (this bench's first form) blew up by gigabytes inside Beam's
  in-memory shuffle in 4 of 38 runs, always a later pipeline of the process
  (docs/performance-log.md, "Preprocessing"); 60 single-pipeline processes
  never did.
  """
  return machine.run_worker(__file__, f"--worker={worker}", f"--tokenizer={tok}",
                            f"--mode={mode}", f"--corpus={corpus}", f"--out={out_dir}",
                            f"--workers={_WORKERS.value}",
                            f"--window_length={_WINDOW.value}")


def run_worker() -> None:
  """The --worker side of measure(): prints one JSON line."""
  spec = tokenizer_lib.TokenizerSpec(type=_TOKENIZER.value)
  start = time.perf_counter()
  if _WORKER.value == "ours":
    config = config_lib.PreprocessConfig(
        input=(_CORPUS.value,), output_dir=_OUT.value, tokenizer=spec,
        window_length=_WINDOW.value, split_mode="tail", validation_fraction=0.0)
    meta = pipeline.run(config, pipeline_args=pipeline_args(_WORKERS.value, _MODE.value))
    windows = meta.splits["train"].windows
  else:
    windows = run_naive(_CORPUS.value, _OUT.value, spec, _WINDOW.value, _WORKERS.value,
                        _MODE.value)
  print(json.dumps({"seconds": time.perf_counter() - start, "windows": windows,
                    "peak_rss_mb": machine.peak_rss_mb()}))


def main(_):
  if _WORKER.value:
    run_worker()
    return
  with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as work:
    corpus = os.path.join(work, "corpus.txt")
    size = build_corpus(corpus, int(_CORPUS_MB.value * 1e6))
    mb = size / 1e6
    print(f"corpus: {mb:.1f} MB, DirectRunner (FnApiRunner) with {_WORKERS.value} "
          f"worker(s) (ours: {_MODE.value}; naive: fastest of "
          f"{', '.join(_NAIVE_MODES.value) or 'none'}), window_length={_WINDOW.value}, "
          f"{os.cpu_count()} CPUs, one process per pipeline; {machine.describe()}")
    rows = []
    for tok in _TOKENIZERS.value:
      ours = measure("ours", tok, _MODE.value, corpus, os.path.join(work, f"ours-{tok}"))
      print(f"ours {tok}: {mb / ours['seconds']:.2f} MB/s, peak RSS "
            f"{ours['peak_rss_mb']:,.0f} MB", flush=True)
      row = [tok, mb / ours["seconds"], ours["windows"] / ours["seconds"], None, None, None]
      if not tokenizer_lib.TokenizerSpec(type=tok).is_subword:
        naive = [measure("naive", tok, mode, corpus, os.path.join(work, f"naive-{tok}-{mode}"))
                 for mode in _NAIVE_MODES.value]
        for mode, result in zip(_NAIVE_MODES.value, naive):
          print(f"naive {tok} {mode}: {mb / result['seconds']:.2f} MB/s, peak RSS "
                f"{result['peak_rss_mb']:,.0f} MB", flush=True)
        if naive:
          best = min(naive, key=lambda r: r["seconds"])
          row[3:] = (mb / best["seconds"], best["windows"] / best["seconds"],
                     best["seconds"] / ours["seconds"])
      rows.append(row)
    print(f"\n{machine.describe()} (after)")
    print("\n| tokenizer | ours MB/s | ours windows/s | naive MB/s | naive windows/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for tok, omb, ow, nmb, nw, ratio in rows:
      if nmb is None:
        print(f"| {tok} | {omb:.2f} | {ow:,.0f} | – | – | – |")
      else:
        print(f"| {tok} | {omb:.2f} | {ow:,.0f} | {nmb:.2f} | {nw:,.0f} | {ratio:.1f}x |")


if __name__ == "__main__":
  app.run(main)
