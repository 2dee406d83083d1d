"""Stateful batched LSTM decoding, in TensorFlow graphs built from the export.

The prompt is run once (`prefill`), then every new token costs one LSTM step
per layer (`decode`): the state carries the context, so prompts longer than
the training window are fine and nothing is recomputed per token.

Random choices use Gumbel-max with noise hashed from (row seed, position,
token id), so a sample depends only on the seed, its prompt and its sample
index: not on the batch size, the batch it landed in or the shard.
"""

from typing import Dict

import numpy as np
import tensorflow as tf

from dataspec import export as export_lib

_MASK32 = 0xFFFFFFFF


def _mix32(x):
  """murmur3's 32-bit finalizer on int64 tensors holding uint32 values."""
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
  x = tf.bitwise.bitwise_and(x * 0x85EBCA6B, _MASK32)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13))
  x = tf.bitwise.bitwise_and(x * 0xC2B2AE35, _MASK32)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hashed_uniform(row_seeds, position, vocab_size):
  """(batch, vocab) uniforms in (0, 1) from per-row seeds and a position."""
  rows = tf.cast(row_seeds, tf.int64)[:, None]  # (batch, 1)
  cols = tf.range(vocab_size, dtype=tf.int64)[None, :]  # (1, vocab)
  pos = tf.cast(position, tf.int64)
  x = tf.bitwise.bitwise_and(rows * 0x9E3779B1 + pos * 0x85EBCA77, _MASK32)
  x = _mix32(tf.bitwise.bitwise_and(_mix32(x) + cols * 0xC2B2AE3D, _MASK32))
  return (tf.cast(x, tf.float64) + 0.5) / 4294967296.0


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
  """A 31-bit seed for one sample, the same on every machine."""
  x = (seed * 1_000_003 + prompt_index) * 1_000_033 + sample_index
  x = (x ^ (x >> 29)) * 0xBF58476D1CE4E5B9 & (2**64 - 1)
  x = (x ^ (x >> 32)) & 0x7FFFFFFF
  return x


class Decoder:
  """Runs an exported model step by step on batches.

  Args:
    spec: the ModelSpec from model_config.json.
    weights: arrays named as in dataspec.export.
  """

  def __init__(self, spec: export_lib.ModelSpec, weights: Dict[str, np.ndarray]):
    self.spec = spec
    c = lambda name: tf.constant(weights[name], dtype=tf.float32)
    self._embedding = c("embedding")
    self._layers = [(c(f"lstm_{i}/kernel"), c(f"lstm_{i}/recurrent_kernel"),
                     c(f"lstm_{i}/bias")) for i in range(spec.num_layers)]
    self._projection = ((c("projection/kernel"), c("projection/bias"))
                        if spec.projection_dim else None)
    self._output = (c("output/kernel"), c("output/bias"))
    # Bound here (not as decorated methods) so the graphs keep the decoder alive.
    self.prefill = tf.function(self._prefill, reduce_retracing=True)
    self.decode = tf.function(self._decode, reduce_retracing=True)

  def zero_state(self, batch: int):
    z = tf.zeros([batch, self.spec.units])
    return [(z, z) for _ in range(self.spec.num_layers)]

  def _step(self, tokens, states):
    """One position: tokens (batch,) -> logits (batch, vocab), new states."""
    x = tf.gather(self._embedding, tokens)  # (batch, embedding_dim)
    new_states = []
    for (kernel, recurrent, bias), (h, c) in zip(self._layers, states):
      z = tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias  # (batch, 4 units)
      i, f, g, o = tf.split(z, 4, axis=-1)
      c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
      h = tf.sigmoid(o) * tf.tanh(c)
      new_states.append((h, c))
      x = h
    if self._projection is not None:
      x = tf.matmul(x, self._projection[0]) + self._projection[1]
    logits = tf.matmul(x, self._output[0]) + self._output[1]  # (batch, vocab)
    return logits, new_states

  def _prefill(self, tokens, lengths):
    """Runs prompts of different lengths (right-padded) through the model.

    Args:
      tokens: int32 (batch, max_len), row i valid up to lengths[i] (>= 1).
      lengths: int32 (batch,).

    Returns:
      (states after each row's last prompt token, logits there (batch, vocab)).
    """
    batch = tf.shape(tokens)[0]
    states = self.zero_state(batch)
    last = tf.zeros([batch, self.spec.vocab_size])
    for t in tf.range(tf.shape(tokens)[1]):
      tf.autograph.experimental.set_loop_options(
          shape_invariants=[(last, tf.TensorShape([None, self.spec.vocab_size]))])
      logits, new_states = self._step(tokens[:, t], states)
      active = (t < lengths)[:, None]  # rows whose prompt is still going
      states = [(tf.where(active, h2, h1), tf.where(active, c2, c1))
                for (h1, c1), (h2, c2) in zip(states, new_states)]
      last = tf.where(active, logits, last)
    return states, last

  def _decode(self, states, logits, *, row_seeds, start, num_steps, temperature,
             top_k, top_p, greedy):
    """Samples `num_steps` tokens per row.

    Args:
      states, logits: from prefill or the previous decode call.
      row_seeds: int64 (batch,), see row_seed().
      start: position of the first new token (for the noise).
      num_steps: tokens to produce.
      temperature, top_k (0 = off), top_p (1 = off), greedy: sampling.

    Returns:
      (tokens int32 (batch, num_steps), states, logits after the last token).
    """
    out = tf.TensorArray(tf.int32, size=num_steps)
    vocab = self.spec.vocab_size
    for n in tf.range(num_steps):
      scaled = tf.cast(logits, tf.float64) / tf.cast(temperature, tf.float64)
      if top_k > 0:
        kth = tf.math.top_k(scaled, k=tf.minimum(top_k, vocab)).values[:, -1:]
        scaled = tf.where(scaled < kth, tf.constant(-np.inf, tf.float64), scaled)
      if top_p < 1.0:
        sorted_logits = tf.sort(scaled, direction="DESCENDING")
        probs = tf.nn.softmax(sorted_logits)
        before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of better tokens
        cutoff_index = tf.reduce_sum(tf.cast(before < tf.cast(top_p, tf.float64), tf.int32), -1)
        cutoff = tf.gather(sorted_logits, tf.maximum(cutoff_index - 1, 0), batch_dims=1)
        scaled = tf.where(scaled < cutoff[:, None], tf.constant(-np.inf, tf.float64), scaled)
      u = hashed_uniform(row_seeds, start + n, vocab)
      gumbel = -tf.math.log(-tf.math.log(u))
      sampled = tf.argmax(scaled + gumbel, axis=-1, output_type=tf.int32)
      best = tf.argmax(logits, axis=-1, output_type=tf.int32)
      token = tf.where(greedy, best, sampled)
      out = out.write(n, token)
      logits, states = self._step(token, states)
    return tf.transpose(out.stack()), states, logits
