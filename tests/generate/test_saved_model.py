"""The exported SavedModel and model.keras, used by processes that have no
project code: same text as textgen-generate, same scores as textgen-eval."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dataspec import export as export_lib
from dataspec import tokenizer as T
from generate import config as config_lib
from generate import evaluate
from generate import generate
from trainer import config as train_config
from trainer import train
from testutil import BEAM_ARGS, REPO, last_line, run_python, shakespeare_text
from conftest import SMALL_MODEL

# Runs in a fresh interpreter: project packages cannot be imported (a finder
# refuses them, and the repository is off sys.path), so whatever works here
# works with only TensorFlow (and Keras) installed.
_CLEAN_PRELUDE = r"""
import importlib.abc, json, sys
class _NoProjectCode(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ("dataspec", "trainer", "generate", "beam_preprocess"):
      raise ImportError("project code imported: " + name)
sys.meta_path.insert(0, _NoProjectCode())
sys.path = [p for p in sys.path if p not in ("", %r)]
request = json.load(open(sys.argv[1]))
""" % REPO

_USE_SAVED_MODEL = _CLEAN_PRELUDE + r"""
import tensorflow as tf
if request.get("subword"):
  import tensorflow_text  # registers the SentencePiece op (not project code)
model = tf.saved_model.load(request["saved_model"])
generate = model.signatures["generate"]
assert model.signatures["serving_default"].structured_outputs.keys() == \
    generate.structured_outputs.keys()
results = {"generate": [], "score": None}
for settings in request["settings"]:
  out = generate(prompts=tf.constant(request["prompts"]),
                 max_new_tokens=tf.constant(settings["max_new_tokens"]),
                 temperature=tf.constant(settings["temperature"], tf.float32),
                 top_k=tf.constant(settings["top_k"]),
                 top_p=tf.constant(settings["top_p"], tf.float32),
                 greedy=tf.constant(settings["greedy"]),
                 seed=tf.constant(settings["seed"], tf.int64),
                 stop=tf.constant(settings["stop"], tf.string))
  results["generate"].append({
      "text": [t.decode("utf-8") for t in out["text"].numpy()],
      "num_tokens": out["num_tokens"].numpy().tolist(),
      "finish_reason": [r.decode() for r in out["finish_reason"].numpy()]})
score = model.signatures["score"](texts=tf.constant(request["texts"]))
results["score"] = {k: v.numpy().tolist() for k, v in score.items()}
results["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in
                            ("dataspec", "trainer", "generate", "beam_preprocess"))
print(json.dumps(results))
"""

_USE_KERAS_FILE = _CLEAN_PRELUDE + r"""
import keras, numpy as np
model = keras.saving.load_model(request["keras_model"])
print(json.dumps(model(np.array(request["ids"], np.int32)).numpy().tolist()))
"""

SETTINGS = [
    dict(max_new_tokens=60, temperature=0.8, top_k=0, top_p=1.0, greedy=False, seed=3,
         stop=[]),
    dict(max_new_tokens=80, temperature=1.0, top_k=5, top_p=0.9, greedy=False, seed=7,
         stop=["e ", "<eos>", "\n\n"]),
    dict(max_new_tokens=40, temperature=1.0, top_k=0, top_p=1.0, greedy=True, seed=0,
         stop=["the"]),
]
# "Cafe\u0301 ...": the job normalizes prompts in Python, the SavedModel in
# its graph (a decomposed accent, full-width letters for NFKC, a final
# sigma and capitals for lowercase, a Windows line end).
PROMPTS = ["ROMEO:", "First Citizen:\nWe are", "To be, or not to be, " * 10, "café ☃",
           "KING:", "Cafe\u0301 ＡＢＣ ΟΔΟΣ.\r\nAnd"]


def _run_clean(script, request, tmp_path):
  path = tmp_path / "request.json"
  path.write_text(json.dumps(request))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  return json.loads(last_line(run_python(script, str(path), cwd=tmp_path, env=env)))


@pytest.fixture(scope="module")
def word_run(tmp_path_factory):
  """A word model (lowercase, numbers replaced, NFKC) trained a few steps,
  so the SavedModel's word tokenizer is used end to end."""
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  root = tmp_path_factory.mktemp("word")
  corpus = root / "corpus.txt"
  corpus.write_text(shakespeare_text(60_000) + "In 1,600 the ＡＢＣ café served 42 guests.\n")
  pipeline.run(pre_config.PreprocessConfig(
      input=(str(corpus),), output_dir=str(root / "data"),
      tokenizer=T.TokenizerSpec(type="word", lowercase=True, numbers="replace",
                                normalization="nfkc"),
      window_length=16, split_mode="tail", validation_fraction=0.1,
      max_vocab_size=600), pipeline_args=BEAM_ARGS)
  config = train_config.TrainConfig(
      dataset_dir=str(root / "data"), model_dir=str(root / "model"), train_steps=10,
      strategy="one_device", tie_embeddings=True,
      **dict(SMALL_MODEL, embedding_dim=16, units=16))
  train.run(config)
  return root / "model", root / "data"


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
  """A bpe model (lowercase) trained a few steps: SentencePiece in the
  SavedModel end to end."""
  from beam_preprocess import config as pre_config
  from beam_preprocess import pipeline
  root = tmp_path_factory.mktemp("bpe")
  corpus = root / "corpus.txt"
  corpus.write_text(shakespeare_text(60_000) + "Un café, s'il vous plaît ☃.\n")
  pipeline.run(pre_config.PreprocessConfig(
      input=(str(corpus),), output_dir=str(root / "data"),
      tokenizer=T.TokenizerSpec(type="bpe", lowercase=True),
      window_length=16, split_mode="tail", validation_fraction=0.1,
      max_vocab_size=500), pipeline_args=BEAM_ARGS)
  config = train_config.TrainConfig(
      dataset_dir=str(root / "data"), model_dir=str(root / "model"), train_steps=10,
      strategy="one_device", **dict(SMALL_MODEL, embedding_dim=16, units=16))
  train.run(config)
  return root / "model", root / "data"


def _compare_with_textgen_generate(model_dir, tmp_path, subword=False):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n"
                             for i, p in enumerate(PROMPTS)))
  texts = [shakespeare_text(3000)[1000:], "", "x", "Hello there.\nHow are you?"]
  got = _run_clean(_USE_SAVED_MODEL, {
      "saved_model": str(model_dir / "export" / "saved_model"), "prompts": PROMPTS,
      "settings": SETTINGS, "texts": texts, "subword": subword}, tmp_path)
  assert got["modules"] == []
  for i, settings in enumerate(SETTINGS):
    out = tmp_path / f"samples{i}.jsonl"
    generate.run(config_lib.GenerateConfig(
        model_dir=str(model_dir), output=str(out), prompts=str(prompts),
        batch_size=2, **dict(settings, stop=tuple(settings["stop"]))))
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == got["generate"][i]["text"]
    assert [r["num_tokens"] for r in rows] == got["generate"][i]["num_tokens"]
    assert [r["finish_reason"] for r in rows] == got["generate"][i]["finish_reason"]
  stopped = [r for g in got["generate"] for r in g["finish_reason"] if r == "stop"]
  assert stopped, "no stop string was ever hit: the settings test too little"
  # score == textgen-eval on the same texts, as files
  files = []
  for i, text in enumerate(texts):
    files.append(tmp_path / f"doc{i}.txt")
    files[-1].write_text(text, encoding="utf-8")
  report = evaluate.run(config_lib.EvalConfig(
      model_dir=str(model_dir), output=str(tmp_path / "eval.json"),
      input=tuple(str(f) for f in files), batch_size=3, chunk_tokens=64))
  by_path = {r["path"]: r for r in report["files"]}
  skipped = {s["path"] for s in report["skipped_files"]}
  score = got["score"]
  for i, f in enumerate(files):
    if not texts[i]:
      assert str(f) in skipped and score["tokens"][i] == 0
      continue
    r = by_path[str(f)]
    assert r["tokens"] == score["tokens"][i]
    assert r["bytes"] == score["bytes"][i] == len(texts[i].encode())
    assert r["nll"] == pytest.approx(score["nll"][i], rel=1e-5, abs=1e-4)
    assert r["bits_per_byte"] == pytest.approx(score["bits_per_byte"][i], rel=1e-5)
  return got


def test_saved_model_generates_and_scores_like_the_jobs_char(tiny_run, tmp_path):
  got = _compare_with_textgen_generate(tiny_run[0], tmp_path)
  assert got["score"]["tokens"][0] == len(shakespeare_text(3000)[1000:])  # all scored


def test_saved_model_generates_and_scores_like_the_jobs_word(word_run, tmp_path):
  got = _compare_with_textgen_generate(word_run[0], tmp_path)
  assert got["score"]["unknown_tokens"][3] > 0  # "hello" is not in 600 words


def test_saved_model_generates_and_scores_like_the_jobs_bpe(bpe_run, tmp_path):
  got = _compare_with_textgen_generate(bpe_run[0], tmp_path, subword=True)
  text = shakespeare_text(3000)[1000:]
  assert 0 < got["score"]["tokens"][0] < len(text) / 2  # subwords, not chars
  assert got["score"]["unknown_tokens"] == [0, 0, 0, 0]  # byte fallback
  # The export carries the model; a swapped one is refused.
  export = bpe_run[0] / "export"
  assert (export / "tokenizer.model").exists() and not (export / "vocab.txt").exists()
  copy = tmp_path / "m"
  shutil.copytree(bpe_run[0] / "export", copy / "export")
  from dataspec import subword
  (copy / "export" / "tokenizer.model").write_bytes(subword.train_model(
      {"other": 3, "words": 2}, model_type="bpe", vocab_size=300))
  with pytest.raises(ValueError, match="tokenizer.model does not match"):
    generate.run(config_lib.GenerateConfig(model_dir=str(copy), prompt="A",
                                           output=str(tmp_path / "s.jsonl")))


def test_keras_file_opens_without_project_code(tiny_run, word_run, tmp_path):
  for model_dir in (tiny_run[0], word_run[0]):
    spec, weights, *_ = export_lib.load_export(str(model_dir / "export"))
    from trainer import model as model_lib
    model = model_lib.build_model(spec=spec)
    model_lib.load_weights(model, spec, weights)
    ids = np.random.default_rng(1).integers(3, spec.vocab_size, (2, 12)).tolist()
    got = _run_clean(_USE_KERAS_FILE, {
        "keras_model": str(model_dir / "export" / "model.keras"), "ids": ids}, tmp_path)
    np.testing.assert_allclose(np.array(got), model(np.array(ids, np.int32)).numpy(),
                               atol=1e-5)


def test_saved_model_cli_lists_and_runs_the_signatures(tiny_run, tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  saved_model = str(tiny_run[0] / "export" / "saved_model")
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  shown = subprocess.run([cli, "show", "--all", "--dir", saved_model], env=env,
                         capture_output=True, text=True, timeout=300)
  assert shown.returncode == 0, shown.stderr[-2000:]
  for name in ("generate", "score", "serving_default"):
    assert f"signature_def['{name}']" in shown.stdout
  for key in ("inputs['prompts']", "inputs['max_new_tokens']", "inputs['temperature']",
              "inputs['top_k']", "inputs['top_p']", "inputs['greedy']", "inputs['seed']",
              "inputs['stop']", "outputs['text']", "outputs['num_tokens']",
              "outputs['finish_reason']", "inputs['texts']", "outputs['nll']",
              "outputs['bits_per_byte']", "outputs['tokens']"):
    assert key in shown.stdout, key
  # The README's command.
  ran = subprocess.run(
      [cli, "run", "--dir", saved_model, "--tag_set", "serve", "--signature_def",
       "generate", "--input_exprs",
       'prompts=["ROMEO:"];max_new_tokens=40;temperature=0.8;top_k=0;top_p=1.0;'
       'greedy=False;seed=1;stop=[""]'],
      env=env, capture_output=True, text=True, timeout=300)
  assert ran.returncode == 0, ran.stderr[-2000:]
  assert "Result for output key text" in ran.stdout
  assert "[40]" in ran.stdout.split("Result for output key num_tokens:")[1]


def test_generate_signature_edges(tiny_run):
  """Batch independence, empty prompts and zero new tokens in the module the
  SavedModel is made of."""
  import tensorflow as tf
  from dataspec import serving
  spec, weights, meta, vocab, _ = export_lib.load_export(str(tiny_run[0] / "export"))
  lm = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)
  settings = dict(max_new_tokens=tf.constant(30), temperature=tf.constant(1.0),
                  top_k=tf.constant(0), top_p=tf.constant(0.95), greedy=tf.constant(False),
                  seed=tf.constant(5, tf.int64), stop=tf.constant([], tf.string))
  both = lm.generate_samples(tf.constant(["A", "B"]), tf.constant([0, 1], tf.int64),
                             tf.constant([0, 0], tf.int64), **settings)
  alone = lm.generate_samples(tf.constant(["B"]), tf.constant([1], tf.int64),
                              tf.constant([0], tf.int64), **settings)
  assert both["text"].numpy()[1] == alone["text"].numpy()[0]
  empty = lm.generate(tf.constant([""]), **settings)
  assert empty["prompt_tokens"].numpy()[0] == 0 and empty["num_tokens"].numpy()[0] == 30
  none = lm.generate(tf.constant(["A"]), **dict(settings, max_new_tokens=tf.constant(0)))
  assert none["text"].numpy().tolist() == [b""] and none["num_tokens"].numpy()[0] == 0


def test_sampler_with_fixed_settings_is_generate_samples_with_one_loop(tiny_run):
  """What textgen-generate runs (the settings fixed, one decoding loop
  traced) gives generate_samples' outputs bit for bit; its graph holds no
  switch between loops. Greedy and top-k here; plain sampling and stop
  strings are compared through the job in the tests above."""
  import tensorflow as tf
  from dataspec import serving
  for settings, loop in [
      (dict(greedy=True, top_k=0, top_p=1.0, stop=()), 0),
      (dict(greedy=True, top_k=0, top_p=0.5, stop=("<eos>",)), 0),
      (dict(greedy=False, top_k=0, top_p=1.0, stop=("<eos>", "")), 1),
      (dict(greedy=False, top_k=4, top_p=1.0, stop=()), 2),
      (dict(greedy=False, top_k=0, top_p=0.8, stop=("<eos>",)), 2),
      (dict(greedy=False, top_k=0, top_p=1.0, stop=("e", "<eos>")), 3),
      (dict(greedy=True, top_k=0, top_p=1.0, stop=("", "the")), 3)]:
    assert serving.decoding_mode(**settings) == loop, settings
  spec, weights, meta, vocab, _ = export_lib.load_export(str(tiny_run[0] / "export"))
  lm = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)
  prompts = tf.constant(["ROMEO:", "A", "", "A"])
  index, samples = tf.constant([0, 1, 2, 1], tf.int64), tf.constant([0, 0, 0, 1], tf.int64)
  for settings in [dict(greedy=True, top_k=0, top_p=1.0, stop=()),
                   dict(greedy=False, top_k=4, top_p=1.0, stop=("<eos>",))]:
    settings = dict(settings, temperature=0.9, seed=11)
    fixed = lm.sampler(**settings)
    assert "Case" not in {op.type.replace("Stateless", "") for op in
                          fixed.get_concrete_function().graph.get_operations()}
    got = fixed(prompts, index, samples, tf.constant(40))
    want = lm.generate_samples(prompts, index, samples, max_new_tokens=tf.constant(40),
                               **lm.setting_inputs(**settings))
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)


@pytest.mark.parametrize("top_k,stop,eos_bias,small_blocks", [
    (0, (), None, False), (0, ("<eos>",), -2.0, True), (3, ("<eos>",), -0.5, False)])
def test_sampled_decoding_draws_noise_in_blocks_like_one_step_at_a_time(
    tiny_run, monkeypatch, top_k, stop, eos_bias, small_blocks):
  """Decoding hashes the noise of NOISE_BLOCK positions at once (of fewer
  when the batch and vocab are large): tokens across block edges and a last
  partial block are those of a step-by-step loop by hand, whatever the block
  size; plain sampling and top-k alike. With stop=<eos> (the end token's
  output bias raised to eos_bias below the largest), rows end after their
  first end token, some before the last step and some not."""
  import tensorflow as tf
  from dataspec import serving
  spec, weights, meta, vocab, _ = export_lib.load_export(str(tiny_run[0] / "export"))
  if eos_bias is not None:
    weights = dict(weights, **{"output/bias": weights["output/bias"].copy()})
    weights["output/bias"][T.EOS_ID] = np.max(weights["output/bias"]) + eos_bias
  prompts = ["ROMEO:", "A", "What say you", "KING", "Thou"]
  new_tokens = serving.NOISE_BLOCK + 5
  settings = dict(max_new_tokens=tf.constant(new_tokens), temperature=tf.constant(0.9),
                  top_k=tf.constant(top_k), top_p=tf.constant(1.0),
                  greedy=tf.constant(False), seed=tf.constant(4, tf.int64),
                  stop=tf.constant(stop, tf.string))
  index, zeros = tf.range(5, dtype=tf.int64), tf.zeros([5], tf.int64)

  def generated():
    lm = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)
    out = lm.generate_samples(tf.constant(prompts), index, zeros, **settings)
    return lm, {k: v.numpy() for k, v in out.items()}

  lm, out = generated()
  if small_blocks:  # blocks of 3 positions: a noise budget of 3 positions of this batch
    lanes = -(-spec.vocab_size // 16) * 16
    monkeypatch.setattr(serving, "_NOISE_BLOCK_VALUES", 3 * 5 * lanes)
    for key, value in generated()[1].items():
      np.testing.assert_array_equal(value, out[key])
  ids = lm.tokenizer.encode(tf.constant(prompts))
  w = lm._read_weights()  # pylint: disable=protected-access
  logits, h, c = lm._prefill(ids.to_tensor(), tf.cast(ids.row_lengths(), tf.int32), w)  # pylint: disable=protected-access
  h, c = tuple(tf.unstack(h)), tuple(tf.unstack(c))
  seeds = serving.row_seeds(tf.constant(4, tf.int64), index, zeros)
  hand = []
  for n in range(new_tokens):
    scaled = logits / 0.9
    if top_k:
      scaled = lm._filter(scaled, tf.constant(top_k), tf.constant(1.0))  # pylint: disable=protected-access
    token = tf.argmax(scaled + serving.gumbel_noise(seeds, [n], spec.vocab_size)[0], axis=-1,
                      output_type=tf.int32)
    hand.append(token.numpy())
    logits, h, c = lm._step(token, h, c, w)  # pylint: disable=protected-access
  hand = np.stack(hand, axis=1)  # (rows, new_tokens)
  if not stop:
    np.testing.assert_array_equal(out["token_ids"], hand)
    assert (out["num_tokens"] == new_tokens).all()
    assert set(out["finish_reason"]) == {b"length"}
    return
  eos = hand == T.EOS_ID
  ends = np.where(eos.any(axis=1), eos.argmax(axis=1) + 1, new_tokens)
  assert 0 < eos.any(axis=1).sum() < len(prompts), ends  # some rows stop, some not
  np.testing.assert_array_equal(out["num_tokens"], ends)
  np.testing.assert_array_equal(out["finish_reason"],
                                np.where(eos.any(axis=1), b"stop", b"length"))
  assert out["token_ids"].shape == (5, ends.max())
  for row, end in enumerate(ends):
    np.testing.assert_array_equal(out["token_ids"][row, :end], hand[row, :end])
    assert (out["token_ids"][row, end:] == T.PAD_ID).all()
    assert out["text"][row] == lm.detokenize(tf.ragged.constant(
        [hand[row, :end - eos[row].any()].tolist()], dtype=tf.int32)).numpy()[0]


def test_prefill_runs_one_chunk_at_a_time(tiny_run):
  """The prefill's loop over chunks keeps one chunk in flight (the bottom
  layer running chunks ahead of the top one held each chunk's products: a
  batch-256 bfloat16 prefill peaked 114 MB higher), and a prompt of several
  chunks gives the same logits as a one-chunk-at-a-time loop by hand."""
  import tensorflow as tf
  from dataspec import serving
  spec, weights, meta, vocab, _ = export_lib.load_export(str(tiny_run[0] / "export"))
  lm = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab)
  text = shakespeare_text(4 * serving.PREFILL_CHUNK)
  ids = lm.tokenizer.encode(tf.constant([text[:-7], text])).to_tensor()
  assert ids.shape[1] > 2 * serving.PREFILL_CHUNK
  lengths = tf.constant([ids.shape[1] - 7, ids.shape[1]])
  w = lm._read_weights()  # pylint: disable=protected-access
  prefill = tf.function(lambda: lm._prefill(ids, lengths, lm._read_weights()))  # pylint: disable=protected-access
  graph = prefill.get_concrete_function().graph
  loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
  assert len(loops) == 1, [op.name for op in loops]  # the chunk loop; the layers' are inside
  assert loops[0].get_attr("parallel_iterations") == 1
  logits, h, c = prefill()
  h_hand, c_hand = lm._zero_state(2)  # pylint: disable=protected-access
  for start in range(0, ids.shape[1], serving.PREFILL_CHUNK):
    _, h_hand, c_hand = lm._sequence(  # pylint: disable=protected-access
        ids[:, start:start + serving.PREFILL_CHUNK],
        tf.clip_by_value(lengths - start, 0, serving.PREFILL_CHUNK), h_hand, c_hand, w,
        top_outputs=False)
  np.testing.assert_array_equal(h.numpy(), h_hand.numpy())
  np.testing.assert_array_equal(c.numpy(), c_hand.numpy())
  np.testing.assert_array_equal(logits.numpy(),
                                lm._logits(h_hand[-1], w).numpy())  # pylint: disable=protected-access


def test_old_export_without_saved_model_is_refused_by_eval(tiny_run, tmp_path):
  copy = tmp_path / "m"
  shutil.copytree(tiny_run[0] / "export", copy / "export")
  shutil.rmtree(copy / "export" / "saved_model")
  doc = tmp_path / "a.txt"
  doc.write_text("hello\n")
  with pytest.raises(ValueError, match="--export_only"):
    evaluate.run(config_lib.EvalConfig(model_dir=str(copy), output=str(tmp_path / "o.json"),
                                       input=(str(doc),)))
  # textgen-generate still works from weights.npz
  out = generate.run(config_lib.GenerateConfig(model_dir=str(copy), prompt="A",
                                               output=str(tmp_path / "s.jsonl"),
                                               max_new_tokens=5))
  assert json.loads(open(out).read())["num_tokens"] == 5
