"""GenerateConfig: the validated options of one generation job."""

import dataclasses
from typing import Optional, Tuple

from dataspec import textfiles
from dataspec.cpuinfo import has_amx_bf16


# dataspec.serving.PRECISIONS and DECODE_OPS (this module does not import
# TensorFlow).
PRECISIONS = ("float32", "bfloat16")
DECODE_OPS = ("tensorflow", "fused")


def check_ops(precision: str, decode_ops: str):
  """--precision and --decode_ops of textgen-generate and textgen-eval.

  Raises:
    ValueError: an unknown value; fused with bfloat16 on a CPU without AMX.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"Unrecognized --precision: {precision!r} (choose from "
                     f"{', '.join(PRECISIONS)})")
  if decode_ops not in DECODE_OPS:
    raise ValueError(f"Unrecognized --decode_ops: {decode_ops!r} (choose from "
                     f"{', '.join(DECODE_OPS)})")
  if decode_ops == "fused" and precision == "bfloat16" and not has_amx_bf16():
    raise ValueError("--decode_ops=fused with --precision=bfloat16 runs its products on "
                     "AMX, which this CPU has not (Intel Xeon Sapphire Rapids or later); "
                     "use --precision=float32 with it")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Options of one generation job (flag names equal field names).

  Attributes:
    model_dir: a training model_dir (uses its export/) or an export directory.
    prompts: a text file (one prompt per line) or JSONL ({"id", "prompt"}).
    prompt: a single prompt (instead of --prompts).
    output: the JSONL file to write; with --num_shards > 1 each shard writes
      <output stem>-SSSSS-of-NNNNN.jsonl.
    num_samples: samples per prompt.
    max_new_tokens: tokens generated per sample (at most).
    temperature: softmax temperature (> 0) for sampling.
    top_k: sample among the k most likely tokens (0 = all).
    top_p: nucleus sampling mass in (0, 1] (1 = off).
    greedy: always take the most likely token.
    seed: same seed and inputs give identical output.
    stop: stop strings; a sample ends at the first one (which is cut off).
      "<eos>" names the end token.
    batch_size: samples decoded together.
    shard_index, num_shards: this job's share of the prompts.
    overwrite: rewrite an output that is already complete.
    precision: "float32" (the SavedModel's text), or "bfloat16": the matrix
      products in bfloat16, state and softmax in float32; faster at large
      batches on CPUs with AMX or AVX512_BF16, other text than float32's
      (recorded in every sample's settings).
    decode_ops: "tensorflow" (the SavedModel's own ops and text), or "fused":
      a step through every LSTM layer as one compiled CPU op, and for char and byte
      models the output layer with the choice of the token as another
      (dataspec/decode_ops.cc; x86-64 with AVX2, 512-bit tiles on AVX-512
      CPUs with the same results), faster; the text equals the
      SavedModel's up to float rounding (a sample can differ where two
      tokens' noisy scores are within about 1e-6). With bfloat16 (CPUs with
      AMX only) the layers' products run on AMX with float32 sums.
      Recorded in every sample's settings.
  """
  model_dir: str
  output: str
  prompts: Optional[str] = None
  prompt: Optional[str] = None
  num_samples: int = 1
  max_new_tokens: int = 200
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  seed: int = 0
  stop: Tuple[str, ...] = ()
  batch_size: int = 64
  shard_index: int = 0
  num_shards: int = 1
  overwrite: bool = False
  precision: str = "float32"
  decode_ops: str = "tensorflow"

  def __post_init__(self):
    if not self.model_dir:
      raise ValueError("--model_dir is required")
    if not self.output:
      raise ValueError("--output is required")
    if (self.prompts is None) == (self.prompt is None):
      raise ValueError("Give exactly one of --prompts (a file) or --prompt")
    if self.prompt is not None and not self.prompt:
      raise ValueError("--prompt is empty")
    for name in ("num_samples", "max_new_tokens", "batch_size", "num_shards"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"--temperature must be > 0 when sampling, got {self.temperature}"
                       " (use --greedy for argmax decoding)")
    if self.top_k < 0:
      raise ValueError(f"--top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
    check_ops(self.precision, self.decode_ops)
    if not 0 <= self.shard_index < self.num_shards:
      raise ValueError(f"--shard_index={self.shard_index} is not in [0, "
                       f"--num_shards={self.num_shards})")

  def settings(self) -> dict:
    """The sampling settings recorded with every sample."""
    return {"temperature": self.temperature, "top_k": self.top_k,
            "top_p": self.top_p, "greedy": self.greedy, "seed": self.seed,
            "max_new_tokens": self.max_new_tokens, "stop": list(self.stop),
            "precision": self.precision, "decode_ops": self.decode_ops}

  def to_json_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["stop"] = list(self.stop)
    return d


SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Options of one evaluation job (flag names equal field names).

  Attributes:
    model_dir: a training model_dir (uses its export/) or an export directory.
    output: the JSON report to write (local or gs://).
    input: files, directories or globs of text to score (local or gs://).
    dataset_dir: a preprocessed dataset whose held-out `split` is scored
      (instead of `input`): the byte ranges preprocessing recorded in
      <split>-documents.jsonl, read from the original files.
    split: "validation" or "test" (with dataset_dir).
    batch_size: documents scored side by side.
    chunk_tokens: tokens of each document per model call (at most; lowered
      for large vocabularies so that one call's logits stay under 64 MB).
    progress_seconds: seconds between progress lines.
    input_encoding: text encoding of `input` files (as textgen-preprocess's
      flag: a codec name or "auto"); a dataset's split uses the encodings
      preprocessing recorded.
    precision, decode_ops: as GenerateConfig's. With the defaults the
      SavedModel itself scores; otherwise the export's weights in this
      process (dataspec.serving.LanguageModel, as textgen-generate runs
      them): the numbers equal the SavedModel's up to float rounding with
      decode_ops="fused", and differ a little more in bfloat16.
  """
  model_dir: str
  output: str
  input: Tuple[str, ...] = ()
  dataset_dir: Optional[str] = None
  split: str = "validation"
  batch_size: int = 16
  chunk_tokens: int = 512
  progress_seconds: float = 30.0
  input_encoding: str = "utf-8"
  precision: str = "float32"
  decode_ops: str = "tensorflow"

  def __post_init__(self):
    if not self.model_dir:
      raise ValueError("--model_dir is required")
    object.__setattr__(self, "input_encoding", textfiles.check_encoding(self.input_encoding))
    if not self.output:
      raise ValueError("--output is required")
    if bool(self.input) == bool(self.dataset_dir):
      raise ValueError("Give exactly one of --input (files to score) or "
                       "--dataset_dir (with --split)")
    if self.split not in SPLITS:
      raise ValueError(f"Unrecognized --split: {self.split!r} (choose from "
                       f"{', '.join(SPLITS)})")
    for name in ("batch_size", "chunk_tokens", "progress_seconds"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    check_ops(self.precision, self.decode_ops)

  @property
  def saved_model_scores(self) -> bool:
    """The SavedModel itself scores (the defaults), not the export's
    weights in this process."""
    return self.precision == "float32" and self.decode_ops == "tensorflow"

  def to_json_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["input"] = list(self.input)
    return d
