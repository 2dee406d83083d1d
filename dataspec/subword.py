"""Subword tokenizers (`bpe`, `unigram`): SentencePiece models trained from
word counts, and how their ids map to and from text.

The corpus is never given to SentencePiece: the preprocessing pipeline counts
pre-tokens (text split at spaces and line ends) on every worker, sums the
counts, and `train_model` hands that table to SentencePiece in its
word-frequency format (`input_format=tsv`), on one worker. The result is a
serialized SentencePiece ModelProto (`tokenizer.model`, protobuf, loadable
by the `sentencepiece` library and by tensorflow-text), with:

  ids 0, 1, 2     <pad>, <unk>, <eos>, as for every tokenizer
  ids 3..258      <0x00>..<0xFF>: byte fallback, so no text is ever unknown
  then pieces     "▁" stands for a space; a piece may start with one

Line ends are not pieces: each line is encoded on its own and lines are
joined with <eos> (as the word tokenizer does with --line_eos), so
decode(encode(text)) == text after normalization. SentencePiece's own
normalization is off ("identity"): --normalization and --lowercase are
applied before it, by the same code as for the other tokenizers.

Example:
  >>> model = train_model({"the": 50, "cat": 20, "then": 10}, model_type="bpe",
  ...                     vocab_size=280)
  >>> sub = SubwordModel(model)
  >>> sub.decode(sub.encode("the cat\\nthen")) == "the cat\\nthen"
  True
"""

import collections
import hashlib
import io
import itertools
import os
import tempfile
from typing import List, Mapping, Sequence, Tuple

from absl import logging
import numpy as np

SUBWORD_TYPES = ("bpe", "unigram")
RESERVED_TOKENS = ("<pad>", "<unk>", "<eos>")  # = tokenizer.RESERVED_TOKENS
SPACE = "\u2581"  # SentencePiece's meta symbol for a space ("▁")
_EOS = (2,)
UNK_TEXT = "<unk>"  # What decode writes for <unk> (as char and word do).
DEFAULT_VOCAB_SIZE = 8000
MIN_VOCAB_SIZE = len(RESERVED_TOKENS) + 256 + 1  # reserved, bytes, one piece
DEFAULT_CHARACTER_COVERAGE = 0.9995
# The most distinct pre-tokens handed to SentencePiece (the most frequent
# ones); rarer words are still encoded, from smaller pieces or bytes.
MAX_TRAINING_WORDS = 2_000_000
# Unigram training's result depends on its thread count (not on the
# machine): a fixed count keeps tokenizer.model identical across machines.
TRAINING_THREADS = 8
# SentencePiece's unigram trainer (0.2.x) finds its seed pieces in a suffix
# array of its training text, which it builds from a word-count table by
# writing every word as many times as it was counted (in chunks of up to 500
# MB): its memory, about 19 bytes per byte of that text, and its time grow
# with the corpus (bench/bench_subword.py: 490 MB of text took 6.5 GB and
# 42 s). Larger tables are scaled down to this much text (sample_counts), as
# if it had read a sample of the corpus: 1.2 GB and ~6 s at most. bpe does
# not copy words: its cost depends on the distinct words only.
DEFAULT_UNIGRAM_SAMPLE_MB = 64.0
# SentencePiece cannot take a pre-token longer than this (its default
# max_sentence_length is 4192 bytes); longer ones are left out of training.
_MAX_WORD_BYTES = 4096


def check_vocab_size(model_type: str, vocab_size: int):
  """Raises ValueError naming --max_vocab_size if a model cannot be this small."""
  if vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(f"--max_vocab_size must be at least {MIN_VOCAB_SIZE} for "
                     f"--tokenizer={model_type} (3 reserved ids and 256 byte ids "
                     f"come first), got {vocab_size}")


def check_character_coverage(character_coverage: float):
  """Raises ValueError naming --character_coverage outside SentencePiece's range."""
  if not 0.98 <= character_coverage <= 1:
    raise ValueError("--character_coverage must be in [0.98, 1] (SentencePiece's "
                     f"range), got {character_coverage}")


def pretoken_counts(text: str) -> collections.Counter:
  """Counts of the pre-tokens of normalized `text`: what SentencePiece's
  trainer sees as words (split at " " and line ends only; a tab or any other
  character is part of a word, as it is for SentencePiece)."""
  counts = collections.Counter(text.replace("\n", " ").split(" "))
  counts.pop("", None)
  return counts


def check_unigram_sample_mb(unigram_sample_mb: float):
  """Raises ValueError naming --unigram_sample_mb if it is negative."""
  if not unigram_sample_mb >= 0:
    raise ValueError("--unigram_sample_mb must be >= 0 (0 = every count as "
                     f"counted), got {unigram_sample_mb}")


def training_text_bytes(words: Sequence[Tuple[str, int]]) -> int:
  """The text SentencePiece's unigram trainer makes of (word, count) pairs:
  every word's UTF-8 bytes count times, one separator byte each."""
  return sum(count * (len(word.encode("utf-8")) + 1) for word, count in words)


def sample_counts(words: Sequence[Tuple[str, int]],
                  max_bytes: int) -> Sequence[Tuple[str, int]]:
  """Scales a word-count table down to about `max_bytes` of text.

  The text is what SentencePiece's unigram trainer writes: every word count
  times, plus a separator byte each. A larger table's counts are multiplied
  by max_bytes / its text size and rounded to the nearest integer, as a
  sample of the corpus would count them; words that round to 0 are left
  out, as a sample would miss them. Integer arithmetic: the same table
  gives the same result on any machine.

  >>> sample_counts([("the", 60), ("cat", 20), ("a", 2)], 100)
  [('the', 19), ('cat', 6), ('a', 1)]

  Args:
    words: (word, count) pairs.
    max_bytes: the most text; 0 = no limit (words returned as they are).

  Returns:
    (word, count) pairs in the same order, counts >= 1: `words` itself
    when it fits.
  """
  total = training_text_bytes(words)
  if not max_bytes or total <= max_bytes:
    return words
  scaled = [(word, (2 * count * max_bytes + total) // (2 * total)) for word, count in words]
  return [(word, count) for word, count in scaled if count]


def train_model(counts: Mapping[str, int], *, model_type: str, vocab_size: int,
                character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
                min_count: int = 1, num_threads: int = TRAINING_THREADS,
                unigram_sample_mb: float = DEFAULT_UNIGRAM_SAMPLE_MB) -> bytes:
  """Trains a SentencePiece model on a word-frequency table.

  Args:
    counts: pre-token -> count (pretoken_counts summed over the corpus).
    model_type: "bpe" or "unigram".
    vocab_size: ids in the model, reserved and the 256 byte ids included.
      For unigram, and for bpe on a small corpus, the model may have fewer
      (a soft limit: the corpus may not have that many pieces).
    character_coverage: the share of characters (by count) that get pieces
      of their own, in [0.98, 1]; the rarest rest are encoded as bytes.
    min_count: pre-tokens seen fewer times are left out of training.
    num_threads: trainer threads; unigram models differ by thread count.
    unigram_sample_mb: unigram: counts whose text is larger (see
      sample_counts) are scaled down to this many MB (10**6 bytes); 0 = as
      they are. bpe ignores it.

  Returns:
    The serialized ModelProto.

  Raises:
    ValueError: bad arguments, no words, or SentencePiece refused the table.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if model_type not in SUBWORD_TYPES:
    raise ValueError(f"model_type must be one of {SUBWORD_TYPES}, got {model_type!r}")
  check_vocab_size(model_type, vocab_size)
  check_character_coverage(character_coverage)
  check_unigram_sample_mb(unigram_sample_mb)
  words = [(w, c) for w, c in counts.items()
           if c >= min_count and len(w.encode("utf-8")) <= _MAX_WORD_BYTES
           and "\t" not in w and "\n" not in w]
  if not words:
    raise ValueError(f"No words to train the {model_type} model on (every "
                     f"pre-token was seen fewer than --min_count={min_count} times)")
  words.sort(key=lambda wc: (-wc[1], wc[0]))
  words = words[:MAX_TRAINING_WORDS]
  if model_type == "unigram":
    sampled = sample_counts(words, int(unigram_sample_mb * 1e6))
    if sampled is not words:
      logging.info("unigram: word counts of %.1f MB of text scaled down to "
                   "--unigram_sample_mb=%g (%s of %s words kept)",
                   training_text_bytes(words) / 1e6, unigram_sample_mb,
                   f"{len(sampled):,}", f"{len(words):,}")
      words = sampled
    if not words:
      raise ValueError(f"--unigram_sample_mb={unigram_sample_mb:g} is too small: "
                       "no word's count is left after scaling the counts down to it")
  model = io.BytesIO()
  with tempfile.TemporaryDirectory(prefix="textgen-spm-") as tmp:
    table = os.path.join(tmp, "words.tsv")
    with open(table, "w", encoding="utf-8") as f:
      for word, count in words:
        f.write(f"{word}\t{count}\n")
    try:
      spm.SentencePieceTrainer.train(
          input=table, input_format="tsv", model_type=model_type,
          vocab_size=vocab_size, hard_vocab_limit=False,
          character_coverage=character_coverage, byte_fallback=True,
          pad_id=0, unk_id=1, eos_id=2, bos_id=-1, pad_piece=RESERVED_TOKENS[0],
          unk_piece=RESERVED_TOKENS[1], eos_piece=RESERVED_TOKENS[2],
          # Our own normalization runs before; keep every space.
          normalization_rule_name="identity", remove_extra_whitespaces=False,
          add_dummy_prefix=True, split_by_whitespace=True,
          max_sentence_length=_MAX_WORD_BYTES + 96,
          num_threads=num_threads,
          minloglevel=2, model_writer=model)
    except RuntimeError as err:
      raise ValueError(f"SentencePiece could not train a {model_type} model with "
                       f"--max_vocab_size={vocab_size} on {len(words):,} distinct "
                       f"words: {err}") from err
  return _without_run_details(model.getvalue())


# ModelProto.trainer_spec, and the TrainerSpec fields that describe the run
# rather than the model (sentencepiece_model.proto): input (a temporary
# path), model_prefix, num_threads. Dropped so that the same counts give the
# same bytes, and fingerprint, on any machine.
_TRAINER_SPEC = 2
_RUN_FIELDS = frozenset({1, 2, 16})


def _varint(data: bytes, pos: int):
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(data: bytes):
  """(field number, bytes of the whole field incl. its key, payload if
  length-delimited) of a serialized protobuf message, in order."""
  pos = 0
  while pos < len(data):
    start = pos
    key, pos = _varint(data, pos)
    wire_type = key & 7
    payload = None
    if wire_type == 0:
      _, pos = _varint(data, pos)
    elif wire_type == 1:
      pos += 8
    elif wire_type == 5:
      pos += 4
    elif wire_type == 2:
      length, pos = _varint(data, pos)
      payload = data[pos:pos + length]
      pos += length
    else:
      raise ValueError(f"Unexpected protobuf wire type {wire_type}")
    yield key >> 3, data[start:pos], payload


def _encode_varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _without_run_details(model: bytes) -> bytes:
  out = bytearray()
  for number, raw, payload in _fields(model):
    if number == _TRAINER_SPEC and payload is not None:
      spec = b"".join(r for n, r, _ in _fields(payload) if n not in _RUN_FIELDS)
      out += _encode_varint(_TRAINER_SPEC << 3 | 2) + _encode_varint(len(spec)) + spec
    else:
      out += raw
  return bytes(out)


def fingerprint(model: bytes) -> str:
  """A short hash of a serialized model (metadata.json vocab_fingerprint)."""
  return hashlib.sha256(model).hexdigest()[:16]


class SubwordModel:
  """A SentencePiece model with this project's line and id conventions.

  Args:
    model: a serialized ModelProto (tokenizer.model).

  Raises:
    ValueError: not a SentencePiece model, or its first ids are not
      <pad>, <unk>, <eos>, or it has no byte fallback.
  """

  def __init__(self, model: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model = bytes(model)
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(self.model)
    except (RuntimeError, OSError) as err:
      raise ValueError(f"Not a SentencePiece model: {err}") from err
    self.pieces: List[str] = [self._sp.id_to_piece(i)
                              for i in range(self._sp.get_piece_size())]
    if tuple(self.pieces[:len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
      raise ValueError(f"The SentencePiece model's first pieces are "
                       f"{self.pieces[:3]}, not {list(RESERVED_TOKENS)}")
    if not self._sp.is_byte(len(RESERVED_TOKENS)):
      raise ValueError("The SentencePiece model has no byte fallback")
    self.vocab_size = len(self.pieces)
    self._table = self.piece_bytes()

  def encode(self, text: str) -> np.ndarray:
    """Ids of normalized `text` (int32 (num_tokens,)), <eos> between lines."""
    encoded = self._sp.encode(text.split("\n"))  # id lists, one per line
    total = sum(map(len, encoded)) + len(encoded)
    # Each line's ids and an <eos>, flattened in C; the last <eos> dropped.
    ids = np.fromiter(itertools.chain.from_iterable(
        itertools.chain(line, _EOS) for line in encoded), dtype=np.int32, count=total)
    return ids[:-1]

  def piece_bytes(self) -> List[bytes]:
    """What each id writes when decoded ("▁" as a space, byte ids as their
    byte, <pad> nothing, <eos> a line end, <unk> "<unk>"); a line's first
    id drops one leading space (SentencePiece's dummy prefix)."""
    out = []
    for i, piece in enumerate(self.pieces):
      if i == 0:
        out.append(b"")
      elif i == 1:
        out.append(UNK_TEXT.encode())
      elif i == 2:
        out.append(b"\n")
      elif self._sp.is_byte(i):
        out.append(bytes([int(piece[3:5], 16)]))  # "<0xAB>"
      elif self._sp.is_control(i) or self._sp.is_unused(i):
        out.append(b"")
      else:
        out.append(piece.replace(SPACE, " ").encode("utf-8"))
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; invalid byte sequences become U+FFFD."""
    table = self._table
    out = bytearray()
    line_start = True
    for i in ids:
      i = int(i)
      if i == 0:
        continue
      piece = table[i]
      if line_start and piece.startswith(b" "):
        piece = piece[1:]
      out += piece
      line_start = i == 2
    return out.decode("utf-8", errors="replace")
