from dataspec import textfiles
from dataspec import tokenizer as T


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
