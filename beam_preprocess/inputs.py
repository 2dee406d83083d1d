"""Finding input files and cutting them into line-aligned byte-range chunks.

Runs before the pipeline starts, so bad input fails before any work:
patterns that match nothing, corpora whose every file is empty, a window longer
than every document, a validation split that would be empty.
"""

import dataclasses
import hashlib
import os
import posixpath
from typing import List, Sequence, Tuple

from absl import logging
from apache_beam.io.filesystems import FileSystems

# How far past a chunk boundary to look for a line end. A line longer than
# this is cut inside the line (at a UTF-8 character boundary) instead, so a
# 50 MB line with no newline is still processed in parallel chunks.
LINE_SEARCH_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class InputFile:
  path: str
  size: int
  document_id: str  # path below the pattern's directory: stable across moves
  split: str = ""  # a fixed split (--validation_input, --test_input), or ""
  encoding: str = "utf-8"  # its text encoding (set by the sniffing step)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A byte range [start, end) of one document, assigned to one split.

  start/end are nominal offsets; the reader moves each inner boundary to the
  next line start (`align_boundary`), identically for both neighbours.
  """
  path: str
  document_id: str
  split: str
  start: int
  end: int
  size: int
  first_in_split: bool  # counts the document once per split
  encoding: str = "utf-8"  # the file's text encoding: read as UTF-8 after re-encoding


def _base_dir(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard."""
  cut = min([pattern.index(c) for c in "*?[" if c in pattern] or [len(pattern)])
  return posixpath.dirname(pattern[:cut]) if cut < len(pattern) else None


def match_inputs(patterns: Sequence[str]) -> Tuple[List[InputFile], List[dict]]:
  """Expands --input patterns into files.

  A directory means every file below it; a file means itself.

  Returns:
    (files with content, skipped empty files as {"path", "reason", "bytes"}).

  Raises:
    FileNotFoundError: a pattern matched nothing.
    ValueError: every matched file is empty.
  """
  files, skipped, seen = [], [], set()
  for pattern in patterns:
    pattern = pattern.rstrip("/")
    is_glob = any(c in pattern for c in "*?[")
    # A directory means every file below it (GCS has no directories: a
    # prefix that matches no object is tried as a directory too).
    candidates = [pattern] if is_glob else (
        [pattern + "/**"] if os.path.isdir(pattern) else [pattern, pattern + "/**"])
    matched = []
    for candidate in candidates:
      try:
        result = FileSystems.match([candidate])[0]
      except Exception as err:  # pylint: disable=broad-except
        logging.debug("Matching %s failed: %s", candidate, err)
        continue
      matched = [m for m in result.metadata_list
                 if not m.path.endswith("/") and not os.path.isdir(m.path)]
      if matched:
        break
    if not matched:
      raise FileNotFoundError(f"--input={pattern} matched no files")
    base = _base_dir(pattern)
    if base is None:  # a file or directory name without wildcards
      base = (pattern if len(matched) > 1 or matched[0].path != pattern
              else posixpath.dirname(pattern))
    for m in sorted(matched, key=lambda m: m.path):
      if m.path in seen:
        continue
      seen.add(m.path)
      if m.size_in_bytes == 0:
        logging.warning("Skipping empty input file %s", m.path)
        skipped.append({"path": m.path, "reason": "empty", "bytes": 0})
        continue
      doc_id = posixpath.relpath(m.path, base) if base else m.path
      files.append(InputFile(path=m.path, size=m.size_in_bytes,
                             document_id=doc_id))
  if not files:
    raise ValueError(f"--input={','.join(patterns)}: every matched file is empty")
  return files, skipped


def hash_fraction(document_id: str) -> float:
  """A stable number in [0, 1) for a document id (same on every machine)."""
  digest = hashlib.sha256(document_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def plan_chunks(files: Sequence[InputFile], *, split_mode: str,
                validation_fraction: float, chunk_bytes: int) -> List[Chunk]:
  """Cuts every file into chunks of about `chunk_bytes`, per split.

  "hash": a file goes whole to validation when hash_fraction(id) < fraction.
  "tail": bytes [0, (1 - fraction) * size) of each file are train, the rest
  validation (the boundary is aligned to a line like any chunk boundary).
  """
  chunks = []
  for f in files:
    if f.split:
      ranges = [(f.split, 0, f.size)]
    elif split_mode == "hash":
      split = "validation" if hash_fraction(f.document_id) < validation_fraction else "train"
      ranges = [(split, 0, f.size)]
    else:
      cut = int(f.size * (1 - validation_fraction))
      ranges = [("train", 0, cut), ("validation", cut, f.size)]
    for split, lo, hi in ranges:
      if hi <= lo:
        continue
      count = max(1, round((hi - lo) / chunk_bytes))
      edges = [lo + (hi - lo) * i // count for i in range(count + 1)]
      for i, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
        chunks.append(Chunk(path=f.path, document_id=f.document_id, split=split,
                            start=start, end=end, size=f.size,
                            first_in_split=i == 0, encoding=f.encoding))
  return chunks


def align_boundary(handle, offset: int, size: int) -> int:
  """Moves a nominal chunk boundary to the start of the next line.

  Both chunks that share a boundary call this with the same offset and get the
  same answer, so every byte is read exactly once. If no line end is found
  within LINE_SEARCH_BYTES the boundary stays inside the line, moved forward
  only past UTF-8 continuation bytes so no character is split.

  Example: in b"ab\\ncd\\nef", offset 4 (the "d") -> 6 (the "e"), and offset
  3 (the "c", already a line start) -> 3.
  """
  if offset <= 0:
    return 0
  if offset >= size:
    return size
  handle.seek(offset - 1)
  buf = handle.read(LINE_SEARCH_BYTES)
  newline = buf.find(b"\n")
  if newline >= 0:
    return offset + newline
  i = 1
  while i < len(buf) and (buf[i] & 0xC0) == 0x80:
    i += 1
  return offset - 1 + i
