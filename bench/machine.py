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
import tempfile
import threading
import time
from typing import Dict, Iterable, Tuple

from dataspec.cpuinfo import cpu_flags
from trainer.precision import cpu_has_bfloat16


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


def measurable_impls(impls: Iterable[str], *, explicit: bool) -> Tuple[list, str]:
  """(the impls to run, a note of what was left out). Without bfloat16
  matrix units (AMX, AVX512_BF16; see trainer/precision.py) the default
  list leaves out the bfloat16 implementations: PyTorch's bfloat16 LSTM
  fails there ("could not create a primitive descriptor for the LSTM
  forward propagation primitive", oneDNN on an AVX2 CPU, 2026-12-03), and
  the bfloat16 rows are meant for CPUs that have the units. Likewise the
  fused decode ops' (*_fused) without AVX2 and FMA, and the fused
  bfloat16 op's (*_fused_bf16) without AMX. An explicit --impls
  runs what it names."""
  impls = list(impls)
  if explicit:
    return impls, ""
  from dataspec import decode_ops  # pylint: disable=g-import-not-at-top
  notes, left_out = [], []
  for suffix, runs, why in (
      ("_bf16", cpu_has_bfloat16, "this CPU has no bfloat16 matrix units, AMX or AVX512_BF16"),
      ("_fused", decode_ops.runs_here, "the fused decode ops need AVX2 and FMA"),
      ("_fused_bf16", decode_ops.amx_runs_here, "the fused bfloat16 op needs AMX")):
    kind = [i for i in impls if i.endswith(suffix)]
    if kind and not runs():
      left_out += kind
      notes.append(f"{', '.join(kind)} ({why})")
  note = (f"left out: {'; '.join(notes)}; name them in --impls to run them anyway"
          if notes else "")
  return [i for i in impls if i not in left_out], note


def load_average() -> float:
  return os.getloadavg()[0]


def cpu_times(stat: str = "/proc/stat"):
  """(steal, total) clock ticks of all CPUs since boot from `stat`'s "cpu"
  line, or None where there is no such file (not Linux)."""
  try:
    with open(stat, encoding="utf-8") as f:
      fields = f.readline().split()
  except OSError:
    return None
  # cpu user nice system idle iowait irq softirq steal [guest guest_nice]:
  # guest time is counted in user and nice already.
  ticks = [int(v) for v in fields[1:9]]
  return ticks[7], sum(ticks)


_previous_times = None


def steal_share(stat: str = "/proc/stat"):
  """The share of the CPUs' time that the hypervisor gave to other guests
  (steal) since the previous call, or None on the first call (or without
  `stat`). On a shared VM it is what makes single rounds swing: on the
  2-core AMD EPYC VM, 2026-12-03 afternoon, vmstat showed 0-23% steal
  during a run while the machine ran nothing else."""
  global _previous_times
  times, previous = cpu_times(stat), _previous_times
  _previous_times = times
  if times is None or previous is None or times[1] <= previous[1]:
    return None
  return (times[0] - previous[0]) / (times[1] - previous[1])


def describe() -> str:
  """One line: CPUs, CPU model, 1-minute load average, and from the second
  call on the CPU time stolen by the hypervisor since the call before
  (steal_share: a bench's line after its run says it for the run)."""
  line = (f"{os.cpu_count()} CPUs ({cpu_model()}), 1-minute load average "
          f"{load_average():.2f}")
  steal = steal_share()
  if steal is not None:
    line += f", CPU time stolen by the hypervisor since the line before {steal:.1%}"
  return line


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

  return _best_flops(lambda reps: loop(a, b, tf.constant(reps)).numpy(), m, k, n,
                     trials=trials, min_seconds=min_seconds)


def torch_matmul_flops(m: int, k: int, n: int, *, trials: int = 5,
                       min_seconds: float = 0.2) -> float:
  """Best float32 FLOP/s of (m, k) @ (k, n) in PyTorch on one thread per
  CPU, looped as matmul_flops loops TensorFlow's; 0 without PyTorch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return 0.0
  torch.set_num_threads(os.cpu_count() or 1)
  a, b = torch.randn(m, k), torch.randn(k, n)

  def loop(reps):
    out = torch.zeros(m, n)
    for _ in range(reps):
      out = torch.mm(a + out[:, :1] * 0.0, b)
    return out

  return _best_flops(loop, m, k, n, trials=trials, min_seconds=min_seconds)


def _best_flops(loop, m: int, k: int, n: int, *, trials: int, min_seconds: float) -> float:
  """Best FLOP/s of loop(reps), which runs reps (m, k) @ (k, n) products
  one after another: a first call of 2 (tracing, warm thread pools), then
  `trials` timed calls of about min_seconds each."""
  flops = 2.0 * m * k * n
  reps = max(2, int(min_seconds * 2e11 // flops))
  loop(2)
  best = 0.0
  for _ in range(trials):
    start = time.perf_counter()
    loop(reps)
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


# How often run_worker reads the worker's anonymous memory.
_ANON_EVERY_SECONDS = 0.005
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _anon_mb(pid: int) -> float:
  """Process `pid`'s anonymous resident memory in MB: resident minus shared
  (file-backed and shared memory) pages of /proc/<pid>/statm, which is
  cheaper to read than RssAnon in /proc/<pid>/status; 0 once it has ended
  or without /proc."""
  try:
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
      fields = f.read().split()
  except OSError:
    return 0.0
  if len(fields) < 3:
    return 0.0
  return (int(fields[1]) - int(fields[2])) * _PAGE_BYTES / 2**20


def _start_worker(script: str, args, **pipes) -> subprocess.Popen:
  """`script` with `args` in a fresh Python (text mode, TensorFlow's info
  logs off), its standard streams as `pipes` say."""
  return subprocess.Popen([sys.executable, os.path.abspath(script), *args], text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), **pipes)


def run_worker(script: str, *args: str, anonymous_memory: bool = False) -> dict:
  """Runs `script` with `args` in a fresh Python process (its peak RSS its
  own) and returns the JSON object on the last line of its output; with
  `anonymous_memory`, plus "peak_anon_mb": the worker's peak anonymous
  memory (read from here every 5 ms; 0 without /proc).

  Peak RSS (VmHWM) also counts the pages of shared libraries the process
  has touched, and how many of those are mapped depends on the host's page
  cache, not on the program: `import tensorflow` measured 548 MB in one
  virtualenv and 663 in a fresh copy of the same packages (251 against 341
  MB of libtensorflow_cc.so's pages, 2026-12-02). Anonymous memory (tensors,
  heaps, Python objects) is what a program allocates, and what a container's
  memory limit has to hold (clean library pages can be dropped and read
  again). It is sampled from this process so that the worker runs no extra
  thread; a peak shorter than 5 ms can be missed. The sampling slows the
  worker: at batch 64 training ran 3-8% slower in 4 of 4 rounds sampled
  every 2 ms, and 0-10% every 5 ms (ours and PyTorch alike, 2026-12-02), so
  the benches measure memory in runs of their own, not in timed ones.
  """
  proc = _start_worker(script, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  output = {}
  reader = threading.Thread(target=lambda: output.update(zip(
      ("stdout", "stderr"), proc.communicate())))
  reader.start()
  peak_anon = 0.0
  while anonymous_memory and proc.poll() is None:
    peak_anon = max(peak_anon, _anon_mb(proc.pid))
    time.sleep(_ANON_EVERY_SECONDS)
  reader.join()
  if proc.returncode:
    raise RuntimeError(f"{script} {' '.join(args)} failed (exit status {proc.returncode}):\n"
                       f"{output['stderr'][-3000:]}\nits standard output ends:\n"
                       f"{output['stdout'][-2000:]}")
  result = json.loads(output["stdout"].strip().splitlines()[-1])
  return dict(result, peak_anon_mb=peak_anon) if anonymous_memory else result


# Marks the lines a served worker answers with (libraries may print too).
_ANSWER = "BENCH-ANSWER "


def serve(measure, **ready) -> None:
  """A worker's side of Worker: says `ready` (a JSON object), then answers
  every "measure" line on its standard input with measure()'s JSON object,
  until the input ends."""
  print(_ANSWER + json.dumps(dict(ready, ready=True)), flush=True)
  for line in sys.stdin:
    if line.strip() == "measure":
      print(_ANSWER + json.dumps(measure()), flush=True)


def cpu_seconds(pid: int) -> float:
  """User + system CPU seconds process `pid` has used (all its threads;
  0 without /proc)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  # After the command's ")": state is field 3, utime and stime fields 14-15.
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
  """`script` with `args` kept running in a fresh process that serve()s:
  set up once (its model built, traced, warmed up), then measured as many
  times as asked, so that two implementations can be measured one right
  after the other, seconds apart, instead of a fresh process's start-up
  apart. Use as a context manager (the process is ended on the way out)."""

  def __init__(self, script: str, *args: str):
    self._command = f"{script} {' '.join(args)}"
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = _start_worker(script, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self._stderr)
    try:
      self.ready = self._answer()
    except RuntimeError:
      self._stderr.close()
      raise

  def _answer(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(_ANSWER):
        return json.loads(line[len(_ANSWER):])
    self.proc.wait()
    self._stderr.seek(0)
    raise RuntimeError(f"{self._command} ended without answering (exit status "
                       f"{self.proc.returncode}):\n{self._stderr.read()[-3000:]}")

  def measure(self) -> dict:
    self.proc.stdin.write("measure\n")
    self.proc.stdin.flush()
    return self._answer()

  def cpu_seconds(self) -> float:
    return cpu_seconds(self.proc.pid)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.proc.stdin.close()
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self._stderr.close()


def paired(a: "Worker", b: "Worker", pairs: int, settle_seconds: float = 0.2):
  """`pairs` measurements of each of two served workers, one right after
  the other, in the order a b, b a, a b, ... (so that neither is always
  first after a pause): [(a's result, b's result, the CPU seconds the idle
  one used while the other was measured (the larger of the two))]. Each
  measurement waits `settle_seconds` first, for the other's threads to go
  to sleep (OpenMP's and TensorFlow's spin a while after work)."""
  out = []
  for i in range(pairs):
    results, idle = {}, 0.0
    for worker, partner in ((a, b), (b, a)) if i % 2 == 0 else ((b, a), (a, b)):
      time.sleep(settle_seconds)
      before = partner.cpu_seconds()
      results[id(worker)] = worker.measure()
      idle = max(idle, partner.cpu_seconds() - before)
    out.append((results[id(a)], results[id(b)], idle))
  return out


def anonymous_peaks(run, impls, batches) -> Dict[Tuple[str, int], float]:
  """Peak anonymous memory (MB) of each (impl, batch) from one more, untimed
  run of each: run(impl, batch) must call run_worker with
  anonymous_memory=True (sampling slows a run; see run_worker)."""
  peaks = {}
  for batch in batches:
    for impl in impls:
      peaks[impl, batch] = run(impl, batch)["peak_anon_mb"]
      print(f"memory run batch {batch} {impl}: peak anonymous {peaks[impl, batch]:,.0f} MB",
            flush=True)
  return peaks


def print_memory_table(impls, batches, rss, anon, pairs) -> None:
  """A markdown table of peak RSS / peak anonymous memory per batch size
  ({(impl, batch): MB} each), with both ratios for each (a, b) of `pairs`
  whose two are measured."""
  pairs = [(a, b) for a, b in pairs if a in impls and b in impls]
  header = ([f"{i} peak RSS / anonymous" for i in impls] +
            [f"{a} / {b} {kind}" for a, b in pairs for kind in ("RSS", "anonymous")])
  print("\n| batch | " + " | ".join(header) + " |")
  print("|---:|" + "---:|" * len(header))
  for batch in batches:
    cells = ([f"{rss[i, batch]:,.0f} / {anon[i, batch]:,.0f} MB" for i in impls] +
             [f"{ratio:.2f}x" for a, b in pairs
              for ratio in (rss[a, batch] / rss[b, batch], anon[a, batch] / anon[b, batch])])
    print(f"| {batch} | " + " | ".join(cells) + " |")
