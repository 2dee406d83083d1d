"""What every benchmark prints first: the machine, its load, its matmul peak.

Absolute speeds differ several-fold between "2-core" VMs of the same kind
(TensorFlow's float32 matmul measured 57 GFLOP/s on one and 520 on another),
so every bench prints these next to its numbers, and only ratios measured in
the same run are compared.

The peak is measured the way the training step uses the CPU: TensorFlow's
own thread pools, a warm-up call first, the multiplications looped inside one
tf.function (so Python and dispatch overhead are not counted), best of 5
trials. Reported for a large square (what the hardware can do) and for the
LSTM's GEMM shapes (what a step of batch B can get: its matrices are small).
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Dict, Iterable, Tuple

from trainer.cpuinfo import cpu_flags


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = next((l.split(":", 1)[1].strip() for l in info.splitlines()
               if l.startswith("model name")), platform.machine())
  flags = cpu_flags()
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  return f"{name}, {isa}"


def load_average() -> float:
  return os.getloadavg()[0]


def describe() -> str:
  """One line: CPUs, CPU model, 1-minute load average."""
  return (f"{os.cpu_count()} CPUs ({cpu_model()}), 1-minute load average "
          f"{load_average():.2f}")


def matmul_flops(m: int, k: int, n: int, *, trials: int = 5,
                 min_seconds: float = 0.2) -> float:
  """Best float32 FLOP/s of (m, k) @ (k, n) in TensorFlow on this machine."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.normal([m, k])
  b = tf.random.normal([k, n])

  @tf.function
  def loop(a, b, reps):
    out = tf.zeros([m, n])
    for _ in tf.range(reps):
      # The dependency on `out` keeps the multiplications in sequence.
      out = tf.matmul(a + out[:, :1] * 0.0, b)
    return out

  flops = 2.0 * m * k * n
  reps = max(2, int(min_seconds * 2e11 // flops))
  loop(a, b, tf.constant(2)).numpy()  # trace and warm the thread pools
  best = 0.0
  for _ in range(trials):
    start = time.perf_counter()
    loop(a, b, tf.constant(reps)).numpy()
    best = max(best, reps * flops / (time.perf_counter() - start))
  return best


def lstm_gemm_shapes(*, batch: int, embedding: int, units: int,
                     vocab: int) -> Dict[str, Tuple[int, int, int]]:
  """The GEMMs of one training step of a 2-layer LSTM (per time step)."""
  return {
      "layer 1 gates": (batch, embedding + units, 4 * units),
      "layer 2 gates": (batch, 2 * units, 4 * units),
      "output": (batch, units, vocab),
  }


def peak_report(shapes: Iterable[Tuple[str, Tuple[int, int, int]]] = ()) -> Dict[str, float]:
  """GFLOP/s of a 2048^2 square and of each named (m, k, n) shape."""
  out = {"2048x2048x2048": matmul_flops(2048, 2048, 2048) / 1e9}
  for name, (m, k, n) in shapes:
    out[f"{name} ({m}x{k}x{n})"] = matmul_flops(m, k, n) / 1e9
  return out


def peak_rss_mb() -> float:
  """This process's peak resident memory: VmHWM, its own address space's high
  water mark. Not getrusage's ru_maxrss: Linux carries that across exec, so a
  worker started by a parent that had used 1 GB reported at least 1 GB
  (bench_train.py's parent prepares the dataset: every batch-64 figure of
  one run came out as 1,055-1,056 MB, PyTorch's included)."""
  peak = _status_mb("VmHWM")
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


def rss_mb() -> float:
  """This process's resident memory now (VmRSS; 0 where there is no /proc)."""
  return _status_mb("VmRSS") or 0.0


def _status_mb(field: str):
  """A kB field of /proc/self/status in MB; None without /proc."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def run_worker(script: str, *args: str) -> dict:
  """Runs `script` with `args` in a fresh Python process (its peak RSS its
  own) and returns the JSON object on the last line of its output."""
  out = subprocess.run([sys.executable, os.path.abspath(script), *args],
                       capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  if out.returncode:
    raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])
