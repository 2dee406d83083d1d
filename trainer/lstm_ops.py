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

On x86-64 two variants are built, for AVX2 CPUs (x86-64-v3) and for any
x86-64 CPU, and the best one the CPU runs is loaded. Without a built library
(no compiler, another TensorFlow, another CPU architecture) training runs
exactly as before on TensorFlow's own ops, 1.08-1.37x slower in four runs
(README "Training"), after one warning that says how to build it. Only the
training step uses them: the exported SavedModel and model.keras contain no
custom ops.
"""

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from typing import FrozenSet, List

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from dataspec import cli
from trainer.cpuinfo import cpu_flags

_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_DIR, "lstm_ops.cc")

# x86-64-v3's instruction sets, as /proc/cpuinfo names them (lzcnt is "abm").
_X86_64_V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}


def variants() -> List[str]:
  """The -march values built here, best first ("" = the compiler's default)."""
  if platform.machine().lower() in ("x86_64", "amd64"):
    return ["x86-64-v3", "x86-64"]
  return [""]


def library_path(variant: str) -> str:
  """Where `variant`'s library is: next to the source, named for the
  TensorFlow it was compiled against and the source it was compiled from."""
  with open(SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:12]
  name = f"_lstm_ops-tf{tf.__version__}-{variant or 'default'}-{digest}.so"
  return os.path.join(_DIR, name)


def cpu_runs(variant: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has the instructions `variant` may use (for
  x86-64-v3, False where /proc/cpuinfo cannot be read: the plain x86-64
  build is the safe one)."""
  return variant != "x86-64-v3" or _X86_64_V3_FLAGS <= cpu_flags(cpuinfo)


def compile_command(variant: str, output: str) -> List[str]:
  """The compiler's command line for `variant` ($CXX, else g++)."""
  march = [f"-march={variant}"] if variant else []
  return [os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O3", "-w", *march,
          *tf.sysconfig.get_compile_flags(), SOURCE, "-o", output,
          *tf.sysconfig.get_link_flags()]


def build(*, force: bool = False) -> List[str]:
  """Compiles every variant not built yet (all with `force`); returns their
  paths. Each library is written to a temporary name and renamed, so a
  failed or interrupted build never leaves a library that looks complete;
  libraries of other TensorFlow versions or sources are removed.

  Raises:
    RuntimeError: no compiler, or it failed (its output in the message).
  """
  paths = []
  for variant in variants():
    path = library_path(variant)
    paths.append(path)
    if os.path.exists(path) and not force:
      continue
    fd, tmp = tempfile.mkstemp(prefix=".lstm_ops-", suffix=".so", dir=_DIR)
    os.close(fd)
    try:
      command = compile_command(variant, tmp)
      try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
      except FileNotFoundError:
        raise RuntimeError(f"no C++ compiler {command[0]!r}: install g++ or set CXX") from None
      if done.returncode:
        raise RuntimeError(f"compiling {SOURCE} failed ({' '.join(command)}):\n"
                           f"{done.stderr[-4000:]}")
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  for name in os.listdir(_DIR):
    stale = os.path.join(_DIR, name)
    if name.startswith("_lstm_ops-") and name.endswith(".so") and stale not in paths:
      os.remove(stale)
  return paths


@functools.cache
def _load():
  """(variant, ops module) of the best built variant this CPU runs, or
  (None, None) after one warning."""
  for variant in variants():
    path = library_path(variant)
    if not cpu_runs(variant) or not os.path.exists(path):
      continue
    try:
      ops = tf.load_op_library(path)
    except (tf.errors.NotFoundError, tf.errors.AlreadyExistsError, OSError) as e:
      logging.warning("Could not load %s (%s): the CPU LSTM runs TensorFlow's own ops", path, e)
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
  build on a CPU without AVX-512. There TensorFlow's MatMul (oneDNN) ran the
  step's (rows, units) x (units, 4 units) product at 44 GFLOP/s on one core
  and Eigen's at 74-89 (AMD EPYC, 2026-12-02). On AVX-512 CPUs oneDNN uses
  512-bit vectors (and AMX) that an AVX2 build does not: there the trainer
  keeps TensorFlow's MatMul and the per-step gate ops, as measured on the
  Xeon VM. The plain x86-64 build (SSE2) and other architectures likewise."""
  return variant == "x86-64-v3" and "avx512f" not in flags_here


@functools.cache
def sequence_ops():
  """The ops module if the trainer should run whole sequences in it
  (`runs_whole_sequences`), else None. Cached like `_load`: every traced
  row block asks, and the answer cannot change within a process."""
  variant, ops = _load()
  if ops is None or not runs_whole_sequences(variant, cpu_flags()):
    return None
  return ops


FLAGS = flags.FlagValues()
_FORCE = flags.DEFINE_bool("force", False, "Rebuild libraries that are already built.",
                           flag_values=FLAGS)


def main(argv):
  """Builds the libraries; prints their paths."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  try:
    paths = build(force=_FORCE.value)
  except RuntimeError as err:  # the compiler's output: several lines
    sys.stderr.write(f"FATAL {cli.program_name()}: {err}\n")
    sys.exit(1)
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli.run(main, flag_values=FLAGS, doc=__doc__)
