"""Composite transforms of the preprocessing pipeline.

Every element is a chunk of about --chunk_bytes (never a whole large file and
never a single line or window), so per-element overhead stays small and no
step holds the corpus in memory. Chunks are read twice, once to count tokens
and once to encode them, rather than keeping their text between stages.
"""

import collections
import dataclasses
import uuid
import zlib
from typing import Dict, Iterable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
import numpy as np

from beam_preprocess import inputs
from dataspec import schema
from dataspec import subword
from dataspec import textfiles
from dataspec import tokenizer as tokenizer_lib
from dataspec import vocab as vocab_lib

_NAMESPACE = "textgen"
STATS_KEYS = ("documents", "tokens", "windows", "dropped_tokens",
              "unknown_tokens", "invalid_utf8", "chunks", "bytes")


def read_chunk(chunk: inputs.Chunk) -> bytes:
  """The text of `chunk` between its line-aligned boundaries, as UTF-8."""
  return textfiles.to_utf8(read_chunk_range(chunk)[0], chunk.encoding)[0]


def read_chunk_range(chunk: inputs.Chunk):
  """(bytes, start, end): `chunk`'s bytes and their line-aligned range."""
  with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    start = inputs.align_boundary(f, chunk.start, chunk.size)
    end = inputs.align_boundary(f, chunk.end, chunk.size)
    if end <= start:
      return b"", start, start
    f.seek(start)
    return f.read(end - start), start, end


def file_encoding(path: str, encoding: str):
  """textfiles.text_encoding of the file at `path`: None if it is binary."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    return textfiles.text_encoding(handle.read(textfiles.head_bytes(encoding)), encoding)


class SniffFiles(beam.DoFn):
  """Gives each file its text encoding (--input_encoding, or detected from its
  head for "auto") and drops files that look binary in it (counted, logged,
  reported in metadata)."""
  SKIPPED = "skipped"

  def __init__(self, *, encoding: str = textfiles.UTF8):
    self._encoding = encoding
    self._skipped = Metrics.counter(_NAMESPACE, "skipped_files")

  def process(self, f: inputs.InputFile):
    encoding = file_encoding(f.path, self._encoding)
    if encoding is None:
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.warning("Skipping %s: %s", f.path, textfiles.describe_binary(self._encoding))
      self._skipped.inc()
      yield beam.pvalue.TaggedOutput(self.SKIPPED, {"path": f.path, "reason": "binary",
                                                    "bytes": f.size})
      return
    if self._encoding == textfiles.AUTO:
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.info("%s: %s", f.path, encoding)
    yield dataclasses.replace(f, encoding=encoding)


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
  """Train chunks -> the vocabulary, a singleton: vocab.txt text (char,
  word), the trained SentencePiece model's bytes (bpe, unigram) or ""
  (byte). See `parse_vocab`.

  Every worker counts its chunks' tokens (for bpe/unigram: pre-tokens,
  the words SentencePiece trains on) and the counts are summed across
  workers; only that table reaches the one worker that selects the
  vocabulary or trains the model, never the text.

  One string rather than a list of tokens: Beam's side-input cache measures
  the size of every object it holds, which for a list of 30,000 strings took
  longer than encoding the chunks that read it.
  """

  def __init__(self, *, spec: tokenizer_lib.TokenizerSpec, max_vocab_size: int,
               min_count: int, character_coverage: float = 1.0,
               unigram_sample_mb: float = subword.DEFAULT_UNIGRAM_SAMPLE_MB):
    super().__init__()
    self._spec = spec
    self._max_vocab_size = max_vocab_size
    self._min_count = min_count
    self._character_coverage = character_coverage
    self._unigram_sample_mb = unigram_sample_mb

  def expand(self, chunks):
    spec = self._spec
    if not spec.uses_vocab:
      return chunks.pipeline | "NoVocab" >> beam.Create([""])
    counter = tokenizer_lib.make_counter(spec)

    def count(chunk):
      return counter(read_chunk(chunk).decode("utf-8", errors="replace"))

    max_vocab_size, min_count = self._max_vocab_size, self._min_count
    coverage, sample_mb = self._character_coverage, self._unigram_sample_mb
    if spec.is_subword:
      def select(counts):
        return subword.train_model(counts, model_type=spec.type,
                                   vocab_size=max_vocab_size, min_count=min_count,
                                   character_coverage=coverage,
                                   unigram_sample_mb=sample_mb)
    else:
      def select(counts):
        return vocab_lib.format_vocab(vocab_lib.select_vocab(
            counts, max_vocab_size=max_vocab_size, min_count=min_count))
    return (chunks
            | "TrainOnly" >> beam.Filter(lambda c: c.split == "train")
            | "Count" >> beam.Map(count)
            | "SumCounts" >> beam.CombineGlobally(_MergeCounts())
            | ("TrainSubwords" if spec.is_subword else "Select") >> beam.Map(select))


def parse_vocab(spec: tokenizer_lib.TokenizerSpec, value):
  """BuildVocab's output as Tokenizer's `vocab` argument."""
  if not spec.uses_vocab:
    return None
  return bytes(value) if spec.is_subword else vocab_lib.parse_vocab(value)


class EncodeChunk(beam.DoFn):
  """Chunk -> framed TFRecord bytes of its windows, tagged by split, + stats.

  Chunks of held-out splits also give their byte range (RANGES), from which
  Finalize lists the documents of each held-out split, so that textgen-eval
  can score them whole with the LSTM state carried.
  The tokenizer is built once per DoFn instance from the vocab side input
  (BuildVocab's output; for bpe/unigram the model is loaded once per worker).
  Windows of a chunk are shuffled (seeded by chunk) so that consecutive
  records of a shard are not consecutive text.
  """
  STATS = "stats"
  RANGES = "ranges"

  def __init__(self, *, spec, window_length: int, stride: int, seed: int):
    self._spec = spec
    self._window_length = window_length
    self._stride = stride
    self._seed = seed
    self._tokenizer = None
    self._counters = {k: Metrics.counter(_NAMESPACE, k) for k in STATS_KEYS}

  def setup(self):
    self._tokenizer = None

  def _get_tokenizer(self, vocab_text) -> tokenizer_lib.Tokenizer:
    if self._tokenizer is None:
      self._tokenizer = tokenizer_lib.Tokenizer(
          self._spec, vocab=parse_vocab(self._spec, vocab_text))
      self._token_dtype = schema.token_dtype_for(self._tokenizer.vocab_size)
    return self._tokenizer

  def process(self, chunk: inputs.Chunk, vocab_text: str):
    tok = self._get_tokenizer(vocab_text)
    data, start, end = read_chunk_range(chunk)
    if chunk.split != "train" and end > start:
      yield beam.pvalue.TaggedOutput(self.RANGES, {
          "split": chunk.split, "path": chunk.path, "document_id": chunk.document_id,
          "start": start, "end": end, "size": chunk.size, "encoding": chunk.encoding})
    invalid = 0
    if chunk.encoding != textfiles.UTF8:
      data, invalid = textfiles.to_utf8(data, chunk.encoding)
    elif self._spec.type != "byte":
      invalid = textfiles.invalid_utf8(data)
    ids = tok.encode_bytes(data)  # (num_tokens,)
    windows = schema.window_ids(ids, window_length=self._window_length,
                                stride=self._stride)  # (num_windows, L+1)
    covered = schema.covered_tokens(len(ids), window_length=self._window_length,
                                    stride=self._stride)
    stats = {
        "documents": int(chunk.first_in_split),
        "tokens": len(ids),
        "windows": len(windows),
        "dropped_tokens": len(ids) - covered,
        "unknown_tokens": (0 if self._spec.type == "byte"
                           else int(np.count_nonzero(ids == tokenizer_lib.UNK_ID))),
        "invalid_utf8": invalid,
        "chunks": 1,
        "bytes": len(data),
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


class _ShardWriter:
  """Appends framed records to one new file (gzip or plain) via Beam's FileSystems."""

  def __init__(self, path: str, gzip: bool):
    self.path = path
    self._raw = FileSystems.create(path, mime_type="application/octet-stream",
                                   compression_type=CompressionTypes.UNCOMPRESSED)
    self._compressor = (zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                        if gzip else None)

  def write(self, data: bytes):
    self._raw.write(self._compressor.compress(data) if self._compressor else data)

  def close(self):
    if self._compressor:
      self._raw.write(self._compressor.flush())
    self._raw.close()


def shard_suffix(compression: str) -> str:
  return ".tfrecord.gz" if compression == "gzip" else ".tfrecord"


class _WriteBundleShards(beam.DoFn):
  """Writes each bundle's blobs to a new uniquely named file; outputs its path.

  Files go straight to their final names (no temp-dir-then-rename step, which
  on GCS is a copy and a delete per file): a retried or crashed bundle leaves
  an orphan that no reader opens, because readers take exactly the files
  listed in metadata.json, which is written after all bundles succeeded.
  """

  def __init__(self, *, file_path_prefix: str, compression: str):
    self._prefix = file_path_prefix
    self._compression = compression
    self._writer = None

  def start_bundle(self):
    self._writer = None

  def process(self, blob: bytes):
    if self._writer is None:
      name = f"{self._prefix}-{uuid.uuid4().hex[:16]}{shard_suffix(self._compression)}"
      self._writer = _ShardWriter(name, self._compression == "gzip")
    self._writer.write(blob)

  def finish_bundle(self):
    if self._writer is not None:
      self._writer.close()
      yield window.GlobalWindows.windowed_value(self._writer.path)
      self._writer = None


class _WriteNumberedShard(beam.DoFn):
  """(shard index, blobs) -> <prefix>-SSSSS-of-NNNNN file; outputs its path."""

  def __init__(self, *, file_path_prefix: str, num_shards: int, compression: str):
    self._prefix = file_path_prefix
    self._num_shards = num_shards
    self._compression = compression

  def process(self, keyed):
    index, blobs = keyed
    path = (f"{self._prefix}-{index:05d}-of-{self._num_shards:05d}"
            f"{shard_suffix(self._compression)}")
    writer = _ShardWriter(path, self._compression == "gzip")
    for blob in blobs:
      writer.write(blob)
    writer.close()
    yield path


class WriteShards(beam.PTransform):
  """Framed-record blobs -> TFRecord files; outputs the written paths.

  num_shards=0: one file per bundle, no shuffle (scales on every runner).
  num_shards=N: blobs are grouped into exactly N files (a GroupByKey: on
  DirectRunner that holds the split in memory, so prefer 0 for big corpora).
  """

  def __init__(self, *, file_path_prefix: str, num_shards: int, compression: str):
    super().__init__()
    self._prefix = file_path_prefix
    self._num_shards = num_shards
    self._compression = compression

  def expand(self, blobs):
    if not self._num_shards:
      return blobs | "WriteBundles" >> beam.ParDo(_WriteBundleShards(
          file_path_prefix=self._prefix, compression=self._compression))
    n = self._num_shards
    keyed = blobs | "Key" >> beam.Map(lambda b: (zlib.crc32(b[-4:]) % n, b))
    # One empty blob per shard, so that all N files exist even with few blobs.
    every = blobs.pipeline | "ShardIds" >> beam.Create([(i, b"") for i in range(n)])
    return ((keyed, every)
            | "All" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "WriteNumbered" >> beam.ParDo(_WriteNumberedShard(
                file_path_prefix=self._prefix, num_shards=n,
                compression=self._compression)))
