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
  NORM: 240*d normalised (1 cycle), reciprocal by restoring division
     (recip_bits+2 cycles), then OUT: (acc - wz) * R >> s, saturated, one beat
     every norm_steps cycles (the normaliser's multipliers are time-shared).

Each component's `elaborate` reads as its stages: one method per FSM state or
pipeline stage, over a register bundle (_TokenRegs, _DecodeRegs).
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACT_BITS
from golden.kv4_attention_config import (C_BITS, CMD_T_BITS, CODE_SHIFT, KV8_LEVELS, KV8_T_CAP,
                                         KV_BITS, KV_LEVELS, KV_T_CAP, LSH_BITS, SHIFT_SAT,
                                         ZERO_BITS, KV4Config, exp2_table)
from golden.validate import expect_type

from .rtl import (FSM, bit_length, count_width, rshift_round, select, tree, tree_sum, wire,
                  zext)

__all__ = ["KV4Quantizer", "KV4Attention", "KV4Unit", "cycle_model", "append_cycles",
           "token_layout", "cache_token_layout", "append_layout", "cache_layout", "cmd_layout",
           "query_layout", "out_layout", "K_LATENCY", "FIFO_DEPTH", "lanes_busy", "k_beats"]

#: Register stages from a token's last K beat to its (p, shift) entering the FIFO.
K_LATENCY = 8
#: Tokens the K side may run ahead of the V side (covers K_LATENCY at one beat per token).
FIFO_DEPTH = 32
#: Width of a rescale shift in the token FIFO (0..SHIFT_SAT).
_SHIFT_W = count_width(SHIFT_SAT)


def _cfg(config) -> KV4Config:
    return expect_type("config", config, KV4Config)


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
    """Layout of an append beat: `lanes` elements of K and of V (x_bits each)."""
    return data.StructLayout({"k": data.ArrayLayout(signed(c.x_bits), c.lanes),
                              "v": data.ArrayLayout(signed(c.x_bits), c.lanes)})


def cache_layout(c: KV4Config) -> data.StructLayout:
    """Layout of a cache beat: one cache_token_layout chunk of K and of V."""
    return data.StructLayout({"k": cache_token_layout(c), "v": cache_token_layout(c)})


def cmd_layout(c: KV4Config) -> data.StructLayout:
    """Layout of a decode cmd: token count t and per-head multiplier C and shift lsh."""
    return data.StructLayout({"t": unsigned(CMD_T_BITS),
                              "c": data.ArrayLayout(unsigned(C_BITS), c.heads),
                              "lsh": data.ArrayLayout(unsigned(LSH_BITS), c.heads)})


def query_layout(c: KV4Config) -> data.ArrayLayout:
    """Layout of a query beat: `lanes` INT8 query elements."""
    return data.ArrayLayout(signed(ACT_BITS), c.lanes)


def out_layout(c: KV4Config) -> data.ArrayLayout:
    """Layout of an output beat: `lanes` out_bits-wide output elements."""
    return data.ArrayLayout(signed(c.out_bits), c.lanes)


# --------------------------------------------------------------------------- helpers
def _zx(m, x, width: int, name: str):
    """x zero-extended to `width` bits in a named signal, the operand of an
    unsigned add or compare at that width (rtl.zext: where Yosys still folds
    the extension away, cosim/lint.vlt waives WIDTHEXPAND for the KV4 designs)."""
    return wire(m, zext(x, width), name)


def _uadd(m, a, b, name: str = "add"):
    """Unsigned a + b with both operands zero-extended to the wider one (_zx)."""
    w = max(len(a), len(b))
    return _zx(m, a, w, f"{name}_a") + _zx(m, b, w, f"{name}_b")


def _sat(m, x, bits: int, name: str):
    x = wire(m, x, name)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


def _clamp(m, x, top: int, name: str):
    """clamp(x, 0, top) of a signed value."""
    x = wire(m, x, name)
    return Mux(x < 0, 0, Mux(x > top, top, x))


def _z8(m, zero, recent, name: str):
    """A token's zero in the 8-bit domain: z8 as stored for a recent token, 16*z4
    (the stored low nibble shifted) for a 4-bit one."""
    return wire(m, Mux(recent, zero, zero[:KV_BITS] << CODE_SHIFT)[:ZERO_BITS], name)


def _split_lanes(lanes: int, per_cycle: int, steps: int) -> list[list[int]]:
    """For each of `per_cycle` time-shared units q, the lanes it serves in step
    order: lane k * per_cycle + q in step k of `steps`."""
    return [[k * per_cycle + q for k in range(steps) if k * per_cycle + q < lanes]
            for q in range(per_cycle)]



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
        ge = wire(m, rem >= sb, f"{name}_ge{b}")
        rem = wire(m, Mux(ge, rem - sb, rem)[:w], f"{name}_r{b}")
        bits.append(ge)
    q = wire(m, Cat(*reversed(bits)), f"{name}_q")
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


_KV = ("k", "v")


class _TokenRegs:
    """The append path's registers: one token's K and V (per chunk, per lane),
    its min/max, S and zeros, the chunk and step counters, and the codes of the
    lanes waiting for their cache beat."""

    def __init__(self, c: KV4Config):
        L = c.lanes
        # K is buffered wide enough for the butterfly's growth (log2 D bits)
        wid = {"k": c.x_bits + (c.log2_d if c.rotate else 0), "v": c.x_bits}
        self.j = Signal(range(c.chunks), name="j")
        self.last = self.j == c.chunks - 1
        self.buf = {n: [[Signal(signed(wid[n]), name=f"{n}buf{j}_{i}") for i in range(L)]
                        for j in range(c.chunks)] for n in _KV}
        self.lo = {n: Signal(signed(wid[n]), name=f"{n}lo") for n in _KV}
        self.hi = {n: Signal(signed(wid[n]), name=f"{n}hi") for n in _KV}
        self.S = {n: Signal(c.scale_bits, name=f"{n}S") for n in _KV}
        self.z4 = {n: Signal(KV_BITS, name=f"{n}z4") for n in _KV}
        self.z8 = {n: Signal(ZERO_BITS, name=f"{n}z8") for n in _KV}
        self.stage = Signal(count_width(c.log2_d - 1), name="stage")
        self.ql, self.qsteps = _quant_split(c)
        self.qsub = Signal(count_width(self.qsteps - 1), name="qsub")
        held = range((self.qsteps - 1) * self.ql)    # lanes waiting for their beat
        self.cbuf = {n: {i: Signal(KV_BITS, name=f"{n}cb{i}") for i in held} for n in _KV}
        self.cbuf8 = {n: {i: Signal(2 * KV_BITS, name=f"{n}cb8{i}") for i in held} for n in _KV}

    def lane(self, n: str, i: int):
        """Lane i of the current chunk j of K or V."""
        return select(self.j, [row[i] for row in self.buf[n]])


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

    def elaborate(self, platform: object) -> Module:
        """Build the quantizer: input buffer, K rotation butterflies, 4- and 8-bit quantization."""
        c = self.config
        m = Module()
        r = _TokenRegs(c)
        states = ["IN"] + (["ROT"] if c.rotate else []) + ["MINMAX", "SCALE", "ZERO", "OUT"]
        fsm = FSM(m, states, "qstate")
        with fsm.state("IN"):          # the token's chunks beats into the buffer
            self._take_token(m, r, fsm, after=states[1])
        if c.rotate:
            with fsm.state("ROT"):     # log2(D) butterfly stages on K
                self._rotate_k(m, r, fsm)
        with fsm.state("MINMAX"):      # lo, hi: one chunk per cycle
            self._min_max(m, r, fsm)
        with fsm.state("SCALE"):       # S
            self._scale(m, r)
            fsm.next("ZERO")
        with fsm.state("ZERO"):        # z4, z8 through one lane divider
            self._zeros(m, r)
            fsm.next("OUT")
        with fsm.state("OUT"):         # chunks cache beats, qsteps cycles each
            self._emit_codes(m, r, fsm)
        return m

    def _take_token(self, m, r: _TokenRegs, fsm: FSM, after: str) -> None:
        c = self.config
        m.d.comb += self.x.ready.eq(1)
        with m.If(self.x.valid):
            for n in _KV:
                for jj in range(c.chunks):  # one If per chunk: no case statement
                    with m.If(r.j == jj):
                        m.d.sync += [r.buf[n][jj][i].eq(self.x.payload[n][i])
                                     for i in range(c.lanes)]
            m.d.sync += r.j.eq(Mux(r.last, 0, r.j + 1))
            with m.If(r.last):
                m.d.sync += r.stage.eq(0)
                fsm.next(after)

    def _rotate_k(self, m, r: _TokenRegs, fsm: FSM) -> None:
        """One butterfly stage a cycle over the whole K vector; the last one
        rounds by rot_shift."""
        c = self.config
        flat = [x for row in r.buf["k"] for x in row]
        final = r.stage == c.log2_d - 1
        for x, y in zip(flat, _butterfly(flat)):
            sh = (y + (1 << (c.rot_shift - 1))) >> c.rot_shift if c.rot_shift else y
            m.d.sync += x.eq(Mux(final, sh, y)[:len(x)])
        m.d.sync += r.stage.eq(r.stage + 1)
        with m.If(final):
            fsm.next("MINMAX")

    def _min_max(self, m, r: _TokenRegs, fsm: FSM) -> None:
        """lanes-wide min and max trees (not head_dim-wide), one chunk a cycle."""
        for n in _KV:
            vals = [r.lane(n, i) for i in range(self.config.lanes)]
            bmin = tree(m, vals, lambda a, b: Mux(a < b, a, b), f"{n}min")
            bmax = tree(m, vals, lambda a, b: Mux(a > b, a, b), f"{n}max")
            m.d.sync += [r.lo[n].eq(Mux((r.j == 0) | (bmin < r.lo[n]), bmin, r.lo[n])),
                         r.hi[n].eq(Mux((r.j == 0) | (bmax > r.hi[n]), bmax, r.hi[n]))]
        m.d.sync += r.j.eq(Mux(r.last, 0, r.j + 1))
        with m.If(r.last):
            fsm.next("SCALE")

    def _scale(self, m, r: _TokenRegs) -> None:
        """S = hi - lo, or 15 |lo| for a constant token, 15 if it is all zero."""
        for n in _KV:
            lo, hi = r.lo[n], r.hi[n]
            rng = (hi - lo).as_unsigned()
            mag = Mux(lo < 0, -lo, lo).as_unsigned()
            m.d.sync += r.S[n].eq(Mux(rng != 0, rng, Mux(lo != 0, mag * KV_LEVELS, KV_LEVELS)))

    def _zeros(self, m, r: _TokenRegs) -> None:
        for n in _KV:
            t4, t8 = _t_both(m, r.lo[n], r.S[n], f"{n}zt")
            m.d.sync += [r.z4[n].eq(_clamp(m, -t4, KV_LEVELS, f"{n}zc4")),
                         r.z8[n].eq(_clamp(m, -t8, KV8_LEVELS, f"{n}zc8"))]

    def _emit_codes(self, m, r: _TokenRegs, fsm: FSM) -> None:
        """The lane dividers are time-shared: ql lanes per cycle, qsteps cycles
        per cache beat; the last group goes straight to the beat."""
        c = self.config
        emit = r.qsub == r.qsteps - 1
        for n in _KV:
            side = self.y.payload[n]
            m.d.comb += [side.scale.eq(r.S[n]), side.zero.eq(r.z4[n]), side.zero8.eq(r.z8[n])]
            for q, lanes_q in enumerate(_split_lanes(c.lanes, r.ql, r.qsteps)):
                x = wire(m, select(r.qsub, [r.lane(n, i) for i in lanes_q]), f"{n}qx{q}")
                t4, t8 = _t_both(m, x, r.S[n], f"{n}t{q}")
                c4 = Signal(KV_BITS, name=f"{n}c4_{q}")
                c8 = Signal(2 * KV_BITS, name=f"{n}c8_{q}")
                m.d.comb += [c4.eq(_clamp(m, t4 + r.z4[n], KV_LEVELS, f"{n}c{q}")),
                             c8.eq(_clamp(m, t8 + r.z8[n], KV8_LEVELS, f"{n}c8{q}"))]
                for k, i in enumerate(lanes_q):
                    if k < r.qsteps - 1:
                        with m.If(r.qsub == k):
                            m.d.sync += [r.cbuf[n][i].eq(c4), r.cbuf8[n][i].eq(c8)]
                        m.d.comb += [side.codes[i].eq(r.cbuf[n][i]),
                                     side.codes8[i].eq(r.cbuf8[n][i])]
                    else:
                        m.d.comb += [side.codes[i].eq(c4), side.codes8[i].eq(c8)]
        m.d.comb += self.y.valid.eq(emit)
        with m.If(~emit):
            m.d.sync += r.qsub.eq(r.qsub + 1)
        with m.If(emit & self.y.ready):
            m.d.sync += [r.j.eq(Mux(r.last, 0, r.j + 1)), r.qsub.eq(0)]
            with m.If(r.last):
                fsm.next("IN")


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


class _DecodeRegs:
    """State of one decode step shared by the K side, the V side and the control:
    the cmd's fields, the per-head query, softmax and accumulator registers, and
    the stream position counters."""

    def __init__(self, c: KV4Config):
        H, L, NC = c.heads, c.lanes, c.chunks
        self.T = Signal(c.t_bits, name="T")
        self.n4 = Signal(c.t_bits, name="n4")   # tokens read at 4 bits: T - min(recent, T)
        self.run = Signal(name="run")
        self.cs = [Signal(C_BITS, name=f"c{h}") for h in range(H)]
        self.lshs = [Signal(LSH_BITS, name=f"lsh{h}") for h in range(H)]
        self.qbuf = [[[Signal(signed(ACT_BITS), name=f"q{h}_{j}_{i}") for i in range(L)]
                      for j in range(NC)] for h in range(H)]
        self.sumq = [Signal(signed(c.sumq_bits), name=f"sumq{h}") for h in range(H)]
        self.qe = [Signal(count_width(c.log2_d + 1), name=f"qe{h}") for h in range(H)]
        self.acc = [[[Signal(c.acc_bits, name=f"acc{h}_{j}_{i}") for i in range(L)]
                     for j in range(NC)] for h in range(H)]
        self.wz = [Signal(c.acc_bits, name=f"wz{h}") for h in range(H)]
        self.d = [Signal(c.d_bits, name=f"d{h}") for h in range(H)]
        self.mx = [Signal(signed(c.max_bits), name=f"m{h}") for h in range(H)]
        self.ft = Signal(name="ft")             # the next token reaching S7 is the first
        # K and V stream positions: chunk, token, nibble plane (1 = the low plane
        # of a recent token); `ahead` counts tokens the K side has started but
        # the V side not finished
        self.kj, self.vj = Signal(range(NC), name="kj"), Signal(range(NC), name="vj")
        self.kt, self.vt = Signal(c.t_bits, name="kt"), Signal(c.t_bits, name="vt")
        self.kpl, self.vpl = Signal(name="kpl"), Signal(name="vpl")
        self.ahead = Signal(count_width(FIFO_DEPTH), name="ahead")
        # query load: head, chunk, beat
        self.qh = Signal(count_width(H - 1), name="qh")
        self.qj = Signal(range(NC), name="qj")
        self.qb = Signal(range(H * NC), name="qb")
        # normaliser: the normalised 240*d, output shift, division remainder and
        # reciprocal per head, the division step, the output head/chunk/step
        self.dn = [Signal(c.dd_bits, name=f"dn{h}") for h in range(H)]
        self.osh = [Signal(count_width(c.dd_bits + c.recip_bits), name=f"osh{h}")
                    for h in range(H)]
        self.rem = [Signal(c.dd_bits + 1, name=f"rem{h}") for h in range(H)]
        self.R = [Signal(c.recip_width, name=f"R{h}") for h in range(H)]
        self.step = Signal(count_width(c.recip_width), name="step")
        self.oh = Signal(count_width(H - 1), name="oh")
        self.oj = Signal(range(NC), name="oj")
        # the normaliser's wide multipliers (acc_bits x recip_width) are time-shared:
        # `nl` per cycle, `osteps` cycles fill one out beat (norm_steps)
        self.nl, self.osteps = _norm_split(c)
        self.osub = Signal(count_width(self.osteps - 1), name="osub")
        # every lane but the last group's waits here for its beat
        self.obuf = {i: Signal(signed(c.out_bits), name=f"obuf{i}")
                     for i in range((self.osteps - 1) * self.nl)}
        # query path with rotate: each head's vector is collected in qr, rotated by
        # log2(D) butterfly stages, then requantized to INT8 by a power-of-two shift e
        if c.rotate:
            self.qr = [Signal(signed(c.qr_bits), name=f"qr{n}") for n in range(c.head_dim)]
            self.qstage = Signal(count_width(c.log2_d - 1), name="qstage")
            self.qe_cur = Signal(count_width(c.log2_d + 1), name="qe_cur")


def _position(m, c: KV4Config, s: _DecodeRegs, side: str) -> SimpleNamespace:
    """The K or V stream's beat position: a token is `chunks` beats, or 2*chunks
    for a recent (8-bit) token: the high-nibble plane (weight 16, like a 4-bit
    code) then the low plane. `go` (the beat transfers) is driven by the caller."""
    j, t, pl = getattr(s, f"{side}j"), getattr(s, f"{side}t"), getattr(s, f"{side}pl")
    p = SimpleNamespace(j=j, t=t, pl=pl, go=Signal(name=f"{side}_go"))
    p.rec = wire(m, t >= s.n4, f"{side}_rec")
    p.first = wire(m, (j == 0) & ~pl, f"{side}_first")
    cend = j == c.chunks - 1
    p.last = wire(m, cend & (pl | ~p.rec), f"{side}_last")
    with m.If(p.go):
        m.d.sync += j.eq(Mux(cend, 0, j + 1))
        with m.If(cend):
            m.d.sync += pl.eq(~p.last)
        with m.If(p.last):
            m.d.sync += t.eq(t + 1)
    return p


class KV4Attention(wiring.Component):
    """Decode attention for `heads` query heads over T cached tokens (module
    docstring); `busy` is high from the cmd until the last out beat."""

    def __init__(self, config: KV4Config):
        self.config = c = _cfg(config)
        super().__init__(_decode_ports(c))

    def elaborate(self, platform: object) -> Module:
        """Build the decode datapath: query path, logits, online softmax, P.V, normalisation."""
        c = self.config
        m = Module()
        s = _DecodeRegs(c)
        m.d.comb += self.busy.eq(s.run)
        # K side, one beat per cycle: S1..S8 (module docstring), then the FIFO
        kp = self._k_position(m, s)
        s1 = self._k_products(m, s, kp)      # S1: lane products, adder tree
        s3 = self._k_dot(m, s, s1)           # S2: P over the token, S3: dot
        s6 = self._k_logit(m, s, s3)         # S4..S6: * Sk, * C, logit
        s7 = self._k_max(m, s, s6)           # S7: running max, shift, e
        tf = self._k_weight(m, s, s7)        # S8: p, d, FIFO push
        # V side, one beat per cycle once the token's FIFO entry is there
        vp = self._v_side(m, s, tf)
        self._tokens_ahead(m, s, kp, vp)
        # control: cmd, query load (and rotation), wait, normaliser, output
        self._control(m, s)
        return m

    # ---------------- K side
    def _k_position(self, m, s: _DecodeRegs) -> SimpleNamespace:
        kp = _position(m, self.config, s, "k")
        m.d.comb += [self.k.ready.eq(s.run & (s.kt < s.T) & (~kp.first | (s.ahead < FIFO_DEPTH))),
                     kp.go.eq(self.k.valid & self.k.ready)]
        return kp

    def _k_products(self, m, s: _DecodeRegs, kp) -> SimpleNamespace:
        """S1: per head, the lane products q8 * k4 of the beat and their adder
        tree; the token's scale and zero are held from its first beat."""
        c = self.config
        part_shape = signed(ACT_BITS + KV_BITS + 1 + (c.lanes - 1).bit_length())
        s1 = SimpleNamespace(v=Signal(name="s1_v"), first=Signal(name="s1_first"),
                             last=Signal(name="s1_last"), lo=Signal(name="s1_lo"),
                             part=[Signal(part_shape, name=f"s1_part{h}") for h in range(c.heads)],
                             S=Signal(c.scale_bits, name="hold_s"),
                             z=Signal(ZERO_BITS, name="hold_z"))
        m.d.sync += [s1.v.eq(kp.go), s1.first.eq(kp.first), s1.last.eq(kp.last),
                     s1.lo.eq(kp.pl)]
        with m.If(kp.go & kp.first):
            m.d.sync += [s1.S.eq(self.k.payload.scale),
                         s1.z.eq(_z8(m, self.k.payload.zero, kp.rec, "kz"))]
        for h in range(c.heads):
            prods = [select(kp.j, [row[i] for row in s.qbuf[h]]) * self.k.payload.codes[i]
                     for i in range(c.lanes)]
            m.d.sync += s1.part[h].eq(tree_sum(prods))
        return s1

    def _k_dot(self, m, s: _DecodeRegs, s1) -> SimpleNamespace:
        """S2: P accumulates the token's beats (the high plane weighs 16); S3:
        dot = P - zk * sumq."""
        c = self.config
        H = c.heads
        P = [Signal(signed(c.dot_bits), name=f"P{h}") for h in range(H)]
        s2_v = Signal(name="s2_v")
        s2_P = [Signal(signed(c.dot_bits), name=f"s2_P{h}") for h in range(H)]
        s2_s, s2_z = Signal(c.scale_bits, name="s2_s"), Signal(ZERO_BITS, name="s2_z")
        m.d.sync += s2_v.eq(s1.v & s1.last)
        for h in range(H):
            part = wire(m, Mux(s1.lo, s1.part[h], s1.part[h] << CODE_SHIFT), f"s1_w{h}")
            tot = Mux(s1.first, 0, P[h]) + part
            with m.If(s1.v):
                m.d.sync += P[h].eq(tot)
                with m.If(s1.last):
                    m.d.sync += s2_P[h].eq(tot)
        with m.If(s1.v & s1.last):
            m.d.sync += [s2_s.eq(s1.S), s2_z.eq(s1.z)]
        s3 = SimpleNamespace(v=Signal(name="s3_v"), S=Signal(c.scale_bits, name="s3_s"),
                             dot=[Signal(signed(c.dot_bits), name=f"s3_dot{h}") for h in range(H)])
        m.d.sync += [s3.v.eq(s2_v), s3.S.eq(s2_s)]
        for h in range(H):
            m.d.sync += s3.dot[h].eq(s2_P[h] - s2_z * s.sumq[h])
        return s3

    def _k_logit(self, m, s: _DecodeRegs, s3) -> SimpleNamespace:
        """S4: dot * Sk; S5: * C; S6: l = sat(rshift_round(., lsh - e))."""
        c = self.config
        H = c.heads
        lsh_eff = [wire(m, (s.lshs[h] - s.qe[h])[:LSH_BITS], f"lsheff{h}") for h in range(H)]
        s4_v, s5_v = Signal(name="s4_v"), Signal(name="s5_v")
        s4 = [Signal(signed(c.dot_bits + c.scale_bits + 1), name=f"s4_{h}") for h in range(H)]
        s5 = [Signal(signed(c.prod_bits + 1), name=f"s5_{h}") for h in range(H)]
        s6 = SimpleNamespace(v=Signal(name="s6_v"),
                             l=[Signal(signed(c.logit_bits), name=f"s6_l{h}") for h in range(H)])
        m.d.sync += [s4_v.eq(s3.v), s5_v.eq(s4_v), s6.v.eq(s5_v)]
        for h in range(H):
            m.d.sync += [s4[h].eq(s3.dot[h] * s3.S),
                         s5[h].eq(s4[h] * s.cs[h]),
                         s6.l[h].eq(_sat(m, rshift_round(m, s5[h], lsh_eff[h], f"lr{h}"),
                                         c.logit_bits, f"l{h}"))]
        return s6

    def _k_max(self, m, s: _DecodeRegs, s6) -> SimpleNamespace:
        """S7: m = max(m, ceil(l)), the rescale shift (0 for the first token) and
        e = m * 2**lf - l."""
        c = self.config
        lf = c.logit_frac
        s7 = SimpleNamespace(
            v=Signal(name="s7_v"),
            e=[Signal(unsigned(c.logit_bits + 2), name=f"s7_e{h}") for h in range(c.heads)],
            sh=[Signal(count_width(SHIFT_SAT), name=f"s7_sh{h}") for h in range(c.heads)])
        m.d.sync += s7.v.eq(s6.v)
        with m.If(s6.v):
            m.d.sync += s.ft.eq(0)
        for h in range(c.heads):
            l, mx = s6.l[h], s.mx[h]
            ce = wire(m, (l + ((1 << lf) - 1)) >> lf, f"ce{h}")
            mn = wire(m, Mux(s.ft | (ce > mx), ce, mx), f"mn{h}")
            diff = wire(m, (mn - mx).as_unsigned(), f"mdiff{h}")
            with m.If(s6.v):
                m.d.sync += [mx.eq(mn),
                             s7.e[h].eq(((mn << lf) - l).as_unsigned()),
                             s7.sh[h].eq(Mux(s.ft, 0, Mux(diff > SHIFT_SAT, SHIFT_SAT, diff)))]
        return s7

    def _k_weight(self, m, s: _DecodeRegs, s7) -> fifo.SyncFIFO:
        """S8: p = TABLE[e mod 2**lf] >> (e >> lf), d = rshift_round(d, shift) + p;
        (p, shift) of every head pushed into the token FIFO."""
        c = self.config
        lf = c.logit_frac
        table = Array(Const(v, c.p_bits) for v in exp2_table(c))
        m.submodules.tfifo = tf = fifo.SyncFIFO(width=c.heads * (c.p_bits + _SHIFT_W),
                                                depth=FIFO_DEPTH)
        pushed = []
        for h in range(c.heads):
            ei = wire(m, s7.e[h] >> lf, f"ei{h}")
            ef = s7.e[h][:lf]
            p = Mux(ei >= SHIFT_SAT, 0,
                    rshift_round(m, table[ef], ei[:_SHIFT_W], f"pr{h}"))[:c.p_bits]
            ps = Signal(c.p_bits, name=f"s8_p{h}")
            m.d.comb += ps.eq(p)
            with m.If(s7.v):
                m.d.sync += s.d[h].eq(_uadd(m, rshift_round(m, s.d[h], s7.sh[h], f"dr{h}"), ps,
                                            f"du{h}"))
            pushed += [ps, s7.sh[h]]
        m.d.comb += [tf.w_en.eq(s7.v), tf.w_data.eq(Cat(*pushed))]
        return tf

    # ---------------- V side
    def _v_side(self, m, s: _DecodeRegs, tf: fifo.SyncFIFO) -> SimpleNamespace:
        """acc[h][chunk] = rshift_round(acc, shift) + w * v (w = p * Sv; the
        rescale on a chunk's first touch only), wz the same for the V zero once
        per token."""
        c = self.config
        vp = _position(m, c, s, "v")
        v = self.v.payload
        m.d.comb += [self.v.ready.eq(s.run & (s.vt < s.T) & (~vp.first | tf.r_rdy)),
                     vp.go.eq(self.v.valid & self.v.ready),
                     tf.r_en.eq(vp.go & vp.first)]
        for h in range(c.heads):
            base = h * (c.p_bits + _SHIFT_W)
            fp = tf.r_data[base:base + c.p_bits]
            fs = tf.r_data[base + c.p_bits:base + c.p_bits + _SHIFT_W]
            w_reg = Signal(c.w_bits, name=f"w{h}")
            s_reg = Signal(_SHIFT_W, name=f"vsh{h}")
            w = Signal(c.w_bits, name=f"wcur{h}")
            sh = Signal(_SHIFT_W, name=f"shcur{h}")
            # the rescale applies on a chunk's first touch (plane 0) only
            m.d.comb += [w.eq(Mux(vp.first, fp * v.scale, w_reg)),
                         sh.eq(Mux(vp.pl, 0, Mux(vp.first, fs, s_reg)))]
            with m.If(vp.go & vp.first):
                m.d.sync += [w_reg.eq(w), s_reg.eq(sh),
                             s.wz[h].eq(_uadd(m, rshift_round(m, s.wz[h], sh, f"wzr{h}"),
                                              w * _z8(m, v.zero, vp.rec, f"vz{h}"), f"wzu{h}"))]
            new = [Signal(c.acc_bits, name=f"accnew{h}_{i}") for i in range(c.lanes)]
            for i in range(c.lanes):
                prod = wire(m, w * v.codes[i], f"vp{h}_{i}")
                old = select(vp.j, [row[i] for row in s.acc[h]])
                m.d.comb += new[i].eq(_uadd(m, rshift_round(m, old, sh, f"ar{h}_{i}"),
                                            Mux(vp.pl, prod, prod << CODE_SHIFT), f"au{h}_{i}"))
            with m.If(vp.go):
                for j in range(c.chunks):  # one If per chunk: no case statement
                    with m.If(vp.j == j):
                        m.d.sync += [s.acc[h][j][i].eq(new[i]) for i in range(c.lanes)]
        return vp

    def _tokens_ahead(self, m, s: _DecodeRegs, kp, vp) -> None:
        """Tokens the K side has started and the V side not finished (the FIFO's
        room, as the K side's first-beat ready sees it)."""
        k_start, v_end = kp.go & kp.first, vp.go & vp.last
        with m.If(k_start & ~v_end):
            m.d.sync += s.ahead.eq(s.ahead + 1)
        with m.Elif(~k_start & v_end):
            m.d.sync += s.ahead.eq(s.ahead - 1)

    # ---------------- control
    def _control(self, m, s: _DecodeRegs) -> None:
        c = self.config
        qstates = ["QUERY"] + (["QROT", "QMAX", "QPUT"] if c.rotate else [])
        fsm = FSM(m, ["IDLE"] + qstates + ["RUN", "NORM", "DIV", "OUT"], "state")
        with fsm.state("IDLE"):        # take a cmd: check it, clear the step's state
            self._take_cmd(m, s, fsm)
        with fsm.state("QUERY"):       # heads*chunks query beats
            self._load_query(m, s, fsm)
        if c.rotate:
            with fsm.state("QROT"):    # log2(D) butterfly stages on one head's query
                m.d.sync += [x.eq(y[:len(x)]) for x, y in zip(s.qr, _butterfly(s.qr))]
                m.d.sync += s.qstage.eq(s.qstage + 1)
                with m.If(s.qstage == c.log2_d - 1):
                    fsm.next("QMAX")
            with fsm.state("QMAX"):    # the requantization shift e
                self._query_shift(m, s)
                fsm.next("QPUT")
            with fsm.state("QPUT"):    # INT8 query and sumq of the head
                self._put_query(m, s, fsm)
        with fsm.state("RUN"):         # the K and V sides stream the tokens
            with m.If(s.vt == s.T):
                m.d.sync += s.run.eq(0)
                fsm.next("NORM")
        with fsm.state("NORM"):        # 240*d normalised, reciprocal division set up
            self._normalise(m, s)
            fsm.next("DIV")
        with fsm.state("DIV"):         # restoring division, one quotient bit a cycle
            self._divide(m, s, fsm)
        with fsm.state("OUT"):         # (acc - wz) * R >> s, a beat every osteps cycles
            self._emit_out(m, s, fsm)

    def _take_cmd(self, m, s: _DecodeRegs, fsm: FSM) -> None:
        c = self.config
        m.d.comb += self.cmd.ready.eq(1)
        with m.If(self.cmd.valid):
            cmd = self.cmd.payload
            bad = (cmd.t == 0) | (cmd.t > c.max_t)
            for h in range(c.heads if c.min_lsh else 0):
                bad = bad | (cmd.lsh[h] < c.min_lsh)
            with m.If(bad):
                m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += [self.error.eq(0), s.T.eq(cmd.t), s.run.eq(0),
                             s.n4.eq(Mux(cmd.t > c.recent, cmd.t - c.recent, 0)),
                             s.qh.eq(0), s.qj.eq(0), s.qb.eq(0), s.kj.eq(0), s.kt.eq(0),
                             s.vj.eq(0), s.vt.eq(0), s.kpl.eq(0), s.vpl.eq(0), s.ahead.eq(0),
                             s.ft.eq(1)]
                for h in range(c.heads):
                    m.d.sync += [s.cs[h].eq(cmd.c[h]), s.lshs[h].eq(cmd.lsh[h]),
                                 s.sumq[h].eq(0), s.qe[h].eq(0), s.wz[h].eq(0), s.d[h].eq(0)]
                    for row in s.acc[h]:
                        m.d.sync += [a.eq(0) for a in row]
                fsm.next("QUERY")

    def _load_query(self, m, s: _DecodeRegs, fsm: FSM) -> None:
        """Without rotate the beats go straight to qbuf and sumq; with rotate a
        head's vector is collected in qr and rotated after its last beat."""
        c = self.config
        H, L, NC = c.heads, c.lanes, c.chunks
        q = self.query.payload
        m.d.comb += self.query.ready.eq(1)
        with m.If(self.query.valid):
            if c.rotate:
                for j in range(NC):  # one If per chunk: no case statement
                    with m.If(s.qj == j):
                        m.d.sync += [s.qr[j * L + i].eq(q[i]) for i in range(L)]
            else:
                beat_sum = tree_sum(q[i] for i in range(L))
                for h in range(H):  # one If per beat: no case statement
                    for j in range(NC):
                        with m.If(s.qb == h * NC + j):
                            m.d.sync += [s.qbuf[h][j][i].eq(q[i]) for i in range(L)]
                            m.d.sync += s.sumq[h].eq(s.sumq[h] + beat_sum)
            m.d.sync += s.qb.eq(s.qb + 1)
            m.d.sync += s.qj.eq(Mux(s.qj == NC - 1, 0, s.qj + 1))
            with m.If(s.qj == NC - 1):
                if c.rotate:
                    m.d.sync += s.qstage.eq(0)
                    fsm.next("QROT")
                else:
                    m.d.sync += s.qh.eq(s.qh + 1)
                    with m.If(s.qh == H - 1):
                        m.d.sync += s.run.eq(1)
                        fsm.next("RUN")

    def _query_shift(self, m, s: _DecodeRegs) -> None:
        """e = max(0, bitlen(max |qr|) - 7)."""
        mags = [wire(m, Mux(x < 0, -x, x).as_unsigned(), f"qmag{n}") for n, x in enumerate(s.qr)]
        M = wire(m, tree(m, mags, lambda a, b: Mux(a > b, a, b), "qmax"), "qM")
        bl = bit_length(m, M, "qbl")
        keep = ACT_BITS - 1
        m.d.sync += s.qe_cur.eq(Mux(bl > keep, bl - keep, 0))

    def _put_query(self, m, s: _DecodeRegs, fsm: FSM) -> None:
        c = self.config
        q8 = [wire(m, _sat(m, rshift_round(m, x, s.qe_cur, f"qrr{n}"), ACT_BITS, f"q8s{n}"),
                   f"q8_{n}") for n, x in enumerate(s.qr)]
        qsum = Signal(signed(c.sumq_bits), name="qsum")   # |sum| <= 128 * D
        m.d.comb += qsum.eq(tree_sum(q8))
        for h in range(c.heads):
            with m.If(s.qh == h):
                m.d.sync += [s.sumq[h].eq(qsum), s.qe[h].eq(s.qe_cur)]
                for j in range(c.chunks):
                    m.d.sync += [s.qbuf[h][j][i].eq(q8[j * c.lanes + i]) for i in range(c.lanes)]
        m.d.sync += s.qh.eq(s.qh + 1)
        with m.If(s.qh == c.heads - 1):
            m.d.sync += s.run.eq(1)
            fsm.next("RUN")
        with m.Else():
            fsm.next("QUERY")

    def _normalise(self, m, s: _DecodeRegs) -> None:
        """dn = 240*d shifted left by sd into [2**(dd_bits-1), 2**dd_bits); the
        output shift dd_bits - 1 + recip_bits - out_frac - sd."""
        c = self.config
        top = c.dd_bits - 1 + c.recip_bits - c.out_frac
        for h in range(c.heads):
            dd = s.d[h] * KV8_LEVELS
            bl = bit_length(m, dd, f"bl{h}", c.dd_bits)
            sd = Signal(count_width(c.dd_bits), name=f"sd{h}")
            m.d.comb += sd.eq(c.dd_bits - bl)
            osh = s.osh[h]
            m.d.sync += [s.dn[h].eq((_zx(m, dd, len(dd) + (1 << len(sd)) - 1, f"ddw{h}") << sd)
                                    [:c.dd_bits]),
                         osh.eq(Const(top, len(osh)) - _zx(m, sd, len(osh), f"sdw{h}")),
                         s.rem[h].eq(1 << (c.dd_bits - 3)), s.R[h].eq(0)]
        m.d.sync += s.step.eq(0)

    def _divide(self, m, s: _DecodeRegs, fsm: FSM) -> None:
        """R = floor(2**(dd_bits-1+recip_bits) / dn), recip_width steps."""
        c = self.config
        for h in range(c.heads):
            r2 = Cat(Const(0, 1), s.rem[h])
            dnw = _zx(m, s.dn[h], len(r2), f"dnw{h}")
            ge = wire(m, r2 >= dnw, f"dge{h}")
            m.d.sync += [s.rem[h].eq(Mux(ge, r2 - dnw, r2)), s.R[h].eq(Cat(ge, s.R[h]))]
        m.d.sync += s.step.eq(s.step + 1)
        with m.If(s.step == c.recip_width - 1):
            m.d.sync += [s.oh.eq(0), s.oj.eq(0), s.osub.eq(0)]
            fsm.next("OUT")

    def _emit_out(self, m, s: _DecodeRegs, fsm: FSM) -> None:
        """Head and lane group are selected first, so nl multipliers serve every
        element; groups 0..osteps-2 go to obuf, the last one straight to the beat."""
        c = self.config
        wz_o = wire(m, select(s.oh, s.wz), "wz_o")
        R_o = wire(m, select(s.oh, s.R), "R_o")
        osh_o = wire(m, select(s.oh, s.osh), "osh_o")
        for q, lanes_q in enumerate(_split_lanes(c.lanes, s.nl, s.osteps)):
            per_head = [select(s.osub, [select(s.oj, [row[i] for row in s.acc[h]])
                                        for i in lanes_q]) for h in range(c.heads)]
            a_o = wire(m, select(s.oh, per_head), f"acc_o{q}")
            diff = wire(m, a_o - wz_o, f"diff_o{q}")
            y = Signal(signed(c.out_bits), name=f"ynorm{q}")
            m.d.comb += y.eq(_sat(m, rshift_round(m, diff * R_o, osh_o, f"yr{q}"),
                                  c.out_bits, f"y{q}"))
            for k, i in enumerate(lanes_q):
                if k < s.osteps - 1:
                    with m.If(s.osub == k):
                        m.d.sync += s.obuf[i].eq(y)
                    m.d.comb += self.out.payload[i].eq(s.obuf[i])
                else:
                    m.d.comb += self.out.payload[i].eq(y)
        emit = s.osub == s.osteps - 1
        m.d.comb += self.out.valid.eq(emit)
        with m.If(~emit):
            m.d.sync += s.osub.eq(s.osub + 1)
        with m.If(emit & self.out.ready):
            m.d.sync += [s.oj.eq(Mux(s.oj == c.chunks - 1, 0, s.oj + 1)), s.osub.eq(0)]
            with m.If(s.oj == c.chunks - 1):
                m.d.sync += s.oh.eq(s.oh + 1)
                with m.If(s.oh == c.heads - 1):
                    fsm.next("IDLE")


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

    def elaborate(self, platform: object) -> Module:
        """Build the unit: quantizer, attention and the cache fill counter."""
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
