"""Worker processes on 127.0.0.1 train together with TF_CONFIG: agreement,
preemption of one worker (SIGTERM), a frozen worker (SIGSTOP) and a killed
one (kill -9), each followed by a restart that resumes and finishes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from testutil import REPO

_SCRIPT = os.path.join(REPO, "tests", "trainer", "mw_worker.py")


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


class Cluster:
  """Two worker processes; their output goes to log files."""

  def __init__(self, tmp_path, dataset_dir, model_dir, tag, **overrides):
    ports = _free_ports(2)
    self.hosts = [f"127.0.0.1:{p}" for p in ports]
    self.logs = [tmp_path / f"{tag}-w{i}.log" for i in range(2)]
    self.outs = [tmp_path / f"{tag}-w{i}.npz" for i in range(2)]
    self.procs = []
    for index in range(2):
      env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="",
                 TF_CONFIG=json.dumps({"cluster": {"worker": self.hosts},
                                       "task": {"type": "worker", "index": index}}))
      with open(self.logs[index], "w") as log:
        self.procs.append(subprocess.Popen(
            [sys.executable, _SCRIPT, str(dataset_dir), str(model_dir),
             str(self.outs[index]), json.dumps(overrides)],
            env=env, stdout=log, stderr=subprocess.STDOUT))

  def log(self, index):
    return self.logs[index].read_text()

  def wait_for_step(self, step, timeout=180):
    """Waits until worker 0 logged training past `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      done = [int(m) for m in re.findall(r"step (\d+)/", self.log(0))]
      if done and max(done) >= step:
        return max(done)
      assert all(p.poll() is None for p in self.procs), self.log(0)[-3000:]
      time.sleep(0.2)
    raise AssertionError("no progress: " + self.log(0)[-3000:])

  def wait(self, timeout=240):
    codes = []
    for p in self.procs:
      try:
        codes.append(p.wait(timeout=timeout))
      except subprocess.TimeoutExpired:
        self.kill()
        raise
    return codes

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _checkpoint_steps(model_dir):
  names = os.listdir(model_dir / "checkpoints")
  return sorted({int(m.group(1)) for n in names for m in [re.match(r"ckpt-(\d+)\.index$", n)]
                 if m})


def _assert_same_weights(cluster):
  w0, w1 = np.load(cluster.outs[0]), np.load(cluster.outs[1])
  assert len(w0.files) == len(w1.files) > 3
  for name in w0.files:
    np.testing.assert_allclose(w0[name], w1[name], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_workers_agree_on_weights(tiny_dataset, tmp_path):
  cluster = Cluster(tmp_path, tiny_dataset, tmp_path / "model", "run")
  codes = cluster.wait()
  assert codes == [0, 0], cluster.log(0)[-3000:] + cluster.log(1)[-3000:]
  _assert_same_weights(cluster)
  # Only the chief (worker 0) writes the run's files.
  assert os.path.exists(tmp_path / "model" / "export" / "EXPORTED")
  assert os.path.exists(tmp_path / "model" / "checkpoints" / "ckpt-6.index")
  assert "step 6/6" in cluster.log(0)


# Long enough to be interrupted; checkpoints only when preempted (or every
# 40 steps where a crash has to resume from one).
_LONG = dict(train_steps=600, log_every=2, eval_every=600, checkpoint_every=10_000)
# Restarts finish this many steps past the checkpoint they resume from (a
# changed --train_steps is allowed on resume), not at step 600: the test is
# the resume, not 500 more steps.
_MORE = 20


def _restart_and_finish(tiny_dataset, tmp_path, model_dir, settings, resume_step):
  """Restarts both workers on model_dir: they resume from resume_step and
  finish _MORE steps later with the same weights."""
  end = resume_step + _MORE
  again = Cluster(tmp_path, tiny_dataset, model_dir, "second", **dict(settings, train_steps=end))
  codes = again.wait()
  assert codes == [0, 0], again.log(0)[-3000:] + again.log(1)[-3000:]
  for worker in (0, 1):
    assert f"Resuming at step {resume_step} of {end}" in again.log(worker)
  assert f"step {end}/{end}" in again.log(0)
  _assert_same_weights(again)


@pytest.mark.slow
def test_sigterm_to_one_worker_checkpoints_all_at_one_step(tiny_dataset, tmp_path):
  model_dir = tmp_path / "model"
  cluster = Cluster(tmp_path, tiny_dataset, model_dir, "first", **_LONG)
  cluster.wait_for_step(20)
  cluster.procs[1].send_signal(signal.SIGTERM)  # the non-chief, as Kubernetes would
  codes = cluster.wait()
  logs = cluster.log(0) + cluster.log(1)
  assert codes == [143, 143], logs[-4000:]
  steps = _checkpoint_steps(model_dir)
  assert len(steps) == 1 and 20 <= steps[0] < 600, steps
  saved = [int(s) for s in re.findall(r"Preempted at step (\d+): every worker", logs)]
  assert saved == [steps[0], steps[0]], saved  # both workers, the same step
  _restart_and_finish(tiny_dataset, tmp_path, model_dir, _LONG, steps[0])


def _lost_worker_then_restart(tiny_dataset, tmp_path, stop_signal):
  model_dir = tmp_path / "model"
  settings = dict(_LONG, checkpoint_every=40, collective_timeout=15)
  cluster = Cluster(tmp_path, tiny_dataset, model_dir, "first", **settings)
  cluster.wait_for_step(50)
  start = time.time()
  cluster.procs[1].send_signal(stop_signal)
  try:
    code = cluster.procs[0].wait(timeout=120)
  finally:
    cluster.kill()  # the frozen worker, which never exits by itself
  waited = time.time() - start
  assert code not in (0, 143), cluster.log(0)[-3000:]
  print(f"worker 0 exited {code} {waited:.1f} s after {stop_signal!r} to worker 1")
  assert waited < 15 + 60, waited  # the bound, plus time to tear down
  assert re.search(rf"Lost contact with worker 1 \({cluster.hosts[1]}\)|"
                   rf"{cluster.hosts[1]}|task:1|task 1", cluster.log(0)), cluster.log(0)[-3000:]
  steps = _checkpoint_steps(model_dir)
  assert steps and steps[-1] >= 40
  _restart_and_finish(tiny_dataset, tmp_path, model_dir, settings, steps[-1])
  return cluster


@pytest.mark.slow
def test_frozen_worker_fails_the_run_within_the_timeout(tiny_dataset, tmp_path):
  cluster = _lost_worker_then_restart(tiny_dataset, tmp_path, signal.SIGSTOP)
  assert f"Lost contact with worker 1 ({cluster.hosts[1]})" in cluster.log(0)


@pytest.mark.slow
def test_killed_worker_fails_the_run_and_a_restart_finishes(tiny_dataset, tmp_path):
  _lost_worker_then_restart(tiny_dataset, tmp_path, signal.SIGKILL)
