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

#include "recurrent_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define RNNLAB_HAS_MXCSR 1
#endif

namespace {

constexpr int64_t kMaxBlocks = 32;

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
//
// The caller's floating-point mode travels with the work: torch.set_flush_denormal(True)
// (which the training engine sets) only changes the calling thread's MXCSR, and the worker
// threads would otherwise crawl through denormals (vanishing gradients reach them: a GRU
// epoch measured 3x slower without this).
template <typename F>
inline void for_blocks(const Blocks& blocks, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks.n));
#ifdef RNNLAB_HAS_MXCSR
  const unsigned int caller_csr = _mm_getcsr();
#endif
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
#ifdef RNNLAB_HAS_MXCSR
    const unsigned int own_csr = _mm_getcsr();
    _mm_setcsr(caller_csr);
#endif
    for (int64_t i = next.fetch_add(1); i < blocks.n; i = next.fetch_add(1))
      f(i, blocks.begin(i), blocks.end(i));
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

// ================================================================= torch wrappers
template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& m) {
  return m ? m->data_ptr<T>() : nullptr;
}

// A forward's inputs, checked and laid out for the kernels: wt = W_hh^T (H, G*H).
struct ForwardInputs {
  at::Tensor gi, wt, b_hh;
  std::optional<at::Tensor> mask_h;
  int64_t T, B, H;
  ForwardInputs(const at::Tensor& gi_, const at::Tensor& w_hh, const at::Tensor& b_hh_,
                const std::optional<at::Tensor>& mask_h_, int64_t gates) {
    check_inputs(gi_, w_hh, b_hh_, mask_h_, gates);
    gi = gi_.contiguous();
    wt = w_hh.t().contiguous();
    b_hh = b_hh_.contiguous();
    mask_h = contiguous_mask(mask_h_);
    T = gi.size(0);
    B = gi.size(1);
    H = w_hh.size(1);
  }
  template <typename S> const S* ptr(const at::Tensor& t) const { return t.data_ptr<S>(); }
};

std::vector<at::Tensor> gru_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                    const at::Tensor& b_hh_,
                                    const std::optional<at::Tensor>& mask_h_, bool relu) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 3);
  auto out = at::empty({in.T, in.B, in.H}, in.gi.options());
  auto gates = at::empty({in.T, in.B, 4 * in.H}, in.gi.options());
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "gru_forward", [&] {
    for_blocks(make_blocks(in.B), [&](int64_t, int64_t r0, int64_t r1) {
      rnnlab::gru_forward_block<scalar_t>(
          r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
          in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), relu,
          out.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>());
    });
  });
  return {out, gates};
}

// Allocates dgi and the per-block partials, runs `block` on every block, reduces.
template <typename F>
std::vector<at::Tensor> backward_driver(const at::Tensor& out, int64_t G, const F& block) {
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  auto dgi = at::empty({T, B, G}, out.options());
  const Blocks blocks = make_blocks(B);
  auto dw_part = at::zeros({blocks.n, G, H}, out.options());
  auto db_part = at::zeros({blocks.n, G}, out.options());
  auto dw = at::empty({G, H}, out.options());
  auto db = at::empty({G}, out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "recurrence_backward", [&] {
    scalar_t* pdwp = dw_part.data_ptr<scalar_t>();
    scalar_t* pdbp = db_part.data_ptr<scalar_t>();
    scalar_t* pdgi = dgi.data_ptr<scalar_t>();
    for_blocks(blocks, [&](int64_t blk, int64_t r0, int64_t r1) {
      block(scalar_t(0), r0, r1, pdgi, pdwp + blk * G * H, pdbp + blk * G);
    });
    reduce_blocks(pdwp, blocks.n, G * H, dw.data_ptr<scalar_t>());
    reduce_blocks(pdbp, blocks.n, G, db.data_ptr<scalar_t>());
  });
  return {dgi, dw, db};
}

std::vector<at::Tensor> gru_backward(const at::Tensor& grad_, const at::Tensor& w_hh_,
                                     const std::optional<at::Tensor>& mask_h_,
                                     const at::Tensor& out, const at::Tensor& gates,
                                     bool relu, bool return_sequences) {
  auto grad = grad_.contiguous();
  auto w = w_hh_.contiguous();  // (3H, H)
  auto mask_h = contiguous_mask(mask_h_);
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  return backward_driver(out, 3 * H, [&](auto zero, int64_t r0, int64_t r1, auto* dgi,
                                         auto* dwp, auto* dbp) {
    using scalar_t = decltype(zero);
    rnnlab::gru_backward_block<scalar_t>(
        r0, r1, T, B, H, grad.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(mask_h), out.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), relu,
        return_sequences, dgi, dwp, dbp);
  });
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                     const at::Tensor& b_hh_,
                                     const std::optional<at::Tensor>& mask_h_) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 4);
  auto out = at::empty({in.T, in.B, in.H}, in.gi.options());
  auto gates = at::empty({in.T, in.B, 4 * in.H}, in.gi.options());
  auto cs = at::empty({in.T, in.B, 2 * in.H}, in.gi.options());  // [c, tanh(c)]
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "lstm_forward", [&] {
    for_blocks(make_blocks(in.B), [&](int64_t, int64_t r0, int64_t r1) {
      rnnlab::lstm_forward_block<scalar_t>(
          r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
          in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), out.data_ptr<scalar_t>(),
          gates.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>());
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
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  return backward_driver(out, 4 * H, [&](auto zero, int64_t r0, int64_t r1, auto* dgi,
                                         auto* dwp, auto* dbp) {
    using scalar_t = decltype(zero);
    rnnlab::lstm_backward_block<scalar_t>(
        r0, r1, T, B, H, grad.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(mask_h), out.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
        cs.data_ptr<scalar_t>(), return_sequences, dgi, dwp, dbp);
  });
}

std::vector<at::Tensor> rnn_forward(const at::Tensor& gi_, const at::Tensor& w_hh_,
                                    const at::Tensor& b_hh_,
                                    const std::optional<at::Tensor>& mask_h_, bool relu) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 1);
  auto out = at::empty({in.T, in.B, in.H}, in.gi.options());
  AT_DISPATCH_FLOATING_TYPES(in.gi.scalar_type(), "rnn_forward", [&] {
    for_blocks(make_blocks(in.B), [&](int64_t, int64_t r0, int64_t r1) {
      rnnlab::rnn_forward_block<scalar_t>(
          r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
          in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), relu,
          out.data_ptr<scalar_t>());
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
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  return backward_driver(out, H, [&](auto zero, int64_t r0, int64_t r1, auto* dgi,
                                     auto* dwp, auto* dbp) {
    using scalar_t = decltype(zero);
    rnnlab::rnn_backward_block<scalar_t>(
        r0, r1, T, B, H, grad.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(mask_h), out.data_ptr<scalar_t>(), relu, return_sequences, dgi, dwp,
        dbp);
  });
}

// ================================================================= inference
// No gradient wanted (evaluation): the same recurrences without the (T, B, .) stores the
// backward pass needs. Returns h_T (B, H), or every h (T, B, H) when return_sequences.
template <typename F>
at::Tensor infer_driver(const at::Tensor& gi, int64_t H, bool return_sequences, const F& block) {
  const int64_t T = gi.size(0), B = gi.size(1);
  auto out = return_sequences ? at::empty({T, B, H}, gi.options()) : at::Tensor();
  auto last = return_sequences ? at::Tensor() : at::empty({B, H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "recurrence_infer", [&] {
    scalar_t* pout = return_sequences ? out.data_ptr<scalar_t>() : nullptr;
    scalar_t* plast = return_sequences ? nullptr : last.data_ptr<scalar_t>();
    for_blocks(make_blocks(B), [&](int64_t, int64_t r0, int64_t r1) {
      block(scalar_t(0), r0, r1, pout, plast);
    });
  });
  return return_sequences ? out : last;
}

at::Tensor gru_infer(const at::Tensor& gi_, const at::Tensor& w_hh_, const at::Tensor& b_hh_,
                     const std::optional<at::Tensor>& mask_h_, bool relu, bool return_sequences) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 3);
  return infer_driver(in.gi, in.H, return_sequences, [&](auto zero, int64_t r0, int64_t r1,
                                                         auto* out, auto* last) {
    using scalar_t = decltype(zero);
    rnnlab::gru_forward_block<scalar_t>(
        r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
        in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), relu, out, nullptr, last);
  });
}

at::Tensor lstm_infer(const at::Tensor& gi_, const at::Tensor& w_hh_, const at::Tensor& b_hh_,
                      const std::optional<at::Tensor>& mask_h_, bool return_sequences) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 4);
  return infer_driver(in.gi, in.H, return_sequences, [&](auto zero, int64_t r0, int64_t r1,
                                                         auto* out, auto* last) {
    using scalar_t = decltype(zero);
    rnnlab::lstm_forward_block<scalar_t>(
        r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
        in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), out, nullptr, nullptr, last);
  });
}

at::Tensor rnn_infer(const at::Tensor& gi_, const at::Tensor& w_hh_, const at::Tensor& b_hh_,
                     const std::optional<at::Tensor>& mask_h_, bool relu, bool return_sequences) {
  const ForwardInputs in(gi_, w_hh_, b_hh_, mask_h_, 1);
  return infer_driver(in.gi, in.H, return_sequences, [&](auto zero, int64_t r0, int64_t r1,
                                                         auto* out, auto* last) {
    using scalar_t = decltype(zero);
    rnnlab::rnn_forward_block<scalar_t>(
        r0, r1, in.T, in.B, in.H, in.ptr<scalar_t>(in.gi), in.ptr<scalar_t>(in.wt),
        in.ptr<scalar_t>(in.b_hh), opt_ptr<scalar_t>(in.mask_h), relu, out, last);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "GRU recurrence forward -> (out (T,B,H), gates (T,B,4H))");
  m.def("gru_backward", &gru_backward, "GRU recurrence backward -> (dgi, dw_hh, db_hh)");
  m.def("lstm_forward", &lstm_forward, "LSTM recurrence forward -> (out, gates, [c, tanh c])");
  m.def("lstm_backward", &lstm_backward, "LSTM recurrence backward -> (dgi, dw_hh, db_hh)");
  m.def("rnn_forward", &rnn_forward, "Elman RNN recurrence forward -> (out,)");
  m.def("rnn_backward", &rnn_backward, "Elman RNN recurrence backward -> (dgi, dw_hh, db_hh)");
  m.def("gru_infer", &gru_infer, "GRU recurrence without gradients -> h_T (B,H) or (T,B,H)");
  m.def("lstm_infer", &lstm_infer, "LSTM recurrence without gradients -> h_T or all h");
  m.def("rnn_infer", &rnn_infer, "Elman RNN recurrence without gradients -> h_T or all h");
}
