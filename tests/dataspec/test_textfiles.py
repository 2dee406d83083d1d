import numpy as np
import pytest

from dataspec import textfiles
from dataspec import tokenizer as T
from testutil import FRENCH


def test_looks_binary():
  png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256))
  assert textfiles.looks_binary(png)
  assert textfiles.looks_binary(bytes(range(128, 256)) * 10)
  assert not textfiles.looks_binary("plain text, ünïcode ☃\n".encode() * 50)


def test_invalid_utf8_counts_replacements_not_literal_ones():
  assert textfiles.invalid_utf8("ok \ufffd".encode()) == 0
  assert textfiles.invalid_utf8(b"caf\xe9 \xff\xfe" + "\ufffd".encode()) == 3


def test_blocks_tokenize_to_the_whole_texts_tokens():
  text = ("Σίσυφος ΚΑΙ ΟΔΥΣΣΕΑΣ\r\nthe cat's 1,000.5 cafés\n" * 30 + "ε\u0301nd ΑΣ").encode()
  for spec in (T.TokenizerSpec(type="word", lowercase=True, numbers="replace"),
               T.TokenizerSpec(type="char", lowercase=True, normalization="nfkc")):
    vocab = None
    tok = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS))
    vocab = list(T.RESERVED_TOKENS) + sorted(tok.count(text.decode()))
    tok = T.Tokenizer(spec, vocab=vocab)
    for size in (7, 50, 300):
      ids, rest = [], b""
      for start in range(0, len(text), size):
        block, rest = textfiles.cut_block(rest + text[start:start + size])
        ids += tok.encode_bytes(block).tolist()
      ids += tok.encode_bytes(rest).tolist()
      assert ids == tok.encode_bytes(text).tolist(), (spec, size)
  assert textfiles.cut_block(b"ab\ncd") == (b"ab\n", b"cd")
  assert textfiles.cut_block(b"ab cd") == (b"ab ", b"cd")
  assert textfiles.cut_block("abc\u00e9".encode()) == (b"", "abc\u00e9".encode())
  assert textfiles.cut_block("abc\u00e9".encode(), force=True) == (b"abc", "\u00e9".encode())


def test_check_encoding():
  assert textfiles.check_encoding("UTF8") == "utf-8"
  assert textfiles.check_encoding("latin1") == "iso8859-1"
  assert textfiles.check_encoding("auto") == "auto"
  for bad, why in (("utf-16", "not ASCII-compatible"), ("utf-32-le", "not ASCII-compatible"),
                   ("no-such-codec", "no such text encoding")):
    with pytest.raises(ValueError, match=f"--input_encoding={bad}: {why}"):
      textfiles.check_encoding(bad)


def test_detect_encoding_and_binary_in_other_encodings():
  assert textfiles.detect_encoding("plain ascii\n".encode() * 10) == "utf-8"
  assert textfiles.detect_encoding(FRENCH.encode()) == "utf-8"
  for codec in ("cp1252", "latin-1"):
    data = FRENCH.replace("œ", "oe").encode(codec)
    detected = textfiles.detect_encoding(data)
    assert detected and data.decode(detected) == FRENCH.replace("œ", "oe"), (codec, detected)
    assert not textfiles.looks_binary(data, detected)
  png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256))
  assert textfiles.detect_encoding(png) is None
  noise = np.random.default_rng(0).integers(1, 256, 8192, dtype=np.uint8).tobytes()
  assert textfiles.looks_binary(noise, "iso8859-1")  # every byte decodes: controls count


def test_to_utf8_counts_undecodable_bytes():
  data = "café \ufffd".encode("utf-8")
  assert textfiles.to_utf8(data, "utf-8") == (data, 0)
  text, invalid = textfiles.to_utf8("café déjà".encode("cp1252") + b"\x81\x8d", "cp1252")
  assert text == "café déjà\ufffd\ufffd".encode() and invalid == 2
