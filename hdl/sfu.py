"""Special-function unit (SFU) of the accelerator core in Amaranth 0.5: every op of
the integer Llama decoder that is neither a linear nor attention
(docs/integer-model.md §1-2), bit-exact with golden.sfu; widths from
golden.sfu_config, the hardware choices in golden.sfu_config.SFUHWConfig.
docs/sfu.md documents every word and the cycle model.

One component, `SFU`, with three streams and two flags:

  cmd    {op, k, p}      one beat per op; p is a union of the op's parameters
  x      {a, b}[lanes]   the op's input elements, k / lanes beats per pass of input
  out    sint(32)[lanes] the op's results (X32, A8 codes or requant words
                         sign-extended) and its scalar beats (TS, argmax index)
  error  the last cmd was refused (sticky until the next good cmd); busy: an op runs

Ops (cmd.op), with where the input comes from and what comes out:
  quant_a8      x.a = X32 -> TS beat (mn | L << 16), then k A8 codes    (buffered)
  dequant       x.a = int32 acc, x.b = S1[n]; (mn, L, e, fracs) in cmd -> X32
  rmsnorm       x.a = X32, x.b = NW[n]; (E, SK, es, e_w) in cmd -> X32  (buffered)
  rope          x.a = X32, x.b = cos | sin << 16 (first half of each head) -> X32
                (buffered; d = head_dim in cmd)
  swiglu        x.a = g, x.b = u (X32); the product's shift in cmd -> X32 (the
                sigmoid table is a ROM)
  residual_add  x.a, x.b -> sat32(a + b)
  requant       x.a -> shift_sat(a, from_frac - to_frac, bits)
  argmax        x.a = v, x.b = S1 (1: plain) -> one beat: the index of max(v * S1)

A buffered op writes its whole vector into an on-chip buffer (max_k elements)
while it computes max|x| (IN pass), then reads it back once (quant_a8, rope) or
twice (rmsnorm: the sum of squares needs the pre-shift k from max|x|, then the
outputs). The streaming ops read `x` straight into the pipeline.

Element pipeline (one beat per cycle, every stage moves together: adv = ~v6 |
out.ready), per lane:
  S1 E    the element: the input register or the buffer's read data; the
          sigmoid ROM's row for swiglu (read with the input's address)
  S2 M1   first product: x*127*RC, S1*mn, NW*R, xs*xs, x*cos and x'*sin,
          dT*f (sigmoid interpolation), v*S1; the reductions (sum of squares,
          argmax) take it here
  S3 M2   second product: acc*(S1 mn), x*G, g*sigmoid; rope's sum; a + b
  S4 M3   swiglu's silu*u
  S5 SH   rshift_round by the op's shift (or the saturating left shift)
  S6 SAT  saturation to the op's width -> the out register
Per-token scalars (quant_a8's RC by a restoring divider, rmsnorm's reciprocal
square root by the table and Newton steps on one shared multiplier) run between
the passes. `cycle_model` gives every op's cycles; the tests hold the RTL to it.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACT_BITS
from golden.sfu_config import (MANT_BITS, NORM_G_SHIFT, NW_BITS, RCP_BITS, RMS_XS_BITS,
                               ROPE_BITS, ROPE_FRAC, RSQRT_FRAC, RSQRT_M_BITS, S1_BITS,
                               SQRTK_BITS, X_BITS, SFUHWConfig, rsqrt_table, sigmoid_table)
from golden.validate import check_choice, check_int, check_multiple, expect_type

from .rtl import FSM, bit_length, count_width, tree, tree_sum, wire

__all__ = ["OPS", "OP_CODE", "BUFFERED", "CMD_K_BITS", "DEPTH", "DIV_STEPS", "SFU",
           "elem_layout", "in_layout", "out_layout", "cmd_layout", "param_layout",
           "gain_cycles", "cycle_model", "pack_cmd", "pack_elems", "pack_out", "unpack_out",
           "ts_value"]

#: The ops in cmd.op code order.
OPS = ("quant_a8", "dequant", "rmsnorm", "rope", "swiglu", "residual_add", "requant", "argmax")
OP_CODE = {name: code for code, name in enumerate(OPS)}
#: Ops that hold their whole vector in the buffer (k <= max_k).
BUFFERED = ("quant_a8", "rmsnorm", "rope")
#: Width of cmd.k (and rope's d, argmax's index): streaming ops take up to 2**20 - 1.
CMD_K_BITS = 20
#: Register stages from an element's input transfer to its out register.
DEPTH = 6
#: quant_a8's reciprocal RC = floor(2**31 / mn) has MANT_BITS + 1 quotient bits
#: (mn in [2**15, 2**16): RC in (2**15, 2**16]), one a cycle.
DIV_STEPS = MANT_BITS + 1
#: rmsnorm's pre-shift k = max(0, bitlen(max|x|) - RMS_XS_BITS) <= X_BITS - RMS_XS_BITS.
_K_MAX = X_BITS - RMS_XS_BITS
#: rmsnorm's final shift without k, p, e_w, es (golden.sfu._norm_shift).
_NORM_SHIFT_BASE = RSQRT_FRAC + RSQRT_M_BITS // 2 - NORM_G_SHIFT - SQRTK_BITS
#: Width of the final shift register (every op's shift lies within +-2**12).
_SHIFT_W = 14


def _cfg(config) -> SFUHWConfig:
    return expect_type("config", config, SFUHWConfig)


# --------------------------------------------------------------------------- words
def elem_layout() -> data.StructLayout:
    """One input element: two signed 32-bit fields a (bits 0..31), b (32..63)."""
    return data.StructLayout({"a": signed(X_BITS), "b": signed(X_BITS)})


def in_layout(c: SFUHWConfig) -> data.ArrayLayout:
    """Layout of an x beat: `lanes` elements of elem_layout."""
    return data.ArrayLayout(elem_layout(), c.lanes)


def out_layout(c: SFUHWConfig) -> data.ArrayLayout:
    """Layout of an out beat: `lanes` signed 32-bit elements."""
    return data.ArrayLayout(signed(X_BITS), c.lanes)


def param_layout() -> data.UnionLayout:
    """The op-specific fields of a cmd (a union: every member starts at bit 0)."""
    return data.UnionLayout({
        "dequant": data.StructLayout({"mn": unsigned(MANT_BITS), "L": signed(8),
                                      "e": signed(12), "in_frac": signed(8),
                                      "out_frac": signed(8)}),
        "rmsnorm": data.StructLayout({"E": unsigned(52), "SK": unsigned(SQRTK_BITS),
                                      "es": signed(8), "e_w": signed(9)}),
        "rope": data.StructLayout({"d": unsigned(CMD_K_BITS)}),
        "swiglu": data.StructLayout({"shift": signed(8)}),
        "requant": data.StructLayout({"from_frac": signed(8), "to_frac": signed(8),
                                      "bits": unsigned(6)}),
    })


def cmd_layout() -> data.StructLayout:
    """Layout of the cmd word: op, element count k and the op's parameters."""
    return data.StructLayout({"op": unsigned(3), "k": unsigned(CMD_K_BITS),
                              "p": param_layout()})


def _put(layout, values: dict, base: int = 0) -> int:
    """The bits of `values` (field -> int) at their offsets in `layout` (+ base)."""
    word = 0
    for name, v in values.items():
        f = layout[name]
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"field {name} must be an int, got {v!r}")
        sh = f.shape
        lo, hi = ((-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if sh.signed
                  else (0, (1 << f.width) - 1))
        if not lo <= v <= hi:
            raise ValueError(f"field {name}={v} does not fit its {f.width}-bit "
                             f"{'signed' if sh.signed else 'unsigned'} word")
        word |= (v & ((1 << f.width) - 1)) << (base + f.offset)
    return word


def pack_cmd(op: str, k: int, **params: int) -> int:
    """The cmd word of `op` over k elements with the op's parameters, all of them
    (docs/sfu.md): dequant mn, L, e, in_frac, out_frac; rmsnorm E, SK, es, e_w;
    rope d; swiglu shift; requant from_frac, to_frac, bits; the others none."""
    check_choice("op", op, OPS)
    lay = cmd_layout()
    word = _put(lay, {"op": OP_CODE[op], "k": k})
    members = dict(param_layout())
    need = sorted(name for name, _ in members[op].shape) if op in members else []
    if sorted(params) != need:
        raise ValueError(f"{op} takes the parameters {need}, got {sorted(params)}")
    if params:
        word |= _put(members[op].shape, params, base=lay["p"].offset)
    return word


def pack_elems(config: SFUHWConfig, a: Sequence[int], b: Sequence[int] | None = None) -> list[int]:
    """x beats of the elements a (and b; 0 where None), `lanes` per beat."""
    c = _cfg(config)
    a = [int(v) for v in a]
    b = [0] * len(a) if b is None else [int(v) for v in b]
    if len(a) != len(b) or len(a) % c.lanes:
        raise ValueError(f"a and b must have the same length, a multiple of lanes="
                         f"{c.lanes}; got {len(a)} and {len(b)}")
    lay = elem_layout()
    words = []
    for i in range(0, len(a), c.lanes):
        w = 0
        for n in range(c.lanes):
            w |= _put(lay, {"a": a[i + n], "b": b[i + n]}) << (n * lay.size)
        words.append(w)
    return words


def unpack_out(config: SFUHWConfig, words: Sequence[int]) -> list[int]:
    """The signed 32-bit elements of out beats, in order."""
    c = _cfg(config)
    out = []
    for w in words:
        for n in range(c.lanes):
            v = (int(w) >> (n * X_BITS)) & ((1 << X_BITS) - 1)
            out.append(v - (1 << X_BITS) if v >> (X_BITS - 1) else v)
    return out


def pack_out(config: SFUHWConfig, values: Sequence[int]) -> list[int]:
    """out beats of signed 32-bit elements (the inverse of unpack_out)."""
    c = _cfg(config)
    values = [int(v) for v in values]
    if len(values) % c.lanes:
        raise ValueError(f"{len(values)} values are not whole beats of {c.lanes} lanes")
    mask = (1 << X_BITS) - 1
    return [sum((values[i + n] & mask) << (n * X_BITS) for n in range(c.lanes))
            for i in range(0, len(values), c.lanes)]


def ts_value(mn: int, L: int) -> int:
    """quant_a8's TS beat element 0: mn in bits 0..15, L (signed) in bits 16..31."""
    return int(mn) + (int(L) << MANT_BITS)


# --------------------------------------------------------------------------- cycle model
def gain_cycles(config: SFUHWConfig) -> int:
    """rmsnorm's per-token gain: T, (p, M), the table read, Y, 6 per Newton step
    (three products, each registered and then rounded), 2 for R."""
    return 4 + 6 * _cfg(config).newton_steps + 2


def cycle_model(config: SFUHWConfig, op: str, k: int) -> int:
    """Cycles from the cmd's transfer to the op's last out transfer, inclusive, with
    ideal streams (docs/sfu.md); back-to-back cmds add up (the next cmd transfers in
    the cycle after). n = k / lanes beats:
      dequant, swiglu, residual_add, requant  n + 1 + DEPTH
      argmax                                  n + 5
      rope                                    2 n + 1 + DEPTH
      quant_a8                                2 n + 2 + DIV_STEPS + DEPTH
      rmsnorm                                 3 n + 5 + gain_cycles + DEPTH"""
    c = _cfg(config)
    check_choice("op", op, OPS)
    hi = c.max_k if op in BUFFERED else (1 << CMD_K_BITS) - 1
    check_int("k", k, c.lanes, hi)
    check_multiple("k", k, "lanes", c.lanes)
    n = k // c.lanes
    if op == "argmax":
        return n + 5
    if op == "rope":
        return 2 * n + 1 + DEPTH
    if op == "quant_a8":
        return 2 * n + 2 + DIV_STEPS + DEPTH
    if op == "rmsnorm":
        return 3 * n + 5 + gain_cycles(c) + DEPTH
    return n + 1 + DEPTH


# --------------------------------------------------------------------------- helpers
def _rsr(x, s: int):
    """rshift_round by a constant s >= 0 (golden.kv4_attention.rshift_round)."""
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def _rsr_var(m, x, s, name: str):
    """rshift_round of signed x by a variable s: the half LSB 2**(s-1) added at a
    width that holds it for every s, then an arithmetic shift. (hdl.rtl.rshift_round
    adds at one bit less where len(x) > 2**len(s) - 1, and treats unsigned x apart:
    the same values, other Verilog; this is the SFU's verified form.)"""
    w = max(len(x), (1 << len(s)) - 1) + 2
    half = Signal(signed(w), name=f"{name}_half")
    xs = Signal(signed(w), name=f"{name}_x")
    m.d.comb += [half.eq(((Const(1, w) << s) >> 1)[:w - 1]), xs.eq(x)]
    return (xs + half) >> s


def _abs32(m, x, name: str) -> Signal:
    """|x| of a signed 32-bit x as unsigned 32 bits (2**31 for -2**31)."""
    return wire(m, Mux(x < 0, -x, x)[:X_BITS], name)


def _sx(m, x, width: int, name: str) -> Signal:
    """x (unsigned) zero-extended into a named signed signal: arithmetic on it is
    signed in the Verilog ($signed operands, as Amaranth defines them), so operands
    of different widths lint clean (cosim/lint.vlt's $signed rule)."""
    s = Signal(signed(width), name=name)
    m.d.comb += s.eq(x)
    return s


def _clamp(x, lo, hi):
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


_STATES = ("IDLE", "IN", "SCALE", "DIV", "RUN", "GAIN", "EMIT")


class _Regs:
    """The unit's state besides the pipeline: the cmd's fields, the pass counters,
    the per-token scalars and the final shift."""

    def __init__(self, c: SFUHWConfig):
        kw = CMD_K_BITS
        self.op = Signal(3, name="op")
        self.nb = Signal(kw, name="nb")              # beats of the vector
        self.j = Signal(kw, name="j")                # beats of the pass so far
        self.hb = Signal(kw, name="hb")              # rope: beat within the head
        self.hd = Signal(kw, name="hd")              # rope: beats per head
        self.hh = Signal(kw, name="hh")              # rope: beats per half head
        self.src_buf = Signal(name="src_buf")        # the pass reads the buffer
        self.sq = Signal(name="sq")                  # rmsnorm's sum-of-squares pass
        self.amax = Signal(X_BITS, name="amax")
        self.mn = Signal(MANT_BITS, name="mn")
        self.rem = Signal(MANT_BITS + 1, name="div_rem")
        self.q = Signal(DIV_STEPS, name="div_q")
        self.dstep = Signal(count_width(DIV_STEPS), name="div_step")
        self.rc127 = Signal(MANT_BITS + 1 + ACT_BITS - 1, name="rc127")
        self.kx = Signal(count_width(_K_MAX), name="kx")
        self.Q = Signal(c.q_bits, name="Q")
        self.E = Signal(52, name="E")
        self.SK = Signal(SQRTK_BITS, name="SK")
        self.sbase = Signal(signed(_SHIFT_W), name="sbase")   # e_w + es + constant
        self.R = Signal(RSQRT_FRAC + 2, name="R")
        self.s_amt = Signal(signed(_SHIFT_W), name="s_amt")
        self.bits = Signal(6, name="bits")
        self.sym = Signal(name="sym")
        self.best = Signal(signed(X_BITS + S1_BITS + 1), name="best")
        self.best_idx = Signal(kw, name="best_idx")
        self.have = Signal(name="have")
        self.rbeat = Signal(kw, name="rbeat")        # argmax: beats reduced so far
        self.sc_valid = Signal(name="sc_valid")
        self.sc_word = Signal(signed(X_BITS), name="sc_word")
        self.v = [Signal(name=f"v{n}") for n in range(1, DEPTH + 1)]
        self.is_op = {}
        # rmsnorm's per-token gain: T, M, p, Y and the Newton intermediates, the
        # shared product
        self.gstep = Signal(count_width(gain_cycles(c)), name="gstep")
        self.g = SimpleNamespace(T=Signal(max(c.q_bits, 52) + 1, name="g_T"),
                                 M=Signal(RSQRT_M_BITS, name="g_M"),
                                 p=Signal(signed(7), name="g_p"),
                                 Y=Signal(RSQRT_FRAC + 3, name="g_Y"),
                                 y2=Signal(RSQRT_FRAC + 4, name="g_y2"),
                                 t=Signal(RSQRT_FRAC + 4, name="g_t"),
                                 prod=Signal(signed(2 * RSQRT_FRAC + 12), name="g_prod"))

    def decode(self, m) -> None:
        self.is_op = {n: wire(m, self.op == code, f"is_{n}") for n, code in OP_CODE.items()}


class SFU(wiring.Component):
    """The special-function unit (module docstring; docs/sfu.md)."""

    def __init__(self, config: SFUHWConfig):
        self.config = c = _cfg(config)
        self._lb = c.lanes.bit_length() - 1
        self._aw = max(1, (c.buffer_beats - 1).bit_length())
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout())),
            "x": In(stream.Signature(in_layout(c))),
            "out": Out(stream.Signature(out_layout(c))),
            "error": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the SFU: cmd decode, the element buffer and every op's datapath."""
        m = Module()
        r = _Regs(self.config)
        r.decode(m)
        fsm = FSM(m, _STATES, "state")
        adv = wire(m, ~r.v[-1] | self.out.ready, "adv")
        r.run = wire(m, fsm.is_("RUN"), "run")
        mem = self._memories(m, r, fsm, adv)     # buffers and ROMs, their ports
        r.rq_port = mem.rq
        r.nb_m1 = wire(m, (r.nb - 1)[:CMD_K_BITS], "nb_m1")
        r.hd_m1 = wire(m, (r.hd - 1)[:CMD_K_BITS], "hd_m1")
        self._control(m, r, fsm, adv)            # cmd, passes, per-token scalars
        s1 = self._stage_e(m, r, mem, adv)        # S1: the element
        s2 = self._stage_m1(m, r, s1, adv)        # S2: first products
        self._reduce(m, r, s2, adv)              # sum of squares, argmax
        s3 = self._stage_m2(m, r, s2, adv)        # S3: second products, sums
        s4 = self._stage_m3(m, r, s3, adv)        # S4: silu * u
        s5 = self._stage_shift(m, r, s4, adv)     # S5: rshift_round / left shift
        self._stage_sat(m, r, s5, adv)           # S6: saturation, out
        return m

    # ---------------- memories
    def _memories(self, m, r: _Regs, fsm: FSM, adv) -> SimpleNamespace:
        """The vector buffer (x.a and x.b of every element, written in the IN pass;
        a has a second read port for rope's partner), the sigmoid ROM (one read port
        per lane) and the reciprocal-square-root ROM."""
        c = self.config
        L, aw = c.lanes, self._aw
        wide = unsigned(X_BITS * L)
        m.submodules.xbuf = xbuf = memory.Memory(shape=wide, depth=c.buffer_beats, init=[])
        m.submodules.bbuf = bbuf = memory.Memory(shape=wide, depth=c.buffer_beats, init=[])
        xw, bw = xbuf.write_port(), bbuf.write_port()
        mm = SimpleNamespace(x0=xbuf.read_port(), x1=xbuf.read_port(), b0=bbuf.read_port())
        take_in = wire(m, fsm.is_("IN") & self.x.valid, "take_in")
        pay = self.x.payload
        m.d.comb += [xw.addr.eq(r.j[:aw]), bw.addr.eq(r.j[:aw]), xw.en.eq(take_in),
                     bw.en.eq(take_in),
                     xw.data.eq(Cat(*(pay[i].a for i in range(L)))),
                     bw.data.eq(Cat(*(pay[i].b for i in range(L))))]
        # rope: the partner beat (other half of the head) and the first half's cos/sin
        lo = wire(m, r.hb < r.hh, "rope_lo")
        partner = wire(m, Mux(lo, r.j + r.hh, r.j - r.hh)[:aw], "rope_partner")
        mm.lo = lo
        m.d.comb += [mm.x0.addr.eq(r.j[:aw]), mm.x1.addr.eq(partner),
                     mm.b0.addr.eq(Mux(lo | ~r.is_op["rope"], r.j[:aw], partner)),
                     mm.x0.en.eq(adv), mm.x1.en.eq(adv), mm.b0.en.eq(adv)]
        # the sigmoid ROM: row j holds T[j] and T[j+1] - T[j]
        table = sigmoid_table(c)
        dbits, vbits = c.sig_diff_bits, c.sig_frac + 1
        rows = [t | ((t1 - t) << vbits) for t, t1 in zip(table, table[1:])]
        m.submodules.sig = sig = memory.Memory(shape=unsigned(vbits + dbits),
                                               depth=len(rows), init=rows)
        d = c.frac - c.sig_step_bits
        mm.sig = []
        for i in range(L):
            port = sig.read_port()
            ga = _abs32(m, pay[i].a, f"ga_in{i}")
            jj = wire(m, ga >> d, f"sig_j{i}")
            m.d.comb += [port.addr.eq(Mux(jj >= len(rows), len(rows) - 1, jj)),
                         port.en.eq(adv)]
            mm.sig.append(SimpleNamespace(lo=port.data[:vbits], df=port.data[vbits:]))
        # reciprocal square root seeds (rmsnorm's per-token gain)
        m.submodules.rsqrt = rq = memory.Memory(shape=unsigned(RSQRT_FRAC + 2),
                                                depth=c.rsqrt_entries, init=rsqrt_table(c))
        mm.rq = rq.read_port()
        return mm

    # ---------------- control
    def _control(self, m, r: _Regs, fsm: FSM, adv) -> None:
        m.d.comb += [self.busy.eq(~fsm.is_("IDLE")), self.cmd.ready.eq(fsm.is_("IDLE"))]
        with m.If(r.sc_valid & self.out.ready):
            m.d.sync += r.sc_valid.eq(0)
        with fsm.state("IDLE"):        # take a cmd: check it, set the op up
            self._take_cmd(m, r, fsm)
        with fsm.state("IN"):          # the vector into the buffer, max|x|
            self._fill(m, r, fsm)
        with fsm.state("SCALE"):       # quant_a8: TS and the divider; rmsnorm: k
            self._scale(m, r, fsm)
        with fsm.state("DIV"):         # RC = floor(2**31 / mn), a bit a cycle
            self._divide(m, r, fsm)
        with fsm.state("RUN"):         # a pass through the pipeline
            self._run(m, r, fsm, adv)
        with fsm.state("GAIN"):        # rmsnorm: T, M, Y, Newton steps, R, shift
            self._gain(m, r, fsm)
        with fsm.state("EMIT"):        # argmax: the index beat
            with m.If(self.out.ready):
                fsm.next("IDLE")
        # quant_a8's 127 * RC (0 for an all-zero token); the final shift, decoded
        # once per op (both constant during a pass)
        qs = _sx(m, r.q, len(r.rc127) + 1, "q_s")
        m.d.sync += r.rc127.eq(Mux(r.mn == 0, 0, (qs << (ACT_BITS - 1)) - qs))
        self._shift_decode(m, r)

    def _take_cmd(self, m, r: _Regs, fsm: FSM) -> None:
        c = self.config
        cmd = self.cmd.payload
        p = cmd.p
        op = cmd.op
        buffered = (op == OP_CODE["quant_a8"]) | (op == OP_CODE["rmsnorm"]) | \
            (op == OP_CODE["rope"])
        bad = (cmd.k == 0) | (buffered & (cmd.k > c.max_k))
        if self._lb:
            bad = bad | (cmd.k[:self._lb] != 0)
        d = p.rope.d
        rope_bad = (d == 0) | (d > cmd.k) | (d[:self._lb + 1] != 0)
        bits = p.requant.bits
        bad = bad | ((op == OP_CODE["rope"]) & rope_bad) | \
            ((op == OP_CODE["requant"]) & ((bits < 2) | (bits > X_BITS)))
        bad = wire(m, bad, "cmd_bad")
        with m.If(self.cmd.valid):
            with m.If(bad):
                m.d.sync += self.error.eq(1)
            with m.Else():
                self._start(m, r, fsm, cmd, buffered)

    def _start(self, m, r: _Regs, fsm: FSM, cmd, buffered) -> None:
        c = self.config
        p = cmd.p
        op = cmd.op
        dq, rq = p.dequant, p.requant
        m.d.sync += [self.error.eq(0), r.op.eq(op), r.nb.eq(cmd.k >> self._lb), r.j.eq(0),
                     r.hb.eq(0), r.hd.eq(p.rope.d >> self._lb),
                     r.hh.eq(p.rope.d >> (self._lb + 1)), r.amax.eq(0), r.Q.eq(0),
                     r.have.eq(0), r.rbeat.eq(0), r.sq.eq(0), r.src_buf.eq(0),
                     r.E.eq(p.rmsnorm.E), r.SK.eq(p.rmsnorm.SK),
                     r.sbase.eq(p.rmsnorm.e_w + p.rmsnorm.es + _NORM_SHIFT_BASE - c.frac),
                     r.bits.eq(Mux(op == OP_CODE["requant"], rq.bits, X_BITS)), r.sym.eq(0)]
        shift = Mux(op == OP_CODE["dequant"], dq.e + dq.in_frac - dq.out_frac - dq.L,
                    Mux(op == OP_CODE["rope"], ROPE_FRAC,
                        Mux(op == OP_CODE["swiglu"], p.swiglu.shift,
                            Mux(op == OP_CODE["requant"], rq.from_frac - rq.to_frac, 0))))
        m.d.sync += [r.s_amt.eq(shift), r.mn.eq(dq.mn)]
        with m.If(buffered):
            fsm.next("IN")
        with m.Else():
            fsm.next("RUN")

    def _fill(self, m, r: _Regs, fsm: FSM) -> None:
        """One beat a cycle into the buffer (the write port is driven in
        _memories); max|x| over the lanes and beats."""
        c = self.config
        m.d.comb += self.x.ready.eq(1)
        mags = [_abs32(m, self.x.payload[i].a, f"mag{i}") for i in range(c.lanes)]
        bmax = tree(m, mags, lambda a, b: Mux(a > b, a, b), "bmax")
        last = r.j == r.nb_m1
        head_end = r.hb == r.hd_m1
        with m.If(self.x.valid):
            m.d.sync += [r.amax.eq(Mux(bmax > r.amax, bmax, r.amax)), r.j.eq(r.j + 1),
                         r.hb.eq(Mux(head_end, 0, r.hb + 1))]
            with m.If(last):
                m.d.sync += [r.j.eq(0), r.hb.eq(0)]
                with m.If(r.is_op["rope"]):
                    with m.If(head_end):
                        m.d.sync += r.src_buf.eq(1)
                        fsm.next("RUN")
                    with m.Else():     # k is not a whole number of heads: refused
                        m.d.sync += self.error.eq(1)
                        fsm.next("IDLE")
                with m.Else():
                    fsm.next("SCALE")

    def _scale(self, m, r: _Regs, fsm: FSM) -> None:
        """quant_a8: (mn, L) = token_scale, the TS beat, the divider's start;
        rmsnorm: k = max(0, bitlen(max|x|) - 20), then the sum-of-squares pass."""
        bl = bit_length(m, r.amax, "amax_bl")
        L = wire(m, bl - MANT_BITS, "ts_L")                       # -16 .. 16
        zero = r.amax == 0
        am = _sx(m, r.amax, X_BITS + 1, "amax_s")
        mn = wire(m, Mux(L >= 0, am >> L.as_unsigned()[:5],
                         am << (-L).as_unsigned()[:5])[:MANT_BITS], "ts_mn")
        Lz = Signal(signed(X_BITS - MANT_BITS), name="ts_Lz")
        m.d.comb += Lz.eq(Mux(zero, 0, L))
        with m.If(r.is_op["quant_a8"]):
            m.d.sync += [r.mn.eq(mn), r.s_amt.eq(RCP_BITS + Lz), r.bits.eq(ACT_BITS),
                         r.sym.eq(1), r.sc_valid.eq(1),
                         r.sc_word.eq(Cat(mn, Lz)),
                         r.rem.eq(1 << (RCP_BITS - DIV_STEPS)), r.q.eq(0), r.dstep.eq(0)]
            fsm.next("DIV")
        with m.Else():
            m.d.sync += [r.kx.eq(Mux(bl > RMS_XS_BITS, bl - RMS_XS_BITS, 0)),
                         r.src_buf.eq(1), r.sq.eq(1)]
            fsm.next("RUN")

    def _divide(self, m, r: _Regs, fsm: FSM) -> None:
        """Restoring division: rem starts at 2**31 >> 17 = 2**14 < mn (the quotient's
        bits above 16 are 0), then DIV_STEPS steps bring down the zero bits."""
        r2 = _sx(m, Cat(Const(0, 1), r.rem), MANT_BITS + 3, "div_r2")
        mn = _sx(m, r.mn, MANT_BITS + 3, "div_mn")
        ge = wire(m, r2 >= mn, "div_ge")
        with m.If(r.dstep != DIV_STEPS):
            m.d.sync += [r.rem.eq(Mux(ge, r2 - mn, r2)), r.q.eq(Cat(ge, r.q)),
                         r.dstep.eq(r.dstep + 1)]
        with m.If((r.dstep >= DIV_STEPS - 1) & (~r.sc_valid | self.out.ready)):
            m.d.sync += [r.j.eq(0), r.src_buf.eq(1)]
            fsm.next("RUN")

    def _run(self, m, r: _Regs, fsm: FSM, adv) -> None:
        """The pass ends when every beat is in and the pipeline has emptied (the
        last out beat transfers in this cycle)."""
        busy = r.v[0]
        for v in r.v[1:-1]:
            busy = busy | v
        done = wire(m, (r.j == r.nb) & ~busy & (~r.v[-1] | self.out.ready), "pass_done")
        with m.If(done):
            with m.If(r.sq):
                m.d.sync += [r.sq.eq(0), r.gstep.eq(0)]
                fsm.next("GAIN")
            with m.Elif(r.is_op["argmax"]):
                m.d.sync += [r.sc_valid.eq(1), r.sc_word.eq(r.best_idx)]
                fsm.next("EMIT")
            with m.Else():
                fsm.next("IDLE")

    def _gain(self, m, r: _Regs, fsm: FSM) -> None:
        """rmsnorm's per-token gain (golden.sfu._rms_gain) on one shared multiplier:
        each product is registered in one cycle and rounded into its target in the
        next (gain_cycles)."""
        c = self.config
        one = 1 << RSQRT_FRAC
        g = r.g
        steps = []                 # (operand a, operand b, target, shift)
        for _ in range(c.newton_steps):
            steps += [(g.Y, g.Y, g.y2, RSQRT_FRAC, False),
                      (g.M, g.y2, g.t, RSQRT_M_BITS, False),
                      (g.Y, one - g.t, g.Y, RSQRT_FRAC + 1, True)]
        steps.append((g.Y, r.SK, r.R, SQRTK_BITS, False))
        opa = Signal(RSQRT_FRAC + 4, name="g_opa")
        opb = Signal(signed(RSQRT_FRAC + 6), name="g_opb")
        m.d.sync += g.prod.eq(opa * opb)
        st = r.gstep
        # T = max(Q + rshift_round(E, 2k), 1); p, M; the table read; Y
        with m.If(st == 0):
            m.d.sync += g.T.eq(_clamp(r.Q + _rsr_var(m, r.E, Cat(Const(0, 1), r.kx), "e_r"),
                                      1, (1 << len(g.T)) - 1))
        bl = bit_length(m, g.T, "t_bl")
        p = wire(m, (bl - (RSQRT_M_BITS - 1)) >> 1, "g_p")
        pm = p.as_unsigned()[:count_width(len(g.T))]
        Ts = _sx(m, g.T, len(g.T) + 1, "g_T_s")
        M = Mux(p >= 0, Ts >> Cat(Const(0, 1), pm), Ts << Cat(Const(0, 1), (-p)[:5]))
        b = c.rsqrt_index_bits
        m.d.comb += [r.rq_port.addr.eq((g.M >> (RSQRT_M_BITS - b)) - (1 << (b - 2))),
                     r.rq_port.en.eq(1)]
        with m.If(st == 1):
            m.d.sync += [g.M.eq(M[:RSQRT_M_BITS]), g.p.eq(p)]
        with m.If(st == 3):
            m.d.sync += g.Y.eq(r.rq_port.data)
        for n, (a_, b_, dst, sh, acc) in enumerate(steps):
            s0 = 4 + 2 * n
            with m.If(st == s0):
                m.d.comb += [opa.eq(a_), opb.eq(b_)]
            with m.If(st == s0 + 1):
                rnd = _rsr(g.prod, sh)
                m.d.sync += dst.eq(g.Y + rnd if acc else rnd)
        m.d.sync += st.eq(st + 1)
        with m.If(st == gain_cycles(c) - 1):
            m.d.sync += [r.s_amt.eq(r.sbase + r.kx + g.p), r.j.eq(0), r.src_buf.eq(1)]
            fsm.next("RUN")

    def _shift_decode(self, m, r: _Regs) -> None:
        """The op's shift and width as the S5/S6 controls, registered (hi, lo a cycle
        after half): they are constant over a pass, and an op's first beat reaches
        S5 four cycles after its shift and width are set."""
        d = SimpleNamespace(right=Signal(name="sh_right"), rs=Signal(6, name="sh_rs"),
                            ls=Signal(5, name="sh_ls"),
                            half=Signal(signed(X_BITS + 2), name="sat_half"),
                            hi=Signal(signed(X_BITS + 1), name="sat_hi"),
                            lo=Signal(signed(X_BITS + 2), name="sat_lo"))
        s = r.s_amt
        neg = wire(m, -s, "sh_neg")
        bm1 = wire(m, r.bits - 1, "bits_m1")
        half = _sx(m, (Const(1, X_BITS + 1) << bm1[:5])[:X_BITS + 1], X_BITS + 2, "half_b")
        m.d.sync += [d.right.eq(s > 0), d.rs.eq(Mux(s > 63, 63, s[:6])),
                     d.ls.eq(Mux(neg > bm1, bm1, neg[:6])[:5]), d.half.eq(half),
                     d.hi.eq(d.half - 1),
                     d.lo.eq(Mux(r.sym, 1 - d.half, -d.half))]
        r.shd = d

    # ---------------- pipeline
    def _stage_e(self, m, r: _Regs, mm, adv) -> SimpleNamespace:
        """S1: a beat is issued from the buffer (read addr j) or taken from x;
        the element is the buffer's read data or the input register."""
        c = self.config
        L = c.lanes
        run = r.run
        more = wire(m, run & (r.j != r.nb), "more")
        take = wire(m, ~r.src_buf & more & adv & self.x.valid, "take_run")
        issue = wire(m, r.src_buf & more & adv, "issue")
        with m.If(run & ~r.src_buf):
            m.d.comb += self.x.ready.eq(more & adv)
        with m.If(take | issue):
            m.d.sync += [r.j.eq(r.j + 1), r.hb.eq(Mux(r.hb == r.hd_m1, 0, r.hb + 1))]
        s1 = SimpleNamespace(lo=Signal(name="s1_lo"), a=[], b=[], p=[], sig=mm.sig)
        in_a = [Signal(signed(X_BITS), name=f"in_a{i}") for i in range(L)]
        in_b = [Signal(signed(X_BITS), name=f"in_b{i}") for i in range(L)]
        with m.If(adv):
            m.d.sync += [r.v[0].eq(take | issue), s1.lo.eq(mm.lo)]
            m.d.sync += [x.eq(self.x.payload[i].a) for i, x in enumerate(in_a)]
            m.d.sync += [x.eq(self.x.payload[i].b) for i, x in enumerate(in_b)]
        for i in range(L):
            sl = slice(i * X_BITS, (i + 1) * X_BITS)
            s1.a.append(wire(m, Mux(r.src_buf, mm.x0.data[sl].as_signed(), in_a[i]), f"s1_a{i}"))
            s1.b.append(wire(m, Mux(r.src_buf, mm.b0.data[sl].as_signed(), in_b[i]), f"s1_b{i}"))
            s1.p.append(mm.x1.data[sl].as_signed())
        return s1

    def _stage_m1(self, m, r: _Regs, s1, adv) -> SimpleNamespace:
        """S2: per lane the first product A * B (one multiplier for every op) and
        rope's second one."""
        c = self.config
        op = r.is_op
        d = c.frac - c.sig_step_bits
        s2 = SimpleNamespace(m1=[], m1b=[], a=[], b=[], lo=[], sat=[], neg=[],
                             rlo=Signal(name="s2_lo"))
        with m.If(adv):
            m.d.sync += [r.v[1].eq(r.v[0]), s2.rlo.eq(s1.lo)]
        for i in range(c.lanes):
            a, b = s1.a[i], s1.b[i]
            A = Signal(signed(X_BITS), name=f"m1_a{i}")
            B = Signal(signed(X_BITS + 1), name=f"m1_b{i}")
            ga = _abs32(m, a, f"ga{i}")
            xs = wire(m, _rsr_var(m, a, r.kx, f"xs{i}")[:RMS_XS_BITS + 2].as_signed(),
                      f"xs{i}")
            s1_ = b[:S1_BITS]
            with m.If(op["quant_a8"] | op["argmax"]):
                m.d.comb += [A.eq(a), B.eq(Mux(op["argmax"], s1_, r.rc127))]
            with m.Elif(op["dequant"]):
                m.d.comb += [A.eq(s1_), B.eq(r.mn)]
            with m.Elif(op["rmsnorm"]):
                m.d.comb += [A.eq(Mux(r.sq, xs, b[:NW_BITS].as_signed())),
                             B.eq(Mux(r.sq, xs, r.R))]
            with m.Elif(op["rope"]):
                m.d.comb += [A.eq(a), B.eq(b[:ROPE_BITS].as_signed())]
            with m.Elif(op["swiglu"]):
                m.d.comb += [A.eq(s1.sig[i].df), B.eq(ga[:d] if d else 0)]
            m1 = Signal(signed(2 * X_BITS - 8), name=f"s2_m1_{i}")    # |.| < 2**55
            m1b = Signal(signed(X_BITS + ROPE_BITS), name=f"s2_m1b{i}")
            regs = SimpleNamespace(a=Signal(signed(X_BITS), name=f"s2_a{i}"),
                                   b=Signal(signed(X_BITS), name=f"s2_b{i}"),
                                   lo=Signal(c.sig_frac + 1, name=f"s2_siglo{i}"),
                                   sat=Signal(name=f"s2_sat{i}"), neg=Signal(name=f"s2_neg{i}"))
            with m.If(adv):
                m.d.sync += [m1.eq(A * B),
                             m1b.eq(s1.p[i] * b[ROPE_BITS:2 * ROPE_BITS].as_signed()),
                             regs.a.eq(a), regs.b.eq(b), regs.lo.eq(s1.sig[i].lo),
                             regs.sat.eq((ga >> d) >= c.sig_entries - 1), regs.neg.eq(a < 0)]
            s2.m1.append(m1)
            s2.m1b.append(m1b)
            for k in ("a", "b", "lo", "sat", "neg"):
                getattr(s2, k).append(getattr(regs, k))
        return s2

    def _reduce(self, m, r: _Regs, s2, adv) -> None:
        """rmsnorm's Q += sum of the beat's squares; argmax's running (max, index):
        the beat's best lane (the lowest on ties) replaces it only when greater."""
        c = self.config
        go = wire(m, r.v[1] & adv, "red_go")
        with m.If(go & r.sq):
            sq = [s2.m1[i][:2 * RMS_XS_BITS + 2].as_signed() for i in range(c.lanes)]
            m.d.sync += r.Q.eq(_sx(m, r.Q, c.q_bits + 1, "Q_s") + tree_sum(sq))
        pairs = [(s2.m1[i][:len(r.best)].as_signed(), Const(i, max(1, self._lb)))
                 for i in range(c.lanes)]
        while len(pairs) > 1:
            nxt = []
            for n in range(0, len(pairs), 2):
                (ka, ia), (kb, ib) = pairs[n], pairs[n + 1]
                gt = wire(m, kb > ka, f"am_gt{len(pairs)}_{n}")
                nxt.append((wire(m, Mux(gt, kb, ka), f"am_k{len(pairs)}_{n}"),
                            wire(m, Mux(gt, ib, ia), f"am_i{len(pairs)}_{n}")))
            pairs = nxt
        key, lane = pairs[0]
        idx = Cat(lane, r.rbeat) if self._lb else r.rbeat
        with m.If(go & r.is_op["argmax"]):
            m.d.sync += r.rbeat.eq(r.rbeat + 1)
            with m.If(~r.have | (key > r.best)):
                m.d.sync += [r.have.eq(1), r.best.eq(key), r.best_idx.eq(idx)]

    def _stage_m2(self, m, r: _Regs, s2, adv) -> SimpleNamespace:
        """S3: the second product a * B2 (dequant: S1 mn; rmsnorm: G; swiglu: the
        sigmoid) and the single-product ops' values."""
        c = self.config
        op = r.is_op
        d = c.frac - c.sig_step_bits
        one = 1 << c.sig_frac
        emits = ~(op["argmax"] | r.sq)
        s3 = SimpleNamespace(val=[], b=[])
        with m.If(adv):
            m.d.sync += r.v[2].eq(r.v[1] & emits)
        for i in range(c.lanes):
            m1, a = s2.m1[i], s2.a[i]
            G = wire(m, _rsr(m1, NORM_G_SHIFT)[:X_BITS].as_signed(), f"norm_g{i}")
            sig = wire(m, Mux(s2.sat[i], one, s2.lo[i] + _rsr(m1, d)), f"sig{i}")
            sigfx = wire(m, Mux(s2.neg[i], one - sig, sig)[:c.sig_frac + 1], f"sigfx{i}")
            B2 = Signal(signed(X_BITS + 1), name=f"m2_b{i}")
            with m.If(op["dequant"]):
                m.d.comb += B2.eq(m1[:S1_BITS + MANT_BITS])
            with m.Elif(op["rmsnorm"]):
                m.d.comb += B2.eq(G)
            with m.Elif(op["swiglu"]):
                m.d.comb += B2.eq(sigfx)
            m2 = wire(m, a * B2, f"m2_{i}")
            rope = wire(m, Mux(s2.rlo, m1 - s2.m1b[i], m1 + s2.m1b[i]), f"rope_sum{i}")
            val = Signal(signed(2 * X_BITS), name=f"s3_val{i}")
            bb = Signal(signed(X_BITS), name=f"s3_b{i}")
            v = Mux(op["dequant"] | op["rmsnorm"] | op["swiglu"], m2,
                    Mux(op["rope"], rope,
                        Mux(op["residual_add"], a + s2.b[i],
                            Mux(op["requant"], a, m1))))
            with m.If(adv):
                m.d.sync += [val.eq(v), bb.eq(s2.b[i])]
            s3.val.append(val)
            s3.b.append(bb)
        return s3

    def _stage_m3(self, m, r: _Regs, s3, adv) -> list:
        """S4: swiglu's h = silu * u, silu = rshift_round(g * sigmoid, sig_frac)."""
        c = self.config
        out = []
        with m.If(adv):
            m.d.sync += r.v[3].eq(r.v[2])
        for i in range(c.lanes):
            silu = wire(m, _rsr(s3.val[i], c.sig_frac)[:X_BITS + 1].as_signed(), f"silu{i}")
            val = Signal(signed(2 * X_BITS), name=f"s4_val{i}")
            with m.If(adv):
                m.d.sync += val.eq(Mux(r.is_op["swiglu"], silu * s3.b[i], s3.val[i]))
            out.append(val)
        return out

    def _stage_shift(self, m, r: _Regs, s4, adv) -> list:
        """S5: rshift_round(x, s) for s > 0 (s >= 63 gives 0 for |x| < 2**62);
        clamp(x, +-2**(bits-1)) << min(-s, bits-1) otherwise (golden.sfu.shift_sat)."""
        c = self.config
        d = r.shd
        out = []
        with m.If(adv):
            m.d.sync += r.v[4].eq(r.v[3])
        for i in range(c.lanes):
            x = s4[i]
            right = wire(m, _rsr_var(m, x, d.rs, f"sh{i}"), f"shr{i}")
            xc = wire(m, _clamp(x, -d.half, d.half), f"shc{i}")
            left = wire(m, xc << d.ls, f"shl{i}")
            y = Signal(signed(2 * X_BITS + 2), name=f"s5_y{i}")
            with m.If(adv):
                m.d.sync += y.eq(Mux(d.right, right, left))
            out.append(y)
        return out

    def _stage_sat(self, m, r: _Regs, s5, adv) -> None:
        """S6: saturation to [lo, hi] (bits wide; -127 for A8), the out register;
        the scalar beats (TS, argmax index) share the out stream."""
        c = self.config
        d = r.shd
        with m.If(adv):
            m.d.sync += r.v[5].eq(r.v[4])
        m.d.comb += self.out.valid.eq(r.v[5] | r.sc_valid)
        for i in range(c.lanes):
            o = Signal(signed(X_BITS), name=f"s6_out{i}")
            with m.If(adv):
                m.d.sync += o.eq(_clamp(s5[i], d.lo, d.hi))
            sc = r.sc_word if i == 0 else 0
            m.d.comb += self.out.payload[i].eq(Mux(r.sc_valid, sc, o))
