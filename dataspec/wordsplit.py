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
# Odd multiplier of the polynomial key (invertible mod 2^64) and a length mix.
_BASE = 0x9E3779B97F4A7C15
_LENGTH_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


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


_INVERSE_BASE = pow(_BASE, -1, 1 << 64)
_POWERS_CACHED = 1 << 22
_powers_cache = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(n: int):
  """(_BASE ** k, _BASE ** -k) mod 2^64 for k < n; uint64 arithmetic wraps."""
  global _powers_cache
  if len(_powers_cache[0]) >= n:
    return _powers_cache[0][:n], _powers_cache[1][:n]
  size = max(n, min(2 * len(_powers_cache[0]), _POWERS_CACHED))
  powers = []
  for base in (_BASE, _INVERSE_BASE):
    factors = np.full(size, base, dtype=np.uint64)
    factors[0] = 1
    powers.append(np.cumprod(factors, dtype=np.uint64))
  if size <= _POWERS_CACHED:
    _powers_cache = tuple(powers)
  return powers[0][:n], powers[1][:n]


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


def token_keys(cps: np.ndarray, spans: Spans) -> np.ndarray:
  """64-bit keys of the tokens: a polynomial hash of code points and length.

  Equal tokens get equal keys; different tokens almost always different
  ones (same_tokens tells for sure).

  Returns:
    (num_tokens,) uint64.
  """
  powers, inverse_powers = _powers(len(cps) + 1)
  prefix = np.zeros(len(cps) + 1, dtype=np.uint64)  # sum of cps[j] * B^j, j < i
  np.cumsum(cps * powers[:-1], out=prefix[1:])
  keys = (prefix[spans.ends] - prefix[spans.starts]) * inverse_powers[spans.starts]
  return keys ^ ((spans.ends - spans.starts).astype(np.uint64) * _LENGTH_MIX)


def itemsize_for(cps: np.ndarray) -> int:
  """Bytes per code point that hold every one of `cps`: 1, 2 or 4."""
  top = int(cps.max()) if len(cps) else 0
  return 1 if top < 0x100 else 2 if top < 0x10000 else 4


def prefixes(cps: np.ndarray, spans: Spans, itemsize: int) -> np.ndarray:
  """The first 8 // itemsize code points of each token in one uint64.

  Code points are narrowed to `itemsize` bytes (they must fit) and read as
  little-endian uint64s at every token start, masked to the token's length,
  so tokens no longer than 8 // itemsize are equal iff lengths and prefixes
  are.

  Returns:
    (num_tokens,) uint64.
  """
  width = 8 // itemsize
  narrow = np.zeros(len(cps) + width, dtype=f"<u{itemsize}")
  narrow[:len(cps)] = cps
  # A uint64 starting at every code point (overlapping, unaligned reads).
  words = np.ndarray(shape=(len(cps),), dtype="<u8", buffer=narrow.data,
                     strides=(itemsize,))
  masks = np.array([(1 << (8 * itemsize * k)) - 1 for k in range(width)] +
                   [(1 << 64) - 1], dtype=np.uint64)
  lengths = np.minimum(spans.ends - spans.starts, width)
  return words[spans.starts] & masks[lengths]


def same_tokens(cps_a: np.ndarray, spans_a: Spans, prefixes_a: np.ndarray,
                cps_b: np.ndarray, spans_b: Spans, prefixes_b: np.ndarray, *,
                itemsize: int) -> np.ndarray:
  """Token i of a equals token i of b? Exact; (num_tokens,) bool.

  `prefixes_*` are prefixes() of the spans with `itemsize` (passed in so
  callers reuse them).
  """
  width = 8 // itemsize
  lengths = spans_a.ends - spans_a.starts
  same = (lengths == spans_b.ends - spans_b.starts) & (prefixes_a == prefixes_b)
  long = np.flatnonzero(same & (lengths > width))
  if len(long):  # compare the chars after the prefix, flattened
    tail = lengths[long] - width
    first = np.zeros(len(long), dtype=np.int64)
    np.cumsum(tail[:-1], out=first[1:])
    offsets = np.arange(int(tail.sum()), dtype=np.int64) - np.repeat(first, tail) + width
    equal = (cps_a[np.repeat(spans_a.starts[long], tail) + offsets] ==
             cps_b[np.repeat(spans_b.starts[long], tail) + offsets])
    same[long] = np.logical_and.reduceat(equal, first)
  return same
