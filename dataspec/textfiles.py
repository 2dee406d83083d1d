"""Reading corpus files as text: what counts as binary, text encodings,
UTF-8 with replacement, and line-aligned blocks. Shared by preprocessing and
evaluation, so both skip the same files and count the same replacements.

Files in another encoding than UTF-8 (--input_encoding) are re-encoded as
UTF-8 when read: every consumer downstream (tokenizers, byte counts, bits per
byte) sees UTF-8. Only ASCII-compatible encodings are accepted (latin-1,
cp1252, Shift_JIS, GB18030...): files are cut at line ends byte-wise.
"""

import codecs
import unicodedata
from typing import Optional, Tuple

SNIFF_BYTES = 8 * 1024  # the head of each file that is checked for binary content
DETECT_BYTES = 64 * 1024  # the head an "auto" encoding is detected from
AUTO = "auto"
UTF8 = "utf-8"
_REPLACEMENT = "\ufffd".encode("utf-8")
_ASCII_PROBE = "\n\r\t abcxyzABCXYZ0123456789.,;:!?'\"()-"
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")


def check_encoding(name: str, *, flag: str = "--input_encoding") -> str:
  """The canonical codec name of `name` ("auto" stays "auto").

  Raises:
    ValueError: unknown, or not ASCII-compatible (UTF-16/32 and the like).
  """
  if name == AUTO:
    return AUTO
  try:
    canonical = codecs.lookup(name).name
  except LookupError:
    raise ValueError(f"{flag}={name}: no such text encoding (any Python codec "
                     "name, e.g. utf-8, latin-1, cp1252; or auto)") from None
  try:
    compatible = (_ASCII_PROBE.encode(canonical) == _ASCII_PROBE.encode("ascii")
                  and _ASCII_PROBE.encode("ascii").decode(canonical) == _ASCII_PROBE)
  except (UnicodeError, LookupError, TypeError):
    compatible = False
  if not compatible:
    raise ValueError(f"{flag}={name}: not ASCII-compatible (files are cut at line "
                     "ends byte by byte); convert the corpus to UTF-8 first")
  return UTF8 if canonical == "utf-8" else canonical


def _decodes_as_utf8(head: bytes) -> bool:
  """`head` is UTF-8 (a character cut off at its end allowed)."""
  try:
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    return True
  except UnicodeDecodeError:
    return False


def detect_encoding(head: bytes) -> Optional[str]:
  """The encoding of a file starting with `head`: UTF-8 when it decodes as
  UTF-8 (ASCII included), else chardet's guess; None when it finds no text
  encoding (binary data).

  chardet 7 rather than charset-normalizer: on French text in cp1252 and
  latin-1, charset-normalizer's best guess was cp1257 (Baltic), which decodes
  the accents wrongly; chardet's (iso8859-15, windows-1252) decode them right.
  """
  if b"\x00" in head:
    return None
  if _decodes_as_utf8(head):
    return UTF8
  import chardet  # pylint: disable=g-import-not-at-top
  guess = chardet.detect(head)["encoding"]
  if guess is None:
    return None
  try:
    return check_encoding(guess)
  except ValueError:
    return None


def looks_binary(head: bytes, encoding: str = UTF8) -> bool:
  """True for data that must not become training text (images, archives...).

  A NUL byte, or more than 10% of the head not decoding in `encoding` (for
  encodings where every byte decodes, such as latin-1: control characters
  other than whitespace count as not decoding).
  """
  if b"\x00" in head:
    return True
  if encoding == UTF8:
    text = (head[:-4] if len(head) > 4 else head).decode("utf-8", errors="replace")
    return text.count("\ufffd") > 0.1 * max(1, len(text))
  text = head.decode(encoding, errors="replace")
  bad = sum(1 for ch in text if ch == "\ufffd" or (
      ch not in _TEXT_CONTROLS and unicodedata.category(ch) == "Cc"))
  return bad > 0.1 * max(1, len(text))


def head_bytes(encoding: str) -> int:
  """How much of a file's head `text_encoding` needs for `encoding`."""
  return DETECT_BYTES if encoding == AUTO else SNIFF_BYTES


def text_encoding(head: bytes, encoding: str) -> Optional[str]:
  """The encoding to read a file starting with `head` (its first
  head_bytes(encoding) bytes) in: `encoding`, or the detected one for
  "auto"; None when the file is binary and must be skipped."""
  if encoding == AUTO:
    encoding = detect_encoding(head)
  if encoding is None or looks_binary(head[:SNIFF_BYTES], encoding):
    return None
  return encoding


def describe_binary(encoding: str) -> str:
  """Why a file that text_encoding() refused was skipped, for the log."""
  return ("binary content (NUL bytes, or mostly not text in "
          f"{'any detected encoding' if encoding == AUTO else encoding})")


def to_utf8(data: bytes, encoding: str) -> Tuple[bytes, int]:
  """(`data` in `encoding` re-encoded as UTF-8, how many undecodable bytes
  became U+FFFD). UTF-8 data is returned as it is (tokenizers replace)."""
  if encoding == UTF8:
    return data, invalid_utf8(data)
  text = data.decode(encoding, errors="replace")
  try:
    already = data.count("\ufffd".encode(encoding))
  except UnicodeEncodeError:
    already = 0
  return text.encode("utf-8"), text.count("\ufffd") - already


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
