"""Composite transforms of the preprocessing pipeline.

Every element is a chunk of about --chunk_bytes (never a whole large file and
never a single line or window), so per-element overhead stays small and no
step holds the corpus in memory. Chunks are read twice, once to count tokens
and once to encode them, rather than keeping their text between stages.
"""

import collections
import zlib
from typing import Dict, Iterable, List

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
import numpy as np

from beam_preprocess import inputs
from dataspec import schema
from dataspec import tokenizer as tokenizer_lib
from dataspec import vocab as vocab_lib

_NAMESPACE = "textgen"
STATS_KEYS = ("documents", "tokens", "windows", "dropped_tokens",
              "unknown_tokens", "invalid_utf8", "chunks")


def read_chunk(chunk: inputs.Chunk) -> bytes:
  """The bytes of `chunk` between its line-aligned boundaries."""
  with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    start = inputs.align_boundary(f, chunk.start, chunk.size)
    end = inputs.align_boundary(f, chunk.end, chunk.size)
    if end <= start:
      return b""
    f.seek(start)
    return f.read(end - start)


class SniffFiles(beam.DoFn):
  """Drops files that look binary (counted, logged, reported in metadata)."""
  SKIPPED = "skipped"

  def __init__(self):
    self._skipped = Metrics.counter(_NAMESPACE, "skipped_files")

  def process(self, f: inputs.InputFile):
    with FileSystems.open(f.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
      head = handle.read(inputs.SNIFF_BYTES)
    if inputs.looks_binary(head):
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.warning("Skipping %s: binary content (NUL bytes or mostly "
                      "invalid UTF-8)", f.path)
      self._skipped.inc()
      yield beam.pvalue.TaggedOutput(self.SKIPPED,
                                     {"path": f.path, "reason": "binary"})
      return
    yield f


class _MergeCounts(beam.CombineFn):
  """Sums token Counters; partial sums run on every worker (combiner lifting)."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, acc, counts):
    acc.update(counts)
    return acc

  def merge_accumulators(self, accs):
    accs = iter(accs)
    total = next(accs)
    for acc in accs:
      total.update(acc)
    return total

  def extract_output(self, acc):
    return dict(acc)


class BuildVocab(beam.PTransform):
  """Train chunks -> the vocabulary (a singleton list of tokens by id)."""

  def __init__(self, *, spec: tokenizer_lib.TokenizerSpec, max_vocab_size: int,
               min_count: int):
    super().__init__()
    self._spec = spec
    self._max_vocab_size = max_vocab_size
    self._min_count = min_count

  def expand(self, chunks):
    spec = self._spec
    if not spec.uses_vocab:
      return chunks.pipeline | "NoVocab" >> beam.Create([[]])
    counter = tokenizer_lib.Tokenizer(
        spec, vocab=list(tokenizer_lib.RESERVED_TOKENS))

    def count(chunk):
      return counter.count(read_chunk(chunk).decode("utf-8", errors="replace"))

    max_vocab_size, min_count = self._max_vocab_size, self._min_count
    return (chunks
            | "TrainOnly" >> beam.Filter(lambda c: c.split == "train")
            | "Count" >> beam.Map(count)
            | "SumCounts" >> beam.CombineGlobally(_MergeCounts())
            | "Select" >> beam.Map(lambda counts: vocab_lib.select_vocab(
                counts, max_vocab_size=max_vocab_size, min_count=min_count)))


class EncodeChunk(beam.DoFn):
  """Chunk -> framed TFRecord bytes of its windows, tagged by split, + stats.

  The tokenizer is built once per DoFn instance from the vocab side input.
  Windows of a chunk are shuffled (seeded by chunk) so that consecutive
  records of a shard are not consecutive text.
  """
  STATS = "stats"

  def __init__(self, *, spec, window_length: int, stride: int, seed: int):
    self._spec = spec
    self._window_length = window_length
    self._stride = stride
    self._seed = seed
    self._tokenizer = None
    self._counters = {k: Metrics.counter(_NAMESPACE, k) for k in STATS_KEYS}

  def setup(self):
    self._tokenizer = None

  def _get_tokenizer(self, vocab: List[str]) -> tokenizer_lib.Tokenizer:
    if self._tokenizer is None:
      self._tokenizer = tokenizer_lib.Tokenizer(
          self._spec, vocab=vocab if self._spec.uses_vocab else None)
      self._token_dtype = schema.token_dtype_for(self._tokenizer.vocab_size)
    return self._tokenizer

  def process(self, chunk: inputs.Chunk, vocab: List[str]):
    tok = self._get_tokenizer(vocab)
    data = read_chunk(chunk)
    ids = tok.encode_bytes(data)  # (num_tokens,)
    windows = schema.window_ids(ids, window_length=self._window_length,
                                stride=self._stride)  # (num_windows, L+1)
    covered = schema.covered_tokens(len(ids), window_length=self._window_length,
                                    stride=self._stride)
    invalid = 0
    if self._spec.type != "byte":
      invalid = (data.decode("utf-8", errors="replace").count("\ufffd") -
                 data.count("\ufffd".encode()))
    stats = {
        "documents": int(chunk.first_in_split),
        "tokens": len(ids),
        "windows": len(windows),
        "dropped_tokens": len(ids) - covered,
        "unknown_tokens": (0 if self._spec.type == "byte"
                           else int(np.count_nonzero(ids == tokenizer_lib.UNK_ID))),
        "invalid_utf8": invalid,
        "chunks": 1,
    }
    for key, value in stats.items():
      self._counters[key].inc(value)
    yield beam.pvalue.TaggedOutput(self.STATS, (chunk.split, stats))
    if len(windows):
      seed = zlib.crc32(f"{self._seed}:{chunk.document_id}:{chunk.start}".encode())
      order = np.random.default_rng(seed).permutation(len(windows))
      yield beam.pvalue.TaggedOutput(
          chunk.split, schema.encode_windows(windows[order], self._token_dtype))


def sum_stats(stats: Iterable[Dict[str, int]]) -> Dict[str, int]:
  total = dict.fromkeys(STATS_KEYS, 0)
  for s in stats:
    for k, v in s.items():
      total[k] += v
  return total


# zlib level 1: 4x faster than Beam's default level 6 on window records
# (25 vs 100 ms per MB of text), for files about 10% larger.
GZIP_LEVEL = 1


class _GzipWriter:
  """A gzip stream of the given level over a Beam file handle."""

  def __init__(self, raw, level: int):
    self._raw = raw
    self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

  def write(self, data: bytes):
    self._raw.write(self._compressor.compress(data))

  def close(self):
    self._raw.write(self._compressor.flush())
    self._raw.close()


class _FramedRecordSink(filebasedsink.FileBasedSink):
  """Writes elements that already are framed TFRecords (many per element)."""

  def __init__(self, *, file_path_prefix: str, num_shards: int, compression: str):
    self._gzip = compression == "gzip"
    super().__init__(
        file_path_prefix=file_path_prefix,
        coder=coders.BytesCoder(),
        file_name_suffix=".tfrecord.gz" if self._gzip else ".tfrecord",
        num_shards=num_shards,
        shard_name_template="-SSSSS-of-NNNNN",
        mime_type="application/octet-stream",
        compression_type=CompressionTypes.UNCOMPRESSED)

  def open(self, temp_path):
    raw = super().open(temp_path)
    return _GzipWriter(raw, GZIP_LEVEL) if self._gzip else raw

  def write_encoded_record(self, file_handle, value):
    file_handle.write(value)


class WriteShards(beam.PTransform):
  """Framed-record blobs -> sharded TFRecord files; outputs the file paths."""

  def __init__(self, *, file_path_prefix: str, num_shards: int, compression: str):
    super().__init__()
    self._sink = _FramedRecordSink(file_path_prefix=file_path_prefix,
                                   num_shards=num_shards,
                                   compression=compression)

  def expand(self, blobs):
    return blobs | "Write" >> beam.io.Write(self._sink)
