// Fused CPU recurrences (GRU, LSTM, Elman RNN): forward and backward each run the whole
// time loop here, so there is no framework dispatch per time step.
//
// The batch lies across the SIMD lanes (lane_kernels.h): a block is one vector's worth of
// sequences (16 with AVX-512, 8 with AVX2, 4 portable), and at::parallel_for hands blocks
// to threads; every block runs the whole time loop for its sequences. No barrier per
// step, and because a block's arithmetic does not depend on which thread runs it, the
// results are bit-identical for any torch.get_num_threads(). dW_hh and db_hh are summed per
// block and the block partials are added in block order afterwards.
//
// The instruction set is chosen at run time (the CPU's best, or set_isa): the kernels are
// compiled three times below, each under its own target, so one build serves any x86-64.
//
// Gate layouts are PyTorch's: GRU (r, z, n) "reset after", LSTM (i, f, g, o).
// Tensors are feature-major: gi (G*H, T, Bp) input projections including bias_ih, out
// (H, T, Bp), w_hh (G*H, H), b_hh (G*H,), mask (H, Bp) or None (the recurrent dropout mask,
// applied to h before W_hh). Bp, the padded batch, is a multiple of 16.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>
#include <xmmintrin.h>
#define RNNLAB_HAS_MXCSR 1
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define RNNLAB_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi2")
namespace rnnlab {
namespace avx512 {
constexpr int kLanes = 16, kRegs = 32;
#define RNNLAB_LANES_AVX512 1
#include "lane_kernels.h"
#undef RNNLAB_LANES_AVX512
}  // namespace avx512
}  // namespace rnnlab
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
namespace rnnlab {
namespace avx2 {
constexpr int kLanes = 8, kRegs = 16;
#define RNNLAB_LANES_AVX2 1
#include "lane_kernels.h"
#undef RNNLAB_LANES_AVX2
}  // namespace avx2
}  // namespace rnnlab
#pragma GCC pop_options
#endif
namespace rnnlab {
namespace portable {
constexpr int kLanes = 4, kRegs = 16;
#include "lane_kernels.h"
}  // namespace portable
}  // namespace rnnlab

namespace {

// ---------------------------------------------------------------- instruction sets
enum Isa : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"portable", "avx2", "avx512"};
constexpr int64_t kIsaLanes[] = {4, 8, 16};
constexpr int64_t kBatchMultiple = 16;   // every ISA's lane count divides it

int64_t best_isa() {
#ifdef RNNLAB_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kPortable;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (int64_t i = best_isa(); i >= 0; --i) names.push_back(kIsaNames[i]);
  return names;
}

int64_t isa_code(const std::string& name) {
  for (int64_t i = 0; i <= best_isa(); ++i)
    if (name == kIsaNames[i]) return i;
  std::string known;
  for (const auto& n : supported_isas()) known += (known.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "instruction set '", name, "' is not one this CPU runs: choose ", known);
  return kPortable;
}

// The last instruction set a kernel ran with (tests check that a forced one really ran).
std::atomic<int64_t> g_last_isa{-1};
int64_t last_isa() { return g_last_isa.load(); }

// The ISA a forward runs with is passed back to its backward (the saved gates are laid
// out for its lanes).
#ifdef RNNLAB_X86
#define RNNLAB_WITH_ISA(ISA, BODY)                                     \
  switch (ISA) {                                                       \
    case kAvx512: { using namespace rnnlab::avx512; BODY; break; }      \
    case kAvx2: { using namespace rnnlab::avx2; BODY; break; }          \
    default: { using namespace rnnlab::portable; BODY; break; }        \
  }
#else
#define RNNLAB_WITH_ISA(ISA, BODY) \
  { using namespace rnnlab::portable; BODY; }
#endif

// ---------------------------------------------------------------- blocks and threads
// Blocks are handed out dynamically (an atomic counter), so when another process holds a
// core the thread sharing it simply takes fewer blocks instead of stalling the others.
// Which thread runs a block never changes its arithmetic, so results stay bit-identical.
//
// The caller's floating-point mode travels with the work: torch.set_flush_denormal(True)
// (which the training engine sets) only changes the calling thread's MXCSR, and the worker
// threads would otherwise crawl through denormals (vanishing gradients reach them: a GRU
// epoch measured 3x slower without this).
template <typename F>
inline void for_blocks(int64_t nblk, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nblk));
#ifdef RNNLAB_HAS_MXCSR
  const unsigned int caller_csr = _mm_getcsr();
#endif
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
#ifdef RNNLAB_HAS_MXCSR
    const unsigned int own_csr = _mm_getcsr();
    _mm_setcsr(caller_csr);
#endif
    for (int64_t i = next.fetch_add(1); i < nblk; i = next.fetch_add(1)) f(i);
#ifdef RNNLAB_HAS_MXCSR
    _mm_setcsr(own_csr);
#endif
  });
}

// Adds the per-block partials (nblk, n) in block order into out (n).
template <typename T>
inline void reduce_blocks(const T* part, int64_t nblk, int64_t n, T* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = part[j];
  for (int64_t i = 1; i < nblk; ++i)
    for (int64_t j = 0; j < n; ++j) out[j] += part[i * n + j];
}

// The same, the n sums dealt out to the outputs in turn (each takes its numel values).
template <typename T>
void reduce_blocks_to(const T* part, int64_t nblk, int64_t n,
                      std::initializer_list<at::Tensor> outs) {
  std::vector<T> sum(n);
  reduce_blocks(part, nblk, n, sum.data());
  const T* s = sum.data();
  for (const at::Tensor& t : outs) {
    std::copy(s, s + t.numel(), t.data_ptr<T>());
    s += t.numel();
  }
}

template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& m) {
  return m ? m->data_ptr<T>() : nullptr;
}

std::optional<at::Tensor> contiguous_mask(const std::optional<at::Tensor>& m) {
  if (m.has_value() && m->defined()) return m->contiguous();
  return std::nullopt;
}

// The token ids of a table route's order (int64, contiguous), each checked to be a row of
// a table of V rows.
const int64_t* checked_ids(const at::Tensor& order, int64_t V) {
  const int64_t* ids = order.data_ptr<int64_t>();
  for (int64_t n = 0; n < order.numel(); ++n)
    TORCH_CHECK(ids[n] >= 0 && ids[n] < V, "token id ", ids[n], " outside the table's ", V,
                " rows");
  return ids;
}

// A forward's inputs, checked: gi (G*H, T, Bp), w_hh (G*H, H), b_hh (G*H), mask (H, Bp).
// On the table route (order given) gi is a projected embedding table P (V, G*H) and step
// t's projections are the rows P[order[t * Bp + b]] (order: steps * Bp token ids,
// time-major), gathered by the kernels step by step.
// With w_ih given, gi is the layer's input x (I, T, Bp) and the kernels project each step
// themselves (w_ih (G*H, I), b_ih (G*H) or None).
struct ForwardInputs {
  at::Tensor gi, w, b, order, wih, bih;
  std::optional<at::Tensor> mask;
  const int64_t* ids = nullptr;
  int64_t T, B, H, isa, nblk, I = 0;
  ForwardInputs(const at::Tensor& gi_, const at::Tensor& w_hh, const at::Tensor& b_hh,
                const std::optional<at::Tensor>& mask_, int64_t gates, int64_t isa_,
                const std::optional<at::Tensor>& order_, int64_t steps,
                const std::optional<at::Tensor>& w_ih = std::nullopt,
                const std::optional<at::Tensor>& b_ih = std::nullopt)
      : isa(isa_) {
    TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
    g_last_isa = isa;
    TORCH_CHECK(gi_.device().is_cpu() && w_hh.device().is_cpu() && b_hh.device().is_cpu(),
                "fused recurrences run on CPU tensors only");
    const bool table = order_.has_value() && order_->defined();
    H = w_hh.size(1);
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * H, "w_hh must be (", gates,
                "*H, H)");
    if (table) {
      TORCH_CHECK(gi_.dim() == 2 && gi_.size(1) == gates * H, "the table must be (V, ", gates,
                  "*H = ", gates * H, ")");
      TORCH_CHECK(steps > 0 && order_->numel() % steps == 0,
                  "order must hold steps * Bp token ids");
      T = steps;
      B = order_->numel() / steps;
    } else if (w_ih.has_value() && w_ih->defined()) {
      TORCH_CHECK(gi_.dim() == 3, "x must be (I, T, Bp)");
      I = gi_.size(0);
      TORCH_CHECK(w_ih->dim() == 2 && w_ih->size(0) == gates * H && w_ih->size(1) == I,
                  "w_ih must be (", gates, "*H, I) = (", gates * H, ", ", I, ")");
      TORCH_CHECK(w_ih->scalar_type() == gi_.scalar_type() && w_ih->device().is_cpu(),
                  "w_ih must be a CPU tensor of x's dtype");
      wih = w_ih->contiguous();
      if (b_ih.has_value() && b_ih->defined()) {
        TORCH_CHECK(b_ih->numel() == gates * H && b_ih->scalar_type() == gi_.scalar_type() &&
                        b_ih->device().is_cpu(),
                    "b_ih must hold ", gates, "*H values of x's dtype");
        bih = b_ih->contiguous();
      }
      T = gi_.size(1);
      B = gi_.size(2);
    } else {
      TORCH_CHECK(gi_.dim() == 3, "gi must be (G*H, T, Bp)");
      TORCH_CHECK(gi_.size(0) == gates * H, "gi's first dim must be ", gates, "*H = ",
                  gates * H);
      T = gi_.size(1);
      B = gi_.size(2);
    }
    TORCH_CHECK(b_hh.numel() == gates * H, "b_hh must have ", gates, "*H elements");
    TORCH_CHECK(gi_.scalar_type() == w_hh.scalar_type() &&
                    gi_.scalar_type() == b_hh.scalar_type(),
                "gi, w_hh and b_hh must share a dtype");
    TORCH_CHECK(T > 0, "need at least one time step");
    TORCH_CHECK(B % kBatchMultiple == 0, "the batch (", B, ") must be padded to a multiple of ",
                kBatchMultiple);
    if (mask_.has_value() && mask_->defined()) {
      TORCH_CHECK(mask_->dim() == 2 && mask_->size(0) == H && mask_->size(1) == B,
                  "mask_h must be (H, Bp)");
      TORCH_CHECK(mask_->scalar_type() == gi_.scalar_type(), "mask_h must have gi's dtype");
      TORCH_CHECK(mask_->device().is_cpu(), "mask_h must be a CPU tensor");
    }
    gi = gi_.contiguous();
    w = w_hh.contiguous();
    b = b_hh.contiguous();
    mask = contiguous_mask(mask_);
    if (table) {
      order = order_->to(at::kLong).contiguous();
      ids = checked_ids(order, gi.size(0));
    }
    nblk = B / kIsaLanes[isa];
  }
  template <typename S> const S* p(const at::Tensor& t) const { return t.data_ptr<S>(); }
  // The kernels' step source: gi, the table and its ids, or x and W_ih (packed here into
  // wihp) and b_ih (step_source builds the instruction set's StepSource from them).
  template <typename S> const S* gi_p() const { return ids || wih.defined() ? nullptr : p<S>(gi); }
  template <typename S> const S* table_p() const { return ids ? p<S>(gi) : nullptr; }
  template <typename S> const S* x_p() const { return wih.defined() ? p<S>(gi) : nullptr; }
  template <typename S> const S* wih_p() const { return wih.defined() ? p<S>(wih) : nullptr; }
  template <typename S> const S* bih_p() const { return bih.defined() ? p<S>(bih) : nullptr; }
  at::Tensor block_store(int64_t width) const {   // (nblk, T, width, lanes)
    return at::empty({nblk, T, width, kIsaLanes[isa]}, gi.options());
  }
};

// Training forwards return every h (H, T, Bp) and the saved gates; inference ones (no
// saved gates, no (T, .) stores) return every h or only the last (H, Bp).
std::vector<at::Tensor> gru_forward(const at::Tensor& gi_, const at::Tensor& w_hh,
                                    const at::Tensor& b_hh,
                                    const std::optional<at::Tensor>& mask_, bool relu,
                                    bool train, bool return_sequences, int64_t isa,
                                    const std::optional<at::Tensor>& order, int64_t steps,
                                    const std::optional<at::Tensor>& w_ih,
                                    const std::optional<at::Tensor>& b_ih) {
  const ForwardInputs in(gi_, w_hh, b_hh, mask_, 3, isa, order, steps, w_ih, b_ih);
  const bool seq = train || return_sequences;
  auto out = at::empty(seq ? at::IntArrayRef{in.H, in.T, in.B} : at::IntArrayRef{in.H, in.B},
                       in.gi.options());
  auto gates = train ? in.block_store(4 * in.H) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "gru_forward", [&] {
    std::vector<scalar_t> wihp;
    RNNLAB_WITH_ISA(isa, ([&] {
      const auto src = step_source<scalar_t>(in, 3 * in.H, wihp);
      for_blocks(in.nblk, [&](int64_t i) {
        gru_forward_block<scalar_t>(
            i * kLanes, in.T, in.B, in.H, src, in.p<scalar_t>(in.w),
            in.p<scalar_t>(in.b), opt_ptr<scalar_t>(in.mask), relu,
            seq ? out.data_ptr<scalar_t>() : nullptr,
            train ? gates.data_ptr<scalar_t>() + i * in.T * 4 * in.H * kLanes : nullptr,
            seq ? nullptr : out.data_ptr<scalar_t>());
      });
    })())
  });
  return train ? std::vector<at::Tensor>{out, gates} : std::vector<at::Tensor>{out};
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& gi_, const at::Tensor& w_hh,
                                     const at::Tensor& b_hh,
                                     const std::optional<at::Tensor>& mask_, bool train,
                                     bool return_sequences, int64_t isa,
                                     const std::optional<at::Tensor>& order, int64_t steps,
                                     const std::optional<at::Tensor>& w_ih,
                                     const std::optional<at::Tensor>& b_ih) {
  const ForwardInputs in(gi_, w_hh, b_hh, mask_, 4, isa, order, steps, w_ih, b_ih);
  const bool seq = train || return_sequences;
  auto out = at::empty(seq ? at::IntArrayRef{in.H, in.T, in.B} : at::IntArrayRef{in.H, in.B},
                       in.gi.options());
  auto gates = train ? in.block_store(4 * in.H) : at::Tensor();
  auto cells = train ? in.block_store(2 * in.H) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "lstm_forward", [&] {
    std::vector<scalar_t> wihp;
    RNNLAB_WITH_ISA(isa, ([&] {
      const auto src = step_source<scalar_t>(in, 4 * in.H, wihp);
      for_blocks(in.nblk, [&](int64_t i) {
        lstm_forward_block<scalar_t>(
            i * kLanes, in.T, in.B, in.H, src, in.p<scalar_t>(in.w),
            in.p<scalar_t>(in.b), opt_ptr<scalar_t>(in.mask),
            seq ? out.data_ptr<scalar_t>() : nullptr,
            train ? gates.data_ptr<scalar_t>() + i * in.T * 4 * in.H * kLanes : nullptr,
            train ? cells.data_ptr<scalar_t>() + i * in.T * 2 * in.H * kLanes : nullptr,
            seq ? nullptr : out.data_ptr<scalar_t>());
      });
    })())
  });
  return train ? std::vector<at::Tensor>{out, gates, cells} : std::vector<at::Tensor>{out};
}

std::vector<at::Tensor> rnn_forward(const at::Tensor& gi_, const at::Tensor& w_hh,
                                    const at::Tensor& b_hh,
                                    const std::optional<at::Tensor>& mask_, bool relu,
                                    bool train, bool return_sequences, int64_t isa,
                                    const std::optional<at::Tensor>& order, int64_t steps,
                                    const std::optional<at::Tensor>& w_ih,
                                    const std::optional<at::Tensor>& b_ih) {
  const ForwardInputs in(gi_, w_hh, b_hh, mask_, 1, isa, order, steps, w_ih, b_ih);
  const bool seq = train || return_sequences;
  auto out = at::empty(seq ? at::IntArrayRef{in.H, in.T, in.B} : at::IntArrayRef{in.H, in.B},
                       in.gi.options());
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "rnn_forward", [&] {
    std::vector<scalar_t> wihp;
    RNNLAB_WITH_ISA(isa, ([&] {
      const auto src = step_source<scalar_t>(in, in.H, wihp);
      for_blocks(in.nblk, [&](int64_t i) {
        rnn_forward_block<scalar_t>(
            i * kLanes, in.T, in.B, in.H, src, in.p<scalar_t>(in.w),
            in.p<scalar_t>(in.b), opt_ptr<scalar_t>(in.mask), relu,
            seq ? out.data_ptr<scalar_t>() : nullptr, seq ? nullptr : out.data_ptr<scalar_t>());
      });
    })())
  });
  return {out};
}

// ---------------------------------------------------------------- backward
// Runs `block` on every block and adds the per-block partials in block order. grad: (H, T,
// Bp) when return_sequences, else (H, Bp). Without x: returns [dgi (blocks, T, G, lanes),
// dw_hh, db_hh]. With the layer's input x (I, T, Bp) and w_ih (G, I), the input side's
// gradients come from the same loop (no dgi): [dx (I, T, Bp) or an empty tensor when
// need_dx is false, dw_ih, db_ih, dw_hh, db_hh].
struct BackwardInputs {
  at::Tensor grad, wt, out, x, wih;
  std::optional<at::Tensor> mask;
  int64_t T, B, H, G, isa, nblk, I = 0;
  bool need_dx = false;
  BackwardInputs(const at::Tensor& grad_, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& mask_, const at::Tensor& out_,
                 bool return_sequences, int64_t isa_,
                 const std::optional<at::Tensor>& x_ = std::nullopt,
                 const std::optional<at::Tensor>& w_ih = std::nullopt, bool need_dx_ = false)
      : isa(isa_) {
    TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
    g_last_isa = isa;
    out = out_.contiguous();
    T = out.size(1);
    B = out.size(2);
    H = out.size(0);
    G = w_hh.size(0);
    grad = grad_.contiguous();
    TORCH_CHECK(return_sequences ? grad.sizes() == out.sizes()
                                 : (grad.dim() == 2 && grad.size(0) == H && grad.size(1) == B),
                "grad must be (H, T, Bp) or (H, Bp)");
    wt = w_hh.t().contiguous();   // (H, G)
    mask = contiguous_mask(mask_);
    nblk = B / kIsaLanes[isa];
    if (x_.has_value() && x_->defined()) {
      TORCH_CHECK(w_ih.has_value() && w_ih->defined(), "x needs its w_ih");
      TORCH_CHECK(x_->dim() == 3 && x_->size(1) == T && x_->size(2) == B,
                  "x must be (I, T, Bp) = (I, ", T, ", ", B, ")");
      I = x_->size(0);
      TORCH_CHECK(w_ih->dim() == 2 && w_ih->size(0) == G && w_ih->size(1) == I,
                  "w_ih must be (G, I) = (", G, ", ", I, ")");
      TORCH_CHECK(x_->scalar_type() == out.scalar_type() &&
                      w_ih->scalar_type() == out.scalar_type(),
                  "x and w_ih must have the states' dtype");
      x = x_->contiguous();
      wih = w_ih->contiguous();
      need_dx = need_dx_;
    }
  }
  // block(zero, i, dgi or nullptr, dw_hh, db_hh, x, W_ih^T packed, dx, dw_ih, db_ih): the
  // block's pointers (the input side's null where there is none).
  template <typename F>
  std::vector<at::Tensor> run(const F& block) const {
    const bool inside = x.defined();
    auto dgi = inside ? at::Tensor()
                      : at::empty({nblk, T, G, kIsaLanes[isa]}, out.options());  // block-major
    auto dx = inside && need_dx ? at::empty({I, T, B}, out.options()) : at::Tensor();
    auto dw_part = at::empty({nblk, G * H + G + G * I + (inside ? G : 0)}, out.options());
    auto dw = at::empty({G, H}, out.options());
    auto db = at::empty({G}, out.options());
    auto dwi = at::empty({G, I}, out.options());
    auto dbi = at::empty({inside ? G : 0}, out.options());
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "recurrence_backward", [&] {
      const int64_t n = dw_part.size(1);
      scalar_t* part = dw_part.data_ptr<scalar_t>();
      scalar_t* pdgi = inside ? nullptr : dgi.data_ptr<scalar_t>();
      std::vector<scalar_t> wihtp;
      if (inside) {   // W_ih^T (I x G) packed in tiles of 8
        auto wiht = wih.t().contiguous();
        wihtp.resize(I * G);
        rnnlab::portable::pack_rows(wiht.data_ptr<scalar_t>(), 1, I, G, 8, wihtp.data());
      }
      for_blocks(nblk, [&](int64_t i) {
        scalar_t* pb = part + i * n;
        block(scalar_t(0), i, pdgi ? pdgi + i * T * G * kIsaLanes[isa] : nullptr, pb,
              pb + G * H, inside ? x.data_ptr<scalar_t>() : nullptr, wihtp.data(),
              dx.defined() ? dx.data_ptr<scalar_t>() : nullptr, pb + G * H + G,
              pb + G * H + G + G * I);
      });
      reduce_blocks_to<scalar_t>(part, nblk, n, {dw, db, dwi, dbi});
    });
    if (inside) return {dx.defined() ? dx : at::empty({0}, out.options()), dwi, dbi, dw, db};
    return {dgi, dw, db};
  }
  template <typename S> const S* p(const at::Tensor& t) const { return t.data_ptr<S>(); }
};

// The input side of one block, in the instruction set's InputGrad (used inside
// RNNLAB_WITH_ISA, where InputGrad names that set's type).
#define RNNLAB_INPUT_GRAD(SCALAR)                                          \
  InputGrad<SCALAR> { px, in.I, pwiht, pdx, pdwi, pdbi }

void check_store(const at::Tensor& s, const BackwardInputs& in, int64_t width) {
  TORCH_CHECK(s.dim() == 4 && s.size(0) == in.nblk && s.size(1) == in.T &&
                  s.size(2) == width * in.H && s.size(3) == kIsaLanes[in.isa],
              "saved gates do not match this backward's shapes or instruction set");
}

std::vector<at::Tensor> gru_backward(const at::Tensor& grad, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& mask,
                                     const at::Tensor& out, const at::Tensor& gates_,
                                     bool relu, bool return_sequences, int64_t isa,
                                     const std::optional<at::Tensor>& x,
                                     const std::optional<at::Tensor>& w_ih, bool need_dx) {
  const BackwardInputs in(grad, w_hh, mask, out, return_sequences, isa, x, w_ih, need_dx);
  auto gates = gates_.contiguous();
  check_store(gates, in, 4);
  return in.run([&](auto zero, int64_t i, auto* dgi, auto* dw, auto* db, const auto* px,
                    const auto* pwiht, auto* pdx, auto* pdwi, auto* pdbi) {
    using scalar_t = decltype(zero);
    RNNLAB_WITH_ISA(isa, gru_backward_block<scalar_t>(
        i * kLanes, in.T, in.B, in.H, in.p<scalar_t>(in.grad), return_sequences,
        in.p<scalar_t>(in.wt), opt_ptr<scalar_t>(in.mask), in.p<scalar_t>(in.out),
        gates.data_ptr<scalar_t>() + i * in.T * 4 * in.H * kLanes, relu, dgi, dw, db,
        RNNLAB_INPUT_GRAD(scalar_t)))
  });
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad, const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& mask,
                                      const at::Tensor& out, const at::Tensor& gates_,
                                      const at::Tensor& cells_, bool return_sequences,
                                      int64_t isa, const std::optional<at::Tensor>& x,
                                      const std::optional<at::Tensor>& w_ih, bool need_dx) {
  const BackwardInputs in(grad, w_hh, mask, out, return_sequences, isa, x, w_ih, need_dx);
  auto gates = gates_.contiguous();
  auto cells = cells_.contiguous();
  check_store(gates, in, 4);
  check_store(cells, in, 2);
  return in.run([&](auto zero, int64_t i, auto* dgi, auto* dw, auto* db, const auto* px,
                    const auto* pwiht, auto* pdx, auto* pdwi, auto* pdbi) {
    using scalar_t = decltype(zero);
    RNNLAB_WITH_ISA(isa, lstm_backward_block<scalar_t>(
        i * kLanes, in.T, in.B, in.H, in.p<scalar_t>(in.grad), return_sequences,
        in.p<scalar_t>(in.wt), opt_ptr<scalar_t>(in.mask), in.p<scalar_t>(in.out),
        gates.data_ptr<scalar_t>() + i * in.T * 4 * in.H * kLanes,
        cells.data_ptr<scalar_t>() + i * in.T * 2 * in.H * kLanes, dgi, dw, db,
        RNNLAB_INPUT_GRAD(scalar_t)))
  });
}

std::vector<at::Tensor> rnn_backward(const at::Tensor& grad, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& mask,
                                     const at::Tensor& out, bool relu, bool return_sequences,
                                     int64_t isa, const std::optional<at::Tensor>& x,
                                     const std::optional<at::Tensor>& w_ih, bool need_dx) {
  const BackwardInputs in(grad, w_hh, mask, out, return_sequences, isa, x, w_ih, need_dx);
  return in.run([&](auto zero, int64_t i, auto* dgi, auto* dw, auto* db, const auto* px,
                    const auto* pwiht, auto* pdx, auto* pdwi, auto* pdbi) {
    using scalar_t = decltype(zero);
    RNNLAB_WITH_ISA(isa, rnn_backward_block<scalar_t>(
        i * kLanes, in.T, in.B, in.H, in.p<scalar_t>(in.grad), return_sequences,
        in.p<scalar_t>(in.wt), opt_ptr<scalar_t>(in.mask), in.p<scalar_t>(in.out), relu, dgi,
        dw, db, RNNLAB_INPUT_GRAD(scalar_t)))
  });
}
#undef RNNLAB_INPUT_GRAD

// An optional bias of M values of x's dtype, contiguous; undefined when none is given.
at::Tensor checked_bias(const std::optional<at::Tensor>& bias_, int64_t M, const at::Tensor& x,
                        const char* what) {
  if (!bias_.has_value() || !bias_->defined()) return at::Tensor();
  TORCH_CHECK(bias_->numel() == M && bias_->scalar_type() == x.scalar_type() &&
                  bias_->device().is_cpu(),
              what, ": bias must be a CPU tensor of M values of x's dtype");
  return bias_->contiguous();
}

// out (M, N) = w (M, K) @ x (K, N) + bias (M) (bias optional), the same bits for any
// thread count: the columns go to threads in fixed groups of kLanes-wide vectors and each
// column is summed in one order (product_cols). MKL's sgemm split a (6 x 8) @ (8 x 320)
// product differently on one thread and two on an AVX2 machine (results 1e-6 apart), so
// a model's outputs, and then its training, depended on the thread count.
at::Tensor product(const at::Tensor& w_, const at::Tensor& x_,
                   const std::optional<at::Tensor>& bias_, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(w_.dim() == 2 && x_.dim() == 2 && w_.size(1) == x_.size(0),
              "product: w (M, K) and x (K, N)");
  TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "product: w and x must share a dtype");
  auto w = w_.contiguous();
  auto x = x_.contiguous();
  const int64_t M = w.size(0), K = w.size(1), N = x.size(1);
  const at::Tensor bias = checked_bias(bias_, M, x, "product");
  auto out = at::empty({M, N}, x.options());
  constexpr int64_t kGroup = 16;   // vectors per task
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "product", [&] {
    std::vector<scalar_t> packed(M * K);
    RNNLAB_WITH_ISA(isa, ([&] {
      pack_rows(w.data_ptr<scalar_t>(), 1, M, K, 8, packed.data());
      const int64_t nvec = (N + kLanes - 1) / kLanes;
      const int64_t groups = (nvec + kGroup - 1) / kGroup;
      const scalar_t* pb = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
      for_blocks(groups, [&](int64_t g) {
        LaneBuf<scalar_t> xs(K), os(M);
        product_cols<scalar_t>(g * kGroup * kLanes, kGroup, M, K, N, packed.data(),
                               x.data_ptr<scalar_t>(), pb, out.data_ptr<scalar_t>(),
                               xs.data(), os.data());
      });
    })())
  });
  return out;
}

// out (R, M) = x (R, K) @ w (M, K)^T + bias (M) for a row-major x, written row-major: the
// same bits as product(w, x^T, bias)^T (each value summed over k in one order) without the
// transposed copy of x going in or of out coming back. Threads take fixed groups of kLanes
// rows, which changes no sum.
at::Tensor rows_project(const at::Tensor& x_, const at::Tensor& w_,
                        const std::optional<at::Tensor>& bias_, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(x_.dim() == 2 && w_.dim() == 2 && w_.size(1) == x_.size(1),
              "rows_project: x (R, K) and w (M, K)");
  TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "rows_project: x and w must share a dtype");
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t R = x.size(0), K = x.size(1), M = w.size(0), L = kIsaLanes[isa];
  const at::Tensor bias = checked_bias(bias_, M, x, "rows_project");
  auto out = at::empty({R, M}, x.options());
  constexpr int64_t kTiles = 8;   // tiles of kLanes rows per task
  const int64_t tasks = ((R + L - 1) / L + kTiles - 1) / kTiles;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rows_project", [&] {
    std::vector<scalar_t> packed(M * K);
    RNNLAB_WITH_ISA(isa, ([&] {
      pack_rows(w.data_ptr<scalar_t>(), 1, M, K, 8, packed.data());
      const scalar_t* pb = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
      for_blocks(tasks, [&](int64_t task) {
        LaneBuf<scalar_t> xs(K), os(M);
        for (int64_t r = task * kTiles * kLanes; r < std::min(R, (task + 1) * kTiles * kLanes);
             r += kLanes)
          rows_tile_product<scalar_t>(std::min<int64_t>(kLanes, R - r), M, K, packed.data(),
                                      x.data_ptr<scalar_t>() + r * K, pb,
                                      out.data_ptr<scalar_t>() + r * M, xs.data(), os.data());
      });
    })())
  });
  return out;
}

// The weight and bias gradients of out = x w^T + b: dw (M, K) = g^T x and db (M) = the sum
// of g's rows, for row-major g (R, M) and x (R, K), in the order they are: the rows go in
// fixed parts of kPart (parts summed per lane, then the parts in order, then the lanes), so
// the bits depend on R and the instruction set, never on the thread count. In x's dtype:
// float32 sums of at most kPart / kLanes terms per lane before the parts are added.
std::vector<at::Tensor> rows_project_grad(const at::Tensor& g_, const at::Tensor& x_,
                                          int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(g_.dim() == 2 && x_.dim() == 2 && g_.size(0) == x_.size(0),
              "rows_project_grad: g (R, M) and x (R, K)");
  TORCH_CHECK(g_.scalar_type() == x_.scalar_type(),
              "rows_project_grad: g and x must share a dtype");
  auto g = g_.contiguous();
  auto x = x_.contiguous();
  const int64_t R = g.size(0), M = g.size(1), K = x.size(1);
  constexpr int64_t kPart = 1024;   // rows per part: a multiple of kChunk * kLanes
  const int64_t parts = std::max<int64_t>(1, (R + kPart - 1) / kPart);
  auto dw = at::empty({M, K}, x.options());
  auto db = at::empty({M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rows_project_grad", [&] {
    RNNLAB_WITH_ISA(isa, ([&] {
      const int64_t n = M * K + M;   // a part's lane vectors: dw, then db
      LaneBuf<scalar_t> part(parts * n);
      for_blocks(parts, [&](int64_t p) {
        LaneBuf<scalar_t> gs(kChunk * M), xs(kChunk * K);
        const int64_t r0 = p * kPart;
        rows_grad_part<scalar_t>(std::max<int64_t>(0, std::min(kPart, R - r0)), M, K,
                                 g.data_ptr<scalar_t>() + r0 * M,
                                 x.data_ptr<scalar_t>() + r0 * K, gs.data(), xs.data(),
                                 part.data() + p * n, part.data() + p * n + M * K);
      });
      rows_grad_sum<scalar_t>(part.data(), parts, M, K, dw.data_ptr<scalar_t>(),
                              db.data_ptr<scalar_t>());
    })())
  });
  return {dw, db};
}


// The gradient dP (V, G) of a projected embedding table P (V, G) whose rows a forward
// gathered as gi[:, t, b] = P[order[t * Bp + b]], from the block-major dgi (blocks, T, G,
// lanes) of the instruction set `isa`. Threads split the columns (a fixed split) and each
// column adds its tokens in one order, so the result does not depend on the thread count.
at::Tensor table_grad(const at::Tensor& dgi_, const at::Tensor& order_, int64_t V,
                      int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(dgi_.dim() == 4 && dgi_.size(3) == kIsaLanes[isa],
              "dgi must be block-major (blocks, T, G, lanes) for this instruction set");
  auto dgi = dgi_.contiguous();
  auto order = order_.to(at::kLong).contiguous();
  const int64_t nblk = dgi.size(0), T = dgi.size(1), G = dgi.size(2), L = dgi.size(3);
  const int64_t Bp = nblk * L;
  TORCH_CHECK(order.numel() == T * Bp, "order must hold T * Bp token ids");
  const int64_t* ids = checked_ids(order, V);
  auto dpt = at::zeros({V, G}, dgi.options());
  const int64_t tasks = (G + L - 1) / L;
  AT_DISPATCH_FLOATING_TYPES(dgi.scalar_type(), "table_grad", [&] {
    RNNLAB_WITH_ISA(isa, for_blocks(tasks, [&](int64_t task) {
      const int64_t g0 = task * kLanes;
      table_grad_cols<scalar_t>(g0, std::min<int64_t>(kLanes, G - g0), nblk, T, G, Bp,
                                dgi.data_ptr<scalar_t>(), ids, dpt.data_ptr<scalar_t>());
    }))
  });
  return dpt;
}

// conv_gru's front: Conv1D (valid, stride 1) then ReLU and MaxPool1d (pool P; P = 1: ReLU
// alone) over x (F, T, Bp) in the kernels' layout, w (C, F, K), bias (C) or None ->
// [out (C, (T - K + 1) / P, Bp), idx (the same, uint8: the window position each gradient
// goes to)]. Blocks of lanes split between threads; each output is summed in one order.
std::vector<at::Tensor> conv_forward(const at::Tensor& x_, const at::Tensor& w_,
                                     const std::optional<at::Tensor>& bias_, int64_t P,
                                     int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(x_.dim() == 3 && x_.size(2) % kBatchMultiple == 0, "conv: x must be (F, T, Bp)");
  TORCH_CHECK(w_.dim() == 3 && w_.size(1) == x_.size(0), "conv: w must be (C, F, K)");
  TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "conv: x and w must share a dtype");
  TORCH_CHECK(P >= 1 && P < rnnlab::portable::kPoolNoGrad,
              "conv: pool size must be in [1, 254]");
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t F = x.size(0), T = x.size(1), B = x.size(2), C = w.size(0), K = w.size(2);
  TORCH_CHECK(K >= 1 && T >= K + P - 1, "conv: ", T, " steps are too few for a kernel of ", K,
              " and a pool of ", P);
  const int64_t Tp = (T - K + 1) / P, L = kIsaLanes[isa];
  const at::Tensor bias = checked_bias(bias_, C, x, "conv");
  auto out = at::empty({C, Tp, B}, x.options());
  auto idx = at::empty({C, Tp, B}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_forward", [&] {
    std::vector<scalar_t> packed(C * F * K);
    RNNLAB_WITH_ISA(isa, ([&] {
      pack_rows(w.data_ptr<scalar_t>(), 1, C, F * K, 8, packed.data());
      for_blocks(B / L, [&](int64_t i) {
        typedef typename LaneIndex<scalar_t>::v M;   // as wide as a V<scalar_t>
        LaneBuf<scalar_t> xs(F * K), os(C), best(C), pos(2 * C);
        M* at_ = reinterpret_cast<M*>(pos.data());
        conv_forward_block<scalar_t>(i * kLanes, B, F, T, C, K, P, x.data_ptr<scalar_t>(),
                                     packed.data(),
                                     bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                                     out.data_ptr<scalar_t>(), idx.data_ptr<uint8_t>(),
                                     xs.data(), os.data(), best.data(), at_, at_ + C);
      });
    })())
  });
  return {out, idx};
}

// Its backward: g (C, Tp, Bp), idx, x, w -> [dx (F, T, Bp) or an empty tensor when need_dx
// is false, dw (C, F, K), db (C)]; the weight gradients summed per block and lane over t in
// order, then the lanes, then the blocks in order: the same bits on any thread count.
std::vector<at::Tensor> conv_backward(const at::Tensor& g_, const at::Tensor& idx_,
                                      const at::Tensor& x_, const at::Tensor& w_, int64_t P,
                                      bool need_dx, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  auto g = g_.contiguous();
  auto idx = idx_.contiguous();
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t F = x.size(0), T = x.size(1), B = x.size(2), C = w.size(0), K = w.size(2);
  const int64_t Tp = (T - K + 1) / P, L = kIsaLanes[isa], nblk = B / L, n = C * F * K + C;
  TORCH_CHECK(g.dim() == 3 && g.size(0) == C && g.size(1) == Tp && g.size(2) == B &&
                  idx.sizes() == g.sizes() && idx.scalar_type() == at::kByte &&
                  g.scalar_type() == x.scalar_type(),
              "conv_backward: g and idx must be (C, Tp, Bp) as the forward's out and idx");
  auto dx = need_dx ? at::empty({F, T, B}, x.options()) : at::empty({0}, x.options());
  auto part = at::empty({nblk, n}, x.options());
  auto dw = at::empty({C, F, K}, x.options());
  auto db = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_backward", [&] {
    std::vector<scalar_t> packed(F * C * K);
    RNNLAB_WITH_ISA(isa, ([&] {
      if (need_dx) {   // w as (F, C * K), column c * K + k
        auto wq = w.permute({1, 0, 2}).contiguous();
        pack_rows(wq.data_ptr<scalar_t>(), 1, F, C * K, 8, packed.data());
      }
      scalar_t* pp = part.data_ptr<scalar_t>();
      for_blocks(nblk, [&](int64_t i) {
        LaneBuf<scalar_t> dy(C * (T - K + 1)), dwl(C * F * K), dbl(C), ys(C * K), os(F);
        conv_backward_block<scalar_t>(i * kLanes, B, F, T, C, K, P, x.data_ptr<scalar_t>(),
                                      packed.data(), g.data_ptr<scalar_t>(),
                                      idx.data_ptr<uint8_t>(),
                                      need_dx ? dx.data_ptr<scalar_t>() : nullptr, dy.data(),
                                      dwl.data(), dbl.data(), ys.data(), os.data(),
                                      pp + i * n);
      });
      reduce_blocks_to<scalar_t>(pp, nblk, n, {dw, db});
    })())
  });
  return {dx, dw, db};
}

// imdb_dense's multi-hot input and first dense layer in one sparse pass: ids (B, L) word
// ids (0: padding), w (U, V), bias (U) -> [out (B, U), words (B, L) int32, n (B) int64]:
// out = multi_hot(ids) @ w^T + bias without the (B, V) matrix, each row summed over its
// distinct words (multihot_row); words and n are what the backward needs. Rows split
// between threads, which changes no sum.
std::vector<at::Tensor> multihot_linear_forward(const at::Tensor& ids_, const at::Tensor& w_,
                                                const std::optional<at::Tensor>& bias_,
                                                int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  TORCH_CHECK(ids_.dim() == 2, "multihot_linear: ids must be (B, L)");
  TORCH_CHECK(w_.dim() == 2, "multihot_linear: w must be (U, V)");
  TORCH_CHECK(ids_.device().is_cpu() && w_.device().is_cpu(),
              "multihot_linear runs on CPU tensors only");
  auto ids = ids_.to(at::kLong).contiguous();
  const int64_t B = ids.size(0), L = ids.size(1), U = w_.size(0), V = w_.size(1);
  const int64_t* pid = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    TORCH_CHECK(pid[i] >= 0 && pid[i] < V, "word id ", pid[i], " outside the vocabulary's ",
                V, " ids (0 .. ", V - 1, ")");
  auto w = w_.contiguous();
  auto wt = at::empty({V, U}, w.options());   // W^T: a word's weights in one line
  const at::Tensor bias = checked_bias(bias_, U, w, "multihot_linear");
  auto out = at::empty({B, U}, w.options());
  auto words = at::empty({B, L}, ids.options().dtype(at::kInt));
  auto n = at::empty({B}, ids.options());
  constexpr int64_t kRows = 8;   // rows per task
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "multihot_linear_forward", [&] {
    RNNLAB_WITH_ISA(isa, transpose_part<scalar_t>(w.data_ptr<scalar_t>(), U, V, 0, V,
                                                  wt.data_ptr<scalar_t>()));
    RNNLAB_WITH_ISA(isa, for_blocks((B + kRows - 1) / kRows, [&](int64_t task) {
      std::vector<uint64_t> seen((V + 63) / 64, 0);
      for (int64_t b = task * kRows; b < std::min(B, (task + 1) * kRows); ++b)
        multihot_row<scalar_t>(pid + b * L, L, wt.data_ptr<scalar_t>(), U,
                               bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                               out.data_ptr<scalar_t>() + b * U,
                               words.data_ptr<int32_t>() + b * L, n.data_ptr<int64_t>() + b,
                               seen.data());
    }))
  });
  return {out, words, n};
}

// Its gradients from g (B, U) and the forward's words and n: [dw (U, V), db (U)], each
// adding the rows in row order on one thread (about 0.1 ms for imdb_dense's batch).
std::vector<at::Tensor> multihot_linear_backward(const at::Tensor& g_, const at::Tensor& words_,
                                                 const at::Tensor& n_, int64_t V,
                                                 int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  g_last_isa = isa;
  auto g = g_.contiguous();
  auto words = words_.contiguous();
  auto n = n_.contiguous();
  TORCH_CHECK(g.dim() == 2 && words.dim() == 2 && g.size(0) == words.size(0) &&
                  n.numel() == g.size(0) && words.scalar_type() == at::kInt &&
                  n.scalar_type() == at::kLong,
              "multihot_linear_backward: g (B, U), words (B, L) int32 and n (B) int64");
  const int64_t B = g.size(0), U = g.size(1), L = words.size(1);
  auto dwt = at::zeros({V, U}, g.options());
  auto dw = at::empty({U, V}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "multihot_linear_backward", [&] {
    RNNLAB_WITH_ISA(isa, ([&] {
      multihot_grad<scalar_t>(B, L, words.data_ptr<int32_t>(), n.data_ptr<int64_t>(),
                              g.data_ptr<scalar_t>(), U, dwt.data_ptr<scalar_t>());
      transpose_part<scalar_t>(dwt.data_ptr<scalar_t>(), V, U, 0, U, dw.data_ptr<scalar_t>());
    })())
  });
  auto db = at::zeros({U}, g.options());
  if (B > 0)   // the rows added in order
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "multihot_linear_bias", [&] {
      reduce_blocks(g.data_ptr<scalar_t>(), B, U, db.data_ptr<scalar_t>());
    });
  return {dw, db};
}

// A dense layer on row-major tensors: y (R, N) = x (R, K) @ w (N, K)^T + bias (N or None)
// (dense_rows: each output summed over k in order on one thread, so the bits do not
// depend on the thread count; threads take fixed groups of rows). w is transposed first.
// For the lecture's dense model, (128 x 3,360) by (3,360 x 32), where MKL runs this CPU's
// AVX2 path.
at::Tensor dense_forward(const at::Tensor& x_, const at::Tensor& w_,
                         const std::optional<at::Tensor>& bias_, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  TORCH_CHECK(x_.dim() == 2 && w_.dim() == 2 && w_.size(1) == x_.size(1),
              "dense_forward: x (R, K) and w (N, K)");
  TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "dense_forward: x and w must share a dtype");
  TORCH_CHECK(x_.device().is_cpu() && w_.device().is_cpu(), "dense_forward runs on CPU tensors");
  g_last_isa = isa;
  auto x = x_.contiguous();
  auto w = w_.contiguous();
  const int64_t R = x.size(0), K = x.size(1), N = w.size(0), L = kIsaLanes[isa];
  const at::Tensor bias = checked_bias(bias_, N, x, "dense_forward");
  auto y = at::empty({R, N}, x.options());
  constexpr int64_t kRows = 8;   // rows per task
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dense_forward", [&] {
    std::vector<scalar_t> wt(K * N + L, 0), pb(bias.defined() ? N + L : 0, 0);
    if (bias.defined()) std::copy(bias.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>() + N,
                                  pb.begin());
    RNNLAB_WITH_ISA(isa, ([&] {
      transpose_part<scalar_t>(w.data_ptr<scalar_t>(), N, K, 0, K, wt.data());
      for_blocks((R + kRows - 1) / kRows, [&](int64_t task) {
        const int64_t r0 = task * kRows;
        dense_rows<scalar_t>(x.data_ptr<scalar_t>() + r0 * K, std::min(kRows, R - r0), K,
                             wt.data(), N, bias.defined() ? pb.data() : nullptr,
                             y.data_ptr<scalar_t>() + r0 * N);
      });
    })())
  });
  return y;
}

// Its weight and bias gradients from g (R, N): [dw (N, K) = g^T x, db (N)], each value
// adding the rows in order on one thread (threads take fixed groups of columns).
std::vector<at::Tensor> dense_backward(const at::Tensor& g_, const at::Tensor& x_, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  TORCH_CHECK(g_.dim() == 2 && x_.dim() == 2 && g_.size(0) == x_.size(0),
              "dense_backward: g (R, N) and x (R, K)");
  TORCH_CHECK(g_.scalar_type() == x_.scalar_type(), "dense_backward: g and x must share a dtype");
  g_last_isa = isa;
  auto g = g_.contiguous();
  auto x = x_.contiguous();
  const int64_t R = g.size(0), N = g.size(1), K = x.size(1), L = kIsaLanes[isa];
  auto dw = at::empty({N, K}, x.options());
  auto db = at::zeros({N}, x.options());
  const int64_t cols = 3 * L;   // columns per task: a whole number of tiles
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dense_backward", [&] {
    RNNLAB_WITH_ISA(isa, for_blocks((K + cols - 1) / cols, [&](int64_t task) {
      dense_grad_cols<scalar_t>(g.data_ptr<scalar_t>(), N, x.data_ptr<scalar_t>(), K, R,
                                task * cols, std::min(K, (task + 1) * cols),
                                dw.data_ptr<scalar_t>());
    }))
    if (R > 0) reduce_blocks(g.data_ptr<scalar_t>(), R, N, db.data_ptr<scalar_t>());
  });
  return {dw, db};
}

// RMSprop's update of every parameter in place (engine.RMSprop on CPU tensors): params,
// their grads and their square averages, each list's i-th tensors of one shape, dtype and
// layout; alpha, eps, lr and the form as engine.RMSprop's. Chunks of kChunk elements go to
// threads (with the caller's floating-point mode, as every kernel here); which thread
// runs a chunk changes no bits (rmsprop_part). Bumps the version counters of params and
// averages, as torch's in-place ops do.
void rmsprop_update(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& avgs, double alpha, double eps, double lr,
                    bool keras3, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= best_isa(), "instruction set ", isa, " is not available");
  TORCH_CHECK(params.size() == grads.size() && params.size() == avgs.size(),
              "rmsprop_update: params, grads and averages must be lists of one length");
  if (params.empty()) return;
  const auto dtype = params[0].scalar_type();
  for (size_t i = 0; i < params.size(); ++i)
    for (const at::Tensor* t : {&params[i], &grads[i], &avgs[i]})
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dtype &&
                      t->layout() == at::kStrided && t->sizes() == params[i].sizes(),
                  "rmsprop_update: tensor ", i, " of each list must be a contiguous CPU ",
                  "tensor of the parameter's shape and dtype");
  g_last_isa = isa;
  constexpr int64_t kChunk = 16384;
  std::vector<std::pair<int64_t, int64_t>> chunks;   // (tensor, first element)
  for (size_t i = 0; i < params.size(); ++i)
    for (int64_t e = 0; e < params[i].numel(); e += kChunk)
      chunks.emplace_back(static_cast<int64_t>(i), e);
  AT_DISPATCH_FLOATING_TYPES(dtype, "rmsprop_update", [&] {
    using T = scalar_t;
    const T a = static_cast<T>(alpha), rest = static_cast<T>(1.0 - alpha),
            e = static_cast<T>(eps), step = static_cast<T>(-lr);
    auto run = [&](int64_t c) {
      const auto [i, first] = chunks[c];
      const int64_t n = std::min(kChunk, params[i].numel() - first);
      T* p = params[i].data_ptr<T>() + first;
      const T* g = grads[i].data_ptr<T>() + first;
      T* v = avgs[i].data_ptr<T>() + first;
      if (keras3)
        RNNLAB_WITH_ISA(isa, (rmsprop_part<T, true>(p, g, v, n, a, rest, e, step)))
      else
        RNNLAB_WITH_ISA(isa, (rmsprop_part<T, false>(p, g, v, n, a, rest, e, step)))
    };
    const int64_t nchunks = static_cast<int64_t>(chunks.size());
    if (nchunks < 4) {   // a small model: a parallel region costs more than the update
      for (int64_t c = 0; c < nchunks; ++c) run(c);
    } else {
      for_blocks(nchunks, run);
    }
  });
  for (size_t i = 0; i < params.size(); ++i) {
    torch::autograd::impl::bump_version(params[i]);
    torch::autograd::impl::bump_version(avgs[i]);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward,
        "GRU forward (gi, w_hh, b_hh, mask, relu, train, return_sequences, isa, order, "
        "steps, w_ih, b_ih: gi a projected table (V, G) read in token order where order is "
        "given, the layer's input x (I, T, Bp) projected step by step where w_ih is) -> "
        "[out (H,T,Bp) or (H,Bp), gates when training]");
  m.def("gru_backward", &gru_backward,
        "GRU backward (..., isa, x, w_ih, need_dx) -> [dgi (blocks, T, 3H, lanes), dw_hh, "
        "db_hh], or with x: [dx (or empty), dw_ih, db_ih, dw_hh, db_hh]");
  m.def("lstm_forward", &lstm_forward, "LSTM forward -> [out, gates, cells when training]");
  m.def("lstm_backward", &lstm_backward, "LSTM backward: as gru_backward");
  m.def("rnn_forward", &rnn_forward, "Elman RNN forward -> [out]");
  m.def("rnn_backward", &rnn_backward, "Elman RNN backward: as gru_backward");
  m.def("product", &product,
        "w (M, K) @ x (K, N) + bias (M or None), the same bits for any thread count");
  m.def("rows_project", &rows_project,
        "x (R, K) @ w (M, K)^T + bias (M or None), row-major in and out, product's bits");
  m.def("rows_project_grad", &rows_project_grad,
        "g (R, M), x (R, K) -> [dw (M, K), db (M)], the same bits for any thread count");
  m.def("table_grad", &table_grad, "gradient of a gathered projected table -> dP (V, G)");
  m.def("conv_forward", &conv_forward,
        "x (F, T, Bp), w (C, F, K), bias, pool, isa -> Conv1D, ReLU, MaxPool1d: [out, idx]");
  m.def("conv_backward", &conv_backward,
        "g, idx, x, w, pool, need_dx, isa -> [dx (F, T, Bp) or empty, dw (C, F, K), db (C)]");
  m.def("multihot_linear_forward", &multihot_linear_forward,
        "ids (B, L), w (U, V), bias (U or None), isa -> [multi_hot(ids) @ w^T + bias, words, n]");
  m.def("multihot_linear_backward", &multihot_linear_backward,
        "g (B, U), words, n, V, isa -> [dw (U, V), db (U)]");
  m.def("dense_forward", &dense_forward,
        "x (R, K), w (N, K), bias (N or None), isa -> x @ w^T + bias, row-major");
  m.def("dense_backward", &dense_backward, "g (R, N), x (R, K), isa -> [dw (N, K), db (N)]");
  m.def("rmsprop_update", &rmsprop_update,
        "params, grads, averages, alpha, eps, lr, keras3, isa: RMSprop's update in place");
  m.def("supported_isas", &supported_isas, "instruction sets this CPU runs, best first");
  m.def("last_isa", &last_isa, "the code of the instruction set the last kernel ran with");
  m.def("isa_code", &isa_code, "the code of an instruction set's name (an error if unknown)");
  m.attr("batch_multiple") = kBatchMultiple;
}
