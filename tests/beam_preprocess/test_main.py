import json

from absl import app
from absl import flags
from absl.testing import flagsaver
import pytest

from beam_preprocess import main as main_lib
from dataspec import metadata as M
from testutil import BEAM_ARGS


def test_main_runs_with_flags_and_beam_options(tiny_corpus, tmp_path):
  out = tmp_path / "ds"
  with flagsaver.flagsaver():
    argv = main_lib.parse_flags([
        "prog", f"--input={tiny_corpus}/doc0.txt,{tiny_corpus}/doc1.txt",
        f"--output_dir={out}", "--tokenizer=word", "--window_length=8",
        "--split_mode=tail", "--validation_fraction=0.2", "--lowercase"] + BEAM_ARGS)
    assert argv[1:] == BEAM_ARGS
    main_lib.main(argv)
  meta = M.load_dataset_metadata(str(out))
  assert meta.tokenizer["type"] == "word" and meta.tokenizer["lowercase"]
  assert meta.splits["train"].documents == 2
  config = json.loads((out / "config.json").read_text())
  assert config["window_length"] == 8 and config["split_mode"] == "tail"


def test_unknown_flag_is_rejected():
  with flagsaver.flagsaver(), pytest.raises(flags.Error, match="--windw_length"):
    main_lib.parse_flags(["prog", "--input=x", "--output_dir=y", "--windw_length=3"])


def test_config_errors_name_the_flag(tiny_corpus, tmp_path):
  with flagsaver.flagsaver():
    main_lib.parse_flags(["prog", f"--input={tiny_corpus}", f"--output_dir={tmp_path}",
                          "--validation_fraction=1.5"])
    with pytest.raises(app.UsageError, match="--validation_fraction"):
      main_lib.main(["prog"])
  with flagsaver.flagsaver():
    main_lib.parse_flags(["prog", f"--input={tiny_corpus}", f"--output_dir={tmp_path}",
                          "--tokenizer=unigram", "--unigram_sample_mb=-1"])
    with pytest.raises(app.UsageError, match="--unigram_sample_mb must be >= 0"):
      main_lib.main(["prog"])
    main_lib.parse_flags(["prog", f"--input={tiny_corpus}", f"--output_dir={tmp_path}",
                          "--tokenizer=unigram", "--unigram_sample_mb=0.5"])
    assert main_lib.config_from_flags().unigram_sample_mb == 0.5
