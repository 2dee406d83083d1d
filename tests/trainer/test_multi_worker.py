"""Two worker processes on 127.0.0.1 train together with TF_CONFIG."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from testutil import REPO


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


@pytest.mark.slow
def test_two_workers_agree_on_weights(tiny_dataset, tmp_path):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  script = os.path.join(REPO, "tests", "trainer", "mw_worker.py")
  procs = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen(
        [sys.executable, script, str(tiny_dataset), str(tmp_path / "model"),
         str(tmp_path / f"w{index}.npz")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
  assert len(w0.files) == len(w1.files) > 3
  for name in w0.files:
    np.testing.assert_allclose(w0[name], w1[name], rtol=1e-6, atol=1e-7)
  # Only the chief (worker 0) writes the run's files.
  assert os.path.exists(tmp_path / "model" / "export" / "EXPORTED")
  assert os.path.exists(tmp_path / "model" / "checkpoints" / "ckpt-6.index")
  assert "step 6/6" in outputs[0]
