"""textgen-eval: documents scored whole with the state carried, per file
and in total; bad input named before any work."""

import json
import math
import os
import shutil

from absl import app
from absl.testing import flagsaver
import pytest
import tensorflow as tf

from dataspec import export as export_lib
from dataspec import metadata as M
from dataspec import serving
from generate import config as config_lib
from generate import eval_main
from generate import evaluate
from testutil import FRENCH, last_line, run_python, unwritable_dir


def _config(model_dir, output, **kw):
  return config_lib.EvalConfig(model_dir=str(model_dir), output=str(output), **kw)


def _language_model(model_dir):
  spec, weights, meta, vocab, _ = export_lib.load_export(str(model_dir / "export"))
  return serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)


def test_held_out_split_is_scored_whole_with_the_state_carried(tiny_run, tiny_dataset,
                                                               tmp_path):
  report = evaluate.run(_config(tiny_run[0], tmp_path / "r.json",
                                dataset_dir=str(tiny_dataset), split="validation"))
  assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
  meta = M.load_dataset_metadata(str(tiny_dataset))
  total = report["total"]
  # Every validation character is scored, the first after a line end.
  assert total["tokens"] == meta.splits["validation"].tokens
  assert total["bytes"] == meta.splits["validation"].bytes
  assert total["files"] == 3 and total["skipped_files"] == 0
  assert total["perplexity"] == pytest.approx(math.exp(total["loss"]))
  assert total["bits_per_byte"] == pytest.approx(total["nll"] / math.log(2) / total["bytes"])
  # The same numbers as the SavedModel's score signature on each range.
  lm = _language_model(tiny_run[0])
  for row in report["files"]:
    with open(row["path"], "rb") as f:
      f.seek(row["start"])
      text = f.read(row["end"] - row["start"])
    assert row["end"] == os.path.getsize(row["path"]) and row["start"] > 0
    score = lm.score(tf.constant([text]))
    assert row["tokens"] == int(score["tokens"][0])
    assert row["nll"] == pytest.approx(float(score["nll"][0]), rel=1e-5)
  # Carrying the state helps: better than the trainer's windows from zero.
  assert total["loss"] < tiny_run[1]["validation"]["loss"]


def test_results_do_not_depend_on_batching_or_chunking(tiny_run, tiny_corpus, tmp_path):
  runs = []
  for batch_size, chunk in ((1, 512), (2, 17), (5, 64)):
    report = evaluate.run(_config(tiny_run[0], tmp_path / f"r{batch_size}.json",
                                  input=(str(tiny_corpus),), batch_size=batch_size,
                                  chunk_tokens=chunk))
    runs.append({r["path"]: r for r in report["files"]})
  for path, row in runs[0].items():
    for other in runs[1:]:
      assert other[path]["tokens"] == row["tokens"]
      assert other[path]["nll"] == pytest.approx(row["nll"], rel=1e-5)


def test_empty_binary_and_non_utf8_files(tiny_run, tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  (docs / "empty.txt").write_bytes(b"")
  (docs / "image.png").write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452") +
                                   bytes(range(256)) * 4)
  # Mostly UTF-8 with a few Latin-1 bytes: text, with the bytes replaced.
  (docs / "latin1.txt").write_bytes(
      ("The caf\xe9 was full; a na\xefve reader would say so.\n".encode("latin-1")
       + "And then they all went home again.\n".encode()) * 3)
  (docs / "ok.txt").write_text("First Citizen:\nSpeak, speak.\n")
  report = evaluate.run(_config(tiny_run[0], tmp_path / "r.json", input=(str(docs),)))
  assert sorted((os.path.basename(s["path"]), s["reason"]) for s in report["skipped_files"]) == [
      ("empty.txt", "empty"), ("image.png", "binary")]
  by_name = {os.path.basename(r["path"]): r for r in report["files"]}
  assert by_name["latin1.txt"]["invalid_utf8"] == 6  # é and ï, three times
  assert by_name["ok.txt"]["invalid_utf8"] == 0
  assert report["total"]["invalid_utf8"] == 6


@pytest.mark.parametrize("encoding", ["cp1252", "auto"])
def test_input_encoding(tiny_run, tmp_path, encoding):
  """A cp1252 file scored as cp1252 scores as its UTF-8 copy does."""
  text = FRENCH  # with œ, which only cp1252 of the Latin-1 family has
  (tmp_path / "utf8").mkdir()
  (tmp_path / "cp").mkdir()
  (tmp_path / "utf8" / "a.txt").write_text(text, encoding="utf-8")
  (tmp_path / "cp" / "a.txt").write_bytes(text.encode("cp1252"))
  want = evaluate.run(_config(tiny_run[0], tmp_path / "u.json",
                              input=(str(tmp_path / "utf8"),)))["total"]
  got = evaluate.run(_config(tiny_run[0], tmp_path / "c.json", input=(str(tmp_path / "cp"),),
                             input_encoding=encoding))["total"]
  assert got["bytes"] == want["bytes"] == len(text.encode("utf-8"))
  assert got["tokens"] == want["tokens"] and got["invalid_utf8"] == 0
  assert got["nll"] == pytest.approx(want["nll"], rel=1e-6)


def test_bad_input_fails_before_any_work(tiny_run, tiny_dataset, tmp_path):
  doc = tmp_path / "a.txt"
  doc.write_text("hello\n")
  with pytest.raises(export_lib.IncompleteExportError, match="--model_dir=.*EXPORTED"):
    evaluate.run(_config(tmp_path / "no-model", tmp_path / "o.json", input=(str(doc),)))
  copy = tmp_path / "incomplete"
  shutil.copytree(tiny_run[0] / "export", copy / "export")
  os.remove(copy / "export" / "EXPORTED")
  with pytest.raises(export_lib.IncompleteExportError):
    evaluate.run(_config(copy, tmp_path / "o.json", input=(str(doc),)))
  with pytest.raises(FileNotFoundError, match="--input=.*nothing-here.*matched no files"):
    evaluate.run(_config(tiny_run[0], tmp_path / "o.json",
                         input=(str(tmp_path / "nothing-here*"),)))
  with pytest.raises(IsADirectoryError, match="--output"):
    evaluate.run(_config(tiny_run[0], tmp_path, input=(str(doc),)))
  locked = unwritable_dir(tmp_path)
  with pytest.raises(PermissionError, match="Cannot write"):
    evaluate.run(_config(tiny_run[0], locked / "o.json", input=(str(doc),)))
  with pytest.raises(ValueError, match="no test split"):
    evaluate.run(_config(tiny_run[0], tmp_path / "o.json", dataset_dir=str(tiny_dataset),
                         split="test"))
  # A dataset written before the document lists existed.
  old = tmp_path / "old-dataset"
  shutil.copytree(tiny_dataset, old)
  meta = M.load_dataset_metadata(str(old))
  meta.splits["validation"].documents_file = ""
  M.write_dataset_metadata(str(old), meta)
  with pytest.raises(ValueError, match="no document list.*re-run textgen-preprocess"):
    evaluate.run(_config(tiny_run[0], tmp_path / "o.json", dataset_dir=str(old)))
  assert not (tmp_path / "o.json").exists()
  with pytest.raises(ValueError, match="exactly one of --input"):
    _config(tiny_run[0], tmp_path / "o.json")
  with pytest.raises(ValueError, match="--batch_size"):
    _config(tiny_run[0], tmp_path / "o.json", input=("x",), batch_size=0)


def test_a_changed_source_file_is_refused(tiny_run, tmp_path):
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  from dataspec import tokenizer as T
  from testutil import BEAM_ARGS, shakespeare_text
  corpus = tmp_path / "c.txt"
  corpus.write_text(shakespeare_text(20_000))
  pipeline.run(pre_config.PreprocessConfig(
      input=(str(corpus),), output_dir=str(tmp_path / "d"),
      tokenizer=T.TokenizerSpec(type="char"), window_length=32, split_mode="tail",
      validation_fraction=0.2), pipeline_args=BEAM_ARGS)
  with open(corpus, "a") as f:
    f.write("more text\n")
  with pytest.raises(ValueError, match="changed since"):
    evaluate.run(_config(tiny_run[0], tmp_path / "o.json", dataset_dir=str(tmp_path / "d")))


def test_main_with_flags(tiny_run, tiny_corpus, tmp_path):
  with flagsaver.flagsaver():
    eval_main.parse_flags(["prog", f"--model_dir={tiny_run[0]}",
                           f"--input={tiny_corpus}/doc0.txt", f"--output={tmp_path / 'r.json'}",
                           "--batch_size=2"])
    eval_main.main(["prog"])
  assert json.loads((tmp_path / "r.json").read_text())["total"]["files"] == 1
  with flagsaver.flagsaver():
    eval_main.parse_flags(["prog", f"--model_dir={tiny_run[0]}",
                           f"--output={tmp_path / 'r.json'}"])
    with pytest.raises(app.UsageError, match="exactly one of --input"):
      eval_main.main(["prog"])


def test_a_char_model_is_scored_in_a_process_without_keras(tiny_run, tiny_corpus, tmp_path):
  # The job imports TensorFlow without Keras (dataspec.lean_tensorflow), and
  # tensorflow_text, which imports Keras, only for bpe/unigram exports.
  code = ("import json, sys\n"
          "from generate import eval_main\n"
          f"eval_main.parse_flags(['prog', '--model_dir={tiny_run[0]}', "
          f"'--input={tiny_corpus}/doc0.txt', '--output={tmp_path / 'r.json'}'])\n"
          "eval_main.main(['prog'])\n"
          "print(json.dumps([m for m in ('keras', 'tensorflow_text') if m in sys.modules]))")
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  assert json.loads(last_line(run_python(code, cwd=tmp_path, env=env))) == []
  assert json.loads((tmp_path / "r.json").read_text())["total"]["files"] == 1


def test_fused_and_bfloat16_scoring_match_the_saved_model(tiny_run, tiny_corpus, tmp_path):
  """--decode_ops=fused and --precision=bfloat16 score with the export's
  weights in this process (recorded in the report): every file's tokens as
  the SavedModel's, the loss equal up to float rounding with fused
  float32, within bfloat16's rounding otherwise; and not the same bits
  where bfloat16 rounds the products."""
  from dataspec import decode_ops
  settings = [("float32", "tensorflow"), ("bfloat16", "tensorflow")]
  if decode_ops.runs_here():
    settings.append(("float32", "fused"))
  if decode_ops.amx_runs_here():
    settings.append(("bfloat16", "fused"))
  reports = {}
  for precision, ops in settings:
    reports[precision, ops] = evaluate.run(_config(
        tiny_run[0], tmp_path / f"{precision}-{ops}.json", input=(str(tiny_corpus),),
        batch_size=2, chunk_tokens=64, precision=precision, decode_ops=ops))
  base = {r["path"]: r for r in reports["float32", "tensorflow"]["files"]}
  assert len(base) == 3
  for (precision, ops), report in reports.items():
    assert report["scored_by"] == ("saved_model" if (precision, ops) == ("float32", "tensorflow")
                                   else "weights")
    assert (report["config"]["precision"], report["config"]["decode_ops"]) == (precision, ops)
    for row in report["files"]:
      assert row["tokens"] == base[row["path"]]["tokens"]
      assert row["nll"] == pytest.approx(base[row["path"]]["nll"],
                                         rel=1e-5 if precision == "float32" else 1e-2)
  bf16 = {r["path"]: r["nll"] for r in reports["bfloat16", "tensorflow"]["files"]}
  assert bf16 != {path: r["nll"] for path, r in base.items()}
  # What scored: the SavedModel, else a LanguageModel running those ops.
  export_dir = str(tiny_run[0] / "export")
  for precision, ops in settings:
    model = evaluate.load_model(export_dir, _config(tiny_run[0], tmp_path / "r.json",
                                                    input=(str(tiny_corpus),),
                                                    precision=precision, decode_ops=ops))
    if (precision, ops) == ("float32", "tensorflow"):
      assert not isinstance(model, serving.LanguageModel)
    else:
      assert model.decode_ops == ops


def test_fused_scoring_flags_are_checked_before_any_work(tiny_run, tiny_corpus, tmp_path,
                                                         monkeypatch):
  """A bad --decode_ops or --precision, fused bfloat16 without AMX and fused
  on a GPU machine: errors that name the flag, and no report."""
  with pytest.raises(ValueError, match="Unrecognized --decode_ops: 'xla'"):
    _config(tiny_run[0], tmp_path / "r.json", input=(str(tiny_corpus),), decode_ops="xla")
  with pytest.raises(ValueError, match="Unrecognized --precision: 'float16'"):
    _config(tiny_run[0], tmp_path / "r.json", input=(str(tiny_corpus),), precision="float16")
  monkeypatch.setattr(config_lib, "has_amx_bf16", lambda: False)
  with pytest.raises(ValueError, match="--decode_ops=fused with --precision=bfloat16 runs its "
                                       "products on AMX, which this CPU has not"):
    _config(tiny_run[0], tmp_path / "r.json", input=(str(tiny_corpus),), decode_ops="fused",
            precision="bfloat16")
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: ["/physical_device:GPU:0"] if kind == "GPU" else real(kind))
  with pytest.raises(ValueError, match="--decode_ops=fused scores on the CPU; this machine has 1"):
    evaluate.run(_config(tiny_run[0], tmp_path / "r.json", input=(str(tiny_corpus),),
                         decode_ops="fused"))
  assert not (tmp_path / "r.json").exists()


def test_main_with_fused_flags(tiny_run, tiny_corpus, tmp_path):
  from dataspec import decode_ops
  if not decode_ops.runs_here():
    pytest.skip("the fused decode op needs an x86-64 CPU with AVX2 and FMA")
  with flagsaver.flagsaver():
    eval_main.parse_flags(["prog", f"--model_dir={tiny_run[0]}",
                           f"--input={tiny_corpus}/doc0.txt", f"--output={tmp_path / 'r.json'}",
                           "--decode_ops=fused"])
    eval_main.main(["prog"])
  report = json.loads((tmp_path / "r.json").read_text())
  assert (report["scored_by"], report["config"]["decode_ops"]) == ("weights", "fused")
