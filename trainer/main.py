r"""Train the Embedding+LSTM language model on a preprocessed dataset.

On the bundled corpus (600 steps; validation loss about 1.61 nats/char, real
words in the samples; 38 s at 100,000-160,000 tokens/s on a 2-core AVX-512
VM on 2026-11-24, about 5 minutes at ~20,000 tokens/s on an AVX2-only one):

  textgen-train --dataset_dir=runs/shakespeare/data \
      --model_dir=runs/shakespeare/model --units=128 --embedding_dim=32 \
      --train_steps=600 --learning_rate=1e-2 --warmup_steps=50 --schedule=cosine

Uses every local GPU (MirroredStrategy) by default; --strategy=multi_worker
reads TF_CONFIG (or derives it in a Kubernetes Indexed Job). Re-running the
same command after a crash resumes from the last complete checkpoint;
SIGTERM checkpoints and exits with code 143.
"""

from absl import flags

from dataspec import cli
from trainer import config as config_lib

# Each job has its own FlagValues: jobs share flag names with other meanings
# (--num_shards) and the tests load every main in one process. dataspec.cli
# adds absl's own flags and --help/--helpfull to it when it parses.
FLAGS = flags.FlagValues()
_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "A complete beam_preprocess output.", flag_values=FLAGS)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Checkpoints, logs and export/.", flag_values=FLAGS)
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 64, "Embedding width.", flag_values=FLAGS)
_UNITS = flags.DEFINE_integer("units", 256, "LSTM units per layer.", flag_values=FLAGS)
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 2, "Stacked LSTM layers.", flag_values=FLAGS)
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Dropout after each LSTM layer.", flag_values=FLAGS)
_EMBEDDING_DROPOUT = flags.DEFINE_float("embedding_dropout", 0.0, "Dropout on embeddings.", flag_values=FLAGS)
_RECURRENT_DROPOUT = flags.DEFINE_float(
    "recurrent_dropout", 0.0, "Dropout on the recurrent state (disables cuDNN).", flag_values=FLAGS)
_TIE_EMBEDDINGS = flags.DEFINE_bool("tie_embeddings", False, "Share input/output embeddings.", flag_values=FLAGS)
_UNIGRAM_BIAS_TOKENS = flags.DEFINE_integer(
    "unigram_bias_tokens", 1_000_000,
    "Start the output bias at the log unigram distribution of this many "
    "training tokens; 0 = zero bias.", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch (all replicas).", flag_values=FLAGS)
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs (when --train_steps=0).", flag_values=FLAGS)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 0, "Total steps; 0 = epochs.", flag_values=FLAGS)
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", config_lib.OPTIMIZERS, "Optimizer.", flag_values=FLAGS)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.", flag_values=FLAGS)
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.", flag_values=FLAGS)
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.", flag_values=FLAGS)
_SCHEDULE = flags.DEFINE_enum("schedule", "constant", config_lib.SCHEDULES, "Decay after warm-up.", flag_values=FLAGS)
_MIN_LR_RATIO = flags.DEFINE_float("min_learning_rate_ratio", 0.1, "Decay floor / peak.", flag_values=FLAGS)
_CLIP_NORM = flags.DEFINE_float("clip_norm", 1.0, "Global-norm gradient clipping; 0 = off.", flag_values=FLAGS)
_STRATEGY = flags.DEFINE_enum("strategy", "mirrored", config_lib.STRATEGIES,
                              "tf.distribute strategy.", flag_values=FLAGS)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 0, "Split the CPU into N logical devices (testing).", flag_values=FLAGS)
_COLLECTIVE_TIMEOUT = flags.DEFINE_float(
    "collective_timeout", 600.0, "multi_worker: seconds an all-reduce waits for a "
    "frozen or unreachable peer before the run fails; 0 = forever.", flag_values=FLAGS)
_MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision", False, "Compute in 16 bits (--mixed_precision_dtype); "
    "variables and the output layer stay float32.", flag_values=FLAGS)
_MIXED_PRECISION_DTYPE = flags.DEFINE_enum(
    "mixed_precision_dtype", "auto", config_lib.MIXED_PRECISION_DTYPES,
    "auto: float16 on GPUs (loss scaling), bfloat16 on CPUs.", flag_values=FLAGS)
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 10000, "Shuffle buffer (windows).", flag_values=FLAGS)
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between progress lines.", flag_values=FLAGS)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 0, "Steps between evaluations; 0 = per epoch.", flag_values=FLAGS)
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 0, "Validation batches; 0 = all.", flag_values=FLAGS)
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.", flag_values=FLAGS)
_KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", flag_values=FLAGS)
_EARLY_STOPPING_PATIENCE = flags.DEFINE_integer(
    "early_stopping_patience", 0, "Evaluations without improvement before stopping; 0 = off.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (weights, dropout, data order).", flag_values=FLAGS)
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False, "Export the latest checkpoint and exit.", flag_values=FLAGS)

_STREAM_GCS = flags.DEFINE_bool(
    "stream_gcs", False, "Read gs:// shards with TF's reader instead of staging them.", flag_values=FLAGS)
_LOCAL_DIR = flags.DEFINE_string(
    "local_dir", "", "Scratch dir for staged shards and logs of a gs:// run.", flag_values=FLAGS)

flags.mark_flags_as_required(["dataset_dir", "model_dir"], flag_values=FLAGS)


def config_from_flags() -> config_lib.TrainConfig:
  return config_lib.TrainConfig(
      dataset_dir=_DATASET_DIR.value, model_dir=_MODEL_DIR.value,
      embedding_dim=_EMBEDDING_DIM.value, units=_UNITS.value,
      num_layers=_NUM_LAYERS.value, dropout=_DROPOUT.value,
      embedding_dropout=_EMBEDDING_DROPOUT.value,
      recurrent_dropout=_RECURRENT_DROPOUT.value,
      tie_embeddings=_TIE_EMBEDDINGS.value,
      unigram_bias_tokens=_UNIGRAM_BIAS_TOKENS.value, batch_size=_BATCH_SIZE.value,
      epochs=_EPOCHS.value, train_steps=_TRAIN_STEPS.value,
      optimizer=_OPTIMIZER.value, learning_rate=_LEARNING_RATE.value,
      weight_decay=_WEIGHT_DECAY.value, warmup_steps=_WARMUP_STEPS.value,
      schedule=_SCHEDULE.value, min_learning_rate_ratio=_MIN_LR_RATIO.value,
      clip_norm=_CLIP_NORM.value, strategy=_STRATEGY.value,
      num_cpu_devices=_NUM_CPU_DEVICES.value,
      collective_timeout=_COLLECTIVE_TIMEOUT.value,
      mixed_precision=_MIXED_PRECISION.value,
      mixed_precision_dtype=_MIXED_PRECISION_DTYPE.value,
      shuffle_buffer=_SHUFFLE_BUFFER.value, log_every=_LOG_EVERY.value,
      eval_every=_EVAL_EVERY.value, eval_steps=_EVAL_STEPS.value,
      checkpoint_every=_CHECKPOINT_EVERY.value,
      keep_checkpoints=_KEEP_CHECKPOINTS.value,
      early_stopping_patience=_EARLY_STOPPING_PATIENCE.value,
      seed=_SEED.value, export_only=_EXPORT_ONLY.value,
      stream_gcs=_STREAM_GCS.value, local_dir=_LOCAL_DIR.value)


def parse_flags(argv):
  """Parses this job's flags (and absl's own) from the command line."""
  return cli.parse(FLAGS, argv, module=__name__, doc=__doc__)


def main(argv):
  config = cli.job_config(config_from_flags, argv)
  from trainer import train  # pylint: disable=g-import-not-at-top  (TF import after flag checks)
  train.run(config)


def run_main():
  """Console-script entry point (textgen-train)."""
  cli.run(main, flag_values=FLAGS, doc=__doc__)


if __name__ == "__main__":
  run_main()
