// The recurrences with the batch across the SIMD lanes. recurrent.cpp includes this file
// once per instruction set, inside a namespace that defines kLanes (sequences per vector)
// and kRegs (vector registers), under a `#pragma GCC target` for that set; so it has no
// includes of its own and every function here is compiled for that set.
//
// Layouts ("feature-major": features, then time, then the batch, so a vector of kLanes
// consecutive floats holds one feature of kLanes sequences):
//   gi (G, T, Bp), or on the table route a projected embedding table (V, G) read in
//   token order (TableSteps); out, grad (H, T, Bp), or grad (H, Bp) for the last step only;
//   dgi block-major (blocks, T, G, kLanes): each block writes one contiguous stream (the
//   strided (G, T, Bp) stores cost half the backward's time);
//   mask (H, Bp) or nullptr; w = W_hh (G, H) and wt = W_hh^T (H, G), row-major;
//   a block's saved gates (T, 4H, kLanes) and LSTM's cells (T, 2H, kLanes), contiguous.
// Bp is a multiple of kLanes; block b0 runs sequences b0 .. b0 + kLanes - 1.
//
// The products of a time step multiply the weights, one scalar at a time broadcast from
// L1, by the state vectors: out[j] += W[j][k] * h[k] for J rows j at once (J * gates
// accumulators stay in registers over k). Every lane is one sequence, so nothing is ever
// summed across lanes in the loop, and the gate maths, the dropout mask and the state
// update run on the accumulators before anything is stored. The weight gradient is one
// product per block after every kChunk steps of the backward sweep, accumulated per lane
// and summed across lanes once at the end.

template <typename T>
struct LaneType {
  typedef T v __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename T>
using V = typename LaneType<T>::v;
typedef int32_t VInt __attribute__((vector_size(kLanes * 4)));

// Zeroed, vector-aligned scratch. (Not std::vector<V<T>>: a template argument drops the
// vector type's alignment attribute, and the aligned loads and stores then fault.)
template <typename T>
struct LaneBuf {
  V<T>* p;
  explicit LaneBuf(int64_t n) {
    const size_t bytes = ((n > 0 ? n : 1) * sizeof(V<T>) + 63) / 64 * 64;
    p = static_cast<V<T>*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    std::memset(static_cast<void*>(p), 0, bytes);
  }
  ~LaneBuf() { std::free(p); }
  LaneBuf(const LaneBuf&) = delete;
  LaneBuf& operator=(const LaneBuf&) = delete;
  V<T>* data() const { return p; }
  V<T>& operator[](int64_t i) const { return p[i]; }
};

template <typename T>
inline V<T> ld(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void st(T* p, V<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline V<T> splat(T a) {
  V<T> v = {};
  return v + a;   // exact for every a but -0.0, which becomes +0.0 (only used for constants)
}
template <typename T>
inline T lane_sum(V<T> v) {   // a fixed order: lanes 0, 1, 2, ...
  T s = v[0];
  for (int i = 1; i < kLanes; ++i) s += v[i];
  return s;
}

// ---------------------------------------------------------------- activations
// float: the branch-free Cephes-style exp of the scalar kernels, lane by lane in vector
// registers (max relative error ~2 ulp); double (gradcheck): libm, lane by lane.
inline V<float> vexp(V<float> x) {
  const V<float> lo = splat(-87.3f), hi = splat(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  V<float> fx = x * 1.44269504088896341f + 12582912.f;   // round to nearest integer
  fx -= 12582912.f;
  V<float> r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  V<float> y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const VInt bits = (__builtin_convertvector(fx, VInt) + 127) << 23;
  V<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline V<double> vexp(V<double> x) {
  for (int i = 0; i < kLanes; ++i) x[i] = std::exp(x[i]);
  return x;
}
// 1 / d: the reciprocal estimate and one Newton step (within ~1 ulp) where the instruction
// set has one; a vector division costs several times more and the gates need three a step.
inline V<float> vrecip(V<float> d) {
#if defined(RNNLAB_LANES_AVX512)
  static_assert(sizeof(V<float>) == sizeof(__m512), "one zmm register");
  __m512 r0 = _mm512_rcp14_ps(reinterpret_cast<__m512&>(d));
  V<float> r = reinterpret_cast<V<float>&>(r0);
#elif defined(RNNLAB_LANES_AVX2)
  static_assert(sizeof(V<float>) == sizeof(__m256), "one ymm register");
  __m256 r0 = _mm256_rcp_ps(reinterpret_cast<__m256&>(d));
  V<float> r = reinterpret_cast<V<float>&>(r0);
#elif defined(__SSE__)
  static_assert(sizeof(V<float>) == sizeof(__m128), "one xmm register");
  __m128 r0 = _mm_rcp_ps(reinterpret_cast<__m128&>(d));
  V<float> r = reinterpret_cast<V<float>&>(r0);
#else
  return 1.0f / d;
#endif
#if defined(RNNLAB_LANES_AVX512) || defined(RNNLAB_LANES_AVX2) || defined(__SSE__)
  r = r * (2.0f - d * r);
#if !defined(RNNLAB_LANES_AVX512)
  r = r * (2.0f - d * r);   // rcp_ps is a 12-bit estimate: a second step
#endif
  return r;
#endif
}
inline V<double> vrecip(V<double> d) { return 1.0 / d; }

template <typename T>
inline V<T> vsigmoid(V<T> x) {
  return vrecip(T(1) + vexp(-x));
}
inline V<float> vtanh(V<float> x) { return 2.0f * vrecip(1.0f + vexp(-2.0f * x)) - 1.0f; }
inline V<double> vtanh(V<double> x) {
  for (int i = 0; i < kLanes; ++i) x[i] = std::tanh(x[i]);
  return x;
}
template <typename T>
inline V<T> vrelu(V<T> x) {
  const V<T> zero = {};
  return x > zero ? x : zero;
}
template <typename T>
inline V<T> vact(V<T> x, bool relu) {
  return relu ? vrelu<T>(x) : vtanh(x);
}

// ---------------------------------------------------------------- products
// The weights are packed once per call so that the scalars a tile broadcasts at one k sit
// next to each other: one base register and immediate offsets, where the row-major matrix
// needed a register per row (and GCC spilled them). Tiles of J rows start at every multiple
// of J, then single rows; a tile starting at row j0 finds its block at j0 * NG * K.
//   pack_rows: M (NG gate blocks of R rows, K columns; row g * R + j) -> [tile][k][g][j].
template <typename T>
inline void pack_rows(const T* m, int64_t NG, int64_t R, int64_t K, int J, T* out) {
  for (int64_t j0 = 0; j0 < R;) {
    const int64_t jt = j0 + J <= R ? J : 1;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t g = 0; g < NG; ++g)
        for (int64_t j = 0; j < jt; ++j) *out++ = m[(g * R + j0 + j) * K + k];
    j0 += jt;
  }
}

// acc[g][j] = bias + sum_k M[g * R + j0 + j][k] * x[k], from the packed tile wp (K x NG x J):
// the J * NG accumulators stay in registers over k.
template <typename T, int NG, int J>
inline void gate_tile(const T* __restrict__ wp, int64_t R, int64_t j0, int64_t K,
                      const V<T>* __restrict__ x, const T* __restrict__ bias, V<T> (&acc)[NG][J]) {
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < J; ++j) acc[g][j] = bias ? splat(bias[g * R + j0 + j]) : V<T>{};
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const V<T> xk = x[k];
    const T* __restrict__ wk = wp + k * NG * J;
    for (int g = 0; g < NG; ++g)
      for (int j = 0; j < J; ++j) acc[g][j] += wk[g * J + j] * xk;
  }
}

// out[j] = sum_k M[j][k] * x[k] for the N rows of M (packed by pack_rows with NG = 1).
template <typename T, int J>
inline void rows_tile(const T* __restrict__ mp, int64_t K, const V<T>* __restrict__ x,
                      V<T>* __restrict__ out) {
  V<T> acc[J] = {};
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const V<T> xk = x[k];
    for (int j = 0; j < J; ++j) acc[j] += mp[k * J + j] * xk;
  }
  for (int j = 0; j < J; ++j) out[j] = acc[j];
}
template <typename T, int J>
inline void rows_product(const T* mp, int64_t N, int64_t K, const V<T>* x, V<T>* out) {
  int64_t j = 0;
  for (; j + J <= N; j += J) rows_tile<T, J>(mp + j * K, K, x, out + j);
  for (; j < N; ++j) rows_tile<T, 1>(mp + j * K, K, x, out + j);
}

// The weight gradient of a chunk of steps, per lane: dwl[g * H + k] += dg[c][g] * x[c][k],
// dbl[g] += dg[c][g], summed over the chunk's steps c in order (a 4 x 4 register tile).
template <typename T, int GT, int KT>
inline void grad_tile(const V<T>* __restrict__ dg, const V<T>* __restrict__ x, int n,
                      int64_t G, int64_t H, int64_t g0, int64_t k0, V<T>* __restrict__ dwl) {
  V<T> acc[GT][KT];
  for (int a = 0; a < GT; ++a)
    for (int b = 0; b < KT; ++b) acc[a][b] = dwl[(g0 + a) * H + k0 + b];
  for (int c = 0; c < n; ++c) {
    V<T> xs[KT];
    for (int b = 0; b < KT; ++b) xs[b] = x[c * H + k0 + b];
    for (int a = 0; a < GT; ++a) {
      const V<T> d = dg[c * G + g0 + a];
      for (int b = 0; b < KT; ++b) acc[a][b] += d * xs[b];
    }
  }
  for (int a = 0; a < GT; ++a)
    for (int b = 0; b < KT; ++b) dwl[(g0 + a) * H + k0 + b] = acc[a][b];
}
template <typename T>
inline void grad_chunk(const V<T>* dg, const V<T>* x, int n, int64_t G, int64_t H,
                       V<T>* dwl, V<T>* dbl) {
  for (int64_t g = 0; g < G; ++g) {
    V<T> s = dbl[g];
    for (int c = 0; c < n; ++c) s += dg[c * G + g];
    dbl[g] = s;
  }
  int64_t g = 0;
  for (; g + 4 <= G; g += 4) {
    int64_t k = 0;
    for (; k + 4 <= H; k += 4) grad_tile<T, 4, 4>(dg, x, n, G, H, g, k, dwl);
    for (; k < H; ++k) grad_tile<T, 4, 1>(dg, x, n, G, H, g, k, dwl);
  }
  for (; g < G; ++g)
    for (int64_t k = 0; k < H; ++k) grad_tile<T, 1, 1>(dg, x, n, G, H, g, k, dwl);
}

constexpr int kChunk = 16;

// The next step's rows of a (F, T, Bp) tensor for this block: F lines T*Bp apart, too many
// streams for the hardware prefetcher to follow, so they are asked for a step ahead.
template <typename T>
inline void prefetch_step(const T* row0, int64_t rows, int64_t sF, bool write) {
  for (int64_t f = 0; f < rows; ++f) {
    if (write) __builtin_prefetch(row0 + f * sF, 1, 3);
    else __builtin_prefetch(row0 + f * sF, 0, 3);
  }
}

// The input side of a layer's backward, run inside the recurrence's backward (so that no
// (blocks, T, G, lanes) dgi is written and read back): the layer's input x (I, T, Bp),
// W_ih^T (I x G) packed by pack_rows in tiles of 8 and dx (I, T, Bp) when dx is wanted
// (else nullptr), and this block's partials of dW_ih (G, I) and db_ih (G). I == 0: none.
template <typename T>
struct InputGrad {
  const T* x = nullptr;
  int64_t I = 0;
  const T* wihtp = nullptr;
  T* dx = nullptr;
  T* dw = nullptr;
  T* db = nullptr;
};

// A block's backward scratch: dh (and LSTM's dc), the chunk's hidden-side gate gradients
// and inputs of W_hh, and the per-lane weight-gradient accumulators; with an input side,
// the same for W_ih (the chunk's input-side gate gradients dgx and inputs xx).
template <typename T>
struct BackwardScratch {
  int64_t G, H, I;
  LaneBuf<T> dh, dc, dhin, dg, x, dwl, dbl, dgx, xx, dwlx, dblx, dxs;
  int n = 0;   // steps in the chunk
  BackwardScratch(int64_t G_, int64_t H_, int64_t I_ = 0)
      : G(G_), H(H_), I(I_), dh(H_), dc(H_), dhin(H_), dg(kChunk * G_), x(kChunk * H_),
        dwl(G_ * H_), dbl(G_), dgx(I_ ? kChunk * G_ : 0), xx(kChunk * I_), dwlx(G_ * I_),
        dblx(I_ ? G_ : 0), dxs(I_) {}
  V<T>* dg_row() { return dg.data() + n * G; }
  V<T>* x_row() { return x.data() + n * H; }
  // Where step t's input-side gate gradients go: dgi's rows, or the chunk's.
  T* d_row(T* dgi, int64_t t) {
    return dgi ? dgi + t * G * kLanes : reinterpret_cast<T*>(dgx.data() + n * G);
  }
  // With an input side, step t's x rows join the chunk and dx_t = W_ih^T d (d: d_row's).
  void input_step(const InputGrad<T>& in, int64_t t, int64_t b0, int64_t Bp, int64_t sF,
                  const T* d) {
    if (!I) return;
    V<T>* xr = xx.data() + n * I;
    for (int64_t i = 0; i < I; ++i) xr[i] = ld(in.x + i * sF + t * Bp + b0);
    if (t >= 1) prefetch_step(in.x + (t - 1) * Bp + b0, I, sF, false);
    if (in.dx) {
      rows_product<T, 8>(in.wihtp, I, G, reinterpret_cast<const V<T>*>(d), dxs.data());
      for (int64_t i = 0; i < I; ++i) st(in.dx + i * sF + t * Bp + b0, dxs[i]);
    }
  }
  void next(bool last) {   // the step's rows are written: flush when the chunk is full
    if (++n == kChunk || last) {
      grad_chunk<T>(dg.data(), x.data(), n, G, H, dwl.data(), dbl.data());
      if (I) grad_chunk<T>(dgx.data(), xx.data(), n, G, I, dwlx.data(), dblx.data());
      n = 0;
    }
  }
  void finish(T* dw, T* db, const InputGrad<T>& in) const {   // lane sums: block partials
    for (int64_t i = 0; i < G * H; ++i) dw[i] = lane_sum<T>(dwl[i]);
    for (int64_t i = 0; i < G; ++i) db[i] = lane_sum<T>(dbl[i]);
    for (int64_t i = 0; i < G * I; ++i) in.dw[i] = lane_sum<T>(dwlx[i]);
    for (int64_t i = 0; i < (I ? G : 0); ++i) in.db[i] = lane_sum<T>(dblx[i]);
  }
};

template <typename T>
inline void load_mask(const T* mask, int64_t b0, int64_t Bp, int64_t H, V<T>* m) {
  for (int64_t k = 0; k < H; ++k) m[k] = mask ? ld(mask + k * Bp + b0) : splat(T(1));
}

// The backward's rows of step t - 1 in (F, T, Bp) tensors: the output gradient and the
// state before it (t - 2).
template <typename T>
inline void prefetch_back(int64_t t, int64_t Bp, int64_t b0, int64_t sF, int64_t H, bool seq,
                          const T* grad, const T* out) {
  if (t < 1) return;
  if (seq) prefetch_step(grad + (t - 1) * Bp + b0, H, sF, false);
  if (t >= 2) prefetch_step(out + (t - 2) * Bp + b0, H, sF, false);
}

// The output gradient of step t joins dh.
template <typename T>
inline void add_grad(const T* grad, bool seq, int64_t t, int64_t steps, int64_t Bp,
                     int64_t b0, int64_t H, V<T>* dh) {
  const int64_t sF = steps * Bp;
  if (seq) {
    for (int64_t j = 0; j < H; ++j) dh[j] += ld(grad + j * sF + t * Bp + b0);
  } else if (t == steps - 1) {
    for (int64_t j = 0; j < H; ++j) dh[j] = ld(grad + j * Bp + b0);
  }
}

// An integer vector of T's width, for __builtin_shuffle's lane indices.
template <typename T>
struct LaneIndex;
template <>
struct LaneIndex<float> {
  typedef int32_t v __attribute__((vector_size(kLanes * 4)));
};
template <>
struct LaneIndex<double> {
  typedef int64_t v __attribute__((vector_size(kLanes * 8)));
};

// A kLanes x kLanes tile held as kLanes vectors, transposed in registers: r[i][j] becomes
// r[j][i]. Each stage swaps one bit of the row index with the same bit of the lane index
// (one two-source shuffle per vector), so log2(kLanes) stages in all.
template <typename T>
inline void transpose_tile(V<T>* r) {
  typedef typename LaneIndex<T>::v M;
  for (int s = kLanes / 2; s >= 1; s /= 2) {
    M lo, hi;
    for (int l = 0; l < kLanes; ++l) {
      lo[l] = (l & s) ? kLanes + l - s : l;
      hi[l] = (l & s) ? kLanes + l : l + s;
    }
    for (int i = 0; i < kLanes; ++i)
      if (!(i & s)) {
        const V<T> a = r[i], b = r[i + s];
        r[i] = __builtin_shuffle(a, b, lo);
        r[i + s] = __builtin_shuffle(a, b, hi);
      }
  }
}

// Step t's input projections for kLanes sequences (tokens tok[0 .. kLanes - 1]) from a
// projected embedding table P (V, G): dst[g * ds + l] = P[tok[l]][g], kLanes rows of P at
// a time transposed in registers into kLanes vectors. A plain copy.
template <typename T>
inline void gather_step(const T* table, const int64_t* tok, int64_t G, T* dst, int64_t ds) {
  V<T> r[kLanes];
  int64_t g0 = 0;
  for (; g0 + kLanes <= G; g0 += kLanes) {
    for (int l = 0; l < kLanes; ++l) r[l] = ld(table + tok[l] * G + g0);
    transpose_tile<T>(r);
    for (int k = 0; k < kLanes; ++k) st(dst + (g0 + k) * ds, r[k]);
  }
  for (; g0 < G; ++g0)
    for (int l = 0; l < kLanes; ++l) dst[g0 * ds + l] = table[tok[l] * G + g0];
}

// Where a forward reads each step's input projections, G rows of kLanes sequences: at(t, G)
// gives step t's rows, feature f's vector at at(t, G) + f * stride(), and prefetch(t, G)
// asks for them a step ahead. Two sources, each its own instantiation of the kernels (as
// one run-time choice, the kernels' training forwards ran 1.2-1.3x slower):
//   GiSteps: gi (G, T, Bp), made by one product before the loop;
//   TableSteps: on the table route, the rows of a projected embedding table P (V, G) for
//   the step's tokens (ids: T * Bp, time-major), gathered into the block's scratch buf (G
//   vectors) as the step begins, so that no (G, T, Bp) tensor is written and read back
//   (IMDB's LSTM: 33 MB a direction and batch). The values are the same.
template <typename T>
struct GiSteps {
  const T* gi;
  int64_t Bp, b0, sF;
  const T* at(int64_t t, int64_t) const { return gi + t * Bp + b0; }
  int64_t stride() const { return sF; }
  void prefetch(int64_t t, int64_t G) const { prefetch_step(gi + t * Bp + b0, G, sF, false); }
};
template <typename T>
struct TableSteps {
  const T* table;
  const int64_t* ids;
  T* buf;
  int64_t Bp, b0;
  const T* at(int64_t t, int64_t G) const {
    gather_step<T>(table, ids + t * Bp + b0, G, buf, kLanes);
    return buf;
  }
  int64_t stride() const { return kLanes; }
  void prefetch(int64_t t, int64_t G) const {
    const int64_t* tok = ids + t * Bp + b0;
    for (int l = 0; l < kLanes; ++l)
      for (int64_t f = 0; f < G; f += 64 / sizeof(T))
        __builtin_prefetch(table + tok[l] * G + f, 0, 3);
  }
};

// XSteps: a layer's input x (I, T, Bp) and its projection W_ih (G, I) (packed by pack_rows in
// tiles of 8) and b_ih: step t's projections computed as the step begins, into the block's
// scratch buf (G vectors; xs: I), so that no (G, T, Bp) tensor is written and read back
// (Jena's LSTM: 15.7 MB a batch). The sums are product_cols's, in its order: the same bits
// as gi made by one product before the loop.
template <typename T>
struct XSteps {
  const T* x;
  const T* wp;
  const T* bias;
  V<T>* xs;
  V<T>* buf;
  int64_t I, Bp, b0, sF;
  const T* at(int64_t t, int64_t G) const {
    for (int64_t i = 0; i < I; ++i) xs[i] = ld(x + i * sF + t * Bp + b0);
    rows_product<T, 8>(wp, G, I, xs, buf);
    if (bias)
      for (int64_t g = 0; g < G; ++g) buf[g] = buf[g] + bias[g];
    return reinterpret_cast<const T*>(buf);
  }
  int64_t stride() const { return kLanes; }
  void prefetch(int64_t t, int64_t) const { prefetch_step(x + t * Bp + b0, I, sF, false); }
};

// Where a forward's step inputs come from: gi; or a projected table and the token ids; or
// x, the packed W_ih and b_ih (with I, x's features).
template <typename T>
struct StepSource {
  const T* gi = nullptr;
  const T* table = nullptr;
  const int64_t* ids = nullptr;
  const T* x = nullptr;
  const T* wihp = nullptr;
  const T* bih = nullptr;
  int64_t I = 0;
};

// The StepSource of these pointers, W_ih packed into wihp (G x I) where x is given.
template <typename T>
StepSource<T> step_source(const T* gi, const T* table, const int64_t* ids, const T* x,
                          const T* wih, const T* bih, int64_t G, int64_t I,
                          std::vector<T>& wihp) {
  StepSource<T> src;
  src.gi = gi;
  src.table = table;
  src.ids = ids;
  if (x) {
    wihp.resize(G * I);
    pack_rows(wih, 1, G, I, 8, wihp.data());
    src.x = x;
    src.wihp = wihp.data();
    src.bih = bih;
    src.I = I;
  }
  return src;
}

// The same from a forward's checked inputs (recurrent.cpp's ForwardInputs).
template <typename T, typename In>
StepSource<T> step_source(const In& in, int64_t G, std::vector<T>& wihp) {
  return step_source<T>(in.template gi_p<T>(), in.template table_p<T>(), in.ids,
                        in.template x_p<T>(), in.template wih_p<T>(), in.template bih_p<T>(),
                        G, in.I, wihp);
}

// ================================================================= GRU
// gates per step: [r, z, n, W_hn h + b_hn] (4H lanes). Training: out and gates are
// written. Inference: gates == nullptr; out when the sequence is wanted, else last (H, Bp).
template <typename T, int HC, typename S>
void gru_forward(S in, int64_t b0, int64_t steps, int64_t Bp, int64_t H_,
                 const T* w, const T* bhh, const T* mask, bool relu, T* out, T* gates, T* last) {
  const int64_t H = HC > 0 ? HC : H_, sF = steps * Bp;
  constexpr int J = 4;   // 12 accumulators
  LaneBuf<T> hbuf(3 * H), m(H);
  std::vector<T> wp(3 * H * H);
  pack_rows(w, 3, H, H, J, wp.data());
  V<T>* h = hbuf.data();
  V<T>* hn = h + H;
  V<T>* xin = hn + H;
  load_mask(mask, b0, Bp, H, m.data());
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t k = 0; k < H; ++k) xin[k] = t ? h[k] * m[k] : V<T>{};
    const T* g = in.at(t, 3 * H);
    const int64_t gs = in.stride();
    T* sv = gates ? gates + t * 4 * H * kLanes : nullptr;
    if (t + 1 < steps) {
      in.prefetch(t + 1, 3 * H);
      if (out) prefetch_step(out + (t + 1) * Bp + b0, H, sF, true);
    }
    auto cell = [&](auto tile_j, int64_t j0) {
      constexpr int JJ = decltype(tile_j)::value;
      V<T> acc[3][JJ];
      gate_tile<T, 3, JJ>(wp.data() + j0 * 3 * H, H, j0, H, xin, bhh, acc);
      for (int i = 0; i < JJ; ++i) {
        const int64_t j = j0 + i;
        const V<T> r = vsigmoid<T>(ld(g + j * gs) + acc[0][i]);
        const V<T> z = vsigmoid<T>(ld(g + (H + j) * gs) + acc[1][i]);
        const V<T> n = vact<T>(ld(g + (2 * H + j) * gs) + r * acc[2][i], relu);
        const V<T> hp = t ? h[j] : V<T>{};
        const V<T> hj = n + z * (hp - n);
        hn[j] = hj;
        if (sv) {
          st(sv + j * kLanes, r);
          st(sv + (H + j) * kLanes, z);
          st(sv + (2 * H + j) * kLanes, n);
          st(sv + (3 * H + j) * kLanes, acc[2][i]);
        }
        if (out) st(out + j * sF + t * Bp + b0, hj);
      }
    };
    int64_t j = 0;
    for (; j + J <= H; j += J) cell(std::integral_constant<int, J>{}, j);
    for (; j < H; ++j) cell(std::integral_constant<int, 1>{}, j);
    std::swap(h, hn);
  }
  if (last)
    for (int64_t j = 0; j < H; ++j) st(last + j * Bp + b0, h[j]);
}

// dgi (3H, T, Bp); dw (3H, H), db (3H) of this block.
template <typename T, int HC>
void gru_backward(int64_t b0, int64_t steps, int64_t Bp, int64_t H_, const T* grad, bool seq,
                  const T* wt, const T* mask, const T* out, const T* gates, bool relu,
                  T* dgi, T* dw, T* db, const InputGrad<T>& ig) {
  const int64_t H = HC > 0 ? HC : H_, G = 3 * H, sF = steps * Bp;
  BackwardScratch<T> s(G, H, ig.I);
  LaneBuf<T> m(H);
  std::vector<T> wtp(H * G);
  pack_rows(wt, 1, H, G, 8, wtp.data());
  load_mask(mask, b0, Bp, H, m.data());
  V<T>* dh = s.dh.data();
  const V<T> one = splat(T(1));
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_grad(grad, seq, t, steps, Bp, b0, H, dh);
    const T* sv = gates + t * 4 * H * kLanes;
    T* d = s.d_row(dgi, t);   // this block's rows of step t, contiguous
    prefetch_back(t, Bp, b0, sF, H, seq, grad, out);
    V<T>* dg = s.dg_row();
    V<T>* x = s.x_row();
    for (int64_t j = 0; j < H; ++j) {
      const V<T> r = ld(sv + j * kLanes), z = ld(sv + (H + j) * kLanes);
      const V<T> n = ld(sv + (2 * H + j) * kLanes), hn = ld(sv + (3 * H + j) * kLanes);
      const V<T> hp = t ? ld(out + j * sF + (t - 1) * Bp + b0) : V<T>{};
      const V<T> dn = dh[j] * (one - z);
      const V<T> dpre = relu ? (n > V<T>{} ? dn : V<T>{}) : dn * (one - n * n);
      const V<T> dr = dpre * hn * r * (one - r);
      const V<T> dz = dh[j] * (hp - n) * z * (one - z);
      st(d + j * kLanes, dr);
      st(d + (H + j) * kLanes, dz);
      st(d + (2 * H + j) * kLanes, dpre);
      dg[j] = dr;
      dg[H + j] = dz;
      dg[2 * H + j] = dpre * r;
      x[j] = hp * m[j];
      dh[j] *= z;
    }
    s.input_step(ig, t, b0, Bp, sF, d);
    rows_product<T, 8>(wtp.data(), H, G, dg, s.dhin.data());
    for (int64_t k = 0; k < H; ++k) dh[k] += s.dhin[k] * m[k];
    s.next(t == 0);
  }
  s.finish(dw, db, ig);
}

// ================================================================= LSTM
// gates per step: [i, f, g, o] activated (4H lanes); cells: [c, tanh c] (2H lanes).
template <typename T, int HC, typename S>
void lstm_forward(S in, int64_t b0, int64_t steps, int64_t Bp, int64_t H_,
                  const T* w, const T* bhh, const T* mask, T* out, T* gates, T* cells, T* last) {
  const int64_t H = HC > 0 ? HC : H_, sF = steps * Bp;
  constexpr int J = kRegs >= 32 ? 4 : 2;   // 16 or 8 accumulators
  LaneBuf<T> hbuf(3 * H), c(H), m(H);
  std::vector<T> wp(4 * H * H);
  pack_rows(w, 4, H, H, J, wp.data());
  V<T>* h = hbuf.data();
  V<T>* hn = h + H;
  V<T>* xin = hn + H;
  load_mask(mask, b0, Bp, H, m.data());
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t k = 0; k < H; ++k) xin[k] = t ? h[k] * m[k] : V<T>{};
    const T* g = in.at(t, 4 * H);
    const int64_t gs = in.stride();
    T* sv = gates ? gates + t * 4 * H * kLanes : nullptr;
    T* cs = cells ? cells + t * 2 * H * kLanes : nullptr;
    if (t + 1 < steps) {
      in.prefetch(t + 1, 4 * H);
      if (out) prefetch_step(out + (t + 1) * Bp + b0, H, sF, true);
    }
    auto cell = [&](auto tile_j, int64_t j0) {
      constexpr int JJ = decltype(tile_j)::value;
      V<T> acc[4][JJ];
      gate_tile<T, 4, JJ>(wp.data() + j0 * 4 * H, H, j0, H, xin, bhh, acc);
      for (int q = 0; q < JJ; ++q) {
        const int64_t j = j0 + q;
        const V<T> i = vsigmoid<T>(ld(g + j * gs) + acc[0][q]);
        const V<T> f = vsigmoid<T>(ld(g + (H + j) * gs) + acc[1][q]);
        const V<T> gg = vtanh(ld(g + (2 * H + j) * gs) + acc[2][q]);
        const V<T> o = vsigmoid<T>(ld(g + (3 * H + j) * gs) + acc[3][q]);
        const V<T> cj = f * (t ? c[j] : V<T>{}) + i * gg;
        const V<T> tc = vtanh(cj);
        const V<T> hj = o * tc;
        c[j] = cj;
        hn[j] = hj;
        if (sv) {
          st(sv + j * kLanes, i);
          st(sv + (H + j) * kLanes, f);
          st(sv + (2 * H + j) * kLanes, gg);
          st(sv + (3 * H + j) * kLanes, o);
          st(cs + j * kLanes, cj);
          st(cs + (H + j) * kLanes, tc);
        }
        if (out) st(out + j * sF + t * Bp + b0, hj);
      }
    };
    int64_t j = 0;
    for (; j + J <= H; j += J) cell(std::integral_constant<int, J>{}, j);
    for (; j < H; ++j) cell(std::integral_constant<int, 1>{}, j);
    std::swap(h, hn);
  }
  if (last)
    for (int64_t j = 0; j < H; ++j) st(last + j * Bp + b0, h[j]);
}

template <typename T, int HC>
void lstm_backward(int64_t b0, int64_t steps, int64_t Bp, int64_t H_, const T* grad, bool seq,
                   const T* wt, const T* mask, const T* out, const T* gates, const T* cells,
                   T* dgi, T* dw, T* db, const InputGrad<T>& ig) {
  const int64_t H = HC > 0 ? HC : H_, G = 4 * H, sF = steps * Bp;
  BackwardScratch<T> s(G, H, ig.I);
  LaneBuf<T> m(H);
  std::vector<T> wtp(H * G);
  pack_rows(wt, 1, H, G, 8, wtp.data());
  load_mask(mask, b0, Bp, H, m.data());
  V<T>* dh = s.dh.data();
  V<T>* dc = s.dc.data();
  const V<T> one = splat(T(1));
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_grad(grad, seq, t, steps, Bp, b0, H, dh);
    const T* sv = gates + t * 4 * H * kLanes;
    const T* cs = cells + t * 2 * H * kLanes;
    T* d = s.d_row(dgi, t);   // this block's rows of step t, contiguous
    prefetch_back(t, Bp, b0, sF, H, seq, grad, out);
    V<T>* dg = s.dg_row();
    V<T>* x = s.x_row();
    for (int64_t j = 0; j < H; ++j) {
      const V<T> i = ld(sv + j * kLanes), f = ld(sv + (H + j) * kLanes);
      const V<T> gg = ld(sv + (2 * H + j) * kLanes), o = ld(sv + (3 * H + j) * kLanes);
      const V<T> tc = ld(cs + (H + j) * kLanes);
      const V<T> cp = t ? ld(cs - 2 * H * kLanes + j * kLanes) : V<T>{};
      const V<T> hp = t ? ld(out + j * sF + (t - 1) * Bp + b0) : V<T>{};
      const V<T> dcc = dc[j] + dh[j] * o * (one - tc * tc);
      const V<T> di = dcc * gg * i * (one - i);
      const V<T> df = dcc * cp * f * (one - f);
      const V<T> dgg = dcc * i * (one - gg * gg);
      const V<T> dout = dh[j] * tc * o * (one - o);
      dc[j] = dcc * f;
      st(d + j * kLanes, di);
      st(d + (H + j) * kLanes, df);
      st(d + (2 * H + j) * kLanes, dgg);
      st(d + (3 * H + j) * kLanes, dout);
      dg[j] = di;
      dg[H + j] = df;
      dg[2 * H + j] = dgg;
      dg[3 * H + j] = dout;
      x[j] = hp * m[j];
    }
    s.input_step(ig, t, b0, Bp, sF, d);
    rows_product<T, 8>(wtp.data(), H, G, dg, s.dhin.data());
    for (int64_t k = 0; k < H; ++k) dh[k] = s.dhin[k] * m[k];
    s.next(t == 0);
  }
  s.finish(dw, db, ig);
}

// ================================================================= Elman RNN
template <typename T, int HC, typename S>
void rnn_forward(S in, int64_t b0, int64_t steps, int64_t Bp, int64_t H_,
                 const T* w, const T* bhh, const T* mask, bool relu, T* out, T* last) {
  const int64_t H = HC > 0 ? HC : H_, sF = steps * Bp;
  constexpr int J = 8;
  LaneBuf<T> hbuf(3 * H), m(H);
  std::vector<T> wp(H * H);
  pack_rows(w, 1, H, H, J, wp.data());
  V<T>* h = hbuf.data();
  V<T>* hn = h + H;
  V<T>* xin = hn + H;
  load_mask(mask, b0, Bp, H, m.data());
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t k = 0; k < H; ++k) xin[k] = t ? h[k] * m[k] : V<T>{};
    const T* g = in.at(t, H);
    const int64_t gs = in.stride();
    if (t + 1 < steps) {
      in.prefetch(t + 1, H);
      if (out) prefetch_step(out + (t + 1) * Bp + b0, H, sF, true);
    }
    auto cell = [&](auto tile_j, int64_t j0) {
      constexpr int JJ = decltype(tile_j)::value;
      V<T> acc[1][JJ];
      gate_tile<T, 1, JJ>(wp.data() + j0 * H, H, j0, H, xin, bhh, acc);
      for (int q = 0; q < JJ; ++q) {
        const int64_t j = j0 + q;
        const V<T> hj = vact<T>(ld(g + j * gs) + acc[0][q], relu);
        hn[j] = hj;
        if (out) st(out + j * sF + t * Bp + b0, hj);
      }
    };
    int64_t j = 0;
    for (; j + J <= H; j += J) cell(std::integral_constant<int, J>{}, j);
    for (; j < H; ++j) cell(std::integral_constant<int, 1>{}, j);
    std::swap(h, hn);
  }
  if (last)
    for (int64_t j = 0; j < H; ++j) st(last + j * Bp + b0, h[j]);
}

template <typename T, int HC>
void rnn_backward(int64_t b0, int64_t steps, int64_t Bp, int64_t H_, const T* grad, bool seq,
                  const T* wt, const T* mask, const T* out, bool relu, T* dgi, T* dw, T* db,
                  const InputGrad<T>& ig) {
  const int64_t H = HC > 0 ? HC : H_, sF = steps * Bp;
  BackwardScratch<T> s(H, H, ig.I);
  LaneBuf<T> m(H);
  std::vector<T> wtp(H * H);
  pack_rows(wt, 1, H, H, 8, wtp.data());
  load_mask(mask, b0, Bp, H, m.data());
  V<T>* dh = s.dh.data();
  const V<T> one = splat(T(1));
  for (int64_t t = steps - 1; t >= 0; --t) {
    add_grad(grad, seq, t, steps, Bp, b0, H, dh);
    T* d = s.d_row(dgi, t);   // this block's rows of step t, contiguous
    prefetch_back(t, Bp, b0, sF, H, seq, grad, out);
    V<T>* dg = s.dg_row();
    V<T>* x = s.x_row();
    for (int64_t j = 0; j < H; ++j) {
      const V<T> h = ld(out + j * sF + t * Bp + b0);
      const V<T> hp = t ? ld(out + j * sF + (t - 1) * Bp + b0) : V<T>{};
      const V<T> dpre = relu ? (h > V<T>{} ? dh[j] : V<T>{}) : dh[j] * (one - h * h);
      st(d + j * kLanes, dpre);
      dg[j] = dpre;
      x[j] = hp * m[j];
    }
    s.input_step(ig, t, b0, Bp, sF, d);
    rows_product<T, 8>(wtp.data(), H, H, dg, s.dhin.data());
    for (int64_t k = 0; k < H; ++k) dh[k] = s.dhin[k] * m[k];
    s.next(t == 0);
  }
  s.finish(dw, db, ig);
}

// ================================================================= plain products
// out (M, N) = w (M, K) @ x (K, N) (+ bias (M)), columns c0 .. c0 + nvec * kLanes: each
// column vector's rows summed over k in order, then the bias added, so a column's result
// depends on nothing but its own inputs (not on the thread that runs it or on where a split
// falls, as a GEMM library's do). wp: w packed by pack_rows in tiles of 8; xs (K) and os
// (M) are the caller's scratch. A part-filled last vector is read and written lane by lane.
template <typename T>
void product_cols(int64_t c0, int64_t nvec, int64_t M, int64_t K, int64_t N, const T* wp,
                  const T* x, const T* bias, T* out, V<T>* xs, V<T>* os) {
  for (int64_t v = 0; v < nvec; ++v) {
    const int64_t c = c0 + v * kLanes, nc = std::min<int64_t>(kLanes, N - c);
    if (nc <= 0) return;
    for (int64_t k = 0; k < K; ++k) {
      if (nc == kLanes) {
        xs[k] = ld(x + k * N + c);
      } else {
        V<T> part = {};
        for (int64_t l = 0; l < nc; ++l) part[l] = x[k * N + c + l];
        xs[k] = part;
      }
    }
    rows_product<T, 8>(wp, M, K, xs, os);
    for (int64_t m = 0; m < M; ++m) {
      const V<T> r = bias ? os[m] + bias[m] : os[m];
      if (nc == kLanes) {
        st(out + m * N + c, r);
      } else {
        for (int64_t l = 0; l < nc; ++l) out[m * N + c + l] = r[l];
      }
    }
  }
}

// ================================================================= embedding tables
// The gradient of a projected embedding table P (V, G) read in token order (gi[:, t, b] =
// P[ids[t * Bp + b]]), columns g0 .. g0 + gn of dP (V, G), from the block-major dgi
// (blocks, T, G, kLanes): a step's tile of kLanes columns x kLanes tokens is transposed in
// registers, and each token's vector is added to its row. The tokens add in one order
// (block, step, lane), whichever thread owns the columns.
template <typename T>
void table_grad_cols(int64_t g0, int64_t gn, int64_t nblk, int64_t steps, int64_t G,
                     int64_t Bp, const T* dgi, const int64_t* ids, T* dpt) {
  V<T> r[kLanes];
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t t = 0; t < steps; ++t) {
      const T* tile = dgi + (blk * steps + t) * G * kLanes + g0 * kLanes;
      const int64_t* tok = ids + t * Bp + blk * kLanes;
      if (gn == kLanes) {
        for (int k = 0; k < kLanes; ++k) r[k] = ld(tile + k * kLanes);
        transpose_tile<T>(r);
        for (int l = 0; l < kLanes; ++l) {
          T* dst = dpt + tok[l] * G + g0;
          st(dst, ld(dst) + r[l]);
        }
      } else {
        for (int l = 0; l < kLanes; ++l)
          for (int64_t k = 0; k < gn; ++k) dpt[tok[l] * G + g0 + k] += tile[k * kLanes + l];
      }
    }
}

// ================================================================= row-major products
// A row-major matrix m (rows, C) with its rows across the lanes: load_rows puts column c of
// rows 0 .. rn - 1 (rn <= kLanes; lanes past rn zero) in cols[c], kLanes x kLanes tiles
// transposed in registers; store_rows is the way back. So a product over the rows of a
// row-major (R, C) tensor needs no transposed copy of it, in or out.
template <typename T>
inline void load_rows(const T* m, int64_t rn, int64_t C, V<T>* cols) {
  V<T> r[kLanes];
  int64_t c0 = 0;
  if (rn == kLanes)
    for (; c0 + kLanes <= C; c0 += kLanes) {
      for (int l = 0; l < kLanes; ++l) r[l] = ld(m + l * C + c0);
      transpose_tile<T>(r);
      for (int k = 0; k < kLanes; ++k) cols[c0 + k] = r[k];
    }
  for (; c0 < C; ++c0) {
    V<T> v = {};
    for (int64_t l = 0; l < rn; ++l) v[l] = m[l * C + c0];
    cols[c0] = v;
  }
}
template <typename T>
inline void store_rows(const V<T>* cols, int64_t rn, int64_t C, T* m) {
  V<T> r[kLanes];
  int64_t c0 = 0;
  if (rn == kLanes)
    for (; c0 + kLanes <= C; c0 += kLanes) {
      for (int k = 0; k < kLanes; ++k) r[k] = cols[c0 + k];
      transpose_tile<T>(r);
      for (int l = 0; l < kLanes; ++l) st(m + l * C + c0, r[l]);
    }
  for (; c0 < C; ++c0)
    for (int64_t l = 0; l < rn; ++l) m[l * C + c0] = cols[c0][l];
}

// out (rn, M) = x (rn, K) @ w^T + bias for rn <= kLanes rows, x and out row-major: each
// value is summed over k in the order product_cols sums a column, so it equals
// product(w, x^T, bias)'s value bit for bit. wp: w (M, K) packed by pack_rows in tiles of
// 8; xs (K) and os (M) are the caller's scratch.
template <typename T>
void rows_tile_product(int64_t rn, int64_t M, int64_t K, const T* wp, const T* x,
                       const T* bias, T* out, V<T>* xs, V<T>* os) {
  load_rows<T>(x, rn, K, xs);
  rows_product<T, 8>(wp, M, K, xs, os);
  if (bias)
    for (int64_t m = 0; m < M; ++m) os[m] = os[m] + bias[m];
  store_rows<T>(os, rn, M, out);
}

// The weight gradient of out = x w^T + b over rows 0 .. rn - 1 of g (rn, M) and x (rn, K),
// per lane: dwl[m * K + k] += g[r][m] x[r][k], dbl[m] += g[r][m], where lane l takes rows
// l, l + kLanes, ... in order (kChunk tiles at a time through grad_chunk). gs (kChunk * M)
// and xs (kChunk * K) are the caller's scratch.
template <typename T>
void rows_grad_part(int64_t rn, int64_t M, int64_t K, const T* g, const T* x, V<T>* gs,
                    V<T>* xs, V<T>* dwl, V<T>* dbl) {
  for (int64_t r0 = 0; r0 < rn; r0 += kChunk * kLanes) {
    int n = 0;
    for (int64_t r = r0; r < rn && r < r0 + kChunk * kLanes; r += kLanes, ++n) {
      const int64_t tn = std::min<int64_t>(kLanes, rn - r);
      load_rows<T>(g + r * M, tn, M, gs + n * M);
      load_rows<T>(x + r * K, tn, K, xs + n * K);
    }
    grad_chunk<T>(gs, xs, n, M, K, dwl, dbl);
  }
}

// The parts' lane vectors (parts, M * K + M: dw, then db) summed in part order, then
// across the lanes: dw (M, K) and db (M). (Here, under the instruction set's target: a
// vector passed by value to code built for another set changes the calling convention.)
template <typename T>
void rows_grad_sum(V<T>* part, int64_t parts, int64_t M, int64_t K, T* dw, T* db) {
  const int64_t n = M * K + M;
  for (int64_t p = 1; p < parts; ++p)
    for (int64_t i = 0; i < n; ++i) part[i] += part[p * n + i];
  for (int64_t i = 0; i < M * K; ++i) dw[i] = lane_sum<T>(part[i]);
  for (int64_t m = 0; m < M; ++m) db[m] = lane_sum<T>(part[M * K + m]);
}

// ================================================================= multi-hot rows
// The first dense layer of a multi-hot input (imdb_dense) without the (B, V) 0/1 matrix it
// would multiply: row b's out = bias + the sum of wt[w] (wt = W^T, (V, U) row-major) over
// the distinct ids w != 0 among its L ids, taken in order of first appearance (kept in
// words, their number in n, for the backward). Four partial sums in turn (word i goes to
// sum i % 4), added as (s0 + s1) + (s2 + s3) at the end: a fixed order. seen: a zeroed
// bitmap of V bits, zeroed again on return.
template <typename T>
void multihot_row(const int64_t* ids, int64_t L, const T* wt, int64_t U, const T* bias,
                  T* out, int32_t* words, int64_t* n, uint64_t* seen) {
  int64_t k = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t w = ids[l];
    const uint64_t bit = uint64_t(1) << (w & 63);
    if (w == 0 || (seen[w >> 6] & bit)) continue;
    seen[w >> 6] |= bit;
    words[k++] = static_cast<int32_t>(w);
  }
  for (int64_t i = 0; i < k; ++i) seen[words[i] >> 6] = 0;
  *n = k;
  int64_t u0 = 0;
  for (; u0 + kLanes <= U; u0 += kLanes) {
    V<T> s[4] = {};
    int64_t i = 0;
    for (; i + 4 <= k; i += 4)
      for (int q = 0; q < 4; ++q) s[q] += ld(wt + int64_t(words[i + q]) * U + u0);
    for (int q = 0; i < k; ++i, ++q) s[q] += ld(wt + int64_t(words[i]) * U + u0);
    const V<T> sum = (s[0] + s[1]) + (s[2] + s[3]);
    st(out + u0, bias ? ld(bias + u0) + sum : sum);
  }
  for (; u0 < U; ++u0) {
    T s[4] = {};
    for (int64_t i = 0; i < k; ++i) s[i % 4] += wt[int64_t(words[i]) * U + u0];
    const T sum = (s[0] + s[1]) + (s[2] + s[3]);
    out[u0] = bias ? bias[u0] + sum : sum;
  }
}

// dst (C, R) = src (R, C)^T, both row-major, rows r0 .. r1 - 1 of dst (columns of src):
// kLanes x kLanes tiles transposed in registers, the edges element by element.
template <typename T>
void transpose_part(const T* src, int64_t R, int64_t C, int64_t r0, int64_t r1, T* dst) {
  V<T> t[kLanes];
  int64_t c0 = r0;
  for (; c0 + kLanes <= r1; c0 += kLanes) {
    int64_t i0 = 0;
    for (; i0 + kLanes <= R; i0 += kLanes) {
      for (int l = 0; l < kLanes; ++l) t[l] = ld(src + (i0 + l) * C + c0);
      transpose_tile<T>(t);
      for (int l = 0; l < kLanes; ++l) st(dst + (c0 + l) * R + i0, t[l]);
    }
    for (; i0 < R; ++i0)
      for (int l = 0; l < kLanes; ++l) dst[(c0 + l) * R + i0] = src[i0 * C + c0 + l];
  }
  for (; c0 < r1; ++c0)
    for (int64_t i = 0; i < R; ++i) dst[c0 * R + i] = src[i * C + c0];
}

// Its weight gradient: dwt[w] += g[b] (dwt = dW^T, (V, U), zeroed) for each word w of row
// b, the rows in order. (One thread: split by word ranges, the test of each word's range
// was a branch mispredicted every other word, and took longer than the sums.)
template <typename T>
void multihot_grad(int64_t B, int64_t L, const int32_t* words, const int64_t* n,
                   const T* g, int64_t U, T* dwt) {
  for (int64_t b = 0; b < B; ++b) {
    const T* gb = g + b * U;
    for (int64_t i = 0; i < n[b]; ++i) {
      T* d = dwt + int64_t(words[b * L + i]) * U;
      int64_t u0 = 0;
      for (; u0 + kLanes <= U; u0 += kLanes) st(d + u0, ld(d + u0) + ld(gb + u0));
      for (; u0 < U; ++u0) d[u0] += gb[u0];
    }
  }
}

// ================================================================= 1-D convolutions
// kPoolNoGrad marks a pooling window the gradient does not reach.
constexpr uint8_t kPoolNoGrad = 255;

// conv_gru's front in the kernels' layout, one block of kLanes sequences: x (F, T, Bp) ->
// out (C, Tp, Bp) and idx (C, Tp, Bp) uint8, where y[c][t] = b[c] + sum over (f, k) of
// w[c][f][k] x[f][t + k] for t < T1 = T - K + 1 (Keras' "valid"; the sum in one order,
// product_cols's), then ReLU and max-pooling over windows of P (floor mode; P = 1: ReLU
// alone): out[c][j] = max(0, max over p of y[c][j P + p]), idx the window position its
// gradient goes to (the first holding a positive maximum; a NaN wins its window, the last
// NaN, as PyTorch's ReLU then max_pool1d) or kPoolNoGrad when none does.
// wp: w as (C, F * K) (column f * K + k) packed by pack_rows in tiles of 8; xs (F * K),
// os (C), best (C) and the position vectors at, nan_at (C) are the caller's scratch.
template <typename T>
void conv_forward_block(int64_t b0, int64_t Bp, int64_t F, int64_t steps, int64_t C,
                        int64_t K, int64_t P, const T* x, const T* wp, const T* bias, T* out,
                        uint8_t* idx, V<T>* xs, V<T>* os, V<T>* best,
                        typename LaneIndex<T>::v* at, typename LaneIndex<T>::v* nan_at) {
  typedef typename LaneIndex<T>::v M;
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> E;   // M's elements
  const int64_t T1 = steps - K + 1, Tp = T1 / P, sF = steps * Bp;
  const M none = M{} - 1;
  for (int64_t j = 0; j < Tp; ++j) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t t = j * P + p;
      for (int64_t f = 0; f < F; ++f)
        for (int64_t k = 0; k < K; ++k) xs[f * K + k] = ld(x + f * sF + (t + k) * Bp + b0);
      if (t + 1 < T1) prefetch_step(x + (t + K) * Bp + b0, F, sF, false);
      rows_product<T, 8>(wp, C, F * K, xs, os);
      const M pos = M{} + static_cast<E>(p);
      for (int64_t c = 0; c < C; ++c) {
        const V<T> y = bias ? os[c] + bias[c] : os[c];
        const M nan = y != y;
        if (p == 0) {
          best[c] = y;
          at[c] = M{};
          nan_at[c] = nan ? M{} : none;
        } else {
          const M take = y > best[c];
          best[c] = take ? y : best[c];
          at[c] = take ? pos : at[c];
          nan_at[c] = nan ? pos : nan_at[c];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const M nan = nan_at[c] >= 0, flows = best[c] > V<T>{};
      const V<T> o = nan ? splat<T>(std::numeric_limits<T>::quiet_NaN())
                         : (flows ? best[c] : V<T>{});
      const M i = nan ? nan_at[c] : (flows ? at[c] : M{} + kPoolNoGrad);
      st(out + (c * Tp + j) * Bp + b0, o);
      uint8_t* d = idx + (c * Tp + j) * Bp + b0;
      for (int l = 0; l < kLanes; ++l) d[l] = static_cast<uint8_t>(i[l]);
    }
  }
}

// Its backward for the block, from g (C, Tp, Bp) and idx: dy (C * T1 vectors, the caller's
// scratch) gets each window's gradient at the position idx names; then per lane, over t in
// order, dwl[c][f * K + k] += dy[c][t] x[f][t + k] and dbl[c] += dy[c][t] (GT x KT register
// tiles), and when dx is wanted, dx[f][t] = sum over (c, k) of w[c][f][k] dy[c][t - k]
// (wqp: w as (F, C * K), column c * K + k, packed in tiles of 8; ys (C * K), os (F)).
// The block's partials of dw and db go to part.
template <typename T, int GT, int KT>
inline void conv_grad_tile(const V<T>* dy, int64_t T1, const T* x, int64_t sF, int64_t Bp,
                           int64_t b0, int64_t K, int64_t FK, int64_t c0, int64_t q0,
                           V<T>* dwl) {
  V<T> acc[GT][KT] = {};
  const T* xr[KT];
  for (int b = 0; b < KT; ++b) {
    const int64_t f = (q0 + b) / K, k = (q0 + b) % K;
    xr[b] = x + f * sF + k * Bp + b0;
  }
  for (int64_t t = 0; t < T1; ++t) {
    V<T> xv[KT];
    for (int b = 0; b < KT; ++b) xv[b] = ld(xr[b] + t * Bp);
    for (int a = 0; a < GT; ++a) {
      const V<T> d = dy[(c0 + a) * T1 + t];
      for (int b = 0; b < KT; ++b) acc[a][b] += d * xv[b];
    }
  }
  for (int a = 0; a < GT; ++a)
    for (int b = 0; b < KT; ++b) dwl[(c0 + a) * FK + q0 + b] = acc[a][b];
}

template <typename T>
void conv_backward_block(int64_t b0, int64_t Bp, int64_t F, int64_t steps, int64_t C,
                         int64_t K, int64_t P, const T* x, const T* wqp, const T* g,
                         const uint8_t* idx, T* dx, V<T>* dy, V<T>* dwl, V<T>* dbl, V<T>* ys,
                         V<T>* os, T* part) {
  typedef typename LaneIndex<T>::v M;
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> E;   // M's elements
  const int64_t T1 = steps - K + 1, Tp = T1 / P, sF = steps * Bp, FK = F * K;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < Tp; ++j) {
      const V<T> gv = ld(g + (c * Tp + j) * Bp + b0);
      const uint8_t* ip = idx + (c * Tp + j) * Bp + b0;
      M iv;
      for (int l = 0; l < kLanes; ++l) iv[l] = ip[l];
      for (int64_t p = 0; p < P; ++p)
        dy[c * T1 + j * P + p] = iv == static_cast<E>(p) ? gv : V<T>{};
    }
    for (int64_t t = Tp * P; t < T1; ++t) dy[c * T1 + t] = V<T>{};
    V<T> s = {};
    for (int64_t t = 0; t < T1; ++t) s += dy[c * T1 + t];
    dbl[c] = s;
  }
  int64_t c0 = 0;
  for (; c0 + 4 <= C; c0 += 4) {
    int64_t q = 0;
    for (; q + 4 <= FK; q += 4)
      conv_grad_tile<T, 4, 4>(dy, T1, x, sF, Bp, b0, K, FK, c0, q, dwl);
    for (; q < FK; ++q) conv_grad_tile<T, 4, 1>(dy, T1, x, sF, Bp, b0, K, FK, c0, q, dwl);
  }
  for (; c0 < C; ++c0)
    for (int64_t q = 0; q < FK; ++q)
      conv_grad_tile<T, 1, 1>(dy, T1, x, sF, Bp, b0, K, FK, c0, q, dwl);
  // The block's partials, part (C * F * K + C: dw, then db), summed across the lanes here
  // (a vector passed to code outside this instruction set's target changes its ABI).
  for (int64_t q = 0; q < C * FK; ++q) part[q] = lane_sum<T>(dwl[q]);
  for (int64_t c = 0; c < C; ++c) part[C * FK + c] = lane_sum<T>(dbl[c]);
  if (!dx) return;
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k)
        ys[c * K + k] = t - k >= 0 && t - k < T1 ? dy[c * T1 + t - k] : V<T>{};
    rows_product<T, 8>(wqp, F, C * K, ys, os);
    for (int64_t f = 0; f < F; ++f) st(dx + f * sF + t * Bp + b0, os[f]);
  }
}

// ================================================================= a dense layer, row-major
// y (R, N) = x (R, K) @ W^T + b, from wt = W^T (K, N) (and a bias padded to whole vectors):
// a tile of RB rows by NT vectors of outputs stays in registers over k, and each x[r][k]
// is broadcast to the NT vectors of wt's row k. Each output starts at its bias and adds
// its K products in order, on one thread. Past N, a row's last vector reads into the next
// row (wt is allocated kLanes longer) and those lanes are never stored.
template <typename T, int RB, int NT>
inline void dense_tile(const T* __restrict__ x, int64_t K, const T* __restrict__ wt, int64_t N,
                       int64_t n0, const T* __restrict__ bias, T* __restrict__ y) {
  V<T> acc[RB][NT];
  for (int j = 0; j < NT; ++j) {
    const V<T> b0 = bias ? ld(bias + n0 + j * kLanes) : V<T>{};
    for (int r = 0; r < RB; ++r) acc[r][j] = b0;
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    V<T> w[NT];
    for (int j = 0; j < NT; ++j) w[j] = ld(wt + k * N + n0 + j * kLanes);
    for (int r = 0; r < RB; ++r) {
      const V<T> xr = splat(x[r * K + k]);
      for (int j = 0; j < NT; ++j) acc[r][j] += xr * w[j];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < NT; ++j) {
      const int64_t c = n0 + j * kLanes;
      if (c + kLanes <= N) {
        st(y + r * N + c, acc[r][j]);
      } else {
        T lanes[kLanes];
        st(lanes, acc[r][j]);
        for (int64_t l = 0; c + l < N; ++l) y[r * N + c + l] = lanes[l];
      }
    }
}
// Rows r0 .. r0 + rows - 1 of y, every column.
template <typename T>
void dense_rows(const T* x, int64_t rows, int64_t K, const T* wt, int64_t N, const T* bias,
                T* y) {
  constexpr int RB = kRegs >= 32 ? 8 : 4, NT = 2;
  const int64_t nvec = (N + kLanes - 1) / kLanes;
  int64_t r = 0;
  for (; r + RB <= rows; r += RB) {
    int64_t v = 0;
    for (; v + NT <= nvec; v += NT)
      dense_tile<T, RB, NT>(x + r * K, K, wt, N, v * kLanes, bias, y + r * N);
    for (; v < nvec; ++v) dense_tile<T, RB, 1>(x + r * K, K, wt, N, v * kLanes, bias, y + r * N);
  }
  for (; r < rows; ++r)
    for (int64_t v = 0; v < nvec; ++v)
      dense_tile<T, 1, 1>(x + r * K, K, wt, N, v * kLanes, bias, y + r * N);
}

// Its weight gradient dW (N, K) = g^T x for g (R, N): a tile of NB rows of dW by KT vectors
// of k in registers over the R rows, each g[r][n] broadcast; every value adds the rows in
// order. Columns k0 .. k0 + KT * kLanes - 1 (whole vectors; dense_grad_cols does the rest).
template <typename T, int NB, int KT>
inline void dense_grad_tile(const T* __restrict__ g, int64_t N, const T* __restrict__ x,
                            int64_t K, int64_t R, int64_t n0, int64_t k0, T* __restrict__ dw) {
  V<T> acc[NB][KT] = {};
  for (int64_t r = 0; r < R; ++r) {
    V<T> xs[KT];
    for (int j = 0; j < KT; ++j) xs[j] = ld(x + r * K + k0 + j * kLanes);
    for (int a = 0; a < NB; ++a) {
      const V<T> ga = splat(g[r * N + n0 + a]);
      for (int j = 0; j < KT; ++j) acc[a][j] += ga * xs[j];
    }
  }
  for (int a = 0; a < NB; ++a)
    for (int j = 0; j < KT; ++j) st(dw + (n0 + a) * K + k0 + j * kLanes, acc[a][j]);
}
// Columns k0 .. k1 - 1 of dW, every row: whole vectors in tiles, the last columns one by one.
template <typename T>
void dense_grad_cols(const T* g, int64_t N, const T* x, int64_t K, int64_t R, int64_t k0,
                     int64_t k1, T* dw) {
  constexpr int NB = kRegs >= 32 ? 8 : 4, KT = kRegs >= 32 ? 3 : 2;
  int64_t k = k0;
  for (; k + KT * kLanes <= k1; k += KT * kLanes) {
    int64_t n = 0;
    for (; n + NB <= N; n += NB) dense_grad_tile<T, NB, KT>(g, N, x, K, R, n, k, dw);
    for (; n < N; ++n) dense_grad_tile<T, 1, KT>(g, N, x, K, R, n, k, dw);
  }
  for (; k + kLanes <= k1; k += kLanes) {
    int64_t n = 0;
    for (; n + NB <= N; n += NB) dense_grad_tile<T, NB, 1>(g, N, x, K, R, n, k, dw);
    for (; n < N; ++n) dense_grad_tile<T, 1, 1>(g, N, x, K, R, n, k, dw);
  }
  for (; k < k1; ++k)
    for (int64_t n = 0; n < N; ++n) {
      T s = 0;
      for (int64_t r = 0; r < R; ++r) s += g[r * N + n] * x[r * K + k];
      dw[n * K + k] = s;
    }
}

// ================================================================= RMSprop's update
// One pass over a parameter: v = alpha v + (1 - alpha) g^2, then p += -lr g / (sqrt(v) +
// eps) (keras2) or -lr g / sqrt(v + eps) (keras3), in the order of torch's foreach ops.
// Every operation is rounded on its own (no contraction into FMAs) and sqrt is the IEEE
// one, so each instruction set and each split between threads gives the same bits: those
// of the same float operations in numpy.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
template <typename T, bool kKeras3>
void rmsprop_part(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, int64_t n,
                  T alpha, T rest, T eps, T step) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    const T vi = v[i] * alpha + rest * gi * gi;
    v[i] = vi;
    T d;
    if constexpr (std::is_same<T, float>::value)
      d = kKeras3 ? __builtin_sqrtf(vi + eps) : __builtin_sqrtf(vi) + eps;
    else
      d = kKeras3 ? __builtin_sqrt(vi + eps) : __builtin_sqrt(vi) + eps;
    p[i] = p[i] + step * gi / d;
  }
}
#pragma GCC pop_options

// ================================================================= dispatch on H
// The lecture's hidden sizes get a compile-time H (fixed trip counts, unrolled tiles).
#define RNNLAB_LANES_H(H, CALL)                      \
  switch (H) {                                       \
    case 16: { constexpr int HC = 16; CALL; break; } \
    case 32: { constexpr int HC = 32; CALL; break; } \
    case 64: { constexpr int HC = 64; CALL; break; } \
    default: { constexpr int HC = 0; CALL; break; }  \
  }

// Runs f(source) with a forward's step source: the table route's rows or x's projections
// (with the block's scratch for a step's G vectors) where a table or x is given, else gi.
// Each source is its own instantiation of f.
template <typename T, typename F>
void with_steps(const StepSource<T>& src, int64_t G, int64_t steps, int64_t Bp, int64_t b0,
                F&& f) {
  if (src.table) {
    LaneBuf<T> buf(G);
    f(TableSteps<T>{src.table, src.ids, reinterpret_cast<T*>(buf.data()), Bp, b0});
  } else if (src.x) {
    LaneBuf<T> buf(G), xs(src.I);
    f(XSteps<T>{src.x, src.wihp, src.bih, xs.data(), buf.data(), src.I, Bp, b0, steps * Bp});
  } else {
    f(GiSteps<T>{src.gi, Bp, b0, steps * Bp});
  }
}

template <typename T>
void gru_forward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H,
                       const StepSource<T>& src,
                       const T* w, const T* bhh, const T* mask, bool relu, T* out, T* gates,
                       T* last) {
  with_steps<T>(src, 3 * H, steps, Bp, b0, [&](auto in) {
    RNNLAB_LANES_H(H, (gru_forward<T, HC>(in, b0, steps, Bp, H, w, bhh, mask, relu, out, gates,
                                          last)))
  });
}
template <typename T>
void gru_backward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H, const T* grad,
                        bool seq, const T* wt, const T* mask, const T* out, const T* gates,
                        bool relu, T* dgi, T* dw, T* db, const InputGrad<T>& ig) {
  RNNLAB_LANES_H(H, (gru_backward<T, HC>(b0, steps, Bp, H, grad, seq, wt, mask, out, gates,
                                         relu, dgi, dw, db, ig)))
}
template <typename T>
void lstm_forward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H,
                        const StepSource<T>& src,
                        const T* w, const T* bhh, const T* mask, T* out, T* gates, T* cells,
                        T* last) {
  with_steps<T>(src, 4 * H, steps, Bp, b0, [&](auto in) {
    RNNLAB_LANES_H(H, (lstm_forward<T, HC>(in, b0, steps, Bp, H, w, bhh, mask, out, gates,
                                           cells, last)))
  });
}
template <typename T>
void lstm_backward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H, const T* grad,
                         bool seq, const T* wt, const T* mask, const T* out, const T* gates,
                         const T* cells, T* dgi, T* dw, T* db, const InputGrad<T>& ig) {
  RNNLAB_LANES_H(H, (lstm_backward<T, HC>(b0, steps, Bp, H, grad, seq, wt, mask, out, gates,
                                          cells, dgi, dw, db, ig)))
}
template <typename T>
void rnn_forward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H,
                       const StepSource<T>& src,
                       const T* w, const T* bhh, const T* mask, bool relu, T* out, T* last) {
  with_steps<T>(src, H, steps, Bp, b0, [&](auto in) {
    RNNLAB_LANES_H(H, (rnn_forward<T, HC>(in, b0, steps, Bp, H, w, bhh, mask, relu, out, last)))
  });
}
template <typename T>
void rnn_backward_block(int64_t b0, int64_t steps, int64_t Bp, int64_t H, const T* grad,
                        bool seq, const T* wt, const T* mask, const T* out, bool relu, T* dgi,
                        T* dw, T* db, const InputGrad<T>& ig) {
  RNNLAB_LANES_H(H, (rnn_backward<T, HC>(b0, steps, Bp, H, grad, seq, wt, mask, out, relu,
                                         dgi, dw, db, ig)))
}
#undef RNNLAB_LANES_H
