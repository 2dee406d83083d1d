"""The vectorized word splitter gives exactly the tokens of the regexes."""

import collections
import itertools
import random
import re

import numpy as np
import pytest

from dataspec import tokenizer as T
from dataspec import vocab as V
from dataspec import wordsplit as W

# ASCII only (1 byte per code point), up to U+FFFF (2) and beyond (4); with
# digits, numbers like "1,000.5", combining marks, no-break and line
# separators, "_", NUL, literal reserved tokens and words around 8 chars long.
_ASCII = list("abcXYZ019_ ,.;!?'\"-\n\t\r\x00") + ["abcdefgh", "abcdefghi", "N", "<unk>",
                                                  "<pad>", "1,000.5", "aaaaaaaaaaaaaaaaaaaa"]
_BMP = _ASCII + ["é", "ß", "Σ", "中", "\u0301", "٣", "²", "\u00a0", "\u2028", "Ünïcödé"]
_ALL = _BMP + ["😀", "𝔘𝔫𝔦", "\U0001d7d8"]  # the last is a (mathematical) decimal digit


def _texts(seed, count):
  rng = random.Random(seed)
  for i in range(count):
    alphabet = (_ASCII, _BMP, _ALL)[i % 3]
    yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2500)))


def _regex_ids(tok, text):
  words = tok.split_words(text)
  ids = [T.EOS_ID if w == "\n" else tok.id_of(w) for w in words]
  return np.array([T.UNK_ID if i is None or i == T.PAD_ID else i for i in ids],
                  dtype=np.int32)


@pytest.mark.parametrize("punctuation,line_eos,numbers", list(itertools.product(
    T.PUNCTUATION_MODES, (False, True), T.NUMBER_MODES)))
def test_counts_and_ids_equal_the_regex_tokenizer(punctuation, line_eos, numbers):
  spec = T.TokenizerSpec(type="word", punctuation=punctuation, line_eos=line_eos,
                         numbers=numbers, normalization="none")
  counter = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS))
  for text in _texts(seed=f"{punctuation}{line_eos}{numbers}", count=24):
    expected = collections.Counter(counter.split_words(text))
    expected.pop("\n", None)
    got = counter._count_words_vectorized(text)  # pylint: disable=protected-access
    assert got == expected, (expected - got, got - expected)
    # Half the tokens in the vocabulary, so that both hits and <unk> occur.
    vocab = V.select_vocab(expected, max_vocab_size=4 + len(expected) // 2, min_count=1)
    tok = T.Tokenizer(spec, vocab=vocab)
    ids = tok._encode_words_vectorized(text)  # pylint: disable=protected-access
    np.testing.assert_array_equal(ids, _regex_ids(tok, text))


def test_character_classes_are_the_regex_classes():
  classes, digits, _ = W._build_class_tables(0x110000)  # pylint: disable=protected-access
  sample = list(range(0, 0x3000)) + list(range(0x1D400, 0x1D800)) + [0x10FFFF, 0xD800]
  for cp in sample:
    ch = chr(cp)
    assert (classes[cp] == W._WORD) == bool(re.match(r"\w", ch)), hex(cp)  # pylint: disable=protected-access
    assert (classes[cp] in (W._SPACE, W._NEWLINE)) == bool(re.match(r"\s", ch)), hex(cp)  # pylint: disable=protected-access
    assert digits[cp] == bool(re.match(r"\d", ch)), hex(cp)


def test_long_texts_use_the_vectorized_path_and_short_ones_the_regex(monkeypatch):
  spec = T.TokenizerSpec(type="word")
  text = "the cat sat on the mat.\n" * 400  # 9,600 chars
  tok = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS) + ["the", "cat", "."])
  calls = []
  real = T.Tokenizer._encode_words_vectorized  # pylint: disable=protected-access
  monkeypatch.setattr(T.Tokenizer, "_encode_words_vectorized",
                      lambda self, t: calls.append(len(t)) or real(self, t))
  assert tok.encode(text).tolist() == [3, 4, 1, 1, 3, 1, 5, 2] * 400
  assert tok.encode("the cat\n").tolist() == [3, 4, 2]
  assert calls == [len(text)]


def test_shared_keys_fall_back_to_exact_strings(monkeypatch):
  """If every token got the same key, counts and ids would still be exact."""
  spec = T.TokenizerSpec(type="word", line_eos=False)
  text = "b a c a b a 中 d\n" * 600
  real_pack = W.pack
  monkeypatch.setattr(W, "pack", lambda *args: real_pack(*args)._replace(
      keys=np.zeros(len(args[1].starts), dtype=np.uint64)))
  counter = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS))
  assert counter._count_words_vectorized(text) is None  # pylint: disable=protected-access
  assert counter.count(text) == {"a": 1800, "b": 1200, "c": 600, "中": 600, "d": 600}
  tok = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS) + ["a", "b", "中"])
  assert tok.encode(text).tolist() == [4, 3, 1, 3, 4, 3, 5, 1] * 600


def test_lone_surrogates_use_the_regex():
  spec = T.TokenizerSpec(type="word", normalization="none")
  text = ("ab \ud800 cd\n" * 1000)
  tok = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS) + ["ab", "cd"])
  assert tok.encode(text).tolist() == [3, 1, 4, 2] * 1000
  assert tok.count(text) == {"ab": 1000, "\ud800": 1000, "cd": 1000}


def test_group_and_key_table_with_crowded_slots():
  """Keys that share table slots (same top bits) are still grouped and found."""
  rng = np.random.default_rng(0)
  distinct = np.unique(rng.integers(0, 2**63, 3000, dtype=np.uint64) |
                       np.uint64(1))
  distinct[:500] = (distinct[:500] & np.uint64(0xFFFF)) | np.uint64(7 << 52)  # one top
  distinct = np.unique(distinct)
  keys = distinct[rng.integers(0, len(distinct), 20000)]
  firsts, counts, same_as = W.group(keys)
  assert sorted(keys[firsts].tolist()) == sorted(set(keys.tolist()))
  assert counts.sum() == len(keys)
  np.testing.assert_array_equal(keys[same_as], keys)
  expected = collections.Counter(keys.tolist())
  assert {int(keys[f]): int(c) for f, c in zip(firsts, counts)} == expected
  table = W.KeyTable(distinct)
  probe = np.concatenate([distinct, distinct + np.uint64(2)])  # odd + 2: absent
  found = table.find(probe)
  np.testing.assert_array_equal(found[:len(distinct)], np.arange(len(distinct)))
  absent = ~np.isin(probe[len(distinct):], distinct)
  assert (found[len(distinct):][absent] == -1).all()
