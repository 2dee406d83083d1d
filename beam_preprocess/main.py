r"""Preprocess a text corpus into sharded TFRecord windows, vocab and metadata.

Run on the bundled corpus (1.1 MB of text gives 7,842 training windows of 128
chars and 871 validation windows; about 3 s on a 2-core VM on 2026-11-24,
most of it start-up):

  textgen-preprocess --input=data/tinyshakespeare.txt \
      --output_dir=runs/shakespeare/data --tokenizer=char --window_length=128 \
      --split_mode=tail --validation_fraction=0.1

Any flag that is not one of ours is handed to Apache Beam as a pipeline
option: `--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp --setup_file=./setup.py`. Locally (DirectRunner)
the default is one worker thread per CPU; `--direct_num_workers` and
`--direct_running_mode` override it.
"""

import argparse
import functools

from absl import flags

from beam_preprocess import config as config_lib
from beam_preprocess import pipeline
from dataspec import cli
from dataspec import subword
from dataspec import tokenizer

# Each job has its own FlagValues: jobs share flag names with other meanings
# (--num_shards) and the tests load every main in one process. dataspec.cli
# adds absl's own flags and --help/--helpfull to it when it parses.
FLAGS = flags.FlagValues()
_INPUT = flags.DEFINE_list(
    "input", None, "Files, directories or globs (local or gs://), comma separated.", flag_values=FLAGS)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Dataset directory to write.", flag_values=FLAGS)
_TOKENIZER = flags.DEFINE_enum(
    "tokenizer", "char", tokenizer.TOKENIZER_TYPES,
    "Token unit: char, word, byte, or bpe/unigram subwords (SentencePiece, trained "
    "from the pipeline's word counts, byte fallback).", flag_values=FLAGS)
_NORMALIZATION = flags.DEFINE_enum("normalization", "nfc", tokenizer.NORMALIZATIONS,
                                   "Unicode normalization (all but byte).", flag_values=FLAGS)
_LOWERCASE = flags.DEFINE_bool("lowercase", False, "Lowercase text (all but byte).", flag_values=FLAGS)
_PUNCTUATION = flags.DEFINE_enum(
    "punctuation", "split", tokenizer.PUNCTUATION_MODES,
    "word: keep (white-space split only), split (marks are tokens), strip.", flag_values=FLAGS)
_NUMBERS = flags.DEFINE_enum("numbers", "keep", tokenizer.NUMBER_MODES,
                             "word: keep numbers or replace them with N.", flag_values=FLAGS)
_LINE_EOS = flags.DEFINE_bool("line_eos", True, "word: <eos> at each line end.", flag_values=FLAGS)
_WINDOW_LENGTH = flags.DEFINE_integer(
    "window_length", 128, "Next-token targets per window (window = L+1 ids).", flag_values=FLAGS)
_STRIDE = flags.DEFINE_integer("stride", 0, "Tokens between window starts; 0 = window_length.", flag_values=FLAGS)
_SPLIT_MODE = flags.DEFINE_enum("split_mode", "hash", config_lib.SPLIT_MODES,
                                "hash: whole documents by id hash; tail: last part of each.", flag_values=FLAGS)
_VALIDATION_FRACTION = flags.DEFINE_float("validation_fraction", 0.1,
                                          "Fraction for validation, in [0, 1).", flag_values=FLAGS)
_MAX_VOCAB_SIZE = flags.DEFINE_integer(
    "max_vocab_size", 0, "Most ids incl. reserved; 0 = unlimited (bpe, unigram: "
    f"the model's size, 0 = {subword.DEFAULT_VOCAB_SIZE}).", flag_values=FLAGS)
_MIN_COUNT = flags.DEFINE_integer("min_count", 1, "Least count for a token to get an id.", flag_values=FLAGS)
_CHARACTER_COVERAGE = flags.DEFINE_float(
    "character_coverage", subword.DEFAULT_CHARACTER_COVERAGE,
    "bpe, unigram: share of characters that get pieces; rarer ones are bytes.",
    flag_values=FLAGS)
_UNIGRAM_SAMPLE_MB = flags.DEFINE_float(
    "unigram_sample_mb", subword.DEFAULT_UNIGRAM_SAMPLE_MB,
    "unigram: word counts of more text than this (MB) are scaled down to it, as a "
    "sample of the corpus; bounds SentencePiece's memory (~19 bytes per byte). "
    "0 = as counted.", flag_values=FLAGS)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 = runner decides.", flag_values=FLAGS)
_COMPRESSION = flags.DEFINE_enum("compression", "gzip", config_lib.COMPRESSIONS,
                                 "TFRecord compression.", flag_values=FLAGS)
_CHUNK_BYTES = flags.DEFINE_integer("chunk_bytes", 1 << 20,
                                    "Target bytes per chunk of a large file.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the in-chunk window shuffle.", flag_values=FLAGS)
_VALIDATION_INPUT = flags.DEFINE_list(
    "validation_input", [], "Files that are the validation split, whole.", flag_values=FLAGS)
_TEST_INPUT = flags.DEFINE_list(
    "test_input", [], "Files that are a test split, whole.", flag_values=FLAGS)
_INPUT_ENCODING = flags.DEFINE_string(
    "input_encoding", "utf-8",
    "Text encoding of the input files: utf-8, any ASCII-compatible Python codec "
    "(latin-1, cp1252, shift_jis, ...) or auto (detected per file by "
    "chardet). Text is re-encoded as UTF-8.", flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a complete dataset.", flag_values=FLAGS)

flags.mark_flags_as_required(["input", "output_dir"], flag_values=FLAGS)


@functools.lru_cache(maxsize=None)
def beam_options() -> cli.PassThrough:
  """Every --option Apache Beam's PipelineOptions understand, and their help."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top

  def subclasses(cls):
    for sub in cls.__subclasses__():
      yield sub
      yield from subclasses(sub)

  parser = argparse.ArgumentParser(prog="Apache Beam", add_help=False,
                                   conflict_handler="resolve")
  for cls in subclasses(pipeline_options.PipelineOptions):
    try:
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
    except argparse.ArgumentError:
      pass
  names = frozenset(opt for action in parser._actions  # pylint: disable=protected-access
                    for opt in action.option_strings)
  return cli.PassThrough(title="Apache Beam pipeline options", options=names,
                         help_text=parser.format_help())


def parse_flags(argv):
  """Parses our flags; returns [program] + the Beam options (unknown ones are
  rejected)."""
  return cli.parse(FLAGS, argv, module=__name__, doc=__doc__,
                   pass_through=beam_options)


def config_from_flags() -> config_lib.PreprocessConfig:
  return config_lib.PreprocessConfig(
      input=tuple(_INPUT.value),
      output_dir=_OUTPUT_DIR.value,
      tokenizer=tokenizer.TokenizerSpec(
          type=_TOKENIZER.value, normalization=_NORMALIZATION.value,
          lowercase=_LOWERCASE.value, punctuation=_PUNCTUATION.value,
          numbers=_NUMBERS.value, line_eos=_LINE_EOS.value),
      window_length=_WINDOW_LENGTH.value,
      stride=_STRIDE.value,
      split_mode=_SPLIT_MODE.value,
      validation_fraction=_VALIDATION_FRACTION.value,
      max_vocab_size=_MAX_VOCAB_SIZE.value,
      min_count=_MIN_COUNT.value,
      character_coverage=_CHARACTER_COVERAGE.value,
      unigram_sample_mb=_UNIGRAM_SAMPLE_MB.value,
      num_shards=_NUM_SHARDS.value,
      compression=_COMPRESSION.value,
      chunk_bytes=_CHUNK_BYTES.value,
      seed=_SEED.value,
      overwrite=_OVERWRITE.value,
      validation_input=tuple(_VALIDATION_INPUT.value),
      test_input=tuple(_TEST_INPUT.value),
      input_encoding=_INPUT_ENCODING.value)


def main(argv):
  config = cli.job_config(config_from_flags)  # argv[1:]: Beam's options
  pipeline.run(config, pipeline_args=argv[1:])


def run_main():
  """Console-script entry point (textgen-preprocess)."""
  cli.run(main, flag_values=FLAGS, doc=__doc__, pass_through=beam_options)


if __name__ == "__main__":
  run_main()
