// The candidate LSTM's two step loops in C++ (benchmarks/lstm_backward.py compiles it for its "C++ loops" arm).
//
// The same arithmetic as lstm_backward.py's forward_steps and backward_steps: each step's product through oneDNN
// with the recurrent weight packed once a batch, and the step's gate arithmetic in one vectorised pass over the
// (B, 4H) gates instead of a dozen eager tensor operations. The sequence-wide GEMMs stay outside, in the script.
// It exists to answer one question per machine: once the gate arithmetic costs almost nothing, how close does a
// hand-written recurrence come to the floor of its products, and does that beat oneDNN's fused LSTM?
//
// Built with AVX2 and FMA (at::vec's 8-float vectors, exp and tanh by the Sleef that torch ships): the script
// builds it only on x86 CPUs that have both.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

namespace {

// W (N, K) packed by oneDNN for products x (B, K) -> x @ W^T: what inductor's freezing does for a linear layer.
// Without it oneDNN's matmul repacks W at every call, and a recurrence multiplies by the same W T times a batch.
Tensor pack(const Tensor& W, int64_t B) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                       .typed<Tensor(const Tensor&, std::optional<int64_t>)>();
  return op.call(W, B);
}

Tensor product(const Tensor& x, const Tensor& packed) {  // (B, K) -> (B, N), in x's dtype
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view,
                                     c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();
  return op.call(x, packed, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

inline Vec sigmoid(Vec x) { return Vec(1.f) / (Vec(1.f) + x.neg().exp()); }

// One step's B rows over torch's threads, H columns each in vectors of 8 (the last one partial): f(b, j, n) does
// row b's columns [j, j + n).
template <typename F>
void rows(int64_t B, int64_t H, F f) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < H; j += Vec::size()) f(b, j, static_cast<int>(std::min<int64_t>(Vec::size(), H - j)));
  });
}

// xp (T, B, 4H) fp32: x W_ih^T + b; h0, c0 (B, H) fp32; W_hh (4H, H) fp32; bf16: the products in bf16.
// -> G (T, B, 4H) the activated gates (i, f, g, o), C (T+1, B, H), tanh(C_t) (T, B, H), Y (T+1, B, H) the outputs
// in the products' dtype (Y[0] = h0), and W_hh packed for the backward's products dz @ W_hh.
std::vector<Tensor> forward(const Tensor& xp_, const Tensor& h0, const Tensor& c0, const Tensor& W_hh, bool bf16) {
  const auto xp = xp_.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = xp.size(2) / 4;
  const auto dtype = bf16 ? at::kBFloat16 : at::kFloat;
  const auto W = W_hh.to(dtype);
  const auto packed = pack(W, B), packed_t = pack(W.t(), B);  // oneDNN packs the transposed view as it is
  const auto f32 = xp.options();
  auto G = at::empty({T, B, 4 * H}, f32), C = at::empty({T + 1, B, H}, f32), TC = at::empty({T, B, H}, f32);
  auto Y = at::empty({T + 1, B, H}, f32.dtype(dtype)), h = at::empty({B, H}, f32);
  C[0].copy_(c0);
  Y[0].copy_(h0);
  for (int64_t t = 0; t < T; ++t) {
    const auto z = product(Y[t], packed).to(at::kFloat).contiguous();  // (B, 4H)
    const float *zp = z.data_ptr<float>(), *xt = xp[t].data_ptr<float>(), *cp = C[t].data_ptr<float>();
    float *gp = G[t].data_ptr<float>(), *cn = C[t + 1].data_ptr<float>(), *tcp = TC[t].data_ptr<float>(),
          *hp = h.data_ptr<float>();
    rows(B, H, [&](int64_t b, int64_t j, int n) {
      const int64_t r = b * 4 * H + j, s = b * H + j;
      auto gate = [&](int k) { return Vec::loadu(xt + r + k * H, n) + Vec::loadu(zp + r + k * H, n); };
      const Vec i = sigmoid(gate(0)), f = sigmoid(gate(1)), g = gate(2).tanh(), o = sigmoid(gate(3));
      const Vec c = f * Vec::loadu(cp + s, n) + i * g, tc = c.tanh();
      i.store(gp + r, n), f.store(gp + r + H, n), g.store(gp + r + 2 * H, n), o.store(gp + r + 3 * H, n);
      c.store(cn + s, n), tc.store(tcp + s, n), (o * tc).store(hp + s, n);
    });
    Y[t + 1].copy_(h);
  }
  return {G, C, TC, Y, packed_t};
}

// The recurrent part of the backward, last step first, given forward's results and dy (T, B, H) fp32 (the loss's
// gradient at each output) and dc (B, H) fp32 (at C_T) -> dZ (T, B, 4H) in the products' dtype (the gradient at
// every gate's input), dh0, dc0 (B, H) fp32.
std::vector<Tensor> backward(const Tensor& G, const Tensor& C, const Tensor& TC, const Tensor& packed_t,
                             const Tensor& dy_, const Tensor& dcT) {
  const auto dy = dy_.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = G.size(2) / 4;
  const auto dtype = packed_t.scalar_type();  // the products': float or bf16
  auto dZ = at::empty({T, B, 4 * H}, G.options().dtype(dtype)), dz = at::empty({B, 4 * H}, G.options());
  auto dc = dcT.to(at::kFloat).contiguous().clone(), dh = at::zeros({B, H}, G.options());  // dh: from step t + 1
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *gp = G[t].data_ptr<float>(), *cp = C[t].data_ptr<float>(), *tcp = TC[t].data_ptr<float>(),
                *dyp = dy[t].data_ptr<float>(), *dhp = dh.data_ptr<float>();
    float *dcp = dc.data_ptr<float>(), *dzp = dz.data_ptr<float>();
    rows(B, H, [&](int64_t b, int64_t j, int n) {
      const int64_t r = b * 4 * H + j, s = b * H + j;
      const Vec i = Vec::loadu(gp + r, n), f = Vec::loadu(gp + r + H, n), g = Vec::loadu(gp + r + 2 * H, n),
                o = Vec::loadu(gp + r + 3 * H, n), tc = Vec::loadu(tcp + s, n), one(1.f);
      const Vec d_h = Vec::loadu(dyp + s, n) + Vec::loadu(dhp + s, n);
      const Vec d_c = Vec::loadu(dcp + s, n) + d_h * o * (one - tc * tc);
      (d_c * g * i * (one - i)).store(dzp + r, n);
      (d_c * Vec::loadu(cp + s, n) * f * (one - f)).store(dzp + r + H, n);
      (d_c * i * (one - g * g)).store(dzp + r + 2 * H, n);
      (d_h * tc * o * (one - o)).store(dzp + r + 3 * H, n);
      (d_c * f).store(dcp + s, n);
    });
    dZ[t].copy_(dz);
    dh = product(dZ[t], packed_t).to(at::kFloat).contiguous();
  }
  return {dZ, dh, dc};
}

}  // namespace

TORCH_LIBRARY(lstm_loop, m) {
  m.def("forward(Tensor xp, Tensor h0, Tensor c0, Tensor W_hh, bool bf16) -> Tensor[]", &forward);
  m.def("backward(Tensor G, Tensor C, Tensor TC, Tensor packed_t, Tensor dy, Tensor dc) -> Tensor[]", &backward);
}
