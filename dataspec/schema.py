"""The TFRecord schema of a window, defined once for writer and reader.

A record is a `tf.train.Example` with one feature:

  "token_ids": bytes_list of one value: the window's `window_length + 1` ids
               packed little-endian as `token_dtype` (uint8 when the vocabulary
               fits in 256 ids, uint16 up to 65,536, else int32).

A window of L+1 tokens gives L next-token targets: inputs = ids[:-1],
targets = ids[1:]. Packed bytes parse with one `tf.io.decode_raw`, far faster
than an int64_list of L+1 varints (see bench/bench_schema.py).

The writer builds the Example bytes by hand (all windows of a dataset share
the same 10-byte prefix) and frames them as TFRecords with CRC32C, so Beam
workers never import TensorFlow. `tests/dataspec/test_schema.py` checks the
bytes against `tf.train.Example` and `tf.data.TFRecordDataset`.
"""

import struct
from typing import Iterable, Tuple

import google_crc32c
import numpy as np

WINDOW_KEY = "token_ids"
TOKEN_DTYPES = ("uint8", "uint16", "int32")


def token_dtype_for(vocab_size: int) -> str:
  """The smallest dtype that holds every id below `vocab_size`."""
  if vocab_size <= 1 << 8:
    return "uint8"
  if vocab_size <= 1 << 16:
    return "uint16"
  return "int32"


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def example_prefix(num_bytes: int) -> bytes:
  """The bytes of an Example whose single `token_ids` value has `num_bytes`
  bytes, up to (not including) that value. Append the value to complete it."""
  key = _field(1, WINDOW_KEY.encode())
  # Example{features=1{feature=1{key=1, value=2 Feature{bytes_list=1
  #   BytesList{value=1}}}}}: sizes nest, so build lengths inside-out.
  bytes_list_len = len(_varint(1 << 3 | 2)) + len(_varint(num_bytes)) + num_bytes
  feature_len = len(_varint(1 << 3 | 2)) + len(_varint(bytes_list_len)) + bytes_list_len
  entry_len = len(key) + len(_varint(2 << 3 | 2)) + len(_varint(feature_len)) + feature_len
  features_len = len(_varint(1 << 3 | 2)) + len(_varint(entry_len)) + entry_len
  return (_varint(1 << 3 | 2) + _varint(features_len) +
          _varint(1 << 3 | 2) + _varint(entry_len) +
          key +
          _varint(2 << 3 | 2) + _varint(feature_len) +
          _varint(1 << 3 | 2) + _varint(bytes_list_len) +
          _varint(1 << 3 | 2) + _varint(num_bytes))


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def encode_windows(windows: np.ndarray, token_dtype: str) -> bytes:
  """Serializes and frames windows as TFRecords, ready to append to a file.

  Args:
    windows: int array of shape (num_windows, window_length + 1).
    token_dtype: one of TOKEN_DTYPES.

  Returns:
    The concatenated framed records, one Example per window, in order.
  """
  if token_dtype not in TOKEN_DTYPES:
    raise ValueError(f"Unknown token_dtype {token_dtype!r}")
  packed = np.ascontiguousarray(windows, dtype=np.dtype(token_dtype).newbyteorder("<"))
  if not len(packed):
    return b""
  row_bytes = packed.shape[1] * packed.itemsize
  prefix = example_prefix(row_bytes)
  record_len = len(prefix) + row_bytes
  length = struct.pack("<Q", record_len)
  header = length + struct.pack("<I", _masked_crc(length)) + prefix
  raw = packed.tobytes()
  out = []
  for start in range(0, len(raw), row_bytes):
    record = prefix + raw[start:start + row_bytes]
    out.append(header)
    out.append(raw[start:start + row_bytes])
    out.append(struct.pack("<I", _masked_crc(record)))
  return b"".join(out)


def iter_windows(framed: bytes, *, window_length: int,
                 token_dtype: str) -> Iterable[np.ndarray]:
  """Decodes framed records back to windows (pure Python, for tests/tools)."""
  dtype = np.dtype(token_dtype).newbyteorder("<")
  prefix_len = len(example_prefix((window_length + 1) * dtype.itemsize))
  pos = 0
  while pos < len(framed):
    (length,) = struct.unpack_from("<Q", framed, pos)
    record = framed[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack_from("<I", framed, pos + 12 + length)
    if crc != _masked_crc(record):
      raise ValueError(f"Corrupt TFRecord at byte {pos}")
    yield np.frombuffer(record[prefix_len:], dtype=dtype).astype(np.int32)
    pos += 16 + length


def window_ids(ids: np.ndarray, *, window_length: int, stride: int) -> np.ndarray:
  """Cuts a token stream into windows of `window_length + 1` ids.

  Example (window_length=3, stride=3: consecutive windows share one id, the
  last target of one window is the first input of the next):
    >>> window_ids(np.arange(11), window_length=3, stride=3).tolist()
    [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]

  The tail (here id 10) is shorter than a window and is dropped.

  Returns:
    A (num_windows, window_length + 1) view of `ids` (no copy).
  """
  size = window_length + 1
  if len(ids) < size:
    return np.empty((0, size), dtype=ids.dtype)
  return np.lib.stride_tricks.sliding_window_view(ids, size)[::stride]


def covered_tokens(num_tokens: int, *, window_length: int, stride: int) -> int:
  """How many leading tokens of a stream fall inside some window.

  Example: 11 tokens, window_length=3, stride=3 -> windows end at id 9, so 10.
  """
  size = window_length + 1
  if num_tokens < size:
    return 0
  return ((num_tokens - size) // stride) * stride + size


def split_window(ids) -> Tuple:
  """(inputs, targets) of a window: ids[..., :-1], ids[..., 1:]."""
  return ids[..., :-1], ids[..., 1:]


def make_parse_fn(*, window_length: int, token_dtype: str):
  """A tf.function mapping a batch of serialized Examples to int32 windows.

  Args:
    window_length: L; each record holds L + 1 ids.
    token_dtype: the dataset's `token_dtype` from metadata.json.

  Returns:
    fn(serialized: string tensor (batch,)) -> int32 tensor (batch, L + 1).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out_type = {"uint8": tf.uint8, "uint16": tf.uint16, "int32": tf.int32}[token_dtype]
  spec = {WINDOW_KEY: tf.io.FixedLenFeature([], tf.string)}

  def parse(serialized):
    raw = tf.io.parse_example(serialized, spec)[WINDOW_KEY]  # (batch,)
    ids = tf.io.decode_raw(raw, out_type, little_endian=True)  # (batch, L+1)
    ids = tf.cast(ids, tf.int32)
    return tf.ensure_shape(ids, [None, window_length + 1])

  return parse
