r"""The CPU's own float32 peak against the libraries' matrix products.

  python bench/bench_cpu_peak.py

The ceiling under the generation targets (README, Benchmarks, "Where the
generation targets stand"): a decode step is a chain of matrix products,
so it can go no faster than the products. This bench measures two
ceilings on this machine:

  fma     the fused multiply-add units alone: a C++ loop of 12 independent
          8-wide FMA chains (AVX2; enough in flight to cover two FMA
          pipes' latency), no memory traffic, on 1 thread and on one
          thread per CPU. No matrix product can beat it. Compiled here with
          $CXX, else g++ (as trainer/lstm_ops.py builds its ops).
  matmul  TensorFlow's float32 matmul (bench/machine.matmul_flops) at a
          2048^2 square and at the decode step's largest product at batch
          256 (256x512x1024); the same for PyTorch's torch.mm (its CPU
          build's BLAS; bench/machine.torch_matmul_flops) where it is
          installed (pip install -e '.[bench]').

Prints the machine, its 1-minute load average before and after, each
figure (best of 5), the clock the FMA figures imply (32 FLOP per cycle
per core: two 8-wide FMA pipes), and each product as a share of the FMA
peak. Without AVX2 FMA units the FMA rows are left out; with AVX-512
they are the 256-bit ceiling, and 512-bit units can do up to twice that.
"""

import os
import subprocess
import sys
import tempfile

from absl import app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=wrong-import-position
from dataspec.cpuinfo import cpu_flags  # pylint: disable=wrong-import-position

CHAINS = 12  # independent accumulators: 2 pipes x 4 cycles latency, and more
FLOP_PER_CYCLE = 32  # two 8-wide float32 FMA pipes, 2 FLOP each
_SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static float chains(long iterations) {
  __m256 acc[%(chains)d];
  for (int i = 0; i < %(chains)d; ++i) acc[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
  for (long n = 0; n < iterations; ++n) {
#pragma GCC unroll %(chains)d
    for (int i = 0; i < %(chains)d; ++i) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < %(chains)d; ++i) sum = _mm256_add_ps(sum, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, sum);
  return out[0];
}

int main(int argc, char** argv) {
  const int threads = atoi(argv[1]);
  const long iterations = atol(argv[2]);
  double best = 0;
  float sink = 0;
  for (int trial = 0; trial < 5; ++trial) {
    std::vector<std::thread> pool;
    std::vector<float> results(threads);
    auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&results, t, iterations] { results[t] = chains(iterations); });
    for (auto& thread : pool) thread.join();
    double seconds = std::chrono::duration<double>(
        std::chrono::steady_clock::now() - start).count();
    double flops = 2.0 * 8 * %(chains)d * iterations * threads;
    if (flops / seconds > best) best = flops / seconds;
    sink += results[0];
  }
  printf("%%.6e %%g\n", best, sink);  // FLOP/s, and the sums (kept live)
  return 0;
}
"""


def build(directory: str) -> str:
  """Compiles the FMA loop; the executable's path."""
  source = os.path.join(directory, "fma_peak.cc")
  binary = os.path.join(directory, "fma_peak")
  with open(source, "w", encoding="utf-8") as f:
    f.write(_SOURCE % {"chains": CHAINS})
  compiler = os.environ.get("CXX", "g++")
  try:
    done = subprocess.run([compiler, "-O2", "-mavx2", "-mfma", "-pthread", source, "-o", binary],
                          capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise SystemExit(f"no C++ compiler {compiler!r}: install g++ or set CXX") from None
  if done.returncode:
    raise SystemExit(f"{compiler} failed:\n{done.stderr}")
  return binary


def fma_flops(binary: str, threads: int, iterations: int = 100_000_000) -> float:
  """Best float32 FLOP/s of the FMA loop on `threads` threads."""
  out = subprocess.run([binary, str(threads), str(iterations)], capture_output=True,
                       text=True, check=True).stdout
  return float(out.split()[0])


def main(argv):
  del argv
  flags = cpu_flags()
  print(machine.describe(), flush=True)
  cpus = os.cpu_count() or 1
  one = every = 0.0
  if "avx2" in flags and "fma" in flags:
    with tempfile.TemporaryDirectory() as tmp:
      binary = build(tmp)
      one = fma_flops(binary, 1) / 1e9
      every = fma_flops(binary, cpus) / 1e9
  rows = []
  for name, (m, k, n) in (("2048x2048x2048", (2048, 2048, 2048)),
                          ("256x512x1024 (decode, batch 256)", (256, 512, 1024))):
    rows.append((f"TensorFlow matmul {name}", machine.matmul_flops(m, k, n) / 1e9))
    rows.append((f"PyTorch torch.mm {name}", machine.torch_matmul_flops(m, k, n) / 1e9))
  print(f"\n{machine.describe()} (after)\n")
  print("| ceiling | GFLOP/s | share of the FMA peak on every CPU |")
  print("|---|---:|---:|")
  if every:
    print(f"| FMA units, 1 thread | {one:.1f} | - |")
    print(f"| FMA units, {cpus} threads | {every:.1f} | 100% |")
  for name, value in rows:
    if value:  # 0: PyTorch is not installed
      print(f"| {name} | {value:.1f} | {f'{value / every:.0%}' if every else '-'} |")
  if every:
    print(f"\nimplied clock with 1 thread: {one / FLOP_PER_CYCLE:.2f} GHz; "
          f"{cpus} threads: {every / cpus / FLOP_PER_CYCLE:.2f} GHz per CPU")
  else:
    print("\nno AVX2 FMA units: the FMA rows are left out")
  if "avx512f" in flags:
    print("this CPU has AVX-512: the FMA rows are its 256-bit ceiling, and 512-bit FMA "
          "units can do up to twice as much")


if __name__ == "__main__":
  app.run(main)
