import numpy as np
import pytest
import tensorflow as tf

from dataspec import schema


def test_window_ids_by_example():
  assert schema.window_ids(np.arange(11), window_length=3, stride=3).tolist() == [
      [0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
  assert schema.window_ids(np.arange(6), window_length=3, stride=1).tolist() == [
      [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
  assert schema.window_ids(np.arange(3), window_length=3, stride=3).shape == (0, 4)
  assert schema.covered_tokens(11, window_length=3, stride=3) == 10
  assert schema.covered_tokens(3, window_length=3, stride=3) == 0


@pytest.mark.parametrize("vocab_size,dtype", [(68, "uint8"), (256, "uint8"),
                                              (10001, "uint16"), (70000, "int32")])
def test_round_trip_through_tensorflow(tmp_path, vocab_size, dtype):
  assert schema.token_dtype_for(vocab_size) == dtype
  rng = np.random.default_rng(0)
  windows = rng.integers(0, vocab_size, size=(5, 9))
  path = str(tmp_path / "w.tfrecord")
  with open(path, "wb") as f:
    f.write(schema.encode_windows(windows, dtype))
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  # The hand-built bytes are a real tf.train.Example.
  example = tf.train.Example.FromString(records[0])
  assert list(example.features.feature) == [schema.WINDOW_KEY]
  parse = schema.make_parse_fn(window_length=8, token_dtype=dtype)
  np.testing.assert_array_equal(parse(tf.constant(records)).numpy(), windows)
  back = list(schema.iter_windows(open(path, "rb").read(), window_length=8,
                                  token_dtype=dtype))
  np.testing.assert_array_equal(np.stack(back), windows)


def test_corrupt_record_is_detected():
  framed = bytearray(schema.encode_windows(np.array([[1, 2, 3]]), "uint8"))
  framed[-6] ^= 0xFF
  with pytest.raises(ValueError, match="Corrupt"):
    list(schema.iter_windows(bytes(framed), window_length=2, token_dtype="uint8"))
