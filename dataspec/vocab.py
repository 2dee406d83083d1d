"""vocab.txt: one token per line, id = line number (0-based).

Tokens are written JSON-string escaped without the quotes, so a token that is
itself a newline, a tab or a backslash fits on one line: "\\n" is written as the
two characters `\\n`, a backslash as `\\\\`, a double quote as `\\"`. Lines 0..2
are the reserved tokens `<pad>`, `<unk>`, `<eos>`.

The order is deterministic: reserved tokens, then by count descending, then by
token (code point order), so two runs over the same corpus give identical files.

bpe and unigram tokenizers have tokenizer.model (a SentencePiece model, see
dataspec/subword.py) instead; `write_for` / `read_for` handle either file and
`fingerprint_for` hashes either, for metadata.json's vocab_fingerprint.
"""

import hashlib
import json
import re
from typing import List, Mapping, Sequence

from dataspec import storage
from dataspec import subword
from dataspec import tokenizer


# What json.dumps(ensure_ascii=False) escapes; other tokens are written as-is.
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def escape_token(token: str) -> str:
  """The token as a JSON string body (so "\\n" is a token too)."""
  if not _NEEDS_ESCAPE.search(token):
    return token
  return json.dumps(token, ensure_ascii=False)[1:-1]


def unescape_token(line: str) -> str:
  if not _NEEDS_ESCAPE.search(line):
    return line
  return json.loads('"' + line + '"')


def select_vocab(counts: Mapping[str, int], *, max_vocab_size: int,
                 min_count: int) -> List[str]:
  """Chooses the vocabulary from token counts.

  Args:
    counts: token -> number of occurrences in the training split.
    max_vocab_size: the most ids, reserved ones included (0 = no limit).
    min_count: tokens seen fewer times are left out (they become <unk>).

  Returns:
    Tokens by id, reserved tokens first.

  Example:
    >>> select_vocab({"b": 2, "a": 2, "c": 5, "d": 1}, max_vocab_size=5,
    ...              min_count=2)
    ['<pad>', '<unk>', '<eos>', 'c', 'a']
  """
  if max_vocab_size and max_vocab_size <= tokenizer.NUM_RESERVED:
    raise ValueError(f"--max_vocab_size must be 0 or more than "
                     f"{tokenizer.NUM_RESERVED}, got {max_vocab_size}")
  kept = [(t, c) for t, c in counts.items()
          if c >= min_count and t not in tokenizer.RESERVED_TOKENS]
  kept.sort(key=lambda tc: (-tc[1], tc[0]))
  if max_vocab_size:
    kept = kept[:max_vocab_size - tokenizer.NUM_RESERVED]
  return list(tokenizer.RESERVED_TOKENS) + [t for t, _ in kept]


def format_vocab(tokens: Sequence[str]) -> str:
  return "".join(escape_token(t) + "\n" for t in tokens)


def write_vocab(path: str, tokens: Sequence[str]):
  storage.write_text(path, format_vocab(tokens))


def parse_vocab(text: str, *, source: str = "vocab") -> List[str]:
  """Tokens of vocab.txt content; raises ValueError naming `source` and the
  line when one is not an escaped token."""
  tokens = []
  for number, line in enumerate(text.split("\n")[:-1]):
    try:
      tokens.append(unescape_token(line))
    except json.JSONDecodeError as err:
      raise ValueError(f"{source}: line {number + 1} is not an escaped token: "
                       f"{line!r}") from err
  if tuple(tokens[:tokenizer.NUM_RESERVED]) != tokenizer.RESERVED_TOKENS:
    raise ValueError(f"{source}: must start with {tokenizer.RESERVED_TOKENS}")
  return tokens


def read_vocab(path: str) -> List[str]:
  """Reads vocab.txt; raises ValueError naming the file on a bad line."""
  return parse_vocab(storage.read_text(path), source=path)


def fingerprint(tokens: Sequence[str]) -> str:
  """A short hash that changes whenever any token or id changes."""
  return hashlib.sha256(format_vocab(tokens).encode("utf-8")).hexdigest()[:16]


def file_for(root, spec: "tokenizer.TokenizerSpec") -> str:
  """The vocabulary file of a DatasetPaths or ExportPaths `root`:
  tokenizer.model (bpe, unigram) or vocab.txt."""
  return root.tokenizer_model if spec.is_subword else root.vocab


def fingerprint_for(spec: "tokenizer.TokenizerSpec", vocab) -> str:
  """metadata.json's vocab_fingerprint of a vocabulary ("" for byte)."""
  if not spec.uses_vocab:
    return ""
  return subword.fingerprint(vocab) if spec.is_subword else fingerprint(vocab)


def write_for(root, spec: "tokenizer.TokenizerSpec", vocab):
  """Writes the vocabulary (token list, or model bytes) into `root`."""
  if not spec.uses_vocab:
    return
  if spec.is_subword:
    storage.write_bytes(root.tokenizer_model, bytes(vocab))
  else:
    write_vocab(root.vocab, vocab)


def read_for(root, spec: "tokenizer.TokenizerSpec", expected_fingerprint: str):
  """The vocabulary in `root` (token list, model bytes, or None for byte).

  Raises:
    ValueError: the file does not match `expected_fingerprint` (metadata.json's
      vocab_fingerprint): it was replaced after the data or model was made.
  """
  if not spec.uses_vocab:
    return None
  path = file_for(root, spec)
  vocab = storage.read_bytes(path) if spec.is_subword else read_vocab(path)
  found = fingerprint_for(spec, vocab)
  if found != expected_fingerprint:
    raise ValueError(
        f"{path} does not match the vocab_fingerprint in metadata.json beside it "
        f"({found} vs {expected_fingerprint}): the tokenizer differs from the one "
        "the data was made (or the model was trained) with")
  return vocab
