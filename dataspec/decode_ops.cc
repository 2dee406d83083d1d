// Decoding's compiled TensorFlow CPU ops (dataspec/decode_ops.py builds and
// loads them; dataspec/serving.py runs them with --decode_ops=fused).
//
// TextgenLstmLayers  x (rows, in): the first layer's input, or (n, 0)
//                  with no input columns (a constant, not a per-step
//                  tf.zeros), addend_rows (rows,) int32 or empty; h, c
//                  (rows, units), packed, addends: N each, one per layer ->
//                  h', c' (N each): every layer's step, each layer above
//                  taking the h' below it (its in = the lower layer's
//                  units). A layer's packed (units / 4, in + units, 16) is
//                  its kernel and recurrent kernel stacked and laid out by
//                  pack_kernel() in decode_ops.py (or, for the AVX-512
//                  tiles only, (units / 16, in + units, 64): panels of 16
//                  units, gate-major, see GateTile); its addend (4 units) is
//                  the bias, or (n, 4 units): rows (gates i, f, g, o as in
//                  Keras) of which row r takes row r (n = rows) or, for the
//                  first layer only, addend_rows[r]: the input table's rows
//                  are read in place, not gathered first. A position's
//                  step through every layer as one op (prompt and
//                  decoding).
// TextgenLstmLayersBf16  TextgenLstmLayers' inputs and outputs, but each
//                  layer's packed is bfloat16 as pack_kernel_bf16() lays
//                  it out: the products on AMX from [x, h] rounded to
//                  bfloat16, with float32 sums (CPUs with AMX only; see
//                  LstmLayersBf16Op).
// TextgenPick      x (rows, depth): the top layer's output, kernel (depth,
//                  vocab), bias (vocab): the output layer, noise (rows,
//                  vocab): the position's Gumbel noise, or (n, 0) for
//                  greedy, temperature () -> tokens (rows,): argmax of
//                  (x kernel + bias) / temperature + noise (greedy: of
//                  x kernel + bias), the first of equal scores, as the
//                  TensorFlow ops it replaces (about ten per step, 1/9 of a
//                  batch-256 step of the reference char model).
//
// z = [x, h] @ [kernel; recurrent_kernel] + addend; c' = f c + i g;
// h' = o tanh(c'), with Eigen's sigmoid and tanh (TensorFlow's own
// functions), tanh(g) as 2 sigmoid(2 g) - 1 (see Cells).
//
// Why: a decode step at batch 256 is a chain of products whose weights never
// change, so they are packed once (16 columns = 4 units' four gates per
// panel) and the product runs a 6x16 AVX2 register tile over each panel.
// Each tile finishes with its 4 units' gate math while z is still in
// registers, so a layer's step is one op instead of about fifteen, and the
// threads split the layer by blocks of panels: each writes its own units of
// h' and c'. On the 2-core AMD EPYC VM (2026-12-03): a standalone prototype
// of the product alone ran (256, 512) x (512, 1024) at 180-195 GFLOP/s on
// both cores, 92-95% of the FMA units' peak (bench/bench_cpu_peak.py), where
// TensorFlow's matmul does 128-148; this op, gate math included, runs that
// layer's step at batch 256 in 1.68-2.06 ms (130-160 GFLOP/s), TensorFlow's
// ops in 2.36-2.61 ms.
//
// The sums run in a different order from TensorFlow's matmul, so the states
// differ from the SavedModel's by float rounding (about 1e-7 relative), and a
// sample can differ where two tokens' noisy scores are that close.
//
// Built for AVX2 + FMA (x86-64-v3); on CPUs with AVX-512 both ops run tiles
// of 512-bit vectors instead, with the same results (WideTile,
// WidePickTile).

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#if !defined(__AVX2__) || !defined(__FMA__)
#error "decode_ops.cc needs AVX2 and FMA (-march=x86-64-v3)"
#endif

namespace textgen {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpInputList;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using Packet4f = Eigen::internal::Packet4f;
using Packet8f = Eigen::internal::Packet8f;

constexpr int kRows = 6;     // rows per register tile
constexpr int kColumns = 16;  // columns per panel: 4 units x 4 gates
// Rows per pass over the panels: 96 rows of a 512-deep input (192 KB) stay
// in a core's L2 while its panels go by.
constexpr int kChunkRows = 96;

// Waits until `counter` reaches `target`: spinning, briefly, then yielding.
template <typename T>
void SpinUntil(const std::atomic<T>& counter, T target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 4096) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// Set in a child process after fork(), where the crew's threads do not
// exist: the ops then use the pool.
std::atomic<bool> crew_forked{false};

// Helper threads kept for the process's decode ops (instead of the pool's),
// each of which waits for the next split spinning, yielding now and then,
// for up to kCrewWaitUs before it sleeps. A decode step splits two or three
// times (each layer, at batch 256 the choice) and the pool's helper, woken
// each time, started 13 us late on average at batch 256; at batch 1, where
// a step takes ~60 us, the caller mostly ran both halves. Run() runs
// `take` on the calling thread and on every helper that joins the split
// before the caller has run its own `take`, with the caller's MXCSR
// (flush-to-zero as TensorFlow's threads have it, so the bits do not
// depend on the thread), or returns false at once if another call holds
// the crew (the caller then uses the pool). As with the pool, the caller
// never waits for a helper that had not started: a helper that comes late
// (asleep, or not given a CPU) finds the split closed and skips it. On the
// 2-core Xeon VM (2026-12-04), sampled decoding, one process alternating
// the crew and the pool (16 x 256 tokens each): 1.825x the tokens/s at
// batch 1, 1.036x at 64, 1.020x at 256.
class Crew {
 public:
  static Crew* Get(int helpers) {
    static Crew* crew = new Crew(helpers);  // never destroyed: its threads never end
    return crew;
  }

  template <typename Fn>
  bool Run(const Fn& take) {
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    job_ = [](const void* fn) { (*static_cast<const Fn*>(fn))(); };
    fn_ = &take;
    mxcsr_ = _mm_getcsr();  // flush-to-zero as the caller's (TensorFlow's threads set it)
    finished_.store(0, std::memory_order_relaxed);
    state_.store((++splits_ << kSplitShift) | kOpen, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    take();
    // Closed: from here no helper joins; wait for those that did.
    const uint64_t state = state_.fetch_and(~kOpen, std::memory_order_acq_rel);
    SpinUntil(finished_, state & kJoined);
    busy_.store(false, std::memory_order_release);
    return true;
  }

 private:
  static constexpr int64_t kCrewWaitUs = 200;
  // state_: the split's number (from bit kSplitShift), whether it is open,
  // and how many helpers joined it.
  static constexpr int kSplitShift = 32;
  static constexpr uint64_t kOpen = uint64_t{1} << 31;
  static constexpr uint64_t kJoined = kOpen - 1;

  explicit Crew(int helpers) {
    pthread_atfork(nullptr, nullptr, [] { crew_forked.store(true); });
    for (int i = 0; i < helpers; ++i) std::thread([this] { Loop(); }).detach();
  }

  void Loop() {
    uint64_t seen = 0;  // the last split this helper saw
    auto split = [&] { return state_.load(std::memory_order_seq_cst) >> kSplitShift; };
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 0; split() == seen; ++spins) {
        if (spins % 256 != 255) {
          _mm_pause();
          continue;
        }
        if (std::chrono::steady_clock::now() - start < std::chrono::microseconds(kCrewWaitUs)) {
          std::this_thread::yield();  // a runnable thread on this CPU goes first
          continue;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] { return split() != seen; });
        sleeping_.fetch_sub(1, std::memory_order_seq_cst);
      }
      uint64_t state = state_.load(std::memory_order_acquire);
      seen = state >> kSplitShift;
      // Join the split if it is still open (and still this one).
      while ((state & kOpen) && (state >> kSplitShift) == seen) {
        if (state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) {
          _mm_setcsr(mxcsr_);
          job_(fn_);
          finished_.fetch_add(1, std::memory_order_release);
          break;
        }
      }
    }
  }

  std::atomic<bool> busy_{false};
  uint64_t splits_ = 0;  // the caller's count (under busy_)
  std::atomic<uint64_t> state_{0};
  std::atomic<uint64_t> finished_{0};
  std::atomic<int> sleeping_{0};
  void (*job_)(const void*) = nullptr;
  const void* fn_ = nullptr;
  unsigned mxcsr_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
};

// Runs `take` on the calling thread and on helpers: the crew's (as many
// as the pool has threads but one, fixed at the first call; those with
// nothing left to take return at once) if it is free, else `helpers` of
// the pool's. Either way the caller waits for no helper that had not
// started (the pool's take their own copy of `take`).
template <typename Fn>
void RunOnHelpers(::tsl::thread::ThreadPool* pool, int helpers, const Fn& take) {
  if (helpers <= 0) {
    take();
    return;
  }
  if (!crew_forked.load(std::memory_order_relaxed) &&
      Crew::Get(pool->NumThreads() - 1)->Run(take)) {
    return;
  }
  for (int i = 0; i < helpers; ++i) pool->Schedule(take);
  take();
}

// Runs fn(begin, end) for the blocks [0, block), [block, 2 block), ... of
// [0, n) on the calling thread and helper threads (RunOnHelpers), each
// taking the next block as it comes. The caller waits only for blocks being run, never
// for a helper that has not started (one that starts late finds no block
// left and touches only the shared counters), and it waits spinning,
// briefly, then yielding: the blocks of a decode step take microseconds,
// and TensorFlow's ParallelFor put the caller to sleep on a condition
// variable and woke it again. In one
// process alternating the two (2-core AMD EPYC VM, 2026-12-03, a decoding
// loop of the reference model's two layers and the choice, 25 x 128 steps,
// the same tokens): median step 0.175 against 0.395 ms at batch 1, 1.402
// against 1.560 ms at batch 64, 5.080 against 5.254 ms at batch 256.
template <typename Fn>
void RunBlocks(::tsl::thread::ThreadPool* pool, int64_t n, int64_t block, const Fn& fn) {
  const int64_t num_blocks = (n + block - 1) / block;
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto counters = std::make_shared<Counters>();
  // Only a block taken (next < num_blocks) reaches fn, and the caller waits
  // for every such block to be done, so fn and what it refers to outlive it.
  auto take = [counters, n, block, num_blocks, &fn]() {
    for (int64_t b = counters->next.fetch_add(1, std::memory_order_relaxed); b < num_blocks;
         b = counters->next.fetch_add(1, std::memory_order_relaxed)) {
      fn(b * block, std::min(n, (b + 1) * block));
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  RunOnHelpers(pool, std::min<int64_t>(pool->NumThreads() - 1, num_blocks - 1), take);
  SpinUntil(counters->done, num_blocks);
}

// Runs fn(part) for each part in [0, parts) once, on the calling thread and
// helper threads (RunOnHelpers), each thread taking first the part numbered by the CPU it runs
// on (sched_getcpu() % parts), then any part not taken yet. Waits as
// RunBlocks does. So where a layer's panels are split into one part per
// CPU, each CPU multiplies the same panels call after call, and those
// weights stay in its own L2 cache, whichever threads TensorFlow runs the
// op on.
template <typename Fn>
void RunPartsByCpu(::tsl::thread::ThreadPool* pool, const int parts, const Fn& fn) {
  struct State {
    explicit State(int parts) : taken(new std::atomic<bool>[parts]) {
      for (int i = 0; i < parts; ++i) taken[i].store(false, std::memory_order_relaxed);
    }
    std::unique_ptr<std::atomic<bool>[]> taken;
    std::atomic<int> done{0};
  };
  auto state = std::make_shared<State>(parts);
  // As in RunBlocks, only a part taken reaches fn, and the caller waits for
  // every part to be done.
  auto take = [state, parts, &fn]() {
    const int cpu = sched_getcpu();
    const int first = cpu < 0 ? 0 : cpu % parts;
    for (int i = 0; i < parts; ++i) {
      const int part = (first + i) % parts;
      if (!state->taken[part].exchange(true, std::memory_order_acq_rel)) {
        fn(part);
        state->done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  RunOnHelpers(pool, std::min(pool->NumThreads(), parts) - 1, take);
  SpinUntil(state->done, parts);
}

inline Packet8f Logistic(Packet8f x) {
  return Eigen::internal::scalar_logistic_op<float>().packetOp(x);
}

// Where one row's 4 units read their addend and cell state and write h', c'.
struct Row {
  const float* add;
  const float* c;
  float* h_out;
  float* c_out;
};

inline Packet8f Gate8(const float* add, int64_t units, int64_t first, int64_t second) {
  return _mm256_set_m128(_mm_loadu_ps(add + second * units), _mm_loadu_ps(add + first * units));
}

// Two rows' gates of 4 units (a and b; b may repeat a): z0 = [i, f], z1 =
// [g, o] before the addend. Writes h' and c' at the rows' units (b's only
// if `both`). tanh(g) is 2 sigmoid(2 g) - 1, so that g and o share one
// 8-wide sigmoid, and the two rows' c' share one tanh: 5 packet functions
// for 8 unit-rows, not 8.
inline void Cells(Packet8f z0a, Packet8f z1a, Packet8f z0b, Packet8f z1b, int64_t units,
                  const Row& a, const Row& b, bool both) {
  const Packet4f one = _mm_set1_ps(1.0f);
  const Packet8f scale = _mm256_set_m128(_mm_set1_ps(1.0f), _mm_set1_ps(2.0f));
  const Packet8f if_a = Logistic(_mm256_add_ps(z0a, Gate8(a.add, units, 0, 1)));
  const Packet8f go_a =
      Logistic(_mm256_mul_ps(scale, _mm256_add_ps(z1a, Gate8(a.add, units, 2, 3))));
  const Packet8f if_b = Logistic(_mm256_add_ps(z0b, Gate8(b.add, units, 0, 1)));
  const Packet8f go_b =
      Logistic(_mm256_mul_ps(scale, _mm256_add_ps(z1b, Gate8(b.add, units, 2, 3))));
  auto c_new = [&](Packet8f i_f, Packet8f g_o, const float* c) {
    const Packet4f g = _mm_sub_ps(_mm_add_ps(_mm256_castps256_ps128(g_o),
                                             _mm256_castps256_ps128(g_o)), one);
    return _mm_fmadd_ps(_mm256_castps256_ps128(i_f), g,
                        _mm_mul_ps(_mm256_extractf128_ps(i_f, 1), _mm_loadu_ps(c)));
  };
  const Packet4f ca = c_new(if_a, go_a, a.c), cb = c_new(if_b, go_b, b.c);
  const Packet8f t = Eigen::internal::ptanh(_mm256_set_m128(cb, ca));
  _mm_storeu_ps(a.c_out, ca);
  _mm_storeu_ps(a.h_out, _mm_mul_ps(_mm256_extractf128_ps(go_a, 1), _mm256_castps256_ps128(t)));
  if (both) {
    _mm_storeu_ps(b.c_out, cb);
    _mm_storeu_ps(b.h_out, _mm_mul_ps(_mm256_extractf128_ps(go_b, 1), _mm256_extractf128_ps(t, 1)));
  }
}

// Rows r0..r0+R-1 of one panel: the products over x's `in` columns then h's,
// then the gate math. panel: (in + units, 16); unit: the panel's first unit.
template <int R>
void Tile(const float* x, int64_t in, const float* h, int64_t units, const float* panel,
          const float* const* adds, const float* c, int64_t unit, float* h_out,
          float* c_out) {
  static_assert(R >= 1 && R <= kRows, "tile rows");
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
         a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  // Named accumulators, not an array: GCC spills an array's to the stack.
#define TEXTGEN_ROW(r, src, stride, k, b0, b1)                       \
  if constexpr (R > r) {                                           \
    const __m256 v = _mm256_broadcast_ss(src + r * stride + k);    \
    a##r##0 = _mm256_fmadd_ps(v, b0, a##r##0);                     \
    a##r##1 = _mm256_fmadd_ps(v, b1, a##r##1);                     \
  }
#define TEXTGEN_PRODUCT(src, stride, depth, offset)                                    \
  for (int64_t k = 0; k < depth; ++k) {                                               \
    const __m256 b0 = _mm256_load_ps(panel + (offset + k) * kColumns);                \
    const __m256 b1 = _mm256_load_ps(panel + (offset + k) * kColumns + 8);            \
    TEXTGEN_ROW(0, src, stride, k, b0, b1) TEXTGEN_ROW(1, src, stride, k, b0, b1)     \
    TEXTGEN_ROW(2, src, stride, k, b0, b1) TEXTGEN_ROW(3, src, stride, k, b0, b1)     \
    TEXTGEN_ROW(4, src, stride, k, b0, b1) TEXTGEN_ROW(5, src, stride, k, b0, b1)     \
  }
  TEXTGEN_PRODUCT(x, in, in, 0)
  TEXTGEN_PRODUCT(h, units, units, in)
#undef TEXTGEN_PRODUCT
#undef TEXTGEN_ROW
#define TEXTGEN_AT(r) \
  Row{adds[r] + unit, c + r * units + unit, h_out + r * units + unit, \
      c_out + r * units + unit}
  if constexpr (R >= 2) Cells(a00, a01, a10, a11, units, TEXTGEN_AT(0), TEXTGEN_AT(1), true);
  if constexpr (R >= 4) Cells(a20, a21, a30, a31, units, TEXTGEN_AT(2), TEXTGEN_AT(3), true);
  if constexpr (R >= 6) Cells(a40, a41, a50, a51, units, TEXTGEN_AT(4), TEXTGEN_AT(5), true);
  if constexpr (R == 1) Cells(a00, a01, a00, a01, units, TEXTGEN_AT(0), TEXTGEN_AT(0), false);
  if constexpr (R == 3) Cells(a20, a21, a20, a21, units, TEXTGEN_AT(2), TEXTGEN_AT(2), false);
  if constexpr (R == 5) Cells(a40, a41, a40, a41, units, TEXTGEN_AT(4), TEXTGEN_AT(4), false);
#undef TEXTGEN_AT
}

// ---- The same tile in AVX-512, on CPUs that have it ----
//
// Built into the same library (function by function, with a target
// attribute) and chosen when the op is created (LstmLayersOp's `vectors`).
// A 512-bit register holds a whole panel's row (16 columns), so a tile is
// kWideRows rows by two panels: 24 accumulators, and per input column two
// panel loads and kWideRows broadcasts for 24 FMAs. Each column's sum is
// the same FMAs in the same order as Tile's, and the gate math (WideCells)
// the same operations on each lane as Cells', so h' and c' are the same bits
// as the AVX2 tile's. On the 2-core Intel Xeon VM (AVX-512, 2026-12-04), the
// op on the reference model's two layers, one process alternating both:
// 1.24x / 1.48x / 1.71x the AVX2 tiles' speed at batch 1 / 64 / 256 (with
// Cells on each row's two 256-bit halves instead of WideCells: 1.57x at
// 256, its gate math 29% of the op's time, against about 12% now); a
// decode step at batch 256 went from 0.73x to 1.29x PyTorch's
// (bench_generate.py --pairs). Copying each tile's rows of [x, h] k-major
// first, so that a tile reads them through one pointer: no faster at 256,
// 0.69x at 64 (every block of panels copies every row); not kept.
#define TEXTGEN_AVX512 __attribute__((target("avx512f")))

constexpr int kWideRows = 12;  // rows per AVX-512 tile

// Eigen's scalar_logistic_op<float>::packetOp and ptanh_float (the
// functions Cells runs on 8 lanes) on 16, operation for operation, so each
// lane gets the same bits. One step differs: Eigen multiplies p by 2^m
// built from the clamped biased exponent (add, max, min, convert, shift,
// multiply); Logistic16 runs vscalefps, p 2^m in one operation. For every
// input that reaches it m is in [-75, 12] (x0 >= -104, else the mask
// gives 0; x0 <= 16.64), so the clamp never acts, 2^m is a normal float
// and both round the same product: the same bits for all 2^32 inputs
// (checked exhaustively against the six-operation form, 2026-12-04). A
// C++ loop of the reference model's step at batch 256 (two threads): with
// the prefetch in GateTile, 0.966-0.978x the time.
TEXTGEN_AVX512 inline __m512 Logistic16(__m512 x0) {
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __mmask16 zero_mask = _mm512_cmp_ps_mask(x0, _mm512_set1_ps(-104.f), _CMP_LT_OQ);
  __m512 x = _mm512_min_ps(_mm512_set1_ps(16.6355324f), x0);
  x = _mm512_mul_ps(x, half);
  const __m512 m = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), half),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(m, _mm512_set1_ps(-0.693359375f), x);
  r = _mm512_fmadd_ps(m, _mm512_set1_ps(2.12194440e-4f), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 p_even = _mm512_fmadd_ps(r2, _mm512_set1_ps(4.1898667812347412109375e-2f),
                                        _mm512_set1_ps(0.49999141693115234375f));
  const __m512 p_odd = _mm512_fmadd_ps(r2, _mm512_set1_ps(8.33471305668354034423828125e-3f),
                                       _mm512_set1_ps(0.16666877269744873046875f));
  const __m512 p_low = _mm512_add_ps(r, one);
  __m512 p = _mm512_fmadd_ps(r, p_odd, p_even);
  p = _mm512_fmadd_ps(r2, p, p_low);
  __m512 e = _mm512_scalef_ps(p, m);
  e = _mm512_mul_ps(e, e);
  return _mm512_mask_blend_ps(zero_mask, _mm512_div_ps(e, _mm512_add_ps(one, e)),
                              _mm512_setzero_ps());
}

TEXTGEN_AVX512 inline __m512 Tanh16(__m512 a) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-8.01773357391357422f),
                                 _mm512_min_ps(_mm512_set1_ps(8.01773357391357422f), a));
  const __m512 x2 = _mm512_mul_ps(x, x);
  const __m512 x3 = _mm512_mul_ps(x2, x);
  __m512 p = _mm512_set1_ps(1.394553628e-8f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.102733560e-5f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(3.520756727e-3f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(1.340216100e-1f));
  __m512 q = _mm512_set1_ps(8.015776984e-7f);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(3.326951409e-4f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2.597254514e-2f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(4.673548340e-1f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(x3, p, x);
  return _mm512_div_ps(p, q);
}

// Cells for N rows (1..4) of one panel, 16 lanes at a time: z[j] is row j's
// [i, f, g, o] of the panel's 4 units. The same operations as Cells on each
// lane: one logistic for a row's four gates (g scaled by 2), one tanh for
// the N rows' c'.
template <int N>
TEXTGEN_AVX512 inline void WideCells(const __m512* z, int64_t units, const Row* rows) {
  const __m128 one = _mm_set1_ps(1.0f);
  const __m512 scale = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1);
  __m128 c_new[4], o[4];
  for (int j = 0; j < N; ++j) {
    const float* add = rows[j].add;
    __m512 a = _mm512_castps128_ps512(_mm_loadu_ps(add));
    a = _mm512_insertf32x4(a, _mm_loadu_ps(add + units), 1);
    a = _mm512_insertf32x4(a, _mm_loadu_ps(add + 2 * units), 2);
    a = _mm512_insertf32x4(a, _mm_loadu_ps(add + 3 * units), 3);
    const __m512 gates = Logistic16(_mm512_mul_ps(scale, _mm512_add_ps(z[j], a)));
    const __m128 g2 = _mm512_extractf32x4_ps(gates, 2);
    const __m128 g = _mm_sub_ps(_mm_add_ps(g2, g2), one);
    c_new[j] = _mm_fmadd_ps(_mm512_castps512_ps128(gates), g,
                            _mm_mul_ps(_mm512_extractf32x4_ps(gates, 1), _mm_loadu_ps(rows[j].c)));
    o[j] = _mm512_extractf32x4_ps(gates, 3);
  }
  __m512 packed_c = _mm512_castps128_ps512(c_new[0]);
  if constexpr (N > 1) packed_c = _mm512_insertf32x4(packed_c, c_new[1], 1);
  if constexpr (N > 2) packed_c = _mm512_insertf32x4(packed_c, c_new[2], 2);
  if constexpr (N > 3) packed_c = _mm512_insertf32x4(packed_c, c_new[3], 3);
  const __m512 t = Tanh16(packed_c);
  const __m128 t_rows[4] = {_mm512_castps512_ps128(t), _mm512_extractf32x4_ps(t, 1),
                            _mm512_extractf32x4_ps(t, 2), _mm512_extractf32x4_ps(t, 3)};
  for (int j = 0; j < N; ++j) {
    _mm_storeu_ps(rows[j].c_out, c_new[j]);
    _mm_storeu_ps(rows[j].h_out, _mm_mul_ps(o[j], t_rows[j]));
  }
}

// Rows r0..r0+R-1 of P panels (1 or 2; the second `stride` floats after
// the first, its units 4 after the first's): Tile's products and gate math.
template <int R, int P>
TEXTGEN_AVX512 void WideTile(const float* x, int64_t in, const float* h, int64_t units,
                             const float* panel, int64_t stride, const float* const* adds,
                             const float* c, int64_t unit, float* h_out, float* c_out) {
  static_assert(R >= 1 && R <= kWideRows && (P == 1 || P == 2), "tile shape");
  const __m512 zero = _mm512_setzero_ps();
  __m512 a0_0 = zero, a0_1 = zero, a1_0 = zero, a1_1 = zero, a2_0 = zero, a2_1 = zero,
         a3_0 = zero, a3_1 = zero, a4_0 = zero, a4_1 = zero, a5_0 = zero, a5_1 = zero,
         a6_0 = zero, a6_1 = zero, a7_0 = zero, a7_1 = zero, a8_0 = zero, a8_1 = zero,
         a9_0 = zero, a9_1 = zero, a10_0 = zero, a10_1 = zero, a11_0 = zero, a11_1 = zero;
#define TEXTGEN_ROW(r, src, stride_, k)                              \
  if constexpr (R > r) {                                             \
    const __m512 v = _mm512_set1_ps(src[r * stride_ + k]);           \
    a##r##_0 = _mm512_fmadd_ps(v, b0, a##r##_0);                     \
    if constexpr (P == 2) a##r##_1 = _mm512_fmadd_ps(v, b1, a##r##_1); \
  }
#define TEXTGEN_PRODUCT(src, stride_, depth, offset)                                        \
  for (int64_t k = 0; k < depth; ++k) {                                                    \
    const __m512 b0 = _mm512_load_ps(panel + (offset + k) * kColumns);                     \
    const __m512 b1 = P == 2 ? _mm512_load_ps(panel + stride + (offset + k) * kColumns) : b0; \
    TEXTGEN_ROW(0, src, stride_, k) TEXTGEN_ROW(1, src, stride_, k)                        \
    TEXTGEN_ROW(2, src, stride_, k) TEXTGEN_ROW(3, src, stride_, k)                        \
    TEXTGEN_ROW(4, src, stride_, k) TEXTGEN_ROW(5, src, stride_, k)                        \
    TEXTGEN_ROW(6, src, stride_, k) TEXTGEN_ROW(7, src, stride_, k)                        \
    TEXTGEN_ROW(8, src, stride_, k) TEXTGEN_ROW(9, src, stride_, k)                        \
    TEXTGEN_ROW(10, src, stride_, k) TEXTGEN_ROW(11, src, stride_, k)                      \
  }
  TEXTGEN_PRODUCT(x, in, in, 0)
  TEXTGEN_PRODUCT(h, units, units, in)
#undef TEXTGEN_PRODUCT
#undef TEXTGEN_ROW
#define TEXTGEN_AT(r, q)                                                             \
  Row{adds[(r)] + unit + 4 * q, c + (r) * units + unit + 4 * q,                      \
      h_out + (r) * units + unit + 4 * q, c_out + (r) * units + unit + 4 * q}
#define TEXTGEN_CELLS(r0, r1, r2, r3, q)                                             \
  if constexpr (R > r0) {                                                            \
    const __m512 z[4] = {a##r0##_##q, a##r1##_##q, a##r2##_##q, a##r3##_##q};        \
    const Row at[4] = {TEXTGEN_AT(r0, q), TEXTGEN_AT(R > r1 ? r1 : r0, q),           \
                       TEXTGEN_AT(R > r2 ? r2 : r0, q), TEXTGEN_AT(R > r3 ? r3 : r0, q)}; \
    WideCells<std::min(4, R - r0)>(z, units, at);                                    \
  }
#define TEXTGEN_PANEL(q) \
  TEXTGEN_CELLS(0, 1, 2, 3, q) TEXTGEN_CELLS(4, 5, 6, 7, q) TEXTGEN_CELLS(8, 9, 10, 11, q)
  TEXTGEN_PANEL(0)
  if constexpr (P == 2) {
    TEXTGEN_PANEL(1)
  }
#undef TEXTGEN_PANEL
#undef TEXTGEN_CELLS
#undef TEXTGEN_AT
}

// WideTile<R, P> for R = rows (1..kWideRows).
template <int P>
TEXTGEN_AVX512 void WideTiles(int64_t rows, const float* x, int64_t in, const float* h,
                              int64_t units, const float* panel, int64_t stride,
                              const float* const* adds, const float* c, int64_t unit,
                              float* h_out, float* c_out) {
#define TEXTGEN_CASE(n) \
  case n: WideTile<n, P>(x, in, h, units, panel, stride, adds, c, unit, h_out, c_out); break;
  switch (rows) {
    TEXTGEN_CASE(1) TEXTGEN_CASE(2) TEXTGEN_CASE(3) TEXTGEN_CASE(4) TEXTGEN_CASE(5)
    TEXTGEN_CASE(6) TEXTGEN_CASE(7) TEXTGEN_CASE(8) TEXTGEN_CASE(9) TEXTGEN_CASE(10)
    TEXTGEN_CASE(11)
    default: WideTile<kWideRows, P>(x, in, h, units, panel, stride, adds, c, unit, h_out,
                                    c_out);
  }
#undef TEXTGEN_CASE
}

// One row's gate math for 16 units from their sums z = [i, f, g, o] (16
// lanes each, before the addend): the addend's gates at a, a + units, a +
// 2 units, a + 3 units, the cell state at c; writes h' and c' (the same
// operations as Cells on each lane).
TEXTGEN_AVX512 inline void WideGates(const __m512* z, const float* a, int64_t units,
                                     const float* c, float* h_out, float* c_out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512 i = Logistic16(_mm512_add_ps(z[0], _mm512_loadu_ps(a)));
  const __m512 f = Logistic16(_mm512_add_ps(z[1], _mm512_loadu_ps(a + units)));
  const __m512 g2 =
      Logistic16(_mm512_mul_ps(two, _mm512_add_ps(z[2], _mm512_loadu_ps(a + 2 * units))));
  const __m512 o = Logistic16(_mm512_add_ps(z[3], _mm512_loadu_ps(a + 3 * units)));
  const __m512 g = _mm512_sub_ps(_mm512_add_ps(g2, g2), one);
  const __m512 c_new = _mm512_fmadd_ps(i, g, _mm512_mul_ps(f, _mm512_loadu_ps(c)));
  _mm512_storeu_ps(c_out, c_new);
  _mm512_storeu_ps(h_out, _mm512_mul_ps(o, Tanh16(c_new)));
}

// ---- AVX-512 tiles on gate-major panels ----
//
// Where the packed kernel has panels of 16 units (pack_kernel(...,
// panel_units=16): per input column the 16 units' i, then f, g, o), a
// register holds one gate of 16 units, so the gate math is lane for lane:
// the addend, c, h' and c' are whole 512-bit loads and stores of Keras's
// own order, where WideCells gathers and scatters 128-bit quarters (about
// seven shuffles a row and panel, on the port that also runs half of the
// 512-bit FMAs). A tile is kGateRows rows by the four gates (24
// accumulators; per input column four panel loads and kGateRows
// broadcasts for 24 FMAs). Each column's sum is the same FMAs in the same
// order as Tile's, and each lane the same operations as Cells' (g scaled
// by 2 before its logistic, tanh(g) = 2 sigmoid(2 g) - 1, c' = fma(i, g,
// f c), h' = o tanh(c')), so h' and c' are the same bits (tested). On the
// 2-core Xeon VM (2026-12-04), a C++ loop of the reference model's step at
// batch 256 on two threads, each its half of each layer's panels, with
// the same checksum: 1.37-1.44 against 1.49-1.57 ms a step (6 rows; 1.46-
// 1.48 with 5, 1.49-1.53 with 4). Sampled decoding of that model, one
// process alternating two models packed either way (16 measurements
// each): 1.111x the tokens/s at batch 256, 1.073x at 64, 0.988x and
// 1.003x at 1.
constexpr int kGateRows = 6;
constexpr int kGateUnits = 16;  // units per gate-major panel
constexpr int kGatePrefetch = 8 * 4 * kGateUnits;  // floats ahead GateTile prefetches

template <int R>
TEXTGEN_AVX512 void GateTile(const float* x, int64_t in, const float* h, int64_t units,
                             const float* panel, const float* const* adds, const float* c,
                             int64_t unit, float* h_out, float* c_out) {
  static_assert(R >= 1 && R <= kGateRows, "tile rows");
  // Every loop over rows and gates unrolled, so that the sums stay in
  // registers.
  __m512 sum[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) sum[r][g] = _mm512_setzero_ps();
  }
  // The input columns [x, h]: x's (in of them), then h's (units).
  const float* w = panel;
  for (int half = 0; half < 2; ++half) {
    const float* src = half == 0 ? x : h;
    const int64_t stride = half == 0 ? in : units;
    for (int64_t k = 0; k < stride; ++k, w += 4 * kGateUnits) {
      __m512 b[4];
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        b[g] = _mm512_load_ps(w + g * kGateUnits);
        // The panel 8 columns ahead (2 KB; past its end, the next panel's
        // start, which this thread reads next): 0.974-0.983x the time of
        // the C++ step loop above without it; 4 KB ahead the same.
        _mm_prefetch(reinterpret_cast<const char*>(w + kGatePrefetch + g * kGateUnits),
                     _MM_HINT_T0);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 v = _mm512_set1_ps(src[r * stride + k]);
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) sum[r][g] = _mm512_fmadd_ps(v, b[g], sum[r][g]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t at = r * units + unit;
    WideGates(sum[r], adds[r] + unit, units, c + at, h_out + at, c_out + at);
  }
}

// GateTile<n> for n <= R rows.
template <int R>
TEXTGEN_AVX512 void GateTiles(int64_t n, const float* x, int64_t in, const float* h,
                              int64_t units, const float* panel, const float* const* adds,
                              const float* c, int64_t unit, float* h_out, float* c_out) {
  if constexpr (R > 1) {
    if (n < R) {
      GateTiles<R - 1>(n, x, in, h, units, panel, adds, c, unit, h_out, c_out);
      return;
    }
  }
  GateTile<R>(x, in, h, units, panel, adds, c, unit, h_out, c_out);
}

// One layer's step for `rows` rows: what its tiles read and write.
struct Layer {
  const float* x = nullptr;  // (rows, in)
  int64_t in = 0;
  const float* h = nullptr;  // (rows, units), as c
  const float* c = nullptr;
  int64_t units = 0;
  // (units / panel_units, in + units, 4 panel_units): panels of 4 units
  // (every tile) or 16 (gate-major, GateTile only)
  const float* packed = nullptr;
  int64_t panel_units = 4;
  // TextgenLstmLayersBf16's instead: (units / 16, 4, depth / 2, 32)
  // bfloat16 (see AmxPanels), depth = in + units rounded up to kAmxDepth.
  const uint16_t* packed_bf16 = nullptr;
  int64_t depth = 0;
  std::vector<const float*> adds;  // each row's addend (4 units)
  float* h_out = nullptr;  // (rows, units), as c_out
  float* c_out = nullptr;
};

constexpr int kAmxRows = 16;   // rows per AMX tile
constexpr int kAmxDepth = 32;  // bfloat16 input columns per AMX tile
constexpr int kAmxBlockRows = 2 * kAmxRows;  // rows per block of TextgenLstmLayersBf16

// Checks a layer's h, c, packed and addend for `rows` rows and `in` input
// columns (addend_rows: nullptr or the op's input) and fills `layer` but for
// x, h_out and c_out. With `bf16`, packed is TextgenLstmLayersBf16's.
absl::Status ReadLayer(const Tensor& h, const Tensor& c, const Tensor& packed,
                       const Tensor& addend, const Tensor* addend_rows, int64_t rows,
                       int64_t in, bool bf16, Layer* layer) {
  if (h.dims() != 2 || c.shape() != h.shape() || h.dim_size(0) != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "h and c must be (", rows, ", units) alike, got ", h.shape().DebugString(), " and ",
        c.shape().DebugString()));
  }
  const int64_t units = h.dim_size(1);
  int64_t panel_units = kGateUnits;  // bfloat16 panels are gate-major
  if (bf16) {
    const int64_t depth = (in + units + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
    if (units % kGateUnits != 0 ||
        packed.shape() != TensorShape({units / kGateUnits, 4, depth / 2, 2 * kGateUnits})) {
      return absl::InvalidArgumentError(absl::StrCat(
          "packed must be (units / 16, 4, depth / 2, 32) = (", units / kGateUnits, ", 4, ",
          depth / 2, ", 32) with units a multiple of 16 and depth = in + units = ", in + units,
          " rounded up to a multiple of 32, got ", packed.shape().DebugString()));
    }
    layer->packed_bf16 = reinterpret_cast<const uint16_t*>(packed.tensor_data().data());
    layer->depth = depth;
  } else {
    if (packed.dims() != 3 || packed.dim_size(2) != 4 * kGateUnits) panel_units = 4;
    if (units % panel_units != 0 ||
        packed.shape() != TensorShape({units / panel_units, in + units, 4 * panel_units})) {
      return absl::InvalidArgumentError(absl::StrCat(
          "packed must be (units / 4, in + units, 16) = (", units / 4, ", ", in + units,
          ", 16) with units a multiple of 4, or (units / 16, in + units, 64) with units a "
          "multiple of 16, got ", packed.shape().DebugString()));
    }
    layer->packed = packed.flat<float>().data();
  }
  const int alignment = panel_units == kGateUnits ? 64 : 32;
  if (reinterpret_cast<uintptr_t>(packed.tensor_data().data()) % alignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat("packed is not ", alignment,
                                                   "-byte aligned"));
  }
  const bool picked = addend_rows != nullptr && addend_rows->NumElements() > 0;
  if (addend_rows != nullptr &&
      (addend_rows->dims() != 1 || (addend_rows->dim_size(0) != rows && picked))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "addend_rows must be (", rows, ",) or empty, got ",
        addend_rows->shape().DebugString()));
  }
  const bool per_row = addend.dims() == 2;
  if (!((addend.shape() == TensorShape({4 * units}) && !picked) ||
        (per_row && addend.dim_size(1) == 4 * units &&
         (picked || addend.dim_size(0) == rows)))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "addend must be (4 units) = (", 4 * units, ",), (rows, 4 units), or (n, 4 "
        "units) with addend_rows; got ", addend.shape().DebugString(),
        addend_rows == nullptr ? std::string()
                               : absl::StrCat(" with addend_rows ",
                                              addend_rows->shape().DebugString())));
  }
  // Each row's addend, checked before any work.
  const float* ap = addend.flat<float>().data();
  layer->adds.assign(rows, ap);
  if (per_row) {
    const int32_t* index = picked ? addend_rows->flat<int32_t>().data() : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = picked ? index[r] : r;
      if (i < 0 || i >= addend.dim_size(0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "addend_rows[", r, "] = ", i, " is not in [0, ", addend.dim_size(0), ")"));
      }
      layer->adds[r] = ap + i * 4 * units;
    }
  }
  layer->in = in;
  layer->h = h.flat<float>().data();
  layer->c = c.flat<float>().data();
  layer->units = units;
  layer->panel_units = panel_units;
  return absl::OkStatus();
}

// Rows [row_begin, row_end) of panels [begin, end) of a layer: kChunkRows
// rows at a time, every panel for them, a tile of kRows rows after another
// (the panel, depth x 64 bytes, stays in the core's caches meanwhile); with
// `wide`, AVX-512 tiles of kWideRows rows by two panels (one where a single
// panel is left).
void Panels(const Layer& l, int64_t row_begin, int64_t row_end, int64_t begin, int64_t end,
            bool wide) {
  const int64_t depth = l.in + l.units;
  for (int64_t chunk = row_begin; chunk < row_end; chunk += kChunkRows) {
    const int64_t chunk_end = std::min(row_end, chunk + kChunkRows);
    if (l.panel_units == kGateUnits) {  // gate-major panels: GateTile
      for (int64_t p = begin; p < end; ++p) {
        const float* panel = l.packed + p * depth * 4 * kGateUnits;
        for (int64_t r = chunk; r < chunk_end; r += kGateRows) {
          GateTiles<kGateRows>(std::min<int64_t>(kGateRows, chunk_end - r), l.x + r * l.in,
                               l.in, l.h + r * l.units, l.units, panel, l.adds.data() + r,
                               l.c + r * l.units, kGateUnits * p, l.h_out + r * l.units,
                               l.c_out + r * l.units);
        }
      }
      continue;
    }
    for (int64_t p = begin; p < end; p += wide ? 2 : 1) {
      const float* panel = l.packed + p * depth * kColumns;
      const int64_t unit = 4 * p;
      const int64_t tile_rows = wide ? kWideRows : kRows;
      for (int64_t r = chunk; r < chunk_end; r += tile_rows) {
        const float* xr = l.x + r * l.in;
        const float* hr = l.h + r * l.units;
        const float* const* ar = l.adds.data() + r;
        const float* cr = l.c + r * l.units;
        float* hor = l.h_out + r * l.units;
        float* cor = l.c_out + r * l.units;
        const int64_t u = l.units, in = l.in;
        const int64_t n = std::min<int64_t>(tile_rows, chunk_end - r);
        if (wide) {
          const int64_t stride = depth * kColumns;
          if (p + 1 < end) {
            WideTiles<2>(n, xr, in, hr, u, panel, stride, ar, cr, unit, hor, cor);
          } else {
            WideTiles<1>(n, xr, in, hr, u, panel, stride, ar, cr, unit, hor, cor);
          }
          continue;
        }
        switch (n) {
          case 1: Tile<1>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
          case 2: Tile<2>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
          case 3: Tile<3>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
          case 4: Tile<4>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
          case 5: Tile<5>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
          default: Tile<kRows>(xr, in, hr, u, panel, ar, cr, unit, hor, cor); break;
        }
      }
    }
  }
}

// A layer's step for `rows` rows on the calling thread and the pool's,
// split by its panels (each thread writes its own units of h' and c'; with
// `wide`, an even number of panels per block but the last).
void RunLayer(::tsl::thread::ThreadPool* pool, const Layer& l, int64_t rows, bool wide) {
  const int64_t num_panels = l.units / l.panel_units;
  const int64_t flops = 2 * rows * (l.in + l.units) * 4 * l.units;
  const int64_t threads = pool->NumThreads();
  if (flops < (int64_t{1} << 16) || threads <= 1) {  // a few microseconds
    Panels(l, 0, rows, 0, num_panels, wide);
    return;
  }
  // At batch 1 the step streams its packed weights (3 MB for the
  // reference model) from L3, and two cores stream twice as fast: one
  // block per thread. From 16 rows on, about 8 blocks per thread, which
  // idle threads take as they come: a thread that the OS pauses (the
  // process's other threads share the cores) then holds up one small
  // block, not half the layer. Measured on the 2-core AMD EPYC VM
  // (2026-12-03, medians of 7 calls, sampled decoding): batch 1 7.6k and
  // 9.6k tokens/s against 6.7k and 6.2k on one thread; batch 256 84-86k
  // against 80-81k with one block per thread.
  const int64_t blocks_per_thread = rows < 16 ? 1 : 8;
  int64_t block = std::max<int64_t>(1, (num_panels + blocks_per_thread * threads - 1) /
                                           (blocks_per_thread * threads));
  if (wide && l.panel_units == 4) block += block % 2;
  RunBlocks(pool, num_panels, block,
            [&](int64_t begin, int64_t end) { Panels(l, 0, rows, begin, end, wide); });
}

// Checks x, addend_rows (the first layer's) and each layer's h, c, packed
// and addend, allocates each layer's h' and c' as outputs i and n + i (n
// layers), and fills `layers`. An error names its layer.
absl::Status ReadLayers(OpKernelContext* ctx, const Tensor& x, const Tensor& addend_rows,
                        const std::vector<const Tensor*>& h,
                        const std::vector<const Tensor*>& c,
                        const std::vector<const Tensor*>& packed,
                        const std::vector<const Tensor*>& addends, bool bf16,
                        std::vector<Layer>* layers) {
  const int n = h.size();
  auto where = [](int i) { return absl::StrCat("layer ", i, ": "); };
  if (h[0]->dims() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        where(0), "h must be (rows, units), got ", h[0]->shape().DebugString()));
  }
  const int64_t rows = h[0]->dim_size(0);
  if (x.dims() != 2 || (x.dim_size(0) != rows && x.dim_size(1) != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "x must be (", rows, ", in) or (n, 0), got ", x.shape().DebugString()));
  }
  layers->assign(n, Layer());
  for (int i = 0; i < n; ++i) {
    const absl::Status read =
        ReadLayer(*h[i], *c[i], *packed[i], *addends[i], i == 0 ? &addend_rows : nullptr, rows,
                  i == 0 ? x.dim_size(1) : (*layers)[i - 1].units, bf16, &(*layers)[i]);
    if (!read.ok()) return absl::InvalidArgumentError(absl::StrCat(where(i), read.message()));
  }
  for (int i = 0; i < n; ++i) {
    Tensor *h_out = nullptr, *c_out = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(i, h[i]->shape(), &h_out));
    TF_RETURN_IF_ERROR(ctx->allocate_output(n + i, h[i]->shape(), &c_out));
    Layer& layer = (*layers)[i];
    layer.x = i == 0 ? x.flat<float>().data() : (*layers)[i - 1].h_out;
    layer.h_out = h_out->flat<float>().data();
    layer.c_out = c_out->flat<float>().data();
  }
  return absl::OkStatus();
}

// ReadLayers on the op's inputs (x, addend_rows, and the lists h, c,
// packed, addends); rows: h's.
absl::Status ReadOpLayers(OpKernelContext* ctx, bool bf16, std::vector<Layer>* layers,
                          int64_t* rows) {
  std::vector<const Tensor*> lists[4];  // h, c, packed, addends
  const char* names[4] = {"h", "c", "packed", "addends"};
  for (int k = 0; k < 4; ++k) {
    OpInputList list;
    TF_RETURN_IF_ERROR(ctx->input_list(names[k], &list));
    for (const Tensor& t : list) lists[k].push_back(&t);
  }
  TF_RETURN_IF_ERROR(ReadLayers(ctx, ctx->input(0), ctx->input(1), lists[0], lists[1],
                                lists[2], lists[3], bf16, layers));
  *rows = lists[0][0]->dim_size(0);
  return absl::OkStatus();
}

// From this many rows on, TextgenLstmLayers splits the step by rows, not
// by each layer's panels (see LstmLayersOp).
constexpr int64_t kGroupedRows = 128;
constexpr int64_t kGroupRows = kRows;  // rows per block then: one tile

// Both layers ops' outputs: h' and c' shaped as h.
absl::Status LayersShape(::tensorflow::shape_inference::InferenceContext* c) {
  std::vector<::tensorflow::shape_inference::ShapeHandle> h;
  TF_RETURN_IF_ERROR(c->input("h", &h));
  TF_RETURN_IF_ERROR(c->set_output("h_out", h));
  return c->set_output("c_out", h);
}

REGISTER_OP("TextgenLstmLayers")
    .Input("x: float")
    .Input("addend_rows: int32")
    .Input("h: N * float")
    .Input("c: N * float")
    .Input("packed: N * float")
    .Input("addends: N * float")
    .Output("h_out: N * float")
    .Output("c_out: N * float")
    .Attr("N: int >= 1")
    .Attr("vectors: {'best', 'avx2', 'avx512'} = 'best'")
    .SetShapeFn(LayersShape);

// An op's `vectors` attribute: whether it runs its AVX-512 tiles ('avx512',
// or 'best' where the CPU has AVX-512) or the AVX2 ones ('avx2').
absl::Status ReadVectors(OpKernelConstruction* ctx, bool* wide) {
  std::string vectors;
  TF_RETURN_IF_ERROR(ctx->GetAttr("vectors", &vectors));
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (vectors == "avx512" && !avx512) {
    return absl::InvalidArgumentError("vectors='avx512': this CPU has no AVX-512");
  }
  *wide = vectors == "avx512" || (vectors == "best" && avx512);
  return absl::OkStatus();
}

// Whether a 1 / parts share of every layer's packed weights fits one
// core's L2 cache (sysconf's figure; false where it gives none).
bool SharesFitL2(const std::vector<Layer>& layers, int parts) {
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  int64_t bytes = 0;
  for (const Layer& layer : layers) {
    bytes += (layer.in + layer.units) * 4 * layer.units * static_cast<int64_t>(sizeof(float));
  }
  return l2 > 0 && bytes / parts <= l2;
}

// Every layer's step of a stack, each layer above taking the one below's h'.
// Below kGroupedRows rows, layer after layer, each split by its panels
// (RunLayer); from there on, blocks of kGroupRows rows, each through every
// layer, which threads take as they come: a layer's input rows are then the h'
// its thread just wrote (in its core's cache, not the other core's), and the
// step is one split, not one per layer. In one process alternating the two
// (2-core AMD EPYC VM, 2026-12-03, the reference model's two layers + the
// choice op, 15-21 x 64-128 steps, the same tokens), with blocks of 24 rows:
// median step 3.70-3.91 against 4.28-4.45 ms at batch 256, 3.38 against 3.91 ms
// at batch 192, a tie at 128 (2.18 against 2.22), and 1.04-1.14x slower at 64
// (each block streams all the layers' weights, 3 MB, from L3). Blocks of one
// tile (6 rows) against 24 (the same A/B, 40-60 x 128 steps): 0.92-1.02x the
// median step at batch 256 (six runs, 0.965x on average, the 6-row build run
// second; the build run second gains ~2%, so again on 2026-12-04 with each
// order twice: 0.947 and 0.955x with it second, 0.992 and 0.994x with it first,
// ~0.97x), 0.92x at 192, 0.88-0.92x at 128: the threads end a step together
// (256 rows are 43 blocks, not 11, of which one thread ran 6), and streaming
// the weights from L3 43 times a step (~35 GB/s) costs no more than 11 times.
//
// With AVX-512 tiles, from kGroupedRows rows on, where a CPU's share of all
// the layers' weights fits its L2 cache (the Xeon VM's 2 MB against the
// reference model's 3 MB on 2 CPUs; the AMD VM has 512 KB): layer after
// layer, each split into one part of its panels per thread, each CPU taking
// the same part every call (RunPartsByCpu), so that its weights stay in its
// L2 instead of coming from L3 for every block of rows. On the 2-core Xeon
// VM (2026-12-04): a standalone C++ loop of the reference model's step on
// two threads (a spin barrier between the layers), 1.30 against 1.45 ms per
// step at batch 256 (rows split as above); in the op, three process pairs
// alternating: median step 1.50-1.57 against 1.63-1.67 ms at batch 256,
// 0.78-0.86 against 0.84-0.90 at 128; a tie at 64, where it is not used.
// Whole decode steps (sampled, the choice op between the calls), one
// process alternating: 1.019x and 1.028x the tokens/s at batch 256 (10 and
// 16 pairs; 8 of 10 and 13 of 16 pairs faster).
//
// `vectors`: the tiles' instruction set: 'avx512' (WideTile), 'avx2'
// (Tile), or 'best': AVX-512 where the CPU has it. Both give the same bits.
class LstmLayersOp : public OpKernel {
 public:
  explicit LstmLayersOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadVectors(ctx, &wide_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<Layer> layers;
    int64_t rows = 0;
    OP_REQUIRES_OK(ctx, ReadOpLayers(ctx, /*bf16=*/false, &layers, &rows));
    for (size_t i = 0; i < layers.size(); ++i) {
      OP_REQUIRES(ctx, wide_ || layers[i].panel_units == 4,
                  absl::InvalidArgumentError(absl::StrCat(
                      "layer ", i, ": packed in panels of 16 units needs the AVX-512 tiles "
                      "(vectors='avx2' or a CPU without AVX-512 reads panels of 4)")));
    }
    if (rows == 0) return;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int threads = pool->NumThreads();
    if (wide_ && threads > 1 && rows >= kGroupedRows && SharesFitL2(layers, threads)) {
      for (const Layer& layer : layers) {
        const int64_t panels = layer.units / layer.panel_units;
        // Part k: panels [edge(k), edge(k + 1)); of 4 units, an even number
        // but the last (WideTile's pairs).
        auto edge = [&](int k) {
          const int64_t e = panels * k / threads;
          return layer.panel_units == 4 ? std::min(panels, e + e % 2) : e;
        };
        RunPartsByCpu(pool, threads, [&](int part) {
          Panels(layer, 0, rows, edge(part), edge(part + 1), true);
        });
      }
      return;
    }
    if (rows < kGroupedRows || threads <= 1) {
      for (const Layer& layer : layers) RunLayer(pool, layer, rows, wide_);
      return;
    }
    RunBlocks(pool, rows, wide_ ? kWideRows : kGroupRows, [&](int64_t begin, int64_t end) {
      for (const Layer& layer : layers) {
        Panels(layer, begin, end, 0, layer.units / layer.panel_units, wide_);
      }
    });
  }

 private:
  bool wide_ = false;  // AVX-512 tiles
};

REGISTER_KERNEL_BUILDER(Name("TextgenLstmLayers").Device(::tensorflow::DEVICE_CPU),
                        LstmLayersOp);

// ---- TextgenLstmLayersBf16: the layers' products on AMX ----------------------
//
// --precision=bfloat16 with --decode_ops=fused, on CPUs with AMX (Intel
// Sapphire Rapids on): the same step as TextgenLstmLayers, but [x, h] and
// the weights are rounded to bfloat16 (to nearest even) and the products
// run on the AMX tile unit, each 16 x 16 block of sums in float32 (TDPBF16PS:
// the products of bfloat16 pairs are exact in float32). The addend, the
// gate math and the state stay float32 (WideGates). A sum's order depends
// only on its row's own inputs, never on the other rows or the split, so a
// row's result is the same whatever the batch.
//
// A layer's weights are half the float32 bytes (the reference model's 1.5
// MB fit each core's 2 MB L2 on the Xeon VM), so the step is split by rows:
// blocks of kAmxBlockRows rows, each through every layer on the thread
// that took it; below two blocks, each layer by its panels.
#define TEXTGEN_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

// Whether this process may run AMX-BF16 (with AVX512-BF16 for the
// rounding): the CPU has it and Linux gave the process the tile state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
absl::Status AmxReady() {
  static const absl::Status* status = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    __builtin_cpu_init();
    const bool amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) &&
                     (d & (1u << 24));  // AMX-BF16, AMX-TILE
    const bool bf16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
    if (!amx || !bf16 || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl")) {
      return new absl::Status(absl::FailedPreconditionError(
          "TextgenLstmLayersBf16 needs a CPU with AMX-BF16 and AVX512-BF16 (Intel Xeon "
          "Sapphire Rapids or later); this one has not"));
    }
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) != 0) {
      return new absl::Status(absl::FailedPreconditionError(absl::StrCat(
          "the OS does not let this process use AMX (arch_prctl ARCH_REQ_XCOMP_PERM: ",
          std::strerror(errno), "; Linux 5.16 or later gives it)")));
    }
    return new absl::Status();
  }();
  return *status;
}

// The tile configuration of every call, eight tiles of 16 rows of 64
// bytes: a block's sums (16 rows x 16 float32) in 0-3, its rows of [x, h]
// (16 x 32 bfloat16) in 4 (4 and 5 for 32 rows), the weights (16 pairs of
// input columns x 16 columns) in the others (AmxPanels). Palette 1's
// layout.
struct AmxConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes[16] = {};
  uint8_t rows[16] = {};
};

TEXTGEN_AMX void AmxStart() {
  AmxConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kAmxRows;
    config.bytes[t] = 64;
  }
  _tile_loadconfig(&config);
}

// count floats at src as bfloat16 (nearest even) at dst.
TEXTGEN_AMX inline void ToBf16(const float* src, int64_t count, uint16_t* dst) {
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 mask =
        count - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - j)) - 1);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + j));
    _mm256_mask_storeu_epi16(dst + j, mask, reinterpret_cast<__m256i>(b));
  }
}

// a (rows, depth) bfloat16 for rows = n rounded up to a multiple of
// kAmxRows: rows [x, h, 0...] of n rows, then zero rows.
TEXTGEN_AMX void AmxRows(const Layer& l, int64_t row, int64_t n, uint16_t* a) {
  for (int64_t r = 0; r < (n + kAmxRows - 1) / kAmxRows * kAmxRows; ++r) {
    uint16_t* out = a + r * l.depth;
    if (r >= n) {
      std::memset(out, 0, l.depth * sizeof(uint16_t));
      continue;
    }
    ToBf16(l.x + (row + r) * l.in, l.in, out);
    ToBf16(l.h + (row + r) * l.units, l.units, out + l.in);
    std::memset(out + l.in + l.units, 0, (l.depth - l.in - l.units) * sizeof(uint16_t));
  }
}

// Sums of a panel for up to kAmxBlockRows rows: [row tile][gate][row][unit].
using AmxSums = float[2][4][kAmxRows][kGateUnits];

// The gate math of rows [from, to) of a block (from `row`) for the 16
// units from `unit` of a layer, from their sums.
TEXTGEN_AMX void AmxGates(const Layer& l, int64_t row, int64_t unit, const AmxSums& sums,
                          int64_t from, int64_t to) {
  for (int64_t r = from; r < to; ++r) {
    const auto& tile = sums[r / kAmxRows];
    const int64_t t = r % kAmxRows;
    const __m512 z[4] = {_mm512_load_ps(tile[0][t]), _mm512_load_ps(tile[1][t]),
                         _mm512_load_ps(tile[2][t]), _mm512_load_ps(tile[3][t])};
    const int64_t at = (row + r) * l.units + unit;
    WideGates(z, l.adds[row + r] + unit, l.units, l.c + at, l.h_out + at, l.c_out + at);
  }
}

// Panels [begin, end) of a layer for the n rows (n <= 2 kAmxRows) from
// `row` whose [x, h] are in a (AmxRows): per panel (16 units), the four
// gates' sums as tiles over the input columns, 32 at a time, stored, then
// each row's gate math. The packed panel p is, per gate, depth / 2 rows of
// 16 column pairs: row k holds input columns 2 k and 2 k + 1 of each of
// the 16 units' columns (TDPBF16PS's layout). Up to 16 rows: one tile of
// rows by the four gates; more: two tiles of rows by two gates at a time,
// so that each weight tile loaded serves 32 rows (the weights come from
// L2, the rows from L1), and the gate math of the panel before runs a few
// rows at a time between the tile instructions, on the vector units while
// the tile unit multiplies. Either way each sum runs over the input
// columns in the same order, and each row's gate math is the same.
TEXTGEN_AMX void AmxPanels(const Layer& l, int64_t row, int64_t n, const uint16_t* a,
                           int64_t begin, int64_t end) {
  alignas(64) AmxSums sums[2];
  const int64_t gate = l.depth / 2 * 2 * kGateUnits;  // bfloat16s per gate
  const int64_t stride = l.depth * sizeof(uint16_t);
  if (n <= kAmxRows) {
    for (int64_t p = begin; p < end; ++p) {
      const uint16_t* panel = l.packed_bf16 + p * 4 * gate;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < l.depth; k += kAmxDepth) {
        const uint16_t* w = panel + k * kGateUnits;
        _tile_loadd(4, a + k, stride);
        _tile_loadd(5, w, 64);
        _tile_loadd(6, w + gate, 64);
        _tile_loadd(7, w + 2 * gate, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(2, 4, 7);
        _tile_loadd(5, w + 3 * gate, 64);
        _tile_dpbf16ps(3, 4, 5);
      }
      _tile_stored(0, sums[0][0][0], 64);
      _tile_stored(1, sums[0][0][1], 64);
      _tile_stored(2, sums[0][0][2], 64);
      _tile_stored(3, sums[0][0][3], 64);
      AmxGates(l, row, kGateUnits * p, sums[0], 0, n);
    }
    return;
  }
  if (begin >= end) return;
  const uint16_t* a2 = a + kAmxRows * l.depth;
  const int64_t steps = 2 * (l.depth / kAmxDepth);  // tile steps per panel
  for (int64_t p = begin; p <= end; ++p) {
    // The panel before: its sums in sums[(p - 1) % 2], its rows' gate math
    // spread over this panel's steps (after the last panel, all at once).
    const AmxSums& before = sums[(p - 1) & 1];
    const int64_t before_unit = kGateUnits * (p - 1);
    if (p == end) {
      AmxGates(l, row, before_unit, before, 0, n);
      break;
    }
    const uint16_t* panel = l.packed_bf16 + p * 4 * gate;
    AmxSums& out = sums[p & 1];
    int64_t done = 0, step = 0;
    for (int g = 0; g < 4; g += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < l.depth; k += kAmxDepth) {
        const uint16_t* w = panel + g * gate + k * kGateUnits;
        _tile_loadd(4, a + k, stride);
        _tile_loadd(6, w, 64);
        _tile_loadd(7, w + gate, 64);
        _tile_loadd(5, a2 + k, stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        if (p > begin) {
          const int64_t upto = n * ++step / steps;
          AmxGates(l, row, before_unit, before, done, upto);
          done = upto;
        }
      }
      _tile_stored(0, out[0][g], 64);
      _tile_stored(1, out[0][g + 1], 64);
      _tile_stored(2, out[1][g], 64);
      _tile_stored(3, out[1][g + 1], 64);
    }
  }
}

// Rows [row_begin, row_end) of `rows`, kAmxBlockRows at a time, each block
// through every one of the `count` layers from `layers` (panels [begin,
// end) of each; end -1: all). Configures this thread's tiles and releases
// them after.
TEXTGEN_AMX void AmxBlocks(const Layer* layers, int64_t count, int64_t rows, int64_t row_begin,
                           int64_t row_end, int64_t begin, int64_t end) {
  int64_t depth = 0;
  for (int64_t i = 0; i < count; ++i) depth = std::max(depth, layers[i].depth);
  std::vector<uint16_t> a(kAmxBlockRows * depth);
  AmxStart();
  for (int64_t row = row_begin; row < std::min(row_end, rows); row += kAmxBlockRows) {
    const int64_t n = std::min<int64_t>(kAmxBlockRows, rows - row);
    for (int64_t i = 0; i < count; ++i) {
      const Layer& layer = layers[i];
      AmxRows(layer, row, n, a.data());
      AmxPanels(layer, row, n, a.data(), begin, end < 0 ? layer.units / kGateUnits : end);
    }
  }
  _tile_release();
}

REGISTER_OP("TextgenLstmLayersBf16")
    .Input("x: float")
    .Input("addend_rows: int32")
    .Input("h: N * float")
    .Input("c: N * float")
    .Input("packed: N * bfloat16")
    .Input("addends: N * float")
    .Output("h_out: N * float")
    .Output("c_out: N * float")
    .Attr("N: int >= 1")
    .SetShapeFn(LayersShape);

// TextgenLstmLayers with bfloat16 products on AMX (see above); packed per
// layer as decode_ops.pack_kernel_bf16 lays it out.
class LstmLayersBf16Op : public OpKernel {
 public:
  explicit LstmLayersBf16Op(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, AmxReady());
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<Layer> layers;
    int64_t rows = 0;
    OP_REQUIRES_OK(ctx, ReadOpLayers(ctx, /*bf16=*/true, &layers, &rows));
    if (rows == 0) return;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int threads = pool->NumThreads();
    const int64_t blocks = (rows + kAmxBlockRows - 1) / kAmxBlockRows;
    if (threads > 1 && blocks >= 2) {
      RunBlocks(pool, blocks, 1, [&](int64_t begin, int64_t end) {
        AmxBlocks(layers.data(), layers.size(), rows, begin * kAmxBlockRows,
                  end * kAmxBlockRows, 0, -1);
      });
      return;
    }
    for (const Layer& layer : layers) {
      const int64_t panels = layer.units / kGateUnits;
      RunBlocks(pool, panels, (panels + threads - 1) / threads,
                [&](int64_t begin, int64_t end) {
                  AmxBlocks(&layer, 1, rows, 0, rows, begin, end);
                });
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("TextgenLstmLayersBf16").Device(::tensorflow::DEVICE_CPU),
                        LstmLayersBf16Op);


// ---- TextgenPick: the output layer and the token choice ----------------------

REGISTER_OP("TextgenPick")
    .Input("x: float")
    .Input("kernel: float")
    .Input("bias: float")
    .Input("noise: float")
    .Input("temperature: float")
    .Output("tokens: int32")
    .Attr("vectors: {'best', 'avx2', 'avx512'} = 'best'")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(c->Dim(c->input(0), 0)));
      return absl::OkStatus();
    });

constexpr int kPickRows = 4;  // rows per register tile: 4 x 16 columns

// A row's best score so far in each of 16 lanes (lane j: the columns 16 i +
// j) and its column.
struct Best {
  __m256 score[2];
  __m256i column[2];
};

// Rows r0..r0+R-1 of x (rows, depth) against columns [col, col + n) of the
// kernel (depth, vocab), n <= 16, then each row's running best per lane:
// score = (x W + bias) / temperature + noise (just x W + bias without
// noise). A lane takes a score only if it is larger (the first of equal
// scores stays) and never a column past n; BestColumn then picks the first
// column of the largest, as tf.argmax. Against the scalar loop it replaced
// (the same bits), the op alone (2-core AMD EPYC VM, 2026-12-04, medians
// of 15 loops of 256 calls): 0.82-0.85x the time at batch 256 (0.111
// against 0.136 ms), 0.88x at 64, 1.04x at 1; a decode step at batch 256
// 0.997-1.029x faster (four one-process A/Bs, both orders).
template <int R>
void PickTile(const float* x, int64_t depth, const float* kernel, int64_t vocab,
              const float* bias, const float* noise, bool sampled, float temperature,
              int64_t col, int64_t n, Best* best) {
  static_assert(R >= 1 && R <= kPickRows, "tile rows");
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane);
  const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n) - 8), lane);
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
         a30 = a00, a31 = a00;
#define TEXTGEN_ROW(r)                                               \
  if constexpr (R > r) {                                             \
    const __m256 v = _mm256_broadcast_ss(x + r * depth + k);         \
    a##r##0 = _mm256_fmadd_ps(v, b0, a##r##0);                       \
    a##r##1 = _mm256_fmadd_ps(v, b1, a##r##1);                       \
  }
  for (int64_t k = 0; k < depth; ++k) {
    const float* w = kernel + k * vocab + col;
    const __m256 b0 = _mm256_maskload_ps(w, mask0);
    const __m256 b1 = _mm256_maskload_ps(w + 8, mask1);
    TEXTGEN_ROW(0) TEXTGEN_ROW(1) TEXTGEN_ROW(2) TEXTGEN_ROW(3)
  }
#undef TEXTGEN_ROW
  const __m256 bias0 = _mm256_maskload_ps(bias + col, mask0);
  const __m256 bias1 = _mm256_maskload_ps(bias + col + 8, mask1);
  const __m256 t = _mm256_set1_ps(temperature);
  const __m256i column0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(col)), lane);
  const __m256i column1 = _mm256_add_epi32(column0, _mm256_set1_epi32(8));
  // The ops of the TensorFlow path, one by one: the product, + bias,
  // / temperature, + noise; 8 columns at a time.
  auto take = [&](Best& b, int half, __m256 sum, __m256 bias_half, const float* noise_at,
                  __m256i mask, __m256i column) {
    __m256 score = _mm256_add_ps(sum, bias_half);
    if (sampled) {
      score = _mm256_add_ps(_mm256_div_ps(score, t), _mm256_maskload_ps(noise_at, mask));
    }
    const __m256 larger = _mm256_and_ps(_mm256_cmp_ps(score, b.score[half], _CMP_GT_OQ),
                                        _mm256_castsi256_ps(mask));
    b.score[half] = _mm256_blendv_ps(b.score[half], score, larger);
    b.column[half] = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(b.column[half]), _mm256_castsi256_ps(column), larger));
  };
#define TEXTGEN_TAKE(r)                                                              \
  if constexpr (R > r) {                                                             \
    const float* nr = sampled ? noise + r * vocab + col : nullptr;                   \
    take(best[r], 0, a##r##0, bias0, nr, mask0, column0);                            \
    take(best[r], 1, a##r##1, bias1, sampled ? nr + 8 : nullptr, mask1, column1);    \
  }
  TEXTGEN_TAKE(0) TEXTGEN_TAKE(1) TEXTGEN_TAKE(2) TEXTGEN_TAKE(3)
#undef TEXTGEN_TAKE
}

// The first column of a row's largest score: the largest of its 16 lanes'
// best, the lowest column among equal ones (column 0 if every score was
// -inf or NaN, as tf.argmax).
int32_t BestColumn(const float* score, const int32_t* column) {
  float top = score[0];
  int32_t at = column[0];
  for (int j = 1; j < 16; ++j) {
    if (score[j] > top || (score[j] == top && column[j] < at)) {
      top = score[j];
      at = column[j];
    }
  }
  return at;
}

int32_t BestColumn(const Best& b) {
  alignas(32) float score[16];
  alignas(32) int32_t column[16];
  for (int half = 0; half < 2; ++half) {
    _mm256_store_ps(score + 8 * half, b.score[half]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(column + 8 * half), b.column[half]);
  }
  return BestColumn(score, column);
}

// PickTile in AVX-512: a panel of 16 columns is one register, so a tile is
// R rows (up to kWidePickRows) by P panels (up to kWidePickPanels: 24
// accumulators), and lane j of a row's best again holds the columns 16 i +
// j. Each column's sum is the same FMAs in the same order as PickTile's
// and the score the same operations, so the tokens are the same as the
// AVX2 tile's, ties and NaN included. On the 2-core Xeon VM (2026-12-04),
// the reference model's output layer at batch 256 on one thread (a C++
// loop): 78 us with 6 x 4 tiles, 82-85 with 4 x 5, 8 x 3 or 8 x 2, 184
// with 12 x 2 (its 12 row pointers spill); the op on both threads 0.68x
// the AVX2 tiles' time at batch 256 (58.7 against 86.2 us a call, medians
// of 20 loops), 0.78x at 64, at batch 1 ~1.8 us slower (10.7 against 8.9);
// sampled decoding at batch 256 1.014x and 1.023x the tokens/s, at batch 1
// 1.035x and 1.06x (16 alternating measurements in one process each).
constexpr int kWidePickRows = 6;
constexpr int kWidePickPanels = 4;

struct WideBest {
  __m512 score;
  __m512i column;
};

template <int R, int P>
TEXTGEN_AVX512 void WidePickTile(const float* const* x, int64_t depth, const float* kernel,
                                 int64_t vocab, const float* bias, const float* const* noise,
                                 bool sampled, float temperature, int64_t col, int64_t n,
                                 WideBest* best) {
  static_assert(R >= 1 && R <= kWidePickRows && P >= 1 && P <= kWidePickPanels, "tile shape");
  __mmask16 mask[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const int64_t left = n - 16 * p;
    mask[p] = left >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << left) - 1);
  }
  // Every loop over r and p unrolled, so that the sums stay in registers.
  __m512 sum[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) sum[r][p] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < depth; ++k) {
    const float* w = kernel + k * vocab + col;
    __m512 b[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) b[p] = _mm512_maskz_loadu_ps(mask[p], w + 16 * p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(x[r][k]);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) sum[r][p] = _mm512_fmadd_ps(v, b[p], sum[r][p]);
    }
  }
  const __m512 t = _mm512_set1_ps(temperature);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const __m512 bias_p = _mm512_maskz_loadu_ps(mask[p], bias + col + 16 * p);
    const __m512i column = _mm512_add_epi32(
        _mm512_set1_epi32(static_cast<int>(col + 16 * p)), lane);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      // PickTile's operations: the product, + bias, / temperature, + noise.
      __m512 score = _mm512_add_ps(sum[r][p], bias_p);
      if (sampled) {
        score = _mm512_add_ps(_mm512_div_ps(score, t),
                              _mm512_maskz_loadu_ps(mask[p], noise[r] + col + 16 * p));
      }
      const __mmask16 larger = _mm512_mask_cmp_ps_mask(mask[p], score, best[r].score,
                                                       _CMP_GT_OQ);
      best[r].score = _mm512_mask_blend_ps(larger, best[r].score, score);
      best[r].column = _mm512_mask_blend_epi32(larger, best[r].column, column);
    }
  }
}

// Tokens of rows [r, r + R) through WidePickTile.
template <int R>
TEXTGEN_AVX512 void WidePickRows(const float* xp, int64_t r, int64_t depth, const float* kernel,
                                 int64_t vocab, const float* bias, const float* np, bool sampled,
                                 float temperature, int32_t* tokens) {
  const float* x[R];
  const float* noise[R];
  WideBest best[R];
  for (int i = 0; i < R; ++i) {
    x[i] = xp + (r + i) * depth;
    noise[i] = sampled ? np + (r + i) * vocab : nullptr;
    best[i].score = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    best[i].column = _mm512_setzero_si512();
  }
  for (int64_t col = 0; col < vocab; col += 16 * kWidePickPanels) {
    const int64_t cols = std::min<int64_t>(16 * kWidePickPanels, vocab - col);
#define TEXTGEN_CASE(p)                                                                   \
  case p:                                                                                 \
    WidePickTile<R, p>(x, depth, kernel, vocab, bias, noise, sampled, temperature, col, cols, \
                       best);                                                             \
    break;
    switch ((cols + 15) / 16) {
      TEXTGEN_CASE(1) TEXTGEN_CASE(2) TEXTGEN_CASE(3)
      default: WidePickTile<R, kWidePickPanels>(x, depth, kernel, vocab, bias, noise, sampled,
                                                temperature, col, cols, best);
    }
#undef TEXTGEN_CASE
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) float score[16];
    alignas(64) int32_t column[16];
    _mm512_store_ps(score, best[i].score);
    _mm512_store_si512(column, best[i].column);
    tokens[r + i] = BestColumn(score, column);
  }
}

// WidePickRows<n> for n <= R rows.
template <int R>
TEXTGEN_AVX512 void WidePickFirst(int64_t n, const float* xp, int64_t r, int64_t depth,
                                  const float* kernel, int64_t vocab, const float* bias,
                                  const float* np, bool sampled, float temperature,
                                  int32_t* tokens) {
  if constexpr (R > 1) {
    if (n < R) {
      WidePickFirst<R - 1>(n, xp, r, depth, kernel, vocab, bias, np, sampled, temperature,
                           tokens);
      return;
    }
  }
  WidePickRows<R>(xp, r, depth, kernel, vocab, bias, np, sampled, temperature, tokens);
}

// `vectors` as TextgenLstmLayers': 'avx512' (WidePickTile), 'avx2'
// (PickTile), or 'best'. Both give the same tokens.
class PickOp : public OpKernel {
 public:
  explicit PickOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadVectors(ctx, &wide_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    const Tensor& bias = ctx->input(2);
    const Tensor& noise = ctx->input(3);
    const Tensor& temperature = ctx->input(4);
    OP_REQUIRES(ctx, x.dims() == 2 && kernel.dims() == 2 && kernel.dim_size(0) == x.dim_size(1),
                absl::InvalidArgumentError(absl::StrCat(
                    "x (rows, depth) and kernel (depth, vocab) do not fit: ",
                    x.shape().DebugString(), " and ", kernel.shape().DebugString())));
    const int64_t rows = x.dim_size(0), depth = x.dim_size(1), vocab = kernel.dim_size(1);
    OP_REQUIRES(ctx, vocab >= 1 && vocab <= std::numeric_limits<int32_t>::max() &&
                         bias.shape() == TensorShape({vocab}),
                absl::InvalidArgumentError(absl::StrCat(
                    "bias must be (vocab) = (", vocab, ",) with vocab >= 1, got ",
                    bias.shape().DebugString())));
    const bool sampled = noise.NumElements() > 0;
    OP_REQUIRES(ctx, noise.dims() == 2 &&
                         ((noise.dim_size(0) == rows && noise.dim_size(1) == vocab) ||
                          noise.dim_size(1) == 0),
                absl::InvalidArgumentError(absl::StrCat(
                    "noise must be (", rows, ", ", vocab,
                    "), or (n, 0) for the largest logit, got ", noise.shape().DebugString())));
    OP_REQUIRES(ctx, temperature.dims() == 0,
                absl::InvalidArgumentError("temperature must be a scalar"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &out));
    const float* xp = x.flat<float>().data();
    const float* kp = kernel.flat<float>().data();
    const float* bp = bias.flat<float>().data();
    const float* np = sampled ? noise.flat<float>().data() : nullptr;
    const float t = temperature.scalar<float>()();
    int32_t* tokens = out->flat<int32_t>().data();
    const int64_t tile_rows = wide_ ? kWidePickRows : kPickRows;
    // Rows [begin, end), a tile of kPickRows (AVX-512: kWidePickRows) after
    // another: every column, 16 at a time.
    auto tiles = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; r += tile_rows) {
        if (wide_) {
          const int64_t n = std::min<int64_t>(kWidePickRows, end - r);
          WidePickFirst<kWidePickRows>(n, xp, r, depth, kp, vocab, bp, np, sampled, t, tokens);
          continue;
        }
        const int64_t n = std::min<int64_t>(kPickRows, end - r);
        Best best[kPickRows];
        for (Best& b : best) {
          b.score[0] = b.score[1] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
          b.column[0] = b.column[1] = _mm256_setzero_si256();
        }
        const float* xr = xp + r * depth;
        const float* nr = sampled ? np + r * vocab : nullptr;
        for (int64_t col = 0; col < vocab; col += 16) {
          const int64_t cols = std::min<int64_t>(16, vocab - col);
          switch (n) {
            case 1: PickTile<1>(xr, depth, kp, vocab, bp, nr, sampled, t, col, cols, best); break;
            case 2: PickTile<2>(xr, depth, kp, vocab, bp, nr, sampled, t, col, cols, best); break;
            case 3: PickTile<3>(xr, depth, kp, vocab, bp, nr, sampled, t, col, cols, best); break;
            default: PickTile<kPickRows>(xr, depth, kp, vocab, bp, nr, sampled, t, col, cols, best); break;
          }
        }
        for (int64_t i = 0; i < n; ++i) tokens[r + i] = BestColumn(best[i]);
      }
    };
    const int64_t num_tiles = (rows + tile_rows - 1) / tile_rows;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t threads = pool->NumThreads();
    if (2 * rows * depth * vocab < (int64_t{1} << 16) || threads <= 1 || num_tiles < 2) {
      tiles(0, rows);
      return;
    }
    // About 8 blocks per thread, not one: the helper starts some 10-30 us
    // late, and the caller takes the blocks it has not reached. The op alone
    // at batch 256 (2-core Xeon VM, 2026-12-04): 82.8 against 87.5 us a call
    // with the AVX2 tiles, 60.9 against 65.7 with AVX-512's.
    const int64_t block = tile_rows * std::max<int64_t>(1, num_tiles / (8 * threads));
    RunBlocks(pool, rows, block, tiles);
  }

 private:
  bool wide_ = false;  // AVX-512 tiles
};

REGISTER_KERNEL_BUILDER(Name("TextgenPick").Device(::tensorflow::DEVICE_CPU), PickOp);

}  // namespace
}  // namespace textgen
