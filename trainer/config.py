"""TrainConfig: the validated options of one training run."""

import dataclasses

STRATEGIES = ("mirrored", "multi_worker", "one_device")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION_DTYPES = ("auto", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Options of one training run (flag names equal field names).

  Attributes:
    dataset_dir: a complete beam_preprocess output (local or gs://).
    model_dir: checkpoints, TensorBoard logs, export (local or gs://).
    embedding_dim: token embedding width.
    units: LSTM units per layer.
    num_layers: stacked LSTM layers.
    dropout: dropout after every LSTM layer.
    embedding_dropout: dropout on the embedding output.
    recurrent_dropout: dropout on the recurrent state; > 0 disables cuDNN.
    tie_embeddings: share the embedding matrix with the output layer.
    unigram_bias_tokens: a fresh run starts the output bias at the log
      unigram distribution counted over this many training tokens (0 = zero
      bias). Adam moves each weight about learning_rate per step, so from a
      zero bias a 10k-word vocabulary spends hundreds of steps just learning
      word frequencies.
    batch_size: global batch (windows per step over all replicas); must be
      divisible by the number of replicas.
    epochs: passes over the training windows (used when train_steps is 0).
    train_steps: total optimizer steps (0 = epochs * steps per epoch).
    optimizer: "adam" or "adamw".
    learning_rate: peak learning rate.
    weight_decay: AdamW decoupled weight decay.
    warmup_steps: linear warm-up from 0 to learning_rate.
    schedule: after warm-up: "constant", "cosine" or "linear" decay.
    min_learning_rate_ratio: the decay's floor, as a fraction of the peak.
    clip_norm: clip gradients by global norm (0 = off).
    strategy: "mirrored" (all local GPUs, or CPU), "multi_worker"
      (TF_CONFIG), "one_device".
    num_cpu_devices: split the CPU into this many logical devices (testing
      MirroredStrategy without GPUs); 0 = leave as is.
    collective_timeout: multi_worker: seconds a cross-worker all-reduce may
      wait for its peers before the run fails (a worker that froze or was
      cut off without a TCP reset); must exceed the longest pause of one
      worker, e.g. the chief writing a checkpoint. 0 = wait forever.
    mixed_precision: compute in 16 bits (variables and the output layer stay
      float32): Keras's mixed_float16 or mixed_bfloat16 policy.
    mixed_precision_dtype: which 16 bits: "auto" = float16 on GPUs (with loss
      scaling; cuDNN's LSTM kernel), bfloat16 without (CPUs with bfloat16
      instructions: AMX, AVX512_BF16); "float16" or "bfloat16" to choose.
    shuffle_buffer: windows in the shuffle buffer.
    log_every: steps between progress lines and TensorBoard points.
    eval_every: steps between validation runs (0 = once per epoch).
    eval_steps: validation batches per run (0 = the whole split).
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    early_stopping_patience: stop after this many validation runs without a
      new best (0 = off).
    seed: seeds weights, dropout and the data order.
    export_only: export the latest checkpoint and exit.
    stream_gcs: read gs:// TFRecords with TensorFlow's GCS reader instead of
      copying them to local disk first (production buckets only).
    local_dir: scratch directory for staged shards and TensorBoard files of a
      gs:// run ("" = the system temp directory).
  """
  dataset_dir: str
  model_dir: str
  embedding_dim: int = 64
  units: int = 256
  num_layers: int = 2
  dropout: float = 0.0
  embedding_dropout: float = 0.0
  recurrent_dropout: float = 0.0
  tie_embeddings: bool = False
  unigram_bias_tokens: int = 1_000_000
  batch_size: int = 64
  epochs: int = 1
  train_steps: int = 0
  optimizer: str = "adam"
  learning_rate: float = 2e-3
  weight_decay: float = 0.0
  warmup_steps: int = 0
  schedule: str = "constant"
  min_learning_rate_ratio: float = 0.1
  clip_norm: float = 1.0
  strategy: str = "mirrored"
  num_cpu_devices: int = 0
  collective_timeout: float = 600.0
  mixed_precision: bool = False
  mixed_precision_dtype: str = "auto"
  shuffle_buffer: int = 10000
  log_every: int = 50
  eval_every: int = 0
  eval_steps: int = 0
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  early_stopping_patience: int = 0
  seed: int = 0
  export_only: bool = False
  stream_gcs: bool = False
  local_dir: str = ""

  def __post_init__(self):
    def positive(name):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")

    def non_negative(name):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

    if not self.dataset_dir:
      raise ValueError("--dataset_dir is required")
    if not self.model_dir:
      raise ValueError("--model_dir is required")
    for name in ("embedding_dim", "units", "num_layers", "batch_size", "epochs",
                 "learning_rate", "shuffle_buffer", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
      positive(name)
    for name in ("train_steps", "weight_decay", "warmup_steps", "clip_norm",
                 "eval_every", "eval_steps", "early_stopping_patience",
                 "num_cpu_devices", "unigram_bias_tokens", "collective_timeout"):
      non_negative(name)
    for name in ("dropout", "embedding_dropout", "recurrent_dropout"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
    if not 0 <= self.min_learning_rate_ratio <= 1:
      raise ValueError("--min_learning_rate_ratio must be in [0, 1], got "
                       f"{self.min_learning_rate_ratio}")
    for name, choices in (("strategy", STRATEGIES), ("optimizer", OPTIMIZERS),
                          ("schedule", SCHEDULES),
                          ("mixed_precision_dtype", MIXED_PRECISION_DTYPES)):
      if getattr(self, name) not in choices:
        raise ValueError(f"Unrecognized --{name}: {getattr(self, name)!r} "
                         f"(choose from {', '.join(choices)})")
    if self.weight_decay and self.optimizer != "adamw":
      raise ValueError("--weight_decay needs --optimizer=adamw")
    if self.mixed_precision_dtype != "auto" and not self.mixed_precision:
      raise ValueError(f"--mixed_precision_dtype={self.mixed_precision_dtype} needs "
                       "--mixed_precision")

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)
