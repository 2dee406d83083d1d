"""tf.data input: TFRecord shards -> (inputs, targets) batches per replica.

Training order is a pure function of (seed, epoch): files shuffled, read
interleaved, windows shuffled in a buffer, all seeded. Resuming at step s of
an epoch rebuilds that epoch's dataset and skips s batches of records before
parsing, so no window is replayed or skipped after a restart.
"""

from typing import List

import tensorflow as tf

from dataspec import metadata as metadata_lib
from dataspec import paths
from dataspec import schema


def split_files(dataset_dir: str, meta: metadata_lib.DatasetMetadata, split: str) -> List[str]:
  dp = paths.DatasetPaths(dataset_dir)
  files = [dp.shard(name) for name in meta.splits[split].files]
  if not files:
    raise ValueError(f"--dataset_dir={dataset_dir} has no {split} files")
  return files


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


def _to_batches(ds, *, batch_size, parse):
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)  # (batch, L+1)
  ds = ds.map(schema.split_window, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def make_train_dataset(ctx, *, files, meta, global_batch_size: int, seed: int,
                       epoch: int, skip_batches: int, shuffle_buffer: int):
  """One epoch of training batches (repeated, so no replica runs dry).

  Args:
    ctx: the tf.distribute.InputContext (None outside a strategy).
    files: the train TFRecord paths.
    meta: dataset metadata (window length, dtype, compression).
    global_batch_size: windows per step over all replicas.
    seed, epoch: fix the order.
    skip_batches: batches of this epoch already trained on (resume).
    shuffle_buffer: windows in the shuffle buffer.

  Returns:
    A dataset of (inputs, targets), each int32 (per_replica_batch, L).
  """
  batch = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
  epoch_seed = seed * 100_003 + epoch
  ds = _records(files, compression=_compression(meta), ctx=ctx, shuffle_seed=epoch_seed)
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.repeat()
  if skip_batches:
    ds = ds.skip(skip_batches * batch)
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  return _to_batches(ds, batch_size=batch, parse=parse)


def make_eval_dataset(ctx, *, files, meta, global_batch_size: int):
  """Validation batches in file order, repeated (the caller fixes the count)."""
  batch = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
  ds = _records(files, compression=_compression(meta), ctx=ctx).repeat()
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  return _to_batches(ds, batch_size=batch, parse=parse)


def _compression(meta) -> str:
  return "GZIP" if meta.compression == "gzip" else ""
