r"""Training throughput: ours against plain Keras and PyTorch, same run.

  python bench/bench_train.py [--rounds=3] [--steps=20] [--batch_sizes=64,256]

The reference char model (2x LSTM 256, embedding 64, the bundled corpus's 68
ids, window 128), all three on the same windows of the bundled corpus, each
measurement in a fresh process (so peak RSS is its own), the three
interleaved in every round (ours, keras, torch, ours, ...):

  ours   trainer.train.Trainer: the job's own compiled multi-step loop,
         tf.data from the preprocessed TFRecords, MirroredStrategy (the
         default), all-reduce + global-norm clipping, the LSTM's CPU path.
  keras  plain Keras: Sequential Embedding -> LSTM -> LSTM -> Dense, sparse
         categorical cross-entropy from logits, Adam, model.fit on a cached,
         shuffled tf.data dataset of the same windows, timed from its first
         step's start to its last step's end (see _step_clock).
  torch  PyTorch 2.13 (CPU build): Embedding -> nn.LSTM(2 layers) -> Linear,
         cross-entropy, Adam, batches gathered from the same windows
         (pip install -e '.[bench]').
  ours_gates
         ours with the per-step compiled gate ops and TensorFlow's MatMul
         inside TensorFlow loops instead of the whole-sequence ops (what
         ran on AVX-512 CPUs until the AVX-512 build, and runs without the
         AVX2 and AVX-512 builds; only differs from
         ours where ours runs the whole-sequence ops, see
         trainer/lstm_ops.runs_whole_sequences; not measured by default).
  ours_tfops
         ours with the LSTM's gate math as TensorFlow ops instead of the
         compiled ops of trainer/lstm_ops.cc (what runs where they are not
         built; ours needs them built: python -m trainer.lstm_ops).
  ours_tfmatmul (not measured by default)
         ours with TensorFlow's MatMul for the row blocks' big products
         (input GEMM, weight and input gradients) instead of TextgenMatMul
         (trainer/fused_lstm._matmul); only differs where the whole-sequence
         ops run.
  ours_malloc, keras_bfc (not measured by default)
         ours with TensorFlow's default CPU allocator (malloc) instead of
         the BFC allocator the trainer asks for (dataspec/tf_allocator.py);
         plain Keras with the BFC allocator.
  ours_mmap (not measured by default)
         ours with glibc's per-allocation mmap left on (no
         trainer/heap.keep_freed_memory).
  ours_distiter (not measured by default)
         ours reading its batches through tf.distribute's iterator, as the
         trainer did until 2026-12-03 (see trainer/train.Trainer._iterate).
  ours_bf16, torch_bf16 (and ours_bf16_tfops, not measured by default)
         the same two in bfloat16 mixed precision (float32 weights and
         loss): ours with --mixed_precision (mixed_bfloat16 on a CPU),
         PyTorch under torch.autocast("cpu", torch.bfloat16). Fast only on
         CPUs with bfloat16 instructions (AMX, AVX512_BF16).

Prints the machine, its 1-minute load average before and after, TensorFlow's
matmul peak at the LSTM's GEMM shapes, then per batch size the median target
tokens/s of each (and every round's), the ratios, and peak memory: RSS (the
largest of the timed rounds) and anonymous memory, without shared
libraries' pages, whose count depends on the host's page cache, from one
more untimed run of each (sampling it slows a run; see machine.run_worker).
"""

import functools
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=wrong-import-position

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps first (tracing, caches).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["64", "256"], "Global batch sizes.")
_IMPLS = flags.DEFINE_list("impls", ["ours", "keras", "torch", "ours_tfops", "ours_bf16",
                                     "torch_bf16"],
                           "What to measure. By default the *_bf16 ones only on "
                           "CPUs with bfloat16 units (AMX, AVX512_BF16).")
_WORKER = flags.DEFINE_string("worker", None, "Internal: measure one implementation.")
_BATCH = flags.DEFINE_integer("batch", 64, "Internal: the worker's batch size.")
_DATA = flags.DEFINE_string("data", None, "Internal: the worker's dataset directory.")

EMBEDDING, UNITS, WINDOW = 64, 256, 128


def prepare(work: str) -> str:
  """The bundled corpus as a char dataset (window 128) and windows.npy."""
  from beam_preprocess import config as pre_config  # pylint: disable=g-import-not-at-top
  from beam_preprocess import pipeline  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer  # pylint: disable=g-import-not-at-top
  from trainer import data  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dataspec import schema  # pylint: disable=g-import-not-at-top
  out = os.path.join(work, "data")
  meta = pipeline.run(pre_config.PreprocessConfig(
      input=(os.path.join(REPO, "data", "tinyshakespeare.txt"),), output_dir=out,
      tokenizer=tokenizer.TokenizerSpec(type="char"), window_length=WINDOW,
      split_mode="tail", validation_fraction=0.05), pipeline_args=["--direct_num_workers=1"])
  parse = schema.make_parse_fn(window_length=WINDOW, token_dtype=meta.token_dtype)
  files = data.split_files(out, meta, "train")
  windows = np.concatenate([parse(b).numpy() for b in tf.data.TFRecordDataset(
      files, compression_type="GZIP").batch(4096)])
  np.save(os.path.join(out, "windows.npy"), windows)
  return out


def flops_per_token(vocab) -> float:
  """Training FLOPs per target token: 3x the forward multiply-adds x 2."""
  forward = 2 * ((EMBEDDING + UNITS) + 2 * UNITS) * 4 * UNITS + 2 * UNITS * vocab
  return 3 * forward


# ---- workers (each in its own process) ---------------------------------------

def work_ours(batch, data_dir, steps, warmup, *, mixed_precision=False, gate_ops=True,
              sequence_ops=True, bfc=True, matmul_ops=True, heap_tuning=True,
              own_iterator=True):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dataspec import tf_allocator  # pylint: disable=g-import-not-at-top
  from trainer import config as train_config  # pylint: disable=g-import-not-at-top
  from trainer import fused_lstm  # pylint: disable=g-import-not-at-top
  from trainer import heap  # pylint: disable=g-import-not-at-top
  from trainer import lstm_ops  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  if heap_tuning:
    heap.keep_freed_memory()  # as train.run() does, and before any op
  if not bfc:
    os.environ[tf_allocator.BFC_ENV] = "false"
  tf_allocator.use_bfc_allocator()
  if not sequence_ops or not gate_ops:
    fused_lstm._sequence_ops = lambda dtype: None  # pylint: disable=protected-access
  if not matmul_ops:
    fused_lstm._matmul_ops = lambda dtype: None  # pylint: disable=protected-access
  if not gate_ops:
    fused_lstm._gate_ops = lambda dtype: None  # pylint: disable=protected-access
  elif lstm_ops.load() is None:
    raise SystemExit("ours needs the compiled gate ops: python -m trainer.lstm_ops")
  if not own_iterator:  # before the Trainer builds its step functions
    train.Trainer._iterate = lambda self, fn: iter(  # pylint: disable=protected-access
        self.strategy.distribute_datasets_from_function(fn))
    train.Trainer._per_replica = lambda self, batches: batches  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as tmp:
    trainer = train.Trainer(train_config.TrainConfig(
        dataset_dir=data_dir, model_dir=tmp, embedding_dim=EMBEDDING, units=UNITS,
        num_layers=2, batch_size=batch, train_steps=100_000, shuffle_buffer=1000,
        mixed_precision=mixed_precision))
    iterator, _ = trainer._train_iterator(0)  # pylint: disable=protected-access
    float(trainer._train_loop(iterator, tf.constant(warmup))[0])  # pylint: disable=protected-access
    start = time.perf_counter()
    float(trainer._train_loop(iterator, tf.constant(steps))[0])  # pylint: disable=protected-access
    elapsed = time.perf_counter() - start
    trainer.store.close()
    trainer.best_store.close()
  return elapsed


def work_keras(batch, data_dir, steps, warmup, *, bfc=False):
  if bfc:
    from dataspec import tf_allocator  # pylint: disable=g-import-not-at-top
    tf_allocator.use_bfc_allocator()  # before any op
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  windows = np.load(os.path.join(data_dir, "windows.npy"))
  vocab = json.load(open(os.path.join(data_dir, "metadata.json")))["vocab_size"]
  model = keras.Sequential([
      keras.Input((WINDOW,), dtype="int32"), keras.layers.Embedding(vocab, EMBEDDING),
      keras.layers.LSTM(UNITS, return_sequences=True),
      keras.layers.LSTM(UNITS, return_sequences=True), keras.layers.Dense(vocab)])
  model.compile(optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  ds = (tf.data.Dataset.from_tensor_slices((windows[:, :-1], windows[:, 1:])).cache()
        .shuffle(10_000, seed=0).repeat().batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE))
  model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
  clock = _step_clock(keras)
  model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
  return clock.end - clock.start


def _step_clock(keras):
  """A Keras callback whose .end - .start is the time from the start of
  fit()'s first step to the end of its last, as ours and torch are timed.

  Not fit()'s own wall time: fit() returns only after its tf.data iterator is
  torn down, and that waits for tf.data's autotuning thread to wake (its
  period doubles from 10 ms up to 60 s). A fit() of 20 steps returned exactly
  20.47 s (10 ms x (2^11 - 1)) or 40.95 s after it began, however long its
  steps took: Keras's quantized 8,005 and 16,005 tokens/s of earlier runs.
  """

  class StepClock(keras.callbacks.Callback):

    def on_train_batch_begin(self, batch, logs=None):
      if batch == 0:
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      float(logs["loss"])  # the step has finished
      self.end = time.perf_counter()

  return StepClock()


def work_torch(batch, data_dir, steps, warmup, *, bfloat16=False):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  windows = torch.from_numpy(np.load(os.path.join(data_dir, "windows.npy")).astype(np.int64))
  vocab = json.load(open(os.path.join(data_dir, "metadata.json")))["vocab_size"]

  class Model(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = torch.nn.Embedding(vocab, EMBEDDING)
      self.lstm = torch.nn.LSTM(EMBEDDING, UNITS, num_layers=2, batch_first=True)
      self.output = torch.nn.Linear(UNITS, vocab)

    def forward(self, ids):
      return self.output(self.lstm(self.embedding(ids))[0])

  model = Model()
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
  generator = torch.Generator().manual_seed(0)

  def step():
    rows = windows[torch.randint(len(windows), (batch,), generator=generator)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
      logits = model(rows[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab),
                                             rows[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss

  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  float(loss)
  return time.perf_counter() - start


WORKERS = {"ours": work_ours, "keras": work_keras, "torch": work_torch,
           "ours_gates": functools.partial(work_ours, sequence_ops=False),
           "ours_tfops": functools.partial(work_ours, gate_ops=False),
           "ours_malloc": functools.partial(work_ours, bfc=False),
           "ours_mmap": functools.partial(work_ours, heap_tuning=False),
           "ours_distiter": functools.partial(work_ours, own_iterator=False),
           "ours_tfmatmul": functools.partial(work_ours, matmul_ops=False),
           "keras_bfc": functools.partial(work_keras, bfc=True),
           "ours_bf16": functools.partial(work_ours, mixed_precision=True),
           "ours_bf16_tfops": functools.partial(work_ours, mixed_precision=True,
                                                gate_ops=False),
           "torch_bf16": functools.partial(work_torch, bfloat16=True)}
# The ratios printed: each (numerator, denominator) whose both were measured.
RATIOS = (("ours", "keras"), ("ours", "torch"), ("ours", "ours_gates"), ("ours", "ours_tfops"),
          ("ours", "ours_malloc"), ("ours", "ours_mmap"), ("ours", "ours_distiter"),
          ("ours", "ours_tfmatmul"), ("ours", "keras_bfc"),
          ("ours_bf16", "torch_bf16"), ("ours_bf16", "ours"),
          ("ours_bf16", "ours_bf16_tfops"))


def run_worker(impl, batch, data_dir, *, anonymous_memory=False):
  """Measures in a fresh process: {"tokens_per_second", "peak_rss_mb"}, and
  with `anonymous_memory` "peak_anon_mb" (which slows the run: its speed
  is not used)."""
  return machine.run_worker(
      __file__, f"--worker={impl}", f"--batch={batch}", f"--data={data_dir}",
      f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
      anonymous_memory=anonymous_memory)


def main(_):
  if _WORKER.value:
    seconds = WORKERS[_WORKER.value](_BATCH.value, _DATA.value, _STEPS.value, _WARMUP.value)
    print(json.dumps({
        "tokens_per_second": _STEPS.value * _BATCH.value * WINDOW / seconds,
        "peak_rss_mb": machine.peak_rss_mb()}))
    return
  print(machine.describe())
  impls, left_out = machine.measurable_impls(_IMPLS.value, explicit=_IMPLS.present)
  if left_out:
    print(left_out)
  with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
    data_dir = prepare(work)
    vocab = json.load(open(os.path.join(data_dir, "metadata.json")))["vocab_size"]
    batches = [int(b) for b in _BATCHES.value]
    peaks = {}
    for batch in batches:
      peaks.update(machine.peak_report(machine.lstm_gemm_shapes(
          batch=batch, embedding=EMBEDDING, units=UNITS, vocab=vocab).items()))
    print("TensorFlow float32 matmul peak (best of 5): " +
          ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    results = {(impl, b): [] for impl in impls for b in batches}
    rss = {}
    for round_index in range(_ROUNDS.value):
      for batch in batches:
        for impl in impls:
          result = run_worker(impl, batch, data_dir)
          tokens, peak = result["tokens_per_second"], result["peak_rss_mb"]
          results[impl, batch].append(tokens)
          rss[impl, batch] = max(rss.get((impl, batch), 0), peak)
          print(f"round {round_index + 1} batch {batch} {impl}: {tokens:,.0f} tokens/s, "
                f"peak RSS {peak:,.0f} MB", flush=True)
    anon = machine.anonymous_peaks(
        lambda impl, batch: run_worker(impl, batch, data_dir, anonymous_memory=True),
        impls, batches)
    print(f"\n{machine.describe()} (after)")
    flops = flops_per_token(vocab)
    print(f"\nmodel: 2x LSTM {UNITS}, embedding {EMBEDDING}, vocab {vocab}, window "
          f"{WINDOW}; {flops / 1e6:.2f} MFLOP per target token; "
          f"{_ROUNDS.value} rounds of {_STEPS.value} steps, medians\n")
    pairs = [(a, b) for a, b in RATIOS if a in impls and b in impls]
    print("| batch | " + " | ".join(f"{i} tokens/s" for i in impls) + " | " +
          " | ".join(f"{a} / {b}" for a, b in pairs) + " | " +
          " | ".join(f"{i} peak RSS" for i in impls) + " | ours GFLOP/s |")
    print("|---:|" + "---:|" * (len(impls) + len(pairs) + len(impls) + 1))
    for batch in batches:
      med = {i: statistics.median(results[i, batch]) for i in impls}
      print(f"| {batch} | " + " | ".join(f"{med[i]:,.0f}" for i in impls) + " | " +
            " | ".join(f"{med[a] / med[b]:.2f}x" for a, b in pairs) + " | " +
            " | ".join(f"{rss[i, batch]:,.0f} MB" for i in impls) + " | " +
            (f"{med['ours'] * flops / 1e9:.0f} |" if "ours" in med else "- |"))
    machine.print_memory_table(impls, batches, rss, anon,
                               (("ours", "torch"), ("ours_bf16", "torch_bf16")))
    print("\nevery round (tokens/s): " + "; ".join(
        f"{i}@{b}: " + ", ".join(f"{v:,.0f}" for v in results[i, b])
        for b in batches for i in impls))


if __name__ == "__main__":
  app.run(main)
