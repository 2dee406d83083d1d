"""The Keras text-generation tutorials' model, the baseline of run_all.py's
quality plot and of bench_generate.py's tutorial loop."""


def tutorial_model(*, vocab, window, embedding, units, layers):
  """Embedding -> LSTM x layers -> Dense softmax on the last position,
  categorical cross-entropy on one-hot labels, Adam."""
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.Sequential(
      [keras.Input((window,), dtype="int32"), keras.layers.Embedding(vocab, embedding)] +
      [keras.layers.LSTM(units, return_sequences=i + 1 < layers) for i in range(layers)] +
      [keras.layers.Dense(vocab, activation="softmax")])
  model.compile(loss="categorical_crossentropy", optimizer="adam")
  return model
