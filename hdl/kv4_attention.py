"""KV4 decode-attention unit (DESIGN §3.7; QServe, AccLLM) in Amaranth 0.5.

Bit-exact with golden.kv4_attention (its docstring names every step); the
widths come from golden.kv4_attention_config.KV4Config. Three components:

KV4Quantizer  append path: one token's K and V (fixed point, `chunks` beats of
              `lanes` values each) -> min/max -> S, zero -> 4-bit codes, emitted
              as `chunks` cache beats {k: {codes, scale, zero}, v: {...}}.
KV4Attention  decode core for `heads` query heads sharing one KV head (GQA):
   cmd   {t, c[heads], lsh[heads]}        one beat per decode step
   query int8[lanes]                      heads*chunks beats, head-major
   k, v  {codes[lanes], scale, zero}      T*chunks beats each, token-major;
                                          scale/zero are read on a token's first beat
   out   sint(out_bits)[lanes]            heads*chunks beats, head-major
   error T == 0 or T > max_t on the last cmd (sticky until the next good cmd):
         the cmd is consumed and nothing else; no wrap-around.
KV4Unit       both, plus the cache fill counter: an append beyond max_t tokens
              sets `overflow` and writes nothing (the token's beats are drained).

Core pipeline (x = cycle a K beat transfers):
  K side, one beat per cycle:  x+1 S1 per-head lane products q8*k4, adder tree;
     x+2 S2 P += part (token's last beat: P_full);  x+3 S3 dot = P - zk*sumq;
     x+4 S4 dot*Sk;  x+5 S5 *C;  x+6 S6 l = sat(rshift_round(., lsh));
     x+7 S7 m, shift, e;  x+8 S8 p = TABLE[e mod 2**lf] >> (e >> lf), d update,
     push (p, shift) into the token FIFO.
  V side, one beat per cycle, starts a token when its FIFO entry is there:
     acc[h][chunk] = rshift_round(acc, shift) + (p*Sv) * v4  (the V zero once per
     token: wz = rshift_round(wz, shift) + p*Sv*zv).
  NORM: 15*d normalised (1 cycle), reciprocal by restoring division
     (recip_bits+2 cycles), then OUT: (acc - wz) * R >> s, saturated, one beat
     per cycle.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACT_BITS
from golden.kv4_attention_config import (C_BITS, CMD_T_BITS, CODE_SHIFT, KV8_LEVELS, KV8_T_CAP, KV_BITS,
                               KV_LEVELS, KV_T_CAP, LSH_BITS, SHIFT_SAT, ZERO_BITS, KV4Config,
                               exp2_table)

from .rtl import tree_sum

__all__ = ["KV4Quantizer", "KV4Attention", "KV4Unit", "cycle_model", "append_cycles",
           "token_layout", "cache_token_layout", "append_layout", "cache_layout", "cmd_layout", "query_layout",
           "out_layout", "K_LATENCY", "FIFO_DEPTH", "lanes_busy", "k_beats"]

#: Register stages from a token's last K beat to its (p, shift) entering the FIFO.
K_LATENCY = 8
#: Tokens the K side may run ahead of the V side (covers K_LATENCY at one beat per token).
FIFO_DEPTH = 32


def _cfg(config) -> KV4Config:
    if not isinstance(config, KV4Config):
        raise TypeError(f"expected a golden.kv4_attention_config.KV4Config, got {type(config).__name__}")
    return config


# --------------------------------------------------------------------------- layouts
def token_layout(c: KV4Config) -> data.StructLayout:
    """One decode beat of K or V: `lanes` 4-bit codes (a 4-bit token's codes, or
    one nibble plane of a recent token's 8-bit codes), then the token's scale
    numerator S and zero (z4, or z8 for a recent token) (LSB first, in this order)."""
    return data.StructLayout({"codes": data.ArrayLayout(unsigned(KV_BITS), c.lanes),
                              "scale": unsigned(c.scale_bits), "zero": unsigned(ZERO_BITS)})


def cache_token_layout(c: KV4Config) -> data.StructLayout:
    """One append-path output beat of K or V: 4-bit codes, 8-bit codes, the shared
    scale numerator S, zero z4 and zero z8 (LSB first, in this order)."""
    return data.StructLayout({"codes": data.ArrayLayout(unsigned(KV_BITS), c.lanes),
                              "codes8": data.ArrayLayout(unsigned(2 * KV_BITS), c.lanes),
                              "scale": unsigned(c.scale_bits), "zero": unsigned(KV_BITS),
                              "zero8": unsigned(ZERO_BITS)})


def append_layout(c: KV4Config) -> data.StructLayout:
    return data.StructLayout({"k": data.ArrayLayout(signed(c.x_bits), c.lanes),
                              "v": data.ArrayLayout(signed(c.x_bits), c.lanes)})


def cache_layout(c: KV4Config) -> data.StructLayout:
    return data.StructLayout({"k": cache_token_layout(c), "v": cache_token_layout(c)})


def cmd_layout(c: KV4Config) -> data.StructLayout:
    return data.StructLayout({"t": unsigned(CMD_T_BITS),
                              "c": data.ArrayLayout(unsigned(C_BITS), c.heads),
                              "lsh": data.ArrayLayout(unsigned(LSH_BITS), c.heads)})


def query_layout(c: KV4Config) -> data.ArrayLayout:
    return data.ArrayLayout(signed(ACT_BITS), c.lanes)


def out_layout(c: KV4Config) -> data.ArrayLayout:
    return data.ArrayLayout(signed(c.out_bits), c.lanes)


# --------------------------------------------------------------------------- helpers
def _zx(m, x, width: int, name: str = "zx"):
    """x zero-extended to `width` bits in a named signal: Verilator's lint flags
    implicit widening of unsigned operands (WIDTHEXPAND), and Amaranth folds a
    Cat with zeros back into implicit widening."""
    if len(x) >= width:
        return x
    sig = Signal(width, name=name)
    m.d.comb += sig.eq(x)
    return sig


def _rshift_round(m, x, s, name: str = "rsh"):
    """Round-half-up right shift by a variable s (golden.kv4_attention.rshift_round),
    both addends the same width. Signed x is first widened so that the half LSB
    2**(s-1) fits for every s; for unsigned x a half beyond x's width is 0,
    which gives the same result (x < 2**len(x) <= 2**(s-1))."""
    smax = (1 << len(s)) - 1
    if x.shape().signed:
        w = max(len(x), smax + 1) + 1
        half = Signal(signed(w), name=f"{name}_half")
        xs = Signal(signed(w), name=f"{name}_x")
        m.d.comb += [half.eq(((Const(1, w) << s) >> 1)[:w - 1]), xs.eq(x)]
        return (xs + half) >> s
    w = len(x)
    half = Signal(w, name=f"{name}_half")
    m.d.comb += half.eq(((Const(1, w + 1) << s) >> 1)[:w])
    return (x + half) >> s


def _uadd(m, a, b, name: str = "add"):
    """Unsigned a + b with both operands explicitly the same width."""
    w = max(len(a), len(b))
    return _zx(m, a, w, f"{name}_a") + _zx(m, b, w, f"{name}_b")


def _wire(m, value, name: str):
    """A comb signal for a value used more than once: Amaranth does not share
    common subexpressions, so chained reuse would grow exponentially."""
    sig = Signal(value.shape(), name=name)
    m.d.comb += sig.eq(value)
    return sig


def _sat(m, x, bits: int, name: str):
    x = _wire(m, x, name)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


class _FSM:
    """A state register with one `If` per state: Amaranth's m.FSM emits a
    `casez` that Verilator's lint flags as incomplete (CASEINCOMPLETE)."""

    def __init__(self, m, states, name: str):
        self.m = m
        self.codes = {n: i for i, n in enumerate(states)}
        self.reg = Signal(range(len(states)), name=name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def state(self, name: str):
        return self.m.If(self.reg == self.codes[name])

    def next(self, name: str) -> None:
        self.m.d.sync += self.reg.eq(self.codes[name])


def _mux_sel(idx, xs):
    """xs[idx] as a Mux chain: no case statement, so any len(xs) (not only powers
    of two) lints clean."""
    out = xs[0]
    for k in range(1, len(xs)):
        out = Mux(idx == k, xs[k], out)
    return out


def _sel(rows, i: int, j):
    """Lane i of chunk j (a run-time index) of per-chunk, per-lane signals."""
    if len(rows) == 1:
        return rows[0][i]
    return Array(r[i] for r in rows)[j]


def _tree(m, vals, op, name: str):
    """Balanced reduction with every node a comb signal."""
    vals = list(vals)
    k = 0
    while len(vals) > 1:
        nxt = []
        for i in range(0, len(vals) - 1, 2):
            nxt.append(_wire(m, op(vals[i], vals[i + 1]), f"{name}{k}"))
            k += 1
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def _z8(m, zero, recent, name: str):
    """A token's zero in the 8-bit domain: z8 as stored for a recent token, 16*z4
    (the stored low nibble shifted) for a 4-bit one."""
    return _wire(m, Mux(recent, zero, zero[:KV_BITS] << CODE_SHIFT)[:ZERO_BITS], name)


def _clamp(m, x, top: int, name: str):
    """clamp(x, 0, top) of a signed value."""
    x = _wire(m, x, name)
    return Mux(x < 0, 0, Mux(x > top, top, x))


# --------------------------------------------------------------------------- append path
def _t_both(m, X, S, name: str):
    """(t4, t8) = sign(X) * (min(rhe(15 |X| / S), 16), min(rhe(240 |X| / S), 241))
    from ONE restoring division of 240 |X| by S with 8 quotient bits (a quotient
    >= 256 sets every bit: both results saturate): 15 |X| / S = (q + r/S) / 16, so
    t4 rounds q >> 4 up when q mod 16 > 8, or == 8 with r > 0 or (q >> 4) odd."""
    neg = X < 0
    nb = 8
    a = Mux(neg, -X, X).as_unsigned() * KV8_LEVELS
    w = max(len(a), len(S) + nb - 1) + 1
    rem = _zx(m, a, w, f"{name}_a")
    bits = []
    for b in reversed(range(nb)):
        sb = _zx(m, S << b, w, f"{name}_s{b}")
        ge = _wire(m, rem >= sb, f"{name}_ge{b}")
        rem = _wire(m, Mux(ge, rem - sb, rem)[:w], f"{name}_r{b}")
        bits.append(ge)
    q = _wire(m, Cat(*reversed(bits)), f"{name}_q")
    r2 = _zx(m, Cat(Const(0, 1), rem), w + 1, f"{name}_r2")
    s2 = _zx(m, S, w + 1, f"{name}_sw")
    up8 = (r2 > s2) | ((r2 == s2) & q[0])
    f4, fl4 = q[:CODE_SHIFT], q[CODE_SHIFT:]
    half = 1 << (CODE_SHIFT - 1)
    up4 = (f4 > half) | ((f4 == half) & ((rem != 0) | fl4[0]))
    # one spare bit so that as_signed keeps the magnitudes 16 and 241 positive
    mag8 = Signal(KV8_T_CAP.bit_length() + 1, name=f"{name}_m8")
    mag4 = Signal(KV_T_CAP.bit_length() + 1, name=f"{name}_m4")
    m.d.comb += [mag8.eq(Mux(q >= KV8_T_CAP, KV8_T_CAP, q + up8)),
                 mag4.eq(fl4 + up4)]      # fl4 <= 15: at most 16 = the cap
    return (Mux(neg, -mag4.as_signed(), mag4.as_signed()),
            Mux(neg, -mag8.as_signed(), mag8.as_signed()))


def _butterfly(vals):
    """One constant-geometry Walsh-Hadamard stage (golden.kv4_attention.fwht):
    y[i] = x[2i] + x[2i+1], y[i + D/2] = x[2i] - x[2i+1]; every stage has the
    same wiring, so log2(D) cycles through one bank of D adders give the transform."""
    h = len(vals) // 2
    return ([vals[2 * i] + vals[2 * i + 1] for i in range(h)]
            + [vals[2 * i] - vals[2 * i + 1] for i in range(h)])


class KV4Quantizer(wiring.Component):
    """Quantizes one token's K and V per token to 4 and 8 bits with one shared
    scale numerator (golden.kv4_attention.append_fixed).

    Phases: IN (chunks beats buffered), ROT (log2(D) butterfly cycles on K, the
    last one with the rot_shift rounding; only with config.rotate), MINMAX, SCALE
    (S), ZERO (z4, z8 from min through the lane divider), OUT (chunks cache beats).
    Per token: append_cycles(config, 1) cycles."""

    def __init__(self, config: KV4Config):
        self.config = c = _cfg(config)
        super().__init__({
            "x": In(stream.Signature(append_layout(c))),
            "y": Out(stream.Signature(cache_layout(c))),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        L, D = c.lanes, c.head_dim
        # K is buffered wide enough for the butterfly's growth (log2 D bits)
        wid = {"k": c.x_bits + (c.log2_d if c.rotate else 0), "v": c.x_bits}
        j = Signal(range(c.chunks))
        buf = {n: [[Signal(signed(wid[n]), name=f"{n}buf{j}_{i}") for i in range(L)]
                   for j in range(c.chunks)] for n in ("k", "v")}
        flat = {n: [x for row in buf[n] for x in row] for n in ("k", "v")}
        lo = {n: Signal(signed(wid[n]), name=f"{n}lo") for n in ("k", "v")}
        hi = {n: Signal(signed(wid[n]), name=f"{n}hi") for n in ("k", "v")}
        S = {n: Signal(c.scale_bits, name=f"{n}S") for n in ("k", "v")}
        z4 = {n: Signal(KV_BITS, name=f"{n}z4") for n in ("k", "v")}
        z8 = {n: Signal(ZERO_BITS, name=f"{n}z8") for n in ("k", "v")}
        stage = Signal(range(max(c.log2_d, 1)))
        last = j == c.chunks - 1
        ql, qsteps = _quant_split(c)
        qsub = Signal(range(max(qsteps, 2)))
        held = range((qsteps - 1) * ql)    # lanes waiting in cbuf for their beat
        cbuf = {n: {i: Signal(KV_BITS, name=f"{n}cb{i}") for i in held} for n in ("k", "v")}
        cbuf8 = {n: {i: Signal(2 * KV_BITS, name=f"{n}cb8{i}") for i in held} for n in ("k", "v")}

        states = ["IN"] + (["ROT"] if c.rotate else []) + ["MINMAX", "SCALE", "ZERO", "OUT"]
        with _FSM(m, states, "qstate") as fsm:
            with fsm.state("IN"):
                m.d.comb += self.x.ready.eq(1)
                with m.If(self.x.valid):
                    for n in ("k", "v"):
                        for jj in range(c.chunks):  # one If per chunk: no case statement
                            with m.If(j == jj):
                                m.d.sync += [buf[n][jj][i].eq(self.x.payload[n][i])
                                             for i in range(L)]
                    m.d.sync += j.eq(Mux(last, 0, j + 1))
                    with m.If(last):
                        m.d.sync += stage.eq(0)
                        fsm.next(states[1])
            if c.rotate:
                with fsm.state("ROT"):
                    ys = _butterfly(flat["k"])
                    final = stage == c.log2_d - 1
                    for x, y in zip(flat["k"], ys):
                        sh = (y + (1 << (c.rot_shift - 1))) >> c.rot_shift if c.rot_shift else y
                        m.d.sync += x.eq(Mux(final, sh, y)[:len(x)])
                    m.d.sync += stage.eq(stage + 1)
                    with m.If(final):
                        fsm.next("MINMAX")
            with fsm.state("MINMAX"):
                # one chunk per cycle through lanes-wide trees (not head_dim-wide)
                for n in ("k", "v"):
                    vals = [_sel(buf[n], i, j) for i in range(L)]
                    bmin = _tree(m, vals, lambda a, b: Mux(a < b, a, b), f"{n}min")
                    bmax = _tree(m, vals, lambda a, b: Mux(a > b, a, b), f"{n}max")
                    m.d.sync += [lo[n].eq(Mux((j == 0) | (bmin < lo[n]), bmin, lo[n])),
                                 hi[n].eq(Mux((j == 0) | (bmax > hi[n]), bmax, hi[n]))]
                m.d.sync += j.eq(Mux(last, 0, j + 1))
                with m.If(last):
                    fsm.next("SCALE")
            with fsm.state("SCALE"):
                for n in ("k", "v"):
                    rng = (hi[n] - lo[n]).as_unsigned()
                    mag = Mux(lo[n] < 0, -lo[n], lo[n]).as_unsigned()
                    m.d.sync += S[n].eq(Mux(rng != 0, rng,
                                            Mux(lo[n] != 0, mag * KV_LEVELS, KV_LEVELS)))
                fsm.next("ZERO")
            with fsm.state("ZERO"):
                for n in ("k", "v"):
                    t4, t8 = _t_both(m, lo[n], S[n], f"{n}zt")
                    m.d.sync += [z4[n].eq(_clamp(m, -t4, KV_LEVELS, f"{n}zc4")),
                                 z8[n].eq(_clamp(m, -t8, KV8_LEVELS, f"{n}zc8"))]
                fsm.next("OUT")
            with fsm.state("OUT"):
                # the lane dividers are time-shared: ql lanes per cycle, qsteps
                # cycles per cache beat, the last group straight to the beat
                emit = qsub == qsteps - 1
                for n in ("k", "v"):
                    side = self.y.payload[n]
                    m.d.comb += [side.scale.eq(S[n]), side.zero.eq(z4[n]), side.zero8.eq(z8[n])]
                    for q in range(ql):
                        lanes_q = [k * ql + q for k in range(qsteps) if k * ql + q < L]
                        x = _wire(m, _mux_sel(qsub, [_sel(buf[n], i, j) for i in lanes_q]),
                                  f"{n}qx{q}")
                        t4, t8 = _t_both(m, x, S[n], f"{n}t{q}")
                        c4 = Signal(KV_BITS, name=f"{n}c4_{q}")
                        c8 = Signal(2 * KV_BITS, name=f"{n}c8_{q}")
                        m.d.comb += [c4.eq(_clamp(m, t4 + z4[n], KV_LEVELS, f"{n}c{q}")),
                                     c8.eq(_clamp(m, t8 + z8[n], KV8_LEVELS, f"{n}c8{q}"))]
                        for k, i in enumerate(lanes_q):
                            if k < qsteps - 1:
                                with m.If(qsub == k):
                                    m.d.sync += [cbuf[n][i].eq(c4), cbuf8[n][i].eq(c8)]
                                m.d.comb += [side.codes[i].eq(cbuf[n][i]),
                                             side.codes8[i].eq(cbuf8[n][i])]
                            else:
                                m.d.comb += [side.codes[i].eq(c4), side.codes8[i].eq(c8)]
                m.d.comb += self.y.valid.eq(emit)
                with m.If(~emit):
                    m.d.sync += qsub.eq(qsub + 1)
                with m.If(emit & self.y.ready):
                    m.d.sync += [j.eq(Mux(last, 0, j + 1)), qsub.eq(0)]
                    with m.If(last):
                        fsm.next("IN")
        return m


#: The append quantizer's lane dividers (two per element: K and V) are shared by
#: QUANT_SPLIT lanes: one token is appended per decode step, so its codes need
#: not come out at a beat per cycle.
QUANT_SPLIT = 4


def _quant_split(c: KV4Config) -> tuple[int, int]:
    """(lanes quantized per cycle, cycles per cache beat) of the append path."""
    ql = max(1, c.lanes // QUANT_SPLIT)
    return ql, -(-c.lanes // ql)


def append_cycles(config: KV4Config, tokens: int) -> int:
    """Cycles of the append path for `tokens` back-to-back tokens (ideal ends):
    chunks in + log2(D) butterfly stages (rotate) + chunks MINMAX + SCALE + ZERO
    + chunks * quant_steps out."""
    c = _cfg(config)
    return tokens * (c.chunks * (2 + _quant_split(c)[1]) + 2
                     + (c.log2_d if c.rotate else 0))


# --------------------------------------------------------------------------- decode core
def _decode_ports(c: KV4Config) -> dict:
    """The decode core's signature members (shared by KV4Attention and KV4Unit)."""
    return {"cmd": In(stream.Signature(cmd_layout(c))),
            "query": In(stream.Signature(query_layout(c))),
            "k": In(stream.Signature(token_layout(c))),
            "v": In(stream.Signature(token_layout(c))),
            "out": Out(stream.Signature(out_layout(c))),
            "error": Out(1),
            "busy": Out(1)}


class KV4Attention(wiring.Component):
    """Decode attention for `heads` query heads over T cached tokens (module
    docstring); `busy` is high from the cmd until the last out beat."""

    def __init__(self, config: KV4Config):
        self.config = c = _cfg(config)
        super().__init__(_decode_ports(c))

    def elaborate(self, platform):
        c = self.config
        m = Module()
        H, L, NC = c.heads, c.lanes, c.chunks
        table = Array(Const(v, c.p_bits) for v in exp2_table(c))

        T = Signal(c.t_bits)
        n4 = Signal(c.t_bits)   # tokens read at 4 bits: T - min(recent, T)
        cs = [Signal(C_BITS, name=f"c{h}") for h in range(H)]
        lshs = [Signal(LSH_BITS, name=f"lsh{h}") for h in range(H)]
        qbuf = [[[Signal(signed(ACT_BITS), name=f"q{h}_{j}_{i}") for i in range(L)]
                 for j in range(NC)] for h in range(H)]
        sumq = [Signal(signed(c.sumq_bits), name=f"sumq{h}") for h in range(H)]
        qe = [Signal(range(c.log2_d + 2), name=f"qe{h}") for h in range(H)]
        lsh_eff = [_wire(m, (lshs[h] - qe[h])[:LSH_BITS], f"lsheff{h}") for h in range(H)]
        acc = [[[Signal(c.acc_bits, name=f"acc{h}_{j}_{i}") for i in range(L)]
                for j in range(NC)] for h in range(H)]
        wz = [Signal(c.acc_bits, name=f"wz{h}") for h in range(H)]
        d = [Signal(c.d_bits, name=f"d{h}") for h in range(H)]
        mx = [Signal(signed(c.max_bits), name=f"m{h}") for h in range(H)]

        run = Signal()
        m.d.comb += self.busy.eq(run)

        # ---------------- K side
        # a token is `chunks` beats, or 2*chunks for a recent (8-bit) token: the
        # high-nibble plane (weight 16, like a 4-bit code) then the low plane
        kj = Signal(range(NC))
        kt = Signal(c.t_bits)
        kpl = Signal()
        ahead = Signal(range(FIFO_DEPTH + 1))
        k_rec = _wire(m, kt >= n4, "k_rec")
        k_first = _wire(m, (kj == 0) & ~kpl, "k_first")
        k_cend = kj == NC - 1
        k_last = _wire(m, k_cend & (kpl | ~k_rec), "k_last")
        k_go = Signal()
        m.d.comb += [self.k.ready.eq(run & (kt < T) & (~k_first | (ahead < FIFO_DEPTH))),
                     k_go.eq(self.k.valid & self.k.ready)]
        with m.If(k_go):
            m.d.sync += kj.eq(Mux(k_cend, 0, kj + 1))
            with m.If(k_cend):
                m.d.sync += kpl.eq(~k_last)
            with m.If(k_last):
                m.d.sync += kt.eq(kt + 1)
        # S1: lane products and the adder tree per head
        part_shape = signed(ACT_BITS + KV_BITS + 1 + (L - 1).bit_length())
        s1_v, s1_first, s1_last, s1_lo = Signal(), Signal(), Signal(), Signal()
        s1_part = [Signal(part_shape, name=f"s1_part{h}") for h in range(H)]
        hold_s, hold_z = Signal(c.scale_bits), Signal(ZERO_BITS)
        m.d.sync += [s1_v.eq(k_go), s1_first.eq(k_first), s1_last.eq(k_last), s1_lo.eq(kpl)]
        with m.If(k_go & k_first):
            m.d.sync += [hold_s.eq(self.k.payload.scale),
                         hold_z.eq(_z8(m, self.k.payload.zero, k_rec, "kz"))]
        for h in range(H):
            prods = [_sel(qbuf[h], i, kj) * self.k.payload.codes[i] for i in range(L)]
            m.d.sync += s1_part[h].eq(tree_sum(prods))
        # S2: accumulate over the token's beats
        P = [Signal(signed(c.dot_bits), name=f"P{h}") for h in range(H)]
        s2_v = Signal()
        s2_P = [Signal(signed(c.dot_bits), name=f"s2_P{h}") for h in range(H)]
        s2_s, s2_z = Signal(c.scale_bits), Signal(ZERO_BITS)
        m.d.sync += s2_v.eq(s1_v & s1_last)
        for h in range(H):
            part = _wire(m, Mux(s1_lo, s1_part[h], s1_part[h] << CODE_SHIFT), f"s1_w{h}")
            tot = Mux(s1_first, 0, P[h]) + part
            with m.If(s1_v):
                m.d.sync += P[h].eq(tot)
                with m.If(s1_last):
                    m.d.sync += s2_P[h].eq(tot)
        with m.If(s1_v & s1_last):
            m.d.sync += [s2_s.eq(hold_s), s2_z.eq(hold_z)]
        # S3: dot = P - zk * sumq
        s3_v = Signal()
        s3_dot = [Signal(signed(c.dot_bits), name=f"s3_dot{h}") for h in range(H)]
        s3_s = Signal(c.scale_bits)
        m.d.sync += [s3_v.eq(s2_v), s3_s.eq(s2_s)]
        for h in range(H):
            m.d.sync += s3_dot[h].eq(s2_P[h] - s2_z * sumq[h])
        # S4: dot * Sk ; S5: * C ; S6: logit
        s4_v, s5_v, s6_v = Signal(), Signal(), Signal()
        s4 = [Signal(signed(c.dot_bits + c.scale_bits + 1), name=f"s4_{h}") for h in range(H)]
        s5 = [Signal(signed(c.prod_bits + 1), name=f"s5_{h}") for h in range(H)]
        s6 = [Signal(signed(c.logit_bits), name=f"s6_l{h}") for h in range(H)]
        m.d.sync += [s4_v.eq(s3_v), s5_v.eq(s4_v), s6_v.eq(s5_v)]
        for h in range(H):
            m.d.sync += [s4[h].eq(s3_dot[h] * s3_s),
                         s5[h].eq(s4[h] * cs[h]),
                         s6[h].eq(_sat(m, _rshift_round(m, s5[h], lsh_eff[h], f"lr{h}"), c.logit_bits,
                                       f"l{h}"))]
        # S7: running max, shift, e
        s7_v = Signal()
        ft = Signal()           # the next token reaching S7 is the first
        e_shape = unsigned(c.logit_bits + 2)
        s7_e = [Signal(e_shape, name=f"s7_e{h}") for h in range(H)]
        s7_sh = [Signal(range(SHIFT_SAT + 1), name=f"s7_sh{h}") for h in range(H)]
        m.d.sync += s7_v.eq(s6_v)
        with m.If(s6_v):
            m.d.sync += ft.eq(0)
        for h in range(H):
            lf = c.logit_frac
            ce = _wire(m, (s6[h] + ((1 << lf) - 1)) >> lf, f"ce{h}")
            mn = _wire(m, Mux(ft | (ce > mx[h]), ce, mx[h]), f"mn{h}")
            diff = _wire(m, (mn - mx[h]).as_unsigned(), f"mdiff{h}")
            with m.If(s6_v):
                m.d.sync += [mx[h].eq(mn),
                             s7_e[h].eq(((mn << lf) - s6[h]).as_unsigned()),
                             s7_sh[h].eq(Mux(ft, 0, Mux(diff > SHIFT_SAT, SHIFT_SAT, diff)))]
        # S8: p from the table and a shift, d update, FIFO push
        tf = fifo.SyncFIFO(width=H * (c.p_bits + 6), depth=FIFO_DEPTH)
        m.submodules.tfifo = tf
        pushed = []
        for h in range(H):
            lf = c.logit_frac
            ei = _wire(m, s7_e[h] >> lf, f"ei{h}")
            ef = s7_e[h][:lf]
            p = Mux(ei >= SHIFT_SAT, 0, _rshift_round(m, table[ef], ei[:6], f"pr{h}"))[:c.p_bits]
            ps = Signal(c.p_bits, name=f"s8_p{h}")
            m.d.comb += ps.eq(p)
            with m.If(s7_v):
                m.d.sync += d[h].eq(_uadd(m, _rshift_round(m, d[h], s7_sh[h], f"dr{h}"), ps,
                                          f"du{h}"))
            pushed += [ps, s7_sh[h]]
        m.d.comb += [tf.w_en.eq(s7_v), tf.w_data.eq(Cat(*pushed))]

        # ---------------- V side
        vj = Signal(range(NC))
        vt = Signal(c.t_bits)
        vpl = Signal()
        v_rec = _wire(m, vt >= n4, "v_rec")
        v_first = _wire(m, (vj == 0) & ~vpl, "v_first")
        v_cend = vj == NC - 1
        v_last = _wire(m, v_cend & (vpl | ~v_rec), "v_last")
        v_go = Signal()
        m.d.comb += [self.v.ready.eq(run & (vt < T) & (~v_first | tf.r_rdy)),
                     v_go.eq(self.v.valid & self.v.ready),
                     tf.r_en.eq(v_go & v_first)]
        w_reg = [Signal(c.w_bits, name=f"w{h}") for h in range(H)]
        s_reg = [Signal(6, name=f"vsh{h}") for h in range(H)]
        with m.If(v_go):
            m.d.sync += vj.eq(Mux(v_cend, 0, vj + 1))
            with m.If(v_cend):
                m.d.sync += vpl.eq(~v_last)
            with m.If(v_last):
                m.d.sync += vt.eq(vt + 1)
        for h in range(H):
            base = h * (c.p_bits + 6)
            fp = tf.r_data[base:base + c.p_bits]
            fs = tf.r_data[base + c.p_bits:base + c.p_bits + 6]
            w = Signal(c.w_bits, name=f"wcur{h}")
            sh = Signal(6, name=f"shcur{h}")
            # the rescale applies on a chunk's first touch (plane 0) only
            m.d.comb += [w.eq(Mux(v_first, fp * self.v.payload.scale, w_reg[h])),
                         sh.eq(Mux(vpl, 0, Mux(v_first, fs, s_reg[h])))]
            with m.If(v_go & v_first):
                m.d.sync += [w_reg[h].eq(w), s_reg[h].eq(sh),
                             wz[h].eq(_uadd(m, _rshift_round(m, wz[h], sh, f"wzr{h}"),
                                            w * _z8(m, self.v.payload.zero, v_rec, f"vz{h}"),
                                            f"wzu{h}"))]
            new = [Signal(c.acc_bits, name=f"accnew{h}_{i}") for i in range(L)]
            for i in range(L):
                prod = _wire(m, w * self.v.payload.codes[i], f"vp{h}_{i}")
                m.d.comb += new[i].eq(_uadd(m, _rshift_round(m, _sel(acc[h], i, vj), sh,
                                                          f"ar{h}_{i}"),
                                            Mux(vpl, prod, prod << CODE_SHIFT), f"au{h}_{i}"))
            with m.If(v_go):
                if True:  # one If per chunk: no case statement
                    for j in range(NC):
                        with m.If(vj == j):
                            m.d.sync += [acc[h][j][i].eq(new[i]) for i in range(L)]
        with m.If(k_go & k_first & ~(v_go & v_last)):
            m.d.sync += ahead.eq(ahead + 1)
        with m.Elif(~(k_go & k_first) & v_go & v_last):
            m.d.sync += ahead.eq(ahead - 1)

        # ---------------- control, query load, normalisation, output
        qh = Signal(range(max(H, 2)))
        qj = Signal(range(NC))
        qb = Signal(range(H * NC))
        dn = [Signal(c.dd_bits, name=f"dn{h}") for h in range(H)]
        osh = [Signal(range(c.dd_bits + c.recip_bits + 1), name=f"osh{h}") for h in range(H)]
        rem = [Signal(c.dd_bits + 1, name=f"rem{h}") for h in range(H)]
        R = [Signal(c.recip_width, name=f"R{h}") for h in range(H)]
        step = Signal(range(c.recip_width + 1))
        oh = Signal(range(max(H, 2)))
        oj = Signal(range(NC))
        # the normaliser's wide multipliers (acc_bits x recip_width) are time-shared:
        # `nl` per cycle, `osteps` cycles fill one out beat (norm_steps)
        nl, osteps = _norm_split(c)
        osub = Signal(range(max(osteps, 2)))
        # every lane but the last group's waits here for its beat
        obuf = {i: Signal(signed(c.out_bits), name=f"obuf{i}") for i in range((osteps - 1) * nl)}
        # query path: with rotate, each head's vector is collected in qr, rotated by
        # log2(D) butterfly stages, then requantized to INT8 by a power-of-two shift e
        if c.rotate:
            qr = [Signal(signed(c.qr_bits), name=f"qr{n}") for n in range(c.head_dim)]
            qstage = Signal(range(c.log2_d))
            qe_cur = Signal(range(c.log2_d + 2))
        qstates = ["QUERY"] + (["QROT", "QMAX", "QPUT"] if c.rotate else [])
        states = ["IDLE"] + qstates + ["RUN", "NORM", "DIV", "OUT"]
        with _FSM(m, states, "state") as fsm:
            with fsm.state("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    t = self.cmd.payload.t
                    bad = (t == 0) | (t > c.max_t)
                    for h in range(H if c.min_lsh else 0):
                        bad = bad | (self.cmd.payload.lsh[h] < c.min_lsh)
                    with m.If(bad):
                        m.d.sync += self.error.eq(1)
                    with m.Else():
                        m.d.sync += [self.error.eq(0), T.eq(t), run.eq(0),
                                     n4.eq(Mux(t > c.recent, t - c.recent, 0)),
                                     qh.eq(0), qj.eq(0), qb.eq(0), kj.eq(0), kt.eq(0), vj.eq(0),
                                     vt.eq(0), kpl.eq(0), vpl.eq(0), ahead.eq(0), ft.eq(1)]
                        for h in range(H):
                            m.d.sync += [cs[h].eq(self.cmd.payload.c[h]),
                                         lshs[h].eq(self.cmd.payload.lsh[h]), sumq[h].eq(0),
                                         qe[h].eq(0), wz[h].eq(0), d[h].eq(0)]
                            for j in range(c.chunks):
                                m.d.sync += [acc[h][j][i].eq(0) for i in range(L)]
                        fsm.next("QUERY")
            with fsm.state("QUERY"):
                m.d.comb += self.query.ready.eq(1)
                with m.If(self.query.valid):
                    if c.rotate:
                        for j in range(NC):  # one If per chunk: no case statement
                            with m.If(qj == j):
                                m.d.sync += [qr[j * L + i].eq(self.query.payload[i])
                                             for i in range(L)]
                    else:
                        beat_sum = tree_sum(self.query.payload[i] for i in range(L))
                        for h in range(H):  # one If per beat: no case statement
                            for j in range(NC):
                                with m.If(qb == h * NC + j):
                                    m.d.sync += [qbuf[h][j][i].eq(self.query.payload[i])
                                                 for i in range(L)]
                                    m.d.sync += sumq[h].eq(sumq[h] + beat_sum)
                    m.d.sync += qb.eq(qb + 1)
                    m.d.sync += qj.eq(Mux(qj == NC - 1, 0, qj + 1))
                    with m.If(qj == NC - 1):
                        if c.rotate:
                            m.d.sync += qstage.eq(0)
                            fsm.next("QROT")
                        else:
                            m.d.sync += qh.eq(qh + 1)
                            with m.If(qh == H - 1):
                                m.d.sync += run.eq(1)
                                fsm.next("RUN")
            if c.rotate:
                with fsm.state("QROT"):
                    m.d.sync += [x.eq(y[:len(x)]) for x, y in zip(qr, _butterfly(qr))]
                    m.d.sync += qstage.eq(qstage + 1)
                    with m.If(qstage == c.log2_d - 1):
                        fsm.next("QMAX")
                with fsm.state("QMAX"):
                    mags = [_wire(m, Mux(x < 0, -x, x).as_unsigned(), f"qmag{n}")
                            for n, x in enumerate(qr)]
                    M = _wire(m, _tree(m, mags, lambda a, b: Mux(a > b, a, b), "qmax"), "qM")
                    bl = Signal(range(len(M) + 1), name="qbl")
                    for b in range(len(M)):   # bit length: the highest set bit wins
                        with m.If(M[b]):
                            m.d.comb += bl.eq(b + 1)
                    keep = ACT_BITS - 1
                    m.d.sync += qe_cur.eq(Mux(bl > keep, bl - keep, 0))
                    fsm.next("QPUT")
                with fsm.state("QPUT"):
                    q8 = [_wire(m, _sat(m, _rshift_round(m, x, qe_cur, f"qrr{n}"), ACT_BITS,
                                        f"q8s{n}"), f"q8_{n}")
                          for n, x in enumerate(qr)]
                    qsum = Signal(signed(c.sumq_bits), name="qsum")   # |sum| <= 128 * D
                    m.d.comb += qsum.eq(tree_sum(q8))
                    for h in range(H):
                        with m.If(qh == h):
                            m.d.sync += [sumq[h].eq(qsum), qe[h].eq(qe_cur)]
                            for j in range(NC):
                                m.d.sync += [qbuf[h][j][i].eq(q8[j * L + i]) for i in range(L)]
                    m.d.sync += qh.eq(qh + 1)
                    with m.If(qh == H - 1):
                        m.d.sync += run.eq(1)
                        fsm.next("RUN")
                    with m.Else():
                        fsm.next("QUERY")
            with fsm.state("RUN"):
                with m.If(vt == T):
                    m.d.sync += run.eq(0)
                    fsm.next("NORM")
            with fsm.state("NORM"):
                for h in range(H):
                    dd = d[h] * KV8_LEVELS
                    bl = Signal(range(c.dd_bits + 1), name=f"bl{h}")
                    for b in range(c.dd_bits):
                        with m.If(dd[b]):
                            m.d.comb += bl.eq(b + 1)
                    sd = Signal(range(c.dd_bits + 1), name=f"sd{h}")
                    m.d.comb += sd.eq(c.dd_bits - bl)
                    top = c.dd_bits - 1 + c.recip_bits - c.out_frac
                    m.d.sync += [dn[h].eq((_zx(m, dd, len(dd) + (1 << len(sd)) - 1, f"ddw{h}") << sd)
                                          [:c.dd_bits]),
                                 osh[h].eq(Const(top, len(osh[h])) - _zx(m, sd, len(osh[h]), f"sdw{h}")),
                                 rem[h].eq(1 << (c.dd_bits - 3)), R[h].eq(0)]
                m.d.sync += step.eq(0)
                fsm.next("DIV")
            with fsm.state("DIV"):
                for h in range(H):
                    r2 = Cat(Const(0, 1), rem[h])
                    r2 = _zx(m, r2, len(r2), f"dr2{h}")
                    dnw = _zx(m, dn[h], len(r2), f"dnw{h}")
                    ge = _wire(m, r2 >= dnw, f"dge{h}")
                    m.d.sync += [rem[h].eq(Mux(ge, r2 - dnw, r2)), R[h].eq(Cat(ge, R[h]))]
                m.d.sync += step.eq(step + 1)
                with m.If(step == c.recip_width - 1):
                    m.d.sync += [oh.eq(0), oj.eq(0), osub.eq(0)]
                    fsm.next("OUT")
            with fsm.state("OUT"):
                # head and lane group selected first: nl multipliers serve everything;
                # groups 0..osteps-2 go to obuf, the last one straight to the beat
                def pick(xs):
                    return _mux_sel(oh, xs)
                wz_o = _wire(m, pick(wz), "wz_o")
                R_o = _wire(m, pick(R), "R_o")
                osh_o = _wire(m, pick(osh), "osh_o")
                for q in range(nl):
                    lanes_q = [k * nl + q for k in range(osteps) if k * nl + q < L]
                    per_head = [_mux_sel(osub, [_sel(acc[h], i, oj) for i in lanes_q])
                                for h in range(H)]
                    a_o = _wire(m, pick(per_head), f"acc_o{q}")
                    diff = _wire(m, a_o - wz_o, f"diff_o{q}")
                    y = Signal(signed(c.out_bits), name=f"ynorm{q}")
                    m.d.comb += y.eq(_sat(m, _rshift_round(m, diff * R_o, osh_o, f"yr{q}"),
                                          c.out_bits, f"y{q}"))
                    for k, i in enumerate(lanes_q):
                        if k < osteps - 1:
                            with m.If(osub == k):
                                m.d.sync += obuf[i].eq(y)
                            m.d.comb += self.out.payload[i].eq(obuf[i])
                        else:
                            m.d.comb += self.out.payload[i].eq(y)
                emit = osub == osteps - 1
                m.d.comb += self.out.valid.eq(emit)
                with m.If(~emit):
                    m.d.sync += osub.eq(osub + 1)
                with m.If(emit & self.out.ready):
                    m.d.sync += [oj.eq(Mux(oj == NC - 1, 0, oj + 1)), osub.eq(0)]
                    with m.If(oj == NC - 1):
                        m.d.sync += oh.eq(oh + 1)
                        with m.If(oh == H - 1):
                            fsm.next("IDLE")
        return m


#: The output normaliser computes lanes // NORM_SPLIT elements per cycle: its
#: multipliers are acc_bits x recip_width wide and work once per decode step, so
#: `lanes` of them cost about as much as every K/V lane together. 2 keeps lanes
#: busy >= 95 % at T = 512 (d64, 3 heads); 4 would halve them again for 1.5 %.
NORM_SPLIT = 2


def _norm_split(c: KV4Config) -> tuple[int, int]:
    """(elements per cycle, cycles per out beat) of the output normaliser."""
    nl = max(1, c.lanes // NORM_SPLIT)
    return nl, -(-c.lanes // nl)


def k_beats(config: KV4Config, T: int) -> int:
    """Beats of the K (and of the V) stream in a T-token decode: chunks per token,
    twice that for the last min(recent, T) tokens (two nibble planes)."""
    c = _cfg(config)
    return (T + c.recent_tokens(T)) * c.chunks


def cycle_model(config: KV4Config, T: int) -> int:
    """Cycles from the cmd transfer to the last out transfer for one decode step
    with ideal sources and sink (docs/kv4_attention.md):
      2 (cmd, RUN -> NORM) + heads*chunks (query)
      + heads*(log2 D + 2) (query butterfly, max, requantize; rotate only)
      + k_beats (K) + the last token's V beats (chunks, 2*chunks if recent)
      + K_LATENCY + recip_width (NORM + DIV)
      + heads*chunks*norm_steps (out: a beat every norm_steps normaliser cycles)."""
    c = _cfg(config)
    if not isinstance(T, int) or T < 1 or T > c.max_t:
        raise ValueError(f"T must be in [1, {c.max_t}], got {T!r}")
    nc = c.chunks
    query = c.heads * nc + (c.heads * (c.log2_d + 2) if c.rotate else 0)
    last_v = nc * (2 if c.recent else 1)
    return (2 + query + k_beats(c, T) + last_v + K_LATENCY + c.recip_width
            + c.heads * nc * _norm_split(c)[1])


def lanes_busy(config: KV4Config, T: int) -> float:
    """Share of cycles in which the K and V lanes take a beat: k_beats / cycles."""
    return k_beats(config, T) / cycle_model(config, T)


# --------------------------------------------------------------------------- top
class KV4Unit(wiring.Component):
    """KV4Attention + KV4Quantizer + the cache fill counter (module docstring).
    `cache_clear` (one cycle) empties the count and clears `overflow`."""

    def __init__(self, config: KV4Config):
        self.config = c = _cfg(config)
        super().__init__({
            **_decode_ports(c),
            "append": In(stream.Signature(append_layout(c))),
            "cache": Out(stream.Signature(cache_layout(c))),
            "cache_clear": In(1),
            "count": Out(c.t_bits),
            "overflow": Out(1),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        m.submodules.core = core = KV4Attention(c)
        m.submodules.quant = qz = KV4Quantizer(c)
        for n in ("cmd", "query", "k", "v"):
            wiring.connect(m, wiring.flipped(getattr(self, n)), getattr(core, n))
        wiring.connect(m, core.out, wiring.flipped(self.out))
        m.d.comb += [self.error.eq(core.error), self.busy.eq(core.busy)]

        # append: a token that would exceed max_t is drained without output
        j = Signal(range(c.chunks))
        drop = Signal()
        full = self.count == c.max_t
        start = j == 0
        dropping = Mux(start, full, drop)
        m.d.comb += [qz.x.payload.eq(self.append.payload),
                     qz.x.valid.eq(self.append.valid & ~dropping),
                     self.append.ready.eq(Mux(dropping, 1, qz.x.ready))]
        with m.If(self.append.valid & self.append.ready):
            m.d.sync += [j.eq(Mux(j == c.chunks - 1, 0, j + 1)), drop.eq(dropping)]
            with m.If(dropping):
                m.d.sync += self.overflow.eq(1)
        wiring.connect(m, qz.y, wiring.flipped(self.cache))
        oj = Signal(range(c.chunks))
        with m.If(qz.y.valid & qz.y.ready):
            m.d.sync += oj.eq(Mux(oj == c.chunks - 1, 0, oj + 1))
            with m.If(oj == c.chunks - 1):
                m.d.sync += self.count.eq(self.count + 1)
        with m.If(self.cache_clear):
            m.d.sync += [self.count.eq(0), self.overflow.eq(0)]
        return m
