// The writing loop for one stream, in C++: native.py compiles it once and decoding.sample calls it.
//
// Call for call the ATen operations of the Python loop at batch 1 with int8 weights (every filter of
// sampling.shape_logits, sampling.draw for one row, cells.LSTM.step over cells.Matrix, LanguageModel.step's
// head), on the same generator: so it writes the same text for a seed, and tests/test_native.py checks that it
// does. It exists because in Python the calls between these operations took most of each character's time.

#include <ATen/ATen.h>
#include <ATen/native/quantized/PackedParams.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

using Packed = c10::intrusive_ptr<LinearPackedParamsBase>;

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
  std::vector<at::Tensor> h, c;
  for (int64_t l = 0; l < L; ++l) {
    h.push_back(h0[l]);
    c.push_back(c0[l]);
  }
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
    at::Tensor inp;
    for (int64_t l = 0; l < L; ++l) {
      auto z = l == 0 ? W_hh->apply_dynamic(h[0], /*reduce_range=*/true).add_(table.index_select(0, id))
                      : W_up.get(l - 1)->apply_dynamic(at::cat({inp, h[l]}, 1), true).add_(b_up[l - 1]);
      auto s = at::sigmoid(z);
      auto g = at::tanh(z.slice(1, 2 * H, 3 * H));
      c[l] = at::addcmul(s.slice(1, H, 2 * H) * c[l], s.slice(1, 0, H), g);
      h[l] = inp = s.slice(1, 3 * H, 4 * H) * at::tanh(c[l]);
    }
    logits = at::addmm(head_b, P ? at::matmul(inp, *P) : inp, head_wT);
  }
  return {ids, at::stack(h), at::stack(c), logits, recent};
}

TORCH_LIBRARY(storyloom, m) {
  m.def("write_tokens(Tensor table, __torch__.torch.classes.quantized.LinearPackedParamsBase W_hh, "
        "__torch__.torch.classes.quantized.LinearPackedParamsBase[] W_up, Tensor[] b_up, Tensor? P, Tensor head_wT, "
        "Tensor head_b, Tensor h0, Tensor c0, Tensor logits, int n, Tensor banned, Tensor recent, float penalty, "
        "int window, float temperature, int top_k, float top_p, Generator? gen) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        &write_tokens);
}
