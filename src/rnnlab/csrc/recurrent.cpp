// Fused CPU recurrences (GRU, LSTM, Elman RNN): forward and backward each run the whole
// time loop here, so there is no framework dispatch per time step.
//
// Batch rows are independent in a recurrence, so the batch is cut ONCE into a fixed
// number of blocks (a function of B only, never of the thread count) and at::parallel_for
// hands blocks to threads; every block runs the whole time loop for its rows. No barrier
// per step, and because a block's arithmetic does not depend on which thread runs it, the
// results are bit-identical for any torch.get_num_threads(). dW_hh and db_hh are summed
// per block inside the loop and the block partials are added in block order afterwards.
//
// Gate layouts are PyTorch's: GRU (r, z, n) "reset after", LSTM (i, f, g, o).
// Inputs: gi (T, B, G*H) time-major input projections including bias_ih, w_hh (G*H, H),
// b_hh (G*H,), mask_h (B, H) or None (recurrent dropout mask, applied to h before W_hh).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kMaxBlocks = 32;

// ---------------------------------------------------------------- activations
// float: a branch-free Cephes-style exp the compiler vectorizes (glibc's expf/tanhf are
// scalar calls without -ffast-math); max relative error ~2 ulp. double: libm (gradcheck).
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  float fx = x * 1.44269504088896341f + 12582912.f;  // round to nearest integer
  fx -= 12582912.f;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

template <typename T> inline T sigmoid_(T x);
template <> inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
template <> inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T> inline T tanh_(T x);
template <> inline float tanh_(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
template <> inline double tanh_(double x) { return std::tanh(x); }

template <typename T> inline void sigmoid_inplace(T* __restrict__ p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = sigmoid_(p[j]);
}
template <typename T> inline void act_inplace(T* __restrict__ p, int64_t n, bool relu) {
  if (relu) {
    for (int64_t j = 0; j < n; ++j) p[j] = p[j] > T(0) ? p[j] : T(0);
  } else {
    for (int64_t j = 0; j < n; ++j) p[j] = tanh_(p[j]);
  }
}

// ---------------------------------------------------------------- small products
// c (G) = bias + x (K) @ wt (K x G), wt row-major: the inner loop runs over G, contiguous.
template <typename T>
inline void matvec_bias(const T* __restrict__ x, const T* __restrict__ wt,
                        const T* __restrict__ bias, T* __restrict__ c, int64_t K, int64_t G) {
  for (int64_t j = 0; j < G; ++j) c[j] = bias[j];
  for (int64_t k = 0; k < K; ++k) {
    const T a = x[k];
    const T* __restrict__ w = wt + k * G;
    for (int64_t j = 0; j < G; ++j) c[j] += a * w[j];
  }
}

// Backward of gh = b + x @ W^T for one row: dW (G x K) += dg (G) outer x (K),
// db += dg, dx (K) = dg @ W (W row-major G x K).
template <typename T>
inline void matvec_backward(const T* __restrict__ dg, const T* __restrict__ x,
                            const T* __restrict__ w, T* __restrict__ dw, T* __restrict__ db,
                            T* __restrict__ dx, int64_t K, int64_t G) {
  for (int64_t j = 0; j < G; ++j) db[j] += dg[j];
  for (int64_t k = 0; k < K; ++k) dx[k] = T(0);
  for (int64_t j = 0; j < G; ++j) {
    const T a = dg[j];
    const T* __restrict__ wr = w + j * K;
    T* __restrict__ dwr = dw + j * K;
    for (int64_t k = 0; k < K; ++k) {
      dwr[k] += a * x[k];
      dx[k] += a * wr[k];
    }
  }
}

// ---------------------------------------------------------------- blocking
struct Blocks {
  int64_t n, batch;
  int64_t begin(int64_t i) const { return batch * i / n; }
  int64_t end(int64_t i) const { return batch * (i + 1) / n; }
};

inline Blocks make_blocks(int64_t batch) { return {std::max<int64_t>(1, std::min(batch, kMaxBlocks)), batch}; }

// Blocks are handed out dynamically (an atomic counter), so when another process holds a
// core the thread sharing it simply takes fewer blocks instead of stalling the others.
// Which thread runs a block never changes its arithmetic, so results stay bit-identical.
template <typename F>
inline void for_blocks(const Blocks& blocks, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks.n));
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < blocks.n; i = next.fetch_add(1))
      f(i, blocks.begin(i), blocks.end(i));
  });
}

// Adds the per-block partials (nblk, n) in block order into out (n).
template <typename T>
inline void reduce_blocks(const T* part, int64_t nblk, int64_t n, T* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = part[j];
  for (int64_t i = 1; i < nblk; ++i)
    for (int64_t j = 0; j < n; ++j) out[j] += part[i * n + j];
}

void check_inputs(const at::Tensor& gi, const at::Tensor& w_hh, const at::Tensor& b_hh,
                  const std::optional<at::Tensor>& mask_h, int64_t gates) {
  TORCH_CHECK(gi.device().is_cpu() && w_hh.device().is_cpu() && b_hh.device().is_cpu(),
              "fused recurrences run on CPU tensors only");
  TORCH_CHECK(gi.dim() == 3, "gi must be (T, B, G*H)");
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * H, "w_hh must be (", gates, "*H, H)");
  TORCH_CHECK(gi.size(2) == gates * H, "gi last dim must be ", gates, "*H = ", gates * H);
  TORCH_CHECK(b_hh.numel() == gates * H, "b_hh must have ", gates, "*H elements");
  TORCH_CHECK(gi.scalar_type() == w_hh.scalar_type() && gi.scalar_type() == b_hh.scalar_type(),
              "gi, w_hh and b_hh must share a dtype");
  TORCH_CHECK(gi.size(0) > 0, "need at least one time step");
  if (mask_h.has_value() && mask_h->defined()) {
    TORCH_CHECK(mask_h->dim() == 2 && mask_h->size(0) == gi.size(1) && mask_h->size(1) == H,
                "mask_h must be (B, H)");
    TORCH_CHECK(mask_h->scalar_type() == gi.scalar_type(), "mask_h must have gi's dtype");
    TORCH_CHECK(mask_h->device().is_cpu(), "mask_h must be a CPU tensor");
  }
}

std::optional<at::Tensor> contiguous_mask(const std::optional<at::Tensor>& m) {
  if (m.has_value() && m->defined()) return m->contiguous();
  return std::nullopt;
}

// Per-row h entering the matmul: h_prev * mask (or h_prev).
template <typename T>
inline const T* masked(const T* hp, const T* m, T* buf, int64_t H) {
  if (!m) return hp;
  for (int64_t k = 0; k < H; ++k) buf[k] = hp[k] * m[k];
  return buf;
}

// ================================================================= GRU
// saved gates per (t, b): [r, z, n, W_hn h + b_hn] (4H)
std::vector<at::Tensor> gru_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                    const at::Tensor& b_hh_,
                                    const std::optional<at::Tensor>& mask_h_, bool relu) {
  check_inputs(gi_, w_hh_, b_hh_, mask_h_, 3);
  auto gi = gi_.contiguous();
  auto wt = w_hh_.t().contiguous();  // (H, 3H)
  auto b_hh = b_hh_.contiguous();
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = gi.size(0), B = gi.size(1), H = w_hh_.size(1), G = 3 * H;
  auto out = at::empty({T, B, H}, gi.options());
  auto gates = at::empty({T, B, 4 * H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward", [&] {
    const scalar_t* pgi = gi.data_ptr<scalar_t>();
    const scalar_t* pwt = wt.data_ptr<scalar_t>();
    const scalar_t* pb = b_hh.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    scalar_t* pout = out.data_ptr<scalar_t>();
    scalar_t* psv = gates.data_ptr<scalar_t>();
    for_blocks(make_blocks(B), [&](int64_t, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(H, scalar_t(0)), hbuf(H), gh(G);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = r0; b < r1; ++b) {
          const scalar_t* hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          const scalar_t* hin = masked(hp, pm ? pm + b * H : nullptr, hbuf.data(), H);
          matvec_bias(hin, pwt, pb, gh.data(), H, G);
          const scalar_t* __restrict__ g = pgi + (t * B + b) * G;
          scalar_t* __restrict__ sv = psv + (t * B + b) * 4 * H;
          for (int64_t j = 0; j < 2 * H; ++j) sv[j] = g[j] + gh[j];
          sigmoid_inplace(sv, 2 * H);
          for (int64_t j = 0; j < H; ++j) {
            sv[3 * H + j] = gh[2 * H + j];
            sv[2 * H + j] = g[2 * H + j] + sv[j] * gh[2 * H + j];
          }
          act_inplace(sv + 2 * H, H, relu);
          scalar_t* __restrict__ ho = pout + (t * B + b) * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t n = sv[2 * H + j];
            ho[j] = n + sv[H + j] * (hp[j] - n);
          }
        }
      }
    });
  });
  return {out, gates};
}

std::vector<at::Tensor> gru_backward(const at::Tensor& grad_, const at::Tensor& w_hh_,
                                     const std::optional<at::Tensor>& mask_h_,
                                     const at::Tensor& out, const at::Tensor& gates,
                                     bool relu, bool return_sequences) {
  auto grad = grad_.contiguous();
  auto w = w_hh_.contiguous();  // (3H, H)
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2), G = 3 * H;
  auto dgi = at::empty({T, B, G}, out.options());
  const Blocks blocks = make_blocks(B);
  auto dw_part = at::zeros({blocks.n, G, H}, out.options());
  auto db_part = at::zeros({blocks.n, G}, out.options());
  auto dw = at::empty({G, H}, out.options());
  auto db = at::empty({G}, out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gru_backward", [&] {
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    const scalar_t* pw = w.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pout = out.data_ptr<scalar_t>();
    const scalar_t* psv = gates.data_ptr<scalar_t>();
    scalar_t* pdgi = dgi.data_ptr<scalar_t>();
    scalar_t* pdwp = dw_part.data_ptr<scalar_t>();
    scalar_t* pdbp = db_part.data_ptr<scalar_t>();
    for_blocks(blocks, [&](int64_t blk, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(H, scalar_t(0)), hbuf(H), dgh(G), dhin(H);
      std::vector<scalar_t> dh_all((r1 - r0) * H, scalar_t(0));
      scalar_t* dwp = pdwp + blk * G * H;
      scalar_t* dbp = pdbp + blk * G;
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = r0; b < r1; ++b) {
          scalar_t* __restrict__ dh = dh_all.data() + (b - r0) * H;
          if (return_sequences) {
            const scalar_t* go = pg + (t * B + b) * H;
            for (int64_t j = 0; j < H; ++j) dh[j] += go[j];
          } else if (t == T - 1) {
            std::memcpy(dh, pg + b * H, H * sizeof(scalar_t));
          }
          const scalar_t* __restrict__ sv = psv + (t * B + b) * 4 * H;
          const scalar_t* __restrict__ hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          scalar_t* __restrict__ dg = pdgi + (t * B + b) * G;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t r = sv[j], z = sv[H + j], n = sv[2 * H + j], hn = sv[3 * H + j];
            const scalar_t dn = dh[j] * (scalar_t(1) - z);
            const scalar_t dpre = relu ? (n > scalar_t(0) ? dn : scalar_t(0))
                                       : dn * (scalar_t(1) - n * n);
            const scalar_t dr = dpre * hn * r * (scalar_t(1) - r);
            const scalar_t dz = dh[j] * (hp[j] - n) * z * (scalar_t(1) - z);
            dg[j] = dr;
            dg[H + j] = dz;
            dg[2 * H + j] = dpre;
            dgh[j] = dr;
            dgh[H + j] = dz;
            dgh[2 * H + j] = dpre * r;
          }
          const scalar_t* m = pm ? pm + b * H : nullptr;
          const scalar_t* hin = masked(hp, m, hbuf.data(), H);
          matvec_backward(dgh.data(), hin, pw, dwp, dbp, dhin.data(), H, G);
          if (m) {
            for (int64_t j = 0; j < H; ++j) dh[j] = dh[j] * sv[H + j] + dhin[j] * m[j];
          } else {
            for (int64_t j = 0; j < H; ++j) dh[j] = dh[j] * sv[H + j] + dhin[j];
          }
        }
      }
    });
    reduce_blocks(pdwp, blocks.n, G * H, dw.data_ptr<scalar_t>());
    reduce_blocks(pdbp, blocks.n, G, db.data_ptr<scalar_t>());
  });
  return {dgi, dw, db};
}

// ================================================================= LSTM
// saved per (t, b): gates [i, f, g, o] activated (4H), c (H), tanh(c) (H); out h (H).
std::vector<at::Tensor> lstm_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                     const at::Tensor& b_hh_,
                                     const std::optional<at::Tensor>& mask_h_) {
  check_inputs(gi_, w_hh_, b_hh_, mask_h_, 4);
  auto gi = gi_.contiguous();
  auto wt = w_hh_.t().contiguous();  // (H, 4H)
  auto b_hh = b_hh_.contiguous();
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = gi.size(0), B = gi.size(1), H = w_hh_.size(1), G = 4 * H;
  auto out = at::empty({T, B, H}, gi.options());
  auto gates = at::empty({T, B, G}, gi.options());
  auto cs = at::empty({T, B, 2 * H}, gi.options());  // [c, tanh(c)]
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "lstm_forward", [&] {
    const scalar_t* pgi = gi.data_ptr<scalar_t>();
    const scalar_t* pwt = wt.data_ptr<scalar_t>();
    const scalar_t* pb = b_hh.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    scalar_t* pout = out.data_ptr<scalar_t>();
    scalar_t* psv = gates.data_ptr<scalar_t>();
    scalar_t* pcs = cs.data_ptr<scalar_t>();
    for_blocks(make_blocks(B), [&](int64_t, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(2 * H, scalar_t(0)), hbuf(H), gh(G);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = r0; b < r1; ++b) {
          const scalar_t* hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          const scalar_t* __restrict__ cp = t ? pcs + ((t - 1) * B + b) * 2 * H : zero.data();
          const scalar_t* hin = masked(hp, pm ? pm + b * H : nullptr, hbuf.data(), H);
          matvec_bias(hin, pwt, pb, gh.data(), H, G);
          const scalar_t* __restrict__ g = pgi + (t * B + b) * G;
          scalar_t* __restrict__ sv = psv + (t * B + b) * G;
          for (int64_t j = 0; j < G; ++j) sv[j] = g[j] + gh[j];
          sigmoid_inplace(sv, 2 * H);
          act_inplace(sv + 2 * H, H, false);
          sigmoid_inplace(sv + 3 * H, H);
          scalar_t* __restrict__ c = pcs + (t * B + b) * 2 * H;
          for (int64_t j = 0; j < H; ++j) c[j] = sv[H + j] * cp[j] + sv[j] * sv[2 * H + j];
          for (int64_t j = 0; j < H; ++j) c[H + j] = c[j];
          act_inplace(c + H, H, false);
          scalar_t* __restrict__ ho = pout + (t * B + b) * H;
          for (int64_t j = 0; j < H; ++j) ho[j] = sv[3 * H + j] * c[H + j];
        }
      }
    });
  });
  return {out, gates, cs};
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad_, const at::Tensor& w_hh_,
                                      const std::optional<at::Tensor>& mask_h_,
                                      const at::Tensor& out, const at::Tensor& gates,
                                      const at::Tensor& cs, bool return_sequences) {
  auto grad = grad_.contiguous();
  auto w = w_hh_.contiguous();  // (4H, H)
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2), G = 4 * H;
  auto dgi = at::empty({T, B, G}, out.options());
  const Blocks blocks = make_blocks(B);
  auto dw_part = at::zeros({blocks.n, G, H}, out.options());
  auto db_part = at::zeros({blocks.n, G}, out.options());
  auto dw = at::empty({G, H}, out.options());
  auto db = at::empty({G}, out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lstm_backward", [&] {
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    const scalar_t* pw = w.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pout = out.data_ptr<scalar_t>();
    const scalar_t* psv = gates.data_ptr<scalar_t>();
    const scalar_t* pcs = cs.data_ptr<scalar_t>();
    scalar_t* pdgi = dgi.data_ptr<scalar_t>();
    scalar_t* pdwp = dw_part.data_ptr<scalar_t>();
    scalar_t* pdbp = db_part.data_ptr<scalar_t>();
    for_blocks(blocks, [&](int64_t blk, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(2 * H, scalar_t(0)), hbuf(H), dhin(H);
      std::vector<scalar_t> dh_all((r1 - r0) * H, scalar_t(0)), dc_all((r1 - r0) * H, scalar_t(0));
      scalar_t* dwp = pdwp + blk * G * H;
      scalar_t* dbp = pdbp + blk * G;
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = r0; b < r1; ++b) {
          scalar_t* __restrict__ dh = dh_all.data() + (b - r0) * H;
          scalar_t* __restrict__ dc = dc_all.data() + (b - r0) * H;
          if (return_sequences) {
            const scalar_t* go = pg + (t * B + b) * H;
            for (int64_t j = 0; j < H; ++j) dh[j] += go[j];
          } else if (t == T - 1) {
            std::memcpy(dh, pg + b * H, H * sizeof(scalar_t));
          }
          const scalar_t* __restrict__ sv = psv + (t * B + b) * G;
          const scalar_t* __restrict__ c = pcs + (t * B + b) * 2 * H;
          const scalar_t* __restrict__ cp = t ? pcs + ((t - 1) * B + b) * 2 * H : zero.data();
          const scalar_t* hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          scalar_t* __restrict__ dg = pdgi + (t * B + b) * G;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t i = sv[j], f = sv[H + j], gg = sv[2 * H + j], o = sv[3 * H + j];
            const scalar_t tc = c[H + j];
            const scalar_t dcc = dc[j] + dh[j] * o * (scalar_t(1) - tc * tc);
            dg[j] = dcc * gg * i * (scalar_t(1) - i);
            dg[H + j] = dcc * cp[j] * f * (scalar_t(1) - f);
            dg[2 * H + j] = dcc * i * (scalar_t(1) - gg * gg);
            dg[3 * H + j] = dh[j] * tc * o * (scalar_t(1) - o);
            dc[j] = dcc * f;
          }
          const scalar_t* m = pm ? pm + b * H : nullptr;
          const scalar_t* hin = masked(hp, m, hbuf.data(), H);
          matvec_backward(dg, hin, pw, dwp, dbp, dhin.data(), H, G);
          if (m) {
            for (int64_t j = 0; j < H; ++j) dh[j] = dhin[j] * m[j];
          } else {
            for (int64_t j = 0; j < H; ++j) dh[j] = dhin[j];
          }
        }
      }
    });
    reduce_blocks(pdwp, blocks.n, G * H, dw.data_ptr<scalar_t>());
    reduce_blocks(pdbp, blocks.n, G, db.data_ptr<scalar_t>());
  });
  return {dgi, dw, db};
}

// ================================================================= Elman RNN
std::vector<at::Tensor> rnn_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                    const at::Tensor& b_hh_,
                                    const std::optional<at::Tensor>& mask_h_, bool relu) {
  check_inputs(gi_, w_hh_, b_hh_, mask_h_, 1);
  auto gi = gi_.contiguous();
  auto wt = w_hh_.t().contiguous();  // (H, H)
  auto b_hh = b_hh_.contiguous();
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = gi.size(0), B = gi.size(1), H = w_hh_.size(1);
  auto out = at::empty({T, B, H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnn_forward", [&] {
    const scalar_t* pgi = gi.data_ptr<scalar_t>();
    const scalar_t* pwt = wt.data_ptr<scalar_t>();
    const scalar_t* pb = b_hh.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    scalar_t* pout = out.data_ptr<scalar_t>();
    for_blocks(make_blocks(B), [&](int64_t, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(H, scalar_t(0)), hbuf(H), gh(H);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = r0; b < r1; ++b) {
          const scalar_t* hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          const scalar_t* hin = masked(hp, pm ? pm + b * H : nullptr, hbuf.data(), H);
          matvec_bias(hin, pwt, pb, gh.data(), H, H);
          const scalar_t* __restrict__ g = pgi + (t * B + b) * H;
          scalar_t* __restrict__ ho = pout + (t * B + b) * H;
          for (int64_t j = 0; j < H; ++j) ho[j] = g[j] + gh[j];
          act_inplace(ho, H, relu);
        }
      }
    });
  });
  return {out};
}

std::vector<at::Tensor> rnn_backward(const at::Tensor& grad_, const at::Tensor& w_hh_,
                                     const std::optional<at::Tensor>& mask_h_,
                                     const at::Tensor& out, bool relu, bool return_sequences) {
  auto grad = grad_.contiguous();
  auto w = w_hh_.contiguous();  // (H, H)
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2), G = H;
  auto dgi = at::empty({T, B, G}, out.options());
  const Blocks blocks = make_blocks(B);
  auto dw_part = at::zeros({blocks.n, G, H}, out.options());
  auto db_part = at::zeros({blocks.n, G}, out.options());
  auto dw = at::empty({G, H}, out.options());
  auto db = at::empty({G}, out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    const scalar_t* pw = w.data_ptr<scalar_t>();
    const scalar_t* pm = mask_h ? mask_h->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pout = out.data_ptr<scalar_t>();
    scalar_t* pdgi = dgi.data_ptr<scalar_t>();
    scalar_t* pdwp = dw_part.data_ptr<scalar_t>();
    scalar_t* pdbp = db_part.data_ptr<scalar_t>();
    for_blocks(blocks, [&](int64_t blk, int64_t r0, int64_t r1) {
      std::vector<scalar_t> zero(H, scalar_t(0)), hbuf(H), dhin(H);
      std::vector<scalar_t> dh_all((r1 - r0) * H, scalar_t(0));
      scalar_t* dwp = pdwp + blk * G * H;
      scalar_t* dbp = pdbp + blk * G;
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = r0; b < r1; ++b) {
          scalar_t* __restrict__ dh = dh_all.data() + (b - r0) * H;
          if (return_sequences) {
            const scalar_t* go = pg + (t * B + b) * H;
            for (int64_t j = 0; j < H; ++j) dh[j] += go[j];
          } else if (t == T - 1) {
            std::memcpy(dh, pg + b * H, H * sizeof(scalar_t));
          }
          const scalar_t* __restrict__ h = pout + (t * B + b) * H;
          const scalar_t* hp = t ? pout + ((t - 1) * B + b) * H : zero.data();
          scalar_t* __restrict__ dg = pdgi + (t * B + b) * G;
          if (relu) {
            for (int64_t j = 0; j < H; ++j) dg[j] = h[j] > scalar_t(0) ? dh[j] : scalar_t(0);
          } else {
            for (int64_t j = 0; j < H; ++j) dg[j] = dh[j] * (scalar_t(1) - h[j] * h[j]);
          }
          const scalar_t* m = pm ? pm + b * H : nullptr;
          const scalar_t* hin = masked(hp, m, hbuf.data(), H);
          matvec_backward(dg, hin, pw, dwp, dbp, dhin.data(), H, G);
          if (m) {
            for (int64_t j = 0; j < H; ++j) dh[j] = dhin[j] * m[j];
          } else {
            for (int64_t j = 0; j < H; ++j) dh[j] = dhin[j];
          }
        }
      }
    });
    reduce_blocks(pdwp, blocks.n, G * H, dw.data_ptr<scalar_t>());
    reduce_blocks(pdbp, blocks.n, G, db.data_ptr<scalar_t>());
  });
  return {dgi, dw, db};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "GRU recurrence forward -> (out (T,B,H), gates (T,B,4H))");
  m.def("gru_backward", &gru_backward, "GRU recurrence backward -> (dgi, dw_hh, db_hh)");
  m.def("lstm_forward", &lstm_forward, "LSTM recurrence forward -> (out, gates, [c, tanh c])");
  m.def("lstm_backward", &lstm_backward, "LSTM recurrence backward -> (dgi, dw_hh, db_hh)");
  m.def("rnn_forward", &rnn_forward, "Elman RNN recurrence forward -> (out,)");
  m.def("rnn_backward", &rnn_backward, "Elman RNN recurrence backward -> (dgi, dw_hh, db_hh)");
}
