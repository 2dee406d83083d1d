"""The `word` tokenizer's regexes, computed with numpy over whole chunks.

The word tokenizer is *defined* by the regular expressions in tokenizer.py
(`\\w+|[^\\w\\s]` and friends). `re.findall` over a 1 MB chunk builds ~220,000
Python strings and was 70% of the preprocessing time; this module finds the
same tokens as (start, end) spans of a code point array, gives every span a
64-bit key, and counts or looks up tokens by key, making a Python string only
once per distinct token.

Spans equal `re.finditer(pattern, text)` exactly: the character classes are
taken from `re` itself (a table over all code points built by running the
regexes), and keys are verified by comparing code points, so a key collision
never merges two tokens (the caller falls back to the regexes instead).

Example:
  >>> splitter = WordSplitter(punctuation="split", line_eos=True)
  >>> text = "Hi, hi!\\n"
  >>> spans = splitter.spans(code_points(text))
  >>> [text[s:e] for s, e in zip(spans.starts, spans.ends)]
  ['Hi', ',', 'hi', '!', '\\n']
"""

import functools
import re
from typing import NamedTuple, Optional

import numpy as np

_NUM_CODE_POINTS = 0x110000
_BMP = 0x10000  # tables this big cover most text and build in 1/17 the time
# Character classes; `\w` and `\s` are disjoint, everything else is punctuation.
_SPACE, _WORD, _PUNCT, _NEWLINE = 0, 1, 2, 3
_NEWLINE_CP = ord("\n")
# Odd 64-bit multipliers that mix a token's packed code points into its key.
_MIX = tuple(np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F,
                                    0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                                    0xFF51AFD7ED558CCD))


def _class_tables(cps: np.ndarray):
  """(classes, digits, number chars) covering every code point in `cps`."""
  if len(cps) and int(cps.max()) >= _BMP:
    return _build_class_tables(_NUM_CODE_POINTS)
  return _build_class_tables(_BMP)


@functools.lru_cache(maxsize=None)
def _build_class_tables(size: int):
  """Class tables of code points below `size`, built by running `re` itself."""
  everything = "".join(map(chr, range(size)))
  classes = np.full(size, _PUNCT, dtype=np.uint8)
  for pattern, cls in ((r"\s+", _SPACE), (r"\w+", _WORD)):
    for m in re.finditer(pattern, everything):
      classes[m.start():m.end()] = cls
  classes[_NEWLINE_CP] = _NEWLINE
  digits = np.zeros(size, dtype=bool)
  for m in re.finditer(r"\d+", everything):
    digits[m.start():m.end()] = True
  # `[\d,.]` of the number pattern, for "keep" tokens such as "1,000.5".
  number_chars = digits.copy()
  number_chars[[ord(","), ord(".")]] = True
  return classes, digits, number_chars


def code_points(text: str) -> Optional[np.ndarray]:
  """`text` as a uint32 array, or None when it holds lone surrogates."""
  try:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
  except UnicodeEncodeError:
    return None


class Spans(NamedTuple):
  """Tokens of a code point array: text[starts[i]:ends[i]] is token i."""
  starts: np.ndarray  # (num_tokens,) int64
  ends: np.ndarray  # (num_tokens,) int64


class WordSplitter:
  """Finds word tokens the way tokenizer._WORD_REGEXES do.

  Args:
    punctuation: "keep" (`[^\\s]+`), "split" (`\\w+|[^\\w\\s]`) or "strip"
      (`\\w+`).
    line_eos: every "\\n" is a token of its own (`\\n|...`).
  """

  def __init__(self, *, punctuation: str, line_eos: bool):
    self._punctuation = punctuation
    self._line_eos = line_eos

  def spans(self, cps: np.ndarray) -> Spans:
    """Token spans of code points `cps`, in text order."""
    classes = _class_tables(cps)[0][cps]  # (n,)
    if self._punctuation == "keep":
      run = (classes == _WORD) | (classes == _PUNCT)
    else:
      run = classes == _WORD
    single = classes == _PUNCT if self._punctuation == "split" else None
    if self._line_eos:
      newline = classes == _NEWLINE
      single = newline if single is None else single | newline
    # A run starts where the previous char is not in it and ends where the
    # next one is not; single-char tokens start and end at themselves.
    padded = np.concatenate(([False], run, [False]))  # (n + 2,)
    starts_mask = padded[1:-1] & ~padded[:-2]
    ends_mask = padded[1:-1] & ~padded[2:]
    if single is not None:
      starts_mask |= single
      ends_mask |= single
    return Spans(np.flatnonzero(starts_mask), np.flatnonzero(ends_mask) + 1)

  @staticmethod
  def numbers(cps: np.ndarray, spans: Spans) -> np.ndarray:
    """Which tokens match `\\d[\\d,.]*\\Z` (tokenizer._NUMBER); (num_tokens,) bool."""
    _, digits, number_chars = _class_tables(cps)
    bad = np.concatenate(([0], np.cumsum(~number_chars[cps], dtype=np.int64)))
    all_allowed = bad[spans.ends] == bad[spans.starts]
    return all_allowed & digits[cps[spans.starts]]


def itemsize_for(cps: np.ndarray) -> int:
  """Bytes per code point that hold every one of `cps`: 1, 2 or 4."""
  top = int(cps.max()) if len(cps) else 0
  return 1 if top < 0x100 else 2 if top < 0x10000 else 4


class Packed(NamedTuple):
  """Tokens packed into uint64s by pack(); all fields (num_tokens,)."""
  lengths: np.ndarray  # int64
  prefixes: np.ndarray  # uint64: the first 8 // itemsize code points
  middles: np.ndarray  # uint64: 8 // itemsize code points from the middle
  lasts: np.ndarray  # uint64: the last 8 // itemsize code points
  keys: np.ndarray  # uint64 hash of the token

  def take(self, index: np.ndarray) -> "Packed":
    """The packs of tokens `index` (without keys, which comparing skips)."""
    return Packed(self.lengths[index], self.prefixes[index], self.middles[index],
                  self.lasts[index], keys=None)


def pack(cps: np.ndarray, spans: Spans, itemsize: int) -> Packed:
  """Packs tokens into uint64 reads and keys them.

  Code points are narrowed to `itemsize` bytes (they must fit) and read as
  little-endian uint64s of 8 // itemsize code points (the width): a token's
  prefix (masked to its length) and, if it is longer than the width, the
  reads at its middle and end. Those three cover every code point of tokens
  up to 3 * width long, so such tokens are equal iff length and reads are.
  The key mixes the reads, the length and, for longer tokens, a polynomial
  hash of all their code points: equal tokens get equal keys, different ones
  almost always different keys (same_tokens() tells for sure). Reads and keys
  agree only between packs of the same itemsize.
  """
  width = 8 // itemsize
  narrow = np.zeros(len(cps) + width, dtype=f"<u{itemsize}")
  narrow[:len(cps)] = cps
  # A uint64 starting at every code point (overlapping, unaligned reads).
  words = np.ndarray(shape=(len(cps),), dtype="<u8", buffer=narrow.data,
                     strides=(itemsize,))
  masks = np.array([(1 << (8 * itemsize * k)) - 1 for k in range(width)] +
                   [(1 << 64) - 1], dtype=np.uint64)
  lengths = spans.ends - spans.starts
  prefixes = words[spans.starts] & masks[np.minimum(lengths, width)]
  middles = np.zeros_like(prefixes)
  lasts = np.zeros_like(prefixes)
  over = np.flatnonzero(lengths > width)  # few: most words fit in one read
  beyond = lengths[over] - width
  middles[over] = words[spans.starts[over] + beyond // 2]
  lasts[over] = words[spans.starts[over] + beyond]
  keys = (prefixes * _MIX[0] + middles * _MIX[1] + lasts * _MIX[2] +
          lengths.astype(np.uint64) * _MIX[3])
  long = over[beyond > 2 * width]
  if len(long):
    keys[long] += _polynomial_hash(cps, spans.starts[long], lengths[long])
  keys ^= keys >> np.uint64(32)  # so that the top bits (slots) see every bit
  keys *= _MIX[4]
  keys ^= keys >> np.uint64(29)
  return Packed(lengths, prefixes, middles, lasts, keys)


_powers_cache = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
  """_MIX[0] ** k mod 2^64 for k < n (uint64 arithmetic wraps)."""
  global _powers_cache
  if len(_powers_cache) < n:
    factors = np.full(max(n, 2 * len(_powers_cache)), _MIX[0], dtype=np.uint64)
    factors[0] = 1
    _powers_cache = np.cumprod(factors, dtype=np.uint64)
  return _powers_cache[:n]


def _flat_chars(lengths: np.ndarray):
  """(first, offsets) of tokens' chars laid end to end: token i's chars are
  flat positions first[i]..first[i] + lengths[i], offsets[j] is char j's
  place in its token. Token i's char k sits at starts[i] + k in its text."""
  first = np.zeros(len(lengths), dtype=np.int64)
  np.cumsum(lengths[:-1], out=first[1:])
  offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(first, lengths)
  return first, offsets


def _polynomial_hash(cps: np.ndarray, starts: np.ndarray,
                     lengths: np.ndarray) -> np.ndarray:
  """sum_k cps[start + k] * B^k mod 2^64 per token; (num_tokens,) uint64."""
  first, offsets = _flat_chars(lengths)
  terms = (cps[np.repeat(starts, lengths) + offsets].astype(np.uint64) *
           _powers(int(lengths.max()))[offsets])
  return np.add.reduceat(terms, first)


def slots(keys: np.ndarray, bits: int) -> np.ndarray:
  """Slot of each key in a table of 2**bits slots (the key's top bits)."""
  return (keys >> np.uint64(64 - bits)).astype(np.int64)


def group(keys: np.ndarray):
  """Groups equal keys without sorting them all.

  Every token writes its index into the slot of its key; a token whose slot
  then holds a token with the same key joins that token's group. Only tokens
  whose slot went to another key (a few percent) are sorted.

  Returns:
    (firsts, counts, same_as): one token of each key, the tokens per key,
    and for every token the index of the chosen token of its key.
  """
  n = len(keys)
  bits = max(12, n.bit_length())  # at least as many slots as tokens
  owner = np.empty(1 << bits, dtype=np.int64)  # only written slots are read
  slot = slots(keys, bits)
  owner[slot] = np.arange(n)
  same_as = owner[slot]
  rest = np.flatnonzero(keys[same_as] != keys)
  counts = np.bincount(np.delete(same_as, rest), minlength=n)
  if len(rest):  # slot taken by another key: sort these
    order = rest[np.argsort(keys[rest], kind="stable")]
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    sizes = np.diff(np.append(starts, len(order)))
    same_as[order] = np.repeat(order[starts], sizes)
    counts[order[starts]] += sizes
  firsts = np.flatnonzero(counts)
  return firsts, counts[firsts], same_as


class KeyTable:
  """Finds keys among a fixed set (a vocabulary's): a slot table, plus a
  sorted overflow for the keys whose slot went to another key."""

  def __init__(self, keys: np.ndarray):
    self.keys = keys
    self._bits = max(12, (4 * len(keys)).bit_length())
    self._owner = np.full(1 << self._bits, -1, dtype=np.int64)
    slot = slots(keys, self._bits)
    self._owner[slot] = np.arange(len(keys))
    overflow = np.flatnonzero(self._owner[slot] != np.arange(len(keys)))
    self._overflow = overflow[np.argsort(keys[overflow], kind="stable")]
    self._overflow_keys = keys[self._overflow]

  def find(self, keys: np.ndarray) -> np.ndarray:
    """Index into the table's keys of each of `keys`, -1 where absent."""
    found = self._owner[slots(keys, self._bits)]
    found[self.keys[np.maximum(found, 0)] != keys] = -1
    if len(self._overflow):
      missing = np.flatnonzero(found < 0)
      at = np.minimum(np.searchsorted(self._overflow_keys, keys[missing]),
                      len(self._overflow) - 1)
      hit = self._overflow_keys[at] == keys[missing]
      found[missing[hit]] = self._overflow[at[hit]]
    return found


def same_tokens(cps_a: np.ndarray, starts_a: np.ndarray, packed_a: Packed,
                cps_b: np.ndarray, starts_b: np.ndarray, packed_b: Packed, *,
                itemsize: int) -> np.ndarray:
  """Token i of a equals token i of b? Exact; (num_tokens,) bool.

  Tokens start at starts_* in cps_* and were packed with `itemsize`.
  """
  same = ((packed_a.lengths == packed_b.lengths) &
          (packed_a.prefixes == packed_b.prefixes) &
          (packed_a.middles == packed_b.middles) & (packed_a.lasts == packed_b.lasts))
  long = np.flatnonzero(same & (packed_a.lengths > 3 * (8 // itemsize)))
  if len(long):  # compare all their chars, flattened
    lengths = packed_a.lengths[long]
    first, offsets = _flat_chars(lengths)
    equal = (cps_a[np.repeat(starts_a[long], lengths) + offsets] ==
             cps_b[np.repeat(starts_b[long], lengths) + offsets])
    same[long] = np.logical_and.reduceat(equal, first)
  return same
