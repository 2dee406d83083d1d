"""Every stage on gs:// against a real GCS emulator (fake-gcs-server)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from beam_preprocess import config as pre_config
from beam_preprocess import pipeline
from dataspec import metadata as M
from dataspec import storage
from dataspec import tokenizer
from generate import config as gen_config
from generate import evaluate
from generate import generate
from trainer import checkpoints
from trainer import config as train_config
from trainer import train
from gcs import FlakyProxy
from testutil import BEAM_ARGS, REPO, shakespeare_text
from conftest import SMALL_MODEL


def test_storage_round_trip_and_missing_bucket(bucket):
  path = f"{bucket}/a/b.txt"
  assert not storage.exists(path)
  storage.write_text(path, "héllo\n")
  assert storage.exists(path) and storage.read_text(path) == "héllo\n"
  storage.write_text(f"{bucket}/a/c.bin", "x")
  assert storage.list_dir(f"{bucket}/a") == [f"{bucket}/a/b.txt", f"{bucket}/a/c.bin"]
  assert storage.glob(f"{bucket}/a/*.txt") == [path]
  storage.delete(path)
  assert not storage.exists(path)
  with pytest.raises(storage.StorageError, match="gs://no-such-bucket-x"):
    storage.check_writable("gs://no-such-bucket-x/run")
  with pytest.raises(FileNotFoundError, match=f"{bucket}/missing"):
    storage.read_text(f"{bucket}/missing")


def _preprocess(corpus, output_dir, **kw):
  config = pre_config.PreprocessConfig(
      input=(corpus,), output_dir=output_dir,
      tokenizer=tokenizer.TokenizerSpec(type="char"), window_length=32,
      split_mode="tail", validation_fraction=0.1, chunk_bytes=16384, **kw)
  return pipeline.run(config, pipeline_args=BEAM_ARGS)


@pytest.mark.slow
def test_full_chain_on_gcs(bucket, tmp_path):
  corpus = f"{bucket}/corpus/shakespeare.txt"
  storage.write_text(corpus, shakespeare_text(60_000))
  meta = _preprocess(corpus, f"{bucket}/data")
  assert meta.splits["train"].windows > 1000
  assert M.load_dataset_metadata(f"{bucket}/data").vocab_size == meta.vocab_size
  model_dir = f"{bucket}/model"
  config = train_config.TrainConfig(dataset_dir=f"{bucket}/data", model_dir=model_dir,
                                    train_steps=20, eval_every=20,
                                    local_dir=str(tmp_path / "scratch"), **SMALL_MODEL)
  result = train.run(config)
  assert result["step"] == 20
  names = storage.list_dir(model_dir)
  assert f"{model_dir}/checkpoints/ckpt-20.COMMITTED" in names
  assert f"{model_dir}/export/EXPORTED" in names
  assert any("/tensorboard/train/events.out.tfevents" in n for n in names)
  prompts = f"{bucket}/prompts.txt"
  storage.write_text(prompts, "ROMEO:\nJULIET:\n")
  out = generate.run(gen_config.GenerateConfig(
      model_dir=model_dir, prompts=prompts, output=f"{bucket}/samples.jsonl",
      max_new_tokens=10, num_samples=2))
  rows = [json.loads(l) for l in storage.read_text(out).splitlines()]
  assert len(rows) == 4 and all(r["num_tokens"] == 10 for r in rows)
  assert f"{model_dir}/export/saved_model/saved_model.pb" in names
  assert f"{model_dir}/export/model.keras" in names
  # Evaluation: the export, the dataset's document list, the source ranges
  # and the report, all on gs://.
  report = evaluate.run(gen_config.EvalConfig(
      model_dir=model_dir, dataset_dir=f"{bucket}/data", split="validation",
      output=f"{bucket}/eval/validation.json"))
  assert report["total"]["tokens"] == meta.splits["validation"].tokens
  assert json.loads(storage.read_text(f"{bucket}/eval/validation.json"))["total"] == \
      report["total"]
  whole = evaluate.run(gen_config.EvalConfig(
      model_dir=model_dir, input=(f"{bucket}/corpus/",), output=f"{bucket}/eval/all.json"))
  assert whole["files"][0]["path"] == corpus
  assert whole["total"]["bytes"] == len(shakespeare_text(60_000).encode())


def test_missing_bucket_fails_before_work(gcs_emulator, tiny_corpus, tiny_dataset, tmp_path):
  with pytest.raises(storage.StorageError, match="gs://missing-bucket-1"):
    _preprocess(str(tiny_corpus), "gs://missing-bucket-1/data")
  with pytest.raises(FileNotFoundError, match="--input=gs://missing-bucket-2"):
    _preprocess("gs://missing-bucket-2/corpus.txt", str(tmp_path / "out"))
  with pytest.raises(storage.StorageError, match="gs://missing-bucket-4"):
    train.Trainer(train_config.TrainConfig(dataset_dir=str(tiny_dataset),
                                           model_dir="gs://missing-bucket-4/m", **SMALL_MODEL))
  with pytest.raises(storage.StorageError, match="gs://missing-bucket-3"):
    generate.run(gen_config.GenerateConfig(model_dir="gs://missing-bucket-3/model",
                                           prompt="x", output=str(tmp_path / "o.jsonl")))


def test_partial_upload_is_never_restored(bucket, tmp_path):
  variable = tf.Variable(1.0)
  ckpt = tf.train.Checkpoint(v=variable)
  store = checkpoints.CheckpointStore(directory=f"{bucket}/ckpts", checkpoint=ckpt, keep=3)
  store.save(5)
  store.wait()
  variable.assign(2.0)
  # A process that died mid-upload of step 10: files, but no marker.
  local = tmp_path / "partial"
  path = tf.train.Checkpoint(v=variable).write(str(local / "ckpt-10"))
  for name in os.listdir(local):
    if name.startswith("ckpt-10"):
      storage.upload_file(str(local / name), f"{bucket}/ckpts/{name}")
  assert store.committed_steps() == [5]
  assert store.restore_latest() == 5
  assert float(variable.numpy()) == 1.0
  store.close()
  del path


@pytest.mark.slow
def test_resume_after_kill_with_gcs_model_dir(bucket, tiny_dataset, tmp_path):
  model_dir = f"{bucket}/model"
  steps = 40
  flags = dict(SMALL_MODEL, checkpoint_every=5, log_every=5, eval_every=steps,
               train_steps=steps, dataset_dir=str(tiny_dataset), model_dir=model_dir,
               seed=3, local_dir=str(tmp_path / "scratch"))
  cmd = [sys.executable, "-m", "trainer.main"] + [f"--{k}={v}" for k, v in flags.items()]
  env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
  # The same run on a local model_dir, uninterrupted, goes alongside (each
  # process spends its first seconds starting TensorFlow) and must end at
  # the same loss.
  local = dict(flags, model_dir=str(tmp_path / "local"))
  with open(tmp_path / "local.log", "w") as log:
    local_proc = subprocess.Popen([sys.executable, "-m", "trainer.main"] +
                                  [f"--{k}={v}" for k, v in local.items()], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
  try:
    store_dir = f"{model_dir}/checkpoints"
    probe = checkpoints.CheckpointStore(directory=store_dir, checkpoint=tf.train.Checkpoint(),
                                        keep=1)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (probe.latest_step() or 0) < 10:
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = probe.latest_step()
    assert killed_at and killed_at < steps
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert f"Resuming at step {killed_at}" in out.stderr
    training = json.loads(storage.read_text(f"{model_dir}/export/training.json"))
    assert training["step"] == steps
    assert local_proc.wait(timeout=300) == 0, (tmp_path / "local.log").read_text()[-3000:]
  finally:
    if local_proc.poll() is None:
      local_proc.kill()
      local_proc.wait()
  local_training = json.load(open(tmp_path / "local" / "export" / "training.json"))
  assert abs(local_training["validation"]["loss"] - training["validation"]["loss"]) < 1e-3
  probe.close()


def test_transient_faults_are_retried_without_loss(bucket, gcs_emulator, monkeypatch, tmp_path):
  proxy = FlakyProxy(gcs_emulator.port, failure_rate=0.2, seed=1)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
  try:
    payloads = {f"{bucket}/flaky/{i}.bin": os.urandom(1000 + i) for i in range(20)}
    for path, data in payloads.items():
      storage.write_bytes(path, data)
    for path, data in payloads.items():
      assert storage.read_bytes(path) == data
    variable = tf.Variable(np.arange(10.0))
    store = checkpoints.CheckpointStore(directory=f"{bucket}/flaky-ckpt",
                                        checkpoint=tf.train.Checkpoint(v=variable), keep=2)
    for step in (1, 2, 3):
      variable.assign_add(np.ones(10))
      store.save(step)
    store.wait()
    variable.assign(np.zeros(10))
    assert store.restore_latest() == 3
    np.testing.assert_array_equal(variable.numpy(), np.arange(10.0) + 3)
    assert store.committed_steps() == [2, 3]
    store.close()
  finally:
    proxy.stop()
  assert proxy.failures >= 5, (proxy.failures, proxy.requests)
