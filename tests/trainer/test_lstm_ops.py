"""The compiled gate ops (trainer/lstm_ops.cc): built by ./install.sh, the
same numbers as TensorFlow's ops, checked shapes, a build that fails cleanly
and a trainer that runs without them."""

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from trainer import fused_lstm
from trainer import lstm_ops
from testutil import run_python


def _ops():
  ops = lstm_ops.load()
  assert ops is not None, "gate ops not built: ./install.sh runs python -m trainer.lstm_ops"
  return ops


def _reference_forward(xw, hr, c_prev):
  i, f, g, o = tf.split(xw + hr, 4, axis=1)
  i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
  c = f * c_prev + i * g
  return o * tf.tanh(c), c, tf.concat([i, f, g, o], 1)


@pytest.mark.parametrize("rows,units", [(1, 1), (3, 7), (32, 256), (5, 33)])
def test_ops_match_tensorflow_ops(rows, units):
  """Forward outputs, and the gradient op against TensorFlow's autodiff of
  the same step (sizes that do and do not fill whole vectors)."""
  ops = _ops()
  rng = np.random.default_rng(rows * 100 + units)
  xw, hr = (tf.constant(rng.normal(0, 2, (rows, 4 * units)), tf.float32) for _ in range(2))
  c_prev = tf.constant(rng.normal(0, 1, (rows, units)), tf.float32)
  h, c, act = ops.textgen_lstm_gates(xw, hr, c_prev)
  for got, want in zip((h, c, act), _reference_forward(xw, hr, c_prev)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  dh, dc_next = (tf.constant(rng.normal(size=(rows, units)), tf.float32) for _ in range(2))
  with tf.GradientTape() as tape:
    tape.watch([xw, c_prev])
    h_ref, c_ref, _ = _reference_forward(xw, hr, c_prev)
    loss = tf.reduce_sum(h_ref * dh) + tf.reduce_sum(c_ref * dc_next)
  want_dz, want_dc_prev = tape.gradient(loss, [xw, c_prev])
  dz, dc_prev = ops.textgen_lstm_gates_grad(dh, dc_next, act, c_prev, c)
  np.testing.assert_allclose(dz, want_dz, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dc_prev, want_dc_prev, rtol=1e-4, atol=1e-5)


def test_bfloat16_ops_compute_in_float32():
  """bfloat16 in and out (mixed_bfloat16 training), float32 inside: within
  bfloat16's rounding of the float32 op's results, and closer to them than
  TensorFlow's all-bfloat16 ops are."""
  ops = _ops()
  rng = np.random.default_rng(3)
  rows, units = 6, 40
  xw, hr = (tf.constant(rng.normal(0, 2, (rows, 4 * units)), tf.float32) for _ in range(2))
  c_prev = tf.constant(rng.normal(0, 1, (rows, units)), tf.float32)
  b16 = lambda t: tf.cast(t, tf.bfloat16)
  f32 = lambda t: tf.cast(t, tf.float32)
  exact = ops.textgen_lstm_gates(f32(b16(xw)), f32(b16(hr)), f32(b16(c_prev)))
  got = ops.textgen_lstm_gates(b16(xw), b16(hr), b16(c_prev))
  tf_bf16 = _reference_forward(b16(xw), b16(hr), b16(c_prev))
  assert [t.dtype for t in got] == [tf.bfloat16] * 3
  for name, g, e, t in zip(("h", "c", "act"), got, exact, tf_bf16):
    error = float(tf.reduce_max(tf.abs(f32(g) - e)))
    assert error <= 2 ** -8 * float(tf.reduce_max(tf.abs(e))), name
    assert float(tf.reduce_mean(tf.abs(f32(g) - e))) <= float(tf.reduce_mean(tf.abs(f32(t) - e))), name

  dh, dc_next = (tf.constant(rng.normal(size=(rows, units)), tf.float32) for _ in range(2))
  want = ops.textgen_lstm_gates_grad(f32(b16(dh)), f32(b16(dc_next)), f32(got[2]),
                                     f32(b16(c_prev)), f32(got[1]))
  grads = ops.textgen_lstm_gates_grad(b16(dh), b16(dc_next), got[2], b16(c_prev), got[1])
  for g, w in zip(grads, want):
    assert g.dtype == tf.bfloat16
    np.testing.assert_allclose(f32(g), w, atol=2 ** -8 * float(tf.reduce_max(tf.abs(w))))


def test_ops_reject_mismatched_shapes():
  ops = _ops()
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(rows, 4 units\) = \(2, 12\)"):
    ops.textgen_lstm_gates(tf.zeros([2, 10]), tf.zeros([2, 10]), tf.zeros([2, 3]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="states differ in shape"):
    ops.textgen_lstm_gates_grad(tf.zeros([2, 3]), tf.zeros([2, 3]), tf.zeros([2, 12]),
                                tf.zeros([3, 3]), tf.zeros([2, 3]))


def _reference_sequence(xw, kernel, h0, c0):
  """The recurrence step by step in TensorFlow's ops: outputs, h, c."""
  h, c, outputs = h0, c0, []
  for t in range(xw.shape[0]):
    h, c, _ = _reference_forward(xw[t], tf.matmul(h, kernel), c)
    outputs.append(h)
  return tf.stack(outputs) if outputs else tf.zeros([0, *h0.shape]), h, c


@pytest.mark.parametrize("time,rows,units", [(0, 2, 3), (1, 1, 1), (6, 3, 7), (4, 32, 256),
                                             (5, 0, 4)])
def test_sequence_ops_match_tensorflow_ops(time, rows, units):
  """The whole-sequence ops: outputs and final state against the step-by-
  step recurrence of xw + bias, the kept acts and cs against the per-step
  gate op, and the gradient op's d xw, dh0, dc0 and d bias against
  TensorFlow's autodiff."""
  ops = _ops()
  rng = np.random.default_rng(time * 1000 + rows * 10 + units)
  normal = lambda scale, *shape: tf.constant(rng.normal(0, scale, shape), tf.float32)
  xw, kernel = normal(2, time, rows, 4 * units), normal(0.3, units, 4 * units)
  h0, c0, bias = normal(1, rows, units), normal(1, rows, units), normal(1, 4 * units)
  outputs, h, c, acts, cs = ops.textgen_lstm_sequence(xw, kernel, h0, c0, bias)
  for got, want in zip((outputs, h, c), _reference_sequence(xw + bias, kernel, h0, c0)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cs[0], c0)
  h_prev = tf.concat([h0[None], outputs[:-1]], 0)
  for t in range(time):
    _, c_t, act_t = ops.textgen_lstm_gates(xw[t] + bias, tf.matmul(h_prev[t], kernel), cs[t])
    # (Eigen's and TensorFlow's products sum in different orders)
    np.testing.assert_allclose(acts[t], act_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cs[t + 1], c_t, rtol=1e-5, atol=1e-5)

  d_outputs, d_h, d_c = normal(1, time, rows, units), normal(1, rows, units), normal(1, rows, units)
  with tf.GradientTape() as tape:
    tape.watch([xw, h0, c0, bias])
    want_outputs, want_h, want_c = _reference_sequence(xw + bias, kernel, h0, c0)
    loss = (tf.reduce_sum(want_outputs * d_outputs) + tf.reduce_sum(want_h * d_h)
            + tf.reduce_sum(want_c * d_c))
  dz, dh0, dc0, d_bias = ops.textgen_lstm_sequence_grad(d_outputs, d_h, d_c, acts, cs, kernel)
  want = tape.gradient(loss, [xw, h0, c0, bias],
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
  for name, got, w in zip(("dz", "dh0", "dc0", "d_bias"), (dz, dh0, dc0, d_bias), want):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_sequence_ops_reject_mismatched_shapes():
  ops = _ops()
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(time, rows, 4 units\)"):
    ops.textgen_lstm_sequence(tf.zeros([2, 12]), tf.zeros([3, 12]), tf.zeros([2, 3]),
                              tf.zeros([2, 3]), tf.zeros([12]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"recurrent_kernel must be .* \(3, 12\)"):
    ops.textgen_lstm_sequence(tf.zeros([4, 2, 12]), tf.zeros([12, 3]), tf.zeros([2, 3]),
                              tf.zeros([2, 3]), tf.zeros([12]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(rows, 4 units\) = \(2, 12\)"):
    ops.textgen_lstm_sequence(tf.zeros([4, 2, 10]), tf.zeros([3, 12]), tf.zeros([2, 3]),
                              tf.zeros([2, 3]), tf.zeros([12]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"bias must be \(4 units\) = \(12\)"):
    ops.textgen_lstm_sequence(tf.zeros([4, 2, 12]), tf.zeros([3, 12]), tf.zeros([2, 3]),
                              tf.zeros([2, 3]), tf.zeros([10]))
  acts, cs = tf.zeros([4, 2, 12]), tf.zeros([5, 2, 3])
  with pytest.raises(tf.errors.InvalidArgumentError, match="d_outputs must be"):
    ops.textgen_lstm_sequence_grad(tf.zeros([3, 2, 3]), tf.zeros([2, 3]), tf.zeros([2, 3]),
                                   acts, cs, tf.zeros([3, 12]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="cs must be"):
    ops.textgen_lstm_sequence_grad(tf.zeros([4, 2, 3]), tf.zeros([2, 3]), tf.zeros([2, 3]),
                                   acts, cs[1:], tf.zeros([3, 12]))


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (0, 4, 3), (4, 0, 3), (33, 65, 17)])
def test_mat_mul_matches_tensorflow(m, k, n, transpose_a, transpose_b):
  """TextgenMatMul and its registered gradient against tf.matmul's, with
  either operand transposed, and empty products."""
  ops = _ops()
  rng = np.random.default_rng(m * 100 + k)
  a = tf.constant(rng.normal(size=(k, m) if transpose_a else (m, k)), tf.float32)
  b = tf.constant(rng.normal(size=(n, k) if transpose_b else (k, n)), tf.float32)
  weights = tf.constant(rng.normal(size=(m, n)), tf.float32)
  results = []
  for mat_mul in (ops.textgen_mat_mul, tf.matmul):
    with tf.GradientTape() as tape:
      tape.watch([a, b])
      product = mat_mul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
      loss = tf.reduce_sum(product * weights)
    results.append([product] + tape.gradient(loss, [a, b]))
  for name, got, want in zip(["product", "d_a", "d_b"], *results):
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_mat_mul_rejects_mismatched_shapes():
  ops = _ops()
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="inner dimensions|must be equal"):
    ops.textgen_mat_mul(tf.zeros([2, 3]), tf.zeros([4, 5]))
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 2|matrices"):
    ops.textgen_mat_mul(tf.zeros([2, 3, 1]), tf.zeros([3, 5]))


def test_whole_sequences_only_where_they_were_measured_faster():
  """The AVX-512 build, and the AVX2 build on a CPU without AVX-512 (where
  TensorFlow's MatMul would use wider vectors than the library's): see
  lstm_ops.runs_whole_sequences."""
  avx2 = frozenset("fpu sse2 avx avx2 fma".split())
  assert lstm_ops.runs_whole_sequences("x86-64-v3", avx2)
  assert not lstm_ops.runs_whole_sequences("x86-64-v3", avx2 | {"avx512f"})
  assert lstm_ops.runs_whole_sequences("x86-64-v4", avx2 | {"avx512f"})
  assert not lstm_ops.runs_whole_sequences("x86-64", avx2)
  assert not lstm_ops.runs_whole_sequences("", frozenset())


@pytest.mark.parametrize("sequence", [True, False])
def test_the_trainers_loop_runs_the_ops(sequence, monkeypatch):
  """The CPU LSTM's traced function holds the compiled ops: the whole-
  sequence ops in float32 where they are selected, else the per-step gate
  ops; the gate ops in bfloat16; TensorFlow's ops in float16 (which the ops
  do not take)."""
  monkeypatch.setattr(lstm_ops, "sequence_ops", lambda: _ops() if sequence else None)
  layer = fused_lstm.CpuLSTM(8, return_sequences=True)
  layer.build((None, None, 4))

  def op_types(dtype):
    @tf.function
    def step(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer.inner_loop(tf.cast(x, dtype), [tf.zeros([2, 8], dtype)] * 2, None)[1]
        loss = tf.reduce_sum(tf.cast(y, tf.float32))
      return tape.gradient(loss, x)
    graph = step.get_concrete_function(tf.TensorSpec([2, 5, 4])).graph
    types = set()
    for fn in [graph.as_graph_def()] + list(graph.as_graph_def().library.function):
      nodes = fn.node if hasattr(fn, "node") else fn.node_def
      types.update(n.op for n in nodes)
    return types

  _ops()
  gates = {"TextgenLstmGates", "TextgenLstmGatesGrad"}
  # with the whole-sequence ops the block's big products are TextgenMatMul
  sequences = {"TextgenLstmSequence", "TextgenLstmSequenceGrad", "TextgenMatMul"}
  float32 = op_types(tf.float32)
  assert (sequences <= float32 and not gates & float32) if sequence else (
      gates <= float32 and not sequences & float32)
  assert gates <= op_types(tf.bfloat16) and not sequences & op_types(tf.bfloat16)
  assert not (gates | sequences) & op_types(tf.float16)


def test_cpu_feature_check(tmp_path):
  def cpuinfo(text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)

  v3 = "flags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave avx512f\n"
  assert lstm_ops.cpu_runs("x86-64-v3", cpuinfo=cpuinfo("processor : 0\n" + v3))
  assert not lstm_ops.cpu_runs("x86-64-v3", cpuinfo=cpuinfo(v3.replace(" avx2", "")))
  assert not lstm_ops.cpu_runs("x86-64-v3", cpuinfo=cpuinfo("processor : 0\n"))
  assert not lstm_ops.cpu_runs("x86-64-v3", cpuinfo=str(tmp_path / "missing"))
  assert lstm_ops.cpu_runs("x86-64", cpuinfo=cpuinfo("flags : sse2\n"))
  v4 = v3.replace("avx512f", "avx512f avx512bw avx512cd avx512dq avx512vl")
  assert lstm_ops.cpu_runs("x86-64-v4", cpuinfo=cpuinfo(v4))
  assert not lstm_ops.cpu_runs("x86-64-v4", cpuinfo=cpuinfo(v3))  # AVX-512F alone


def test_build_into_a_directory(tmp_path, monkeypatch):
  """A real build of one variant, named for TensorFlow's version and the
  source; libraries of an older source are removed, the current one kept."""
  monkeypatch.setattr(lstm_ops, "_DIR", str(tmp_path))
  monkeypatch.setattr(lstm_ops, "variants", lambda: [""])
  stale = tmp_path / "_lstm_ops-tf2.20.0-default-000000000000.so"
  stale.write_bytes(b"old")
  (path,) = lstm_ops.build()
  assert os.path.dirname(path) == str(tmp_path)
  assert f"-tf{tf.__version__}-default-" in os.path.basename(path)
  with open(path, "rb") as f:
    assert f.read(4) == b"\x7fELF"
  assert not stale.exists()
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]
  mtime = os.path.getmtime(path)
  assert lstm_ops.build() == [path] and os.path.getmtime(path) == mtime  # not rebuilt


@pytest.mark.parametrize("compiler,message", [("false", "compiling .* failed"),
                                              ("/nonexistent/g++", "no C\\+\\+ compiler")])
def test_failed_build_leaves_nothing(compiler, message, tmp_path, monkeypatch):
  monkeypatch.setattr(lstm_ops, "_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", compiler)
  with pytest.raises(RuntimeError, match=message):
    lstm_ops.build()
  assert os.listdir(tmp_path) == []


def test_without_a_built_library_the_trainer_uses_tensorflow_ops(tmp_path, monkeypatch):
  monkeypatch.setattr(lstm_ops, "_DIR", str(tmp_path))
  warnings = []
  monkeypatch.setattr(lstm_ops.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  assert lstm_ops._load.__wrapped__() == (None, None)
  assert "python -m trainer.lstm_ops" in warnings[0]


def test_the_images_build_stage_copies_what_the_build_imports(tmp_path):
  """k8s/Dockerfile compiles the ops in a stage that holds only the files it
  COPYs: `python -m trainer.lstm_ops` and `python -m dataspec.decode_ops`
  must start from exactly those."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  with open(os.path.join(repo, "k8s", "Dockerfile")) as f:
    stage = f.read().split(" AS lstm-ops\n", 1)[1].split("\nFROM ", 1)[0]
  copies = re.findall(r"^COPY (.+) (\S+)/$", stage, flags=re.M)
  assert copies, "no COPY in the lstm-ops stage"
  for sources, target in copies:
    os.makedirs(tmp_path / target, exist_ok=True)
    for source in sources.split():
      shutil.copy(os.path.join(repo, source), tmp_path / target)
  for module in ("trainer.lstm_ops", "dataspec.decode_ops"):
    assert re.search(rf"^RUN python -m {re.escape(module)}$", stage, flags=re.M)
    # Only the copied files: without the editable install's finder, which
    # would supply any module the stage lacks from the checkout.
    isolated = (
        "import runpy, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        f"sys.argv = [{module!r}, '--help']\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    assert "Rebuild libraries that are already built" in run_python(isolated, cwd=tmp_path)
