"""Training under MirroredStrategy with 2 logical CPU devices."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dataspec import export as export_lib
from dataspec import metadata as M
from dataspec import paths
from dataspec import serving
from dataspec import tokenizer as T
from trainer import config as config_lib
from trainer import model as model_lib
from trainer import optim
from trainer import train
from testutil import BEAM_ARGS
from conftest import SMALL_MODEL


def test_two_replicas_loss_goes_down_checkpoint_and_export(tiny_run):
  model_dir, result, before, trainer = tiny_run
  assert trainer.replicas == 2
  assert isinstance(trainer.strategy, tf.distribute.MirroredStrategy)
  assert result["step"] == 40
  assert result["validation"]["loss"] < before - 0.5
  assert os.path.exists(model_dir / "checkpoints" / "ckpt-40.index")
  assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-40")
  assert json.loads((model_dir / "config.json").read_text())["batch_size"] == 16
  assert (model_dir / "run.json").exists()
  assert list((model_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
  spec, weights, meta, vocab, training = export_lib.load_export(str(model_dir / "export"))
  assert spec.vocab_size == meta.vocab_size == len(vocab)
  assert training["replicas"] == 2 and training["exported_step"] in (20, 40)


def _serving_logits(lm, ids, lengths):
  """LanguageModel's logits at every position (batch, time, vocab)."""
  h, c = lm._zero_state(ids.shape[0])  # pylint: disable=protected-access
  w = lm._read_weights()  # pylint: disable=protected-access
  outputs, _, _ = lm._sequence(tf.constant(ids), tf.constant(lengths), h, c, w)  # pylint: disable=protected-access
  return tf.transpose(lm._logits(outputs, w), [1, 0, 2]).numpy()  # pylint: disable=protected-access


def _stepped_logits(lm, ids):
  """LanguageModel's logits at every position, one decode step at a time."""
  h, c = lm._zero_state(ids.shape[0])  # pylint: disable=protected-access
  h, c = tuple(tf.unstack(h)), tuple(tf.unstack(c))
  w = lm._read_weights()  # pylint: disable=protected-access
  logits = []
  for t in range(ids.shape[1]):
    step_logits, h, c = lm._step(tf.constant(ids[:, t]), h, c, w)  # pylint: disable=protected-access
    logits.append(step_logits.numpy())
  return np.stack(logits, axis=1)


@pytest.mark.parametrize("input_table", [True, False])
def test_exported_model_matches_the_keras_model(tiny_run, input_table, monkeypatch):
  """The SavedModel's LSTM (dataspec.serving) gives the training model's
  logits, over a prompt and step by step, with the bottom layer's input
  table and without it; so does the exported model.keras."""
  import keras
  model_dir, _, _, trainer = tiny_run
  spec, weights, meta, vocab, _ = export_lib.load_export(str(model_dir / "export"))
  keras_model = model_lib.build_model(spec=spec)
  model_lib.load_weights(keras_model, spec, weights)
  ids = np.random.default_rng(0).integers(3, spec.vocab_size, size=(3, 20)).astype(np.int32)
  want = keras_model(ids).numpy()  # (3, 20, vocab)
  np.testing.assert_allclose(
      want, trainer.model(ids).numpy(), atol=1e-5)  # the best checkpoint is restored
  if not input_table:
    monkeypatch.setattr(serving, "INPUT_TABLE_MAX_FLOATS", 0)
  lm = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)
  assert (lm._input_table is not None) == input_table  # pylint: disable=protected-access
  got = _serving_logits(lm, ids, np.full(3, 20, np.int32))
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(_stepped_logits(lm, ids), want, atol=1e-4)
  # textgen-generate --precision=bfloat16: products in bfloat16, close to it.
  lm16 = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab, precision="bfloat16")
  got16 = _serving_logits(lm16, ids, np.full(3, 20, np.int32))
  assert not np.array_equal(got16, got)
  np.testing.assert_allclose(got16, want, atol=0.02 * np.abs(want).max())
  exported = keras.saving.load_model(str(model_dir / "export" / "model.keras"))
  np.testing.assert_allclose(exported(ids).numpy(), want, atol=1e-5)


def test_tied_embeddings_with_projection_export():
  spec = export_lib.ModelSpec(vocab_size=50, embedding_dim=8, units=16, num_layers=1,
                              projection_dim=8, tie_embeddings=True)
  model = model_lib.build_model(spec=spec)
  model_lib.set_output_bias(model, np.linspace(-1, 1, 50))
  weights = model_lib.export_weights(model, spec)
  np.testing.assert_array_equal(weights["output/kernel"], weights["embedding"].T)
  np.testing.assert_allclose(weights["output/bias"], np.linspace(-1, 1, 50), atol=1e-6)
  assert "output_bias" in [layer.name for layer in model.layers]
  ids = np.arange(3, 13, dtype=np.int32)[None]
  vocab = list(T.RESERVED_TOKENS) + [chr(97 + i) for i in range(47)]
  lm = serving.LanguageModel(spec, weights, T.TokenizerSpec(type="char"), vocab)
  np.testing.assert_allclose(_serving_logits(lm, ids, np.array([10], np.int32)),
                             model(ids).numpy(), atol=1e-4)
  lm16 = serving.LanguageModel(spec, weights, T.TokenizerSpec(type="char"), vocab,
                               precision="bfloat16")  # the projection too
  want = model(ids).numpy()
  np.testing.assert_allclose(_serving_logits(lm16, ids, np.array([10], np.int32)),
                             want, atol=0.02 * np.abs(want).max())
  rebuilt = model_lib.build_model(spec=spec)
  model_lib.load_weights(rebuilt, spec, weights)
  np.testing.assert_allclose(rebuilt(ids).numpy(), model(ids).numpy(), atol=1e-6)


def test_schedule_by_example():
  s = optim.WarmupDecay(peak=1.0, warmup_steps=10, total_steps=110, schedule="cosine",
                        floor_ratio=0.1)
  got = [float(s(x)) for x in (0, 5, 10, 60, 110)]
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_mismatched_vocabulary_is_refused(tiny_run, tiny_corpus, tmp_path):
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  from dataspec import tokenizer
  model_dir = tiny_run[0]
  other = tmp_path / "word"
  pipeline.run(pre_config.PreprocessConfig(
      input=(str(tiny_corpus),), output_dir=str(other),
      tokenizer=tokenizer.TokenizerSpec(type="word"), window_length=32,
      split_mode="tail", validation_fraction=0.1), pipeline_args=BEAM_ARGS)
  config = config_lib.TrainConfig(dataset_dir=str(other), model_dir=str(model_dir),
                                  train_steps=50, **SMALL_MODEL)
  with pytest.raises(ValueError, match="vocab_fingerprint"):
    train.run(config)


def test_other_subword_model_is_refused(tiny_corpus, tmp_path):
  """Same tokenizer options and size, another SentencePiece model: resuming
  on it is refused, and so is a dataset whose tokenizer.model was swapped."""
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  from dataspec import tokenizer
  datasets = []
  for min_count in (1, 3):
    datasets.append(tmp_path / f"bpe{min_count}")
    pipeline.run(pre_config.PreprocessConfig(
        input=(str(tiny_corpus),), output_dir=str(datasets[-1]),
        tokenizer=tokenizer.TokenizerSpec(type="bpe"), window_length=16,
        split_mode="tail", validation_fraction=0.1, max_vocab_size=400,
        min_count=min_count), pipeline_args=BEAM_ARGS)
  model_dir = tmp_path / "model"
  small = dict(SMALL_MODEL, units=8, embedding_dim=8, strategy="one_device")
  train.run(config_lib.TrainConfig(dataset_dir=str(datasets[0]), model_dir=str(model_dir),
                                   train_steps=2, **small))
  with pytest.raises(ValueError, match="vocab_fingerprint"):
    train.run(config_lib.TrainConfig(dataset_dir=str(datasets[1]),
                                     model_dir=str(model_dir), train_steps=4, **small))
  (datasets[0] / "tokenizer.model").write_bytes(
      (datasets[1] / "tokenizer.model").read_bytes())
  with pytest.raises(ValueError, match="tokenizer.model does not match"):
    train.run(config_lib.TrainConfig(dataset_dir=str(datasets[0]),
                                     model_dir=str(model_dir), train_steps=4, **small))


def test_bad_flags_give_clear_errors(tiny_dataset, tmp_path):
  with pytest.raises(ValueError, match="--batch_size must be positive"):
    config_lib.TrainConfig(dataset_dir="d", model_dir="m", batch_size=0)
  with pytest.raises(ValueError, match="--strategy"):
    config_lib.TrainConfig(dataset_dir="d", model_dir="m", strategy="tpu")
  with pytest.raises(ValueError, match="--dropout"):
    config_lib.TrainConfig(dataset_dir="d", model_dir="m", dropout=1.0)
  with pytest.raises(ValueError, match="--mixed_precision_dtype=bfloat16 needs --mixed_precision"):
    config_lib.TrainConfig(dataset_dir="d", model_dir="m", mixed_precision_dtype="bfloat16")
  with pytest.raises(ValueError, match="--mixed_precision_dtype"):
    config_lib.TrainConfig(dataset_dir="d", model_dir="m", mixed_precision=True,
                           mixed_precision_dtype="float8")
  kw = dict(SMALL_MODEL, batch_size=15)
  config = config_lib.TrainConfig(dataset_dir=str(tiny_dataset),
                                  model_dir=str(tmp_path / "m"), **kw)
  with pytest.raises(ValueError, match="--batch_size=15 is not divisible by the 2 replicas"):
    train.Trainer(config)
  config = config_lib.TrainConfig(dataset_dir=str(tmp_path / "nowhere"),
                                  model_dir=str(tmp_path / "m"), **SMALL_MODEL)
  with pytest.raises(M.IncompleteDatasetError, match="--dataset_dir=.*not a complete dataset"):
    train.Trainer(config)
  assert not os.path.exists(tmp_path / "m" / "checkpoints")


def test_test_split_is_evaluated_at_export(tmp_path):
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  from dataspec import tokenizer
  from testutil import shakespeare_text
  text = shakespeare_text(40_000)
  for name, part in (("train.txt", text[:30_000]), ("valid.txt", text[30_000:35_000]),
                     ("test.txt", text[35_000:])):
    (tmp_path / name).write_text(part)
  data_dir = tmp_path / "data"
  pipeline.run(pre_config.PreprocessConfig(
      input=(str(tmp_path / "train.txt"),), output_dir=str(data_dir),
      tokenizer=tokenizer.TokenizerSpec(type="char"), window_length=32,
      validation_fraction=0.0, validation_input=(str(tmp_path / "valid.txt"),),
      test_input=(str(tmp_path / "test.txt"),)), pipeline_args=BEAM_ARGS)
  # one_device: a second MirroredStrategy with other shapes in this process
  # would collide with the first one's collective instance keys.
  config = config_lib.TrainConfig(dataset_dir=str(data_dir), model_dir=str(tmp_path / "m"),
                                  train_steps=10, strategy="one_device", **SMALL_MODEL)
  result = train.run(config)
  assert result["test"]["perplexity"] == pytest.approx(np.exp(result["test"]["loss"]))
  training = json.load(open(tmp_path / "m" / "export" / "training.json"))
  assert training["test"]["loss"] == result["test"]["loss"]
  # Bits per UTF-8 byte: nats per token -> bits, times the split's tokens per byte.
  test = M.load_dataset_metadata(str(data_dir)).splits["test"]
  assert test.bytes > 0
  assert training["test"]["bits_per_byte"] == pytest.approx(
      result["test"]["loss"] / np.log(2) * test.tokens / test.bytes)
  assert training["validation"]["bits_per_byte"] > 0


@pytest.mark.parametrize("dtype", ["float16", "auto"])
def test_mixed_precision_path_trains(tiny_dataset, tmp_path, dtype):
  """mixed_float16 (meant for GPUs) runs here too: loss scaling, clipping on
  unscaled gradients, a float32 output layer. "auto" on a CPU is
  mixed_bfloat16: no loss scaling, the fused LSTM in bfloat16, float32
  variables and export."""
  import keras
  config = config_lib.TrainConfig(dataset_dir=str(tiny_dataset), model_dir=str(tmp_path / "m"),
                                  train_steps=4, mixed_precision=True, strategy="one_device",
                                  mixed_precision_dtype=dtype,
                                  **dict(SMALL_MODEL, log_every=2, checkpoint_every=2))
  compute = "float16" if dtype == "float16" else "bfloat16"
  try:
    trainer = train.Trainer(config)
    lstm = trainer.model.get_layer("lstm_0")
    assert lstm.compute_dtype == compute and lstm.variable_dtype == "float32"
    assert trainer.model.get_layer("output").compute_dtype == "float32"
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
        compute == "float16")
    result = trainer.run()
    trainer.store.close()
    trainer.best_store.close()
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert result["step"] == 4 and np.isfinite(result["validation"]["loss"])
  weights = export_lib.read_weights(paths.RunPaths(str(tmp_path / "m")).export.weights)
  assert {w.dtype for w in weights.values()} == {np.dtype("float32")}


def test_fresh_run_starts_at_the_unigram_distribution(tiny_dataset, tmp_path):
  """The output bias starts at log unigram probabilities: the first
  validation loss is the unigram cross-entropy, not log(vocab size)."""
  from dataspec import schema
  from trainer import data
  config = config_lib.TrainConfig(dataset_dir=str(tiny_dataset), model_dir=str(tmp_path / "m"),
                                  train_steps=1, strategy="one_device", **SMALL_MODEL)
  trainer = train.Trainer(config)
  meta = trainer.meta
  flat = trainer.evaluate()["loss"]
  log_probs = data.unigram_log_probs(trainer.train_files, meta, max_tokens=10**9)

  # Count targets independently of trainer.data.
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  def target_counts(files):
    counts = np.zeros(meta.vocab_size)
    for records in tf.data.TFRecordDataset(files, compression_type=(
        "GZIP" if meta.compression == "gzip" else "")).batch(1000):
      counts += np.bincount(parse(records).numpy()[:, 1:].ravel(), minlength=meta.vocab_size)
    return counts

  counts = target_counts(trainer.train_files) + 1
  np.testing.assert_allclose(log_probs, np.log(counts / counts.sum()), rtol=1e-5)
  val_counts = target_counts(trainer.val_files)
  unigram_xent = -float(np.sum(val_counts * log_probs) / val_counts.sum())

  trainer._init_output_bias()  # pylint: disable=protected-access
  started = trainer.evaluate()["loss"]
  assert flat == pytest.approx(np.log(meta.vocab_size), abs=0.05)
  assert started == pytest.approx(unigram_xent, abs=0.05)
  assert started < flat - 0.3


def test_evaluation_is_the_first_batches_of_the_split_on_every_replica(tiny_run):
  """Under MirroredStrategy (2 replicas, one input pipeline), an evaluation
  covers the split's first steps x global batch windows, computed here
  without the strategy: not one replica's share twice, not windows of a
  later pass."""
  from dataspec import schema  # pylint: disable=g-import-not-at-top
  from trainer import data  # pylint: disable=g-import-not-at-top
  trainer = tiny_run[3]
  assert trainer.replicas == 2
  meta, batch = trainer.meta, trainer.config.batch_size
  steps = max(1, meta.splits["validation"].windows // batch)
  parse = schema.make_parse_fn(window_length=meta.window_length, token_dtype=meta.token_dtype)
  records = data._records(trainer.val_files, compression=data._compression(meta),  # pylint: disable=protected-access
                          ctx=None).repeat().take(steps * batch)
  windows = np.concatenate([parse(r).numpy() for r in records.batch(batch)])
  logits = trainer.model(windows[:, :-1], training=False)
  expected = float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
      windows[:, 1:], logits, from_logits=True)))
  for _ in range(2):
    assert trainer.evaluate()["loss"] == pytest.approx(expected, rel=1e-5)


def test_repeated_evaluations_see_the_same_windows_without_retracing(tiny_run):
  """Every evaluation takes the same windows from the split's one kept
  iterator: same result, and eval_loop is traced once."""
  trainer = tiny_run[3]
  first = trainer.evaluate()
  traces = trainer._eval_loop.experimental_get_tracing_count()  # pylint: disable=protected-access
  assert trainer.evaluate() == first
  assert trainer.evaluate() == first
  assert trainer._eval_loop.experimental_get_tracing_count() == traces  # pylint: disable=protected-access


def _same_batches_as_tf_distribute(trainer, make_iterator, steps):
  """Asserts that the trainer's iterator, made by make_iterator(), gives
  each replica the batches tf.distribute's own iterator of the same
  dataset function gives it, for `steps` steps."""
  fns = []
  iterate = trainer._iterate  # pylint: disable=protected-access
  def capture(fn):
    fns.append(fn)
    return iterate(fn)
  trainer._iterate = capture  # pylint: disable=protected-access
  try:
    own = make_iterator()
  finally:
    del trainer._iterate
  assert isinstance(own, tf.data.Iterator)
  assert not isinstance(own, tf.distribute.DistributedIterator)
  distributed = iter(trainer.strategy.distribute_datasets_from_function(fns[0]))
  local = trainer.strategy.experimental_local_results
  for _ in range(steps):
    ours = local(trainer._per_replica(next(own)))  # pylint: disable=protected-access
    theirs = local(next(distributed))
    assert len(ours) == len(theirs) == trainer.replicas
    for mine, other in zip(ours, theirs):
      for a, b in zip(mine, other):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    if trainer.replicas > 1:  # and the replicas get different batches
      assert not np.array_equal(ours[0][0].numpy(), ours[1][0].numpy())


def test_the_trainer_iterates_its_datasets_itself(tiny_dataset, tmp_path, tiny_run):
  """The trainer reads the dataset's own iterator, not tf.distribute's
  (whose per-device iterators keep tf.data's autotuning, and whose teardown
  at exit held a finished run's process for up to 54 s), and hands every
  replica the same train and evaluation batches as tf.distribute's would:
  one CPU replica, and 2 replicas that take 2 batches per step."""
  config = config_lib.TrainConfig(dataset_dir=str(tiny_dataset), model_dir=str(tmp_path / "m"),
                                  train_steps=1, strategy="one_device", **SMALL_MODEL)
  one = train.Trainer(config)
  two = tiny_run[3]
  for trainer in (one, two):
    _same_batches_as_tf_distribute(trainer, lambda t=trainer: t._train_iterator(3)[0], 4)  # pylint: disable=protected-access
    def eval_iterator(t=trainer):
      t._eval_iterators.clear()  # pylint: disable=protected-access
      t.evaluate()
      return t._eval_iterators["validation"]  # pylint: disable=protected-access
    _same_batches_as_tf_distribute(trainer, eval_iterator, 2)


def test_the_input_pipeline_runs_on_the_hosts_cpu():
  """Trainer._iterate's device, for the devices a strategy can have."""
  assert train.input_device(("/job:localhost/replica:0/task:0/device:CPU:0",)) == (
      "/job:localhost/replica:0/task:0/device:CPU:0")
  assert train.input_device(("/job:localhost/replica:0/task:0/device:CPU:0",
                             "/job:localhost/replica:0/task:0/device:CPU:1")) == (
      "/job:localhost/replica:0/task:0/device:CPU:0")
  assert train.input_device(("/job:worker/replica:0/task:1/device:GPU:0",
                             "/job:worker/replica:0/task:1/device:GPU:1")) == (
      "/job:worker/replica:0/task:1/device:CPU:0")
  assert train.input_device(("/job:localhost/replica:0/task:0/device:GPU:0",)) == (
      "/job:localhost/replica:0/task:0/device:CPU:0")


def test_two_replicas_resume_exactly_where_they_stopped(tiny_dataset, tmp_path):
  """A 2-replica run stopped mid-epoch (the SIGTERM path: checkpoint, then
  exit 143) and resumed by a new Trainer ends with the weights of one that
  ran straight through: the resumed iterator starts at the batch each
  replica would have read next."""
  settings = dict(SMALL_MODEL, dataset_dir=str(tiny_dataset), train_steps=12, log_every=3,
                  checkpoint_every=3, eval_every=1000, seed=5)

  def trainer_for(name):
    return train.Trainer(config_lib.TrainConfig(model_dir=str(tmp_path / name), **settings))

  def weights(trainer):
    trainer.store.close()
    trainer.best_store.close()
    return [w.numpy() for w in trainer.model.weights]

  straight = trainer_for("straight")
  assert straight.replicas == 2
  assert 3 % straight.steps_per_epoch, "step 3 should fall inside an epoch"
  straight.run()
  expected = weights(straight)

  stopped = trainer_for("resumed")
  stopped._stop_requested = True  # pylint: disable=protected-access
  with pytest.raises(SystemExit) as exit_info:
    stopped.run()
  assert exit_info.value.code == train.PREEMPTED_EXIT_CODE
  assert int(stopped.step.numpy()) == 3
  weights(stopped)
  resumed = trainer_for("resumed")
  assert resumed.run()["step"] == 12
  for a, b in zip(weights(resumed), expected):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
