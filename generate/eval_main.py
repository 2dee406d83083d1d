r"""Score text with an exported model: perplexity and bits per UTF-8 byte.

After the README's training run, on the bundled corpus's last 10% (the
validation split; 112,000 characters in about 4 s on a 2-core VM on
2026-11-24, after ~3 s of loading):

  textgen-eval --model_dir=runs/shakespeare/model \
      --dataset_dir=runs/shakespeare/data --split=validation \
      --output=runs/shakespeare/eval.json

or any files, directories or globs (local or gs://):

  textgen-eval --model_dir=runs/shakespeare/model --input=data/ \
      --output=runs/shakespeare/eval-all.json

Each document is scored whole, the LSTM state carried over it; the report
gives per file and in total: tokens, loss per token, perplexity, bits per
UTF-8 byte (comparable across char, byte and word models), unknown tokens,
bytes that were not UTF-8, and throughput. Empty and binary files are
skipped and listed. Needs an export with saved_model/ (textgen-train
--export_only re-exports an older one). --decode_ops=fused (and
--precision=bfloat16 on CPUs with AMX) score faster with textgen-generate's
compiled ops instead of the SavedModel.
"""

from absl import flags

from dataspec import cli
from generate import config as config_lib

# Each job has its own FlagValues (see generate/main.py).
FLAGS = flags.FlagValues()
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training model_dir or its export/.", flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string("output", None, "JSON report (local or gs://).", flag_values=FLAGS)
_INPUT = flags.DEFINE_list("input", [], "Files, directories or globs to score (local or gs://).", flag_values=FLAGS)
_DATASET_DIR = flags.DEFINE_string(
    "dataset_dir", None, "A preprocessed dataset whose held-out --split to score.", flag_values=FLAGS)
_SPLIT = flags.DEFINE_enum("split", "validation", config_lib.SPLITS,
                           "Held-out split of --dataset_dir.", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Documents scored side by side.", flag_values=FLAGS)
_CHUNK_TOKENS = flags.DEFINE_integer("chunk_tokens", 512, "Tokens per document per model call.",
                                     flag_values=FLAGS)
_PROGRESS_SECONDS = flags.DEFINE_float("progress_seconds", 30, "Seconds between progress lines.",
                                       flag_values=FLAGS)

_INPUT_ENCODING = flags.DEFINE_string(
    "input_encoding", "utf-8", "Text encoding of --input files: utf-8, an ASCII-compatible "
    "Python codec (latin-1, cp1252, ...) or auto (detected per file).", flag_values=FLAGS)

_PRECISION = flags.DEFINE_enum(
    "precision", "float32", config_lib.PRECISIONS,
    "bfloat16: matrix products in bfloat16 (CPUs with AMX/AVX512_BF16: faster at large "
    "batches; with --decode_ops=fused, AMX only); the numbers differ slightly from the "
    "SavedModel's (float32).", flag_values=FLAGS)
_DECODE_OPS = flags.DEFINE_enum(
    "decode_ops", "tensorflow", config_lib.DECODE_OPS,
    "fused: each position's step through every LSTM layer as one compiled CPU op, as "
    "textgen-generate's (x86-64 with AVX2, 512-bit tiles where the CPU has AVX-512; "
    "bfloat16 products on AMX), faster, with one TensorFlow inter-op thread; the numbers "
    "equal the SavedModel's up to float rounding. With either flag off its default the "
    "export's weights score in this process instead of the SavedModel.", flag_values=FLAGS)

flags.mark_flags_as_required(["model_dir", "output"], flag_values=FLAGS)


def config_from_flags() -> config_lib.EvalConfig:
  return config_lib.EvalConfig(
      model_dir=_MODEL_DIR.value, output=_OUTPUT.value, input=tuple(_INPUT.value),
      dataset_dir=_DATASET_DIR.value, split=_SPLIT.value,
      batch_size=_BATCH_SIZE.value, chunk_tokens=_CHUNK_TOKENS.value,
      progress_seconds=_PROGRESS_SECONDS.value, input_encoding=_INPUT_ENCODING.value,
      precision=_PRECISION.value, decode_ops=_DECODE_OPS.value)


def parse_flags(argv):
  """Parses this job's flags (and absl's own) from the command line."""
  return cli.parse(FLAGS, argv, module=__name__, doc=__doc__)


def main(argv):
  config = cli.job_config(config_from_flags, argv)
  from generate import evaluate  # pylint: disable=g-import-not-at-top  (TF import after flag checks)
  evaluate.run(config)


def run_main():
  """Console-script entry point (textgen-eval)."""
  cli.run(main, flag_values=FLAGS, doc=__doc__)


if __name__ == "__main__":
  run_main()
