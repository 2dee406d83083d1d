"""The fused CPU LSTM is keras.layers.LSTM: same outputs, gradients, weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dataspec import export as export_lib
from trainer import fused_lstm
from trainer import lstm_ops
from trainer import model as model_lib


def _pair(units=24, features=10, **kwargs):
  """A Keras LSTM and a CpuLSTM holding the same (random, non-trivial) weights."""
  reference = keras.layers.LSTM(units, return_sequences=True, return_state=True, **kwargs)
  fused = fused_lstm.CpuLSTM(units, return_sequences=True, return_state=True, **kwargs)
  reference.build((None, None, features))
  fused.build((None, None, features))
  rng = np.random.default_rng(7)
  weights = [rng.normal(0, 0.4, w.shape).astype("float32") for w in reference.get_weights()]
  reference.set_weights(weights)
  fused.set_weights(weights)
  return reference, fused


def _run(layer, x, h0, c0, d_out):
  """Outputs, final states and gradients of a fixed random projection of them."""
  with tf.GradientTape() as tape:
    tape.watch([x, h0, c0])
    outputs, h, c = layer(x, initial_state=[h0, c0])
    loss = (tf.reduce_sum(outputs * d_out) + tf.reduce_sum(h * d_out[:, -1])
            + 0.5 * tf.reduce_sum(c * d_out[:, 0]))
  grads = tape.gradient(loss, [x, h0, c0] + layer.trainable_weights)
  return [outputs, h, c] + grads


def _use(ops, monkeypatch):
  """Makes the fused loop run `ops`: "sequence" (the compiled whole-sequence
  ops, whichever CPU runs the test), "gates" (the compiled per-step gate
  ops with TensorFlow's MatMul) or "tensorflow" (no compiled ops)."""
  if ops == "sequence":
    assert lstm_ops.load() is not None, "python -m trainer.lstm_ops"
    monkeypatch.setattr(fused_lstm, "_sequence_ops",
                        lambda dtype: lstm_ops.load() if dtype == tf.float32 else None)
  else:
    monkeypatch.setattr(fused_lstm, "_sequence_ops", lambda dtype: None)
  if ops == "tensorflow":
    monkeypatch.setattr(fused_lstm, "_gate_ops", lambda dtype: None)
  elif ops == "gates":
    assert fused_lstm._gate_ops(tf.float32) is not None, "python -m trainer.lstm_ops"


@pytest.mark.parametrize("ops", ["sequence", "gates", "tensorflow"])
@pytest.mark.parametrize("batch,parts", [(8, 1), (7, 3), (1, 2)])
def test_outputs_and_gradients_equal_keras_lstm(batch, parts, ops, monkeypatch):
  """All three forms of the recurrence: the compiled whole-sequence ops, the
  compiled per-step gate ops (trainer/lstm_ops.cc) and TensorFlow's ops
  (where they are not built)."""
  monkeypatch.setattr(fused_lstm.CpuLSTM, "parts", property(lambda self: parts))
  _use(ops, monkeypatch)
  reference, fused = _pair()
  rng = np.random.default_rng(batch)
  x = tf.constant(rng.normal(size=(batch, 13, 10)), tf.float32)
  h0 = tf.constant(rng.normal(size=(batch, 24)), tf.float32)
  c0 = tf.constant(rng.normal(size=(batch, 24)), tf.float32)
  d_out = tf.constant(rng.normal(size=(batch, 13, 24)), tf.float32)
  names = ["outputs", "h", "c", "d_x", "d_h0", "d_c0", "d_kernel", "d_recurrent", "d_bias"]
  for name, want, got in zip(names, _run(reference, x, h0, c0, d_out),
                             _run(fused, x, h0, c0, d_out)):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=2e-5, err_msg=name)


def test_row_blocks_per_core_by_batch(monkeypatch):
  """One row block per core; two per core where each keeps MIN_BLOCK_ROWS
  rows; the traced layer runs that many recurrences."""
  monkeypatch.setattr(fused_lstm.CpuLSTM, "parts", property(lambda self: 2))
  monkeypatch.setattr(fused_lstm, "MIN_BLOCK_ROWS", 3)
  _use("sequence", monkeypatch)
  layer = fused_lstm.CpuLSTM(8, return_sequences=True)
  layer.build((None, None, 4))
  assert [layer.parts_for(rows) for rows in (None, 1, 2, 11, 12, 100)] == [2, 2, 2, 2, 4, 4]

  def recurrences(batch):
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([batch, 5, 4])).graph
    nodes = list(graph.as_graph_def().node) + [
        n for f in graph.as_graph_def().library.function for n in f.node_def]
    return sum(n.op == "TextgenLstmSequence" for n in nodes)

  assert [recurrences(batch) for batch in (None, 11, 12)] == [2, 2, 4]


def test_fused_path_is_what_runs():
  """The fused loop (not Keras's fallback) runs for the trainer's layers, and a
  mask falls back to Keras's loop with the same result."""
  reference, fused = _pair()
  calls = []
  original = fused_lstm.lstm_sequence
  try:
    fused_lstm.lstm_sequence = lambda *a, **k: calls.append(1) or original(*a, **k)
    x = tf.random.normal((4, 6, 10))
    fused(x)
    assert calls, "CpuLSTM did not use the fused loop"
    calls.clear()
    mask = tf.constant([[True] * 6, [True] * 3 + [False] * 3] * 2)
    np.testing.assert_allclose(fused(x, mask=mask)[0], reference(x, mask=mask)[0],
                               rtol=1e-5, atol=1e-5)
    assert not calls, "a masked call must use Keras's own loop"
  finally:
    fused_lstm.lstm_sequence = original


@pytest.mark.parametrize("ops", ["sequence", "tensorflow"])
@pytest.mark.parametrize("dtype,atol", [(tf.float16, 5e-3), (tf.bfloat16, 2e-2)])
def test_16_bit_inputs_as_under_mixed_precision(dtype, atol, ops, monkeypatch):
  """mixed_float16 (GPU policy, here for tests) and mixed_bfloat16 (the
  CPU's): the fused loop runs in the inputs' dtype; outputs and gradients
  (to the float32 weights) close to float32's. (float16 has no compiled
  ops: both cases run TensorFlow's; the whole-sequence ops are float32's
  only, so bfloat16 runs the per-step gate ops.)"""
  _use(ops, monkeypatch)
  reference, fused = _pair()
  x = tf.random.normal((4, 9, 10), seed=1)
  h0 = tf.zeros((4, 24))

  def run(layer, cast):
    with tf.GradientTape() as tape:
      tape.watch(x)
      if cast:
        out = layer.inner_loop(tf.cast(x, dtype), [tf.cast(h0, dtype)] * 2, None)[1]
      else:
        out = layer(x, initial_state=[h0, h0])[0]
      loss = tf.reduce_sum(tf.cast(out, tf.float32) ** 2)
    return out, tape.gradient(loss, [x] + layer.trainable_weights)

  want, want_grads = run(reference, cast=False)
  got, got_grads = run(fused, cast=True)
  assert got.dtype == dtype
  np.testing.assert_allclose(tf.cast(got, tf.float32), want, atol=atol)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(tf.cast(g, tf.float32), w,
                               atol=2 * atol * float(tf.reduce_max(tf.abs(w))))


def test_device_selection():
  """A GPU keeps keras.layers.LSTM (cuDNN); so does recurrent dropout."""
  assert fused_lstm.use_fused_cpu_path(gpus=0, recurrent_dropout=0.0)
  assert not fused_lstm.use_fused_cpu_path(gpus=1, recurrent_dropout=0.0)
  assert not fused_lstm.use_fused_cpu_path(gpus=8, recurrent_dropout=0.0)
  assert not fused_lstm.use_fused_cpu_path(gpus=0, recurrent_dropout=0.1)
  spec = export_lib.ModelSpec(vocab_size=30, embedding_dim=8, units=16, num_layers=2,
                              window_length=12, tie_embeddings=False, projection_dim=0)
  gpu_model = model_lib.build_model(spec=spec, fused_cpu_lstm=False)
  cpu_model = model_lib.build_model(spec=spec, fused_cpu_lstm=True)
  assert [type(l) for l in gpu_model.layers if "lstm" in l.name] == [keras.layers.LSTM] * 2
  assert [type(l) for l in cpu_model.layers if "lstm" in l.name] == [fused_lstm.CpuLSTM] * 2


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_moves_between_cpu_and_gpu_models(tie, tmp_path):
  """The same checkpoint keys and weights: a CPU run's checkpoint restores into
  the Keras-LSTM model a GPU run builds, and back, with the same logits."""
  spec = export_lib.ModelSpec(vocab_size=30, embedding_dim=8, units=16, num_layers=2,
                              window_length=12, tie_embeddings=tie,
                              projection_dim=8 if tie else 0)
  cpu_model = model_lib.build_model(spec=spec, fused_cpu_lstm=True, seed=3)
  gpu_model = model_lib.build_model(spec=spec, fused_cpu_lstm=False, seed=4)
  ids = tf.constant(np.random.default_rng(0).integers(0, 30, (3, 12)), tf.int32)
  assert not np.allclose(cpu_model(ids), gpu_model(ids))
  path = tf.train.Checkpoint(model=cpu_model).write(str(tmp_path / "cpu"))
  tf.train.Checkpoint(model=gpu_model).read(path).assert_existing_objects_matched()
  np.testing.assert_allclose(gpu_model(ids), cpu_model(ids), rtol=1e-5, atol=1e-5)
  assert [w.path for w in cpu_model.weights] == [w.path for w in gpu_model.weights]
