"""The sampling noise of generation (dataspec/serving.py): finite, Gumbel
distributed, and Gumbel-max picks tokens with the softmax's probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from dataspec import serving

_EULER_GAMMA = 0.5772156649


def test_uniforms_are_strictly_inside_0_1_for_every_hash_value():
  edges = np.array([0, 1, 511, 512, 2**31 - 1, 2**31, 2**32 - 512, 2**32 - 2, 2**32 - 1],
                   np.uint32)
  uniform = serving.uniform_from_bits(tf.constant(edges)).numpy()
  assert uniform.dtype == np.float32
  assert (uniform > 0).all() and (uniform < 1).all(), uniform
  noise = -np.log(-np.log(uniform.astype(np.float64)))
  assert np.isfinite(noise).all()
  # Every value of the top 23 bits is its own uniform: none collapse.
  top = serving.uniform_from_bits(tf.constant(np.arange(2**23 - 4096, 2**23, dtype=np.uint32)
                                              << np.uint32(9))).numpy()
  assert len(np.unique(top)) == 4096 and top.max() < 1
  # TensorFlow's own log (what the noise uses) keeps it finite at the top.
  assert np.isfinite(-tf.math.log(-tf.math.log(tf.constant(top))).numpy()).all()


def test_noise_is_gumbel_and_a_pure_function_of_seed_position_token():
  seeds = serving.row_seeds(tf.constant(11, tf.int64), tf.range(64, dtype=tf.int64),
                            tf.zeros([64], tf.int64))
  noise = serving.gumbel_noise(seeds, tf.range(8), 1000).numpy()
  assert noise.shape == (8, 64, 1000) and np.isfinite(noise).all()
  # Gumbel(0, 1): mean Euler's gamma, variance pi^2 / 6 (512,000 draws).
  assert abs(noise.mean() - _EULER_GAMMA) < 0.01
  assert abs(noise.var() - np.pi**2 / 6) < 0.03
  again = serving.gumbel_noise(seeds[10:12], [5], 1000).numpy()
  np.testing.assert_array_equal(again[0], noise[5, 10:12])  # rows do not depend on the batch
  assert not np.array_equal(noise[5], noise[6])  # positions differ


@pytest.mark.parametrize("vocab_size", [5, 68, 1001])
def test_noise_is_the_same_bits_in_any_batch_and_block(vocab_size):
  """Whatever rows and positions are drawn together, bit for bit: unpadded,
  TensorFlow's log rounded a tensor's last few elements (its scalar tail)
  differently, and 68-id rows alone differed from the same rows in a batch."""
  seeds = serving.row_seeds(tf.constant(2, tf.int64), tf.range(299, dtype=tf.int64),
                            tf.zeros([299], tf.int64))
  full = serving.gumbel_noise(seeds, tf.range(40), vocab_size).numpy().view(np.uint32)
  for rows in (slice(0, 1), slice(3, 8), slice(10, 27), slice(298, 299)):
    for positions in (range(5, 6), range(7, 40), range(0, 3)):
      part = serving.gumbel_noise(seeds[rows], list(positions), vocab_size).numpy()
      np.testing.assert_array_equal(part.view(np.uint32), full[positions.start:positions.stop,
                                                               rows])


def test_gumbel_max_picks_tokens_with_softmax_probabilities():
  logits = tf.constant([[2.0, 1.0, 0.0, -1.0, -30.0]])
  probs = tf.nn.softmax(logits).numpy()[0]
  seeds = serving.row_seeds(tf.constant(3, tf.int64), tf.range(400, dtype=tf.int64),
                            tf.zeros([400], tf.int64))
  picks = tf.argmax(logits + serving.gumbel_noise(seeds, tf.range(100), 5),
                    axis=-1).numpy().ravel()  # 40,000 draws
  freq = np.bincount(picks, minlength=5) / len(picks)
  np.testing.assert_allclose(freq[:4], probs[:4], atol=0.01)
  assert freq[4] == 0  # a token of probability ~1e-14 is never picked
