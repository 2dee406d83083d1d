"""Reading corpus files as text: what counts as binary, UTF-8 with
replacement, and line-aligned blocks. Shared by preprocessing and evaluation,
so both skip the same files and count the same replacements.
"""

from typing import Tuple

SNIFF_BYTES = 8 * 1024  # the head of each file that is checked for binary content
_REPLACEMENT = "\ufffd".encode("utf-8")


def looks_binary(head: bytes) -> bool:
  """True for data that must not become training text (images, archives...).

  A NUL byte, or more than 10% of the head not decoding as UTF-8.
  """
  if b"\x00" in head:
    return True
  text = (head[:-4] if len(head) > 4 else head).decode("utf-8", errors="replace")
  return text.count("\ufffd") > 0.1 * max(1, len(text))


def invalid_utf8(data: bytes) -> int:
  """How many U+FFFD decoding `data` as UTF-8 with replacement adds (bytes
  that are not UTF-8; a U+FFFD already in the text is not counted)."""
  return (data.decode("utf-8", errors="replace").count("\ufffd")
          - data.count(_REPLACEMENT))


def cut_block(data: bytes, *, force: bool = False) -> Tuple[bytes, bytes]:
  """Splits `data` into (a block that ends where text may be cut, the rest).

  The block ends after the last line end, or without one after the last
  space or tab. No tokenizer joins text across a line end or a space (word
  tokens, Unicode normalization, the final-sigma rule of lowercasing all stop
  there), so the blocks of a text tokenize to the text's tokens. Data with
  neither gives (b"", data) (read more), unless `force`: then the block ends
  before the last (maybe incomplete) UTF-8 character.

  Example: cut_block(b"ab\\ncd") == (b"ab\\n", b"cd").
  """
  for sep in (b"\n", b" ", b"\t"):
    at = data.rfind(sep)
    if at >= 0:
      return data[:at + 1], data[at + 1:]
  if not force:
    return b"", data
  i = len(data) - 1
  while i > 0 and (data[i] & 0xC0) == 0x80:  # continuation bytes
    i -= 1
  return data[:i], data[i:]
