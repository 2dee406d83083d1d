"""Keras Embedding+LSTM language model trained under tf.distribute."""
