"""The whole pipeline on DirectRunner: outputs decode to exactly the windows."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from beam_preprocess import config as config_lib
from beam_preprocess import inputs
from beam_preprocess import pipeline
from beam_preprocess import transforms
from dataspec import metadata as M
from dataspec import schema
from dataspec import subword
from dataspec import tokenizer as T
from testutil import BEAM_ARGS, FRENCH, REPO, shakespeare_text


def read_split(dataset_dir, meta, split):
  files = [os.path.join(dataset_dir, f) for f in meta.splits[split].files]
  ds = tf.data.TFRecordDataset(
      files, compression_type="GZIP" if meta.compression == "gzip" else "")
  parse = schema.make_parse_fn(window_length=meta.window_length,
                               token_dtype=meta.token_dtype)
  rows = [parse(b).numpy() for b in ds.batch(1000)]
  return np.concatenate(rows) if rows else np.zeros((0, meta.window_length + 1))


def _run(tmp_path, corpus, **kw):
  kw.setdefault("tokenizer", T.TokenizerSpec(type="char"))
  kw.setdefault("output_dir", str(tmp_path / "out"))
  config = config_lib.PreprocessConfig(input=(str(corpus),), **kw)
  return config, pipeline.run(config, pipeline_args=BEAM_ARGS)


def test_tiny_dataset_decodes_to_exactly_the_expected_windows(tiny_corpus, tiny_dataset):
  meta = M.load_dataset_metadata(str(tiny_dataset))
  vocab = M.load_vocab_for(str(tiny_dataset), meta)
  tok = T.Tokenizer(meta.tokenizer_spec, vocab=vocab)
  files, _ = inputs.match_inputs([str(tiny_corpus)])
  chunks = inputs.plan_chunks(files, split_mode="tail", validation_fraction=0.1,
                              chunk_bytes=8192)
  total_chars = sum(len(open(f.path, encoding="utf-8").read()) for f in files)
  assert meta.splits["train"].tokens + meta.splits["validation"].tokens == total_chars
  for split in ("train", "validation"):
    expected = [tuple(w) for c in chunks if c.split == split
                for w in schema.window_ids(tok.encode_bytes(transforms.read_chunk(c)),
                                           window_length=32, stride=32)]
    got = read_split(str(tiny_dataset), meta, split)
    assert sorted(map(tuple, got)) == sorted(expected)
    s = meta.splits[split]
    assert s.windows == len(expected) > 0
    assert s.documents == 3 and s.shards == len(s.files) >= 1
    assert s.chunks == len([c for c in chunks if c.split == split])
    # every token is in a window or counted as dropped (stride = window)
    assert s.windows * 32 + s.chunks * 0 <= s.tokens
    assert s.tokens - s.dropped_tokens == s.windows * 32 + s.chunks
  assert meta.vocab_size == len(vocab) and meta.token_dtype == "uint8"


def test_word_level_hash_split_many_files(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  text = shakespeare_text(80_000).split("\n\n")
  for i in range(20):
    (corpus / f"part{i:02d}.txt").write_text("\n\n".join(text[i::20]))
  config, meta = _run(tmp_path, corpus, tokenizer=T.TokenizerSpec(
      type="word", lowercase=True, punctuation="strip"), window_length=16,
                      split_mode="hash", validation_fraction=0.3,
                      max_vocab_size=500, min_count=2)
  val_docs = sum(inputs.hash_fraction(f"part{i:02d}.txt") < 0.3 for i in range(20))
  assert meta.splits["validation"].documents == val_docs
  assert meta.splits["train"].documents == 20 - val_docs
  assert meta.vocab_size == 500 and meta.splits["train"].unknown_tokens > 0
  got = read_split(config.output_dir, meta, "train")
  assert got.shape == (meta.splits["train"].windows, 17)
  assert got.max() < 500 and got.min() >= 1  # never padding


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_model_from_distributed_counts(tmp_path, kind):
  """Two workers count pre-tokens, one trains SentencePiece on the sum: the
  model is the one trained on the whole training text's counts, and the
  windows are that model's ids. unigram_sample_mb (50 KB of the ~108 KB of
  training text) reaches the training: unigram trains on sampled counts."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  text = shakespeare_text(120_000).split("\n\n")
  for i in range(6):
    (corpus / f"part{i}.txt").write_text("\n\n".join(text[i::6]) + "\n")
  spec = T.TokenizerSpec(type=kind, lowercase=True)
  config = config_lib.PreprocessConfig(
      input=(str(corpus),), output_dir=str(tmp_path / "out"), tokenizer=spec,
      window_length=24, split_mode="tail", validation_fraction=0.1, chunk_bytes=4096,
      max_vocab_size=600, unigram_sample_mb=0.05)
  meta = pipeline.run(config, pipeline_args=["--direct_num_workers=2",
                                             "--direct_running_mode=multi_threading"])
  out = tmp_path / "out"
  assert (out / "tokenizer.model").exists() and not (out / "vocab.txt").exists()
  model = M.load_vocab_for(str(out), meta)
  assert meta.vocab_fingerprint == subword.fingerprint(model)
  assert meta.vocab_size == 600 and meta.token_dtype == "uint16"
  files, _ = inputs.match_inputs([str(corpus)])
  chunks = inputs.plan_chunks(files, split_mode="tail", validation_fraction=0.1,
                              chunk_bytes=4096)
  count = T.make_counter(spec)
  whole = {}
  for c in chunks:
    if c.split == "train":
      for w, n in count(transforms.read_chunk(c).decode("utf-8")).items():
        whole[w] = whole.get(w, 0) + n
  assert model == subword.train_model(whole, model_type=kind, vocab_size=600,
                                     unigram_sample_mb=0.05)
  tok = T.Tokenizer(spec, vocab=model)
  for split in ("train", "validation"):
    expected = [tuple(w) for c in chunks if c.split == split
                for w in schema.window_ids(tok.encode_bytes(transforms.read_chunk(c)),
                                           window_length=24, stride=24)]
    assert sorted(map(tuple, read_split(str(out), meta, split))) == sorted(expected)
  assert meta.splits["train"].unknown_tokens == 0
  # Over 2 bytes per token at 600 ids (bits per byte divides by bytes).
  assert meta.splits["train"].bytes > 2 * meta.splits["train"].tokens
  # A char run over it removes the model (no stale tokenizer.model).
  pipeline.run(dataclasses.replace(config, tokenizer=T.TokenizerSpec(type="char"),
                                   max_vocab_size=0, overwrite=True),
               pipeline_args=BEAM_ARGS)
  assert (out / "vocab.txt").exists() and not (out / "tokenizer.model").exists()


def test_subword_options_are_checked_up_front(tmp_path, tiny_corpus):
  for kw, message in [(dict(max_vocab_size=100), "at least 260 for --tokenizer=bpe"),
                      (dict(character_coverage=0.5), r"\[0.98, 1\]"),
                      (dict(unigram_sample_mb=-2), "--unigram_sample_mb must be >= 0")]:
    with pytest.raises(ValueError, match=message):
      config_lib.PreprocessConfig(input=(str(tiny_corpus),), output_dir=str(tmp_path),
                                  tokenizer=T.TokenizerSpec(type="bpe"), **kw)
  config = config_lib.PreprocessConfig(input=(str(tiny_corpus),), output_dir=str(tmp_path),
                                       tokenizer=T.TokenizerSpec(type="unigram"))
  assert config.max_vocab_size == subword.DEFAULT_VOCAB_SIZE


def test_binary_empty_and_invalid_utf8_inputs(tmp_path):
  corpus = tmp_path / "c"
  corpus.mkdir()
  (corpus / "good.txt").write_text(shakespeare_text(5000))
  (corpus / "empty.txt").write_text("")
  (corpus / "image.png").write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d4948") +
                                     os.urandom(3000))
  # A Latin-1 file: mostly ASCII with 80 bytes that are not UTF-8.
  (corpus / "latin1.txt").write_bytes(
      "the caf\xe9 was na\xefve and quiet today\n".encode("latin-1") * 40)
  _, meta = _run(tmp_path, corpus, window_length=16, split_mode="tail",
                 validation_fraction=0.1)
  reasons = {os.path.basename(s["path"]): s["reason"] for s in meta.skipped_files}
  assert reasons == {"empty.txt": "empty", "image.png": "binary"}
  total = sum(os.path.getsize(p) for p in corpus.iterdir())
  summary = pipeline.skipped_summary(meta.skipped_files, total)
  assert summary.startswith(f"Skipped 1 binary file(s), 3,014 bytes = "
                            f"{100 * 3014 / total:.1f}% of the input")
  assert "image.png" in summary and "--input_encoding" in summary
  # latin-1 bytes are not UTF-8: replaced by U+FFFD and counted.
  invalid = sum(s.invalid_utf8 for s in meta.splits.values())
  assert invalid == 80
  assert meta.splits["train"].documents == 2


def test_hash_split_emptied_by_a_binary_file_names_the_cause(tmp_path, monkeypatch):
  """The only document that hashes into validation is binary: refused up
  front, and (with more files than are sniffed up front) at the end with the
  cause named, never with a complete-looking output."""
  names = [f"doc{i:02d}.txt" for i in range(40)]
  to_val = [n for n in names if inputs.hash_fraction(n) < 0.2]
  to_train = [n for n in names if inputs.hash_fraction(n) >= 0.2]
  corpus = tmp_path / "c"
  corpus.mkdir()
  (corpus / to_val[0]).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + os.urandom(2000))
  for i, name in enumerate(to_train[:3]):
    (corpus / name).write_text(shakespeare_text(3000 * (i + 1))[3000 * i:])
  kw = dict(window_length=16, split_mode="hash", validation_fraction=0.2)
  with pytest.raises(ValueError, match="leaves the validation split empty: 3 document"):
    _run(tmp_path, corpus, **kw)
  monkeypatch.setattr(pipeline, "MAX_FILES_SNIFFED_UP_FRONT", 0)
  with pytest.raises(Exception, match="no document hashed into the validation split.*"
                     "3 document.*after 1 binary file"):
    _run(tmp_path, corpus, **kw)
  assert not os.path.exists(tmp_path / "out" / "COMPLETED")


@pytest.mark.parametrize("encoding", ["latin-1", "auto"])
def test_input_encoding(tmp_path, encoding):
  """A Latin-1 corpus read as Latin-1 (named or detected): its text, no
  replacements, UTF-8 byte counts; binaries still skipped; the held-out
  documents list records the encoding for textgen-eval."""
  corpus = tmp_path / "c"
  corpus.mkdir()
  text = FRENCH.replace("œ", "oe")
  (corpus / "latin1.txt").write_bytes(text.encode("latin-1"))
  (corpus / "image.png").write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d4948") +
                                     os.urandom(3000))
  _, meta = _run(tmp_path, corpus, window_length=16, split_mode="tail",
                 validation_fraction=0.1, input_encoding=encoding)
  assert [s["reason"] for s in meta.skipped_files] == ["binary"]
  assert sum(s.invalid_utf8 for s in meta.splits.values()) == 0
  assert sum(s.bytes for s in meta.splits.values()) == len(text.encode("utf-8"))
  vocab = M.load_vocab_for(str(tmp_path / "out"), meta)
  assert {"é", "è", "ç", "à", "ê", "î", "É"} <= set(vocab)
  documents = [json.loads(l) for l in open(tmp_path / "out" / meta.splits["validation"].documents_file)]
  assert documents[0]["encoding"] in (("iso8859-1",) if encoding != "auto" else
                                      ("iso8859-1", "iso8859-15", "cp1252"))


def test_single_50mb_line_is_processed_in_chunks(tmp_path):
  path = tmp_path / "oneline.txt"
  block = b"abcdefghijklmnopqrstuvwxyz0123456789 " * 1000
  with open(path, "wb") as f:
    while f.tell() < 50 * 1024 * 1024:
      f.write(block)
  size = os.path.getsize(path)
  _, meta = _run(tmp_path, path, tokenizer=T.TokenizerSpec(type="byte"),
                 window_length=1024, split_mode="tail", validation_fraction=0.0,
                 chunk_bytes=8 << 20, compression="none")
  s = meta.splits["train"]
  assert s.chunks >= 6 and s.tokens == size
  # Only the tail of each chunk (less than a window) is lost.
  assert s.dropped_tokens < s.chunks * 1024
  assert s.windows == (size - s.dropped_tokens - s.chunks) // 1024


def test_bad_inputs_fail_before_work(tmp_path, tiny_corpus):
  with pytest.raises(FileNotFoundError, match="matched no files"):
    _run(tmp_path, tmp_path / "missing-*.txt")
  with pytest.raises(ValueError, match="--window_length must be at least 2"):
    _run(tmp_path, tiny_corpus, window_length=1)
  with pytest.raises(ValueError, match="--window_length=100000 is longer than every"):
    _run(tmp_path, tiny_corpus, window_length=100_000)
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match="--validation_fraction"):
      _run(tmp_path, tiny_corpus, validation_fraction=bad)
  with pytest.raises(ValueError, match="--input_encoding=utf-16: not ASCII-compatible"):
    _run(tmp_path, tiny_corpus, input_encoding="utf-16")
  single = tiny_corpus / "doc0.txt"
  with pytest.raises(ValueError, match="--split_mode=tail"):
    _run(tmp_path, single, split_mode="hash", validation_fraction=0.1)
  assert not os.path.exists(tmp_path / "out" / "COMPLETED")


def test_complete_output_is_refused_unless_overwrite(tmp_path, tiny_corpus):
  kw = dict(window_length=32, split_mode="tail", validation_fraction=0.1)
  _run(tmp_path, tiny_corpus, **kw)
  with pytest.raises(FileExistsError, match="--overwrite"):
    _run(tmp_path, tiny_corpus, **kw)
  _, meta = _run(tmp_path, tiny_corpus, overwrite=True, num_shards=3, **kw)
  assert len(glob.glob(str(tmp_path / "out" / "train-*"))) == 3 == meta.splits["train"].shards


def test_failed_run_leaves_no_complete_dataset(tmp_path):
  # The validation part (last 10% of a 400-byte file) is shorter than a
  # window: the pipeline runs, then refuses to mark the output complete.
  path = tmp_path / "small.txt"
  path.write_text(shakespeare_text(400))
  with pytest.raises(Exception, match="No validation windows"):
    _run(tmp_path, path, window_length=64, split_mode="tail", validation_fraction=0.1)
  assert not M.is_complete(str(tmp_path / "out"))


def test_killed_run_is_not_read_as_complete(tmp_path):
  corpus = tmp_path / "big.txt"
  text = shakespeare_text(1_200_000).encode()
  corpus.write_bytes(text * 8)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
      [sys.executable, "-m", "beam_preprocess.main", f"--input={corpus}",
       f"--output_dir={out}", "--split_mode=tail", "--chunk_bytes=65536"] + BEAM_ARGS,
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while time.time() < deadline and not glob.glob(str(out / "train-*")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert glob.glob(str(out / "train-*")), "the run ended before it was killed"
  with pytest.raises(M.IncompleteDatasetError):
    M.load_dataset_metadata(str(out))


def test_fixed_validation_and_test_inputs(tmp_path):
  text = shakespeare_text(30_000)
  for name, part in (("train.txt", text[:20_000]), ("valid.txt", text[20_000:25_000]),
                     ("test.txt", text[25_000:])):
    (tmp_path / name).write_text(part)
  config = config_lib.PreprocessConfig(
      input=(str(tmp_path / "train.txt"),), output_dir=str(tmp_path / "out"),
      tokenizer=T.TokenizerSpec(type="word"), window_length=8,
      validation_fraction=0.0, validation_input=(str(tmp_path / "valid.txt"),),
      test_input=(str(tmp_path / "test.txt"),))
  meta = pipeline.run(config, pipeline_args=BEAM_ARGS)
  assert set(meta.splits) == {"train", "validation", "test"}
  assert all(s.documents == 1 and s.windows > 0 for s in meta.splits.values())
  # The vocabulary comes from the training split only.
  vocab = set(M.load_vocab_for(config.output_dir, meta))
  train_words = set(T.Tokenizer(config.tokenizer, vocab=list(T.RESERVED_TOKENS)).count(
      text[:20_000]))
  assert vocab - set(T.RESERVED_TOKENS) == train_words
  assert meta.splits["test"].unknown_tokens > 0
  with pytest.raises(ValueError, match="--validation_fraction must be 0 with --validation_input"):
    config_lib.PreprocessConfig(input=("a",), output_dir="b", tokenizer=T.TokenizerSpec(),
                                validation_input=("c",))


def test_direct_runner_defaults_to_one_thread_per_cpu():
  args = pipeline.direct_runner_defaults([])
  assert args == [f"--direct_num_workers={os.cpu_count()}",
                  "--direct_running_mode=multi_threading"]
  assert pipeline.direct_runner_defaults(["--runner=DirectRunner"])[1:] == args
  for given in (BEAM_ARGS, ["--direct_num_workers=3"],
                ["--runner=DataflowRunner", "--project=p"]):
    assert pipeline.direct_runner_defaults(given) == given


def test_word_windows_with_default_runner_equal_the_regex_tokenizer(tmp_path):
  """Threaded workers and the vectorized word splitter (chunks > 4,096 chars)
  give exactly the windows of re.findall + a dict lookup."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(shakespeare_text(200_000) + "Ünïcödé wörds, 1,000 émigrés.\n" * 50)
  config = config_lib.PreprocessConfig(
      input=(str(corpus),), output_dir=str(tmp_path / "out"),
      tokenizer=T.TokenizerSpec(type="word"), window_length=20, split_mode="tail",
      validation_fraction=0.0, max_vocab_size=2000, chunk_bytes=16384)
  meta = pipeline.run(config, pipeline_args=[])
  vocab = M.load_vocab_for(config.output_dir, meta)
  tok = T.Tokenizer(meta.tokenizer_spec, vocab=vocab)
  files, _ = inputs.match_inputs([str(corpus)])
  chunks = inputs.plan_chunks(files, split_mode="tail", validation_fraction=0.0,
                              chunk_bytes=16384)
  expected = []
  for c in chunks:
    words = tok.split_words(T.normalize_text(transforms.read_chunk(c).decode(), tok.spec))
    ids = [T.EOS_ID if w == "\n" else tok.id_of(w) for w in words]
    ids = np.array([T.UNK_ID if i is None else i for i in ids], dtype=np.int32)
    expected += [tuple(w) for w in schema.window_ids(ids,
                                                     window_length=20, stride=20)]
  got = read_split(config.output_dir, meta, "train")
  assert len(chunks) > 10 and meta.splits["train"].unknown_tokens > 0
  assert sorted(map(tuple, got)) == sorted(expected)
