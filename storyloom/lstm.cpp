// The LSTM's recurrence for training in C++ (kernels.py builds it and wraps it as an autograd function).
//
// Both step loops of a batch: each step's product through oneDNN with the recurrent weight packed once a batch,
// and each step's gate arithmetic in one vectorised pass over the (B, 4H) gates, saving what the backward needs.
// The sequence-wide GEMMs (the input projection, the weight gradients) stay outside, in kernels.py. On 2 cores of
// an AMD Zen 5 in bf16 the default preset trained 1.28-1.56x as fast through it as through oneDNN's fused LSTM.
//
// Built for the vector unit ATen uses here (kernels.lstm_flags): at::vec's 16-float vectors with AVX-512, 8 with
// AVX2 and FMA; kernels.py builds it only on x86 CPUs that have one of them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/vec.h>
#include <fbgemm/Utils.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
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

// W (N, K) -> W^T (K, N), contiguous, by FBGEMM's vectorised transpose (the torch wheel exports it): packing the
// transposed view made oneDNN copy it element by element first, 1.2 ms for W_hh of the default preset in bf16, a
// tenth of the batch's 64 products. Split by rows over the threads: on one, the others waited 0.85 ms a batch.
template <typename P>
Tensor transposed(const Tensor& W) {
  const int64_t N = W.size(0), K = W.size(1);
  auto out = at::empty({K, N}, W.options());
  using Bits = std::conditional_t<sizeof(P) == 2, uint16_t, float>;
  const Bits* w = reinterpret_cast<const Bits*>(W.template data_ptr<P>());
  Bits* wt = reinterpret_cast<Bits*>(out.template data_ptr<P>());
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {  // rows [n0, n1) of W: columns [n0, n1) of W^T
    fbgemm::transpose_simd<Bits>(n1 - n0, K, w + n0 * K, K, wt + n0, N);
  });
  return out;
}

// The gates' exp is ATen's polynomial one (exp_u20, within 20 ulp), not Sleef's (within 1): with Sleef's exp and
// tanh the forward's gate pass took 11 of its 20 ms a batch (default preset, bf16, 2 Zen 5 cores), more than its
// products. tanh(x) = 2 sigmoid(2x) - 1 shares it; near 0 that loses relative precision but stays within 1e-7 of
// tanh, far inside a bf16 product's rounding, and the fp32 path stays within 1e-5 of nn.LSTM (tested).
inline Vec sigmoid(Vec x) { return Vec(1.f) / (Vec(1.f) + x.neg().exp_u20()); }
inline Vec tanh(Vec x) { return Vec(2.f) * sigmoid(x + x) - Vec(1.f); }

// One step's B rows over torch's threads, H columns each in vectors of Vec::size() floats (the last one partial):
// f(b, j, n) does row b's columns [j, j + n).
template <typename F>
void rows(int64_t B, int64_t H, F f) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < H; j += Vec::size()) f(b, j, static_cast<int>(std::min<int64_t>(Vec::size(), H - j)));
  });
}

// A product's operands and results are P: float, or bf16 where the products run in bf16. The gate arithmetic is
// fp32; these load P into a vector of floats and store one as P (bf16 rounded to nearest even, as a tensor's .to()
// rounds), so no step makes a pass of its own to convert. n < Vec::size(): the row's last, partial vector.
constexpr int LANES = Vec::size();
inline Vec load(const float* p, int n) { return Vec::loadu(p, n); }
inline void store(float* p, Vec x, int n) { x.store(p, n); }
#if defined(CPU_CAPABILITY_AVX512)
using Half = __m256i;  // LANES bf16 values
inline Half loadu(const void* p) { return _mm256_loadu_si256(static_cast<const Half*>(p)); }
inline Vec widen(Half h) { __m512 o; at::vec::cvtbf16_fp32(h, o); return Vec(o); }
inline Half narrow(Vec x) { return at::vec::cvtfp32_bf16(__m512(x)); }
#else
using Half = __m128i;
inline Half loadu(const void* p) { return _mm_loadu_si128(static_cast<const Half*>(p)); }
inline Vec widen(Half h) { __m256 o; at::vec::cvtbf16_fp32(h, o); return Vec(o); }
inline Half narrow(Vec x) { return at::vec::cvtfp32_bf16(__m256(x)); }
#endif
inline Vec load(const at::BFloat16* p, int n) {
  if (n == LANES) return widen(loadu(p));
  Half part{};
  std::memcpy(&part, p, n * sizeof(uint16_t));
  return widen(part);
}
inline void store(at::BFloat16* p, Vec x, int n) {
  const Half r = narrow(x);
  std::memcpy(p, &r, n * sizeof(uint16_t));
}

// xp (T, B, 4H) in P: x W_ih^T + b, as autocast's input projection gives it; h0, c0 (B, H) fp32; W_hh (4H, H)
// fp32, cast to P for the products.
// -> G (T, B, 4H) the activated gates (i, f, g, o), C (T+1, B, H), tanh(C_t) (T, B, H), Y (T+1, B, H) the outputs
// in P (Y[0] = h0), and W_hh packed for the backward's products dz @ W_hh.
template <typename P>
std::vector<Tensor> forward_as(const Tensor& xp_, const Tensor& h0, const Tensor& c0, const Tensor& W_hh) {
  const at::ScalarType dtype = c10::CppTypeToScalarType<P>::value;
  const auto xp = xp_.to(dtype).contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = xp.size(2) / 4;
  const auto W = W_hh.to(dtype).contiguous();
  const auto packed = pack(W, B), packed_t = pack(transposed<P>(W), B);
  const auto f32 = xp.options().dtype(at::kFloat);
  auto G = at::empty({T, B, 4 * H}, f32), C = at::empty({T + 1, B, H}, f32), TC = at::empty({T, B, H}, f32);
  auto Y = at::empty({T + 1, B, H}, f32.dtype(dtype));
  C[0].copy_(c0);
  Y[0].copy_(h0);
  for (int64_t t = 0; t < T; ++t) {
    const auto z = product(Y[t], packed).contiguous();  // (B, 4H), P
    const P* zp = z.template data_ptr<P>();
    const P* xt = xp[t].template data_ptr<P>();
    const float* cp = C[t].data_ptr<float>();
    float *gp = G[t].data_ptr<float>(), *cn = C[t + 1].data_ptr<float>(), *tcp = TC[t].data_ptr<float>();
    P* hp = Y[t + 1].template data_ptr<P>();
    rows(B, H, [&](int64_t b, int64_t j, int n) {
      const int64_t r = b * 4 * H + j, s = b * H + j;
      auto gate = [&](int k) { return load(xt + r + k * H, n) + load(zp + r + k * H, n); };
      const Vec i = sigmoid(gate(0)), f = sigmoid(gate(1)), g = tanh(gate(2)), o = sigmoid(gate(3));
      const Vec c = f * Vec::loadu(cp + s, n) + i * g, tc = tanh(c);
      i.store(gp + r, n), f.store(gp + r + H, n), g.store(gp + r + 2 * H, n), o.store(gp + r + 3 * H, n);
      c.store(cn + s, n), tc.store(tcp + s, n), store(hp + s, o * tc, n);
    });
  }
  return {G, C, TC, Y, packed_t};
}

std::vector<Tensor> forward(const Tensor& xp, const Tensor& h0, const Tensor& c0, const Tensor& W_hh, bool bf16) {
  return bf16 ? forward_as<at::BFloat16>(xp, h0, c0, W_hh) : forward_as<float>(xp, h0, c0, W_hh);
}

// The recurrent part of the backward, last step first, given forward's results and dy (T, B, H) in P (the loss's
// gradient at each output) and dc (B, H) fp32 (at C_T) -> dZ (T, B, 4H) in P (the gradient at every gate's input),
// dh0, dc0 (B, H) fp32.
template <typename P>
std::vector<Tensor> backward_as(const Tensor& G, const Tensor& C, const Tensor& TC, const Tensor& packed_t,
                                const Tensor& dy_, const Tensor& dcT) {
  const at::ScalarType dtype = c10::CppTypeToScalarType<P>::value;
  const auto dy = dy_.to(dtype).contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = G.size(2) / 4;
  auto dZ = at::empty({T, B, 4 * H}, G.options().dtype(dtype));
  auto dc = dcT.to(at::kFloat).contiguous().clone(), dh = at::zeros({B, H}, G.options().dtype(dtype));  // dh: from t + 1
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *gp = G[t].data_ptr<float>(), *cp = C[t].data_ptr<float>(), *tcp = TC[t].data_ptr<float>();
    const P *dyp = dy[t].template data_ptr<P>(), *dhp = dh.template data_ptr<P>();
    float* dcp = dc.data_ptr<float>();
    P* dzp = dZ[t].template data_ptr<P>();
    rows(B, H, [&](int64_t b, int64_t j, int n) {
      const int64_t r = b * 4 * H + j, s = b * H + j;
      const Vec i = Vec::loadu(gp + r, n), f = Vec::loadu(gp + r + H, n), g = Vec::loadu(gp + r + 2 * H, n),
                o = Vec::loadu(gp + r + 3 * H, n), tc = Vec::loadu(tcp + s, n), one(1.f);
      const Vec d_h = load(dyp + s, n) + load(dhp + s, n);
      const Vec d_c = Vec::loadu(dcp + s, n) + d_h * o * (one - tc * tc);
      store(dzp + r, d_c * g * i * (one - i), n);
      store(dzp + r + H, d_c * Vec::loadu(cp + s, n) * f * (one - f), n);
      store(dzp + r + 2 * H, d_c * i * (one - g * g), n);
      store(dzp + r + 3 * H, d_h * tc * o * (one - o), n);
      (d_c * f).store(dcp + s, n);
    });
    dh = product(dZ[t], packed_t).contiguous();  // (B, H), P
  }
  return {dZ, dh.to(at::kFloat), dc};
}

std::vector<Tensor> backward(const Tensor& G, const Tensor& C, const Tensor& TC, const Tensor& packed_t,
                             const Tensor& dy, const Tensor& dcT) {
  return packed_t.scalar_type() == at::kBFloat16 ? backward_as<at::BFloat16>(G, C, TC, packed_t, dy, dcT)
                                                 : backward_as<float>(G, C, TC, packed_t, dy, dcT);
}

}  // namespace

TORCH_LIBRARY(storyloom_lstm, m) {
  m.def("forward(Tensor xp, Tensor h0, Tensor c0, Tensor W_hh, bool bf16) -> Tensor[]", &forward);
  m.def("backward(Tensor G, Tensor C, Tensor TC, Tensor packed_t, Tensor dy, Tensor dc) -> Tensor[]", &backward);
}
