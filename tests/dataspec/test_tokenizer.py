import numpy as np
import pytest

from dataspec import tokenizer as T
from dataspec import vocab as V


def _char(text, **kw):
  spec = T.TokenizerSpec(type="char", **kw)
  counts = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS)).count(text)
  return T.Tokenizer(spec, vocab=V.select_vocab(counts, max_vocab_size=0, min_count=1))


def test_reserved_ids_are_fixed():
  assert (T.PAD_ID, T.UNK_ID, T.EOS_ID) == (0, 1, 2)
  assert T.RESERVED_TOKENS == ("<pad>", "<unk>", "<eos>")


def test_char_round_trip_and_unknown():
  tok = _char("hello world\nsecond line\n")
  text = "hello\nworld"
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert tok.decode(ids) == text
  assert T.UNK_ID not in ids
  ids = tok.encode("héllo Z")
  assert list(ids).count(T.UNK_ID) == 2  # é and Z are not in the vocab
  assert ids.min() >= T.NUM_RESERVED or T.UNK_ID in ids


def test_char_normalization_and_crlf():
  tok = _char("cafe\u0301\r\n", normalization="nfc")
  # NFC composes e + combining acute into one code point.
  assert tok.decode(tok.encode("cafe\u0301\r\n")) == "caf\u00e9\n"


def test_word_tutorial_style_lowercase_strip():
  spec = T.TokenizerSpec(type="word", lowercase=True, punctuation="strip")
  tok = T.Tokenizer(spec, vocab=["<pad>", "<unk>", "<eos>", "the", "cat"])
  assert tok.encode("The cat, the DOG\n").tolist() == [3, 4, 3, 1, 2]


def test_word_modes_keep_as_is_and_split():
  keep = T.Tokenizer(T.TokenizerSpec(type="word", punctuation="keep"),
                     vocab=list(T.RESERVED_TOKENS))
  assert keep.split_words("Hi, there.\nBye") == ["Hi,", "there.", "\n", "Bye"]
  split = T.Tokenizer(T.TokenizerSpec(type="word", punctuation="split"),
                      vocab=list(T.RESERVED_TOKENS))
  assert split.split_words("Hi, there.") == ["Hi", ",", "there", "."]
  nums = T.Tokenizer(T.TokenizerSpec(type="word", punctuation="keep",
                                     numbers="replace", line_eos=False),
                     vocab=list(T.RESERVED_TOKENS))
  assert nums.split_words("pay 1,000 now\n") == ["pay", "N", "now"]


def test_word_literal_reserved_tokens_and_decode():
  spec = T.TokenizerSpec(type="word", punctuation="keep")
  tok = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS) + ["a", "b"])
  ids = tok.encode("a <unk> b <pad>\nb\n").tolist()
  assert ids == [3, T.UNK_ID, 4, T.UNK_ID, T.EOS_ID, 4, T.EOS_ID]
  assert tok.decode(ids) == "a <unk> b <unk>\nb\n"


def test_byte_has_no_unknowns_and_round_trips():
  tok = T.Tokenizer(T.TokenizerSpec(type="byte"))
  assert tok.vocab_size == 259
  text = "naïve ☃ \x00 text"
  ids = tok.encode(text)
  assert ids.min() >= T.NUM_RESERVED and ids.max() < 259
  assert tok.decode(ids) == text
  assert tok.encode_bytes(b"\xff\xfe").tolist() == [258, 257]


def test_bad_options_name_the_flag():
  with pytest.raises(ValueError, match="--tokenizer"):
    T.TokenizerSpec(type="wordpiece")
  with pytest.raises(ValueError, match="--punctuation"):
    T.TokenizerSpec(type="word", punctuation="drop")
  with pytest.raises(ValueError, match="needs a vocabulary"):
    T.Tokenizer(T.TokenizerSpec(type="char"))
  with pytest.raises(ValueError, match="must start with"):
    T.Tokenizer(T.TokenizerSpec(type="char"), vocab=["a", "b", "c"])
