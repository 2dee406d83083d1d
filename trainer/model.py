"""build_model(): Embedding -> LSTM x N -> logits for every position.

The model is made of Keras's own layers only (no Lambda, no custom layer), so
`export/model.keras` opens with `keras.saving.load_model` in a process that
has only Keras. Tied embeddings use `keras.layers.ReversibleEmbedding` (the
output kernel is the embedding matrix transposed) plus an output bias held by
a one-row Embedding, since Keras has no bias-only layer.

The LSTM layers keep Keras's defaults that select the fused cuDNN kernel on a
GPU: activation tanh, recurrent_activation sigmoid, use_bias, unroll False,
no mask (windows are never padded) and recurrent_dropout 0. The trainer warns
when --recurrent_dropout > 0 turns that kernel off (3-10x slower on GPU).
"""

from typing import Dict

import keras
import numpy as np

from dataspec import export as export_lib
from trainer import fused_lstm


def model_spec_from_config(config, *, vocab_size: int, window_length: int) -> export_lib.ModelSpec:
  projection = config.embedding_dim if (config.tie_embeddings and
                                        config.units != config.embedding_dim) else 0
  return export_lib.ModelSpec(
      vocab_size=vocab_size, embedding_dim=config.embedding_dim,
      units=config.units, num_layers=config.num_layers,
      projection_dim=projection, tie_embeddings=config.tie_embeddings,
      window_length=window_length)


def build_model(*, spec: export_lib.ModelSpec, dropout: float = 0.0,
                embedding_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                seed: int = 0, fused_cpu_lstm: bool = False) -> keras.Model:
  """The training model: int32 ids (batch, time) -> float32 logits
  (batch, time, vocab_size). Call under the strategy's scope.

  fused_cpu_lstm: LSTM layers are fused_lstm.CpuLSTM (the same layer and
  weights with a faster CPU loop; see fused_lstm.use_fused_cpu_path) rather
  than keras.layers.LSTM (which a GPU runs as cuDNN).
  """
  lstm_class = fused_lstm.CpuLSTM if fused_cpu_lstm else keras.layers.LSTM
  ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
  if spec.tie_embeddings:
    # The reverse projection runs in float32 even under mixed_float16: a
    # stable softmax over the vocabulary.
    embedding = keras.layers.ReversibleEmbedding(
        spec.vocab_size, spec.embedding_dim, reverse_dtype="float32", name="embedding")
  else:
    embedding = keras.layers.Embedding(spec.vocab_size, spec.embedding_dim,
                                       name="embedding")
  x = embedding(ids)  # (batch, time, embedding_dim)
  if embedding_dropout:
    x = keras.layers.Dropout(embedding_dropout, seed=seed, name="embedding_dropout")(x)
  for i in range(spec.num_layers):
    x = lstm_class(spec.units, return_sequences=True, recurrent_dropout=recurrent_dropout,
                   seed=seed + 1 + i, name=f"lstm_{i}")(x)  # (batch, time, units)
    if dropout:
      x = keras.layers.Dropout(dropout, seed=seed + 100 + i, name=f"dropout_{i}")(x)
  if spec.projection_dim:
    x = keras.layers.Dense(spec.projection_dim, name="projection")(x)
  if spec.tie_embeddings:
    if x.shape[-1] != spec.embedding_dim:
      raise ValueError("Tied embeddings need the last width == embedding_dim")
    logits = embedding(x, reverse=True)  # (batch, time, vocab) float32
    # The bias: row 0 of a one-row Embedding, looked up once per sequence
    # and broadcast over time.
    row = keras.ops.zeros_like(ids[:, :1])  # (batch, 1)
    bias = keras.layers.Embedding(1, spec.vocab_size, embeddings_initializer="zeros",
                                  dtype="float32", name="output_bias")(row)  # (batch, 1, vocab)
    logits = keras.layers.Add(dtype="float32", name="output")([logits, bias])
  else:
    # float32 even under mixed_float16: a stable softmax over the vocabulary.
    logits = keras.layers.Dense(spec.vocab_size, dtype="float32", name="output")(x)
  return keras.Model(ids, logits, name="lstm_lm")


def output_bias(model: keras.Model):
  """The variable that holds the output layer's bias (vocab_size,)."""
  if any(layer.name == "output_bias" for layer in model.layers):
    return model.get_layer("output_bias").embeddings  # (1, vocab)
  return model.get_layer("output").bias


def set_output_bias(model: keras.Model, values: np.ndarray):
  variable = output_bias(model)
  variable.assign(np.reshape(values, variable.shape).astype(np.float32))


def export_weights(model: keras.Model, spec: export_lib.ModelSpec) -> Dict[str, np.ndarray]:
  """The model's weights under dataspec.export names."""
  get = model.get_layer
  embedding = np.asarray(get("embedding").embeddings)
  out = {"embedding": embedding}
  for i in range(spec.num_layers):
    kernel, recurrent, bias = [np.asarray(w) for w in get(f"lstm_{i}").weights]
    out[f"lstm_{i}/kernel"] = kernel
    out[f"lstm_{i}/recurrent_kernel"] = recurrent
    out[f"lstm_{i}/bias"] = bias
  if spec.projection_dim:
    kernel, bias = [np.asarray(w) for w in get("projection").weights]
    out["projection/kernel"], out["projection/bias"] = kernel, bias
  if spec.tie_embeddings:
    out["output/kernel"] = embedding.T.copy()
  else:
    out["output/kernel"] = np.asarray(get("output").kernel)
  out["output/bias"] = np.asarray(output_bias(model)).reshape(-1)
  export_lib.check_weights(spec, out)
  return out


def load_weights(model: keras.Model, spec: export_lib.ModelSpec,
                 weights: Dict[str, np.ndarray]):
  """Sets `model`'s weights from dataspec.export names (export_weights'
  inverse)."""
  export_lib.check_weights(spec, weights)
  get = model.get_layer
  get("embedding").embeddings.assign(weights["embedding"])
  for i in range(spec.num_layers):
    for variable, name in zip(get(f"lstm_{i}").weights,
                              ("kernel", "recurrent_kernel", "bias")):
      variable.assign(weights[f"lstm_{i}/{name}"])
  if spec.projection_dim:
    get("projection").kernel.assign(weights["projection/kernel"])
    get("projection").bias.assign(weights["projection/bias"])
  if not spec.tie_embeddings:
    get("output").kernel.assign(weights["output/kernel"])
  set_output_bias(model, weights["output/bias"])


def export_keras_model(path: str, *, spec: export_lib.ModelSpec,
                       weights: Dict[str, np.ndarray], dropout: float,
                       embedding_dropout: float, recurrent_dropout: float, seed: int):
  """Writes the training model with `weights` as a .keras file at local
  `path`, in float32 (whatever policy training used)."""
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("float32")
  try:
    model = build_model(spec=spec, dropout=dropout, embedding_dropout=embedding_dropout,
                        recurrent_dropout=recurrent_dropout, seed=seed)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  load_weights(model, spec, weights)
  model.save(path)
