r"""Generate text from a trained model: prompts in, JSONL samples out.

After the README's training run (4 samples of 300 characters: under a
second of decoding after ~2 s of start-up on a 2-core VM, 2026-11-24):

  textgen-generate --model_dir=runs/shakespeare/model \
      --prompt="ROMEO:" --num_samples=4 --max_new_tokens=300 \
      --temperature=0.8 --output=runs/shakespeare/samples.jsonl

Each line: {"id", "prompt", "sample_index", "text", "num_tokens",
"finish_reason", "unknown_prompt_tokens", "settings"}. In a Kubernetes
Indexed Job, --shard_index defaults to $JOB_COMPLETION_INDEX.
"""

import os

from absl import flags

from dataspec import cli
from generate import config as config_lib

# Each job has its own FlagValues: jobs share flag names with other meanings
# (--num_shards) and the tests load every main in one process. dataspec.cli
# adds absl's own flags and --help/--helpfull to it when it parses.
FLAGS = flags.FlagValues()
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training model_dir or its export/.", flag_values=FLAGS)
_PROMPTS = flags.DEFINE_string("prompts", None, "Text file (a prompt per line) or JSONL.", flag_values=FLAGS)
_PROMPT = flags.DEFINE_string("prompt", None, "A single prompt.", flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string("output", None, "JSONL output (local or gs://).", flag_values=FLAGS)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.", flag_values=FLAGS)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 200, "Tokens per sample.", flag_values=FLAGS)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).", flag_values=FLAGS)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k sampling; 0 = off.", flag_values=FLAGS)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1].", flag_values=FLAGS)
_GREEDY = flags.DEFINE_bool("greedy", False, "Argmax decoding.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Seed; same seed and inputs, same output.", flag_values=FLAGS)
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeatable); <eos> = end token.", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Samples decoded together.", flag_values=FLAGS)
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", None, "This job's shard; default $JOB_COMPLETION_INDEX or 0.", flag_values=FLAGS)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Shards the prompts are split into.", flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Redo a complete output.", flag_values=FLAGS)
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", config_lib.PRECISIONS,
    "bfloat16: matrix products in bfloat16 (CPUs with AMX/AVX512_BF16: faster at "
    "large batches; with --decode_ops=fused, AMX only); other text than float32's, the "
    "SavedModel's.", flag_values=FLAGS)

_DECODE_OPS = flags.DEFINE_enum(
    "decode_ops", "tensorflow", config_lib.DECODE_OPS,
    "fused: a step through every LSTM layer as one compiled CPU op, and the output layer with "
    "the choice of the token as another for char and byte models (x86-64 with AVX2, "
    "512-bit tiles where the CPU has AVX-512; bfloat16 products on AMX; "
    "`python -m dataspec.decode_ops` builds them), faster, with one TensorFlow inter-op "
    "thread; the text equals the SavedModel's up to float rounding.", flag_values=FLAGS)

flags.mark_flags_as_required(["model_dir", "output"], flag_values=FLAGS)


def config_from_flags() -> config_lib.GenerateConfig:
  shard_index = _SHARD_INDEX.value
  if shard_index is None:
    shard_index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
  return config_lib.GenerateConfig(
      model_dir=_MODEL_DIR.value, output=_OUTPUT.value, prompts=_PROMPTS.value,
      prompt=_PROMPT.value, num_samples=_NUM_SAMPLES.value,
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value, top_p=_TOP_P.value, greedy=_GREEDY.value,
      seed=_SEED.value, stop=tuple(_STOP.value), batch_size=_BATCH_SIZE.value,
      shard_index=shard_index, num_shards=_NUM_SHARDS.value,
      overwrite=_OVERWRITE.value, precision=_PRECISION.value,
      decode_ops=_DECODE_OPS.value)


def parse_flags(argv):
  """Parses this job's flags (and absl's own) from the command line."""
  return cli.parse(FLAGS, argv, module=__name__, doc=__doc__)


def main(argv):
  config = cli.job_config(config_from_flags, argv)
  from generate import generate  # pylint: disable=g-import-not-at-top
  generate.run(config)


def run_main():
  """Console-script entry point (textgen-generate)."""
  cli.run(main, flag_values=FLAGS, doc=__doc__)


if __name__ == "__main__":
  run_main()
