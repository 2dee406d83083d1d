"""Batch generation from the tiny run's export."""

import json
import os

from absl import app
from absl.testing import flagsaver
import pytest

from dataspec import export as export_lib
from generate import config as config_lib
from generate import generate
from generate import main as main_lib
from testutil import unwritable_dir


def _config(model_dir, output, **kw):
  kw.setdefault("prompt", None if "prompts" in kw else "First Citizen:\n")
  kw.setdefault("max_new_tokens", 40)
  return config_lib.GenerateConfig(model_dir=str(model_dir), output=str(output), **kw)


def _read(path):
  return [json.loads(l) for l in open(path, encoding="utf-8")]


def _prompts_file(tmp_path, lines, name="prompts.txt"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def test_samples_are_written_with_settings(tiny_run, tmp_path):
  out = tmp_path / "s.jsonl"
  generate.run(_config(tiny_run[0], out, num_samples=3, temperature=0.8, top_k=10))
  rows = _read(out)
  assert [r["sample_index"] for r in rows] == [0, 1, 2]
  for r in rows:
    assert r["num_tokens"] == 40 and r["finish_reason"] == "length"
    assert r["settings"]["temperature"] == 0.8 and r["settings"]["top_k"] == 10
    assert isinstance(r["text"], str) and r["prompt"] == "First Citizen:\n"
  assert len({r["text"] for r in rows}) > 1


@pytest.mark.parametrize("input_table", [True, False])
def test_same_seed_same_output_whatever_the_batching(tiny_run, tmp_path, input_table,
                                                     monkeypatch):
  if not input_table:  # a model too large for the bottom layer's input table
    from dataspec import serving
    monkeypatch.setattr(serving, "INPUT_TABLE_MAX_FLOATS", 0)
  prompts = _prompts_file(tmp_path, ["ROMEO:", "What say you", "A"])
  runs = []
  for i, batch_size in enumerate((1, 4, 64)):
    out = tmp_path / f"b{i}.jsonl"
    generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2,
                         batch_size=batch_size, seed=7, top_p=0.9))
    runs.append([(r["id"], r["sample_index"], r["text"]) for r in _read(out)])
  assert runs[0] == runs[1] == runs[2]
  out = tmp_path / "other.jsonl"
  generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2, seed=8))
  assert [r["text"] for r in _read(out)] != [t for _, _, t in runs[0]]


def test_bfloat16_products_same_output_whatever_the_batching(tiny_run, tmp_path):
  """--precision=bfloat16: the products in bfloat16, recorded in the
  settings; still a function of (seed, prompt, sample, position) only."""
  prompts = _prompts_file(tmp_path, ["ROMEO:", "What say you", "A"])
  runs = []
  for i, batch_size in enumerate((1, 4, 64)):
    out = tmp_path / f"b{i}.jsonl"
    generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2,
                         batch_size=batch_size, seed=7, precision="bfloat16"))
    rows = _read(out)
    assert {r["settings"]["precision"] for r in rows} == {"bfloat16"}
    runs.append([(r["id"], r["sample_index"], r["text"]) for r in rows])
  assert runs[0] == runs[1] == runs[2]
  with pytest.raises(ValueError, match="--precision"):
    _config(tiny_run[0], tmp_path / "x.jsonl", precision="float16")
  # The flag's choices are the ones serving takes (a twin: the config
  # module does not import TensorFlow).
  from dataspec import serving
  assert config_lib.PRECISIONS == serving.PRECISIONS


def test_fused_decode_ops_same_output_whatever_the_batching(tiny_run, tmp_path):
  """--decode_ops=fused: each layer's step in the compiled op, recorded in
  the settings; a function of (seed, prompt, sample, position) only, and
  here the default path's very text (they differ by float rounding)."""
  from dataspec import decode_ops
  if not decode_ops.runs_here():
    pytest.skip("the fused decode op needs an x86-64 CPU with AVX2 and FMA")
  prompts = _prompts_file(tmp_path, ["ROMEO:", "What say you", "A"])
  runs = []
  for i, (batch_size, ops) in enumerate(((1, "fused"), (4, "fused"), (64, "fused"),
                                         (64, "tensorflow"))):
    out = tmp_path / f"b{i}.jsonl"
    generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2,
                         batch_size=batch_size, seed=7, decode_ops=ops))
    rows = _read(out)
    assert {r["settings"]["decode_ops"] for r in rows} == {ops}
    runs.append([(r["id"], r["sample_index"], r["text"]) for r in rows])
  assert runs[0] == runs[1] == runs[2] == runs[3]
  with pytest.raises(ValueError, match="--decode_ops"):
    _config(tiny_run[0], tmp_path / "x.jsonl", decode_ops="xla")
  from dataspec import serving
  assert config_lib.DECODE_OPS == serving.DECODE_OPS


def test_fused_bf16_same_output_whatever_the_batching(tiny_run, tmp_path, monkeypatch):
  """--decode_ops=fused --precision=bfloat16 (the layers' products on AMX):
  both recorded in the settings; a function of (seed, prompt, sample,
  position) only. Without AMX, a flag error before any work."""
  from dataspec import decode_ops
  if decode_ops.amx_runs_here():
    prompts = _prompts_file(tmp_path, ["ROMEO:", "What say you", "A"])
    runs = []
    for i, batch_size in enumerate((1, 4, 64)):
      out = tmp_path / f"b{i}.jsonl"
      generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2,
                           batch_size=batch_size, seed=7, decode_ops="fused",
                           precision="bfloat16"))
      rows = _read(out)
      assert {(r["settings"]["decode_ops"], r["settings"]["precision"]) for r in rows} == {
          ("fused", "bfloat16")}
      runs.append([(r["id"], r["sample_index"], r["text"]) for r in rows])
    assert runs[0] == runs[1] == runs[2]
  monkeypatch.setattr(config_lib, "has_amx_bf16", lambda: False)
  with pytest.raises(ValueError, match="--decode_ops=fused with --precision=bfloat16 runs its "
                                       "products on AMX, which this CPU has not"):
    _config(tiny_run[0], tmp_path / "x.jsonl", decode_ops="fused", precision="bfloat16")


@pytest.mark.parametrize("ops,threads", [("fused", "1"), ("tensorflow", None)])
def test_fused_decoding_asks_for_one_inter_op_thread(tiny_run, tmp_path, monkeypatch, ops,
                                                     threads):
  """--decode_ops=fused asks TensorFlow for one inter-op thread before any
  op (dataspec.decode_ops.use_one_inter_op_thread, whose own test shows
  TensorFlow taking it); the TensorFlow path keeps TensorFlow's default."""
  from dataspec import decode_ops
  if ops == "fused" and not decode_ops.runs_here():
    pytest.skip("the fused decode op needs an x86-64 CPU with AVX2 and FMA")
  monkeypatch.delenv(decode_ops.INTER_OP_ENV, raising=False)  # conftest restores it after
  generate.run(_config(tiny_run[0], tmp_path / "s.jsonl", decode_ops=ops, max_new_tokens=4))
  assert os.environ.get(decode_ops.INTER_OP_ENV) == threads


def test_fused_decode_ops_refused_on_a_gpu_machine(tiny_run, tmp_path, monkeypatch):
  """The fused ops run on the CPU only: with GPUs the job says so before
  it loads the model, and writes nothing."""
  import tensorflow as tf
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: ["/physical_device:GPU:0"] if kind == "GPU" else real(kind))
  out = tmp_path / "s.jsonl"
  with pytest.raises(ValueError, match="--decode_ops=fused decodes on the CPU; this machine has 1"):
    generate.run(_config(tiny_run[0], out, decode_ops="fused"))
  assert not out.exists()


def test_rows_with_the_same_prompt_share_a_prefill_and_match_lone_rows(tiny_run, tmp_path):
  # Repeats apart from each other and next to each other, of different
  # lengths, one with a character the vocabulary lacks: one prefill per
  # distinct prompt, copied to its rows, must give every row what it gets alone.
  prompts = _prompts_file(tmp_path, ["ROMEO:", "A\u263a", "What say you", "ROMEO:", "A\u263a"])
  runs = []
  for batch_size in (1, 10):
    out = tmp_path / f"b{batch_size}.jsonl"
    generate.run(_config(tiny_run[0], out, prompts=str(prompts), num_samples=2,
                         batch_size=batch_size, seed=3))
    runs.append(_read(out))
  assert runs[0] == runs[1]
  assert [r["unknown_prompt_tokens"] for r in runs[1]] == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
  assert len({r["text"] for r in runs[1]}) > 3


def test_greedy_equals_top_k_1_and_long_and_unknown_prompts(tiny_run, tmp_path):
  long_prompt = "To be, or not to be, that is the question. " * 20  # > window (32)
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  generate.run(_config(tiny_run[0], a, prompt=long_prompt + "\u2603\u00e9", greedy=True))
  generate.run(_config(tiny_run[0], b, prompt=long_prompt + "\u2603\u00e9", top_k=1))
  ra, rb = _read(a)[0], _read(b)[0]
  assert ra["text"] == rb["text"]
  assert ra["unknown_prompt_tokens"] == 2  # snowman and é are not in the vocab


def test_stop_string_and_end_token(tiny_run, tmp_path):
  out = tmp_path / "s.jsonl"
  generate.run(_config(tiny_run[0], out, num_samples=4, max_new_tokens=200, stop=("e",)))
  for r in _read(out):
    assert "e" not in r["text"]
    assert r["finish_reason"] in ("stop", "length")
  assert any(r["finish_reason"] == "stop" for r in _read(out))


def test_shards_split_prompts_and_complete_shards_are_skipped(tiny_run, tmp_path):
  prompts = _prompts_file(tmp_path, [f"line {i}" for i in range(5)])
  whole = tmp_path / "whole.jsonl"
  generate.run(_config(tiny_run[0], whole, prompts=str(prompts)))
  outs = []
  for shard in range(2):
    outs.append(generate.run(_config(tiny_run[0], tmp_path / "out.jsonl",
                                     prompts=str(prompts), shard_index=shard,
                                     num_shards=2)))
  assert [os.path.basename(o) for o in outs] == ["out-00000-of-00002.jsonl",
                                                 "out-00001-of-00002.jsonl"]
  sharded = sorted((r["id"], r["text"]) for o in outs for r in _read(o))
  assert sharded == sorted((r["id"], r["text"]) for r in _read(whole))
  before = os.stat(outs[0]).st_mtime_ns
  generate.run(_config(tiny_run[0], tmp_path / "out.jsonl", prompts=str(prompts),
                       shard_index=0, num_shards=2))
  assert os.stat(outs[0]).st_mtime_ns == before


def test_jsonl_prompts_with_ids(tiny_run, tmp_path):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"id": "a", "prompt": "KING:"}\n\n{"id": "b", "prompt": "QUEEN:"}\n')
  out = tmp_path / "o.jsonl"
  generate.run(_config(tiny_run[0], out, prompts=str(prompts)))
  assert [(r["id"], r["prompt"]) for r in _read(out)] == [("a", "KING:"), ("b", "QUEEN:")]


def test_bad_input_fails_before_work(tiny_run, tmp_path):
  model_dir = tiny_run[0]
  out = tmp_path / "o.jsonl"
  with pytest.raises(ValueError, match="--temperature must be > 0"):
    _config(model_dir, out, temperature=0)
  _config(model_dir, out, temperature=0, greedy=True)  # fine: no sampling
  for bad in (0, 1.5):
    with pytest.raises(ValueError, match="--top_p"):
      _config(model_dir, out, top_p=bad)
  with pytest.raises(export_lib.IncompleteExportError, match="EXPORTED"):
    generate.run(_config(tmp_path / "no-model", out))
  empty = _prompts_file(tmp_path, ["", "  "], name="empty.txt")
  with pytest.raises(ValueError, match="holds no prompts"):
    generate.run(_config(model_dir, out, prompts=str(empty)))
  latin = tmp_path / "latin.txt"
  latin.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
  with pytest.raises(ValueError, match="not UTF-8 \\(line 2"):
    generate.run(_config(model_dir, out, prompts=str(latin)))
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"id": 1, "prompt": "x"}\n{"id": 2}\n')
  with pytest.raises(ValueError, match="line 2"):
    generate.run(_config(model_dir, out, prompts=str(bad_json)))
  locked = unwritable_dir(tmp_path)
  with pytest.raises(PermissionError, match="Cannot write"):
    generate.run(_config(model_dir, locked / "o.jsonl"))
  assert not out.exists()


def test_incomplete_export_is_refused(tiny_run, tmp_path):
  import shutil
  copy = tmp_path / "m"
  shutil.copytree(tiny_run[0] / "export", copy / "export")
  os.remove(copy / "export" / "EXPORTED")
  with pytest.raises(export_lib.IncompleteExportError):
    generate.run(_config(copy, tmp_path / "o.jsonl"))


def test_main_with_flags_and_job_completion_index(tiny_run, tmp_path, monkeypatch):
  monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
  prompts = _prompts_file(tmp_path, ["a", "b", "c"])
  with flagsaver.flagsaver():
    main_lib.parse_flags(["prog", f"--model_dir={tiny_run[0]}", f"--prompts={prompts}",
                          f"--output={tmp_path / 'o.jsonl'}", "--num_shards=2",
                          "--max_new_tokens=5", "--stop=<eos>"])
    main_lib.main(["prog"])
  rows = _read(tmp_path / "o-00001-of-00002.jsonl")
  assert [r["id"] for r in rows] == ["2"]
  with flagsaver.flagsaver():
    main_lib.parse_flags(["prog", f"--model_dir={tiny_run[0]}", "--prompt=x",
                          f"--output={tmp_path / 'p.jsonl'}", "--shard_index=3",
                          "--num_shards=2"])
    with pytest.raises(app.UsageError, match="--shard_index=3"):
      main_lib.main(["prog"])
