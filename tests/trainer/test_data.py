"""The training input order: chained epochs, resume offsets."""

import numpy as np

from dataspec import metadata as metadata_lib
from trainer import data


def _batches(dataset_dir, **kwargs):
  meta = metadata_lib.load_dataset_metadata(str(dataset_dir))
  files = data.split_files(str(dataset_dir), meta, "train")
  ds = data.make_train_dataset(None, files=files, meta=meta, global_batch_size=16,
                               seed=3, steps_per_epoch=5, shuffle_buffer=100, **kwargs)
  return [inputs.numpy() for inputs, _ in ds]


def test_chained_epochs_are_the_epochs_built_alone(tiny_dataset):
  """Seven epochs chained in one dataset (a balanced tree of concatenations)
  give exactly the batches of each epoch built alone, in order; resuming at
  (epoch 2, batch 3) gives the tail of that sequence."""
  alone = [b for epoch in range(7)
           for b in _batches(tiny_dataset, start_epoch=epoch, skip_batches=0, num_epochs=1)]
  chained = _batches(tiny_dataset, start_epoch=0, skip_batches=0, num_epochs=7)
  assert len(chained) == len(alone) == 35
  for a, b in zip(chained, alone):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(alone[0], alone[5])  # epochs differ in order
  resumed = _batches(tiny_dataset, start_epoch=2, skip_batches=3, num_epochs=5)
  assert len(resumed) == 22
  for a, b in zip(resumed, alone[13:]):
    np.testing.assert_array_equal(a, b)


def test_concatenate_keeps_order_at_any_count():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for n in (1, 2, 3, 8, 21):
    parts = [tf.data.Dataset.range(10 * i, 10 * i + 3) for i in range(n)]
    got = [int(x) for x in data._concatenate(parts)]  # pylint: disable=protected-access
    assert got == [10 * i + j for i in range(n) for j in range(3)]


def test_datasets_run_without_tf_data_autotuning(tiny_dataset):
  """Both datasets turn tf.data's autotuning off (faster here, and one
  thread less that can stall an iterator's teardown: data.without_autotuning)."""
  meta = metadata_lib.load_dataset_metadata(str(tiny_dataset))
  train = data.make_train_dataset(
      None, files=data.split_files(str(tiny_dataset), meta, "train"), meta=meta,
      global_batch_size=16, seed=3, start_epoch=0, skip_batches=0, steps_per_epoch=5,
      num_epochs=2, shuffle_buffer=100)
  evaluation = data.make_eval_dataset(
      None, files=data.split_files(str(tiny_dataset), meta, "validation"), meta=meta,
      global_batch_size=16, steps=2)
  assert train.options().autotune.enabled is False
  assert evaluation.options().autotune.enabled is False


def test_eval_dataset_repeats_its_first_steps_batches(tiny_dataset):
  """The evaluation dataset is its first `steps` batches over and over, so
  one iterator serves every evaluation."""
  meta = metadata_lib.load_dataset_metadata(str(tiny_dataset))
  files = data.split_files(str(tiny_dataset), meta, "validation")
  ds = data.make_eval_dataset(None, files=files, meta=meta, global_batch_size=4, steps=3)
  batches = [inputs.numpy() for inputs, _ in ds.take(9)]
  for i in range(3, 9):
    np.testing.assert_array_equal(batches[i], batches[i % 3])
  assert not np.array_equal(batches[0], batches[1])


def test_an_epoch_is_steps_per_epoch_global_steps_on_two_replicas(tiny_dataset):
  """Under MirroredStrategy (2 replicas fed by one input pipeline) an epoch
  lasts steps_per_epoch global steps, each the global batch the dataset
  gives without a strategy, and a resume skips whole global steps. (An
  epoch of steps_per_epoch per-replica batches ran dry at half the steps,
  and resumed at the wrong window.)"""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  meta = metadata_lib.load_dataset_metadata(str(tiny_dataset))
  files = data.split_files(str(tiny_dataset), meta, "train")
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

  def global_batches(**kwargs):
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(ctx, files=files, meta=meta, global_batch_size=16,
                                            seed=3, steps_per_epoch=5, shuffle_buffer=100,
                                            **kwargs))
    return [np.concatenate([t.numpy() for t in strategy.experimental_local_results(inputs)])
            for inputs, _ in dist]

  alone = _batches(tiny_dataset, start_epoch=0, skip_batches=0, num_epochs=3)
  chained = global_batches(start_epoch=0, skip_batches=0, num_epochs=3)
  assert len(chained) == len(alone) == 15
  for a, b in zip(chained, alone):
    np.testing.assert_array_equal(a, b)
  resumed = global_batches(start_epoch=1, skip_batches=2, num_epochs=2)
  assert len(resumed) == 8
  for a, b in zip(resumed, alone[7:]):
    np.testing.assert_array_equal(a, b)
