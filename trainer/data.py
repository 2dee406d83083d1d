"""tf.data input: TFRecord shards -> (inputs, targets) batches per replica.

Training order is a pure function of (seed, epoch): files shuffled, read
interleaved, windows shuffled in a buffer, all seeded. Resuming at step s of
an epoch starts that epoch's dataset and skips s batches of records before
parsing, so no window is replayed or skipped after a restart.
"""

import os
from typing import List

import numpy as np
import tensorflow as tf

from dataspec import metadata as metadata_lib
from dataspec import paths
from dataspec import schema
from dataspec import storage


def split_files(dataset_dir: str, meta: metadata_lib.DatasetMetadata, split: str) -> List[str]:
  dp = paths.DatasetPaths(dataset_dir)
  files = [dp.shard(name) for name in meta.splits[split].files]
  if not files:
    raise ValueError(f"--dataset_dir={dataset_dir} has no {split} files")
  return files


def stage_files(files: List[str], local_dir: str) -> List[str]:
  """Copies gs:// shards to `local_dir` once (kept across restarts of the
  same run); local paths are returned unchanged.

  Reading local files keeps the input pipeline fast and works with any GCS
  endpoint (TensorFlow's own gs:// reader ignores STORAGE_EMULATOR_HOST).
  The dataset must fit on local disk; --stream_gcs reads gs:// directly.
  """
  out = []
  for path in files:
    if not storage.is_gcs(path):
      out.append(path)
      continue
    bucket, name = storage.split_gcs(path)
    local = os.path.join(local_dir, bucket, name)
    if not os.path.exists(local):
      storage.download_file(path, local)
    out.append(local)
  return out


def _records(files, *, compression, ctx, shuffle_seed=None):
  """Records of `files`, this input pipeline's share of them."""
  ds = tf.data.Dataset.from_tensor_slices(files)
  shard_files = ctx is not None and ctx.num_input_pipelines > 1 and len(files) >= ctx.num_input_pipelines
  if shard_files:
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
  if shuffle_seed is not None:
    ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=False)
  ds = ds.interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type=compression,
                                        buffer_size=1 << 20),
      cycle_length=min(len(files), 8), block_length=16,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if ctx is not None and ctx.num_input_pipelines > 1 and not shard_files:
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
  return ds


def _to_batches(ds, *, batch_size, parse, drop_remainder=True):
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)  # (batch, L+1)
  ds = ds.map(schema.split_window, num_parallel_calls=tf.data.AUTOTUNE)
  return without_autotuning(ds.prefetch(tf.data.AUTOTUNE))


def without_autotuning(ds):
  """`ds` without tf.data's autotuning: AUTOTUNE's parallelism is then
  fixed at its starting value, the CPU count but at most 16 (TensorFlow's
  GetAutotuneDefaultParallelism; one core already delivers 15-25M tokens/s
  here), and prefetch sizes its buffer on its own.

  bench/bench_input.py, 2 cores of the AMD EPYC VM (2026-12-03): this
  pipeline delivered 1.34-1.40x the windows per second without it (char
  196,625 against 144,833 windows/s on one core, 289,271 against 213,990
  on two). It also takes away one of the threads that can stall an
  iterator's teardown: autotuning's thread sleeps for a period that doubles
  from 10 ms to 60 s, and in TensorFlow 2.21 the teardown sometimes waits
  for it to wake (a fit() of 20 steps returned exactly 20.47 s after it
  began, and dropping the trainer's iterator after 60 s of training took
  24 s). tf.distribute's per-device iterators keep their own autotuning
  (their options are not ours to set), so the trainer does without them
  (Trainer._iterate): dropping its iterators took 0.16-0.20 s, with one
  CPU device or two (2026-12-03).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def _replicas_per_pipeline(ctx) -> int:
  """How many replicas one input pipeline feeds, one batch each per step:
  all the replicas of its worker."""
  return ctx.num_replicas_in_sync // ctx.num_input_pipelines if ctx else 1


def make_train_dataset(ctx, *, files, meta, global_batch_size: int, seed: int,
                       start_epoch: int, skip_batches: int, steps_per_epoch: int,
                       num_epochs: int, shuffle_buffer: int):
  """Training batches from (start_epoch, skip_batches) for `num_epochs` epochs.

  Epoch e is its own seeded order of exactly `steps_per_epoch` batches per
  replica (records repeat inside an epoch if a worker's share of the files
  is short, so no replica runs dry). An input pipeline feeds each replica
  of its worker one batch per step, so its epoch is steps_per_epoch x
  replicas-per-pipeline batches (with 2 replicas per worker, an epoch of
  only steps_per_epoch batches ran dry at half the steps the trainer
  expected, and a resume skipped half of what had been read: fixed
  2026-12-03). Epochs follow each other inside one
  dataset, so the training loop rarely re-creates its iterator (a new
  tf.distribute iterator retraced the step function: about 30 s on 2
  cores; the trainer now reads the dataset's own, see Trainer._iterate).

  Args:
    ctx: the tf.distribute.InputContext (None outside a strategy).
    files: the train TFRecord paths.
    meta: dataset metadata (window length, dtype, compression).
    global_batch_size: windows per step over all replicas.
    seed: fixes every epoch's order.
    start_epoch, skip_batches: where to resume.
    steps_per_epoch: batches in an epoch.
    num_epochs: epochs to chain, counting the (partial) first one.
    shuffle_buffer: windows in the shuffle buffer.

  Returns:
    A dataset of (inputs, targets), each int32 (per_replica_batch, L).
  """
  batch = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
  step_records = _replicas_per_pipeline(ctx) * batch  # what one step reads here
  compression = _compression(meta)

  def epoch_records(epoch: int, skip: int):
    # Python-int seeds: a tensor seed breaks shuffle() when the global seed is
    # 0 (tf's get_seed compares the pair with (0, 0)).
    epoch_seed = seed * 100_003 + epoch
    ds = _records(files, compression=compression, ctx=ctx, shuffle_seed=epoch_seed)
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    return ds.repeat().skip(skip * step_records).take((steps_per_epoch - skip) * step_records)

  epochs = [epoch_records(start_epoch, skip_batches)]
  epochs += [epoch_records(e, 0) for e in range(start_epoch + 1, start_epoch + num_epochs)]
  ds = _concatenate(epochs)
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  return _to_batches(ds, batch_size=batch, parse=parse)


def _concatenate(datasets):
  """The datasets one after another, as a balanced tree of concatenations.

  Every element passes through each concatenation above it, so a chain of
  n (a.concatenate(b).concatenate(c)...) costs O(n) per element: at 20
  epochs it halved the input pipeline's rate (bench/bench_input.py); a
  balanced tree costs O(log n). Same order either way.
  """
  if len(datasets) == 1:
    return datasets[0]
  mid = len(datasets) // 2
  return _concatenate(datasets[:mid]).concatenate(_concatenate(datasets[mid:]))


def make_eval_dataset(ctx, *, files, meta, global_batch_size: int, steps: int):
  """Evaluation batches: the first `steps` global batches of the split in
  file order (records repeat where a pipeline's share is short), then the
  same batches again, without end.

  So one iterator serves every evaluation (each takes `steps`). A fresh
  iterator per evaluation cost 0.1-0.2 s to build and often 0.3 s at its
  teardown (see without_autotuning): 6 evaluation steps at batch 64 on 2
  cores took 1.36-1.47 s each that way, 0.95-1.0 s now.
  """
  batch = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
  ds = _records(files, compression=_compression(meta), ctx=ctx).repeat()
  ds = ds.take(steps * _replicas_per_pipeline(ctx) * batch).repeat()
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  return _to_batches(ds, batch_size=batch, parse=parse)


def unigram_log_probs(files, meta, *, max_tokens: int) -> np.ndarray:
  """log p(token) over the first `max_tokens` target tokens of `files` (in
  file order, so every worker gets the same answer), add-one smoothed:
  float32 (vocab_size,)."""
  length = meta.window_length
  batch = max(1, min(1024, max_tokens // length))
  ds = _records(files, compression=_compression(meta), ctx=None)
  ds = ds.take(max(1, max_tokens // length))
  parse = schema.make_parse_fn(window_length=length, token_dtype=meta.token_dtype)
  counts = np.ones(meta.vocab_size, np.float64)
  for _, targets in _to_batches(ds, batch_size=batch, parse=parse, drop_remainder=False):
    counts += np.bincount(targets.numpy().ravel(), minlength=meta.vocab_size)
  return np.log(counts / counts.sum()).astype(np.float32)


def _compression(meta) -> str:
  return "GZIP" if meta.compression == "gzip" else ""
