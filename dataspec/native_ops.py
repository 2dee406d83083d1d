"""Compiled TensorFlow CPU ops: how both libraries of the project are built,
named and picked (trainer/lstm_ops.py for training, dataspec/decode_ops.py
for decoding).

Each is a C++ source compiled against the installed TensorFlow, whose C++
ABI changes with every release, so it is compiled on the machine that
installs the project, not shipped; ./install.sh and the container image do
it. A library is named for the TensorFlow it was compiled against, its
-march variant and a digest of its source, so a stale one is never loaded.
"""

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from dataspec import cli
from dataspec.cpuinfo import cpu_flags

# The instruction sets each variant may use, as /proc/cpuinfo names them
# (lzcnt is "abm"): x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA), and
# "x86-64-v3-nofma": the same without FMA, whose products and sums round
# apart as in TensorFlow's own kernels (built for AVX without FMA;
# decode_noise.cc reproduces their results bit for bit), and without the
# compiler fusing them (-ffp-contract=off: its AVX-512 code, which the
# target attribute builds, could otherwise use AVX-512's own FMAs).
_X86_64_V2_FLAGS = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
X86_64_V3_FLAGS = frozenset(
    {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})
X86_64_V4_FLAGS = X86_64_V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_REQUIRED_FLAGS = {"x86-64-v4": X86_64_V4_FLAGS, "x86-64-v3": X86_64_V3_FLAGS,
                   "x86-64-v3-nofma": _X86_64_V2_FLAGS | (X86_64_V3_FLAGS - {"fma"})}
_ARCH_FLAGS = {"x86-64-v3-nofma": ["-march=x86-64-v3", "-mno-fma", "-ffp-contract=off"]}


def is_x86_64() -> bool:
  return platform.machine().lower() in ("x86_64", "amd64")


def library_path(source: str, variant: str, directory: str) -> str:
  """Where `source`'s library for `variant` is in `directory`: named for the
  TensorFlow it was compiled against and the source it was compiled from
  (`_<source name>-tf<version>-<variant>-<digest>.so`)."""
  with open(source, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:12]
  stem = os.path.splitext(os.path.basename(source))[0]
  name = f"_{stem}-tf{tf.__version__}-{variant or 'default'}-{digest}.so"
  return os.path.join(directory, name)


def cpu_runs(variant: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has the instructions `variant` may use (for the
  variants in _REQUIRED_FLAGS, False where /proc/cpuinfo cannot be read:
  the plain x86-64 build is the safe one)."""
  return variant not in _REQUIRED_FLAGS or _REQUIRED_FLAGS[variant] <= cpu_flags(cpuinfo)


def compile_command(source: str, variant: str, output: str) -> List[str]:
  """The compiler's command line for `variant` ($CXX, else g++): an
  -march value, or a name in _ARCH_FLAGS."""
  march = _ARCH_FLAGS.get(variant, [f"-march={variant}"] if variant else [])
  return [os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O3", "-w", *march,
          *tf.sysconfig.get_compile_flags(), source, "-o", output,
          *tf.sysconfig.get_link_flags()]


def build(source: str, variants: List[str], directory: str, *,
          force: bool = False) -> List[str]:
  """Compiles every variant of `source` not built yet (all with `force`)
  into `directory`; returns their paths. Each library is written to a temporary name and
  renamed, so a failed or interrupted build never leaves a library that
  looks complete; libraries of other TensorFlow versions or sources are
  removed.

  Raises:
    RuntimeError: no compiler, or it failed (its output in the message).
  """
  stem = os.path.splitext(os.path.basename(source))[0]
  paths = []
  for variant in variants:
    path = library_path(source, variant, directory)
    paths.append(path)
    if os.path.exists(path) and not force:
      continue
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
      command = compile_command(source, variant, tmp)
      try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
      except FileNotFoundError:
        raise RuntimeError(f"no C++ compiler {command[0]!r}: install g++ or set CXX") from None
      if done.returncode:
        raise RuntimeError(f"compiling {source} failed ({' '.join(command)}):\n"
                           f"{done.stderr[-4000:]}")
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  for name in os.listdir(directory):
    stale = os.path.join(directory, name)
    if name.startswith(f"_{stem}-") and name.endswith(".so") and stale not in paths:
      os.remove(stale)
  return paths


def load_library(path: str, without: str):
  """tf.load_op_library(path), or None after a warning that names the
  library, the error and `without` (what runs instead)."""
  try:
    return tf.load_op_library(path)
  except (tf.errors.NotFoundError, tf.errors.AlreadyExistsError, OSError) as e:
    logging.warning("Could not load %s (%s): %s", path, e, without)
    return None


def run_build(build_libraries: Callable[..., List[str]], doc: str):
  """A `python -m` builder's command line (trainer/lstm_ops.py,
  dataspec/decode_ops.py; `doc` its usage): --force, then
  build_libraries(force=...) and the libraries' paths on stdout; a
  compiler's failure as one FATAL line and its output (exit 1)."""
  flag_values = flags.FlagValues()
  force = flags.DEFINE_bool("force", False, "Rebuild libraries that are already built.",
                            flag_values=flag_values)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
    try:
      paths = build_libraries(force=force.value)
    except RuntimeError as err:  # the compiler's output: several lines
      sys.stderr.write(f"FATAL {cli.program_name()}: {err}\n")
      sys.exit(1)
    for path in paths:
      print(path)

  cli.run(main, flag_values=flag_values, doc=doc)
