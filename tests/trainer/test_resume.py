"""Exact resume after kill -9, SIGTERM checkpointing, partial checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import train
from testutil import REPO
from conftest import SMALL_MODEL

STEPS = 60


def _command(dataset, model_dir, steps=STEPS):
  flags = dict(SMALL_MODEL, checkpoint_every=5, log_every=5, eval_every=STEPS,
               train_steps=steps, dataset_dir=dataset, model_dir=model_dir, seed=3)
  return [sys.executable, "-m", "trainer.main"] + [f"--{k}={v}" for k, v in flags.items()]


def _env():
  return dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")


def _final(model_dir):
  training = json.loads(open(os.path.join(model_dir, "export", "training.json")).read())
  return training["step"], training["validation"]["loss"]


def _latest_step(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return int(path.rsplit("-", 1)[1]) if path else 0


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_dataset, tmp_path):
  straight = str(tmp_path / "straight")
  straight_log = tmp_path / "straight.log"
  # The uninterrupted run goes alongside the killed one (each process spends
  # most of its first seconds starting TensorFlow on one core); it is killed
  # if the test fails before waiting for it.
  with open(straight_log, "w") as log:
    straight_proc = subprocess.Popen(_command(str(tiny_dataset), straight), env=_env(),
                                     stdout=log, stderr=subprocess.STDOUT)
  try:
    resumed = str(tmp_path / "resumed")
    kill_after = random.Random().randint(5, 45)
    proc = subprocess.Popen(_command(str(tiny_dataset), resumed), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and _latest_step(resumed) < kill_after and proc.poll() is None:
      time.sleep(0.02)
    time.sleep(random.random() * 0.3)  # anywhere in a step or a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(resumed)
    assert 0 < killed_at < STEPS, "the run was not killed mid-way"
    assert not os.path.exists(os.path.join(resumed, "export", "EXPORTED"))
    out = subprocess.run(_command(str(tiny_dataset), resumed), env=_env(), check=True,
                         capture_output=True, text=True)
    assert f"Resuming at step {killed_at}" in out.stderr
    assert straight_proc.wait(timeout=300) == 0, straight_log.read_text()[-3000:]
  finally:
    if straight_proc.poll() is None:
      straight_proc.kill()
      straight_proc.wait()
  step_a, loss_a = _final(straight)
  step_b, loss_b = _final(resumed)
  assert step_a == step_b == STEPS
  assert abs(loss_a - loss_b) < 1e-3, (loss_a, loss_b)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143(tiny_dataset, tmp_path):
  model_dir = str(tmp_path / "m")
  proc = subprocess.Popen(_command(str(tiny_dataset), model_dir, steps=100_000),
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 120
  while time.time() < deadline and _latest_step(model_dir) < 5:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == train.PREEMPTED_EXIT_CODE
  assert "Preempted at step" in err
  stopped = int(err.split("Preempted at step ")[1].split(";")[0])
  assert _latest_step(model_dir) == stopped >= 5


def test_half_written_checkpoint_is_never_picked(tiny_run, tmp_path):
  import shutil
  model_dir = tmp_path / "copy"
  shutil.copytree(tiny_run[0], model_dir)
  ckpts = model_dir / "checkpoints"
  # What a kill during the save of step 50 leaves: data without the index
  # update (TensorFlow writes the `checkpoint` file last).
  (ckpts / "ckpt-50.data-00000-of-00001").write_bytes(b"\x00" * 100)
  (ckpts / "ckpt-50.index").write_bytes(b"garbage")
  config = config_lib.TrainConfig(dataset_dir=str(tiny_run[3].config.dataset_dir),
                                  model_dir=str(model_dir), train_steps=40, **SMALL_MODEL)
  trainer = train.Trainer(config)
  assert trainer.store.restore_latest() == 40
  trainer.store.close()
  trainer.best_store.close()
