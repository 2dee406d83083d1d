"""Tokenizers: `char`, `word`, `byte`, `bpe` and `unigram`, with fixed
reserved ids.

Reserved ids are the same for every tokenizer and are never produced from
ordinary text:

  id 0  <pad>  padding (never appears in a window; kept free for batching)
  id 1  <unk>  a token outside the vocabulary (never produced by `byte`)
  id 2  <eos>  end of line for the `word` tokenizer; the generator's stop token

`char` and `word` tokenizers map text to ids with a vocabulary (vocab.txt,
line number = id, reserved tokens on lines 0..2). `byte` needs no vocabulary:
byte b has id b + 3, so every input is representable and nothing is unknown.
`bpe` and `unigram` are SentencePiece models (tokenizer.model, see
dataspec/subword.py) with the same reserved ids and byte fallback.

Example:
  >>> spec = TokenizerSpec(type="word", lowercase=True, punctuation="strip")
  >>> Tokenizer(spec, vocab=["<pad>", "<unk>", "<eos>", "the", "cat"]).encode(
  ...     "The cat, the DOG\\n").tolist()
  [3, 4, 3, 1, 2]
"""

import collections
import dataclasses
import itertools
import re
import unicodedata
from typing import Mapping, Optional, Sequence

import numpy as np

from dataspec import subword
from dataspec import wordsplit

PAD_ID = 0
UNK_ID = 1
EOS_ID = 2
RESERVED_TOKENS = ("<pad>", "<unk>", "<eos>")
NUM_RESERVED = len(RESERVED_TOKENS)
BYTE_VOCAB_SIZE = 256 + NUM_RESERVED

TOKENIZER_TYPES = ("char", "word", "byte") + subword.SUBWORD_TYPES
NORMALIZATIONS = ("nfc", "nfkc", "none")
PUNCTUATION_MODES = ("keep", "split", "strip")
NUMBER_MODES = ("keep", "replace")
NUMBER_TOKEN = "N"  # What `numbers="replace"` writes, as in the PTB corpus.

# One regex per punctuation mode, with and without line ends as tokens. They
# define the word tokenizer; texts of at least _VECTORIZE_MIN_CHARS are split
# by wordsplit (the same tokens, found with numpy: see bench/bench_tokenizer.py).
_WORD_PATTERNS = {
    "keep": r"[^\s]+",  # split on white space only
    "split": r"\w+|[^\w\s]",  # punctuation marks are tokens
    "strip": r"\w+",  # punctuation is dropped (the Keras Tokenizer default)
}
_WORD_REGEXES = {(mode, eos): re.compile(("\n|" if eos else "") + pattern)
                 for mode, pattern in _WORD_PATTERNS.items()
                 for eos in (False, True)}
_NUMBER = re.compile(r"\d[\d,.]*\Z")
# Below this, findall is as fast and needs no code point tables (~0.3 s to
# build once per process).
_VECTORIZE_MIN_CHARS = 4096


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """How text becomes tokens. Stored in metadata.json and in the export.

  Attributes:
    type: "char", "word", "byte", "bpe" or "unigram".
    normalization: Unicode normalization of text before tokenizing ("nfc",
      "nfkc" or "none"). Line ends "\\r\\n" always become "\\n". Not applied
      by `byte`, which sees the raw bytes.
    lowercase: lowercase text first (all but byte).
    punctuation: word only. "keep": split on white space and keep text as-is;
      "split": punctuation marks become tokens of their own; "strip": drop
      punctuation (what the Keras `Tokenizer` tutorial does).
    numbers: word only. "keep", or "replace" every number token with "N".
    line_eos: word only. Emit <eos> at every line end (PTB convention).
  """
  type: str = "char"
  normalization: str = "nfc"
  lowercase: bool = False
  punctuation: str = "split"
  numbers: str = "keep"
  line_eos: bool = True

  def __post_init__(self):
    _check_choice("tokenizer", self.type, TOKENIZER_TYPES)
    _check_choice("normalization", self.normalization, NORMALIZATIONS)
    _check_choice("punctuation", self.punctuation, PUNCTUATION_MODES)
    _check_choice("numbers", self.numbers, NUMBER_MODES)

  @property
  def uses_vocab(self) -> bool:
    """A vocabulary file comes with the data: vocab.txt (char, word) or
    tokenizer.model (bpe, unigram)."""
    return self.type != "byte"

  @property
  def is_subword(self) -> bool:
    return self.type in subword.SUBWORD_TYPES

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json_dict(cls, d: Mapping) -> "TokenizerSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown tokenizer options {sorted(unknown)}")
    return cls(**d)


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unrecognized --{name}: {value!r} (choose from "
                     f"{', '.join(choices)})")


def encoding_text(text: str, spec: TokenizerSpec) -> str:
  """The text Tokenizer.encode tokenizes: normalize_text's, or `text` as it
  is for byte (which sees the raw bytes)."""
  return text if spec.type == "byte" else normalize_text(text, spec)


def normalize_text(text: str, spec: TokenizerSpec) -> str:
  """Applies line-end, Unicode and case normalization of `spec` to `text`."""
  if "\r" in text:
    text = text.replace("\r\n", "\n")
  if spec.normalization != "none":
    form = spec.normalization.upper()
    if not unicodedata.is_normalized(form, text):
      text = unicodedata.normalize(form, text)
  if spec.lowercase:
    text = text.lower()
  return text


def make_counter(spec: TokenizerSpec):
  """text -> collections.Counter of the vocabulary candidates in raw text:
  characters (char), words (word) or pre-tokens (bpe, unigram: what
  SentencePiece trains on)."""
  if spec.is_subword:
    return lambda text: subword.pretoken_counts(normalize_text(text, spec))
  return Tokenizer(spec, vocab=list(RESERVED_TOKENS)).count


class Tokenizer:
  """Encodes text to int32 ids and decodes ids to text.

  Args:
    spec: the tokenizer options.
    vocab: char and word: tokens by id, reserved tokens first; bpe and
      unigram: the serialized SentencePiece model (bytes); byte: None.

  Raises:
    ValueError: the vocabulary is missing or does not start with the reserved
      tokens.
  """

  def __init__(self, spec: TokenizerSpec, vocab=None):
    self.spec = spec
    self._splitter = wordsplit.WordSplitter(punctuation=spec.punctuation,
                                            line_eos=spec.line_eos)
    self.subword = None
    if spec.type == "byte":
      self.vocab = None
      self.vocab_size = BYTE_VOCAB_SIZE
      return
    if spec.is_subword:
      if not isinstance(vocab, (bytes, bytearray)):
        raise ValueError(f"The {spec.type!r} tokenizer needs its SentencePiece "
                         "model (tokenizer.model)")
      self.subword = subword.SubwordModel(vocab)
      self.vocab = self.subword.pieces
      self.vocab_size = self.subword.vocab_size
      return
    if isinstance(vocab, (bytes, bytearray)):
      raise ValueError(f"The {spec.type!r} tokenizer takes a token list, not a model")
    if vocab is None:
      raise ValueError(f"The {spec.type!r} tokenizer needs a vocabulary")
    if tuple(vocab[:NUM_RESERVED]) != RESERVED_TOKENS:
      raise ValueError(f"Vocabulary must start with {RESERVED_TOKENS}, got "
                       f"{tuple(vocab[:NUM_RESERVED])}")
    self.vocab = list(vocab)
    self.vocab_size = len(self.vocab)
    self._ids = {tok: i for i, tok in enumerate(self.vocab)}
    # Literal "<unk>"/"<eos>" in text (PTB writes them) map to the reserved
    # ids; a literal "<pad>" must never become padding.
    self._ids["<pad>"] = UNK_ID
    if spec.type == "word":
      self._ids["\n"] = EOS_ID
    self._key_table = None  # built on the first vectorized encode
    if spec.type == "char":
      chars = [t for t in self.vocab[NUM_RESERVED:]]
      if any(len(c) != 1 for c in chars):
        raise ValueError("A char vocabulary holds single characters only")
      size = max((ord(c) for c in chars), default=0) + 1
      # Dense code point -> id table: one numpy gather encodes a whole chunk.
      self._table = np.full(size, UNK_ID, dtype=np.int32)
      for i, c in enumerate(chars, start=NUM_RESERVED):
        self._table[ord(c)] = i

  # ---- splitting (also used to count tokens for the vocabulary) ----------

  def split_words(self, text: str) -> list:
    """Word tokens of normalized `text`; "\\n" entries mark line ends when
    `line_eos` is set."""
    words = _WORD_REGEXES[self.spec.punctuation, self.spec.line_eos].findall(text)
    if self.spec.numbers == "replace":
      words = [NUMBER_TOKEN if w[0].isdigit() and _NUMBER.match(w) else w
               for w in words]
    return words

  def count(self, text: str) -> collections.Counter:
    """Counts vocabulary candidates in raw (unnormalized) `text`."""
    text = normalize_text(text, self.spec)
    if self.subword is not None:
      return subword.pretoken_counts(text)
    if self.spec.type == "char":
      codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
      counts = np.bincount(codepoints)
      nonzero = np.flatnonzero(counts)
      return collections.Counter(
          {chr(cp): int(counts[cp]) for cp in nonzero})
    if self.spec.type == "word":
      counter = None
      if len(text) >= _VECTORIZE_MIN_CHARS:
        counter = self._count_words_vectorized(text)
      if counter is None:
        counter = collections.Counter(self.split_words(text))
      counter.pop("\n", None)
      for reserved in RESERVED_TOKENS:
        counter.pop(reserved, None)
      return counter
    raise ValueError("The byte tokenizer has no vocabulary to count")

  # ---- encoding -----------------------------------------------------------

  def encode(self, text: str) -> np.ndarray:
    """Returns the ids of `text` as an int32 array of shape (num_tokens,)."""
    text = encoding_text(text, self.spec)
    if self.spec.type == "byte":
      return self.encode_bytes(text.encode("utf-8"))
    if self.subword is not None:
      return self.subword.encode(text)
    if self.spec.type == "char":
      codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
      inside = codepoints < len(self._table)
      ids = self._table[np.where(inside, codepoints, 0)]
      return np.where(inside, ids, UNK_ID).astype(np.int32)
    if len(text) >= _VECTORIZE_MIN_CHARS:
      ids = self._encode_words_vectorized(text)
      if ids is not None:
        return ids
    words = self.split_words(text)
    # map() over dict.get runs in C; "\n" is in self._ids as <eos>.
    return np.fromiter(map(self._ids.get, words, itertools.repeat(UNK_ID)),
                       dtype=np.int32, count=len(words))

  def _count_words_vectorized(self, text: str) -> Optional[collections.Counter]:
    """count() of normalized `text` via wordsplit; None if it cannot tell."""
    cps = wordsplit.code_points(text)
    if cps is None:
      return None
    spans = self._splitter.spans(cps)
    if self.spec.line_eos:  # line ends are not vocabulary candidates
      words = cps[spans.starts] != ord("\n")
      spans = wordsplit.Spans(spans.starts[words], spans.ends[words])
    num_numbers = 0
    if self.spec.numbers == "replace":
      numbers = wordsplit.WordSplitter.numbers(cps, spans)
      num_numbers = int(numbers.sum())
      spans = wordsplit.Spans(spans.starts[~numbers], spans.ends[~numbers])
    counter = collections.Counter()
    if len(spans.starts):
      counter = self._count_spans(text, cps, spans)
      if counter is None:
        return None
    if num_numbers:
      counter[NUMBER_TOKEN] += num_numbers
    return counter

  @staticmethod
  def _count_spans(text, cps, spans) -> Optional[collections.Counter]:
    """Counts of the distinct tokens at `spans`; None if keys collide."""
    itemsize = wordsplit.itemsize_for(cps)
    packed = wordsplit.pack(cps, spans, itemsize)
    firsts, counts, same_as = wordsplit.group(packed.keys)
    if not wordsplit.same_tokens(cps, spans.starts, packed, cps, spans.starts[same_as],
                                 packed.take(same_as), itemsize=itemsize).all():
      return None  # two different tokens share a key
    # Distinct keys hold distinct tokens (verified): a plain dict, built in C.
    return collections.Counter(dict(zip(
        [text[start:end] for start, end in zip(spans.starts[firsts].tolist(),
                                               spans.ends[firsts].tolist())],
        counts.tolist())))

  def _build_key_table(self):
    """The vocabulary packed for _encode_words_vectorized; () if it cannot
    be put in a code point array."""
    tokens = [t for t in self._ids if t]
    cps = wordsplit.code_points("".join(tokens))
    if cps is None:
      return ()
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    starts = np.zeros(len(tokens), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    spans = wordsplit.Spans(starts, starts + lengths)
    ids = np.array([self._ids[t] for t in tokens], dtype=np.int32)
    # Keys depend on the itemsize, which a text may raise: one pack and
    # table per itemsize, made when first needed.
    tables = {}
    def table_for(itemsize):
      if itemsize not in tables:
        packed = wordsplit.pack(cps, spans, itemsize)
        tables[itemsize] = (packed, wordsplit.KeyTable(packed.keys))
      return tables[itemsize]
    return ids, cps, spans, wordsplit.itemsize_for(cps), table_for

  def _encode_words_vectorized(self, text: str) -> Optional[np.ndarray]:
    """encode() of normalized `text` via wordsplit; None if it cannot."""
    cps = wordsplit.code_points(text)
    if cps is None:
      return None
    if self._key_table is None:
      self._key_table = self._build_key_table()
    if not self._key_table:
      return None
    vocab_ids, vocab_cps, vocab_spans, vocab_itemsize, table_for = self._key_table
    itemsize = max(wordsplit.itemsize_for(cps), vocab_itemsize)
    vocab_packed, table = table_for(itemsize)
    spans = self._splitter.spans(cps)
    packed = wordsplit.pack(cps, spans, itemsize)
    found = table.find(packed.keys)  # (num_tokens,) vocabulary index or -1
    hit = found >= 0
    at = np.maximum(found, 0)
    same = hit & wordsplit.same_tokens(cps, spans.starts, packed, vocab_cps,
                                       vocab_spans.starts[at], vocab_packed.take(at),
                                       itemsize=itemsize)
    out = np.where(same, vocab_ids[at], UNK_ID).astype(np.int32)
    # A key shared by two different tokens: look those up by string.
    for i in np.flatnonzero(hit & ~same).tolist():
      out[i] = self._ids.get(text[spans.starts[i]:spans.ends[i]], UNK_ID)
    if self.spec.numbers == "replace":
      out[wordsplit.WordSplitter.numbers(cps, spans)] = self._ids.get(
          NUMBER_TOKEN, UNK_ID)
    return out

  def encode_bytes(self, data: bytes) -> np.ndarray:
    """Encodes raw bytes: decoded as UTF-8 (invalid bytes -> U+FFFD) unless
    the tokenizer is `byte`, which takes them as they are."""
    if self.spec.type == "byte":
      return np.frombuffer(data, dtype=np.uint8).astype(np.int32) + NUM_RESERVED
    return self.encode(data.decode("utf-8", errors="replace"))

  # ---- decoding -----------------------------------------------------------

  def decode(self, ids: Sequence[int]) -> str:
    """Maps ids back to text. <pad> is dropped, <unk> is written as "<unk>"."""
    if self.subword is not None:
      return self.subword.decode(ids)
    ids = [int(i) for i in ids if int(i) != PAD_ID]
    if self.spec.type == "byte":
      data = bytes(i - NUM_RESERVED for i in ids if i >= NUM_RESERVED)
      return data.decode("utf-8", errors="replace")
    if self.spec.type == "char":
      return "".join("\n" if i == EOS_ID else self.vocab[i] for i in ids)
    pieces = []
    for i in ids:
      if i == EOS_ID:
        pieces.append("\n")
      else:
        if pieces and pieces[-1] != "\n":
          pieces.append(" ")
        pieces.append(self.vocab[i])
    return "".join(pieces)

  def id_of(self, token: str) -> Optional[int]:
    """The id of a single token, or None when it is not in the vocabulary."""
    if self.spec.type == "byte":
      data = token.encode("utf-8")
      return data[0] + NUM_RESERVED if len(data) == 1 else None
    if token in RESERVED_TOKENS:
      return RESERVED_TOKENS.index(token)
    if self.subword is not None:
      ids = self.subword.encode(token)
      return int(ids[0]) if len(ids) == 1 else None
    return self._ids.get(token)
