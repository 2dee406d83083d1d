r"""The training input pipeline alone: local TFRecords -> batches, no model.

  python bench/bench_input.py [--corpus_mb=10] [--rounds=3] [--cores=1,2]
                              [--autotune=off,on]

How much host CPU does feeding one accelerator take? This bench builds a char
dataset (window 128) and a word dataset (window 35, PTB's) from the same
corpus with our own pipeline, gzip-compressed (the default) and uncompressed,
then runs `trainer.data.make_train_dataset` (the trainer's exact input code:
seeded file shuffle, interleaved reads, window shuffle buffer, batch, parse,
split into inputs/targets, prefetch) with no model behind it, and counts the
batches it delivers. The trainer turns tf.data's autotuning off
(trainer.data.without_autotuning); --autotune=off,on measures the pipeline
with it on again too.

Each measurement is a fresh process pinned to --cores CPUs (sched_setaffinity
before TensorFlow starts, so tf.data's thread pool and TensorFlow's op pools
size themselves to them), warmed up (shuffle buffer filled) for
--warmup_seconds, then timed for --seconds. It reports windows/s, tokens/s
(windows x window length), the CPU time the process used per wall second,
and windows and tokens per CPU-second: what one fully used host core
delivers. Rounds are interleaved (every configuration once per round) and
the median is printed; the 1-minute load average is printed before and
after.

The on-disk bytes per window are printed too: with --stream_gcs (TensorFlow's
own gs:// reader, which cannot be pointed at the GCS emulator) the network
must carry that many bytes per window; see docs/scaling.md.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=g-import-not-at-top,wrong-import-position

_CORPUS_MB = flags.DEFINE_float("corpus_mb", 10, "Least corpus size in MB.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are printed.")
_CORES = flags.DEFINE_list("cores", ["1", "2"], "CPU counts to pin the reader to.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Batch sizes (windows).")
_COMPRESSIONS = flags.DEFINE_list("compressions", ["gzip", "none"],
                                  "Dataset compressions to build and read.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement.")
_WARMUP = flags.DEFINE_float("warmup_seconds", 2.0, "Untimed seconds first.")
_SHUFFLE = flags.DEFINE_integer("shuffle_buffer", 10000, "The trainer's default.")
_AUTOTUNE = flags.DEFINE_list(
    "autotune", ["off"], "off: the trainer's pipeline (without tf.data's autotuning, see "
    "trainer.data.without_autotuning); on: with it again. --autotune=off,on compares them.")
_SHARED = flags.DEFINE_string(
    "shared_data", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "Folder with the corpora.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: one measurement, as JSON.")

_FILES = ("tinyshakespeare/input.txt", "ptb/ptb.train.txt",
          "frankenstein/frankenstein.txt", "wikitext-2/valid.txt",
          "wikitext-2/test.txt")
# trainer.train.MAX_CHAINED_EPOCHS: epochs chained in one dataset.
_CHAINED_EPOCHS = 20
# (name, tokenizer, window length): the recipes' choices.
_DATASETS = (("char", "char", 128), ("word", "word", 35))


def build_corpus(path: str, min_bytes: int) -> int:
  data = b"".join(open(os.path.join(_SHARED.value, f), "rb").read() for f in _FILES)
  with open(path, "wb") as out:
    while out.tell() < min_bytes:
      out.write(data)
    return out.tell()


def build_dataset(corpus: str, out_dir: str, tokenizer: str, window_length: int,
                  compression: str) -> None:
  from beam_preprocess import config as config_lib  # pylint: disable=g-import-not-at-top
  from beam_preprocess import pipeline  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.PreprocessConfig(
      input=(corpus,), output_dir=out_dir,
      tokenizer=tokenizer_lib.TokenizerSpec(type=tokenizer),
      window_length=window_length, split_mode="tail", validation_fraction=0.0,
      compression=compression, num_shards=8)
  pipeline.run(config, pipeline_args=["--direct_num_workers=2",
                                      "--direct_running_mode=multi_threading"])


def measure(job: dict) -> dict:
  """One measurement in this (fresh) process: see the module docstring."""
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:job["cores"]]))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dataspec import metadata as metadata_lib  # pylint: disable=g-import-not-at-top
  from trainer import data  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(job["cores"])
  tf.config.threading.set_inter_op_parallelism_threads(job["cores"])
  meta = metadata_lib.load_dataset_metadata(job["dataset_dir"])
  files = data.split_files(job["dataset_dir"], meta, "train")
  batch = job["batch_size"]
  steps_per_epoch = meta.splits["train"].windows // batch
  ds = data.make_train_dataset(
      None, files=files, meta=meta, global_batch_size=batch, seed=0,
      start_epoch=0, skip_batches=0, steps_per_epoch=steps_per_epoch,
      num_epochs=_CHAINED_EPOCHS, shuffle_buffer=job["shuffle_buffer"])
  if job["autotune"] == "on":
    options = tf.data.Options()
    options.autotune.enabled = True
    ds = ds.with_options(options)
  assert ds.options().autotune.enabled == (job["autotune"] == "on")
  it = iter(ds)

  def next_batch():
    nonlocal it
    try:
      return next(it)
    except StopIteration:  # as the trainer does: a new chain of epochs
      it = iter(ds)
      return next(it)

  start = time.perf_counter()
  while time.perf_counter() - start < job["warmup_seconds"]:
    next_batch()
  cpu0, wall0, batches = os.times(), time.perf_counter(), 0
  while time.perf_counter() - wall0 < job["seconds"]:
    inputs, _ = next_batch()
    batches += 1
  wall = time.perf_counter() - wall0
  cpu1 = os.times()
  cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
  assert inputs.shape == (batch, meta.window_length), inputs.shape
  windows = batches * batch
  return {"windows_per_s": windows / wall,
          "tokens_per_s": windows * meta.window_length / wall,
          "cpu_per_wall": cpu / wall,
          "windows_per_cpu_s": windows / cpu,
          "tokens_per_cpu_s": windows * meta.window_length / cpu,
          "rss_mb": machine.peak_rss_mb()}


def dataset_bytes(dataset_dir: str) -> tuple:
  """(bytes of the train shards, train windows, vocab size, token dtype)."""
  with open(os.path.join(dataset_dir, "metadata.json"), encoding="utf-8") as f:
    meta = json.load(f)
  size = sum(os.path.getsize(os.path.join(dataset_dir, name))
             for name in meta["splits"]["train"]["files"])
  return size, meta["splits"]["train"]["windows"], meta["vocab_size"], meta["token_dtype"]


def main(_):
  if _WORKER.value:
    print(json.dumps(measure(json.loads(_WORKER.value))))
    return
  cores = [int(c) for c in _CORES.value]
  if max(cores) > len(os.sched_getaffinity(0)):
    raise app.UsageError(f"--cores={_CORES.value}: this machine has "
                         f"{len(os.sched_getaffinity(0))} usable CPUs")
  print(f"machine: {machine.describe()}")
  work = tempfile.mkdtemp(prefix="bench-input-")
  corpus = os.path.join(work, "corpus.txt")
  size = build_corpus(corpus, int(_CORPUS_MB.value * 1e6))
  print(f"corpus: {size / 1e6:.1f} MB; datasets: 8 train shards each, shuffle buffer "
        f"{_SHUFFLE.value:,}, {_SECONDS.value:g} s timed after {_WARMUP.value:g} s warm-up, "
        f"{_ROUNDS.value} interleaved rounds (medians)")
  dirs = {}
  for name, tokenizer, window in _DATASETS:
    for compression in _COMPRESSIONS.value:
      out = os.path.join(work, f"{name}-{compression}")
      build_dataset(corpus, out, tokenizer, window, compression)
      dirs[(name, compression)] = (out, window)
      nbytes, windows, vocab, dtype = dataset_bytes(out)
      print(f"{name} ({compression}): vocab {vocab:,} ({dtype}), window {window}, "
            f"{windows:,} windows, {nbytes / 1e6:.1f} MB on disk = "
            f"{nbytes / windows:.0f} bytes/window")
  jobs = [(name, compression, int(b), c, autotune)
          for name, _, _ in _DATASETS for compression in _COMPRESSIONS.value
          for b in _BATCH_SIZES.value for c in cores for autotune in _AUTOTUNE.value]
  results = {job: [] for job in jobs}
  print(f"load average before: {machine.load_average():.2f}", flush=True)
  for _ in range(_ROUNDS.value):
    for job in jobs:
      name, compression, batch, c, autotune = job
      out, _ = dirs[(name, compression)]
      results[job].append(machine.run_worker(__file__, "--worker=" + json.dumps({
          "dataset_dir": out, "batch_size": batch, "cores": c, "autotune": autotune,
          "shuffle_buffer": _SHUFFLE.value, "seconds": _SECONDS.value,
          "warmup_seconds": _WARMUP.value})))
  print(f"load average after: {machine.load_average():.2f}\n")
  print("| dataset | compression | batch | cores | autotune | windows/s | tokens/s | CPU used "
        "| windows per CPU-s | tokens per CPU-s | peak RSS MB |")
  print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
  for job in jobs:
    med = {k: statistics.median(r[k] for r in results[job]) for k in results[job][0]}
    name, compression, batch, c, autotune = job
    print(f"| {name} | {compression} | {batch} | {c} | {autotune} | {med['windows_per_s']:,.0f} | "
          f"{med['tokens_per_s'] / 1e6:.2f}M | {med['cpu_per_wall']:.2f} | "
          f"{med['windows_per_cpu_s']:,.0f} | {med['tokens_per_cpu_s'] / 1e6:.2f}M | "
          f"{med['rss_mb']:.0f} |")
  print("\nratios (same run): gzip/none tokens per CPU-s, 2-core/1-core windows/s, "
        "autotune off/on windows/s")
  base = _AUTOTUNE.value[0]
  for name, _, _ in _DATASETS:
    for b in _BATCH_SIZES.value:
      def med(compression, c, key, name=name, b=b, autotune=base):
        return statistics.median(r[key] for r in results[(name, compression, int(b), c, autotune)])
      if {"off", "on"} <= set(_AUTOTUNE.value):
        for compression in _COMPRESSIONS.value:
          for c in cores:
            ratio = (med(compression, c, "windows_per_s", autotune="off")
                     / med(compression, c, "windows_per_s", autotune="on"))
            print(f"  {name} {compression} batch {b} {c} core(s): autotune off / on = "
                  f"{ratio:.2f}x")
      if {"gzip", "none"} <= set(_COMPRESSIONS.value):
        ratio = med("gzip", cores[0], "tokens_per_cpu_s") / med("none", cores[0], "tokens_per_cpu_s")
        print(f"  {name} batch {b}: gzip costs {1 / ratio:.2f}x the CPU of none ({cores[0]} core)")
      if len(cores) > 1:
        for compression in _COMPRESSIONS.value:
          scale = (med(compression, cores[-1], "windows_per_s")
                   / med(compression, cores[0], "windows_per_s"))
          print(f"  {name} {compression} batch {b}: {cores[-1]} cores / {cores[0]} = {scale:.2f}x")


if __name__ == "__main__":
  app.run(main)
