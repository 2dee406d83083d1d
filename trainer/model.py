"""build_model(): Embedding -> LSTM x N -> logits for every position.

The LSTM layers keep Keras's defaults that select the fused cuDNN kernel on a
GPU: activation tanh, recurrent_activation sigmoid, use_bias, unroll False,
no mask (windows are never padded) and recurrent_dropout 0. The trainer warns
when --recurrent_dropout > 0 turns that kernel off (3-10x slower on GPU).
"""

from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from dataspec import export as export_lib


class TiedOutput(keras.layers.Layer):
  """logits = x @ embedding.T + bias, sharing the Embedding's matrix."""

  def __init__(self, embedding: keras.layers.Embedding, **kwargs):
    super().__init__(**kwargs)
    self._embedding = embedding

  def build(self, input_shape):
    self.bias = self.add_weight(name="bias", shape=(self._embedding.input_dim,),
                                initializer="zeros")

  def call(self, x):
    kernel = tf.cast(self._embedding.embeddings, x.dtype)  # (vocab, d)
    # tensordot reshapes to one matmul; einsum("...d,vd->...v") broadcast a
    # (batch, time, vocab, d) intermediate here (18 GB for PTB).
    logits = tf.tensordot(x, kernel, axes=[[x.shape.rank - 1], [1]])  # (..., vocab)
    return tf.cast(logits, self.compute_dtype) + tf.cast(self.bias, self.compute_dtype)


def model_spec_from_config(config, *, vocab_size: int, window_length: int) -> export_lib.ModelSpec:
  projection = config.embedding_dim if (config.tie_embeddings and
                                        config.units != config.embedding_dim) else 0
  return export_lib.ModelSpec(
      vocab_size=vocab_size, embedding_dim=config.embedding_dim,
      units=config.units, num_layers=config.num_layers,
      projection_dim=projection, tie_embeddings=config.tie_embeddings,
      window_length=window_length)


def build_model(*, spec: export_lib.ModelSpec, dropout: float = 0.0,
                embedding_dropout: float = 0.0,
                recurrent_dropout: float = 0.0, seed: int = 0) -> keras.Model:
  """The training model: int32 ids (batch, time) -> float32 logits
  (batch, time, vocab_size). Call under the strategy's scope."""
  ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
  embedding = keras.layers.Embedding(spec.vocab_size, spec.embedding_dim,
                                     name="embedding")
  x = embedding(ids)  # (batch, time, embedding_dim)
  if embedding_dropout:
    x = keras.layers.Dropout(embedding_dropout, seed=seed, name="embedding_dropout")(x)
  for i in range(spec.num_layers):
    x = keras.layers.LSTM(spec.units, return_sequences=True,
                          recurrent_dropout=recurrent_dropout,
                          seed=seed + 1 + i, name=f"lstm_{i}")(x)  # (batch, time, units)
    if dropout:
      x = keras.layers.Dropout(dropout, seed=seed + 100 + i, name=f"dropout_{i}")(x)
  if spec.projection_dim:
    x = keras.layers.Dense(spec.projection_dim, name="projection")(x)
  if spec.tie_embeddings:
    if x.shape[-1] != spec.embedding_dim:
      raise ValueError("Tied embeddings need the last width == embedding_dim")
    logits = TiedOutput(embedding, dtype="float32", name="output")(x)
  else:
    # float32 even under mixed_float16: a stable softmax over the vocabulary.
    logits = keras.layers.Dense(spec.vocab_size, dtype="float32", name="output")(x)
  return keras.Model(ids, logits, name="lstm_lm")


def export_weights(model: keras.Model, spec: export_lib.ModelSpec) -> Dict[str, np.ndarray]:
  """The model's weights under dataspec.export names."""
  get = lambda name: model.get_layer(name)
  embedding = get("embedding").embeddings.numpy()
  out = {"embedding": embedding}
  for i in range(spec.num_layers):
    kernel, recurrent, bias = [w.numpy() for w in get(f"lstm_{i}").weights]
    out[f"lstm_{i}/kernel"] = kernel
    out[f"lstm_{i}/recurrent_kernel"] = recurrent
    out[f"lstm_{i}/bias"] = bias
  if spec.projection_dim:
    kernel, bias = [w.numpy() for w in get("projection").weights]
    out["projection/kernel"], out["projection/bias"] = kernel, bias
  if spec.tie_embeddings:
    out["output/kernel"] = embedding.T.copy()
    out["output/bias"] = get("output").bias.numpy()
  else:
    kernel, bias = [w.numpy() for w in get("output").weights]
    out["output/kernel"], out["output/bias"] = kernel, bias
  export_lib.check_weights(spec, out)
  return out
