// The LSTM's recurrence as TensorFlow CPU ops (trainer/lstm_ops.py builds
// and loads them; trainer/fused_lstm.py runs them).
//
// LstmSequence / LstmSequenceGrad (float32): one layer's whole recurrence
// over time in one op each, the recurrent product of every step in Eigen's
// matrix product on the calling thread (the trainer already runs one row
// block per core). On the 2-core AMD EPYC (AVX2) VM, one core: Eigen's
// product at the step's shapes (32-128, 256) x (256, 1024) ran at 74-89
// GFLOP/s, TensorFlow's MatMul (oneDNN) at 44; the trainer 1.05-1.27x
// faster than with the per-step ops below (three runs, 2026-12-02; README
// "Training" under Benchmarks). Selected only where
// that was measured: the AVX2 build on CPUs without AVX-512
// (lstm_ops.runs_whole_sequences).
//
// LstmGates / LstmGatesGrad (float32 and bfloat16): one time step's gate
// math, which fused_lstm runs inside TensorFlow loops with TensorFlow's
// MatMul elsewhere (AVX-512 CPUs, bfloat16). Per time step TensorFlow's own
// ops take about a dozen passes over the (rows, 4 units) gates in the
// forward loop and some thirty in the backward, each an op of its own with
// its own dispatch and, above 4,096 floats, its own shards on the intra-op
// pool. Here each direction is one pass, row by row, on the calling thread,
// with Eigen's vectorized sigmoid and tanh. One layer's forward and backward
// ran 1.15x faster at batch 64 and 1.23x at batch 256 built for AVX2
// (x86-64-v3), 1.06x and 1.12x built for plain x86-64; splitting the rows
// over the intra-op pool measured 0.98x and 1.10x (it competes with the
// other row block's loop). The whole trainer: 1.13-1.27x in float32,
// 1.42-1.70x in bfloat16 (2-core Xeon, 2026-12-02; README "Training").
//
// Same math as fused_lstm._recurrence's TensorFlow ops (Keras's LSTM:
// gates i, f, c~, o; c' = f c + i c~; h' = o tanh(c')).
//
// LstmGates      xw, hr (rows, 4 units), c_prev (rows, units)
//                -> h, c (rows, units), act (rows, 4 units): the activated
//                gates of z = xw + hr, kept for the backward.
// LstmGatesGrad  dh, dc_next, act, c_prev, c
//                -> dz (rows, 4 units), dc_prev (rows, units) = dc * f.
// LstmSequence   xw (time, rows, 4 units; the input products without the
//                bias), recurrent_kernel (units, 4 units), h0, c0, bias (4
//                units) -> outputs (time, rows, units), h, c, acts (time,
//                rows, 4 units), cs (time + 1, rows, units; cs[0] = c0).
// LstmSequenceGrad  d_outputs, d_h, d_c, acts, cs, recurrent_kernel
//                -> dz (time, rows, 4 units) = d xw, dh0, dc0, d_bias (4
//                units; the sum of dz over time and rows).
// MatMul         a, b (transpose_a, transpose_b) -> a @ b: a row block's
//                big products beside the sequence ops (gradient in
//                lstm_ops.py).
//
// bfloat16 (mixed_bfloat16 training): bfloat16 tensors in and out, the math
// inside in float32. Other dtypes run the TensorFlow ops.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tensorflow/core/framework/common_shape_fns.h"
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

REGISTER_OP("TextgenLstmSequence")
    .Input("xw: float")
    .Input("recurrent_kernel: float")
    .Input("h0: float")
    .Input("c0: float")
    .Input("bias: float")
    .Output("outputs: float")
    .Output("h: float")
    .Output("c: float")
    .Output("acts: float")
    .Output("cs: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* ctx) {
      using ::tensorflow::shape_inference::DimensionHandle;
      using ::tensorflow::shape_inference::ShapeHandle;
      ShapeHandle xw, state;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &xw));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &state));
      TF_RETURN_IF_ERROR(SameShape(ctx, 2, 3));
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(4), 1, &unused));
      DimensionHandle time = ctx->Dim(xw, 0), units = ctx->Dim(state, 1), steps;
      TF_RETURN_IF_ERROR(ctx->Add(time, 1, &steps));
      ctx->set_output(0, ctx->MakeShape({time, ctx->Dim(xw, 1), units}));
      ctx->set_output(1, ctx->input(2));
      ctx->set_output(2, ctx->input(2));
      ctx->set_output(3, ctx->input(0));
      ctx->set_output(4, ctx->MakeShape({steps, ctx->Dim(xw, 1), units}));
      return absl::OkStatus();
    });

REGISTER_OP("TextgenLstmSequenceGrad")
    .Input("d_outputs: float")
    .Input("d_h: float")
    .Input("d_c: float")
    .Input("acts: float")
    .Input("cs: float")
    .Input("recurrent_kernel: float")
    .Output("dz: float")
    .Output("dh0: float")
    .Output("dc0: float")
    .Output("d_bias: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* ctx) {
      ctx->set_output(0, ctx->input(3));
      ctx->set_output(1, ctx->input(1));
      ctx->set_output(2, ctx->input(2));
      ctx->set_output(3, ctx->Vector(ctx->Dim(ctx->input(3), 2)));
      return absl::OkStatus();
    });

REGISTER_OP("TextgenMatMul")
    .Input("a: float")
    .Input("b: float")
    .Output("product: float")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .SetShapeFn(::tensorflow::shape_inference::MatMulShape);

// Checks that `gates` is (rows, 4 units) and every tensor in `states` is
// (rows, units); sets rows and units.
absl::Status CheckShapes(const TensorShape& gates,
                         std::initializer_list<const Tensor*> states, int64_t* rows,
                         int64_t* units) {
  const Tensor& first = **states.begin();
  if (first.dims() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LSTM state must be (rows, units), got ", first.shape().DebugString()));
  }
  *rows = first.dim_size(0);
  *units = first.dim_size(1);
  if (gates != TensorShape({*rows, 4 * *units})) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LSTM gates must be (rows, 4 units) = (", *rows, ", ", 4 * *units, "), got ",
        gates.DebugString()));
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

// One time step's gate math on `rows` rows: gates z = xw + hr (+ bias, 4 n
// values, if not null), activated into act; c = f c_prev + i c~; h = o
// tanh(c). hr may be act itself (the sequence op computes h_prev @
// recurrent_kernel into act first).
template <typename T>
void GatesForward(int64_t rows, int64_t n, const T* xw, const T* hr, const float* bias,
                  const T* c_prev, T* h, T* c, T* act) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  // float32 works in the outputs themselves; bfloat16 in float32 rows.
  Array gates_row(kFloat ? 0 : 4 * n), c_row_buf(kFloat ? 0 : n);
  for (int64_t r = 0; r < rows; ++r) {
    float* gates;
    float* c_row_data;
    if constexpr (kFloat) {
      gates = act + r * 4 * n;
      c_row_data = c + r * n;
    } else {
      gates = gates_row.data();
      c_row_data = c_row_buf.data();
    }
    if (bias != nullptr) {
      Map(gates, 4 * n) = Load(xw + r * 4 * n, 4 * n) + Load(hr + r * 4 * n, 4 * n) +
                          Load(bias, 4 * n);
    } else {
      Map(gates, 4 * n) = Load(xw + r * 4 * n, 4 * n) + Load(hr + r * 4 * n, 4 * n);
    }
    Map i(gates, n), f(gates + n, n), g(gates + 2 * n, n), o(gates + 3 * n, n);
    i = i.logistic();
    f = f.logistic();
    g = g.tanh();
    o = o.logistic();
    Map c_row(c_row_data, n);
    c_row = f * Load(c_prev + r * n, n) + i * g;
    Store(h + r * n, n, o * c_row.tanh());
    if constexpr (!kFloat) {
      Store(act + r * 4 * n, 4 * n, Map(gates, 4 * n));
      Store(c + r * n, n, c_row);
    }
  }
}

// The gradient of GatesForward: dz (rows, 4 units) and dc_prev = dc * f from
// dh (+ dh_extra if not null), dc_next and what the forward kept.
template <typename T>
void GatesBackward(int64_t rows, int64_t n, const T* dh, const T* dh_extra, const T* dc_next,
                   const T* act, const T* c_prev, const T* c, T* dz, T* dc_prev) {
  Array tc(n), dc(n), d_h(n);
  for (int64_t r = 0; r < rows; ++r) {
    const T* gates = act + r * 4 * n;
    auto i = Load(gates, n);
    auto f = Load(gates + n, n);
    auto g = Load(gates + 2 * n, n);
    auto o = Load(gates + 3 * n, n);
    if (dh_extra != nullptr) {
      d_h = Load(dh + r * n, n) + Load(dh_extra + r * n, n);
    } else {
      d_h = Load(dh + r * n, n);
    }
    tc = Load(c + r * n, n).tanh();  // recomputed, not stored
    dc = d_h * o * (1.f - tc * tc) + Load(dc_next + r * n, n);
    T* d = dz + r * 4 * n;
    Store(d, n, dc * g * i * (1.f - i));
    Store(d + n, n, dc * Load(c_prev + r * n, n) * f * (1.f - f));
    Store(d + 2 * n, n, dc * i * (1.f - g * g));
    Store(d + 3 * n, n, d_h * tc * o * (1.f - o));
    Store(dc_prev + r * n, n, dc * f);
  }
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
    OP_REQUIRES_OK(ctx, CheckShapes(xw.shape(), {&c_prev}, &rows, &units));
    OP_REQUIRES(ctx, hr.shape() == xw.shape(),
                absl::InvalidArgumentError("xw and hr must have the same shape"));
    Tensor *h = nullptr, *c = nullptr, *act = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, c_prev.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c_prev.shape(), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, xw.shape(), &act));
    GatesForward<T>(rows, units, xw.flat<T>().data(), hr.flat<T>().data(), nullptr,
                    c_prev.flat<T>().data(), h->flat<T>().data(), c->flat<T>().data(),
                    act->flat<T>().data());
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
    OP_REQUIRES_OK(ctx, CheckShapes(act.shape(), {&dh, &dc_next, &c_prev, &c}, &rows, &units));
    Tensor *dz = nullptr, *dc_prev = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, act.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c_prev.shape(), &dc_prev));
    GatesBackward<T>(rows, units, dh.flat<T>().data(), nullptr, dc_next.flat<T>().data(),
                     act.flat<T>().data(), c_prev.flat<T>().data(), c.flat<T>().data(),
                     dz->flat<T>().data(), dc_prev->flat<T>().data());
  }
};

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrix = Eigen::Map<const RowMajor>;
using MutableMatrix = Eigen::Map<RowMajor>;

// Checks that the recurrent kernel is (units, 4 units).
absl::Status CheckKernel(const Tensor& kernel, int64_t units) {
  if (kernel.shape() != TensorShape({units, 4 * units})) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recurrent_kernel must be (units, 4 units) = (", units, ", ", 4 * units, "), got ",
        kernel.shape().DebugString()));
  }
  return absl::OkStatus();
}

// Checks that `gates` is (time, rows, 4 units) and h, c are (rows, units);
// sets time, rows and units.
absl::Status CheckSequence(const Tensor& gates, const Tensor& h, const Tensor& c,
                           int64_t* time, int64_t* rows, int64_t* units) {
  if (gates.dims() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LSTM gates must be (time, rows, 4 units), got ", gates.shape().DebugString()));
  }
  *time = gates.dim_size(0);
  return CheckShapes(TensorShape({gates.dim_size(1), gates.dim_size(2)}), {&h, &c}, rows, units);
}

// The whole float32 recurrence of one layer (one row block) over time, given
// the input half of every step xw (time, rows, 4 units): per step the
// recurrent product h_prev @ recurrent_kernel (Eigen's matrix product on the
// calling thread; at the LSTM's shapes 1.7x TensorFlow's MatMul on one
// core of the AVX2 VM) into the step's act, then the gate math. Keeps what
// the backward needs: acts (time, rows, 4 units) and cs (time + 1, rows,
// units), cs[0] = c0.
class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xw = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    const Tensor& h0 = ctx->input(2);
    const Tensor& c0 = ctx->input(3);
    const Tensor& bias = ctx->input(4);
    int64_t rows = 0, units = 0, time = 0;
    OP_REQUIRES_OK(ctx, CheckSequence(xw, h0, c0, &time, &rows, &units));
    OP_REQUIRES_OK(ctx, CheckKernel(kernel, units));
    OP_REQUIRES(ctx, bias.shape() == TensorShape({4 * units}),
                absl::InvalidArgumentError(absl::StrCat(
                    "bias must be (4 units) = (", 4 * units, "), got ",
                    bias.shape().DebugString())));
    Tensor *outputs = nullptr, *h = nullptr, *c = nullptr, *acts = nullptr, *cs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({time, rows, units}), &outputs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, h0.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, c0.shape(), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, xw.shape(), &acts));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({time + 1, rows, units}), &cs));
    const int64_t state = rows * units, gates = rows * 4 * units;
    const float* xw_data = xw.flat<float>().data();
    const float* w = kernel.flat<float>().data();
    float* out = outputs->flat<float>().data();
    float* act = acts->flat<float>().data();
    float* cell = cs->flat<float>().data();
    std::copy_n(c0.flat<float>().data(), state, cell);
    const float* h_prev = h0.flat<float>().data();
    for (int64_t t = 0; t < time; ++t) {
      float* act_t = act + t * gates;
      MutableMatrix(act_t, rows, 4 * units).noalias() =
          ConstMatrix(h_prev, rows, units) * ConstMatrix(w, units, 4 * units);
      GatesForward<float>(rows, units, xw_data + t * gates, act_t, bias.flat<float>().data(),
                          cell + t * state, out + t * state, cell + (t + 1) * state, act_t);
      h_prev = out + t * state;
    }
    std::copy_n(h_prev, state, h->flat<float>().data());
    std::copy_n(cell + time * state, state, c->flat<float>().data());
  }
};

// LstmSequence's gradient: back over time, per step the gate derivatives dz
// from dh = d_outputs[t] + dh_next, then dh_prev = dz @ recurrent_kernel^T.
// Returns dz for every step (= d xw) and the initial state's gradients; the
// weight gradients are GEMMs over all steps, in TensorFlow (fused_lstm.py).
class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_outputs = ctx->input(0);
    const Tensor& d_h = ctx->input(1);
    const Tensor& d_c = ctx->input(2);
    const Tensor& acts = ctx->input(3);
    const Tensor& cs = ctx->input(4);
    const Tensor& kernel = ctx->input(5);
    int64_t rows = 0, units = 0, time = 0;
    OP_REQUIRES_OK(ctx, CheckSequence(acts, d_h, d_c, &time, &rows, &units));
    OP_REQUIRES_OK(ctx, CheckKernel(kernel, units));
    OP_REQUIRES(ctx, d_outputs.shape() == TensorShape({time, rows, units}),
                absl::InvalidArgumentError(absl::StrCat(
                    "d_outputs must be (time, rows, units), got ",
                    d_outputs.shape().DebugString())));
    OP_REQUIRES(ctx, cs.shape() == TensorShape({time + 1, rows, units}),
                absl::InvalidArgumentError(absl::StrCat(
                    "cs must be (time + 1, rows, units), got ", cs.shape().DebugString())));
    Tensor *dz = nullptr, *dh0 = nullptr, *dc0 = nullptr, *d_bias = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, acts.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, d_h.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, d_c.shape(), &dc0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({4 * units}), &d_bias));
    // The bias gradient, summed step by step while each step's dz is in
    // cache (a reduction over all of dz afterwards reads it all again).
    Eigen::Map<Eigen::RowVectorXf> db(d_bias->flat<float>().data(), 4 * units);
    db.setZero();
    const int64_t state = rows * units, gates = rows * 4 * units;
    const float* d_out = d_outputs.flat<float>().data();
    const float* act = acts.flat<float>().data();
    const float* cell = cs.flat<float>().data();
    const float* w = kernel.flat<float>().data();
    float* dz_data = dz->flat<float>().data();
    // dh0 and dc0 carry dh_next and dc_next through the loop: each row of
    // GatesBackward reads them before it writes the same row.
    float* dh = dh0->flat<float>().data();
    float* dc = dc0->flat<float>().data();
    std::copy_n(d_h.flat<float>().data(), state, dh);
    std::copy_n(d_c.flat<float>().data(), state, dc);
    for (int64_t t = time - 1; t >= 0; --t) {
      float* dz_t = dz_data + t * gates;
      GatesBackward<float>(rows, units, d_out + t * state, dh, dc, act + t * gates,
                           cell + t * state, cell + (t + 1) * state, dz_t, dc);
      db += ConstMatrix(dz_t, rows, 4 * units).colwise().sum();
      MutableMatrix(dh, rows, units).noalias() =
          ConstMatrix(dz_t, rows, 4 * units) *
          ConstMatrix(w, units, 4 * units).transpose();
    }
  }
};

// MatMul (float32, 2-D, optionally transposed operands) as Eigen's matrix
// product on the calling thread. fused_lstm runs each row block's big
// products in it (the input GEMM over all steps, the weight gradients, the
// input gradient) where it runs the whole-sequence ops: the blocks run side
// by side, one core each, as their recurrences do. On one core of the AVX2
// VM Eigen ran the block's shapes at 68-85 GFLOP/s (two at once: 131-165 in
// total) where TensorFlow's MatMul over the whole batch on both cores ran at
// 115-168 (2026-12-02).
class MatMulOp : public OpKernel {
 public:
  explicit MatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES(ctx, a.dims() == 2 && b.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat(
                    "TextgenMatMul takes matrices, got ", a.shape().DebugString(), " and ",
                    b.shape().DebugString())));
    const int64_t m = a.dim_size(transpose_a_ ? 1 : 0), k = a.dim_size(transpose_a_ ? 0 : 1);
    const int64_t k_b = b.dim_size(transpose_b_ ? 1 : 0), n = b.dim_size(transpose_b_ ? 0 : 1);
    OP_REQUIRES(ctx, k == k_b,
                absl::InvalidArgumentError(absl::StrCat(
                    "TextgenMatMul: inner dimensions differ: ", a.shape().DebugString(),
                    transpose_a_ ? "^T" : "", " x ", b.shape().DebugString(),
                    transpose_b_ ? "^T" : "")));
    Tensor* product = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, n}), &product));
    MutableMatrix out(product->flat<float>().data(), m, n);
    ConstMatrix lhs(a.flat<float>().data(), a.dim_size(0), a.dim_size(1));
    ConstMatrix rhs(b.flat<float>().data(), b.dim_size(0), b.dim_size(1));
    if (k == 0) {
      out.setZero();
    } else if (transpose_a_ && transpose_b_) {
      out.noalias() = lhs.transpose() * rhs.transpose();
    } else if (transpose_a_) {
      out.noalias() = lhs.transpose() * rhs;
    } else if (transpose_b_) {
      out.noalias() = lhs * rhs.transpose();
    } else {
      out.noalias() = lhs * rhs;
    }
  }

 private:
  bool transpose_a_ = false;
  bool transpose_b_ = false;
};

REGISTER_KERNEL_BUILDER(Name("TextgenMatMul").Device(::tensorflow::DEVICE_CPU), MatMulOp);
REGISTER_KERNEL_BUILDER(Name("TextgenLstmSequence").Device(::tensorflow::DEVICE_CPU),
                        LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("TextgenLstmSequenceGrad").Device(::tensorflow::DEVICE_CPU),
                        LstmSequenceGradOp);

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
