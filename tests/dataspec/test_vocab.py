import collections

import pytest

from dataspec import tokenizer as T
from dataspec import vocab as V
from testutil import shakespeare_text


def test_select_vocab_order_limits():
  counts = {"b": 2, "a": 2, "c": 5, "d": 1, "<unk>": 9}
  assert V.select_vocab(counts, max_vocab_size=0, min_count=1) == [
      "<pad>", "<unk>", "<eos>", "c", "a", "b", "d"]
  assert V.select_vocab(counts, max_vocab_size=5, min_count=2) == [
      "<pad>", "<unk>", "<eos>", "c", "a"]


def test_vocab_file_round_trip_with_special_tokens(tmp_path):
  tokens = list(T.RESERVED_TOKENS) + ["\n", "\t", "\\", '"', " ", "é", "\u2028"]
  path = str(tmp_path / "vocab.txt")
  V.write_vocab(path, tokens)
  text = open(path, encoding="utf-8").read()
  assert len(text.split("\n")) == len(tokens) + 1  # one token per line
  assert V.read_vocab(path) == tokens
  # Plain tokens are written as they are; the rest as JSON string bodies.
  assert text.split("\n")[3:-1] == ["\\n", "\\t", "\\\\", '\\"', " ", "é", "\u2028"]
  for bad in ('a"b', "a\tb", "a\\"):
    with pytest.raises(ValueError, match=r"vocab.txt: line 4 is not an escaped token"):
      V.parse_vocab("<pad>\n<unk>\n<eos>\n" + bad + "\n", source="vocab.txt")


def test_vocab_is_deterministic_across_count_orders(tmp_path):
  text = shakespeare_text(30_000)
  spec = T.TokenizerSpec(type="word")
  counter = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS))
  whole = counter.count(text)
  # Counts summed in another order (as workers would) give the same file.
  parts = collections.Counter()
  for piece in reversed(text.split("\n\n")):
    parts.update(counter.count(piece + "\n\n"))
  a = V.select_vocab(whole, max_vocab_size=500, min_count=2)
  b = V.select_vocab(parts, max_vocab_size=500, min_count=2)
  assert a == b and V.fingerprint(a) == V.fingerprint(b)
  assert len(a) == 500
