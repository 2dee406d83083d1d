"""dataspec.tf_allocator: asked for before the first op, TensorFlow's CPU
tensors come from its BFC allocator (which keeps statistics); the user's own
setting wins."""

import os

import pytest

from dataspec import tf_allocator
from testutil import REPO, last_line, run_python

_PROBE = r"""
import os, sys
sys.path.insert(0, {root!r})
from dataspec import tf_allocator
{setup}
import tensorflow as tf
x = tf.zeros([1024, 1024]) + 1.0  # 4 MB
del x
print(tf_allocator.peak_bytes())
"""


@pytest.mark.parametrize("setup,bfc", [
    ("assert tf_allocator.use_bfc_allocator()", True),
    ("os.environ[tf_allocator.BFC_ENV] = 'false'; assert not tf_allocator.use_bfc_allocator()",
     False),
    ("", False),  # TensorFlow's default allocator: the control
    # too late: an op already created the CPU allocator
    ("import tensorflow as tf; tf.zeros([2]) + 1.0; tf_allocator.use_bfc_allocator()", False),
])
def test_bfc_allocator_serves_cpu_tensors(setup, bfc):
  env = {k: v for k, v in os.environ.items() if k != tf_allocator.BFC_ENV}
  # With oneDNN's ops on (TensorFlow's default on CPUs with AVX-512 VNNI,
  # BF16 or AMX) TensorFlow's own CPU allocator is oneDNN's, which keeps
  # statistics too, so the control could not tell the two apart.
  env["TF_ENABLE_ONEDNN_OPTS"] = "0"
  peak = last_line(run_python(_PROBE.format(root=REPO, setup=setup), env=env))
  if bfc:
    assert int(peak) >= 4 * 2**20
  else:
    assert peak == "None"
