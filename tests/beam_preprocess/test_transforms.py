"""Transforms on a TestPipeline with assert_that (real DirectRunner)."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import numpy as np

from beam_preprocess import inputs
from beam_preprocess import transforms
from dataspec import schema
from dataspec import tokenizer as T
from dataspec import vocab as V


def _chunks(tmp_path, text, split="train", chunk_bytes=10_000):
  path = tmp_path / "doc.txt"
  path.write_text(text, encoding="utf-8")
  f = inputs.InputFile(path=str(path), size=path.stat().st_size, document_id="doc.txt")
  return [c for c in inputs.plan_chunks([f], split_mode="tail",
                                        validation_fraction=0.0,
                                        chunk_bytes=chunk_bytes)]


def test_build_vocab_sums_counts_across_chunks(tmp_path):
  text = "the cat sat\nthe dog\n" * 50 + "rare\n"
  chunks = _chunks(tmp_path, text, chunk_bytes=4096)
  assert len(chunks) > 0
  with TestPipeline() as p:
    vocab = (p | beam.Create(chunks) | transforms.BuildVocab(
        spec=T.TokenizerSpec(type="word"), max_vocab_size=0, min_count=2))
    assert_that(vocab, equal_to([V.format_vocab(["<pad>", "<unk>", "<eos>", "the",
                                                 "cat", "dog", "sat"])]))


def test_encode_chunk_windows_and_stats(tmp_path):
  text = "abcdefghij\n" * 4  # 44 chars
  chunks = _chunks(tmp_path, text)
  vocab = list(T.RESERVED_TOKENS) + list("\nabcdefghij")
  tok = T.Tokenizer(T.TokenizerSpec(type="char"), vocab=vocab)
  expected = schema.window_ids(tok.encode(text), window_length=10, stride=10)
  with TestPipeline() as p:
    out = (p | beam.Create(chunks) | beam.ParDo(
        transforms.EncodeChunk(spec=T.TokenizerSpec(type="char"),
                               window_length=10, stride=10, seed=0),
        vocab_text=beam.pvalue.AsSingleton(p | "V" >> beam.Create([V.format_vocab(vocab)])))
           .with_outputs("stats", "ranges", "train", "validation"))
    assert_that(out.ranges, equal_to([]), label="no held-out ranges for train")
    windows = out.train | beam.FlatMap(lambda b: [tuple(w) for w in schema.iter_windows(
        b, window_length=10, token_dtype="uint8")])
    assert_that(windows, equal_to([tuple(w) for w in expected]), label="windows")
    assert_that(out.stats, equal_to([("train", {
        "documents": 1, "tokens": 44, "windows": 4, "dropped_tokens": 3,
        "unknown_tokens": 0, "invalid_utf8": 0, "chunks": 1, "bytes": 44})]),
                label="stats")
  assert len(expected) == 4 and np.all(expected[1:, 0] == expected[:-1, -1])
