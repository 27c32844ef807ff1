// Pure C++ kernels of the fused recurrences (no torch dependency, so a standalone
// harness can include and profile them). Each *_block function runs the whole time loop
// for batch rows [r0, r1); recurrent.cpp hands blocks to threads and wraps them for torch.
// Layouts (all row-major, contiguous): gi (T, B, G*H), out (T, B, H), wt = W_hh^T (H, G*H),
// w = W_hh (G*H, H), mask (B, H) or nullptr, dw_part (G*H, H) / db_part (G*H) of this block.
// Each time step multiplies all of a block's rows at once (register tiles below).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnnlab {

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

// ---------------------------------------------------------------- register-tiled products
// The products of a time step are small (rows of one block x H x G*H), so they are written
// as register tiles: 4 rows x 3 vectors of accumulators (12: enough independent FMA chains
// to cover the FMA latency) stay in registers over the whole
// inner dimension, every weight vector loaded once serves 4 rows, and nothing is stored
// until the tile is done. Each element still sums its terms in index order, one FMA after
// another, as a plain loop would. GCC vector extensions: AVX2 on x86 with -march=native,
// NEON on ARM, plain code elsewhere.
template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int W = 4;
};
template <typename T> inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T> inline void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}
// One register with every lane a: a single vbroadcastss. (Not `V{} + a`: adding +0.0 is not
// an identity for -0.0, so the compiler must keep the add; not a loop over lanes either,
// which GCC builds through the stack.)
inline Vec<float>::type vbcast(float a) { return Vec<float>::type{a, a, a, a, a, a, a, a}; }
inline Vec<double>::type vbcast(double a) { return Vec<double>::type{a, a, a, a}; }

// c (R x NV*W) = bias (or 0) + x (R x K, row stride ldx) @ wt (K x NV*W, row stride ldw).
template <typename T, int R, int NV>
inline void product_tile(const T* __restrict__ x, int64_t ldx, const T* __restrict__ wt,
                         int64_t ldw, int64_t K, const T* __restrict__ bias,
                         T* __restrict__ c, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  V acc[R][NV];
  for (int v = 0; v < NV; ++v) {
    const V b = bias ? vload(bias + v * W) : V{};
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t k = 0; k < K; ++k) {
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = vload(wt + k * ldw + v * W);
    for (int r = 0; r < R; ++r) {
      const V a = vbcast(x[r * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vstore(c + r * ldc + v * W, acc[r][v]);
}

template <typename T, int R>
inline void product_rows(const T* x, int64_t ldx, const T* wt, int64_t ldw, int64_t K,
                         int64_t N, const T* bias, T* c, int64_t ldc) {
  constexpr int W = Vec<T>::W;
  int64_t n = 0;
  for (; n + 3 * W <= N; n += 3 * W)
    product_tile<T, R, 3>(x, ldx, wt + n, ldw, K, bias ? bias + n : nullptr, c + n, ldc);
  for (; n + 2 * W <= N; n += 2 * W)
    product_tile<T, R, 2>(x, ldx, wt + n, ldw, K, bias ? bias + n : nullptr, c + n, ldc);
  for (; n + W <= N; n += W)
    product_tile<T, R, 1>(x, ldx, wt + n, ldw, K, bias ? bias + n : nullptr, c + n, ldc);
  for (; n < N; ++n) {
    for (int r = 0; r < R; ++r) {
      T s = bias ? bias[n] : T(0);
      for (int64_t k = 0; k < K; ++k) s += x[r * ldx + k] * wt[k * ldw + n];
      c[r * ldc + n] = s;
    }
  }
}

// c (rows x N) = bias (or 0) + x (rows x K) @ wt (K x N), all row-major with the given
// row strides: the hidden-side products of a block's rows at one time step.
template <typename T>
inline void product(const T* x, int64_t ldx, int64_t rows, const T* wt, int64_t ldw,
                    int64_t K, int64_t N, const T* bias, T* c, int64_t ldc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    product_rows<T, 4>(x + r * ldx, ldx, wt, ldw, K, N, bias, c + r * ldc, ldc);
  const T* xr = x + r * ldx;
  T* cr = c + r * ldc;
  switch (rows - r) {
    case 3: product_rows<T, 3>(xr, ldx, wt, ldw, K, N, bias, cr, ldc); break;
    case 2: product_rows<T, 2>(xr, ldx, wt, ldw, K, N, bias, cr, ldc); break;
    case 1: product_rows<T, 1>(xr, ldx, wt, ldw, K, N, bias, cr, ldc); break;
    default: break;
  }
}

// dW (G x K) += sum over the n rows of dg_r (G) outer x_r (K); db += sum_r dg_r. A tile of
// 2 dW rows x 4 vectors stays in registers while the n rows stream past, so dW is loaded
// and stored once per n rows. Each element adds the rows in order.
template <typename T>
inline void outer_accum(const T* __restrict__ dg, const T* __restrict__ x, int n,
                        T* __restrict__ dw, T* __restrict__ db, int64_t G, int64_t K) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  for (int64_t j = 0; j < G; ++j) {
    T s = db[j];
    for (int r = 0; r < n; ++r) s += dg[r * G + j];
    db[j] = s;
  }
  int64_t j = 0;
  for (; j + 2 <= G; j += 2) {
    T* __restrict__ d0 = dw + j * K;
    T* __restrict__ d1 = d0 + K;
    int64_t k = 0;
    for (; k + 4 * W <= K; k += 4 * W) {
      V a0[4], a1[4];
      for (int v = 0; v < 4; ++v) {
        a0[v] = vload(d0 + k + v * W);
        a1[v] = vload(d1 + k + v * W);
      }
      for (int r = 0; r < n; ++r) {
        const V b0 = vbcast(dg[r * G + j]), b1 = vbcast(dg[r * G + j + 1]);
        for (int v = 0; v < 4; ++v) {
          const V xv = vload(x + r * K + k + v * W);
          a0[v] += b0 * xv;
          a1[v] += b1 * xv;
        }
      }
      for (int v = 0; v < 4; ++v) {
        vstore(d0 + k + v * W, a0[v]);
        vstore(d1 + k + v * W, a1[v]);
      }
    }
    for (; k + W <= K; k += W) {
      V a0 = vload(d0 + k), a1 = vload(d1 + k);
      for (int r = 0; r < n; ++r) {
        const V xv = vload(x + r * K + k);
        a0 += vbcast(dg[r * G + j]) * xv;
        a1 += vbcast(dg[r * G + j + 1]) * xv;
      }
      vstore(d0 + k, a0);
      vstore(d1 + k, a1);
    }
    for (; k < K; ++k) {
      T s0 = d0[k], s1 = d1[k];
      for (int r = 0; r < n; ++r) {
        s0 += dg[r * G + j] * x[r * K + k];
        s1 += dg[r * G + j + 1] * x[r * K + k];
      }
      d0[k] = s0;
      d1[k] = s1;
    }
  }
  for (; j < G; ++j)
    for (int64_t k = 0; k < K; ++k) {
      T s = dw[j * K + k];
      for (int r = 0; r < n; ++r) s += dg[r * G + j] * x[r * K + k];
      dw[j * K + k] = s;
    }
}

constexpr int kGroup = 16;

// Collects (dg, h_in) rows, in the order the loops visit them, and flushes them into
// dW/db kGroup rows at a time.
template <typename T>
struct GradGroup {
  int64_t G, K;
  std::vector<T> dg, x;
  int n = 0;
  GradGroup(int64_t G_, int64_t K_) : G(G_), K(K_), dg(kGroup * G_), x(kGroup * K_) {}
  void push(const T* dgr, const T* hp, const T* m, T* dw, T* db) {
    std::memcpy(dg.data() + n * G, dgr, G * sizeof(T));
    T* __restrict__ xr = x.data() + n * K;
    if (m) {
      for (int64_t k = 0; k < K; ++k) xr[k] = hp[k] * m[k];
    } else {
      std::memcpy(xr, hp, K * sizeof(T));
    }
    if (++n == kGroup) flush(dw, db);
  }
  void flush(T* dw, T* db) {
    if (n) outer_accum(dg.data(), x.data(), n, dw, db, G, K);
    n = 0;
  }
};

// The state of a block's rows across the time loop. Training keeps every step's h (and
// LSTM's c) in the caller's (T, B, .) tensors for the backward pass; inference keeps only
// the last two steps, here, and copies the final one out: no (T, B, .) stores at all.
template <typename T>
struct BlockState {
  T* seq;         // (T, B, W) or nullptr
  int64_t B, r0, n, W;
  std::vector<T> zero, ring;
  BlockState(T* seq_, int64_t B_, int64_t r0_, int64_t n_, int64_t W_)
      : seq(seq_), B(B_), r0(r0_), n(n_), W(W_), zero(n_ * W_, T(0)),
        ring(seq_ ? 0 : 2 * n_ * W_) {}
  const T* prev(int64_t t) const {  // rows at t - 1 (zeros before the first step)
    if (t == 0) return zero.data();
    return seq ? seq + ((t - 1) * B + r0) * W : ring.data() + ((t - 1) & 1) * n * W;
  }
  T* cur(int64_t t) { return seq ? seq + (t * B + r0) * W : ring.data() + (t & 1) * n * W; }
};

// h entering the hidden product: h_{t-1} * mask (copied into buf), or h_{t-1} itself.
template <typename T>
inline const T* masked_rows(const T* hp, const T* mask, int64_t r0, int64_t n, int64_t H,
                            T* buf) {
  if (!mask) return hp;
  const T* m = mask + r0 * H;
  for (int64_t i = 0; i < n * H; ++i) buf[i] = hp[i] * m[i];
  return buf;
}

// Inference: the final h rows into last (B, H).
template <typename T>
inline void copy_last(const BlockState<T>& h, int64_t steps, T* last) {
  if (last) std::memcpy(last + h.r0 * h.W, h.prev(steps), h.n * h.W * sizeof(T));
}

// LSTM and Elman RNN: dh_{t-1} (n x H) = (dg (n x G) @ W_hh) * mask, from the gate gradients
// of the block's rows at step t (dx: scratch, n x H).
template <typename T>
inline void hidden_grad(const T* dg, const T* w, const T* mask, int64_t r0, int64_t n,
                        int64_t H, int64_t G, T* dx, T* dh) {
  product(dg, G, n, w, H, G, H, static_cast<const T*>(nullptr), dx, H);
  if (mask) {
    const T* __restrict__ m = mask + r0 * H;
    for (int64_t i = 0; i < n * H; ++i) dh[i] = dx[i] * m[i];
  } else {
    std::memcpy(dh, dx, n * H * sizeof(T));
  }
}

// ================================================================= GRU
// gates per (t, b): [r, z, n, W_hn h + b_hn] (4H). Training: out (T, B, H) and gates
// (T, B, 4H) are kept. Inference: gates == nullptr; out (T, B, H) when the sequence is
// wanted, else nullptr and the last h goes to last (B, H).
template <typename T, int HC>
void gru_forward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                            const T* gi, const T* wt, const T* bhh, const T* mask, bool relu,
                            T* out, T* gates, T* last) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t G = 3 * H, n = r1 - r0;
  std::vector<T> hbuf(mask ? n * H : 0), ghs(n * G), scratch(gates ? 0 : n * 4 * H);
  BlockState<T> h(out, B, r0, n, H);
  for (int64_t t = 0; t < steps; ++t) {
    const T* hprev = h.prev(t);
    product(masked_rows(hprev, mask, r0, n, H, hbuf.data()), H, n, wt, G, H, G, bhh,
            ghs.data(), G);
    T* hcur = h.cur(t);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = r0 + i;
      const T* __restrict__ gh = ghs.data() + i * G;
      const T* __restrict__ g = gi + (t * B + b) * G;
      T* __restrict__ sv = gates ? gates + (t * B + b) * 4 * H : scratch.data() + i * 4 * H;
      for (int64_t j = 0; j < 2 * H; ++j) sv[j] = g[j] + gh[j];
      sigmoid_inplace(sv, 2 * H);
      for (int64_t j = 0; j < H; ++j) {
        sv[3 * H + j] = gh[2 * H + j];
        sv[2 * H + j] = g[2 * H + j] + sv[j] * gh[2 * H + j];
      }
      act_inplace(sv + 2 * H, H, relu);
      const T* __restrict__ hp = hprev + i * H;
      T* __restrict__ ho = hcur + i * H;
      for (int64_t j = 0; j < H; ++j) {
        const T nn = sv[2 * H + j];
        ho[j] = nn + sv[H + j] * (hp[j] - nn);
      }
    }
  }
  copy_last(h, steps, last);
}

// dh (n x H) of the block's rows picks up the output gradient of step t.
template <typename T>
inline void add_output_grad(const T* grad, int64_t t, int64_t steps, int64_t B, int64_t r0,
                            int64_t n, int64_t H, bool return_sequences, T* dh) {
  if (return_sequences) {
    const T* go = grad + (t * B + r0) * H;
    for (int64_t i = 0; i < n * H; ++i) dh[i] += go[i];
  } else if (t == steps - 1) {
    std::memcpy(dh, grad + r0 * H, n * H * sizeof(T));
  }
}

// grad: (T, B, H) if return_sequences else (B, H).
template <typename T, int HC>
void gru_backward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                             const T* grad, const T* w, const T* mask, const T* out,
                             const T* gates, bool relu, bool return_sequences, T* dgi, T* dwp,
                             T* dbp) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t G = 3 * H, n = r1 - r0;
  std::vector<T> zero(H, T(0)), dhin(n * H), dgh(n * G), dh(n * H, T(0));
  GradGroup<T> group(G, H);
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_output_grad(grad, t, steps, B, r0, n, H, return_sequences, dh.data());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = r0 + i;
      const T* __restrict__ dhr = dh.data() + i * H;
      const T* __restrict__ sv = gates + (t * B + b) * 4 * H;
      const T* __restrict__ hp = t ? out + ((t - 1) * B + b) * H : zero.data();
      T* __restrict__ dg = dgi + (t * B + b) * G;
      T* __restrict__ dgr = dgh.data() + i * G;  // the hidden side: dn scaled by r
      if (relu) {
        for (int64_t j = 0; j < H; ++j)
          dgr[2 * H + j] = sv[2 * H + j] > T(0) ? dhr[j] * (T(1) - sv[H + j]) : T(0);
      } else {
        for (int64_t j = 0; j < H; ++j)
          dgr[2 * H + j] =
              dhr[j] * (T(1) - sv[H + j]) * (T(1) - sv[2 * H + j] * sv[2 * H + j]);
      }
      for (int64_t j = 0; j < H; ++j) {
        const T r = sv[j], z = sv[H + j], nn = sv[2 * H + j], hn = sv[3 * H + j];
        const T dpre = dgr[2 * H + j];
        dgr[j] = dpre * hn * r * (T(1) - r);
        dgr[H + j] = dhr[j] * (hp[j] - nn) * z * (T(1) - z);
        dgr[2 * H + j] = dpre * r;
        dg[2 * H + j] = dpre;
      }
      std::memcpy(dg, dgr, 2 * H * sizeof(T));
      group.push(dgr, hp, mask ? mask + b * H : nullptr, dwp, dbp);
    }
    product(dgh.data(), G, n, w, H, G, H, static_cast<const T*>(nullptr), dhin.data(), H);
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict__ sv = gates + (t * B + r0 + i) * 4 * H;
      T* __restrict__ dhr = dh.data() + i * H;
      const T* __restrict__ dx = dhin.data() + i * H;
      if (mask) {
        const T* __restrict__ m = mask + (r0 + i) * H;
        for (int64_t j = 0; j < H; ++j) dhr[j] = dhr[j] * sv[H + j] + dx[j] * m[j];
      } else {
        for (int64_t j = 0; j < H; ++j) dhr[j] = dhr[j] * sv[H + j] + dx[j];
      }
    }
  }
  group.flush(dwp, dbp);
}

// ================================================================= LSTM
// gates per (t, b): [i, f, g, o] activated (4H); cs: [c, tanh(c)] (2H). Inference:
// gates == cs == nullptr (as for the GRU).
template <typename T, int HC>
void lstm_forward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                             const T* gi, const T* wt, const T* bhh, const T* mask, T* out,
                             T* gates, T* cs, T* last) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t G = 4 * H, n = r1 - r0;
  std::vector<T> hbuf(mask ? n * H : 0), ghs(n * G), scratch(gates ? 0 : n * G);
  BlockState<T> h(out, B, r0, n, H), c(cs, B, r0, n, 2 * H);
  for (int64_t t = 0; t < steps; ++t) {
    const T* hprev = h.prev(t);
    product(masked_rows(hprev, mask, r0, n, H, hbuf.data()), H, n, wt, G, H, G, bhh,
            ghs.data(), G);
    T* hcur = h.cur(t);
    const T* cprev = c.prev(t);
    T* ccur = c.cur(t);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = r0 + i;
      const T* __restrict__ cp = cprev + i * 2 * H;
      const T* __restrict__ gh = ghs.data() + i * G;
      const T* __restrict__ g = gi + (t * B + b) * G;
      T* __restrict__ sv = gates ? gates + (t * B + b) * G : scratch.data() + i * G;
      for (int64_t j = 0; j < G; ++j) sv[j] = g[j] + gh[j];
      sigmoid_inplace(sv, 2 * H);
      act_inplace(sv + 2 * H, H, false);
      sigmoid_inplace(sv + 3 * H, H);
      T* __restrict__ cc = ccur + i * 2 * H;
      for (int64_t j = 0; j < H; ++j) cc[j] = sv[H + j] * cp[j] + sv[j] * sv[2 * H + j];
      for (int64_t j = 0; j < H; ++j) cc[H + j] = cc[j];
      act_inplace(cc + H, H, false);
      T* __restrict__ ho = hcur + i * H;
      for (int64_t j = 0; j < H; ++j) ho[j] = sv[3 * H + j] * cc[H + j];
    }
  }
  copy_last(h, steps, last);
}

template <typename T, int HC>
void lstm_backward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                              const T* grad, const T* w, const T* mask, const T* out,
                              const T* gates, const T* cs, bool return_sequences, T* dgi,
                              T* dwp, T* dbp) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t G = 4 * H, n = r1 - r0;
  std::vector<T> zero(2 * H, T(0)), dhin(n * H), dh(n * H, T(0)), dc(n * H, T(0));
  GradGroup<T> group(G, H);
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_output_grad(grad, t, steps, B, r0, n, H, return_sequences, dh.data());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = r0 + i;
      const T* __restrict__ dhr = dh.data() + i * H;
      T* __restrict__ dcr = dc.data() + i * H;
      const T* __restrict__ sv = gates + (t * B + b) * G;
      const T* __restrict__ c = cs + (t * B + b) * 2 * H;
      const T* __restrict__ cp = t ? cs + ((t - 1) * B + b) * 2 * H : zero.data();
      const T* hp = t ? out + ((t - 1) * B + b) * H : zero.data();
      T* __restrict__ dg = dgi + (t * B + b) * G;
      for (int64_t j = 0; j < H; ++j) {
        const T ig = sv[j], f = sv[H + j], gg = sv[2 * H + j], o = sv[3 * H + j];
        const T tc = c[H + j];
        const T dcc = dcr[j] + dhr[j] * o * (T(1) - tc * tc);
        dg[j] = dcc * gg * ig * (T(1) - ig);
        dg[H + j] = dcc * cp[j] * f * (T(1) - f);
        dg[2 * H + j] = dcc * ig * (T(1) - gg * gg);
        dg[3 * H + j] = dhr[j] * tc * o * (T(1) - o);
        dcr[j] = dcc * f;
      }
      group.push(dg, hp, mask ? mask + b * H : nullptr, dwp, dbp);
    }
    hidden_grad(dgi + (t * B + r0) * G, w, mask, r0, n, H, G, dhin.data(), dh.data());
  }
  group.flush(dwp, dbp);
}

// ================================================================= Elman RNN
template <typename T, int HC>
void rnn_forward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                            const T* gi, const T* wt, const T* bhh, const T* mask, bool relu,
                            T* out, T* last) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t n = r1 - r0;
  std::vector<T> hbuf(mask ? n * H : 0);
  BlockState<T> h(out, B, r0, n, H);
  for (int64_t t = 0; t < steps; ++t) {
    const T* hin = masked_rows(h.prev(t), mask, r0, n, H, hbuf.data());
    T* __restrict__ ho = h.cur(t);
    product(hin, H, n, wt, H, H, H, bhh, ho, H);
    const T* __restrict__ g = gi + (t * B + r0) * H;
    for (int64_t i = 0; i < n * H; ++i) ho[i] += g[i];
    act_inplace(ho, n * H, relu);
  }
  copy_last(h, steps, last);
}

template <typename T, int HC>
void rnn_backward_block_impl(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H_,
                             const T* grad, const T* w, const T* mask, const T* out, bool relu,
                             bool return_sequences, T* dgi, T* dwp, T* dbp) {
  const int64_t H = HC > 0 ? HC : H_;  // compile-time for the common sizes
  const int64_t n = r1 - r0;
  std::vector<T> zero(H, T(0)), dhin(n * H), dh(n * H, T(0));
  GradGroup<T> group(H, H);
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_output_grad(grad, t, steps, B, r0, n, H, return_sequences, dh.data());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = r0 + i;
      const T* __restrict__ dhr = dh.data() + i * H;
      const T* __restrict__ h = out + (t * B + b) * H;
      const T* hp = t ? out + ((t - 1) * B + b) * H : zero.data();
      T* __restrict__ dg = dgi + (t * B + b) * H;
      if (relu) {
        for (int64_t j = 0; j < H; ++j) dg[j] = h[j] > T(0) ? dhr[j] : T(0);
      } else {
        for (int64_t j = 0; j < H; ++j) dg[j] = dhr[j] * (T(1) - h[j] * h[j]);
      }
      group.push(dg, hp, mask ? mask + b * H : nullptr, dwp, dbp);
    }
    hidden_grad(dgi + (t * B + r0) * H, w, mask, r0, n, H, H, dhin.data(), dh.data());
  }
  group.flush(dwp, dbp);
}

// ================================================================= dispatch on H
// The hidden sizes the lecture uses get kernels with a compile-time H: fixed trip counts let
// the compiler unroll the short loops (no vector prologues/epilogues or alias checks).
#define RNNLAB_DISPATCH_H(H, CALL)                  \
  switch (H) {                                       \
    case 16: { constexpr int HC = 16; CALL; break; }  \
    case 32: { constexpr int HC = 32; CALL; break; }  \
    case 64: { constexpr int HC = 64; CALL; break; }  \
    default: { constexpr int HC = 0; CALL; break; }   \
  }

template <typename T>
void gru_forward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H, const T* gi,
                       const T* wt, const T* bhh, const T* mask, bool relu, T* out, T* gates,
                       T* last = nullptr) {
  RNNLAB_DISPATCH_H(H, (gru_forward_block_impl<T, HC>(r0, r1, steps, B, H, gi, wt, bhh, mask,
                                                         relu, out, gates, last)))
}
template <typename T>
void gru_backward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H,
                        const T* grad, const T* w, const T* mask, const T* out, const T* gates,
                        bool relu, bool return_sequences, T* dgi, T* dwp, T* dbp) {
  RNNLAB_DISPATCH_H(H, (gru_backward_block_impl<T, HC>(r0, r1, steps, B, H, grad, w, mask, out,
                                                          gates, relu, return_sequences, dgi,
                                                          dwp, dbp)))
}
template <typename T>
void lstm_forward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H,
                        const T* gi, const T* wt, const T* bhh, const T* mask, T* out, T* gates,
                        T* cs, T* last = nullptr) {
  RNNLAB_DISPATCH_H(H, (lstm_forward_block_impl<T, HC>(r0, r1, steps, B, H, gi, wt, bhh, mask,
                                                          out, gates, cs, last)))
}
template <typename T>
void lstm_backward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H,
                         const T* grad, const T* w, const T* mask, const T* out,
                         const T* gates, const T* cs, bool return_sequences, T* dgi, T* dwp,
                         T* dbp) {
  RNNLAB_DISPATCH_H(H, (lstm_backward_block_impl<T, HC>(r0, r1, steps, B, H, grad, w, mask, out,
                                                           gates, cs, return_sequences, dgi,
                                                           dwp, dbp)))
}
template <typename T>
void rnn_forward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H, const T* gi,
                       const T* wt, const T* bhh, const T* mask, bool relu, T* out,
                       T* last = nullptr) {
  RNNLAB_DISPATCH_H(H, (rnn_forward_block_impl<T, HC>(r0, r1, steps, B, H, gi, wt, bhh, mask,
                                                         relu, out, last)))
}
template <typename T>
void rnn_backward_block(int64_t r0, int64_t r1, int64_t steps, int64_t B, int64_t H,
                        const T* grad, const T* w, const T* mask, const T* out, bool relu,
                        bool return_sequences, T* dgi, T* dwp, T* dbp) {
  RNNLAB_DISPATCH_H(H, (rnn_backward_block_impl<T, HC>(r0, r1, steps, B, H, grad, w, mask, out,
                                                          relu, return_sequences, dgi, dwp,
                                                          dbp)))
}
#undef RNNLAB_DISPATCH_H

}  // namespace rnnlab
