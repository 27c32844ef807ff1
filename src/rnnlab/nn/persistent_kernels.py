"""The Triton kernels of ``rnnlab.nn.persistent`` (its docstring says what they do).

Imported on first use, so ``TRITON_INTERPRET`` is read then: set, the kernels run in
Triton's interpreter on CPU tensors (the tests); unset, they compile for the GPU.

Every tensor is time-major and row-major: step t of a (T, B, W) tensor starts at t*B*W.
A program owns rows ``program_id(0) * BB ...`` of the batch and all H units (padded to BH,
a power of two, with masked loads), so a (BB, BH) tile holds its state; ``program_id(1)``
is the direction: every tensor has a leading direction axis, so both directions of a
bidirectional layer run in the same launch.
"""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _act(x, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(x, 0.0)
    return _tanh(x)


@triton.jit
def _dact(y, RELU: tl.constexpr):
    """The activation's derivative, from its output."""
    if RELU:
        return (y > 0.0).to(y.dtype)
    return 1.0 - y * y


@triton.jit
def _block(B, H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr):
    """This program's rows and units, and which of the (BB, BH) tile are real."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.arange(0, BH)
    return rows, cols, (rows[:, None] < B) & (cols[None, :] < H)


@triton.jit
def _at(ptr, t, B, W: tl.constexpr, rows, cols):
    """Pointers to this program's tile of step t of a (T, B, W) tensor (units 0..BH)."""
    return ptr + t * B * W + rows[:, None] * W + cols[None, :]


@triton.jit
def _state_mask(mask_ptr, rows, cols, ok, H: tl.constexpr, HAS_MASK: tl.constexpr):
    """The recurrent-dropout mask's tile (B, H) (without one, a tile ``_masked`` ignores)."""
    if HAS_MASK:
        return tl.load(_at(mask_ptr, 0, 0, H, rows, cols), mask=ok, other=0.0)
    return ok.to(tl.float32)


@triton.jit
def _masked(h, m, HAS_MASK: tl.constexpr):
    if HAS_MASK:
        return h * m
    return h


@triton.jit
def _tile(w_ptr, k, H: tl.constexpr, BH: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Gate k's (H, H) block of w_hh (G*H, H), transposed or not, zero-padded to BH."""
    i = tl.arange(0, BH)
    ok = (i[:, None] < H) & (i[None, :] < H)
    if TRANSPOSED:
        return tl.load(w_ptr + (k * H + i[None, :]) * H + i[:, None], mask=ok, other=0.0)
    return tl.load(w_ptr + (k * H + i[:, None]) * H + i[None, :], mask=ok, other=0.0)


@triton.jit
def _bias(b_ptr, k, H: tl.constexpr, BH: tl.constexpr):
    i = tl.arange(0, BH)
    return tl.load(b_ptr + k * H + i, mask=i < H, other=0.0)[None, :]


@triton.jit
def _mm(a, w):
    """(BB, BH) x (BH, BH) in exact float32 (no TF32)."""
    return tl.dot(a, w, input_precision="ieee")


@triton.jit
def _store_state(hs_ptr, t, B, h, rows, cols, ok, H: tl.constexpr,
                 KEEP: tl.constexpr, LAST: tl.constexpr):
    """Every state when KEEP; else only the last (at slot 0)."""
    if KEEP:
        tl.store(_at(hs_ptr, t, B, H, rows, cols), h, mask=ok)
    elif LAST:
        tl.store(_at(hs_ptr, 0, B, H, rows, cols), h, mask=ok)


@triton.jit
def gru_fwd(gi_ptr, w_ptr, b_ptr, mask_ptr, hs_ptr, save_ptr, B, T: tl.constexpr,
            H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
            HAS_MASK: tl.constexpr, SAVE: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)                # the direction: a slab of every tensor
    gi_ptr += way * T * B * 3 * H
    w_ptr += way * 3 * H * H
    b_ptr += way * 3 * H
    mask_ptr += way * B * H
    hs_ptr += way * (T if SEQ or SAVE else 1) * B * H
    save_ptr += way * T * B * 4 * H
    wr, wz, wn = _tile(w_ptr, 0, H, BH, True), _tile(w_ptr, 1, H, BH, True), \
        _tile(w_ptr, 2, H, BH, True)
    br, bz, bn = _bias(b_ptr, 0, H, BH), _bias(b_ptr, 1, H, BH), _bias(b_ptr, 2, H, BH)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    h = tl.zeros((BB, BH), dtype=wr.dtype)
    for t in range(T):
        g = _at(gi_ptr, t, B, 3 * H, rows, cols)
        hin = _masked(h, m, HAS_MASK)
        r = tl.sigmoid(tl.load(g, mask=ok, other=0.0) + _mm(hin, wr) + br)
        z = tl.sigmoid(tl.load(g + H, mask=ok, other=0.0) + _mm(hin, wz) + bz)
        hn = _mm(hin, wn) + bn
        n = _act(tl.load(g + 2 * H, mask=ok, other=0.0) + r * hn, RELU)
        h = n + z * (h - n)
        _store_state(hs_ptr, t, B, h, rows, cols, ok, H, SEQ or SAVE, t == T - 1)
        if SAVE:
            s = _at(save_ptr, t, B, 4 * H, rows, cols)
            tl.store(s, r, mask=ok)
            tl.store(s + H, z, mask=ok)
            tl.store(s + 2 * H, n, mask=ok)
            tl.store(s + 3 * H, hn, mask=ok)


@triton.jit
def gru_bwd(gout_ptr, w_ptr, mask_ptr, hs_ptr, save_ptr, dg_ptr, dhn_ptr, B, T: tl.constexpr,
            H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
            HAS_MASK: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)
    gout_ptr += way * (T if SEQ else 1) * B * H
    w_ptr += way * 3 * H * H
    mask_ptr += way * B * H
    hs_ptr += way * T * B * H
    save_ptr += way * T * B * 4 * H
    dg_ptr += way * T * B * 3 * H
    dhn_ptr += way * T * B * H
    wr, wz, wn = _tile(w_ptr, 0, H, BH, False), _tile(w_ptr, 1, H, BH, False), \
        _tile(w_ptr, 2, H, BH, False)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    dh = tl.zeros((BB, BH), dtype=wr.dtype)
    if not SEQ:
        dh += tl.load(_at(gout_ptr, 0, B, H, rows, cols), mask=ok, other=0.0)
    for i in range(T):
        t = T - 1 - i
        if SEQ:
            dh += tl.load(_at(gout_ptr, t, B, H, rows, cols), mask=ok, other=0.0)
        s = _at(save_ptr, t, B, 4 * H, rows, cols)
        r = tl.load(s, mask=ok, other=0.0)
        z = tl.load(s + H, mask=ok, other=0.0)
        n = tl.load(s + 2 * H, mask=ok, other=0.0)
        hn = tl.load(s + 3 * H, mask=ok, other=0.0)
        hp = tl.load(_at(hs_ptr, t - 1, B, H, rows, cols), mask=ok & (t > 0), other=0.0)
        dpre = dh * (1.0 - z) * _dact(n, RELU)
        dr = dpre * hn * r * (1.0 - r)
        dz = dh * (hp - n) * z * (1.0 - z)
        dhn = dpre * r
        d = _at(dg_ptr, t, B, 3 * H, rows, cols)
        tl.store(d, dr, mask=ok)
        tl.store(d + H, dz, mask=ok)
        tl.store(d + 2 * H, dpre, mask=ok)
        tl.store(_at(dhn_ptr, t, B, H, rows, cols), dhn, mask=ok)
        dh = dh * z + _masked(_mm(dr, wr) + _mm(dz, wz) + _mm(dhn, wn), m, HAS_MASK)


@triton.jit
def lstm_fwd(gi_ptr, w_ptr, b_ptr, mask_ptr, hs_ptr, save_ptr, B, T: tl.constexpr,
             H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
             HAS_MASK: tl.constexpr, SAVE: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)                # the direction: a slab of every tensor
    gi_ptr += way * T * B * 4 * H
    w_ptr += way * 4 * H * H
    b_ptr += way * 4 * H
    mask_ptr += way * B * H
    hs_ptr += way * (T if SEQ or SAVE else 1) * B * H
    save_ptr += way * T * B * 5 * H
    wi, wf = _tile(w_ptr, 0, H, BH, True), _tile(w_ptr, 1, H, BH, True)
    wg, wo = _tile(w_ptr, 2, H, BH, True), _tile(w_ptr, 3, H, BH, True)
    bi, bf = _bias(b_ptr, 0, H, BH), _bias(b_ptr, 1, H, BH)
    bg, bo = _bias(b_ptr, 2, H, BH), _bias(b_ptr, 3, H, BH)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    h = tl.zeros((BB, BH), dtype=wi.dtype)
    c = tl.zeros((BB, BH), dtype=wi.dtype)
    for t in range(T):
        g = _at(gi_ptr, t, B, 4 * H, rows, cols)
        hin = _masked(h, m, HAS_MASK)
        i_ = tl.sigmoid(tl.load(g, mask=ok, other=0.0) + _mm(hin, wi) + bi)
        f = tl.sigmoid(tl.load(g + H, mask=ok, other=0.0) + _mm(hin, wf) + bf)
        gg = _tanh(tl.load(g + 2 * H, mask=ok, other=0.0) + _mm(hin, wg) + bg)
        o = tl.sigmoid(tl.load(g + 3 * H, mask=ok, other=0.0) + _mm(hin, wo) + bo)
        c = f * c + i_ * gg
        h = o * _tanh(c)
        _store_state(hs_ptr, t, B, h, rows, cols, ok, H, SEQ or SAVE, t == T - 1)
        if SAVE:
            s = _at(save_ptr, t, B, 5 * H, rows, cols)
            tl.store(s, i_, mask=ok)
            tl.store(s + H, f, mask=ok)
            tl.store(s + 2 * H, gg, mask=ok)
            tl.store(s + 3 * H, o, mask=ok)
            tl.store(s + 4 * H, c, mask=ok)


@triton.jit
def lstm_bwd(gout_ptr, w_ptr, mask_ptr, hs_ptr, save_ptr, dg_ptr, dhn_ptr, B, T: tl.constexpr,
             H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
             HAS_MASK: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)
    gout_ptr += way * (T if SEQ else 1) * B * H
    w_ptr += way * 4 * H * H
    mask_ptr += way * B * H
    hs_ptr += way * T * B * H
    save_ptr += way * T * B * 5 * H
    dg_ptr += way * T * B * 4 * H
    wi, wf = _tile(w_ptr, 0, H, BH, False), _tile(w_ptr, 1, H, BH, False)
    wg, wo = _tile(w_ptr, 2, H, BH, False), _tile(w_ptr, 3, H, BH, False)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    dc = tl.zeros((BB, BH), dtype=wi.dtype)
    dh = tl.zeros((BB, BH), dtype=wi.dtype)
    if not SEQ:
        dh += tl.load(_at(gout_ptr, 0, B, H, rows, cols), mask=ok, other=0.0)
    for k in range(T):
        t = T - 1 - k
        if SEQ:
            dh += tl.load(_at(gout_ptr, t, B, H, rows, cols), mask=ok, other=0.0)
        s = _at(save_ptr, t, B, 5 * H, rows, cols)
        i_ = tl.load(s, mask=ok, other=0.0)
        f = tl.load(s + H, mask=ok, other=0.0)
        gg = tl.load(s + 2 * H, mask=ok, other=0.0)
        o = tl.load(s + 3 * H, mask=ok, other=0.0)
        c = tl.load(s + 4 * H, mask=ok, other=0.0)
        cp = tl.load(_at(save_ptr, t - 1, B, 5 * H, rows, cols) + 4 * H, mask=ok & (t > 0),
                     other=0.0)
        tc = _tanh(c)
        do = dh * tc * o * (1.0 - o)
        dc += dh * o * (1.0 - tc * tc)
        di = dc * gg * i_ * (1.0 - i_)
        dgg = dc * i_ * (1.0 - gg * gg)
        df = dc * cp * f * (1.0 - f)
        dc = dc * f
        d = _at(dg_ptr, t, B, 4 * H, rows, cols)
        tl.store(d, di, mask=ok)
        tl.store(d + H, df, mask=ok)
        tl.store(d + 2 * H, dgg, mask=ok)
        tl.store(d + 3 * H, do, mask=ok)
        dh = _masked(_mm(di, wi) + _mm(df, wf) + _mm(dgg, wg) + _mm(do, wo), m, HAS_MASK)


@triton.jit
def rnn_fwd(gi_ptr, w_ptr, b_ptr, mask_ptr, hs_ptr, save_ptr, B, T: tl.constexpr,
            H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
            HAS_MASK: tl.constexpr, SAVE: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)                # the direction: a slab of every tensor
    gi_ptr += way * T * B * H
    w_ptr += way * H * H
    b_ptr += way * H
    mask_ptr += way * B * H
    hs_ptr += way * (T if SEQ or SAVE else 1) * B * H
    w, b = _tile(w_ptr, 0, H, BH, True), _bias(b_ptr, 0, H, BH)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    h = tl.zeros((BB, BH), dtype=w.dtype)
    for t in range(T):
        x = tl.load(_at(gi_ptr, t, B, H, rows, cols), mask=ok, other=0.0)
        h = _act(x + _mm(_masked(h, m, HAS_MASK), w) + b, RELU)
        _store_state(hs_ptr, t, B, h, rows, cols, ok, H, SEQ or SAVE, t == T - 1)


@triton.jit
def rnn_bwd(gout_ptr, w_ptr, mask_ptr, hs_ptr, save_ptr, dg_ptr, dhn_ptr, B, T: tl.constexpr,
            H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, RELU: tl.constexpr,
            HAS_MASK: tl.constexpr, SEQ: tl.constexpr):
    rows, cols, ok = _block(B, H, BH, BB)
    way = tl.program_id(1)
    gout_ptr += way * (T if SEQ else 1) * B * H
    w_ptr += way * H * H
    mask_ptr += way * B * H
    hs_ptr += way * T * B * H
    dg_ptr += way * T * B * H
    w = _tile(w_ptr, 0, H, BH, False)
    m = _state_mask(mask_ptr, rows, cols, ok, H, HAS_MASK)
    dh = tl.zeros((BB, BH), dtype=w.dtype)
    if not SEQ:
        dh += tl.load(_at(gout_ptr, 0, B, H, rows, cols), mask=ok, other=0.0)
    for k in range(T):
        t = T - 1 - k
        if SEQ:
            dh += tl.load(_at(gout_ptr, t, B, H, rows, cols), mask=ok, other=0.0)
        h = tl.load(_at(hs_ptr, t, B, H, rows, cols), mask=ok, other=0.0)
        dpre = dh * _dact(h, RELU)
        tl.store(_at(dg_ptr, t, B, H, rows, cols), dpre, mask=ok)
        dh = _masked(_mm(dpre, w), m, HAS_MASK)


KERNELS = {"gru": (gru_fwd, gru_bwd), "lstm": (lstm_fwd, lstm_bwd), "rnn": (rnn_fwd, rnn_bwd)}
