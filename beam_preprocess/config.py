"""PreprocessConfig: the validated options of one preprocessing run."""

import dataclasses
from typing import Tuple

from dataspec import subword
from dataspec import textfiles
from dataspec import tokenizer

SPLIT_MODES = ("hash", "tail")
COMPRESSIONS = ("gzip", "none")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Options of one preprocessing run (flag names equal field names).

  Attributes:
    input: file paths, directories or globs (local or gs://).
    output_dir: where the dataset is written (local or gs://).
    tokenizer: the TokenizerSpec (--tokenizer, --normalization, --lowercase,
      --punctuation, --numbers, --line_eos).
    window_length: L, the number of next-token targets per window (>= 2).
    stride: tokens between window starts; 0 means window_length.
    split_mode: "hash": whole documents go to validation by a hash of their id
      (the path below the input's directory), so adding files never moves old
      ones; "tail": the last `validation_fraction` of every document.
    validation_fraction: in [0, 1).
    max_vocab_size: the most ids, reserved included (0 = unlimited; for bpe
      and unigram, which need a size, 0 = subword.DEFAULT_VOCAB_SIZE).
    min_count: least count for a token to get an id (bpe, unigram: for a
      word to be in the tokenizer's training table).
    character_coverage: bpe, unigram: share of characters (by count) that
      get pieces; the rarest others are encoded as bytes.
    unigram_sample_mb: unigram: word counts whose text (every word written
      as often as it was counted) is larger are scaled down to this many MB,
      as a sample of the corpus would count them (SentencePiece's unigram
      trainer needs ~19 bytes of memory per byte of it); 0 = as counted.
    num_shards: TFRecord files per split (0 = let the runner choose).
    compression: "gzip" or "none".
    chunk_bytes: target size of the byte ranges large files are cut into.
    seed: seed of the in-chunk window shuffle.
    overwrite: replace a complete dataset already in output_dir.
    validation_input: files that form the validation split whole (then
      --input is all train and validation_fraction must be 0), e.g. PTB's
      ptb.valid.txt.
    test_input: files that form a test split (not used for the vocabulary).
    input_encoding: the text encoding of the input files: a Python codec
      name (ASCII-compatible: utf-8, latin-1, cp1252, ...) or "auto"
      (detected per file); text is re-encoded as UTF-8 when read.
  """
  input: Tuple[str, ...]
  output_dir: str
  tokenizer: tokenizer.TokenizerSpec
  window_length: int = 128
  stride: int = 0
  split_mode: str = "hash"
  validation_fraction: float = 0.1
  max_vocab_size: int = 0
  min_count: int = 1
  character_coverage: float = subword.DEFAULT_CHARACTER_COVERAGE
  unigram_sample_mb: float = subword.DEFAULT_UNIGRAM_SAMPLE_MB
  num_shards: int = 0
  compression: str = "gzip"
  chunk_bytes: int = 1 << 20
  seed: int = 0
  overwrite: bool = False
  validation_input: Tuple[str, ...] = ()
  test_input: Tuple[str, ...] = ()
  input_encoding: str = "utf-8"

  def __post_init__(self):
    if not self.input:
      raise ValueError("--input is required")
    if not self.output_dir:
      raise ValueError("--output_dir is required")
    if self.window_length < 2:
      raise ValueError(f"--window_length must be at least 2, got {self.window_length}")
    if self.stride < 0:
      raise ValueError(f"--stride must be >= 0, got {self.stride}")
    if self.stride == 0:
      object.__setattr__(self, "stride", self.window_length)
    if self.split_mode not in SPLIT_MODES:
      raise ValueError(f"Unrecognized --split_mode: {self.split_mode!r} "
                       f"(choose from {', '.join(SPLIT_MODES)})")
    if not 0 <= self.validation_fraction < 1:
      raise ValueError("--validation_fraction must be in [0, 1), got "
                       f"{self.validation_fraction}")
    if self.max_vocab_size < 0 or 0 < self.max_vocab_size <= tokenizer.NUM_RESERVED:
      raise ValueError(f"--max_vocab_size must be 0 (unlimited) or more than "
                       f"{tokenizer.NUM_RESERVED}, got {self.max_vocab_size}")
    if self.tokenizer.is_subword:
      if self.max_vocab_size == 0:
        object.__setattr__(self, "max_vocab_size", subword.DEFAULT_VOCAB_SIZE)
      subword.check_vocab_size(self.tokenizer.type, self.max_vocab_size)
    subword.check_character_coverage(self.character_coverage)
    subword.check_unigram_sample_mb(self.unigram_sample_mb)
    if self.min_count < 1:
      raise ValueError(f"--min_count must be at least 1, got {self.min_count}")
    if self.num_shards < 0:
      raise ValueError(f"--num_shards must be >= 0, got {self.num_shards}")
    if self.compression not in COMPRESSIONS:
      raise ValueError(f"Unrecognized --compression: {self.compression!r} "
                       f"(choose from {', '.join(COMPRESSIONS)})")
    if self.validation_input and self.validation_fraction:
      raise ValueError("--validation_fraction must be 0 with --validation_input "
                       f"(got {self.validation_fraction})")
    if self.chunk_bytes < 4096:
      raise ValueError(f"--chunk_bytes must be at least 4096, got {self.chunk_bytes}")
    object.__setattr__(self, "input_encoding", textfiles.check_encoding(self.input_encoding))

  @property
  def splits(self) -> Tuple[str, ...]:
    """The splits this run writes."""
    out = ["train"]
    if self.validation_fraction or self.validation_input:
      out.append("validation")
    if self.test_input:
      out.append("test")
    return tuple(out)

  def to_json_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["input"] = list(self.input)
    d["validation_input"] = list(self.validation_input)
    d["test_input"] = list(self.test_input)
    return d
