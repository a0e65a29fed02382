// The writing loop for one stream, in C++: native.py compiles it once and decoding.sample calls it.
//
// Call for call the ATen operations of the Python loop at batch 1 with int8 weights (every filter of
// sampling.shape_logits, sampling.draw for one row, cells.LSTM.step over cells.Matrix, LanguageModel.step's
// head), on the same generator: so it writes the same text for a seed, and tests/test_native.py checks that it
// does. It exists because in Python the calls between these operations took most of each character's time.
// read_tokens is cells.LSTM.read in int8 (torch.quantized_lstm) for one stream, likewise operation for operation.
//
// One thing is our own arithmetic: on x86 CPUs (AVX-512 VNNI, or AVX2), the one-row int8 product (q8_linear) replaces
// FBGEMM's, which computes a row as a general matrix product: 3072 x 768 took 55-77 us there against 23-29 here
// (2 threads, the weights split between the cores' caches; benchmarks/README.md, "Batch-1 writing"). It computes
// what FBGEMM computes, bit for bit (the same quantisation of x, exact int32 sums, the same float steps after
// them), which a test checks.

#include <ATen/ATen.h>
#include <ATen/CPUFunctions.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/native/quantized/PackedParams.h>
#include <ATen/native/quantized/cpu/QuantUtils.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#define Q8_X86 1  // the product's kernels are x86 ones; elsewhere (ARM) q8_level() is 0 and FBGEMM's or QNNPACK's
#include <immintrin.h>  // packed products multiply, so the rest of the loop builds and runs there too
#endif

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

using Packed = c10::intrusive_ptr<LinearPackedParamsBase>;

// ---- the one-row int8 product --------------------------------------------------------------------------------
// A matrix is 4 tensors: its int8 weights in VNNI order (blocks of 16 output rows by 4 inputs: one 64-byte load
// a multiply-add), each row's sum of weights (int32), each row's scale (float), and its bias (float, or empty).
// N is padded to a multiple of 64 (four blocks, summed side by side), K to a multiple of 4, with zero weights.

// 2: AVX-512 VNNI (with BW and VL, which every CPU with VNNI has had so far; checked all the same), 1: AVX2 with
// FMA (x86 from 2013 on), 0: neither, and FBGEMM multiplies.
int64_t q8_level() {
#ifndef Q8_X86
  return 0;
#else
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return 2;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
}

std::vector<at::Tensor> q8_pack(const Packed& p) {
  auto [qw, bias] = p->unpack();  // (N, K) qint8, per output row, zero points 0 (cells.int8_packed)
  TORCH_CHECK(qw.qscheme() == at::kPerChannelAffine && qw.q_per_channel_zero_points().eq(0).all().item<bool>(),
              "q8_pack: weights must be symmetric per output row");
  auto w = qw.int_repr().contiguous();
  const int64_t N = w.size(0), K = w.size(1), Np = (N + 63) / 64 * 64, Kp = (K + 3) / 4 * 4;
  auto padded = at::zeros({Np, Kp}, at::kChar);
  padded.narrow(0, 0, N).narrow(1, 0, K).copy_(w);
  // (Np/16, 16, Kp/4, 4) -> (Np/16, Kp/4, 16, 4)
  auto vnni = padded.view({Np / 16, 16, Kp / 4, 4}).permute({0, 2, 1, 3}).contiguous();
  auto colsum = w.to(at::kInt).sum(1, /*keepdim=*/false, at::kInt);
  auto scale = qw.q_per_channel_scales().to(at::kFloat);  // FBGEMM keeps each row's scale as a float too
  return {vnni, colsum, scale, bias ? bias->contiguous().to(at::kFloat) : at::empty({0}, at::kFloat)};
}

#ifdef Q8_X86
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// The 4 bytes of group g of a as one int32, to broadcast (memcpy: a byte array may not be read through an int32*).
static inline int32_t group(const uint8_t* a, int64_t g) {
  int32_t v;
  std::memcpy(&v, a + 4 * g, 4);
  return v;
}

// x quantised as FBGEMM's Quantize does, over x's least and greatest value: one fused multiply-add, rounded to
// nearest even, clamped to 8 bits (a[k] for k >= K stays 0).
VNNI static void quantise(const float* x, int64_t K, uint8_t* a, quant_utils::TensorQuantizationParams& qp) {
  __m512 vlo = _mm512_set1_ps(x[0]), vhi = vlo;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? 0xFFFF : (1u << (K - k)) - 1;
    const __m512 v = _mm512_mask_loadu_ps(vlo, m, x + k);  // masked lanes repeat x[0]: the range is unchanged
    vlo = _mm512_min_ps(vlo, v), vhi = _mm512_max_ps(vhi, v);
  }
  // the function FBGEMM's caller uses to choose the scale and zero point (ATen's QuantUtils.h), 7-bit range
  qp = quant_utils::ChooseQuantizationParams(_mm512_reduce_min_ps(vlo), _mm512_reduce_max_ps(vhi), 0, 255, false, false,
                                             /*reduce_range=*/true);
  const float s = qp.scale;
  const __m512 inv = _mm512_set1_ps(1.0f / s), zp = _mm512_set1_ps(qp.zero_point);
  const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? 0xFFFF : (1u << (K - k)) - 1;
    __m512i q = _mm512_cvtps_epi32(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + k), inv, zp));
    q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
    _mm_mask_storeu_epi8(a + k, m, _mm512_cvtepi32_epi8(q));
  }
}

// Rows [64 q0, 64 q1) of y = (sums - zp * colsum) * (s * scale) (+ bias, fused): FBGEMM's ReQuantizeForFloat.
// The sums: G groups of 4 inputs, each group's 4 bytes of a broadcast against 16 rows in one multiply-add.
VNNI static void rows(const uint8_t* a, const int8_t* w, int64_t G, const int32_t* colsum, const float* scale,
                      const float* bias, int32_t zp, float s, int64_t N, float* y, int64_t q0, int64_t q1) {
  const __m512i z = _mm512_set1_epi32(zp);
  const __m512 vs = _mm512_set1_ps(s);
  for (int64_t q = q0; q < q1; ++q) {
    const int8_t* p = w + q * 4 * G * 64;
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t g = 0; g < G; ++g) {
      const __m512i av = _mm512_set1_epi32(group(a, g));
      for (int r = 0; r < 4; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], av, _mm512_loadu_si512(p + (r * G + g) * 64));
    }
    for (int r = 0; r < 4; ++r) {
      const int64_t j = q * 64 + r * 16;
      if (j >= N) break;
      const __mmask16 m = N - j >= 16 ? 0xFFFF : (1u << (N - j)) - 1;
      const __m512i raw = _mm512_sub_epi32(acc[r], _mm512_mullo_epi32(z, _mm512_maskz_loadu_epi32(m, colsum + j)));
      const __m512 mult = _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m, scale + j));
      __m512 out = bias ? _mm512_fmadd_ps(_mm512_cvtepi32_ps(raw), mult, _mm512_maskz_loadu_ps(m, bias + j))
                        : _mm512_mul_ps(_mm512_cvtepi32_ps(raw), mult);
      _mm512_mask_storeu_ps(y + j, m, out);
    }
  }
}

// The same two steps with AVX2 and FMA. Each 64-byte block is two loads of 8 rows; a multiply-add of unsigned by
// signed bytes sums pairs into 16 bits, which cannot saturate here: activations are at most 128 (7 bits, plus a
// rounding tie) and weights within +-127, so a pair is within 32,512.
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static void quantise2(const float* x, int64_t K, uint8_t* a, quant_utils::TensorQuantizationParams& qp) {
  float lo = x[0], hi = x[0];
  int64_t k = 0;
  __m256 vlo = _mm256_set1_ps(x[0]), vhi = vlo;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    vlo = _mm256_min_ps(vlo, v), vhi = _mm256_max_ps(vhi, v);
  }
  alignas(32) float l8[8], h8[8];
  _mm256_store_ps(l8, vlo), _mm256_store_ps(h8, vhi);
  for (int j = 0; j < 8; ++j) lo = std::min(lo, l8[j]), hi = std::max(hi, h8[j]);
  for (int64_t t = k; t < K; ++t) lo = std::min(lo, x[t]), hi = std::max(hi, x[t]);
  qp = quant_utils::ChooseQuantizationParams(lo, hi, 0, 255, false, false, /*reduce_range=*/true);
  const float inv = 1.0f / static_cast<float>(qp.scale), zp = qp.zero_point;
  const __m256i zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(255);
  alignas(32) int32_t q8[8];
  for (k = 0; k + 8 <= K; k += 8) {
    __m256i q = _mm256_cvtps_epi32(_mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_set1_ps(inv), _mm256_set1_ps(zp)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(q8), _mm256_min_epi32(_mm256_max_epi32(q, zero), top));
    for (int j = 0; j < 8; ++j) a[k + j] = static_cast<uint8_t>(q8[j]);
  }
  for (; k < K; ++k) a[k] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, std::nearbyint(std::fma(x[k], inv, zp)))));
}

AVX2 static void rows2(const uint8_t* a, const int8_t* w, int64_t G, const int32_t* colsum, const float* scale,
                       const float* bias, int32_t zp, float s, int64_t N, float* y, int64_t q0, int64_t q1) {
  const __m256i ones = _mm256_set1_epi16(1), z = _mm256_set1_epi32(zp);
  const __m256 vs = _mm256_set1_ps(s);
  for (int64_t q = q0; q < q1; ++q) {
    const int8_t* p = w + q * 4 * G * 64;
    __m256i acc[8];
    for (auto& v : acc) v = _mm256_setzero_si256();
    for (int64_t g = 0; g < G; ++g) {
      const __m256i av = _mm256_set1_epi32(group(a, g));
      for (int r = 0; r < 8; ++r) {  // rows 8r .. 8r + 7 of the 64: block r / 2, its half r % 2
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + ((r / 2) * G + g) * 64 + (r % 2) * 32));
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, wv), ones));
      }
    }
    for (int r = 0; r < 8; ++r) {  // as the VNNI form ends: 8 rows at once, the last ones masked at N
      const int64_t j = q * 64 + r * 8;
      if (j >= N) break;
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(std::min<int64_t>(N - j, 8))),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256i raw = _mm256_sub_epi32(acc[r], _mm256_mullo_epi32(z, _mm256_maskload_epi32(colsum + j, m)));
      const __m256 mult = _mm256_mul_ps(vs, _mm256_maskload_ps(scale + j, m));
      _mm256_maskstore_ps(y + j, m, bias ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(raw), mult, _mm256_maskload_ps(bias + j, m))
                                         : _mm256_mul_ps(_mm256_cvtepi32_ps(raw), mult));
    }
  }
}
#endif  // Q8_X86

// y (N floats) for x (1, K): what FBGEMM's quantized::linear_dynamic(x, W, reduce_range=true) returns for one row.
// `level`: q8_level()'s, or lower (the tests check each path this CPU has).
void q8_into(const float* x, int64_t K, const at::Tensor* m, float* y, int64_t level) {
#ifndef Q8_X86
  TORCH_CHECK(false, "q8_linear: not on this CPU");  // q8_level() is 0: native.q8 hands the loops no layouts
#else
  const auto &w = m[0], &colsum = m[1], &scale = m[2], &bias = m[3];
  const int64_t N = colsum.size(0), G = w.size(1);
  std::vector<uint8_t> a(4 * G, 0);
  quant_utils::TensorQuantizationParams qp;
  (level == 2 ? quantise : quantise2)(x, K, a.data(), qp);
  const float* b = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, w.size(0) / 4, 4, [&](int64_t q0, int64_t q1) {
    (level == 2 ? rows : rows2)(a.data(), w.data_ptr<int8_t>(), G, colsum.data_ptr<int32_t>(), scale.data_ptr<float>(),
                                b, qp.zero_point, static_cast<float>(qp.scale), N, y, q0, q1);
  });
#endif
}

void q8_into(const float* x, int64_t K, const at::Tensor* m, float* y) {
  static const int64_t level = q8_level();
  q8_into(x, K, m, y, level);
}

void q8_into(const at::Tensor& x, const at::Tensor* m, float* y) {
  q8_into(x.contiguous().data_ptr<float>(), x.size(1), m, y);
}

at::Tensor q8_linear(const at::Tensor& x, const std::vector<at::Tensor>& m, int64_t level) {
  TORCH_CHECK(level >= 1 && level <= q8_level(), "q8_linear: this CPU has no level ", level);
  auto y = at::empty({1, m[1].size(0)}, at::kFloat);
  q8_into(x.contiguous().data_ptr<float>(), x.size(1), m.data(), y.data_ptr<float>(), level);
  return y;
}

// ---- an LSTM cell as ATen computes it ---------------------------------------------------------------------------
// An LSTM cell's gates as ATen computes them, without ATen's per-call cost (about 2 us a call, four calls a
// character): where ATen's kernels are its AVX2 ones, sigmoid is 1 / (1 + exp(0 - x)) over SLEEF's expf, 8 lanes
// at a time from each gate's start (Vectorized<float>'s sigmoid; a tail shorter than 16 goes to its scalar loop,
// so only a hidden size that is a multiple of 16 is done here), and tanh is MKL's vmsTanh, which ATen's tanh calls.
// Both libraries are inside libtorch_cpu; declared weak, so a torch built without them still loads this file
// and its reads and writes take ATen's calls, as they do where a check at first use finds other numbers than ATen's.
extern "C" {
__attribute__((weak)) void vmsTanh(int n, const float* a, float* r, unsigned long long mode);
}
static const unsigned long long VML_MODE = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE: ATen's

// C = f C + i g for the gates s (i, f, ...) and the candidate g, in LSTMCell's three roundings: f C and i g each
// rounded, then their sum (FLAGS keeps the compiler from fusing them).
static inline void update_cell_plain(const float* s, const float* g, float* c, int64_t H) {
  for (int64_t k = 0; k < H; ++k) {
    const float fc = s[H + k] * c[k], ig = s[k] * g[k];
    c[k] = fc + ig;
  }
}

#ifdef Q8_X86
extern "C" __attribute__((weak)) __m256 Sleef_expf8_u10(__m256);

AVX2 static void sigmoid8(float* p, int64_t n) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  for (int64_t k = 0; k < n; k += 8) {
    const __m256 e = Sleef_expf8_u10(_mm256_sub_ps(zero, _mm256_loadu_ps(p + k)));
    _mm256_storeu_ps(p + k, _mm256_div_ps(one, _mm256_add_ps(e, one)));
  }
}

// Whether this torch's sigmoid and tanh are what sigmoid8 and vmsTanh compute, on 4,096 values over the range where
// they are not yet 0, 1 or -1: checked once, so a torch whose kernels changed gets its own calls, not other numbers.
static bool same_as_aten() {
  auto x = at::linspace(-30.0, 30.0, 4096, at::kFloat) * at::linspace(0.999, 1.001, 4096, at::kFloat);
  auto s = x.clone(), t = x.clone(), want_s = x.sigmoid(), want_t = x.tanh();
  sigmoid8(s.data_ptr<float>(), s.numel());
  vmsTanh(static_cast<int>(t.numel()), t.data_ptr<float>(), t.data_ptr<float>(), VML_MODE);
  return at::equal(s, want_s) && at::equal(t, want_t);
}

// The writing step's C = f C + i g, i g added as ATen's addcmul adds it (addcmul_form): fused into one multiply-add,
// or rounded first.
AVX2 static void update_cell(const float* s, const float* g, float* c, int64_t H, bool fused) {
  if (!fused) return update_cell_plain(s, g, c, H);
  for (int64_t k = 0; k < H; ++k) c[k] = std::fma(s[k], g[k], s[H + k] * c[k]);
}
#endif

bool own_gates(int64_t H) {
#ifdef Q8_X86
  static const bool ok = at::get_cpu_capability() == "AVX2" && vmsTanh != nullptr && Sleef_expf8_u10 != nullptr &&
                         same_as_aten();
  return ok && H % 16 == 0;
#else
  return false;
#endif
}

// How ATen's addcmul (the writing step's C_t = f C_{t-1} + i g) rounds here: 1 where it is one fused multiply-add
// (its AVX2 kernel, compiled with FMA contraction), 2 where a product then a sum, 0 where neither (ATen's calls).
static int addcmul_form() {
  auto a = at::linspace(-3.0, 3.0, 4096, at::kFloat), b = at::linspace(2.0, -2.5, 4096, at::kFloat).sin(),
       c = at::linspace(-1.0, 1.0, 4096, at::kFloat).exp();
  auto want = at::addcmul(a, b, c), fused = at::empty_like(a), plain = at::empty_like(a);
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>(), *cp = c.data_ptr<float>();
  for (int64_t k = 0; k < a.numel(); ++k) {
    fused.data_ptr<float>()[k] = std::fma(bp[k], cp[k], ap[k]);
    const float bc = bp[k] * cp[k];
    plain.data_ptr<float>()[k] = ap[k] + bc;
  }
  return at::equal(want, fused) ? 1 : at::equal(want, plain) ? 2 : 0;
}

// The writing step's cell without ATen's seven calls a layer, where own_gates holds for its whole gate vector
// (its sigmoid is one call over all 4H, so 4H must be whole 16-lane blocks) and addcmul's rounding is known.
int64_t own_cell(int64_t H) {
  static const int form = own_gates(16) ? addcmul_form() : 0;
  return H % 4 == 0 ? form : 0;
}

// sampling.shape_logits for one row: ban, repetition penalty, temperature, top-k, top-p, in that order.
at::Tensor shape(at::Tensor l, const at::Tensor& banned, const at::Tensor& recent, double penalty, double temperature,
                 int64_t top_k, double top_p) {
  const float inf = std::numeric_limits<float>::infinity();
  if (banned.numel() > 0) l = l.clone().index_fill_(1, banned, -inf);
  if (penalty != 1.0 && recent.numel() > 0) {
    auto seen = at::zeros_like(l, at::kBool).scatter_(1, recent, true);
    l = at::where(seen, at::where(l > 0, l / penalty, l * penalty), l);
  }
  if (temperature > 0 && temperature != 1.0) l = l / temperature;
  if (top_k > 0 && top_k < l.size(-1)) {
    auto kth = std::get<0>(l.topk(top_k, -1)).slice(1, top_k - 1, top_k);
    l = l.masked_fill(l < kth, -inf);
  }
  if (top_p < 1.0) {
    auto [sorted, order] = l.sort(-1, /*descending=*/true);
    auto probs = sorted.softmax(-1);
    auto drop = at::zeros_like(probs, at::kBool).scatter_(1, order, (probs.cumsum(-1) - probs) >= top_p);
    l = l.masked_fill(drop, -inf);
  }
  return l;
}

// n tokens from (h0, c0, logits) after a prompt: draw one, step on it, and again. Returns the ids (n,), the state and
// logits after the last step, and the recent ids the penalty looks back over, so a caller can go on where it stopped.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> write_tokens(
    at::Tensor table,     // (V, 4H): W_ih x + b_ih + b_hh of every token x (LSTM.fold)
    const Packed& W_hh,   // layer 0's W_hh^T as FBGEMM's packed int8 weights (cells.Matrix)
    const c10::List<Packed>& W_up,  // each layer above: [W_ih | W_hh]^T, packed likewise
    const std::vector<at::Tensor>& b_up,  // and its b_ih + b_hh (4H,)
    const std::vector<at::Tensor>& q8,  // these matrices for q8_linear (q8_pack), 4 tensors each; empty: FBGEMM
    const std::optional<at::Tensor>& P,  // (H, E): the projection before a tied head, if any
    at::Tensor head_wT,   // (H or E, V)
    at::Tensor head_b,    // (V,)
    at::Tensor h0,        // (L, 1, H)
    at::Tensor c0,        // (L, 1, H)
    at::Tensor logits,    // (1, V)
    int64_t n,
    at::Tensor banned,    // (k,) ids never drawn
    at::Tensor recent,    // (1, <= window) the last ids, for the repetition penalty
    double penalty, int64_t window, double temperature, int64_t top_k, double top_p,  // top_k 0: every token
    std::optional<at::Generator> gen) {
  at::NoGradGuard no_grad;
  const int64_t L = h0.size(0), H = h0.size(2), V = logits.size(1);
  const int64_t cell = own_cell(H);
  // The state and every intermediate in buffers made once, the kernels entered directly (at::cpu::): the same
  // kernels as the Python loop's calls, without a dispatch and an allocation each.
  std::vector<at::Tensor> h, c, z, s, g, fc, tc;
  for (int64_t l = 0; l < L; ++l) {
    h.push_back(h0[l].clone()), c.push_back(c0[l].clone());  // (1, H): the caller's state stays as it was
    z.push_back(at::empty({1, 4 * H}, at::kFloat)), s.push_back(at::empty({1, 4 * H}, at::kFloat));
    g.push_back(at::empty({1, H}, at::kFloat)), fc.push_back(at::empty({1, H}, at::kFloat));
    tc.push_back(at::empty({1, H}, at::kFloat));
  }
  auto head_out = at::empty({1, V}, at::kFloat);
  auto ids = at::empty({n}, at::kLong);
  auto out = ids.accessor<int64_t, 1>();
  for (int64_t t = 0; t < n; ++t) {
    auto l = shape(logits, banned, recent, penalty, temperature, top_k, top_p);
    int64_t i;
    if (temperature == 0) {
      i = l.argmax(-1).item<int64_t>();
    } else {  // sampling.draw, one row: u * total into the cumulative sum, guarded at its float edges
      auto p = l[0].softmax(-1);
      auto cdf = p.cumsum(-1);
      auto found = at::searchsorted(cdf, at::rand({1}, gen, at::kFloat).mul_(cdf[-1]));
      i = std::min(found.item<int64_t>(), V - 1);
      if (p[i].item<float>() == 0) i = l[0].argmax().item<int64_t>();
    }
    out[t] = i;
    auto id = ids.narrow(0, t, 1);  // (1,)
    if (window > 0) {
      recent = at::cat({recent, id.view({1, 1})}, 1);
      recent = recent.slice(1, std::max<int64_t>(recent.size(1) - window, 0));
    }
    // cells.LSTM.step with z0 = table[i] at layer 0 (LanguageModel.step), then the head
    for (int64_t l = 0; l < L; ++l) {
      auto x = l == 0 ? h[0] : at::cat({h[l - 1], h[l]}, 1);
      const Packed& W = l == 0 ? W_hh : W_up.get(l - 1);
      if (q8.empty()) z[l].copy_(W->apply_dynamic(x, /*reduce_range=*/true));
      else q8_into(x, &q8[4 * l], z[l].data_ptr<float>());
#ifdef Q8_X86
      if (cell) {  // the same roundings as the seven calls below (own_cell)
        float *zp = z[l].data_ptr<float>(), *sp = s[l].data_ptr<float>(), *gp = g[l].data_ptr<float>(),
              *cp = c[l].data_ptr<float>(), *tp = tc[l].data_ptr<float>(), *hp = h[l].data_ptr<float>();
        const float* add = l == 0 ? table.data_ptr<float>() + i * 4 * H : b_up[l - 1].data_ptr<float>();
        for (int64_t k = 0; k < 4 * H; ++k) sp[k] = zp[k] += add[k];
        sigmoid8(sp, 4 * H);
        vmsTanh(H, zp + 2 * H, gp, VML_MODE);  // candidate C~_t
        update_cell(sp, gp, cp, H, cell == 1);  // C_t = f C_{t-1} + i C~_t
        vmsTanh(H, cp, tp, VML_MODE);  // h_t = o tanh(C_t)
        for (int64_t k = 0; k < H; ++k) hp[k] = sp[3 * H + k] * tp[k];
        continue;
      }
#endif
      at::cpu::add_(z[l], l == 0 ? table.narrow(0, i, 1) : b_up[l - 1]);
      at::cpu::sigmoid_out(s[l], z[l]);
      at::cpu::tanh_out(g[l], z[l].slice(1, 2 * H, 3 * H));  // candidate C~_t
      at::cpu::mul_out(fc[l], s[l].slice(1, H, 2 * H), c[l]);  // C_t = f C_{t-1} + i C~_t
      at::cpu::addcmul_out(c[l], fc[l], s[l].slice(1, 0, H), g[l]);
      at::cpu::tanh_out(tc[l], c[l]);  // h_t = o tanh(C_t)
      at::cpu::mul_out(h[l], s[l].slice(1, 3 * H, 4 * H), tc[l]);
    }
    at::cpu::addmm_out(head_out, head_b, P ? at::matmul(h[L - 1], *P) : h[L - 1], head_wT);
    logits = head_out;
  }
  return {ids, at::stack(h), at::stack(c), logits, recent};
}

// ---- the int8 read of a prompt ---------------------------------------------------------------------------------
// cells.LSTM.read in int8 for one stream from state (h0, c0) (L, 1, H) each: what torch.quantized_lstm computes
// (ATen's FullLayer over LSTMCell), operation for operation, the recurrent product through q8_linear. Layer 0's
// input products are rows of `table` (V, 4H), one per token of `ids` (T,): cells.LSTM.read_inputs of every token
// the input can take, each row what FBGEMM gives it inside a whole prompt, since `read`'s pinning columns fix the
// quantisation of every prompt to the same range. Above layer 0 a layer's inputs are the outputs below, multiplied
// as one matrix with their pins, -1 and 1. Returns the top layer's outputs (T, H) and the state after them.
// Additions and products are plain loops, which round as ATen's kernels do (one IEEE operation each); no tensor
// is made a character: at a dozen calls a character, dispatch and allocation were most of a read's time.
std::tuple<at::Tensor, at::Tensor, at::Tensor> read_tokens(
    at::Tensor table, at::Tensor ids, const c10::List<Packed>& W_ih, const std::vector<at::Tensor>& q8_hh, at::Tensor h0,
    at::Tensor c0) {
  at::NoGradGuard no_grad;
  const int64_t L = h0.size(0), T = ids.size(0), H = h0.size(2);
  const bool own = own_gates(H);
  auto id = ids.to(at::kLong).contiguous();
  const int64_t* idp = id.data_ptr<int64_t>();
  table = table.to(at::kFloat).contiguous();
  TORCH_CHECK(table.dim() == 2 && table.size(1) == 4 * H, "read_tokens: the table must be (V, 4H)");
  TORCH_CHECK(T == 0 || (id.min().item<int64_t>() >= 0 && id.max().item<int64_t>() < table.size(0)),
              "read_tokens: a token id outside the table's ", table.size(0), " rows");
  std::vector<at::Tensor> hs, cs;
  at::Tensor inp;
  for (int64_t l = 0; l < L; ++l) {
    at::Tensor xs;  // (T, 4H) the layer's input products, for l > 0
    if (l > 0) {
      auto pins = at::tensor({-1.0, 1.0}, at::kFloat).expand({T, 2});
      xs = W_ih.get(l)->apply_dynamic(at::cat({inp, pins}, 1), /*reduce_range=*/true).contiguous();
    }
    const float* xp = l > 0 ? xs.data_ptr<float>() : table.data_ptr<float>();
    auto out = at::empty({T, H}, at::kFloat);
    auto gates = at::empty({1, 4 * H}, at::kFloat), c = c0[l].clone(), tc = at::empty_like(c);
    auto chunked = gates.unsafe_chunk(4, 1);  // i, f, g, o
    float *z = gates.data_ptr<float>(), *cp = c.data_ptr<float>(), *tcp = tc.data_ptr<float>(), *op = out.data_ptr<float>();
    auto h_in = h0[l].contiguous();
    const float* h = h_in.data_ptr<float>();
    for (int64_t t = 0; t < T; ++t) {
      q8_into(h, H, &q8_hh[4 * l], z);
      const float* x = xp + (l > 0 ? t : idp[t]) * 4 * H;
      for (int64_t k = 0; k < 4 * H; ++k) z[k] += x[k];
#ifdef Q8_X86
      if (own) {
        sigmoid8(z, H), sigmoid8(z + H, H), vmsTanh(H, z + 2 * H, z + 2 * H, VML_MODE), sigmoid8(z + 3 * H, H);
      } else
#endif
      {
        at::cpu::sigmoid_(chunked[0]), at::cpu::sigmoid_(chunked[1]), at::cpu::tanh_(chunked[2]);
        at::cpu::sigmoid_(chunked[3]);
      }
      update_cell_plain(z, z + 2 * H, cp, H);  // C_t = f C_{t-1} + i g
      if (own) vmsTanh(H, cp, tcp, VML_MODE);  // h_t = o tanh(C_t)
      else at::cpu::tanh_out(tc, c);
      float* hp = op + t * H;  // each step's h is written where the layer's output keeps it
      for (int64_t k = 0; k < H; ++k) hp[k] = z[3 * H + k] * tcp[k];
      h = hp;
    }
    hs.push_back(T > 0 ? out[T - 1].unsqueeze(0) : h_in);
    cs.push_back(c);
    inp = out;
  }
  return {inp, at::stack(hs), at::stack(cs)};
}

TORCH_LIBRARY(storyloom, m) {
  m.def("write_tokens(Tensor table, __torch__.torch.classes.quantized.LinearPackedParamsBase W_hh, "
        "__torch__.torch.classes.quantized.LinearPackedParamsBase[] W_up, Tensor[] b_up, Tensor[] q8, Tensor? P, Tensor head_wT, "
        "Tensor head_b, Tensor h0, Tensor c0, Tensor logits, int n, Tensor banned, Tensor recent, float penalty, "
        "int window, float temperature, int top_k, float top_p, Generator? gen) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        &write_tokens);
  m.def("read_tokens(Tensor table, Tensor ids, __torch__.torch.classes.quantized.LinearPackedParamsBase[] W_ih, "
        "Tensor[] q8_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor, Tensor)",
        &read_tokens);
  m.def("q8_pack(__torch__.torch.classes.quantized.LinearPackedParamsBase W) -> Tensor[]", &q8_pack);
  m.def("q8_linear(Tensor x, Tensor[] m, int level) -> Tensor", &q8_linear);
  m.def("q8_level() -> int", &q8_level);
  m.def("own_gates(int H) -> bool", &own_gates);
  m.def("own_cell(int H) -> int", &own_cell);
}
