r"""The CPU's own float32 peak against the libraries' matrix products.

  python bench/bench_cpu_peak.py

The ceiling under the generation targets (README, Benchmarks, "Where the
generation targets stand"): a decode step is a chain of matrix products,
so it can go no faster than the products. This bench measures two
ceilings on this machine:

  fma     the fused multiply-add units alone: a C++ loop of 12 independent
          8-wide FMA chains (AVX2; enough in flight to cover two FMA
          pipes' latency), no memory traffic, on 1 thread and on one
          thread per CPU; on CPUs with AVX-512 the same with 16-wide
          chains too (the fused decode op's tiles are 512-bit there). No
          matrix product can beat it. Compiled here with $CXX, else g++ (as
          trainer/lstm_ops.py builds its ops).
  matmul  TensorFlow's float32 matmul (bench/machine.matmul_flops) at a
          2048^2 square and at the decode step's largest product at batch
          256 (256x512x1024); the same for PyTorch's torch.mm (its CPU
          build's BLAS; bench/machine.torch_matmul_flops) where it is
          installed (pip install -e '.[bench]').

Prints the machine, its 1-minute load average before and after, each
figure (best of 5), the clock the 256-bit FMA figures imply (32 FLOP per
cycle per core: two 8-wide FMA pipes), and each product as a share of the
widest FMA peak on every CPU. Without AVX2 FMA units the FMA rows are
left out.
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

#if WIDTH == 512
typedef __m512 Vec;
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STOREU _mm512_storeu_ps
#else
typedef __m256 Vec;
#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STOREU _mm256_storeu_ps
#endif
constexpr int kLanes = WIDTH / 32;

static float chains(long iterations) {
  Vec acc[%(chains)d];
  for (int i = 0; i < %(chains)d; ++i) acc[i] = SET1(1.0f + i * 1e-3f);
  const Vec mul = SET1(0.999999f), add = SET1(1e-7f);
  for (long n = 0; n < iterations; ++n) {
#pragma GCC unroll %(chains)d
    for (int i = 0; i < %(chains)d; ++i) acc[i] = FMADD(acc[i], mul, add);
  }
  Vec sum = acc[0];
  for (int i = 1; i < %(chains)d; ++i) sum = ADD(sum, acc[i]);
  float out[kLanes];
  STOREU(out, sum);
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
    double flops = 2.0 * kLanes * %(chains)d * iterations * threads;
    if (flops / seconds > best) best = flops / seconds;
    sink += results[0];
  }
  printf("%%.6e %%g\n", best, sink);  // FLOP/s, and the sums (kept live)
  return 0;
}
"""


def build(directory: str, width: int = 256) -> str:
  """Compiles the FMA loop with `width`-bit vectors (256: AVX2, 512:
  AVX-512); the executable's path."""
  source = os.path.join(directory, "fma_peak.cc")
  binary = os.path.join(directory, f"fma_peak{width}")
  with open(source, "w", encoding="utf-8") as f:
    f.write(_SOURCE % {"chains": CHAINS})
  compiler = os.environ.get("CXX", "g++")
  isa = ["-mavx512f"] if width == 512 else []
  try:
    done = subprocess.run([compiler, "-O2", "-mavx2", "-mfma", *isa, f"-DWIDTH={width}",
                           "-pthread", source, "-o", binary],
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
  one = every = one_wide = every_wide = 0.0
  if "avx2" in flags and "fma" in flags:
    with tempfile.TemporaryDirectory() as tmp:
      binary = build(tmp)
      one = fma_flops(binary, 1) / 1e9
      every = fma_flops(binary, cpus) / 1e9
      if "avx512f" in flags:
        binary = build(tmp, 512)
        one_wide = fma_flops(binary, 1) / 1e9
        every_wide = fma_flops(binary, cpus) / 1e9
  rows = []
  for name, (m, k, n) in (("2048x2048x2048", (2048, 2048, 2048)),
                          ("256x512x1024 (decode, batch 256)", (256, 512, 1024))):
    rows.append((f"TensorFlow matmul {name}", machine.matmul_flops(m, k, n) / 1e9))
    rows.append((f"PyTorch torch.mm {name}", machine.torch_matmul_flops(m, k, n) / 1e9))
  print(f"\n{machine.describe()} (after)\n")
  print("| ceiling | GFLOP/s | share of the FMA peak on every CPU |")
  print("|---|---:|---:|")
  peak = max(every, every_wide)
  if every:
    print(f"| FMA units, 1 thread | {one:.1f} | - |")
    print(f"| FMA units, {cpus} threads | {every:.1f} | {every / peak:.0%} |")
  if every_wide:
    print(f"| FMA units 512-bit, 1 thread | {one_wide:.1f} | - |")
    print(f"| FMA units 512-bit, {cpus} threads | {every_wide:.1f} | {every_wide / peak:.0%} |")
  for name, value in rows:
    if value:  # 0: PyTorch is not installed
      print(f"| {name} | {value:.1f} | {f'{value / peak:.0%}' if peak else '-'} |")
  if every:
    print(f"\nimplied clock with 1 thread: {one / FLOP_PER_CYCLE:.2f} GHz; "
          f"{cpus} threads: {every / cpus / FLOP_PER_CYCLE:.2f} GHz per CPU")
  else:
    print("\nno AVX2 FMA units: the FMA rows are left out")
  if every_wide:
    print(f"512-bit FMA: {every_wide / every:.2f}x the 256-bit rate on {cpus} threads "
          "(2.0: two 512-bit FMA pipes per core)")


if __name__ == "__main__":
  app.run(main)
