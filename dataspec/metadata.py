"""metadata.json: what a dataset holds, and the check every reader makes.

The preprocessing job writes metadata.json and then COMPLETED (holding the
sha256 of metadata.json) last of all. `load_dataset_metadata` refuses a
directory whose marker is missing or stale, or whose schema_version differs
from this code's, so a crashed or older run is never read as complete.
"""

import dataclasses
import hashlib
import json
from typing import Dict, List

from dataspec import SCHEMA_VERSION
from dataspec import paths
from dataspec import storage
from dataspec import tokenizer


class IncompleteDatasetError(ValueError):
  """The dataset directory lacks a valid completion marker."""


@dataclasses.dataclass
class SplitStats:
  """Counts for one split.

  Attributes:
    documents: documents (files) that contributed text.
    tokens: tokens produced by the tokenizer.
    windows: windows written.
    dropped_tokens: tokens in no window (the tail of each chunk shorter than a
      window, and documents shorter than one window).
    unknown_tokens: tokens mapped to <unk>.
    invalid_utf8: U+FFFD replacements made for bytes that did not decode (as
      UTF-8, or as --input_encoding).
    chunks: byte-range chunks the split was processed in.
    bytes: bytes of input text in the split (what bits per byte divide by).
    shards: number of TFRecord files.
    files: the TFRecord file names, relative to the dataset directory.
    documents_file: held-out splits: the JSONL file (relative) listing each
      document's byte range in the split ("" for train, or datasets written
      before it existed).
  """
  documents: int = 0
  tokens: int = 0
  windows: int = 0
  dropped_tokens: int = 0
  unknown_tokens: int = 0
  invalid_utf8: int = 0
  chunks: int = 0
  bytes: int = 0
  shards: int = 0
  files: List[str] = dataclasses.field(default_factory=list)
  documents_file: str = ""


@dataclasses.dataclass
class DatasetMetadata:
  """The contents of metadata.json.

  Attributes:
    schema_version: dataspec.SCHEMA_VERSION of the writer.
    tokenizer: the TokenizerSpec as a dict.
    vocab_size: number of ids, reserved ones included.
    vocab_fingerprint: vocab.fingerprint_for() of vocab.txt or tokenizer.model
      ("" for byte).
    token_dtype: how ids are packed in each record (schema.TOKEN_DTYPES).
    window_length: L; each record holds L + 1 ids.
    stride: tokens between the starts of consecutive windows.
    compression: "gzip" or "none".
    split_mode: "hash" or "tail".
    validation_fraction: the requested fraction.
    splits: SplitStats per split name.
    skipped_files: {"path", "reason" ("empty" or "binary"), "bytes"} for
      inputs that were not used ("bytes" missing in datasets written before).
    inputs: the --input patterns.
  """
  schema_version: int
  tokenizer: Dict
  vocab_size: int
  vocab_fingerprint: str
  token_dtype: str
  window_length: int
  stride: int
  compression: str
  split_mode: str
  validation_fraction: float
  splits: Dict[str, SplitStats]
  skipped_files: List[Dict] = dataclasses.field(default_factory=list)
  inputs: List[str] = dataclasses.field(default_factory=list)

  @property
  def tokenizer_spec(self) -> tokenizer.TokenizerSpec:
    return tokenizer.TokenizerSpec.from_json_dict(self.tokenizer)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "DatasetMetadata":
    d = json.loads(text)
    d["splits"] = {k: SplitStats(**v) for k, v in d["splits"].items()}
    return cls(**d)


def marker_text(metadata_json: str) -> str:
  return hashlib.sha256(metadata_json.encode("utf-8")).hexdigest() + "\n"


def write_dataset_metadata(dataset_dir: str, metadata: DatasetMetadata):
  """Writes metadata.json, then the COMPLETED marker (last)."""
  dp = paths.DatasetPaths(dataset_dir)
  text = metadata.to_json()
  storage.write_text(dp.metadata, text)
  storage.write_text(dp.completed, marker_text(text))


def is_complete(dataset_dir: str) -> bool:
  return storage.exists(paths.DatasetPaths(dataset_dir).completed)


def load_dataset_metadata(dataset_dir: str, *,
                          flag: str = "dataset_dir") -> DatasetMetadata:
  """Reads metadata.json of a complete dataset of this schema version.

  Raises:
    IncompleteDatasetError: no COMPLETED marker or it does not match.
    ValueError: schema version differs.
  """
  dp = paths.DatasetPaths(dataset_dir)
  if not storage.exists(dp.completed):
    raise IncompleteDatasetError(
        f"--{flag}={dataset_dir} is not a complete dataset: {dp.completed} is "
        "missing (preprocessing did not finish, or this is not a dataset "
        "directory). Re-run beam_preprocess.")
  text = storage.read_text(dp.metadata)
  if storage.read_text(dp.completed) != marker_text(text):
    raise IncompleteDatasetError(
        f"--{flag}={dataset_dir}: {dp.metadata} does not match its COMPLETED "
        "marker (a later run was interrupted). Re-run beam_preprocess.")
  metadata = DatasetMetadata.from_json(text)
  if metadata.schema_version != SCHEMA_VERSION:
    raise ValueError(
        f"--{flag}={dataset_dir} has schema_version "
        f"{metadata.schema_version}, this code reads {SCHEMA_VERSION}. "
        "Re-run beam_preprocess with this version.")
  return metadata


def load_vocab_for(dataset_dir: str, metadata: DatasetMetadata):
  """The dataset's vocabulary: tokens (char, word), the SentencePiece model's
  bytes (bpe, unigram) or None (byte), checked against vocab_fingerprint."""
  from dataspec import vocab  # pylint: disable=g-import-not-at-top
  return vocab.read_for(paths.DatasetPaths(dataset_dir), metadata.tokenizer_spec,
                        metadata.vocab_fingerprint)
