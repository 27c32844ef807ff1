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
def _ld(ptr, mask):
    """A load that reads 0 outside ``mask`` (padding must stay 0: it meets the products)."""
    return tl.load(ptr, mask=mask, other=0.0)


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
        return _ld(_at(mask_ptr, 0, 0, H, rows, cols), ok)
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
        return _ld(w_ptr + (k * H + i[None, :]) * H + i[:, None], ok)
    return _ld(w_ptr + (k * H + i[:, None]) * H + i[None, :], ok)


@triton.jit
def _bias(b_ptr, k, H: tl.constexpr, BH: tl.constexpr):
    i = tl.arange(0, BH)
    return _ld(b_ptr + k * H + i, i < H)[None, :]


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
    g = _at(gi_ptr, 0, B, 3 * H, rows, cols)
    xr, xz, xn = _ld(g, ok), _ld(g + H, ok), _ld(g + 2 * H, ok)
    for t in range(T):
        # The next step's inputs are loaded now, so their latency hides behind this step.
        g = _at(gi_ptr, t + 1, B, 3 * H, rows, cols)
        more = ok & (t + 1 < T)
        nr, nz, nn = _ld(g, more), _ld(g + H, more), \
            _ld(g + 2 * H, more)
        hin = _masked(h, m, HAS_MASK)
        r = tl.sigmoid(xr + _mm(hin, wr) + br)
        z = tl.sigmoid(xz + _mm(hin, wz) + bz)
        hn = _mm(hin, wn) + bn
        n = _act(xn + r * hn, RELU)
        h = n + z * (h - n)
        xr, xz, xn = nr, nz, nn
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
        dh += _ld(_at(gout_ptr, 0, B, H, rows, cols), ok)
    s = _at(save_ptr, T - 1, B, 4 * H, rows, cols)
    r, z = _ld(s, ok), _ld(s + H, ok)
    n, hn = _ld(s + 2 * H, ok), _ld(s + 3 * H, ok)
    hp = _ld(_at(hs_ptr, T - 2, B, H, rows, cols), ok & (T > 1))
    go = _ld(_at(gout_ptr, T - 1, B, H, rows, cols), ok & SEQ)
    for i in range(T):
        t = T - 1 - i
        # Step t-1's saved tensors are loaded now, so their latency hides behind step t.
        s = _at(save_ptr, t - 1, B, 4 * H, rows, cols)
        more = ok & (t > 0)
        pr, pz = _ld(s, more), _ld(s + H, more)
        pn, phn = _ld(s + 2 * H, more), _ld(s + 3 * H, more)
        php = _ld(_at(hs_ptr, t - 2, B, H, rows, cols), ok & (t > 1))
        pgo = _ld(_at(gout_ptr, t - 1, B, H, rows, cols), more & SEQ)
        dh += go
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
        r, z, n, hn, hp, go = pr, pz, pn, phn, php, pgo


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
    g = _at(gi_ptr, 0, B, 4 * H, rows, cols)
    xi, xf = _ld(g, ok), _ld(g + H, ok)
    xg, xo = _ld(g + 2 * H, ok), _ld(g + 3 * H, ok)
    for t in range(T):
        g = _at(gi_ptr, t + 1, B, 4 * H, rows, cols)        # the next step's, ahead
        more = ok & (t + 1 < T)
        ni, nf = _ld(g, more), _ld(g + H, more)
        ng, no = _ld(g + 2 * H, more), _ld(g + 3 * H, more)
        hin = _masked(h, m, HAS_MASK)
        i_ = tl.sigmoid(xi + _mm(hin, wi) + bi)
        f = tl.sigmoid(xf + _mm(hin, wf) + bf)
        gg = _tanh(xg + _mm(hin, wg) + bg)
        o = tl.sigmoid(xo + _mm(hin, wo) + bo)
        xi, xf, xg, xo = ni, nf, ng, no
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
        dh += _ld(_at(gout_ptr, 0, B, H, rows, cols), ok)
    s = _at(save_ptr, T - 1, B, 5 * H, rows, cols)
    i_, f, gg = _ld(s, ok), _ld(s + H, ok), _ld(s + 2 * H, ok)
    o, c = _ld(s + 3 * H, ok), _ld(s + 4 * H, ok)
    go = _ld(_at(gout_ptr, T - 1, B, H, rows, cols), ok & SEQ)
    for k in range(T):
        t = T - 1 - k
        # Step t-1's saved tensors (its c is this step's c_prev) are loaded ahead.
        s = _at(save_ptr, t - 1, B, 5 * H, rows, cols)
        more = ok & (t > 0)
        pi, pf, pg = _ld(s, more), _ld(s + H, more), \
            _ld(s + 2 * H, more)
        po, cp = _ld(s + 3 * H, more), _ld(s + 4 * H, more)
        pgo = _ld(_at(gout_ptr, t - 1, B, H, rows, cols), more & SEQ)
        dh += go
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
        i_, f, gg, o, c, go = pi, pf, pg, po, cp, pgo


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
    x = _ld(_at(gi_ptr, 0, B, H, rows, cols), ok)
    for t in range(T):
        nx = _ld(_at(gi_ptr, t + 1, B, H, rows, cols), ok & (t + 1 < T))      # ahead
        h = _act(x + _mm(_masked(h, m, HAS_MASK), w) + b, RELU)
        x = nx
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
        dh += _ld(_at(gout_ptr, 0, B, H, rows, cols), ok)
    h = _ld(_at(hs_ptr, T - 1, B, H, rows, cols), ok)
    go = _ld(_at(gout_ptr, T - 1, B, H, rows, cols), ok & SEQ)
    for k in range(T):
        t = T - 1 - k
        more = ok & (t > 0)                       # step t-1's tensors, ahead
        ph = _ld(_at(hs_ptr, t - 1, B, H, rows, cols), more)
        pgo = _ld(_at(gout_ptr, t - 1, B, H, rows, cols), more & SEQ)
        dh += go
        dpre = dh * _dact(h, RELU)
        tl.store(_at(dg_ptr, t, B, H, rows, cols), dpre, mask=ok)
        dh = _masked(_mm(dpre, w), m, HAS_MASK)
        h, go = ph, pgo


KERNELS = {"gru": (gru_fwd, gru_bwd), "lstm": (lstm_fwd, lstm_bwd), "rnn": (rnn_fwd, rnn_bwd)}
