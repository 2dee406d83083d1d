"""The LSTM's recurrence as compiled TensorFlow CPU ops: build and load.

`trainer/lstm_ops.cc` holds two pairs of ops (each a forward and its
gradient): the gate math of one time step, which `fused_lstm` runs inside
its loops in place of a dozen (forward) and some thirty (backward)
TensorFlow ops per step, and a layer's whole recurrence over time with the
recurrent products in Eigen, which replaces the loops where that measured
faster (`runs_whole_sequences`); there a row block's big products also run
in Eigen on one core (TextgenMatMul, its gradient registered here). They are
a C++ library built against the installed TensorFlow, whose C++ ABI changes
with every release, so they are compiled on the machine that installs the
project, not shipped:

  python -m trainer.lstm_ops      # ~15 s per variant; ./install.sh and the
                                  # container image run it

On x86-64 three variants are built, for AVX-512 CPUs (x86-64-v4), for
AVX2 CPUs (x86-64-v3) and for any x86-64 CPU, and the best one the CPU
runs is loaded. Without a built library (no compiler, another TensorFlow,
another CPU architecture) training runs
exactly as before on TensorFlow's own ops, 1.08-1.37x slower in four runs
(README "Training"), after one warning that says how to build it. Only the
training step uses them: the exported SavedModel and model.keras contain no
custom ops.
"""

import functools
import os
from typing import FrozenSet, List

from absl import logging
import tensorflow as tf

from dataspec import native_ops
from dataspec.cpuinfo import cpu_flags

_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_DIR, "lstm_ops.cc")
cpu_runs = native_ops.cpu_runs


def variants() -> List[str]:
  """The -march values built here, best first ("" = the compiler's default)."""
  if native_ops.is_x86_64():
    return ["x86-64-v4", "x86-64-v3", "x86-64"]
  return [""]


def library_path(variant: str) -> str:
  """Where `variant`'s library is (dataspec.native_ops.library_path)."""
  return native_ops.library_path(SOURCE, variant, _DIR)


def build(*, force: bool = False) -> List[str]:
  """Compiles every variant not built yet (dataspec.native_ops.build)."""
  return native_ops.build(SOURCE, variants(), _DIR, force=force)


@functools.cache
def _load():
  """(variant, ops module) of the best built variant this CPU runs, or
  (None, None) after one warning."""
  for variant in variants():
    path = library_path(variant)
    if not cpu_runs(variant) or not os.path.exists(path):
      continue
    ops = native_ops.load_library(path, "the CPU LSTM runs TensorFlow's own ops")
    if ops is None:
      return None, None
    logging.info("LSTM gate ops: %s", path)
    return variant, ops
  logging.warning(
      "LSTM gate ops not built for TensorFlow %s on this CPU (trainer/lstm_ops.py): the "
      "CPU LSTM runs TensorFlow's own ops, 1.1-1.4x slower. Build them with "
      "`python -m trainer.lstm_ops` (needs g++).", tf.__version__)
  return None, None


def load():
  """The ops module (`textgen_lstm_gates`, `textgen_lstm_gates_grad`,
  `textgen_lstm_sequence`, `textgen_lstm_sequence_grad`, `textgen_mat_mul`) of the best built
  variant this CPU runs, or None (after one warning) if there is none: the
  caller then runs TensorFlow's own ops."""
  return _load()[1]


@tf.RegisterGradient("TextgenMatMul")
def _mat_mul_grad(op, grad):
  """TextgenMatMul's gradient, in TextgenMatMul itself (TensorFlow's MatMul
  gradient with the same transposes)."""
  mat_mul = load().textgen_mat_mul
  a, b = op.inputs
  transpose_a, transpose_b = op.get_attr("transpose_a"), op.get_attr("transpose_b")
  if not transpose_a and not transpose_b:
    return (mat_mul(grad, b, transpose_b=True), mat_mul(a, grad, transpose_a=True))
  if not transpose_a:
    return (mat_mul(grad, b), mat_mul(grad, a, transpose_a=True))
  if not transpose_b:
    return (mat_mul(b, grad, transpose_b=True), mat_mul(a, grad))
  return (mat_mul(b, grad, transpose_a=True, transpose_b=True),
          mat_mul(grad, a, transpose_a=True, transpose_b=True))


def runs_whole_sequences(variant: str, flags_here: FrozenSet[str]) -> bool:
  """Whether the whole-sequence ops (whose recurrent product is Eigen's, in
  the library's instruction set) beat TensorFlow's MatMul here: the AVX2
  build on a CPU without AVX-512, and the AVX-512 build. On the AVX2 VM
  TensorFlow's MatMul (oneDNN) ran the step's (rows, units) x (units, 4
  units) product at 44 GFLOP/s on one core and Eigen's at 74-89 (AMD EPYC,
  2026-12-02). On AVX-512 CPUs oneDNN uses 512-bit vectors, so the AVX2
  build lost to it there; the AVX-512 build (Eigen with 512-bit packets)
  trained 1.15x faster than the per-step gate ops with TensorFlow's MatMul
  at batch 64 and at 256, every round (bench_train.py's ours against
  ours_gates, 2-core Xeon VM, 2026-12-04). The plain x86-64 build (SSE2) and
  other architectures keep TensorFlow's MatMul."""
  return variant == "x86-64-v4" or (variant == "x86-64-v3" and "avx512f" not in flags_here)


@functools.cache
def sequence_ops():
  """The ops module if the trainer should run whole sequences in it
  (`runs_whole_sequences`), else None. Cached like `_load`: every traced
  row block asks, and the answer cannot change within a process."""
  variant, ops = _load()
  if ops is None or not runs_whole_sequences(variant, cpu_flags()):
    return None
  return ops


if __name__ == "__main__":
  native_ops.run_build(build, __doc__)
