"""The LSTM layer's CPU path: whole-sequence GEMMs and a hand-written backward.

On a GPU the trainer uses `keras.layers.LSTM`, whose fused cuDNN kernel is
the fastest there is. On a CPU, Keras runs its generic RNN loop: every time
step multiplies the step's inputs by the input kernel and differentiates
through the loop op by op. `CpuLSTM` is the same layer (a subclass: same
weights, same names, same checkpoint keys, same config) whose inner loop on
CPU does what cuDNN and oneDNN do:

  forward   one GEMM for the input half of every step, (time * batch, in) x
            (in, 4 units); then per step only h @ recurrent_kernel and the
            gate math, the activated gates kept for the backward pass;
  backward  per step (in reverse) only the gate derivatives and dz @
            recurrent_kernel^T; the weight gradients are then two GEMMs over
            all steps (inputs^T dZ, h_prev^T dZ) and the input gradient one
            (dZ kernel^T), instead of T small ones each.

Where the compiled ops are built (`trainer/lstm_ops.cc`): in float32 on
AVX2 CPUs without AVX-512 each direction of a row block's recurrence is one
op (the per-step products in Eigen, which beat TensorFlow's MatMul there),
and the block's input GEMM and weight and input gradients are Eigen
products on one core too (`_matmul`: the trainer 1.05x faster at batch 256,
1.06x at 64 than with TensorFlow's MatMul for them, 2 alternating rounds,
2026-12-02);
elsewhere, and in bfloat16, each step's gate math is one compiled op per
direction inside TensorFlow loops. Without them, TensorFlow ops.

The math is Keras's LSTM with its defaults (gates i, f, c, o; sigmoid and
tanh; c' = f c + i c~, h' = o tanh(c')): tests/trainer/test_fused_lstm.py
compares outputs and gradients with keras.layers.LSTM on the same weights.
"""

import os

import keras
import tensorflow as tf

from trainer import lstm_ops


def use_fused_cpu_path(*, gpus: int, recurrent_dropout: float) -> bool:
  """Which LSTM runs: the fused CPU path only without GPUs (on a GPU the
  Keras layer selects cuDNN) and without recurrent dropout (which neither
  fused path supports)."""
  return gpus == 0 and not recurrent_dropout


def _gate_ops(dtype):
  """The compiled gate ops for `dtype` (float32 and bfloat16), or None."""
  return lstm_ops.load() if dtype in (tf.float32, tf.bfloat16) else None


def _sequence_ops(dtype):
  """The compiled whole-sequence ops for float32 where they are the faster
  path on this CPU (lstm_ops.runs_whole_sequences), else None."""
  return lstm_ops.sequence_ops() if dtype == tf.float32 else None


def _matmul_ops(dtype):
  """The compiled ops whose `textgen_mat_mul` runs a row block's big
  products (see _matmul), or None: where the whole-sequence ops run."""
  return _sequence_ops(dtype)


def _matmul(a, b, *, transpose_a=False, transpose_b=False):
  """tf.matmul, or on one core in Eigen (TextgenMatMul) where the row blocks
  run whole-sequence ops: then each block's input GEMM and weight and input
  gradients run side by side like its recurrence, instead of one after
  another on TensorFlow's intra-op threads."""
  ops = _matmul_ops(a.dtype)
  if ops is None:
    return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
  return ops.textgen_mat_mul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)


def _recurrence(xw, recurrent_kernel, bias, h0, c0):
  """Runs the LSTM over time given the input half of every step.

  Args:
    xw: (time, batch, 4 units) inputs @ kernel, time-major, without the bias.
    recurrent_kernel: (units, 4 units).
    bias: (4 units), added to every step's gates: inside the sequence op
      where it runs, and its gradient summed there step by step (a separate
      add over xw and sum over dz cost about 3% of the trainer's step at
      batch 256, 2026-12-03).
    h0, c0: (batch, units) initial state.

  Returns:
    (outputs (time, batch, units), h, c after the last step).
  """

  ops = _gate_ops(xw.dtype)
  sequence = _sequence_ops(xw.dtype)

  @tf.custom_gradient
  def run(xw, recurrent_kernel, bias, h0, c0):
    time = tf.shape(xw)[0]
    units = tf.shape(h0)[1]
    if sequence is None:
      xw = xw + bias

    def step(t, h, c, hs, acts, cs):
      if ops is not None:
        h, c, act = ops.textgen_lstm_gates(xw[t], tf.matmul(h, recurrent_kernel), c)
        return t + 1, h, c, hs.write(t, h), acts.write(t, act), cs.write(t + 1, c)
      z = xw[t] + tf.matmul(h, recurrent_kernel)  # (batch, 4 units)
      i, f, g, o = tf.split(z, 4, axis=1)
      i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
      act = tf.concat([i, f, g, o], 1)
      c = f * c + i * g
      h = o * tf.tanh(c)
      return t + 1, h, c, hs.write(t, h), acts.write(t, act), cs.write(t + 1, c)

    array = lambda size: tf.TensorArray(xw.dtype, size=size)
    # cs holds c0 first: cs[t] is step t's previous cell state, cs[t + 1] its own.
    if sequence is not None:
      outputs, h, c, acts, cs = sequence.textgen_lstm_sequence(xw, recurrent_kernel, h0, c0,
                                                               bias)
    else:
      _, h, c, hs, acts, cs = tf.while_loop(
          lambda t, *_: t < time, step,
          (tf.constant(0), h0, c0, array(time), array(time), array(time + 1).write(0, c0)))
      outputs = hs.stack()  # (time, batch, units)
      acts, cs = acts.stack(), cs.stack()

    def grad(d_outputs, d_h, d_c):
      zeros = lambda d, like: tf.zeros_like(like) if d is None else tf.convert_to_tensor(d)
      d_outputs, d_h, d_c = zeros(d_outputs, outputs), zeros(d_h, h0), zeros(d_c, c0)
      recurrent_t = tf.transpose(recurrent_kernel)  # (4 units, units)

      def back(k, dh_next, dc_next, dzs):
        t = time - 1 - k  # backwards
        dh = d_outputs[t] + dh_next
        if ops is not None:
          dz, dc_prev = ops.textgen_lstm_gates_grad(dh, dc_next, acts[t], cs[t], cs[t + 1])
          return k + 1, tf.matmul(dz, recurrent_t), dc_prev, dzs.write(t, dz)
        i, f, g, o = tf.split(acts[t], 4, axis=1)
        tc = tf.tanh(cs[t + 1])  # recomputed: cheaper than keeping (time, batch, units)
        dc = dh * o * (1.0 - tc * tc) + dc_next
        dz = tf.concat([dc * g * i * (1.0 - i),
                        dc * cs[t] * f * (1.0 - f),
                        dc * i * (1.0 - g * g),
                        dh * tc * o * (1.0 - o)], 1)  # (batch, 4 units)
        return k + 1, tf.matmul(dz, recurrent_t), dc * f, dzs.write(t, dz)

      if sequence is not None:
        dz, dh0, dc0, d_bias = sequence.textgen_lstm_sequence_grad(
            d_outputs, d_h, d_c, acts, cs, recurrent_kernel)
      else:
        _, dh0, dc0, dzs = tf.while_loop(
            lambda k, *_: k < time, back, (tf.constant(0), d_h, d_c, array(time)))
        dz = dzs.stack()  # (time, batch, 4 units) = d xw
        d_bias = tf.reduce_sum(dz, [0, 1])
      # h_prev^T dz over all steps, without building h_prev = [h0, outputs[:-1]].
      flat = lambda x, width: tf.reshape(x, [-1, width])
      d_recurrent = (_matmul(flat(outputs[:-1], units), flat(dz[1:], 4 * units),
                             transpose_a=True)
                     + _matmul(h0, dz[0], transpose_a=True))
      return dz, d_recurrent, d_bias, dh0, dc0

    return (outputs, h, c), grad

  return run(xw, recurrent_kernel, bias, h0, c0)


def lstm_sequence(inputs, kernel, recurrent_kernel, bias, h0, c0, *, parts: int = 1):
  """An LSTM over batch-major inputs (batch, time, in).

  Args:
    inputs: (batch, time, in).
    kernel, recurrent_kernel, bias: the layer's weights.
    h0, c0: (batch, units) initial state.
    parts: the batch is cut into this many row blocks whose recurrences are
      independent loops, which TensorFlow runs at the same time on different
      cores: a step's small (rows, units) x (units, 4 units) product uses
      about one core however many there are (2 cores, the trainer at batch
      64: 43,800 tokens/s with 2 parts, 37,900 with 1; at 256 the same).

  Returns:
    (outputs (batch, time, units), h, c after the last step).
  """
  if parts <= 1:
    outputs, h, c = _time_major(inputs, h0, c0, kernel=kernel,
                                recurrent_kernel=recurrent_kernel, bias=bias)
    return tf.transpose(outputs, [1, 0, 2]), h, c
  # The batch is cut before the input GEMM, not after: cutting xw (time,
  # batch, 4 units) along its batch axis copied all of it (134 MB per layer
  # at batch 256), the inputs are a quarter of that or less.
  batch = tf.shape(inputs)[0]
  sizes = tf.stack([batch // parts] * (parts - 1) + [batch - (parts - 1) * (batch // parts)])
  results = [_time_major(*args, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias)
             for args in zip(tf.split(inputs, sizes, num=parts), tf.split(h0, sizes, num=parts),
                             tf.split(c0, sizes, num=parts))]
  outputs = tf.concat([tf.transpose(r[0], [1, 0, 2]) for r in results], 0)
  return (outputs, tf.concat([r[1] for r in results], 0),
          tf.concat([r[2] for r in results], 0))


def _time_major(inputs, h0, c0, *, kernel, recurrent_kernel, bias):
  """One row block: inputs (rows, time, in) -> (outputs (time, rows,
  units), h, c), the input half of every step as one GEMM."""
  rows, time = tf.shape(inputs)[0], tf.shape(inputs)[1]
  x = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, tf.shape(inputs)[2]])
  xw = tf.reshape(_matmul(x, kernel), [time, rows, tf.shape(kernel)[1]])
  return _recurrence(xw, recurrent_kernel, bias, h0, c0)


# Two row blocks per core only where each keeps this many rows (parts_for).
MIN_BLOCK_ROWS = 64


@keras.saving.register_keras_serializable(package="textgen")
class CpuLSTM(keras.layers.LSTM):
  """keras.layers.LSTM with the fused CPU inner loop (see the module doc).

  Falls back to Keras's own loop for what the fused loop does not do: masks,
  recurrent dropout, input dropout inside the layer, reversed sequences,
  other activations.
  """

  def inner_loop(self, sequences, initial_state, mask, training=False):
    cell = self.cell
    if (mask is not None or self.go_backwards or self.unroll or cell.dropout
        or cell.recurrent_dropout or cell.activation is not keras.activations.tanh
        or cell.recurrent_activation is not keras.activations.sigmoid
        or not cell.use_bias):
      return super().inner_loop(sequences, initial_state, mask, training=training)
    h0, c0 = initial_state
    dtype = sequences.dtype
    outputs, h, c = lstm_sequence(
        sequences, tf.cast(cell.kernel, dtype), tf.cast(cell.recurrent_kernel, dtype),
        tf.cast(cell.bias, dtype), tf.cast(h0, dtype), tf.cast(c0, dtype),
        parts=self.parts_for(sequences.shape[0]))
    return h, outputs, [h, c]

  @property
  def parts(self) -> int:
    """Row blocks of the batch run side by side: one per core (at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))

  def parts_for(self, rows) -> int:
    """Row blocks for a batch of `rows` (None: not known when traced): one
    per core (`parts`), two per core where each block still has at least
    MIN_BLOCK_ROWS rows. Two cores of the AVX2 VM, the trainer, 3 alternating
    rounds each (2026-12-02): at batch 256, 4 blocks of 64 rows ran 1.13x
    as fast as 2 of 128 (the four independent recurrences keep both cores
    busy where two leave gaps) and 1.02x as fast as 8 of 32; at batch 64, 4
    blocks of 16 rows ran 0.90x as fast as 2 of 32. Checked again with the
    blocks' products in TextgenMatMul (2026-12-03 00:30 UTC, 3 rounds): 4
    blocks 1.04x as fast as 8 at batch 256, 2 blocks 1.07x as fast as 4 at
    batch 64."""
    parts = self.parts
    if rows is not None and rows >= 2 * parts * MIN_BLOCK_ROWS:
      return 2 * parts
    return parts
