"""The fused decode op (dataspec/decode_ops.cc) against TensorFlow's ops, and
LanguageModel(decode_ops="fused") against the SavedModel's own path."""

import concurrent.futures
import os

import numpy as np
import pytest
import tensorflow as tf

from dataspec import decode_ops
from dataspec import export as export_lib
from dataspec import native_ops
from dataspec import serving
from dataspec import tokenizer as tokenizer_lib
from dataspec.cpuinfo import cpu_flags
from testutil import REPO, last_line, run_python

# The library is built by ./install.sh wherever the CPU runs it; only a CPU
# without AVX2 and FMA goes without.
pytestmark = pytest.mark.skipif(
    not decode_ops.runs_here(),
    reason="the fused decode op needs an x86-64 CPU with AVX2 and FMA")


NO_ROWS = tf.zeros([0], tf.int32)


def _ops():
  ops = decode_ops.load()
  assert ops is not None, "not built: python -m dataspec.decode_ops"
  return ops


def _step(*, x, h, c, packed, addend, addend_rows):
  """One layer's step: TextgenLstmLayers with a stack of one layer."""
  (h_out,), (c_out,) = _ops().lstm_layers(x=x, addend_rows=addend_rows, h=[h], c=[c],
                                          packed=[packed], addends=[addend])
  return h_out, c_out


def _reference(x, h, c, kernel, recurrent_kernel, addend):
  """serving's TensorFlow ops for the same step."""
  z = tf.matmul(h, recurrent_kernel) + addend
  if kernel is not None:
    z += tf.matmul(x, kernel)
  return serving._cell(z, c)  # pylint: disable=protected-access


@pytest.mark.parametrize("rows,in_dim,units", [
    (1, 0, 4), (5, 3, 8), (6, 16, 12), (7, 0, 16), (13, 64, 32), (100, 64, 64),
    (256, 64, 64)])
@pytest.mark.parametrize("addend_kind", ["bias", "per_row", "picked"])
def test_step_matches_tensorflow_ops(rows, in_dim, units, addend_kind):
  """A layer's step. Every tile height (6 rows and the 1-5 left over), with
  and without an input product; a bias, a per-row addend, or rows picked
  from a table (addend_rows, as the input table is read); (100, 64, 64)
  splits the panels over the intra-op threads, (256, 64, 64) the rows."""
  rng = np.random.default_rng(rows * 100 + units)
  f = lambda *shape: tf.constant(rng.normal(0, 0.5, shape), tf.float32)
  x, h, c = f(rows, in_dim), f(rows, units), f(rows, units)
  kernel = f(in_dim, 4 * units) if in_dim else None
  recurrent = f(units, 4 * units)
  addend_rows = NO_ROWS
  if addend_kind == "bias":
    addend = reference_addend = f(4 * units)
  elif addend_kind == "per_row":
    addend = reference_addend = f(rows, 4 * units)
  else:
    addend = f(9, 4 * units)
    addend_rows = tf.constant(rng.integers(0, 9, rows), tf.int32)
    reference_addend = tf.gather(addend, addend_rows)
  packed = decode_ops.pack_kernel(kernel, recurrent)
  h_out, c_out = _step(x=x, h=h, c=c, packed=packed, addend=addend, addend_rows=addend_rows)
  h_ref, c_ref = _reference(x, h, c, kernel, recurrent, reference_addend)
  np.testing.assert_allclose(h_out.numpy(), h_ref.numpy(), rtol=0, atol=2e-6)
  np.testing.assert_allclose(c_out.numpy(), c_ref.numpy(), rtol=1e-6, atol=2e-6)
  if not in_dim:  # no input columns: x may be (0, 0), a constant (serving)
    same = _step(x=tf.zeros([0, 0]), h=h, c=c, packed=packed, addend=addend,
                 addend_rows=addend_rows)
    for a, b in zip(same, (h_out, c_out)):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_rows_state_does_not_depend_on_the_rows_beside_it():
  """Row by row the same bits in a batch of 1, 7 and 256 (the tiles, pairs,
  row chunks and thread split change with the batch): sampling stays a
  function of (seed, prompt, sample, position)."""
  rng = np.random.default_rng(1)
  units, in_dim = 64, 64
  f = lambda *shape: tf.constant(rng.normal(0, 0.5, shape), tf.float32)
  x, h, c, addend = f(256, in_dim), f(256, units), f(256, units), f(256, 4 * units)
  packed = decode_ops.pack_kernel(f(in_dim, 4 * units), f(units, 4 * units))
  step = lambda n: [t.numpy() for t in _step(
      x=x[:n], h=h[:n], c=c[:n], packed=packed, addend=addend[:n], addend_rows=NO_ROWS)]
  whole = step(256)
  for n in (1, 7):
    for part, full in zip(step(n), whole):
      np.testing.assert_array_equal(part, full[:n])


def test_ops_called_at_once_from_many_threads_give_the_same_bits():
  """Each call splits its rows' work with the pool's threads, which other
  calls keep busy here: a helper that starts after its call has finished
  finds no block left (dataspec/decode_ops.cc, RunBlocks). No call waits
  forever, and every result is the lone call's."""
  rng = np.random.default_rng(4)
  units, in_dim, vocab = 64, 64, 40
  f = lambda *shape: tf.constant(rng.normal(0, 0.5, shape), tf.float32)
  x, h, c, bias = f(64, in_dim), f(64, units), f(64, units), f(4 * units)
  packed = decode_ops.pack_kernel(f(in_dim, 4 * units), f(units, 4 * units))
  kernel, out_bias, noise = f(units, vocab), f(vocab), f(64, vocab)
  stack, _ = _stack(rng, 200, 5, (16, 8), table=True)  # by blocks of rows
  ops = _ops()

  def call(_):
    h_out, c_out = _step(x=x, h=h, c=c, packed=packed, addend=bias, addend_rows=NO_ROWS)
    tokens = ops.pick(x=h_out, kernel=kernel, bias=out_bias, noise=noise, temperature=0.9)
    hs, cs = ops.lstm_layers(**stack)
    return h_out.numpy(), c_out.numpy(), tokens.numpy(), *[t.numpy() for t in hs + cs]

  alone = call(None)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for result in pool.map(call, range(200)):
      for got, expected in zip(result, alone):
        np.testing.assert_array_equal(got, expected)


def _stack(rng, rows, in_dim, units_list, table):
  """Inputs of TextgenLstmLayers for layers of units_list: the first layer's
  input x (rows, in_dim) and bias, or (table) no input columns and rows of a
  9-row table. The kernels unpacked are kept under "kernels" (see _packed)."""
  f = lambda *shape: tf.constant(rng.normal(0, 0.5, shape), tf.float32)
  h = [f(rows, units) for units in units_list]
  c = [f(rows, units) for units in units_list]
  ins = [0 if table else in_dim] + list(units_list[:-1])
  kernels = [(f(i, 4 * units) if i else None, f(units, 4 * units))
             for i, units in zip(ins, units_list)]
  addends = [f(4 * units) for units in units_list]
  x, addend_rows = f(rows, in_dim), NO_ROWS
  if table:
    x, addends[0] = tf.zeros([0, 0]), f(9, 4 * units_list[0])
    addend_rows = tf.constant(rng.integers(0, 9, rows), tf.int32)
  return dict(x=x, addend_rows=addend_rows, h=h, c=c, addends=addends,
              packed=[decode_ops.pack_kernel(*k) for k in kernels]), kernels


@pytest.mark.parametrize("rows", [1, 7, 130, 200, 256])
@pytest.mark.parametrize("units_list,table", [
    ((16,), True), ((16, 8), False), ((8, 16, 12), True)])
def test_layers_op_has_the_bits_of_one_layer_at_a_time_and_of_fewer_rows(
    rows, units_list, table):
  """TextgenLstmLayers (every layer in one op) has the bits of the op on one
  layer at a time, and of the op on the rows 100 at a time: below 128 rows
  it runs layer after layer, each split by panels; from there on by blocks
  of 6 rows through every layer (130 and 256: a block of 4 left over, 200:
  of 2). Layers of different widths; the first one's input from x or from
  a table's rows."""
  rng = np.random.default_rng(rows + len(units_list))
  args, kernels = _stack(rng, rows, 5, units_list, table)
  ops = _ops()
  h_out, c_out = ops.lstm_layers(**args)
  x, rows_arg = args["x"], args["addend_rows"]
  for layer in range(len(units_list)):
    h, c = _step(x=x, h=args["h"][layer], c=args["c"][layer], packed=args["packed"][layer],
                 addend=args["addends"][layer], addend_rows=rows_arg)
    np.testing.assert_array_equal(h_out[layer].numpy(), h.numpy())
    np.testing.assert_array_equal(c_out[layer].numpy(), c.numpy())
    x, rows_arg = h, NO_ROWS
  for start in range(0, rows, 100):
    part = lambda t, start=start: t[start:start + 100]
    some = dict(args, h=[part(t) for t in args["h"]], c=[part(t) for t in args["c"]],
                x=args["x"] if table else part(args["x"]),
                addend_rows=part(args["addend_rows"]) if table else NO_ROWS)
    h_some, c_some = ops.lstm_layers(**some)
    for layer in range(len(units_list)):
      np.testing.assert_array_equal(h_some[layer].numpy(), part(h_out[layer]).numpy())
      np.testing.assert_array_equal(c_some[layer].numpy(), part(c_out[layer]).numpy())


@pytest.mark.parametrize("rows", [1, 5, 12, 13, 25, 127, 128, 200, 256])
@pytest.mark.parametrize("units_list,table", [
    ((4,), True), ((12, 20), False), ((8, 36, 4), True), ((64, 64), False), ((16,), True),
    ((48, 12, 32), True), ((512,), False)])
def test_avx512_tiles_have_the_avx2_tiles_bits(rows, units_list, table):
  """On CPUs with AVX-512 the layers op runs 512-bit tiles (12 rows by two
  panels, one panel where an odd number of them leaves one: 4, 12, 20 and
  36 units) with the AVX2 tiles' bits, by default and when asked for, and
  so do its gate-major tiles (6 rows by the four gates of 16 units) on
  kernels packed in panels of 16 units (every layer whose units are a
  multiple of 16, beside layers in panels of 4; 512 units, 4 MB, are more
  than a 2 MB L2 per CPU holds, so from 128 rows the step splits by
  rows, not by each CPU's panels); the addends and cell
  states spread wide enough that the gate math's clamps are reached (the
  logistic's below -104 and above 16.6, tanh's past 8). Elsewhere asking
  for them, or giving panels of 16, is an error that says why, and the
  default is the AVX2 tiles."""
  rng = np.random.default_rng(rows + 10 * len(units_list))
  args, kernels = _stack(rng, rows, 5, units_list, table)

  def spread(addend):  # unit 0: i below -104; unit 1: i and f above 16.6
    a = addend.numpy() * 20.0
    units = a.shape[-1] // 4
    a[..., 0], a[..., 1], a[..., units + 1] = -300.0, 40.0, 40.0
    return tf.constant(a)

  args["addends"] = [spread(a) for a in args["addends"]]

  def spread_c(c):  # unit 1: c' = c + g > 8 for tanh's clamp
    c = c.numpy() * 20.0
    c[:, 1] = 30.0
    return tf.constant(c)

  args["c"] = [spread_c(c) for c in args["c"]]
  layers = _ops().lstm_layers
  h_avx2, c_avx2 = layers(**args, vectors="avx2")
  best_h, best_c = layers(**args)
  gate_major = [16 if units % 16 == 0 else 4 for units in units_list]
  by_gate = dict(args, packed=[decode_ops.pack_kernel(*k, panel_units=n)
                               for k, n in zip(kernels, gate_major)])
  if "avx512f" not in cpu_flags():
    with pytest.raises(tf.errors.InvalidArgumentError, match="this CPU has no AVX-512"):
      layers(**args, vectors="avx512")
    wide = [(best_h, best_c)]
  else:
    wide = [(best_h, best_c), layers(**args, vectors="avx512"), layers(**by_gate),
            layers(**by_gate, vectors="avx512")]
  if 16 in gate_major:
    vectors = ["avx2"] + (["best"] if "avx512f" not in cpu_flags() else [])
    for value in vectors:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match="panels of 16 units needs the AVX-512 tiles"):
        layers(**by_gate, vectors=value)
  for h_out, c_out in wide:
    for layer in range(len(units_list)):
      np.testing.assert_array_equal(h_out[layer].numpy(), h_avx2[layer].numpy())
      np.testing.assert_array_equal(c_out[layer].numpy(), c_avx2[layer].numpy())
  assert all((c[:, 1].numpy() > 8.1).all() for c in c_avx2)  # tanh's clamp


_INTRA_OP_PROBE = r"""
import sys
sys.path.insert(0, {root!r})
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({threads})
from dataspec import decode_ops
inputs = np.load({inputs!r})
n = int(inputs["n"])
h_out, c_out = decode_ops.load().lstm_layers(
    x=inputs["x"], addend_rows=inputs["addend_rows"],
    h=[inputs[f"h{{i}}"] for i in range(n)], c=[inputs[f"c{{i}}"] for i in range(n)],
    packed=[inputs[f"packed{{i}}"] for i in range(n)],
    addends=[inputs[f"addend{{i}}"] for i in range(n)])
np.savez({outputs!r}, *[t.numpy() for t in h_out + c_out])
"""


@pytest.mark.parametrize("threads", [1, 3])
def test_layers_op_has_the_same_bits_on_any_number_of_threads(tmp_path, threads):
  """The op's result does not depend on how many intra-op threads split it
  (1: one thread does everything; 3: layers of 11 and 5 panels split three
  ways, where there are parts by CPU), against this process's 2+ threads."""
  rng = np.random.default_rng(threads)
  args, kernels = _stack(rng, 256, 5, (44, 20), table=False)
  inputs = {"n": 2, "x": args["x"], "addend_rows": args["addend_rows"]}
  for i in range(2):
    for name in ("h", "c", "packed"):
      inputs[f"{name}{i}"] = args[name][i]
    inputs[f"addend{i}"] = args["addends"][i]
  np.savez(tmp_path / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
  run_python(_INTRA_OP_PROBE.format(root=REPO, threads=threads,
                                    inputs=str(tmp_path / "inputs.npz"),
                                    outputs=str(tmp_path / "outputs.npz")))
  h_out, c_out = _ops().lstm_layers(**args)
  got = np.load(tmp_path / "outputs.npz")
  for i, expected in enumerate(h_out + c_out):
    np.testing.assert_array_equal(got[f"arr_{i}"], expected.numpy())


_FORK_PROBE = r"""
import os, sys
sys.path.insert(0, {root!r})
import numpy as np
import tensorflow as tf
from dataspec import decode_ops
ops = decode_ops.load()
rng = np.random.default_rng(0)
f = lambda *shape: tf.constant(rng.normal(0, 0.5, shape), tf.float32)
args = dict(x=f(256, 8), addend_rows=tf.zeros([0], tf.int32), h=[f(256, 32)], c=[f(256, 32)],
            packed=[decode_ops.pack_kernel(f(8, 128), f(32, 128),
                                           panel_units=decode_ops.panel_units(32))],
            addends=[f(128)])
parent = ops.lstm_layers(**args)[0][0].numpy()  # the helpers' crew exists from here
read, write = os.pipe()
pid = os.fork()
if pid == 0:
  child = ops.lstm_layers(**args)[0][0].numpy()
  os.write(write, b"same" if np.array_equal(child, parent) else b"different")
  os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 16).decode())
"""


def test_ops_run_in_a_child_process_after_fork():
  """The layers op keeps its helper threads for the process (Crew); a
  process forked after it ran has none of them, and there the op runs on
  the pool instead, the same bits, rather than waiting for helpers that
  do not exist (it did, before the fork handler)."""
  assert last_line(run_python(_FORK_PROBE.format(root=REPO), timeout=120)) == "same"


def test_layers_op_rejects_a_bad_layer_and_names_it():
  ops = _ops()
  args, _ = _stack(np.random.default_rng(2), 4, 5, (8, 12), table=True)
  call = lambda **kw: ops.lstm_layers(**dict(args, **kw))
  with pytest.raises(tf.errors.InvalidArgumentError, match="layer 1: packed must be"):
    call(packed=[args["packed"][0], args["packed"][0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match="layer 1: h and c must be"):
    call(c=[args["c"][0], args["c"][0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"layer 0: addend_rows\[0\]"):
    call(addend_rows=tf.constant([9, 0, 0, 0]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="layer 1: addend must be"):
    call(addends=[args["addends"][0], tf.zeros([9, 48])])  # rows picked for layer 0 only
  with pytest.raises(tf.errors.InvalidArgumentError, match="x must be"):
    call(x=tf.zeros([3, 3]))


NOISE_VECTORS = ["best", "avx2"] + (["avx512"] if "avx512f" in cpu_flags() else [])


@pytest.mark.parametrize("vectors", NOISE_VECTORS)
@pytest.mark.parametrize("vocab_size", [1, 5, 16, 17, 68, 257])
def test_gumbel_noise_op_has_the_tensorflow_ops_bits(vocab_size, vectors):
  """Bit for bit serving.gumbel_noise (TensorFlow's ops, the SavedModel's
  sampling), 7 positions x (1, 3, 300) rows: 7 to 540,000 values, rows
  of whole and partial 8- and 16-lane blocks, in the AVX2 and the AVX-512
  code."""
  rng = np.random.default_rng(vocab_size)
  for batch in (1, 3, 300):
    seeds = tf.constant(rng.integers(0, 2**63, batch), tf.int64)
    positions = tf.constant(rng.integers(0, 5000, 7), tf.int32)
    expected = serving.gumbel_noise(seeds, positions, vocab_size).numpy()
    noise = _ops().gumbel_noise(seeds, positions, vocab_size=vocab_size,
                                vectors=vectors).numpy()
    assert noise.shape == expected.shape == (7, batch, vocab_size)
    np.testing.assert_array_equal(noise.view(np.uint32), expected.view(np.uint32))


def test_gumbel_noise_op_matches_on_most_of_the_uniforms():
  """The noise is a function of 23 bits of each value's hash: 6.3M values
  (2 positions x 48 rows x 65,536 ids) reach ~53% of the 2^23, the extreme
  ones among them, in each instruction set's code. (All 2^23 gave the same
  bits in the AVX2 and the AVX-512 code: checked once, 2026-12-04.)"""
  rng = np.random.default_rng(7)
  seeds = tf.constant(rng.integers(0, 2**63, 48), tf.int64)
  positions = tf.constant([0, 2**31 - 1], tf.int32)
  expected = serving.gumbel_noise(seeds, positions, 65536).numpy().view(np.uint32)
  assert np.unique(expected).size > 4_000_000
  for vectors in NOISE_VECTORS[1:]:
    noise = _ops().gumbel_noise(seeds, positions, vocab_size=65536, vectors=vectors)
    np.testing.assert_array_equal(noise.numpy().view(np.uint32), expected)
  if "avx512f" not in cpu_flags():
    with pytest.raises(tf.errors.InvalidArgumentError, match="this CPU has no AVX-512"):
      _ops().gumbel_noise(seeds, positions, vocab_size=5, vectors="avx512")


def test_noise_library_is_built_without_fma_and_needs_no_fma(tmp_path):
  """decode_noise.cc's variant: AVX2 but no FMA instructions (an FMA build's
  log rounds differently from TensorFlow's Log kernel), and it runs on any
  CPU with AVX2, FMA or not."""
  source, variant = decode_ops.LIBRARIES[1]
  assert source.endswith("decode_noise.cc")
  command = native_ops.compile_command(source, variant, "out.so")
  assert "-march=x86-64-v3" in command and "-mno-fma" in command
  assert "-ffp-contract=off" in command  # no FMA in its AVX-512 code either
  v3 = ("flags\t\t: fpu sse2 ssse3 sse4_1 sse4_2 popcnt cx16 lahf_lm avx avx2 bmi1 bmi2 "
        "f16c fma abm movbe xsave\n")
  for flags, runs in ((v3, True), (v3.replace(" fma", ""), True),
                      (v3.replace(" avx2", ""), False), (v3.replace(" sse4_2", ""), False)):
    path = tmp_path / "cpuinfo"
    path.write_text(flags)
    assert native_ops.cpu_runs(variant, cpuinfo=str(path)) is runs, flags


@pytest.mark.parametrize("panel_units,units", [(4, 8), (16, 32)])
def test_pack_kernel_puts_each_panels_units_gates_together(panel_units, units):
  """Panel p holds units n p..n p + n - 1's gate i, then f, g, o (4 n
  columns) for n = panel_units: 4, every tile's layout, or 16, the
  gate-major one panel_units() picks on CPUs with AVX-512 where units is
  a multiple of 16."""
  in_dim = 3
  stacked = np.arange((in_dim + units) * 4 * units, dtype=np.float32).reshape(
      in_dim + units, 4 * units)
  packed = decode_ops.pack_kernel(tf.constant(stacked[:in_dim]), tf.constant(stacked[in_dim:]),
                                  panel_units=panel_units).numpy()
  n = panel_units
  assert packed.shape == (units // n, in_dim + units, 4 * n)
  for panel in range(units // n):
    for gate in range(4):
      for j in range(n):
        np.testing.assert_array_equal(packed[panel, :, n * gate + j],
                                      stacked[:, gate * units + n * panel + j])
  with pytest.raises(ValueError, match=f"multiple of {n}"):
    decode_ops.pack_kernel(None, tf.zeros([6, 4 * (n + 2)]), panel_units=n)


def test_panel_units_are_16_only_with_avx512_and_units_a_multiple_of_16():
  with pytest.raises(ValueError, match="panel_units must be 4 or 16"):
    decode_ops.pack_kernel(None, tf.zeros([6, 4 * 24]), panel_units=8)
  wide = "avx512f" in cpu_flags()
  assert decode_ops.panel_units(256) == (16 if wide else 4)
  assert decode_ops.panel_units(24) == 4


def test_step_rejects_mismatched_shapes():
  x, h = tf.zeros([2, 3]), tf.zeros([2, 8])
  packed = decode_ops.pack_kernel(tf.zeros([3, 32]), tf.zeros([8, 32]))
  step = lambda **kw: _step(**dict(
      dict(x=x, h=h, c=h, packed=packed, addend=tf.zeros([32]), addend_rows=NO_ROWS), **kw))
  with pytest.raises(tf.errors.InvalidArgumentError, match="packed must be"):
    step(packed=packed[:, :-1])
  with pytest.raises(tf.errors.InvalidArgumentError, match="addend must be"):
    step(addend=tf.zeros([3, 32]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="addend must be"):
    step(addend_rows=tf.constant([0, 1]))  # rows picked from a bias
  with pytest.raises(tf.errors.InvalidArgumentError, match="addend_rows must be"):
    step(addend=tf.zeros([5, 32]), addend_rows=tf.constant([0, 1, 2]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"addend_rows\[1\] = 5 is not in"):
    step(addend=tf.zeros([5, 32]), addend_rows=tf.constant([0, 5]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="h and c"):
    step(c=tf.zeros([2, 4]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="x must be"):
    step(x=tf.zeros([3, 3]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="x must be"):
    step(x=tf.zeros([0, 3]))


def _reference_pick(x, kernel, bias, noise, temperature):
  """serving's TensorFlow ops for the same choice."""
  logits = tf.matmul(x, kernel) + bias
  if noise.shape[1] == 0:
    return tf.argmax(logits, axis=-1, output_type=tf.int32)
  return tf.argmax(logits / temperature + noise, axis=-1, output_type=tf.int32)


@pytest.mark.parametrize("rows,depth,vocab", [
    (1, 8, 1), (3, 5, 17), (4, 32, 16), (7, 64, 68), (13, 256, 259), (256, 256, 68)])
@pytest.mark.parametrize("sampled", [True, False])
def test_pick_matches_tensorflow_ops(rows, depth, vocab, sampled):
  """TextgenPick: tiles of 4 rows, columns 16 at a time (partial tiles and
  columns included), the same tokens as the output layer + argmax."""
  rng = np.random.default_rng(rows * vocab)
  x = tf.constant(rng.normal(0, 1, (rows, depth)), tf.float32)
  kernel = tf.constant(rng.normal(0, 0.3, (depth, vocab)), tf.float32)
  bias = tf.constant(rng.normal(0, 0.3, vocab), tf.float32)
  noise = tf.constant(rng.gumbel(size=(rows, vocab if sampled else 0)), tf.float32)
  for temperature in (1.0, 0.7):
    got = _ops().pick(x=x, kernel=kernel, bias=bias, noise=noise, temperature=temperature)
    expected = _reference_pick(x, kernel, bias, noise, temperature)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
  if not sampled:  # greedy: noise may be (0, 0), a constant (serving)
    got = _ops().pick(x=x, kernel=kernel, bias=bias, noise=tf.zeros([0, 0]), temperature=1.0)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


# The choice op's tiles on this CPU: AVX2 always, AVX-512 where it has it.
PICK_VECTORS = ["avx2"] + (["avx512"] if "avx512f" in cpu_flags() else [])


@pytest.mark.parametrize("vectors", PICK_VECTORS)
def test_pick_takes_the_first_of_equal_scores_and_rejects_bad_shapes(vectors):
  """As tf.argmax: the lowest id among equal largest scores, also when every
  score is -inf; each shape mismatch named."""
  pick = lambda **kw: _ops().pick(**dict(
      dict(x=tf.zeros([5, 3]), kernel=tf.zeros([3, 40]), noise=tf.zeros([5, 0]),
           bias=tf.constant([0.0] * 17 + [2.0] + [0.0] * 20 + [2.0, 1.0]),
           temperature=1.0, vectors=vectors), **kw)).numpy().tolist()
  assert pick() == [17] * 5
  assert pick(bias=tf.fill([40], -np.inf)) == [0] * 5
  # Columns 16 apart share a lane; a later pass's lane can be a lower one.
  for ties, first in (((1, 17, 33), 1), ((5, 18), 5), ((39, 23, 7), 7)):
    bias = np.zeros(40, np.float32)
    bias[list(ties)] = 3.0
    assert pick(bias=tf.constant(bias)) == [first] * 5
  # NaN never wins, as in tf.argmax.
  assert pick(bias=tf.constant([1.0, np.nan, 0.5] + [0.0] * 37)) == [0] * 5
  assert pick(bias=tf.fill([40], np.nan)) == [0] * 5
  with pytest.raises(tf.errors.InvalidArgumentError, match="do not fit"):
    pick(kernel=tf.zeros([4, 40]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
    pick(bias=tf.zeros([39]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="noise must be"):
    pick(noise=tf.zeros([5, 39]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="noise must be"):
    pick(noise=tf.zeros([4, 40]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be"):
    pick(temperature=[1.0])


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 13, 100, 256, 301])
@pytest.mark.parametrize("depth,vocab", [(8, 1), (5, 16), (32, 17), (64, 68), (7, 80),
                                         (16, 130), (256, 68)])
def test_avx512_pick_has_the_avx2_picks_tokens(rows, depth, vocab):
  """On CPUs with AVX-512 the choice op runs 512-bit tiles (6 rows by up to
  4 panels of 16 columns; partial tiles, partial panels and several passes
  over the columns here) with the AVX2 tiles' tokens, by default and when
  asked for, sampled and greedy; scores made equal in pairs of columns test
  that the first of them wins in both. Elsewhere asking for them is an error
  that says why."""
  rng = np.random.default_rng(rows * 1000 + vocab)
  x = rng.normal(0, 1, (rows, depth)).astype(np.float32)
  kernel = rng.normal(0, 0.3, (depth, vocab)).astype(np.float32)
  if vocab > 20:  # columns 3 and 19 (one lane), 4 and vocab - 1: the same scores
    kernel[:, 19], kernel[:, vocab - 1] = kernel[:, 3], kernel[:, 4]
  bias = np.zeros(vocab, np.float32)
  noise = rng.gumbel(size=(rows, vocab)).astype(np.float32)
  if vocab > 20:
    noise[:, 19], noise[:, vocab - 1] = noise[:, 3], noise[:, 4]
  args = dict(x=x, kernel=kernel, bias=bias)
  pick = _ops().pick
  for noise_value, temperature in ((noise, 0.7), (noise, 1.0), (np.zeros([rows, 0]), 1.0)):
    avx2 = pick(**args, noise=noise_value, temperature=temperature, vectors="avx2").numpy()
    np.testing.assert_array_equal(
        avx2, _reference_pick(x, kernel, bias, tf.constant(noise_value, tf.float32),
                              temperature).numpy())
    best = pick(**args, noise=noise_value, temperature=temperature).numpy()
    np.testing.assert_array_equal(best, avx2)
    if "avx512f" not in cpu_flags():
      with pytest.raises(tf.errors.InvalidArgumentError, match="this CPU has no AVX-512"):
        pick(**args, noise=noise_value, temperature=temperature, vectors="avx512")
    else:
      wide = pick(**args, noise=noise_value, temperature=temperature, vectors="avx512").numpy()
      np.testing.assert_array_equal(wide, avx2)
    if vocab > 20:  # the later of two equal columns is never chosen
      assert not np.isin(avx2, [19, vocab - 1]).any()


needs_amx = pytest.mark.skipif(not decode_ops.amx_runs_here(),
                               reason="TextgenLstmLayersBf16 needs a CPU with AMX-BF16")


def _bf16(t):
  """t rounded to bfloat16 (nearest even), as float64."""
  return tf.cast(tf.cast(t, tf.bfloat16), tf.float64).numpy()


def test_pack_kernel_bf16_pairs_input_rows_for_amx():
  """Panel p, gate g, row k holds input rows 2 k and 2 k + 1 of units 16 p..
  16 p + 15 of gate g, interleaved, rounded to bfloat16; rows past the
  input's padded to a multiple of 32 with zeros."""
  rng = np.random.default_rng(4)
  kernel, recurrent = rng.normal(size=(5, 128)), rng.normal(size=(32, 128))
  packed = decode_ops.pack_kernel_bf16(tf.constant(kernel, tf.float32),
                                       tf.constant(recurrent, tf.float32))
  assert packed.dtype == tf.bfloat16 and packed.shape == (2, 4, 32, 32)
  stacked = _bf16(np.concatenate([kernel, recurrent]).astype(np.float32))
  got = tf.cast(packed, tf.float64).numpy()
  for p, g, k, j, e in [(0, 0, 0, 0, 0), (1, 2, 3, 15, 1), (0, 3, 18, 7, 0), (1, 1, 18, 2, 0)]:
    assert got[p, g, k, 2 * j + e] == stacked[2 * k + e, g * 32 + 16 * p + j]
  assert not got[:, :, 19:].any() and not got[:, :, 18, 1::2].any()  # rows 37.. are padding
  with pytest.raises(ValueError, match="multiple of 16"):
    decode_ops.pack_kernel_bf16(None, tf.zeros([8, 32]))


def _stack_bf16(rng, rows, in_dim, units_list, table):
  args, kernels = _stack(rng, rows, in_dim, units_list, table)
  args["packed"] = [decode_ops.pack_kernel_bf16(*k) for k in kernels]
  return args, kernels


@needs_amx
@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40, 256])
@pytest.mark.parametrize("units_list,table", [
    ((16,), True), ((16, 32), False), ((48, 16, 32), True)])
def test_bf16_layers_op_runs_bfloat16_products_with_float32_sums(rows, units_list, table):
  """TextgenLstmLayersBf16: each layer's z is [x, h] @ [kernel; recurrent
  kernel], both rounded to bfloat16, summed in float32, plus the addend;
  then the same gate math as float32's. Against float64 sums of the same
  bfloat16 values (each layer's input: the op's h' below), and a row's
  result, bits included, does not depend on the rows beside it (the op on
  16 rows at a time, where it splits by panels instead of by rows)."""
  rng = np.random.default_rng(rows + len(units_list))
  args, kernels = _stack_bf16(rng, rows, 5, units_list, table)
  h_out, c_out = _ops().lstm_layers_bf16(**args)
  x = args["x"].numpy()
  for layer, (kernel, recurrent) in enumerate(kernels):
    xh = args["h"][layer].numpy() if kernel is None else np.concatenate(
        [x, args["h"][layer].numpy()], 1)
    stacked = recurrent if kernel is None else tf.concat([kernel, recurrent], 0)
    addend = args["addends"][layer].numpy()
    if layer == 0 and table:
      addend = addend[args["addend_rows"].numpy()]
    z = _bf16(xh) @ _bf16(stacked) + addend
    i, f, g, o = np.split(z, 4, axis=1)
    sig = lambda v: 1 / (1 + np.exp(-v))
    c = sig(f) * args["c"][layer].numpy() + sig(i) * np.tanh(g)
    np.testing.assert_allclose(c_out[layer].numpy(), c, rtol=0, atol=2e-6)
    np.testing.assert_allclose(h_out[layer].numpy(), sig(o) * np.tanh(c), rtol=0, atol=2e-6)
    x = h_out[layer].numpy()
  for start in range(0, rows, 16):
    part = lambda t, start=start: t[start:start + 16]
    some = dict(args, h=[part(t) for t in args["h"]], c=[part(t) for t in args["c"]],
                x=args["x"] if table else part(args["x"]),
                addend_rows=part(args["addend_rows"]) if table else NO_ROWS)
    h_some, c_some = _ops().lstm_layers_bf16(**some)
    for layer in range(len(units_list)):
      np.testing.assert_array_equal(h_some[layer].numpy(), part(h_out[layer]).numpy())
      np.testing.assert_array_equal(c_some[layer].numpy(), part(c_out[layer]).numpy())


@needs_amx
def test_bf16_layers_op_rejects_a_bad_layer_and_names_it():
  ops = _ops()
  args, kernels = _stack_bf16(np.random.default_rng(2), 4, 5, (16, 32), table=True)
  call = lambda **kw: ops.lstm_layers_bf16(**dict(args, **kw))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"layer 1: packed must be \(units / 16, 4, depth / 2, 32\) = "
                           r"\(2, 4, 32, 32\)"):
    call(packed=[args["packed"][0], args["packed"][0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match="layer 1: h and c must be"):
    call(c=[args["c"][0], args["c"][0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"layer 0: addend_rows\[0\]"):
    call(addend_rows=tf.constant([9, 0, 0, 0]))


def _model(decode_ops_value, *, units=32, embedding=16, layers=2, seed=0, precision="float32"):
  vocab = list(tokenizer_lib.RESERVED_TOKENS) + list("abcdefgh ")
  spec = export_lib.ModelSpec(vocab_size=len(vocab), embedding_dim=embedding, units=units,
                              num_layers=layers, window_length=16)
  rng = np.random.default_rng(seed)
  weights = {name: rng.normal(0, 0.4, shape).astype(np.float32)
             for name, shape in export_lib.weight_shapes(spec).items()}
  return serving.LanguageModel(spec, weights, tokenizer_lib.TokenizerSpec(type="char"),
                               vocab, decode_ops=decode_ops_value, precision=precision)


SETTINGS = [  # (greedy, top_k, top_p, stop): each of the four decoding loops
    (False, 0, 1.0, ()), (True, 0, 1.0, ()), (False, 3, 0.9, ()), (False, 0, 1.0, ("ha",))]


@pytest.mark.parametrize("input_table", [True, False])
@pytest.mark.parametrize("pick", [True, False])
def test_fused_decoding_writes_the_tensorflow_paths_text(input_table, pick, monkeypatch):
  """Prefill and decoding through the ops (with and without TextgenPick):
  the same tokens as TensorFlow's ops (the SavedModel's path) here, in each
  decoding loop; the states differ by float rounding only."""
  if not input_table:
    monkeypatch.setattr(serving, "INPUT_TABLE_MAX_FLOATS", 0)
  if not pick:
    monkeypatch.setattr(serving, "PICK_MAX_FLOATS", 0)
  assert (_model("fused")._pick_op is not None) == pick  # pylint: disable=protected-access
  prompts = tf.constant(["abc", "hag f", "a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"])
  index, zeros = tf.range(4, dtype=tf.int64), tf.zeros([4], tf.int64)
  for greedy, top_k, top_p, stop in SETTINGS:
    outputs = []
    for value in ("tensorflow", "fused"):
      sample = _model(value).sampler(temperature=0.8, top_k=top_k, top_p=top_p,
                                     greedy=greedy, seed=3, stop=stop)
      outputs.append(sample(prompts, index, zeros, tf.constant(60)))
    for key in ("token_ids", "text", "num_tokens"):
      np.testing.assert_array_equal(outputs[0][key].numpy(), outputs[1][key].numpy())
  ids = tf.constant([[4, 5, 6, 7, 8, 9, 10, 11]] * 3)
  lengths = tf.constant([8, 3, 5])
  results = []
  for value in ("tensorflow", "fused"):
    lm = _model(value)
    w = lm._read_weights()  # pylint: disable=protected-access
    head, h, c = lm._prefill(ids, lengths, w)  # pylint: disable=protected-access
    if lm._pick_op is not None:  # pylint: disable=protected-access
      head = lm._logits(head, w)  # pylint: disable=protected-access
    results.append((head, h, c))
  for fused, reference in zip(results[1], results[0]):
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)


def _prompt_states_are_stepping_its_tokens(lm, w, ids, lengths):
  """Asserts that lm's prefill of ids (rows of `lengths` tokens) leaves,
  bit for bit, the head and states of stepping each row's tokens one at a
  time at batch 1 (a 2-layer model of 32 units); returns the prefill's h."""
  head, h, c = lm._prefill(ids, tf.constant(lengths), w)  # pylint: disable=protected-access
  for row, n in enumerate(lengths):
    zero = tf.zeros([1, 32])
    top, hs, cs = None, (zero, zero), (zero, zero)
    for t in range(n):
      top, hs, cs = lm._step(ids[row:row + 1, t], hs, cs, w)  # pylint: disable=protected-access
    np.testing.assert_array_equal(head[row].numpy(), top[0].numpy())
    np.testing.assert_array_equal(h[:, row].numpy(), tf.concat(hs, 0).numpy())
    np.testing.assert_array_equal(c[:, row].numpy(), tf.concat(cs, 0).numpy())
  return h


@pytest.mark.parametrize("input_table", [True, False])
def test_fused_prompt_leaves_the_states_of_decoding_it_token_by_token(input_table,
                                                                       monkeypatch):
  """The prompt runs position after position through the layers op, as
  decoding does: its states are, bit for bit, those of stepping each row's
  tokens one at a time at batch 1 (rows of 3-40 tokens, across prefill's
  chunks of 32). Scoring (every position's top output) agrees with
  TensorFlow's path."""
  if not input_table:
    monkeypatch.setattr(serving, "INPUT_TABLE_MAX_FLOATS", 0)
  lm = _model("fused")
  w = lm._read_weights()  # pylint: disable=protected-access
  lengths = [40, 3, 33, 32]
  ids = tf.constant(np.random.default_rng(5).integers(3, 12, (4, 40)), tf.int32)
  h = _prompt_states_are_stepping_its_tokens(lm, w, ids, lengths)
  texts = tf.constant(["abc hag", "", "bad cafe " * 9])
  models = [_model("tensorflow"), lm]
  scores = [model.score(texts) for model in models]
  for key in scores[0]:
    np.testing.assert_allclose(scores[1][key].numpy(), scores[0][key].numpy(), rtol=1e-5)


@needs_amx
@pytest.mark.parametrize("input_table", [True, False])
def test_fused_bf16_prompt_leaves_the_states_of_decoding_and_near_float32s(input_table,
                                                                          monkeypatch):
  """LanguageModel(decode_ops="fused", precision="bfloat16"): the layers op
  on AMX. Its prompt's states are, bit for bit, those of stepping each
  row's tokens one at a time; they are float32's within bfloat16's
  rounding; its samples do not depend on the batch."""
  if not input_table:
    monkeypatch.setattr(serving, "INPUT_TABLE_MAX_FLOATS", 0)
  lm = _model("fused", precision="bfloat16")
  assert lm._layers_op is _ops().lstm_layers_bf16  # pylint: disable=protected-access
  w = lm._read_weights()  # pylint: disable=protected-access
  assert w.output_kernel.dtype == tf.float32  # TextgenPick's, of the bfloat16 weights
  lengths = [40, 3, 33]
  ids = tf.constant(np.random.default_rng(5).integers(3, 12, (3, 40)), tf.int32)
  h = _prompt_states_are_stepping_its_tokens(lm, w, ids, lengths)
  full = _model("fused")
  _, h32, _ = full._prefill(ids, tf.constant(lengths), full._read_weights())  # pylint: disable=protected-access
  np.testing.assert_allclose(h.numpy(), h32.numpy(), atol=0.03)
  assert np.abs(h.numpy() - h32.numpy()).max() > 0  # not float32's products
  prompts = tf.constant(["abc", "hag f", "a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"] * 5)
  sample = lm.sampler(temperature=0.8, top_k=0, top_p=1.0, greedy=False, seed=3, stop=())
  index, zeros = tf.range(20, dtype=tf.int64), tf.zeros([20], tf.int64)
  together = sample(prompts, index, zeros, tf.constant(30))["text"].numpy()
  for i in (0, 7, 19):
    alone = sample(prompts[i:i + 1], index[i:i + 1], zeros[:1], tf.constant(30))["text"]
    assert alone.numpy()[0] == together[i]


def test_fused_bf16_model_needs_amx_and_units_a_multiple_of_16(monkeypatch):
  if decode_ops.amx_runs_here():
    with pytest.raises(ValueError, match="multiple of 16 with bfloat16"):
      _model("fused", units=40, precision="bfloat16")
  monkeypatch.setattr(decode_ops, "amx_runs_here", lambda: False)
  with pytest.raises(ValueError, match="AMX, which this CPU has not"):
    _model("fused", precision="bfloat16")
  # A CPU with AMX whose OS does not hand out its tile state (Linux before
  # 5.16): the op's own error, when the model is made, not at its first
  # batch (that OS is not at hand: the op stands in).
  def refused(**_):
    raise tf.errors.FailedPreconditionError(None, None, "the OS does not let this process "
                                            "use AMX (arch_prctl ARCH_REQ_XCOMP_PERM: ...)")
  ops = _ops()._replace(lstm_layers_bf16=refused)
  monkeypatch.setattr(decode_ops, "amx_runs_here", lambda: True)
  monkeypatch.setattr(decode_ops, "load", lambda: ops)
  with pytest.raises(ValueError, match="bfloat16': the OS does not let this process use AMX"):
    _model("fused", precision="bfloat16")


def test_pick_runs_only_where_the_output_layer_is_small():
  """TextgenPick for char and byte models' output layers; a large
  vocabulary's layer or a projection stays TensorFlow's matmul."""
  assert _model("fused")._pick_op is not None  # pylint: disable=protected-access
  assert _model("tensorflow")._pick_op is None  # pylint: disable=protected-access
  vocab = list(tokenizer_lib.RESERVED_TOKENS) + [chr(0x100 + i) for i in range(1021)]
  for vocab_size, projection, picks in ((len(vocab), 0, False), (12, 8, False)):
    spec = export_lib.ModelSpec(vocab_size=vocab_size, embedding_dim=8, units=256,
                                num_layers=1, window_length=16, projection_dim=projection)
    weights = {name: np.zeros(shape, np.float32)
               for name, shape in export_lib.weight_shapes(spec).items()}
    lm = serving.LanguageModel(spec, weights, tokenizer_lib.TokenizerSpec(type="char"),
                               vocab[:vocab_size], decode_ops="fused")
    assert (lm._pick_op is not None) == picks  # pylint: disable=protected-access


def test_fused_model_refuses_what_it_cannot_do(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="decode_ops must be one of"):
    _model("xla")
  with pytest.raises(ValueError, match="multiple of 4"):
    _model("fused", units=30)
  with pytest.raises(ValueError, match="SavedModel holds TensorFlow's ops only"):
    serving.save(str(tmp_path / "saved"), _model("fused"))
  assert not (tmp_path / "saved").exists()
  # Not built (another TensorFlow, no compiler): a warning that says how,
  # and the model says the op does not run here.
  monkeypatch.setattr(decode_ops, "_DIR", str(tmp_path))
  decode_ops.load.cache_clear()
  try:
    warnings = []
    monkeypatch.setattr(decode_ops.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    with pytest.raises(ValueError, match="python -m dataspec.decode_ops"):
      _model("fused")
    assert "python -m dataspec.decode_ops" in warnings[0]
  finally:
    monkeypatch.undo()
    decode_ops.load.cache_clear()


_THREADS_PROBE = r"""
import glob, os, sys
sys.path.insert(0, {root!r})
from dataspec import decode_ops
{setup}
import tensorflow as tf
tf.function(lambda x: x + 1)(tf.constant(1))
names = [open(task + "/comm").read().strip() for task in glob.glob("/proc/self/task/*")]
print(names.count("tf_Compute"))  # TensorFlow's inter-op threads
"""


@pytest.mark.parametrize("setup,one", [
    ("assert decode_ops.use_one_inter_op_thread()", True),
    # the user's own setting wins
    ("os.environ[decode_ops.INTER_OP_ENV] = '2'; assert not decode_ops.use_one_inter_op_thread()",
     False),
    ("", False),  # TensorFlow's default: the control
    # too late: an op already started TensorFlow's threads
    ("import tensorflow as tf; tf.constant(1) + 1; decode_ops.use_one_inter_op_thread()", False),
])
def test_one_inter_op_thread_when_asked_before_the_first_op(setup, one):
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("TensorFlow starts one inter-op thread anyway on one CPU")
  env = {k: v for k, v in os.environ.items() if k != decode_ops.INTER_OP_ENV}
  threads = int(last_line(run_python(_THREADS_PROBE.format(root=REPO, setup=setup), env=env)))
  assert threads == 1 if one else threads >= 2
