"""The tokenizers of dataspec.tokenizer as TensorFlow ops, for the SavedModel.

`GraphTokenizer(spec, vocab)` encodes and decodes inside a TensorFlow graph,
so an exported SavedModel takes and returns text without this project's code.
It gives exactly the ids and text of `dataspec.tokenizer.Tokenizer` for every
option (tests/dataspec/test_graph_tokenizer.py checks this on the bundled
corpus and on random Unicode text for every combination):

  "\\r\\n" -> "\\n"    tf.strings.regex_replace
  nfc / nfkc         CPython's algorithm (full decomposition, canonical
                     ordering, canonical composition) on tables taken from
                     Python's unicodedata, in TensorFlow's own ops, so a
                     SavedModel needs no custom op library (ICU's normalizer
                     in tensorflow-text would make `saved_model_cli run` and
                     plain TensorFlow fail to load the model)
  lowercase          Python's str.lower(): a table of every code point whose
                     lowercase differs (taken from Python itself, full case
                     mapping, e.g. "İ" -> "i̇"), plus Python's final-sigma rule
                     (TensorFlow's ICU-based tf.strings.lower differs for 40
                     code points and drops NUL)
  word tokens        the regexes of tokenizer.py evaluated on code point
                     classes taken from Python's `re` (RE2's \\w and \\s are
                     ASCII-only), as dataspec.wordsplit does with numpy
  vocabulary         a tf.lookup.StaticHashTable (word) or a sorted code point
                     table (char); byte needs none
  bpe, unigram       tensorflow-text's SentencepieceTokenizer (the same
                     SentencePiece library, in the graph) on each line, <eos>
                     between lines; decoding by a table of each id's bytes.
                     The one custom op: load such a SavedModel after
                     `import tensorflow_text`

Everything is vectorized over the batch: strings are decoded to one flat
array of code points with row ids, and token boundaries never cross rows.
"""

import functools
import unicodedata
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from dataspec import subword
from dataspec import tokenizer as tokenizer_lib
from dataspec import wordsplit

_PAIR_SHIFT = 1 << 21  # composition pair key: first * _PAIR_SHIFT + second
_SIGMA = 0x3A3
_SMALL_SIGMA = 0x3C3
_FINAL_SIGMA = 0x3C2
# Classes for the final-sigma rule (see _sigma_classes).
_OTHER, _CASED, _IGNORABLE = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _expansion_table(fn) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """fn(one character) for every code point where it differs from the input.

  Returns:
    (code points (n,) sorted, offsets (n + 1,), values): fn(chr(keys[i])) is
    the code points values[offsets[i]:offsets[i + 1]].
  """
  keys, offsets, values = [], [0], []
  for cp in range(0x110000):
    if 0xD800 <= cp < 0xE000:
      continue
    out = fn(chr(cp))
    if out != chr(cp):
      keys.append(cp)
      values.extend(ord(c) for c in out)
      offsets.append(len(values))
  return (np.array(keys, np.int32), np.array(offsets, np.int32),
          np.array(values, np.int32))


def _lowercase_table():
  """Python's str.lower() of each code point (full case mapping)."""
  return _expansion_table(str.lower)


def _decomposition_table(form: str):
  """The full decomposition of each code point: unicodedata NFD or NFKD."""
  return _expansion_table(functools.partial(unicodedata.normalize, form))


@functools.lru_cache(maxsize=None)
def _combining_classes() -> Tuple[np.ndarray, np.ndarray]:
  """(run starts, canonical combining class) over all code points."""
  table = np.array([unicodedata.combining(chr(cp)) for cp in range(0x110000)],
                   dtype=np.int32)
  return _runs(table)


@functools.lru_cache(maxsize=None)
def _composition_pairs():
  """Canonical composition as Python does it.

  Returns:
    (keys, composites, firsts, starter_seconds): sorted int64 keys
    first * 2**21 + second of every primary composite (Hangul LV and LVT
    syllables included), the composite of each, the sorted code points that
    begin some pair, and those that end a pair while being starters
    (combining class 0). A pair is kept only if Python's NFC composes it,
    which leaves out composition exclusions and non-starter decompositions.
  """
  pairs = {}
  for cp in range(0x110000):
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
      continue
    parts = [int(x, 16) for x in d.split()]
    if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
      pairs[tuple(parts)] = cp
  for l in range(19):  # Hangul: L + V -> LV, LV + T -> LVT
    for v in range(21):
      lv = 0xAC00 + (l * 21 + v) * 28
      pairs[(0x1100 + l, 0x1161 + v)] = lv
      for t in range(1, 28):
        pairs[(lv, 0x11A7 + t)] = lv + t
  keys = np.array([a * _PAIR_SHIFT + b for a, b in pairs], np.int64)
  composites = np.array(list(pairs.values()), np.int32)
  order = np.argsort(keys)
  firsts = np.unique(np.array([a for a, _ in pairs], np.int32))
  starter_seconds = np.unique(np.array(
      [b for _, b in pairs if unicodedata.combining(chr(b)) == 0], np.int32))
  return keys[order], composites[order], firsts, starter_seconds


@functools.lru_cache(maxsize=None)
def _sigma_classes() -> Tuple[np.ndarray, np.ndarray]:
  """Code point classes for Python's final-sigma rule, as (run starts, class).

  Python lowercases "Σ" to "ς" when a cased letter comes before it (skipping
  case-ignorable characters) and none comes after it (same skipping). Which
  characters are cased or case-ignorable is asked of Python itself:
  (c + "Σ") ends in "ς" iff c is cased and not ignorable; ("A" + c + "Σ")
  iff c is ignorable or cased. Whether an ignorable character is cased never
  matters: the rule skips it.
  """
  cls = np.full(0x110000, _OTHER, dtype=np.int8)
  for cp in range(0x110000):
    c = chr(cp)
    if (c + "Σ").lower()[-1] == "ς":
      cls[cp] = _CASED
    elif ("A" + c + "Σ").lower()[-1] == "ς":
      cls[cp] = _IGNORABLE
  return _runs(cls)


def _runs(table: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """A dense code point -> value table as (run starts, run values)."""
  starts = np.concatenate(([0], np.flatnonzero(np.diff(table.astype(np.int32))) + 1))
  return starts.astype(np.int32), table[starts]


@functools.lru_cache(maxsize=None)
def _word_classes():
  """(run starts, class) of wordsplit's classes, and of "digit" and "may be
  part of a number" (for --numbers=replace), over all code points."""
  classes, digits, number_chars = wordsplit._build_class_tables(0x110000)  # pylint: disable=protected-access
  number = (digits.astype(np.int8) * 2) | number_chars.astype(np.int8)  # bit 2: digit
  return _runs(classes), _runs(number)


_CONSTANTS = {}


def _const(key, make):
  """The table `make()` as a tensor made once, outside any graph: functions
  capture it, and a SavedModel stores it once rather than in every function
  that uses it."""
  if key not in _CONSTANTS:
    with tf.init_scope():
      _CONSTANTS[key] = tuple(tf.constant(a) for a in make())
  return _CONSTANTS[key]


def _lookup_runs(name, make, cps):
  """Values of code points `cps` (int32) in a (run starts, values) table."""
  starts, values = _const(name, make)
  index = tf.searchsorted(starts, cps, side="right") - 1
  return tf.gather(values, index)


class GraphTokenizer(tf.Module):
  """dataspec.tokenizer.Tokenizer as TensorFlow ops.

  Args:
    spec: the tokenizer options.
    vocab: tokens by id (char, word), the SentencePiece model's bytes (bpe,
      unigram) or None (byte).
  """

  def __init__(self, spec: tokenizer_lib.TokenizerSpec, vocab=None):
    super().__init__(name="tokenizer")
    self.spec = spec
    if spec.is_subword:
      self._init_subword(bytes(vocab))
      return
    self.vocab_size = (tokenizer_lib.BYTE_VOCAB_SIZE if spec.type == "byte"
                       else len(vocab))
    self.start_id = _start_id(spec, vocab)
    if spec.type == "char":
      chars = np.array([ord(c) for c in vocab[tokenizer_lib.NUM_RESERVED:]], np.int32)
      order = np.argsort(chars)
      self._char_keys = tf.constant(chars[order])
      self._char_ids = tf.constant(order.astype(np.int32) + tokenizer_lib.NUM_RESERVED)
    if spec.type == "word":
      keys = list(vocab)
      values = list(range(len(vocab)))
      # As Tokenizer: a literal "<pad>" is unknown, not padding; a line end
      # (a token with line_eos) is <eos>.
      values[tokenizer_lib.PAD_ID] = tokenizer_lib.UNK_ID
      if "\n" not in keys:
        keys.append("\n")
        values.append(tokenizer_lib.EOS_ID)
      self._word_table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(keys), tf.constant(values, tf.int32)),
          default_value=tokenizer_lib.UNK_ID)
      self._number_id = tf.constant(
          vocab.index(tokenizer_lib.NUMBER_TOKEN)
          if tokenizer_lib.NUMBER_TOKEN in vocab[tokenizer_lib.NUM_RESERVED:]
          else tokenizer_lib.UNK_ID, tf.int32)
    if spec.type != "byte":
      # What decode writes per id: <pad> nothing, <eos> a line end.
      pieces = list(vocab)
      pieces[tokenizer_lib.PAD_ID] = ""
      pieces[tokenizer_lib.EOS_ID] = "\n"
      self._pieces = tf.constant(pieces)
    self.max_piece_bytes = (1 if spec.type == "byte" else
                            1 + max(len(p.encode("utf-8")) for p in pieces))
    """The most bytes one id adds to decoded text (a word's space included)."""

  def _init_subword(self, model: bytes):
    import tensorflow_text  # pylint: disable=g-import-not-at-top
    sub = subword.SubwordModel(model)
    self.vocab_size = sub.vocab_size
    self.start_id = tokenizer_lib.EOS_ID
    self._sentencepiece = tensorflow_text.SentencepieceTokenizer(
        model=model, out_type=tf.int32)
    table = sub.piece_bytes()
    self._pieces = tf.constant(table)
    self.max_piece_bytes = max(len(p) for p in table)

  # ---- normalization ----------------------------------------------------

  def normalize(self, texts: tf.Tensor) -> tf.Tensor:
    """normalize_text() of a batch of UTF-8 strings (shape (batch,))."""
    texts = tf.strings.regex_replace(texts, "\r\n", "\n")
    if self.spec.normalization == "none" and not self.spec.lowercase:
      return texts
    cps = tf.strings.unicode_decode(texts, "UTF-8")
    flat, rows = cps.flat_values, tf.cast(row_ids(cps), tf.int32)
    if self.spec.normalization != "none":
      flat, rows = _unicode_normalize(flat, rows, self.spec.normalization.upper())
    if self.spec.lowercase:
      flat, rows = _lower(flat, rows)
    # rows stay sorted through every step above. validate=False: the checks
    # are four Assert branches, nested functions of every graph that
    # tokenizes, and each node costs memory when a function first runs.
    return tf.strings.unicode_encode(
        tf.RaggedTensor.from_value_rowids(flat, tf.cast(rows, tf.int64),
                                          nrows=cps.nrows(), validate=False), "UTF-8")

  # ---- encoding -----------------------------------------------------------

  def encode(self, texts: tf.Tensor, *, normalized: bool = False) -> tf.RaggedTensor:
    """Ids of a batch of UTF-8 strings: int32 ragged (batch, None).

    Bytes that are not UTF-8 become U+FFFD first, as Tokenizer.encode_bytes
    does (the byte tokenizer takes them as they are). With `normalized` the
    texts are tokenizer.encoding_text()'s already: the graph then holds no
    normalization (its ~600 nodes and Unicode tables cost a generation job
    15 MB of memory: see LanguageModel.sampler).
    """
    texts = tf.convert_to_tensor(texts, tf.string)
    if self.spec.type == "byte":
      pieces = tf.strings.bytes_split(texts)  # (batch, None) one-byte strings
      values = tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1])
      return pieces.with_flat_values(
          tf.cast(values, tf.int32) + tokenizer_lib.NUM_RESERVED)
    texts = _replace_invalid_utf8(texts)
    if not normalized:
      texts = self.normalize(texts)
    if self.spec.is_subword:
      return self._encode_subwords(texts)
    cps = tf.strings.unicode_decode(texts, "UTF-8")  # (batch, None)
    if self.spec.type == "char":
      return cps.with_flat_values(self._char_ids_of(cps.flat_values))
    return self._encode_words(cps)

  def _encode_subwords(self, texts: tf.Tensor) -> tf.RaggedTensor:
    lines = tf.strings.split(texts, "\n")  # (batch, lines); "" gives [""]
    ids = self._sentencepiece.tokenize(lines.flat_values)  # (all lines, None)
    eos = tf.fill([ids.nrows(), 1], tokenizer_lib.EOS_ID)
    ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eos)], axis=1)
    # Every line ended by <eos>, then each row's last one dropped.
    ids = lines.with_flat_values(ids).merge_dims(1, 2)  # (batch, None)
    return ids[:, :-1]

  def _char_ids_of(self, flat):
    n = tf.size(self._char_keys)
    index = tf.minimum(tf.searchsorted(self._char_keys, flat), n - 1)
    hit = tf.equal(tf.gather(self._char_keys, index), flat)
    return tf.where(hit, tf.gather(self._char_ids, index), tokenizer_lib.UNK_ID)

  def _encode_words(self, cps: tf.RaggedTensor) -> tf.RaggedTensor:
    flat = cps.flat_values  # (n,)
    rows = tf.cast(row_ids(cps), tf.int32)
    starts, ends = self._word_spans(flat, rows)  # (tokens,) each
    token_cps = tf.gather(flat, tf.ragged.range(starts, ends))  # (tokens, None)
    words = tf.strings.unicode_encode(token_cps, "UTF-8")  # (tokens,)
    ids = self._word_table.lookup(words)
    if self.spec.numbers == "replace":
      number = _lookup_runs("number", lambda: _word_classes()[1], token_cps.flat_values)
      is_number = (tf.reduce_all(token_cps.with_flat_values(number > 0), axis=1)
                   & (tf.gather(_lookup_runs("number", lambda: _word_classes()[1], flat),
                                starts) >= 2))
      ids = tf.where(is_number, self._number_id, ids)
    return tf.RaggedTensor.from_value_rowids(  # sorted rows: see normalize
        ids, tf.cast(tf.gather(rows, starts), tf.int64), nrows=cps.nrows(), validate=False)

  def _word_spans(self, flat, rows):
    """(starts, ends) of the word tokens of flat code points `flat` whose
    rows are `rows`: wordsplit.WordSplitter.spans, not crossing rows."""
    cls = _lookup_runs("word", lambda: _word_classes()[0], flat)
    word = tf.equal(cls, wordsplit._WORD)  # pylint: disable=protected-access
    punct = tf.equal(cls, wordsplit._PUNCT)  # pylint: disable=protected-access
    newline = tf.equal(cls, wordsplit._NEWLINE)  # pylint: disable=protected-access
    run = (word | punct) if self.spec.punctuation == "keep" else word
    single = tf.zeros_like(run)
    if self.spec.punctuation == "split":
      single |= punct
    if self.spec.line_eos:
      single |= newline
    # A run starts where the code point before it is not in the run (or is
    # in another row) and ends where the next one is not.
    new_row = tf.not_equal(rows, tf.roll(rows, 1, 0)) | tf.equal(tf.range(tf.size(rows)), 0)
    last_of_row = tf.not_equal(rows, tf.roll(rows, -1, 0)) | tf.equal(
        tf.range(tf.size(rows)), tf.size(rows) - 1)
    prev_run = tf.roll(run, 1, 0) & ~new_row
    next_run = tf.roll(run, -1, 0) & ~last_of_row
    starts = tf.where((run & ~prev_run) | single)[:, 0]
    ends = tf.where((run & ~next_run) | single)[:, 0] + 1
    return tf.cast(starts, tf.int32), tf.cast(ends, tf.int32)

  # ---- decoding -----------------------------------------------------------

  def decode(self, ids: tf.RaggedTensor, line_start: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Text of ragged int32 ids (batch, None), as Tokenizer.decode.

    Args:
      ids: the ids.
      line_start: bpe, unigram: bool (batch,), whether each row's ids begin
        a line (default: all do). A subword that begins a line drops its
        leading space, so a continuation decodes with line_start False to
        keep the space it starts with.
    """
    if self.spec.type == "byte":  # <pad> is reserved: dropped with the others
      data = keep_values(ids, ids.flat_values >= tokenizer_lib.NUM_RESERVED)
      return _replace_invalid_utf8(join_rows(data.with_flat_values(_byte_strings(
          data.flat_values - tokenizer_lib.NUM_RESERVED))))
    ids = keep_values(ids, tf.not_equal(ids.flat_values, tokenizer_lib.PAD_ID))
    if self.spec.is_subword:
      return self._decode_subwords(ids, line_start)
    pieces = ids.with_flat_values(tf.gather(self._pieces, ids.flat_values))
    if self.spec.type == "char":
      return join_rows(pieces)
    # word: a space between two tokens unless either is a line end.
    flat = ids.flat_values
    eos = tf.equal(flat, tokenizer_lib.EOS_ID)
    # The value before a row's first is another row's (no space either way).
    prev_eos = tf.concat([[True], eos], 0)[:-1]
    space = ~_firsts(ids) & ~eos & ~prev_eos
    return join_rows(pieces.with_flat_values(
        tf.strings.join([tf.where(space, " ", ""), pieces.flat_values])))

  def _decode_subwords(self, ids: tf.RaggedTensor, line_start) -> tf.Tensor:
    flat = ids.flat_values
    first = _firsts(ids)
    row_start = tf.ones_like(first) if line_start is None else tf.gather(
        line_start, row_ids(ids))
    after_eos = tf.equal(tf.roll(flat, 1, 0), tokenizer_lib.EOS_ID)
    starts_line = tf.where(first, row_start, after_eos)
    pieces = _drop_leading_space(tf.gather(self._pieces, flat), starts_line)
    return _replace_invalid_utf8(join_rows(ids.with_flat_values(pieces)))

  def piece(self, ids: tf.Tensor, after_line_start: tf.Tensor):
    """What one more id appends to decoded text, per row (incremental decode).

    Args:
      ids: int32 (batch,), the next id of each row.
      after_line_start: bool (batch,): the text so far is empty or ends with
        a line end (word tokens are then not preceded by a space).

    Returns:
      (bytes appended (batch,) string, the new after_line_start). For `byte`
      the bytes may be part of a character; the text is the UTF-8 decoding
      (with U+FFFD) of all the bytes.
    """
    pad = tf.equal(ids, tokenizer_lib.PAD_ID)
    if self.spec.type == "byte":
      data = ids >= tokenizer_lib.NUM_RESERVED
      byte = tf.clip_by_value(ids - tokenizer_lib.NUM_RESERVED, 0, 255)
      return tf.where(data, _byte_strings(byte), ""), after_line_start
    text = tf.gather(self._pieces, ids)
    eos = tf.equal(ids, tokenizer_lib.EOS_ID)
    if self.spec.type == "char":
      return text, after_line_start
    if self.spec.is_subword:  # a line's first piece drops its leading space
      return (_drop_leading_space(text, after_line_start),
              tf.where(pad, after_line_start, eos))
    space = ~pad & ~eos & ~after_line_start
    text = tf.strings.join([tf.where(space, " ", ""), text])
    return text, tf.where(pad, after_line_start, eos)


def _expand(flat, name, make):
  """Replaces each code point by its entry in an _expansion_table.

  Returns:
    (new code points (m,), source (m,): the input position each came from).
  """
  def tables():
    keys, offsets, values = make()
    return keys, offsets[:-1], np.diff(offsets).astype(np.int32), values
  keys, starts_table, lengths_table, values = _const(name, tables)
  index = tf.minimum(tf.searchsorted(keys, flat), tf.size(keys) - 1)
  hit = tf.equal(tf.gather(keys, index), flat)
  starts = tf.gather(starts_table, index)
  lengths = tf.where(hit, tf.gather(lengths_table, index), 1)
  source = tf.repeat(tf.range(tf.size(flat)), lengths)  # (m,)
  within = tf.range(tf.size(source)) - tf.gather(tf.cumsum(lengths, exclusive=True), source)
  out = tf.where(tf.gather(hit, source),
                 tf.gather(values, tf.gather(starts, source) + within),
                 tf.gather(flat, source))
  return out, source


def _lower(flat, rows):
  """Python's str.lower() of code points `flat` in rows `rows`."""
  lowered, source = _expand(flat, "lower", _lowercase_table)
  return _final_sigma(flat, rows, source, lowered), tf.gather(rows, source)


def _unicode_normalize(flat, rows, form: str):
  """unicodedata.normalize(form) ("NFC" or "NFKC") of code points `flat` in
  rows `rows`: full decomposition (NFD/NFKD of each code point), canonical
  ordering of combining marks, canonical composition, as CPython does it.
  Text that has nothing to decompose, reorder or compose is returned as is
  (most text: the test is one table lookup per code point)."""
  form_d = form.replace("C", "D")
  keys, = _const(f"{form_d}-keys", lambda: _decomposition_table(form_d)[:1])
  starter_seconds, = _const("starter-seconds", lambda: _composition_pairs()[3:])
  ccc = _lookup_runs("ccc", _combining_classes, flat)

  def member(table, cps):
    index = tf.minimum(tf.searchsorted(table, cps), tf.size(table) - 1)
    return tf.equal(tf.gather(table, index), cps)

  touched = member(keys, flat) | (ccc > 0) | member(starter_seconds, flat)
  return tf.cond(tf.reduce_any(touched),
                 lambda: _normalize_all(flat, rows, form),
                 lambda: (flat, rows))


def _normalize_all(flat, rows, form):
  form_d = form.replace("C", "D")
  decomposed, source = _expand(flat, form_d, lambda: _decomposition_table(form_d))
  rows = tf.gather(rows, source)
  # Canonical ordering: a stable sort by combining class within each starter
  # and the combining marks after it (marks at the start of a row form a
  # group of their own).
  ccc = _lookup_runs("ccc", _combining_classes, decomposed)
  n = tf.size(decomposed)
  new_row = tf.not_equal(rows, tf.roll(rows, 1, 0)) | tf.equal(tf.range(n), 0)
  group = tf.cumsum(tf.cast(tf.equal(ccc, 0) | new_row, tf.int64))
  order = tf.argsort(group * 256 + tf.cast(ccc, tf.int64), stable=True)
  ordered = tf.gather(decomposed, order)
  ccc = tf.gather(ccc, order)
  return _compose(ordered, rows, ccc)


def _compose(cps, rows, ccc):
  """Canonical composition (UAX #15), as CPython's unicodedata does it.

  Every code point that begins some composition pair (a "base"; all are
  starters) scans the code points after it: a mark whose class is not higher
  than that of the last mark left standing is blocked; a pair that composes
  replaces the base and removes the mark; the scan ends at a starter that
  does not compose. No starter both begins and ends a pair, so the scans of
  different bases never overlap: all bases scan in parallel, one step per
  loop iteration.
  """
  keys_t, composites_t, firsts_t = _const("pairs", lambda: _composition_pairs()[:3])
  n = tf.size(cps)

  def is_first(values):
    index = tf.minimum(tf.searchsorted(firsts_t, values), tf.size(firsts_t) - 1)
    return tf.equal(tf.gather(firsts_t, index), values)

  bases = tf.cast(tf.where(is_first(cps))[:, 0], tf.int32)  # (b,)
  current = tf.gather(cps, bases)
  base_rows = tf.gather(rows, bases)
  comb = tf.zeros_like(bases)  # class of the last mark left standing
  active = tf.ones_like(bases, tf.bool)
  removed = tf.zeros([n], tf.bool)

  def body(k, current, comb, active, removed):
    j = bases + k
    active &= j < n
    j = tf.minimum(j, n - 1)
    active &= tf.equal(tf.gather(rows, j), base_rows)
    cp, cls = tf.gather(cps, j), tf.gather(ccc, j)
    stop = active & (comb != 0) & (cls == 0)
    blocked = active & (comb != 0) & (comb >= cls) & ~stop
    trying = active & ~stop & ~blocked
    key = tf.cast(current, tf.int64) * _PAIR_SHIFT + tf.cast(cp, tf.int64)
    index = tf.minimum(tf.searchsorted(keys_t, key), tf.size(keys_t) - 1)
    composes = trying & tf.equal(tf.gather(keys_t, index), key)
    current = tf.where(composes, tf.gather(composites_t, index), current)
    removed = tf.tensor_scatter_nd_update(
        removed, tf.boolean_mask(j, composes)[:, None],
        tf.ones_like(tf.boolean_mask(j, composes), tf.bool))
    standing = trying & ~composes
    comb = tf.where(standing, cls, comb)
    active &= ~stop & ~(standing & (cls == 0)) & ~(composes & ~is_first(current))
    return k + 1, current, comb, active, removed

  _, current, _, _, removed = tf.while_loop(
      lambda k, current, comb, active, removed: tf.reduce_any(active),
      body, (tf.constant(1), current, comb, active, removed))
  out = tf.tensor_scatter_nd_update(cps, bases[:, None], current)
  keep = ~removed
  return tf.boolean_mask(out, keep), tf.boolean_mask(rows, keep)


def _final_sigma(flat, rows, source, lowered):
  """Turns the "σ" of every final-sigma "Σ" into "ς" (Python's rule).

  Args:
    flat, rows: the code points before lowercasing and their rows.
    source, lowered: what _expand made of them.
  """
  sigmas = tf.cast(tf.where(tf.equal(flat, _SIGMA))[:, 0], tf.int32)  # (s,)
  cls = _lookup_runs("sigma", _sigma_classes, flat)
  solid = tf.cast(tf.where(tf.not_equal(cls, _IGNORABLE))[:, 0], tf.int32)  # sorted
  num_solid = tf.size(solid)
  sigma_rows = tf.gather(rows, sigmas)
  # The nearest non-ignorable code point before and after each sigma, if
  # it is in the same string.
  before = tf.searchsorted(solid, sigmas, side="left") - 1
  has_before = before >= 0
  before_pos = tf.gather(solid, tf.maximum(before, 0))
  cased_before = (has_before
                  & tf.equal(tf.gather(rows, before_pos), sigma_rows)
                  & tf.equal(tf.gather(cls, before_pos), _CASED))
  after = tf.searchsorted(solid, sigmas, side="right")
  has_after = after < num_solid
  after_pos = tf.gather(solid, tf.minimum(after, num_solid - 1))
  cased_after = (has_after
                 & tf.equal(tf.gather(rows, after_pos), sigma_rows)
                 & tf.equal(tf.gather(cls, after_pos), _CASED))
  final = tf.boolean_mask(sigmas, cased_before & ~cased_after)
  # Output positions of those sigmas ("Σ" maps to one code point).
  out_pos = tf.searchsorted(source, final, side="left")
  return tf.tensor_scatter_nd_update(
      lowered, out_pos[:, None], tf.fill(tf.shape(final), _FINAL_SIGMA))


def _start_id(spec, vocab) -> Optional[int]:
  """The id that stands for "start of a line", or None: <eos> for word with
  line_eos (and bpe, unigram), the "\\n" character for char (if in the
  vocabulary) and byte.
  Scoring a text scores its first token as if it followed this id."""
  if spec.type == "byte":
    return ord("\n") + tokenizer_lib.NUM_RESERVED
  if spec.type == "word":
    return tokenizer_lib.EOS_ID if spec.line_eos else None
  return vocab.index("\n") if "\n" in vocab[tokenizer_lib.NUM_RESERVED:] else None


def _replace_invalid_utf8(texts: tf.Tensor) -> tf.Tensor:
  """Bytes that are not UTF-8 become U+FFFD, as Python's errors="replace"."""
  return tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace",
                                      replacement_char=0xFFFD)


def _drop_leading_space(pieces: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
  """`pieces` (byte strings, maybe not UTF-8) without their first byte where
  `where` and it is a space."""
  strip = where & tf.equal(tf.strings.substr(pieces, 0, 1), " ")
  pos = tf.cast(strip, tf.int32)
  return tf.strings.substr(pieces, pos, tf.strings.length(pieces) - pos)


def _byte_strings(values: tf.Tensor) -> tf.Tensor:
  """One-byte strings of int values in [0, 256)."""
  table, = _const("bytes", lambda: ([bytes([b]) for b in range(256)],))
  return tf.gather(table, values)


# ---- ragged rows in few ops -----------------------------------------------
# For (batch, None) ragged tensors, what tf.RaggedTensor's own methods do in
# many small ops (shape arithmetic and checks): value_rowids() 75 graph
# nodes, tf.ragged.boolean_mask 120, reduce_join over the rows 84, a row sum
# 86. Every node of a function costs memory when the function first runs
# (~10 KB each here: a batch-1 generation job's peak is set then), and these
# are in every function that tokenizes or detokenizes.

def row_ids(ragged: tf.RaggedTensor) -> tf.Tensor:
  """ragged.value_rowids(): the row of each value (int64)."""
  splits = ragged.row_splits
  return tf.searchsorted(splits[1:], tf.range(splits[-1]), side="right", out_type=tf.int64)


def row_sums(ragged: tf.RaggedTensor, flags: tf.Tensor) -> tf.Tensor:
  """How many of each row's values have `flags` (bool, one per value): int32."""
  before = tf.concat([[0], tf.cumsum(tf.cast(flags, tf.int32))], 0)
  splits = ragged.row_splits
  return tf.gather(before, splits[1:]) - tf.gather(before, splits[:-1])


def from_dense(dense: tf.Tensor, lengths: tf.Tensor) -> tf.RaggedTensor:
  """tf.RaggedTensor.from_tensor(dense, lengths=lengths): row i's first
  lengths[i] <= dense.shape[1] values."""
  keep = tf.range(tf.shape(dense)[1])[None, :] < lengths[:, None]
  return tf.RaggedTensor.from_row_splits(
      tf.gather_nd(dense, tf.where(keep)),
      tf.concat([[0], tf.cumsum(tf.cast(lengths, tf.int64))], 0), validate=False)


def keep_values(ragged: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
  """tf.ragged.boolean_mask(ragged, keep), `keep` a bool per value."""
  before = tf.concat([[0], tf.cumsum(tf.cast(keep, tf.int64))], 0)
  return tf.RaggedTensor.from_row_splits(
      tf.gather(ragged.flat_values, tf.reshape(tf.where(keep), [-1])),
      tf.gather(before, ragged.row_splits), validate=False)


def _firsts(ragged: tf.RaggedTensor) -> tf.Tensor:
  """Whether each value is its row's first (bool, one per value)."""
  return tf.equal(tf.range(ragged.row_splits[-1]), tf.gather(ragged.row_splits, row_ids(ragged)))


def join_rows(pieces: tf.RaggedTensor) -> tf.Tensor:
  """tf.strings.reduce_join(pieces, axis=1): each row's strings joined."""
  return tf.strings.unsorted_segment_join(pieces.flat_values, row_ids(pieces),
                                          pieces.nrows())
