// The LSTM's gate math as two TensorFlow CPU ops (trainer/lstm_ops.py builds
// and loads them; trainer/fused_lstm.py runs them inside its loops).
//
// Per time step TensorFlow's own ops take about a dozen passes over the
// (rows, 4 units) gates in the forward loop and some thirty in the backward,
// each an op of its own with its own dispatch and, above 4,096 floats, its
// own shards on the intra-op pool. Here each direction is one pass, row by
// row, on the calling thread (the trainer already runs one row block per
// core), with Eigen's vectorized sigmoid and tanh. One layer's forward and
// backward ran 1.15x faster at batch 64 and 1.23x at batch 256 built for
// AVX2 (x86-64-v3), 1.06x and 1.12x built for plain x86-64; splitting the
// rows over the intra-op pool measured 0.98x and 1.10x (it competes with
// the other row block's loop). The whole trainer: 1.13-1.27x in float32,
// 1.42-1.70x in bfloat16 (2-core Xeon, 2026-12-02; README "Training").
// Same math as fused_lstm._recurrence's TensorFlow ops (Keras's LSTM:
// gates i, f, c~, o; c' = f c + i c~; h' = o tanh(c')).
//
// LstmGates      xw, hr (rows, 4 units), c_prev (rows, units)
//                -> h, c (rows, units), act (rows, 4 units): the activated
//                gates of z = xw + hr, kept for the backward.
// LstmGatesGrad  dh, dc_next, act, c_prev, c
//                -> dz (rows, 4 units), dc_prev (rows, units) = dc * f.
//
// float32 and bfloat16 (mixed_bfloat16 training): bfloat16 tensors in and
// out, the math inside in float32. Other dtypes run the TensorFlow ops.

#include <cstdint>
#include <type_traits>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace textgen {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using Array = Eigen::Array<float, Eigen::Dynamic, 1>;
using Map = Eigen::Map<Array>;

// n values at p as a float32 expression (a no-op for float).
template <typename T>
auto Load(const T* p, int64_t n) {
  return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(p, n).template cast<float>();
}

// Writes a float32 expression as n values of T at p.
template <typename T, typename Expr>
void Store(T* p, int64_t n, const Expr& values) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(p, n) = values.template cast<T>();
}

absl::Status SameShape(::tensorflow::shape_inference::InferenceContext* ctx, int a, int b) {
  ::tensorflow::shape_inference::ShapeHandle unused;
  return ctx->Merge(ctx->input(a), ctx->input(b), &unused);
}

REGISTER_OP("TextgenLstmGates")
    .Input("xw: T")
    .Input("hr: T")
    .Input("c_prev: T")
    .Output("h: T")
    .Output("c: T")
    .Output("act: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* ctx) {
      TF_RETURN_IF_ERROR(SameShape(ctx, 0, 1));
      ctx->set_output(0, ctx->input(2));
      ctx->set_output(1, ctx->input(2));
      ctx->set_output(2, ctx->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("TextgenLstmGatesGrad")
    .Input("dh: T")
    .Input("dc_next: T")
    .Input("act: T")
    .Input("c_prev: T")
    .Input("c: T")
    .Output("dz: T")
    .Output("dc_prev: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* ctx) {
      ctx->set_output(0, ctx->input(2));
      ctx->set_output(1, ctx->input(3));
      return absl::OkStatus();
    });

// Checks that `gates` is (rows, 4 units) and every tensor in `states` is
// (rows, units); sets rows and units.
absl::Status CheckShapes(const Tensor& gates, std::initializer_list<const Tensor*> states,
                         int64_t* rows, int64_t* units) {
  const Tensor& first = **states.begin();
  if (first.dims() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LSTM state must be (rows, units), got ", first.shape().DebugString()));
  }
  *rows = first.dim_size(0);
  *units = first.dim_size(1);
  if (gates.shape() != TensorShape({*rows, 4 * *units})) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LSTM gates must be (rows, 4 units) = (", *rows, ", ", 4 * *units, "), got ",
        gates.shape().DebugString()));
  }
  for (const Tensor* state : states) {
    if (state->shape() != first.shape()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LSTM states differ in shape: ", state->shape().DebugString(), " and ",
          first.shape().DebugString()));
    }
  }
  return absl::OkStatus();
}

template <typename T>
class LstmGatesOp : public OpKernel {
 public:
  explicit LstmGatesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xw = ctx->input(0);
    const Tensor& hr = ctx->input(1);
    const Tensor& c_prev = ctx->input(2);
    int64_t rows = 0, units = 0;
    OP_REQUIRES_OK(ctx, CheckShapes(xw, {&c_prev}, &rows, &units));
    OP_REQUIRES(ctx, hr.shape() == xw.shape(),
                absl::InvalidArgumentError("xw and hr must have the same shape"));
    Tensor *h = nullptr, *c = nullptr, *act = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, c_prev.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c_prev.shape(), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, xw.shape(), &act));
    const T* xw_data = xw.flat<T>().data();
    const T* hr_data = hr.flat<T>().data();
    const T* c_prev_data = c_prev.flat<T>().data();
    T* h_data = h->flat<T>().data();
    T* c_data = c->flat<T>().data();
    T* act_data = act->flat<T>().data();
    const int64_t n = units;
    constexpr bool kFloat = std::is_same_v<T, float>;
    // float32 works in the outputs themselves; bfloat16 in float32 rows.
    Array gates_row(kFloat ? 0 : 4 * n), c_row_buf(kFloat ? 0 : n);
    for (int64_t r = 0; r < rows; ++r) {
      float* gates;
      float* c_row_data;
      if constexpr (kFloat) {
        gates = act_data + r * 4 * n;
        c_row_data = c_data + r * n;
      } else {
        gates = gates_row.data();
        c_row_data = c_row_buf.data();
      }
      Map(gates, 4 * n) = Load(xw_data + r * 4 * n, 4 * n) + Load(hr_data + r * 4 * n, 4 * n);
      Map i(gates, n), f(gates + n, n), g(gates + 2 * n, n), o(gates + 3 * n, n);
      i = i.logistic();
      f = f.logistic();
      g = g.tanh();
      o = o.logistic();
      Map c_row(c_row_data, n);
      c_row = f * Load(c_prev_data + r * n, n) + i * g;
      Store(h_data + r * n, n, o * c_row.tanh());
      if constexpr (!kFloat) {
        Store(act_data + r * 4 * n, 4 * n, Map(gates, 4 * n));
        Store(c_data + r * n, n, c_row);
      }
    }
  }
};

template <typename T>
class LstmGatesGradOp : public OpKernel {
 public:
  explicit LstmGatesGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dh = ctx->input(0);
    const Tensor& dc_next = ctx->input(1);
    const Tensor& act = ctx->input(2);
    const Tensor& c_prev = ctx->input(3);
    const Tensor& c = ctx->input(4);
    int64_t rows = 0, units = 0;
    OP_REQUIRES_OK(ctx, CheckShapes(act, {&dh, &dc_next, &c_prev, &c}, &rows, &units));
    Tensor *dz = nullptr, *dc_prev = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, act.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c_prev.shape(), &dc_prev));
    const T* dh_data = dh.flat<T>().data();
    const T* dc_next_data = dc_next.flat<T>().data();
    const T* act_data = act.flat<T>().data();
    const T* c_prev_data = c_prev.flat<T>().data();
    const T* c_data = c.flat<T>().data();
    T* dz_data = dz->flat<T>().data();
    T* dc_prev_data = dc_prev->flat<T>().data();
    const int64_t n = units;
    Array tc(n), dc(n);
    for (int64_t r = 0; r < rows; ++r) {
      const T* gates = act_data + r * 4 * n;
      auto i = Load(gates, n);
      auto f = Load(gates + n, n);
      auto g = Load(gates + 2 * n, n);
      auto o = Load(gates + 3 * n, n);
      auto d_h = Load(dh_data + r * n, n);
      tc = Load(c_data + r * n, n).tanh();  // recomputed, not stored
      dc = d_h * o * (1.f - tc * tc) + Load(dc_next_data + r * n, n);
      T* d = dz_data + r * 4 * n;
      Store(d, n, dc * g * i * (1.f - i));
      Store(d + n, n, dc * Load(c_prev_data + r * n, n) * f * (1.f - f));
      Store(d + 2 * n, n, dc * i * (1.f - g * g));
      Store(d + 3 * n, n, d_h * tc * o * (1.f - o));
      Store(dc_prev_data + r * n, n, dc * f);
    }
  }
};

#define TEXTGEN_REGISTER(T)                                                           \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("TextgenLstmGates").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      LstmGatesOp<T>);                                                              \
  REGISTER_KERNEL_BUILDER(Name("TextgenLstmGatesGrad")                              \
                              .Device(::tensorflow::DEVICE_CPU)                     \
                              .TypeConstraint<T>("T"),                              \
                          LstmGatesGradOp<T>);
TEXTGEN_REGISTER(float);
TEXTGEN_REGISTER(Eigen::bfloat16);
#undef TEXTGEN_REGISTER

}  // namespace
}  // namespace textgen
