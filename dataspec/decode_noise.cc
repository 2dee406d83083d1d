// Sampling's Gumbel noise as one TensorFlow CPU op (dataspec/decode_ops.py
// builds and loads it; dataspec/serving.py runs it with --decode_ops=fused).
//
// TextgenGumbelNoise  row_seeds (batch,) int64, positions (n,) int32,
//                     vocab_size, vectors (attrs) -> (n, batch, vocab_size) float32
//
// Bit for bit dataspec.serving.gumbel_noise: the same murmur3-mixed hash of
// (row seed, position, token id), the same uniform from its top 23 bits, and
// -log(-log(u)) with Eigen's packet log, the function TensorFlow's Log kernel
// runs. That is why this file is compiled apart, without FMA
// (-march=x86-64-v3 -mno-fma -ffp-contract=off): TensorFlow's own kernels
// are built for AVX without FMA, and an FMA build's log rounds differently
// in the last bit.
// AVX2 changes no bit (the log's integer steps, exact either way, run 8
// wide instead of as two 4-wide halves) and made the op 2.5-2.8x faster:
// in one process alternating the two builds (2-core AMD EPYC VM,
// 2026-12-03, 32 positions x batch 256 x vocab 68 a call, medians of 7 x
// 40 calls), 0.050-0.054 against 0.136 ms a position; both matched all
// 10,681,344 values of a check against gumbel_noise (vocab 1-10,000).
// Every value takes the 8-wide packet path (TensorFlow's kernels run the
// last few values of a tensor through a scalar loop, which is why
// gumbel_noise pads each row to 16 lanes).
//
// On CPUs with AVX-512 the op runs Log16 and the hash on 16 lanes instead
// (its `vectors` attribute, as the other decode ops'), the same bits. On
// the 2-core Xeon VM (2026-12-04), batch 256, 12 positions a call, both
// threads: 15.5 against 42.3 us a position; in a loop of a sampled decode
// step's ops (the layers op, the choice op, this op every 12 positions)
// 19 against 76 us a step, the AVX2 op slower there than alone.
//
// Why: in TensorFlow's ops the hash is ~25 passes over (positions, batch,
// lanes) tensors, about 0.4 ms per decode step at batch 256 on the 2-core
// AMD EPYC VM, a seventh of a fused step; here it is one pass.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#if !defined(__AVX2__) || defined(__FMA__)
#error "decode_noise.cc must be built for AVX2 without FMA (-march=x86-64-v3 -mno-fma)"
#endif

namespace textgen {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using Packet8f = Eigen::internal::Packet8f;

REGISTER_OP("TextgenGumbelNoise")
    .Input("row_seeds: int64")
    .Input("positions: int32")
    .Attr("vocab_size: int >= 1")
    .Attr("vectors: {'best', 'avx2', 'avx512'} = 'best'")
    .Output("noise: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      int64_t vocab_size;
      TF_RETURN_IF_ERROR(c->GetAttr("vocab_size", &vocab_size));
      c->set_output(0, c->MakeShape({c->Dim(c->input(1), 0), c->Dim(c->input(0), 0),
                                     c->MakeDim(vocab_size)}));
      return absl::OkStatus();
    });

// murmur3's 32-bit finalizer (serving._mix32).
inline uint32_t Mix32(uint32_t x) {
  x = (x ^ (x >> 16)) * 0x85EBCA6Bu;
  x = (x ^ (x >> 13)) * 0xC2B2AE35u;
  return x ^ (x >> 16);
}

// What a row's token ids are salted from at one position: the mixed hash
// of (row seed, position).
inline uint32_t RowHash(int64_t seed, int32_t position) {
  return Mix32(static_cast<uint32_t>(seed) * 0x9E3779B1u +
               static_cast<uint32_t>(position) * 0x85EBCA77u);
}

#define TEXTGEN_AVX512 __attribute__((target("avx512f")))

// Eigen's plog_impl_float (the function TensorFlow's Log kernel runs, as
// this file's AVX2 path calls it) on 16 lanes, operation for operation,
// each product and sum rounded apart as in the build without FMA (this
// file is compiled with -ffp-contract=off, so the compiler fuses none),
// for the inputs it gets here: positive, normal and finite (u is in
// [2^-24, 1 - 2^-24] and -log(u) in [2^-24, 16.7]), where Eigen's
// denormal, zero, infinity and NaN branches select nothing. The same bits
// as the AVX2 path for all 2^23 values of k (checked exhaustively,
// 2026-12-04) and as gumbel_noise (tested).
TEXTGEN_AVX512 inline __m512 Log16(__m512 a) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i bits = _mm512_castps_si512(a);
  // pfrexp: the mantissa in [0.5, 1) and the exponent.
  __m512 e = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 23)),
                           _mm512_set1_ps(-126.0f));
  __m512 x = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(~0x7f800000)),
                      _mm512_castps_si512(_mm512_set1_ps(0.5f))));
  // Below sqrt(1/2): e - 1 and 2 x - 1, else x - 1.
  const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  const __m512 tmp = _mm512_maskz_mov_ps(low, x);
  x = _mm512_sub_ps(x, one);
  e = _mm512_sub_ps(e, _mm512_maskz_mov_ps(low, one));
  x = _mm512_add_ps(x, tmp);
  // log(1 + x) = x p(x) / q(x), Eigen's coefficients, Horner's rule.
  __m512 p = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(0.18256296349849254f), x),
                           _mm512_set1_ps(1.0000000190281063f));
  p = _mm512_add_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(1.0000000190281136f));
  p = _mm512_mul_ps(x, p);
  __m512 q = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(0.049616247954120038f), x),
                           _mm512_set1_ps(0.59923249590823520f));
  q = _mm512_add_ps(_mm512_mul_ps(q, x), _mm512_set1_ps(1.4999999999999927f));
  q = _mm512_add_ps(_mm512_mul_ps(q, x), one);
  x = _mm512_div_ps(p, q);
  return _mm512_add_ps(_mm512_mul_ps(e, _mm512_set1_ps(0.693147180559945309417232121458f)), x);
}

// Rows [begin, end) of the (n * batch) rows (i = position * batch + row),
// 16 token ids at a time, the last block of a row stored under a mask.
TEXTGEN_AVX512 void WideRows(const int64_t* seed, const int32_t* position, int64_t batch,
                             int64_t vocab_size, int64_t begin, int64_t end, float* out) {
  const __m512i salt = _mm512_set1_epi32(static_cast<int>(0xC2B2AE3Du));
  const __m512i lane_salts = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), salt);
  const __m512i salt_step = _mm512_set1_epi32(static_cast<int>(16 * 0xC2B2AE3Du));
  const __m512 half = _mm512_set1_ps(0.5f), scale = _mm512_set1_ps(1.0f / (1 << 23));
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t mixed = RowHash(seed[i % batch], position[i / batch]);
    float* row = out + i * vocab_size;
    __m512i salted = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(mixed)), lane_salts);
    for (int64_t j = 0; j < vocab_size; j += 16) {
      __m512i x = salted;  // Mix32, lane for lane
      x = _mm512_mullo_epi32(_mm512_xor_si512(x, _mm512_srli_epi32(x, 16)),
                             _mm512_set1_epi32(static_cast<int>(0x85EBCA6Bu)));
      x = _mm512_mullo_epi32(_mm512_xor_si512(x, _mm512_srli_epi32(x, 13)),
                             _mm512_set1_epi32(static_cast<int>(0xC2B2AE35u)));
      x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
      // k < 2^23 converts exactly; (k + 0.5) / 2^23, then -log(-log(u)).
      const __m512 u = _mm512_mul_ps(
          _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(x, 9)), half), scale);
      const __m512 inner = _mm512_castsi512_ps(
          _mm512_xor_si512(_mm512_castps_si512(Log16(u)), sign));
      const __m512 noise = _mm512_castsi512_ps(
          _mm512_xor_si512(_mm512_castps_si512(Log16(inner)), sign));
      const int64_t take = std::min<int64_t>(16, vocab_size - j);
      _mm512_mask_storeu_ps(row + j, static_cast<__mmask16>((1u << take) - 1), noise);
      salted = _mm512_add_epi32(salted, salt_step);
    }
  }
}

class GumbelNoiseOp : public OpKernel {
 public:
  explicit GumbelNoiseOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("vocab_size", &vocab_size_));
    std::string vectors;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("vectors", &vectors));
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f");
    OP_REQUIRES(ctx, vectors != "avx512" || avx512,
                absl::InvalidArgumentError("vectors='avx512': this CPU has no AVX-512"));
    wide_ = vectors == "avx512" || (vectors == "best" && avx512);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seeds = ctx->input(0);
    const Tensor& positions = ctx->input(1);
    OP_REQUIRES(ctx, seeds.dims() == 1 && positions.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat(
                    "row_seeds and positions must be vectors, got ",
                    seeds.shape().DebugString(), " and ", positions.shape().DebugString())));
    const int64_t batch = seeds.dim_size(0), n = positions.dim_size(0);
    Tensor* noise = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, batch, vocab_size_}), &noise));
    const int64_t* seed = seeds.flat<int64_t>().data();
    const int32_t* position = positions.flat<int32_t>().data();
    float* out = noise->flat<float>().data();
    const int64_t lanes = (vocab_size_ + 7) / 8 * 8;
    const Packet8f half = _mm256_set1_ps(0.5f), scale = _mm256_set1_ps(1.0f / (1 << 23));
    const Packet8f sign = _mm256_set1_ps(-0.0f);
    const int64_t total = n * batch;
    auto rows = [&](int64_t begin, int64_t end) {
      if (wide_) {
        WideRows(seed, position, batch, vocab_size_, begin, end, out);
        return;
      }
      alignas(32) float bits[8];
      alignas(32) float values[8];
      for (int64_t i = begin; i < end; ++i) {  // i = position * batch + row
        const uint32_t mixed = RowHash(seed[i % batch], position[i / batch]);
        float* row = out + i * vocab_size_;
        for (int64_t j = 0; j < lanes; j += 8) {
          for (int k = 0; k < 8; ++k) {
            const uint32_t salt = static_cast<uint32_t>(j + k) * 0xC2B2AE3Du;
            bits[k] = static_cast<float>(Mix32(mixed + salt) >> 9);
          }
          // (k + 0.5) / 2^23, then -log(-log(u)) as TensorFlow's ops do it.
          const Packet8f u = _mm256_mul_ps(_mm256_add_ps(_mm256_load_ps(bits), half), scale);
          const Packet8f inner = _mm256_xor_ps(Eigen::internal::plog(u), sign);
          _mm256_store_ps(values, _mm256_xor_ps(Eigen::internal::plog(inner), sign));
          const int64_t take = std::min<int64_t>(8, vocab_size_ - j);
          std::copy(values, values + take, row + j);
        }
      }
    };
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // ~6 ns a value on one thread (2-core AMD EPYC VM): up to 64k values
    // (~0.4 ms) one thread, above them both.
    if (total * vocab_size_ < (1 << 16) || pool->NumThreads() <= 1) {
      rows(0, total);
      return;
    }
    const int64_t threads = pool->NumThreads();
    pool->ParallelFor(total,
                      ::tsl::thread::ThreadPool::SchedulingParams::Fixed(
                          (total + threads - 1) / threads),
                      rows);
  }

 private:
  int64_t vocab_size_;
  bool wide_;
};

REGISTER_KERNEL_BUILDER(Name("TextgenGumbelNoise").Device(::tensorflow::DEVICE_CPU),
                        GumbelNoiseOp);

}  // namespace
}  // namespace textgen
