"""The accelerator core's KV4 unit (docs/core.md §1, §4) in Amaranth 0.5: KV_APPEND and
ATTEND on a KV head's cache region in memory, bit-exact with golden.core
(`_Machine.op_kv_append`, `op_attend`). The arithmetic is hdl.kv4_attention's, reused
as is: KV4Quantizer (append path) and KV4Attention (decode core); this unit adds the
instruction's requants, the A8 query quantizer, the logit multiplier, and moves the
cache between memory and the two.

Ports (the core routes its AXI masters and buffer ports here while a KV instruction runs):
  cmd     {attend, pos, tokens, ctx, col, heads, in_frac, in_frac2, frac_k, frac_v,
          out_frac, addr}  one instruction (attend 0: KV_APPEND); addr = addr0
  x       sfu.lanes int32  buffer words, fixed order (below)
  y       sfu.lanes int32  ATTEND's output words (below)
  rd_req, rd_data          the core's AXI reader (ranges of whole beats, in order)
  wr_req, wr_data          the core's AXI writer (ranges + beats with byte strobes)
  busy    from the cmd's transfer to the last write beat (KV_APPEND) or the decoder's
          last out beat (ATTEND: the last y word, or a dropped beat of an unused head)
  error   a refused instruction, sticky until the next good cmd (`refusal`): the cmd
          is taken into registers and checked the next cycle (CHECK), then error and
          nothing else, or its run

x / y order (D = kv4.head_dim, L = lanes, words of L elements, columns in order):
  KV_APPEND  for t < T: D/L words of K = src[t, col:col+D], then D/L words of
             V = src2[t, col:col+D]
  ATTEND     x: for t < T: heads D/L words of src[t, col:col+heads D] (the queries);
             y: for t < T: heads D/L words of dst[t, col:col+heads D]

KV_APPEND dataflow. K words are requantized (golden.sfu.requant: in_frac -> frac_k,
x_bits) into a D-element register row; each V word (in_frac2 -> frac_v) goes with its K
chunk into the KV4Quantizer as one append beat. The quantizer's `chunks` cache beats of a
token are captured whole (4-bit codes packed two a byte, element 2j low, 8-bit codes,
S, zeros) and written plane by plane (golden.core_config.kv_layout(ctx, D, recent),
offsets computed at run time from ctx): per plane one range, then its beats: k4, v4
(D/2 bytes), ks, vs (uint32), kz, vz (u8) and with recent > 0 k8, v8 (D bytes), kz8,
vz8. A row smaller than a beat is one beat with its byte strobes; the quantizer works
on the next token meanwhile. Bytes written: T (2 (D/2 + 5) + 2 (D + 1) if recent).

ATTEND dataflow (the cache is read ONCE per instruction into on-chip memories, so a
prefill block does not re-stream it per query):
  LOAD   one read range per plane, queued back to back: tokens 0..pos+T-1 of k4, v4,
         ks, vs, kz, vz (whole beats from the plane start), and with recent > 0 the
         8-bit planes only for the tokens some query of the block reads at 8 bits,
         max(0, pos+1-recent)..pos+T-1 (from the beat holding the first). Beats go into
         one memory per plane (BB-byte words; the 8-bit planes into rings of a power of
         two beats, addressed by beat index mod depth). While loading, ks/vs >=
         2**scale_bits and kz/vz > 15 (golden refuses such a cache) are flagged.
  QUERY  per query t: its heads D/L words into a query memory with the per-head max|x|;
         then per head golden.sfu.quant_a8's (mn, L) and RC = floor(2**31 / mn) (a
         17-step restoring divider, all heads at once), and
         golden.kv4_attention.logit_multiplier_fixed's (C, lsh). The first query's
         words are taken while the cache loads.
         Refusals golden makes on data (it refuses the whole instruction, before any
         output): a cache value check at the end of LOAD, or a query whose shift lsh <
         min_lsh, sets error and starts nothing more; the queries already issued still
         leave their y words, the refused query's words have been taken, later ones are
         not (the core stops on error).
  DECODE a KV4Attention cmd {pos+t+1, C, lsh} per query, then its INT8 query beats
         (q8 = clamp(RHU(x 127 RC, 31 + L), +-127), computed as they leave the query
         memory; kv4.heads - heads unused heads get zeros and C = 0), while two feeders
         stream tokens 0..pos+t from the plane memories into the decoder's k and v
         ports (4-bit tokens: chunks beats; the last min(recent, pos+t+1): the high then
         the low nibble plane of the 8-bit codes, with z8). Each out beat of a used head
         leaves as a y word, golden.sfu.requant(out, frac_v + kv4.out_frac, out_frac,
         32); the unused heads' beats are dropped. The next query's words are taken
         while the current one decodes.
Bytes read per ATTEND: (pos+T) (D + 10) + (recent > 0) (min(pos+T, recent+T-1)) 2 (D+1),
each plane rounded to whole beats: once per instruction (golden.core's memory model
charges every query its own pos+t+1 tokens).

Cycle model (`cycle_model`, ideal streams, a range's first beat `latency` cycles after
the reader takes it, then a beat a cycle; the cmd's transfer to the last y word or write
beat, inclusive; the tests hold the RTL to it exactly):
  KV_APPEND  per token the quantizer's append path (hdl.kv4_attention.append_cycles),
             its next token's code beats waiting for the capture row while the plane
             writes (one range cycle + its beats per plane: 20 cycles at D 32, 32-byte
             beats, recent) take longer; the last token's writes end it
  ATTEND     max(query 0's words + 20 (scale, divider, multiplier), latency + load
             beats + 1), then per query the decoder's hdl.kv4_attention.cycle_model(kv4,
             pos+t+1) (+1: the query beats leave the query memory a cycle late) + 1 for
             the next cmd; the next query's words and scale hide under the decode.
On-chip storage: max_t (D + 10) bytes of 4-bit planes, 2 rings for the 8-bit codes of
about (recent + max_tokens) D bytes and two for their zeros, the query memory (kv4.heads D
int32), the K row of an append (D x_bits) and one token's cache rows.

Limits (`check_config`): kv4.lanes == sfu.lanes (a buffer word is a decoder beat), lanes
<= beat_bytes <= 64 (a chunk of 8-bit codes inside one beat; planes start on beats).
"""
from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from golden.core_config import FIELDS, MEM_ALIGN, CoreConfig
from golden.formats import ACT_BITS, ACT_QMAX
from golden.kv4_attention_config import C_BITS, KV8_LEVELS, KV_LEVELS, LSH_BITS, KV4Config
from golden.sfu_config import MANT_BITS, RCP_BITS, X_BITS
from golden.validate import expect_type

from .axi import AXI_ADDR_BITS, range_signature, write_beat_signature
from .kv4_attention import KV4Attention, KV4Quantizer, _quant_split
from .kv4_attention import cycle_model as decode_cycles
from .rtl import FSM, bit_length, count_width, is_const, rshift_round, select, tree, wire

__all__ = ["KVUnit", "check_config", "cmd_layout", "refusal", "planes", "max_beats",
           "load_ranges", "cycle_model", "pack_cmd", "logit_constant"]

_FRAC = signed(8)
#: The ATTEND query path's constants (golden.sfu.quant_a8): |a| <= 127.
_QMAX = (1 << (ACT_BITS - 1)) - 1


#: Bits of the logit constant's mantissa (golden.kv4_attention.KM_BITS).
KM_BITS = 24


def logit_constant(k: KV4Config) -> tuple[int, int]:
    """golden.kv4_attention.logit_constant(k, in_frac=0, frac_k=0), here because hdl
    stays torch-free (the tests hold the two equal): (KM, KE0) with KM 2**-KE0 ~=
    2**logit_frac log2(e) / (127 240 sqrt(D)) (* 2**(rot_shift - log2 D) with rotate);
    the unit adds in_frac + frac_k to KE0 at run time."""
    x = 2.0 ** k.logit_frac / ACT_QMAX * (1.0 / math.log(2.0)) / (KV8_LEVELS * math.sqrt(k.head_dim))
    if k.rotate:
        x *= 2.0 ** (k.rot_shift - k.log2_d)
    mant, ex = math.frexp(x)
    KM, KE = round(mant * 2.0 ** KM_BITS), KM_BITS - ex
    if KM == 1 << KM_BITS:
        KM, KE = KM >> 1, KE - 1
    return KM, KE


# --------------------------------------------------------------------------- config
def check_config(config: CoreConfig) -> CoreConfig:
    """`config` if the KV unit can be generated for it; a ValueError naming every
    problem otherwise."""
    c = expect_type("config", config, CoreConfig)
    k, L, BB = c.kv4, c.sfu.lanes, c.beat_bytes
    problems = []
    if k.lanes != L:
        problems.append(f"kv4.lanes={k.lanes} must equal sfu.lanes={L} (one buffer word is "
                        f"one decoder beat)")
    if L < 2 or L > BB:
        problems.append(f"lanes={L} must lie in [2, beat_bytes={BB}] (a chunk of 8-bit codes "
                        f"inside one beat)")
    if BB < 4 or BB > MEM_ALIGN:
        problems.append(f"beat_bytes={BB} must lie in [4, {MEM_ALIGN}] (a uint32 scale in a "
                        f"beat; planes start on a beat)")
    if problems:
        raise ValueError("KVUnit cannot be generated for this CoreConfig: "
                         + "; ".join(problems))
    return c


def cmd_layout(config: CoreConfig) -> data.StructLayout:
    """Layout of the KV unit's cmd word."""
    c = expect_type("config", config, CoreConfig)
    return data.StructLayout({
        "attend": unsigned(1), "pos": unsigned(FIELDS["ctx"].width),
        "tokens": Shape.cast(range(c.max_tokens + 1)), "ctx": unsigned(FIELDS["ctx"].width),
        "col": unsigned(FIELDS["col"].width), "heads": unsigned(FIELDS["heads"].width),
        "in_frac": _FRAC, "in_frac2": _FRAC, "frac_k": _FRAC, "frac_v": _FRAC,
        "out_frac": _FRAC, "addr": unsigned(AXI_ADDR_BITS)})


def pack_cmd(config: CoreConfig, **fields: int) -> int:
    """The cmd word of `fields` (every field of cmd_layout; absent ones 0)."""
    lay = cmd_layout(config)
    word = 0
    for name, v in fields.items():
        f = lay[name]
        word |= (int(v) & ((1 << f.width) - 1)) << f.offset
    return word


def refusal(config: CoreConfig, attend: bool, pos: int, tokens: int, ctx: int,
            heads: int, addr: int) -> str | None:
    """Why the unit refuses this cmd at its transfer (error, nothing else), or None."""
    c = check_config(config)
    if tokens < 1:
        return "tokens = 0"
    if ctx > c.kv4.max_t:
        return f"ctx={ctx} > kv4.max_t={c.kv4.max_t}"
    if pos + tokens > ctx:
        return f"pos + tokens = {pos + tokens} > ctx={ctx}"
    if attend and not 1 <= heads <= c.kv4.heads:
        return f"heads={heads} outside 1..kv4.heads={c.kv4.heads}"
    if addr % MEM_ALIGN or addr >> c.addr_bits:
        return f"addr=0x{addr:x} not {MEM_ALIGN}-byte aligned or beyond addr_bits"
    return None


def planes(config: CoreConfig) -> list[tuple[str, int]]:
    """(name, bytes per token) of the cache planes in kv_layout's order."""
    D = config.kv4.head_dim
    out = [("k4", D // 2), ("v4", D // 2), ("ks", 4), ("vs", 4), ("kz", 1), ("vz", 1)]
    if config.kv4.recent:
        out += [("k8", D), ("v8", D), ("kz8", 1), ("vz8", 1)]
    return out


def _align(x: int) -> int:
    return -(-x // MEM_ALIGN) * MEM_ALIGN


def _window(config: CoreConfig) -> int:
    """Most tokens one ATTEND reads at 8 bits: min(max_t, recent + max_tokens - 1)."""
    return min(config.kv4.max_t, config.kv4.recent + config.max_tokens - 1)


def _depths(config: CoreConfig) -> dict[str, int]:
    """Words (beats) of each plane memory; the 8-bit planes' are powers of two (rings)."""
    c = config
    BB, T = c.beat_bytes, c.kv4.max_t
    out = {}
    for name, per in planes(c):
        if name in ("k8", "v8", "kz8", "vz8"):
            full = -(-T * per // BB)
            need = -(-_window(c) * per // BB) + 1
            out[name] = max(2, 1 << ceil_log2(min(need, full)))
        else:
            out[name] = max(2, -(-T * per // BB))
    return out


def max_beats(config: CoreConfig) -> int:
    """The longest range the unit asks for (one plane of max_t tokens)."""
    c = check_config(config)
    return max(1, -(-c.kv4.max_t * c.kv4.head_dim // c.beat_bytes))


def _offsets(config: CoreConfig, ctx: int) -> dict[str, int]:
    off, out = 0, {}
    for name, per in planes(config):
        out[name] = off
        off += _align(per * ctx)
    return out


def load_ranges(config: CoreConfig, pos: int, tokens: int, ctx: int,
                addr: int) -> list[tuple[str, int, int]]:
    """The read ranges of an ATTEND's LOAD in order: (plane, byte address, beats)."""
    c = check_config(config)
    BB, recent = c.beat_bytes, c.kv4.recent
    n = pos + tokens
    b8 = max(0, pos + 1 - recent)
    off = _offsets(c, ctx)
    out = []
    for name, per in planes(c):
        first = (b8 * per) // BB if name in ("k8", "v8", "kz8", "vz8") else 0
        out.append((name, addr + off[name] + first * BB, -(-n * per // BB) - first))
    return out


# --------------------------------------------------------------------------- model
def _write_cycles(config: CoreConfig, setup: int = 1) -> int:
    """Cycles of one token's plane writes: per plane `setup` cycles for its range
    (1 on an ideal writer) and its beats."""
    BB = config.beat_bytes
    return sum(setup + max(1, per // BB) for _, per in planes(config))


def cycle_model(config: CoreConfig, attend: bool, pos: int, tokens: int, heads: int,
                latency: int, *, write_setup: int = 1) -> int:
    """Cycles from the cmd's transfer to the last y word (ATTEND) or write beat
    (KV_APPEND), both inclusive, with always-valid x, always-ready y and wr ports and
    a reader whose first beat of a range comes `latency` cycles after the cycle it takes
    the range and never before the beats of the ranges before it (module docstring);
    `write_setup`: cycles from a write range's transfer to its first beat's (1 here; the
    core's AXI writer and memory model take 3).

    KV_APPEND: the quantizer's cache beats of token t are F_t, F_t + qsteps, ..; the
      last one Q_t = F_t + (chunks - 1) qsteps, then the token's plane writes W cycles
      (one range cycle + its beats per plane). F_0 = 3 chunks + rot + 2 + qsteps (K
      words, V words into the quantizer, its butterfly, min/max, S, zeros, first code
      beat); F_{t+1} = Q_t + max(2 chunks + rot + 2 + qsteps, W + 1) (the next token's
      codes wait for the capture row the writes free). cycles = Q_{T-1} + W + 1.
    ATTEND: the ranges are taken at cycles 1..planes, N beats follow from 1 + latency;
      query 0's words, scale, divider and multiplier end at heads chunks + 19; its
      decoder cmd at c_0 = max(heads chunks + 20, latency + N + 1). A query's last out
      beat at c_t + hdl.kv4_attention.cycle_model(kv4, pos+t+1) (its query beats leave
      the query memory one cycle late); the next cmd at max(that + 1, the query beats'
      end + heads chunks + 20)."""
    c = check_config(config)
    k = c.kv4
    NC = k.chunks
    rot = k.log2_d if k.rotate else 0
    W = _write_cycles(c, write_setup)
    if not attend:
        qsteps = _quant_split(k)[1]
        F = 3 * NC + rot + 2 + qsteps
        Q = F + (NC - 1) * qsteps
        for _ in range(1, tokens):
            F = Q + max(2 * NC + rot + 2 + qsteps, W + 1)
            Q = F + (NC - 1) * qsteps
        return 1 + Q + W + 1            # 1: the cmd's check
    N = sum(b for _, _, b in load_ranges(c, pos, tokens, pos + tokens, 0))
    H = k.heads
    words = heads * NC
    cmd = max(words + 20, latency + N + 1)
    # the decoder takes a head's query beats, then (rotate) log2 D + 2 cycles per head
    qbeats = H * NC + ((H - 1) * (k.log2_d + 2) if k.rotate else 0)
    last = 0
    for t in range(tokens):
        last = cmd + decode_cycles(k, pos + t + 1)
        cmd = max(last + 1, cmd + 1 + qbeats + words + 20)
    return 1 + last + 1                 # 1: the cmd's check


# --------------------------------------------------------------------------- RTL helpers
def _abs32(m, x, name: str):
    return wire(m, Mux(x < 0, -x, x).as_unsigned()[:32], name)


def _shift_sat(m, x, s, bits: int, name: str):
    """golden.sfu.shift_sat(x, s, bits) for signed x and a signed shift s: a right
    shift by s > 0 rounds half up (capped where every x gives 0), s <= 0 a saturating
    left shift of x clamped to +-2**(bits-1), by at most bits - 1."""
    cap = len(x) + 1                               # |x| < 2**(len-1): RHU by more is 0
    sr = Signal(count_width(cap), name=f"{name}_sr")
    sl = Signal(count_width(bits - 1), name=f"{name}_sl")
    m.d.comb += [sr.eq(Mux(s > cap, cap, Mux(s < 0, 0, s))),
                 sl.eq(Mux(-s > bits - 1, bits - 1, Mux(s > 0, 0, -s)))]
    right = wire(m, rshift_round(m, x, sr, f"{name}_r"), f"{name}_rv")
    half = 1 << (bits - 1)
    xc = wire(m, Mux(x > half, half, Mux(x < -half, -half, x)), f"{name}_xc")
    left = wire(m, xc << sl, f"{name}_lv")
    v = wire(m, Mux(s > 0, right, left), f"{name}_v")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


def _slices(value, width: int, count: int):
    return [value[i * width:(i + 1) * width] for i in range(count)]


class _Feeder:
    """One side's (K or V) token stream from the plane memories into the decoder: the
    decoder's beat order (hdl.kv4_attention._position), reads one cycle ahead with the
    memory's read register as the output register (`adv` = the slot is free)."""

    def __init__(self, unit, m, side: str, mems: dict, port, Tq, n4, start):
        c = unit.config
        k = c.kv4
        D, L, BB = k.head_dim, k.lanes, c.beat_bytes
        lbb = exact_log2(BB)
        t = Signal(k.t_bits, name=f"{side}f_t")
        j = Signal(range(k.chunks), name=f"{side}f_j")
        pl = Signal(name=f"{side}f_pl")
        fv = Signal(name=f"{side}f_valid")
        more = wire(m, t < Tq, f"{side}f_more")
        rec = wire(m, t >= n4, f"{side}f_rec")
        adv = wire(m, ~fv | port.ready, f"{side}f_adv")
        cend = j == k.chunks - 1
        last = wire(m, cend & (pl | ~rec), f"{side}f_last")
        with m.If(start):
            m.d.sync += [t.eq(0), j.eq(0), pl.eq(0), fv.eq(0)]
        with m.Elif(adv):
            m.d.sync += fv.eq(more)
            with m.If(more):
                m.d.sync += j.eq(Mux(cend, 0, j + 1))
                with m.If(cend):
                    m.d.sync += pl.eq(~last)
                with m.If(last):
                    m.d.sync += t.eq(t + 1)
        # byte addresses in the planes; the 8-bit rings by beat index mod depth
        a4 = t * (D // 2) + j * (L // 2)
        a8 = t * D + j * L
        addrs = {"c4": a4 >> lbb, "s": t >> (lbb - 2), "z": t >> lbb}
        subs = {"c4": (a4 >> exact_log2(L // 2))[:max(0, lbb - exact_log2(L // 2))],
                "s": t[:lbb - 2], "z": t[:lbb]}
        if k.recent:
            addrs.update(c8=a8 >> lbb, z8=t >> lbb)
            subs.update(c8=(a8 >> exact_log2(L))[:lbb - exact_log2(L)], z8=t[:lbb])
        held = {}
        for key, rp in mems.items():
            m.d.comb += [rp.addr.eq(addrs[key]), rp.en.eq(adv)]
            held[key] = Signal(len(subs[key]), name=f"{side}f_sub_{key}")
            with m.If(adv):
                m.d.sync += held[key].eq(subs[key])
        hrec, hpl = Signal(name=f"{side}f_hrec"), Signal(name=f"{side}f_hpl")
        with m.If(adv):
            m.d.sync += [hrec.eq(rec), hpl.eq(pl)]

        def pick(key, width):
            rd = mems[key].data
            n = 8 * BB // width
            return select(held[key], _slices(rd, width, n)) if n > 1 else rd[:width]

        c4 = wire(m, pick("c4", 4 * L), f"{side}f_c4")
        s = wire(m, pick("s", 32)[:k.scale_bits], f"{side}f_s")
        z = wire(m, pick("z", 8), f"{side}f_z")
        p = port.payload
        m.d.comb += [port.valid.eq(fv), p.scale.eq(s)]
        if k.recent:
            c8 = wire(m, pick("c8", 8 * L), f"{side}f_c8")
            z8 = wire(m, pick("z8", 8), f"{side}f_z8")
            hi = Cat(c8[8 * i + 4:8 * i + 8] for i in range(L))
            lo = Cat(c8[8 * i:8 * i + 4] for i in range(L))
            m.d.comb += [p.codes.eq(Mux(hrec, Mux(hpl, lo, hi), c4)),
                         p.zero.eq(Mux(hrec, z8, z))]
        else:
            m.d.comb += [p.codes.eq(c4), p.zero.eq(z)]


# --------------------------------------------------------------------------- RTL
class KVUnit(wiring.Component):
    """The core's KV4 unit (module docstring)."""

    def __init__(self, config: CoreConfig, *, max_range_beats: int | None = None):
        self.config = c = check_config(config)
        self.max_beats = max_beats(c) if max_range_beats is None else max_range_beats
        if self.max_beats < max_beats(c):
            raise ValueError(f"max_range_beats={max_range_beats} is below the longest plane "
                             f"range, {max_beats(c)} beats")
        lanes = c.sfu.lanes
        word = data.ArrayLayout(signed(X_BITS), lanes)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(c))),
            "x": In(stream.Signature(word)),
            "y": Out(stream.Signature(word)),
            "rd_req": Out(range_signature(self.max_beats)),
            "rd_data": In(stream.Signature(unsigned(8 * c.beat_bytes))),
            "wr_req": Out(range_signature(self.max_beats)),
            "wr_data": Out(write_beat_signature(c.beat_bytes)),
            "busy": Out(1),
            "error": Out(1),
        })

    # ------------------------------------------------------------------ top
    def elaborate(self, platform: object) -> Module:
        """Build the unit: KV4Quantizer and KV4Attention with the requants, the A8 query
        quantizer, the logit multiplier and the cache moves to and from memory."""
        c = self.config
        m = Module()
        m.submodules.quant = self.qz = KV4Quantizer(c.kv4)
        m.submodules.dec = self.dec = KV4Attention(c.kv4)
        r = self._command(m)
        self._append(m, r)
        self._attend(m, r)
        return m

    # ------------------------------------------------------------------ command
    def _command(self, m):
        c = self.config
        k = c.kv4
        p = self.cmd.payload
        fsm = FSM(m, ("IDLE", "CHECK", "APPEND", "ATTEND"), "kv_state")
        r = {"fsm": fsm}
        lay = cmd_layout(c)
        # pos, tokens and ctx in registers of one width: the checks compare them at
        # equal widths (Verilator -Wall; Yosys folds a zero-extension of a port slice)
        cw = FIELDS["ctx"].width + 1
        for name in ("attend", "pos", "tokens", "ctx", "heads", "in_frac", "in_frac2",
                     "frac_k", "frac_v", "out_frac", "addr"):
            shape = cw if name in ("pos", "tokens", "ctx") else lay[name].shape
            r[name] = Signal(shape, name=f"r_{name}")
        fields = [n for n in r if n != "fsm"]
        r["go"] = Signal(name="kv_go")          # the cycle after a good cmd's check
        r["accept"] = Signal(name="kv_accept")  # comb: a good cmd is checked (resets)
        r["done"] = Signal(name="kv_done")      # comb: the running instruction ends
        m.d.comb += [self.cmd.ready.eq(fsm.is_("IDLE")),
                     self.busy.eq(~fsm.is_("IDLE"))]
        end = Signal(cw, name="cmd_end")        # pos + tokens < 2**cw
        m.d.comb += end.eq(r["pos"] + r["tokens"])
        addr = r["addr"]
        bad = wire(m, is_const(r["tokens"], 0) | (r["ctx"] > k.max_t) | (end > r["ctx"])
                   | (r["attend"] & (is_const(r["heads"], 0) | (r["heads"] > k.heads)))
                   | addr[:exact_log2(MEM_ALIGN)].any()
                   | (addr[c.addr_bits:].any() if c.addr_bits < AXI_ADDR_BITS else 0),
                   "cmd_bad")
        m.d.sync += r["go"].eq(0)
        with fsm.state("IDLE"):
            with m.If(self.cmd.valid):
                m.d.sync += [r[n].eq(p[n]) for n in fields]
                fsm.next("CHECK")
        with fsm.state("CHECK"):
            with m.If(bad):
                m.d.sync += self.error.eq(1)
                fsm.next("IDLE")
            with m.Else():
                m.d.comb += r["accept"].eq(1)
                m.d.sync += [self.error.eq(0), r["go"].eq(1)]
                with m.If(r["attend"]):
                    fsm.next("ATTEND")
                with m.Else():
                    fsm.next("APPEND")
        with m.If(r["done"]):
            fsm.next("IDLE")
        # plane offsets of kv_layout(ctx): sizes per * ctx rounded up to MEM_ALIGN
        off, acc = {}, Const(0, 1)
        for name, per in planes(c):
            off[name] = wire(m, acc, f"off_{name}")
            size = (r["ctx"] * per + (MEM_ALIGN - 1)) >> exact_log2(MEM_ALIGN)
            acc = wire(m, off[name] + (size << exact_log2(MEM_ALIGN)), f"end_{name}")
        r["off"] = off
        return r

    # ------------------------------------------------------------------ KV_APPEND
    def _append(self, m, r):
        c = self.config
        k = c.kv4
        D, L, NC, BB = k.head_dim, k.lanes, k.chunks, c.beat_bytes
        lbb = exact_log2(BB)
        qz, fsm = self.qz, r["fsm"]
        on = fsm.is_("APPEND")
        # ---- words in: K row into registers, each V word with its K chunk to the quantizer
        kbuf = [[Signal(signed(k.x_bits), name=f"kbuf{j}_{i}") for i in range(L)]
                for j in range(NC)]
        wi = Signal(range(2 * NC), name="ap_word")          # word of the token: K then V
        t_in = Signal(range(c.max_tokens + 1), name="ap_t_in")
        in_v = wire(m, wi >= NC, "ap_in_v")
        jv = wire(m, (wi - NC)[:max(1, exact_log2(NC))] if NC > 1 else Const(0, 1), "ap_jv")
        taking = wire(m, on & (t_in < r["tokens"]), "ap_taking")
        sk = wire(m, r["in_frac"] - r["frac_k"], "ap_sk")
        sv = wire(m, r["in_frac2"] - r["frac_v"], "ap_sv")
        x = self.x.payload
        xr = [Signal(signed(k.x_bits), name=f"apx{i}") for i in range(L)]
        m.d.comb += [xr[i].eq(_shift_sat(m, x[i], Mux(in_v, sv, sk), k.x_bits, f"apq{i}"))
                     for i in range(L)]
        m.d.comb += [qz.x.valid.eq(taking & in_v & self.x.valid)]
        for i in range(L):
            m.d.comb += [qz.x.payload.k[i].eq(select(jv, [row[i] for row in kbuf])),
                         qz.x.payload.v[i].eq(xr[i])]
        with m.If(taking):
            m.d.comb += self.x.ready.eq(Mux(in_v, qz.x.ready, 1))
        fire = wire(m, self.x.valid & self.x.ready & taking, "ap_fire")
        with m.If(fire):
            for j in range(NC):
                with m.If(wi == j):
                    m.d.sync += [kbuf[j][i].eq(xr[i]) for i in range(L)]
            m.d.sync += wi.eq(Mux(wi == 2 * NC - 1, 0, wi + 1))
            with m.If(wi == 2 * NC - 1):
                m.d.sync += t_in.eq(t_in + 1)
        with m.If(r["accept"]):
            m.d.sync += [wi.eq(0), t_in.eq(0)]
        # ---- one token's cache rows captured from the quantizer's cache beats
        rows = {}
        for n in ("k", "v"):
            rows[f"{n}4"] = [Signal(4, name=f"cap_{n}4_{e}") for e in range(D)]
            rows[f"{n}8"] = [Signal(8, name=f"cap_{n}8_{e}") for e in range(D)]
            rows[f"{n}s"] = Signal(k.scale_bits, name=f"cap_{n}s")
            rows[f"{n}z"] = Signal(4, name=f"cap_{n}z")
            rows[f"{n}z8"] = Signal(8, name=f"cap_{n}z8")
        full = Signal(name="cap_full")
        cj = Signal(range(NC), name="cap_j")
        m.d.comb += qz.y.ready.eq(on & ~full)
        with m.If(qz.y.valid & qz.y.ready):
            for n in ("k", "v"):
                beat = qz.y.payload[n]
                for j in range(NC):
                    with m.If(cj == j):
                        m.d.sync += [rows[f"{n}4"][j * L + i].eq(beat.codes[i]) for i in range(L)]
                        m.d.sync += [rows[f"{n}8"][j * L + i].eq(beat.codes8[i])
                                     for i in range(L)]
                m.d.sync += [rows[f"{n}s"].eq(beat.scale), rows[f"{n}z"].eq(beat.zero),
                             rows[f"{n}z8"].eq(beat.zero8)]
            m.d.sync += cj.eq(Mux(cj == NC - 1, 0, cj + 1))
            with m.If(cj == NC - 1):
                m.d.sync += full.eq(1)
        with m.If(r["accept"]):
            m.d.sync += [cj.eq(0), full.eq(0)]
        # ---- plane writes of the captured token: per plane a range, then its beats
        value = {"k4": Cat(*rows["k4"]), "v4": Cat(*rows["v4"]), "ks": rows["ks"],
                 "vs": rows["vs"], "kz": rows["kz"], "vz": rows["vz"],
                 "k8": Cat(*rows["k8"]), "v8": Cat(*rows["v8"]), "kz8": rows["kz8"],
                 "vz8": rows["vz8"]}
        pls = planes(c)
        pi = Signal(range(len(pls)), name="wr_plane")
        wb = Signal(range(max(2, D // BB)), name="wr_beat")
        in_data = Signal(name="wr_in_data")
        t_out = Signal(range(c.max_tokens + 1), name="ap_t_out")
        tok = wire(m, r["pos"] + t_out, "ap_tok")
        addrs, beats, datas, strbs = [], [], [], []
        for name, per in pls:
            a = r["addr"] + r["off"][name] + tok * per
            v = Cat(value[name], Const(0, 8 * per - len(value[name])))
            if per >= BB:
                addrs.append(a)
                beats.append(per // BB)
                datas.append(select(wb, _slices(v, 8 * BB, per // BB))
                             if per > BB else v)
                strbs.append(Const((1 << BB) - 1, BB))
            else:
                sub = a[exact_log2(per):lbb]      # the row's slot in its beat
                addrs.append(Cat(Const(0, lbb), a[lbb:]))
                beats.append(1)
                n = BB // per
                datas.append(select(sub, [Cat(Const(0, 8 * per * i), v) if i else v
                                          for i in range(n)]))
                strbs.append(select(sub, [Const(((1 << per) - 1) << (per * i), BB)
                                          for i in range(n)]))
        last_beat = wire(m, wb == select(pi, [b - 1 for b in beats]), "wr_last_beat")
        last_plane = pi == len(pls) - 1
        m.d.comb += [self.wr_req.valid.eq(on & full & ~in_data),
                     self.wr_req.payload.addr.eq(select(pi, addrs)),
                     self.wr_req.payload.beats.eq(select(pi, beats)),
                     self.wr_data.valid.eq(on & full & in_data),
                     self.wr_data.payload.data.eq(select(pi, datas)),
                     self.wr_data.payload.strb.eq(select(pi, strbs))]
        with m.If(self.wr_req.valid & self.wr_req.ready):
            m.d.sync += [in_data.eq(1), wb.eq(0)]
        with m.If(self.wr_data.valid & self.wr_data.ready):
            m.d.sync += wb.eq(wb + 1)
            with m.If(last_beat):
                m.d.sync += [in_data.eq(0), pi.eq(Mux(last_plane, 0, pi + 1))]
                with m.If(last_plane):
                    m.d.sync += [full.eq(0), t_out.eq(t_out + 1)]
                    with m.If(t_out + 1 == r["tokens"]):
                        m.d.comb += r["done"].eq(1)
        with m.If(r["accept"]):
            m.d.sync += [pi.eq(0), in_data.eq(0), t_out.eq(0)]

    # ------------------------------------------------------------------ ATTEND
    def _attend(self, m, r):
        c = self.config
        k = c.kv4
        fsm = r["fsm"]
        on = fsm.is_("ATTEND")
        mems, load = self._load(m, r, on)
        front = self._front(m, r, on, load)
        self._decode(m, r, on, mems, front)

    def _load(self, m, r, on):
        """Read ranges of the planes, their beats into the plane memories, the cache
        value checks."""
        c = self.config
        k = c.kv4
        BB, D = c.beat_bytes, k.head_dim
        lbb = exact_log2(BB)
        pls = planes(c)
        depths = _depths(c)
        n = wire(m, r["pos"] + r["tokens"], "ld_tokens")
        b8 = wire(m, Mux(r["pos"] + 1 > k.recent, r["pos"] + 1 - k.recent, 0), "ld_b8")
        starts, counts = [], []
        for name, per in pls:
            end = wire(m, (n * per + (BB - 1)) >> lbb, f"ld_end_{name}")
            if name in ("k8", "v8", "kz8", "vz8"):
                first = wire(m, (b8 * per) >> lbb, f"ld_first_{name}")
            else:
                first = Const(0, 1)
            starts.append(first)
            counts.append(wire(m, end - first, f"ld_beats_{name}"))
        # requests
        ri = Signal(range(len(pls) + 1), name="ld_req_i")
        m.d.comb += [self.rd_req.valid.eq(on & (ri < len(pls))),
                     self.rd_req.payload.addr.eq(select(ri, [
                         r["addr"] + r["off"][name] + (s << lbb)
                         for (name, _), s in zip(pls, starts)])),
                     self.rd_req.payload.beats.eq(select(ri, counts))]
        with m.If(self.rd_req.valid & self.rd_req.ready):
            m.d.sync += ri.eq(ri + 1)
        # beats into the memories
        di = Signal(range(len(pls) + 1), name="ld_plane")
        bi = Signal(max(len(x) for x in counts), name="ld_beat")
        loaded = wire(m, di == len(pls), "ld_done")
        m.d.comb += self.rd_data.ready.eq(on & ~loaded)
        got = wire(m, self.rd_data.valid & self.rd_data.ready, "ld_got")
        last = wire(m, bi + 1 == select(di, counts), "ld_last")
        with m.If(got):
            m.d.sync += bi.eq(Mux(last, 0, bi + 1))
            with m.If(last):
                m.d.sync += di.eq(di + 1)
        mems = {}
        beat = self.rd_data.payload
        for p_i, (name, per) in enumerate(pls):
            mem = memory.Memory(shape=unsigned(8 * BB), depth=depths[name], init=[])
            m.submodules[f"pl_{name}"] = mem
            wp = mem.write_port()
            aw = ceil_log2(depths[name])
            m.d.comb += [wp.addr.eq((starts[p_i] + bi)[:aw]), wp.data.eq(beat),
                         wp.en.eq(got & (di == p_i))]
            mems[name] = mem.read_port()
        # golden refuses a cache whose scales or 4-bit zeros exceed their widths
        bad = Signal(name="ld_bad")
        checks = []
        for p_i, (name, per) in enumerate(pls):
            if name in ("ks", "vs"):
                tok0 = bi << (lbb - 2)
                for e, v in enumerate(_slices(beat, 32, BB // 4)):
                    checks.append((di == p_i) & (tok0 + e < n) & (v >> k.scale_bits).any())
            elif name in ("kz", "vz"):
                tok0 = bi << lbb
                for e, v in enumerate(_slices(beat, 8, BB)):
                    checks.append((di == p_i) & (tok0 + e < n) & (v > KV_LEVELS))
        with m.If(got & Cat(*checks).any()):
            m.d.sync += bad.eq(1)
        with m.If(r["accept"]):
            m.d.sync += [ri.eq(0), di.eq(0), bi.eq(0), bad.eq(0)]
        return mems, {"loaded": loaded, "bad": bad}

    def _front(self, m, r, on, load):
        """Query words in, quant_a8's (mn, L, RC) and the logit multiplier (C, lsh) per
        head, the decoder cmd, the INT8 query beats."""
        c = self.config
        k = c.kv4
        H, L, NC = k.heads, k.lanes, k.chunks
        dec = self.dec
        qmem = memory.Memory(shape=unsigned(32 * L), depth=max(2, H * NC), init=[])
        m.submodules.qmem = qmem
        qw, qr = qmem.write_port(), qmem.read_port()
        st = FSM(m, ("IN", "SCALE", "DIV", "CL", "CMD", "QOUT", "END"), "q_state")
        f = {"st": st}
        tq = Signal(range(c.max_tokens + 1), name="q_t")        # query of the block
        wq = Signal(range(max(2, H * NC)), name="q_word")
        hq = Signal(range(max(2, H)), name="q_head")
        jq = Signal(range(max(2, NC)), name="q_chunk")
        amax = [Signal(32, name=f"amax{h}") for h in range(H)]
        mn = [Signal(MANT_BITS, name=f"mn{h}") for h in range(H)]
        Lx = [Signal(signed(7), name=f"ts_L{h}") for h in range(H)]
        rem = [Signal(34, name=f"rc_rem{h}") for h in range(H)]
        dsh = [Signal(34, name=f"rc_dsh{h}") for h in range(H)]
        rc = [Signal(RCP_BITS - MANT_BITS + 2, name=f"rc{h}") for h in range(H)]
        m127 = [Signal(RCP_BITS - MANT_BITS + 2 + 7, name=f"rc127_{h}") for h in range(H)]
        Cs = [Signal(C_BITS, name=f"C{h}") for h in range(H)]
        lshs = [Signal(LSH_BITS, name=f"lsh{h}") for h in range(H)]
        step = Signal(range(RCP_BITS - MANT_BITS + 2), name="rc_step")
        heads = r["heads"]
        f["abort"] = Signal(name="q_abort")
        f["issued"] = Signal(range(c.max_tokens + 1), name="q_issued")
        # ---- IN: the query words of token tq, per-head max|x|
        x = self.x.payload
        with m.If(on & st.is_("IN")):
            m.d.comb += self.x.ready.eq(1)
        fire = wire(m, on & st.is_("IN") & self.x.valid, "q_fire")
        wmax = tree(m, [_abs32(m, x[i], f"qabs{i}") for i in range(L)],
                    lambda a, b: Mux(a > b, a, b), "qwmax")
        m.d.comb += [qw.addr.eq(wq), qw.data.eq(x.as_value()), qw.en.eq(fire)]
        with m.If(fire):
            for h in range(H):
                with m.If(hq == h):
                    m.d.sync += amax[h].eq(Mux(is_const(jq, 0) | (wmax > amax[h]), wmax,
                                               amax[h]))
            last_w = wq == heads * NC - 1
            m.d.sync += [wq.eq(Mux(last_w, 0, wq + 1)),
                         jq.eq(Mux(jq == NC - 1, 0, jq + 1))]
            with m.If(jq == NC - 1):
                m.d.sync += hq.eq(hq + 1)
            with m.If(last_w):
                m.d.sync += hq.eq(0)
                st.next("SCALE")
        # ---- SCALE: (mn, L) = golden.sfu.token_scale per head; heads past `heads` zero
        with st.state("SCALE"):
            for h in range(H):
                a = Mux(h < heads, amax[h], 0)
                a = wire(m, a, f"ts_a{h}")
                bl = bit_length(m, a, f"ts_bl{h}")
                up = wire(m, bl >= MANT_BITS, f"ts_up{h}")
                mv = Mux(up, a >> (bl - MANT_BITS)[:5], (a << (MANT_BITS - bl)[:5])[:MANT_BITS])
                m.d.sync += [mn[h].eq(mv[:MANT_BITS]),
                             Lx[h].eq(Mux(is_const(a, 0), 0, bl - MANT_BITS)),
                             rem[h].eq(1 << RCP_BITS), dsh[h].eq(mv[:MANT_BITS] << 16), rc[h].eq(0)]
            m.d.sync += step.eq(0)
            st.next("DIV")
        # ---- DIV: RC = floor(2**31 / mn), 17 quotient bits (RC in (2**15, 2**16])
        nq = RCP_BITS - MANT_BITS + 2
        with st.state("DIV"):
            for h in range(H):
                ge = wire(m, rem[h] >= dsh[h], f"rc_ge{h}")
                m.d.sync += [rem[h].eq(Mux(ge, rem[h] - dsh[h], rem[h])), dsh[h].eq(dsh[h] >> 1),
                             rc[h].eq(Cat(ge, rc[h]))]
            m.d.sync += step.eq(step + 1)
            with m.If(step == nq - 1):
                st.next("CL")
        # ---- CL: golden.kv4_attention.logit_multiplier_fixed per head
        KM, KE0 = logit_constant(k)
        lsh_max = (1 << LSH_BITS) - 1
        zero_lsh = max(k.logit_frac, k.min_lsh)
        KE = wire(m, KE0 + r["in_frac"] + r["frac_k"], "cl_KE")
        low_any = []
        with st.state("CL"):
            for h in range(H):
                P = wire(m, mn[h] * KM, f"cl_P{h}")
                blP = bit_length(m, P, f"cl_blP{h}")
                t0 = wire(m, Mux(blP > C_BITS, blP - C_BITS, 0)[:6], f"cl_t0_{h}")
                # RHU(P, t0) reaching 2**C_BITS takes one more shift
                up = wire(m, rshift_round(m, P, t0, f"cl_r0_{h}")[C_BITS:].any(), f"cl_up{h}")
                t1 = wire(m, t0 + up, f"cl_t1_{h}")
                l0 = wire(m, KE - Lx[h] - t1, f"cl_l0_{h}")
                exc = wire(m, Mux(l0 > lsh_max, l0 - lsh_max, 0), f"cl_exc{h}")
                t2w = wire(m, t1 + exc, f"cl_t2w{h}")
                t2 = wire(m, Mux(t2w > 62, 62, t2w)[:6], f"cl_t2_{h}")
                Cv = Signal(C_BITS, name=f"cl_Cv{h}")     # < 2**C_BITS (t2 >= t1)
                m.d.comb += Cv.eq(rshift_round(m, P, t2, f"cl_C{h}"))
                lsh = wire(m, Mux(l0 > lsh_max, lsh_max, l0), f"cl_lsh{h}")
                zero = is_const(mn[h], 0)
                low_any.append(~zero & (lsh < k.min_lsh))
                m.d.sync += [Cs[h].eq(Mux(zero, 0, Cv)),
                             lshs[h].eq(Mux(zero, zero_lsh, lsh[:LSH_BITS])),
                             rc[h].eq(Mux(zero, 0, rc[h])),
                             m127[h].eq(Mux(zero, 0, rc[h] * _QMAX))]
            with m.If(Cat(*low_any).any()):
                m.d.sync += [f["abort"].eq(1), self.error.eq(1)]
                st.next("END")
            with m.Else():
                st.next("CMD")
        # ---- CMD: the decoder cmd once the cache is in and the decoder is idle
        with st.state("CMD"):
            with m.If(load["loaded"] & load["bad"]):
                m.d.sync += [f["abort"].eq(1), self.error.eq(1)]
                st.next("END")
            with m.Elif(load["loaded"]):
                m.d.comb += dec.cmd.valid.eq(1)
                with m.If(dec.cmd.ready):
                    m.d.sync += f["issued"].eq(f["issued"] + 1)
                    st.next("QOUT")
        Tq = Signal(k.t_bits + 1, name="q_Tq")     # <= ctx <= max_t
        m.d.comb += Tq.eq(r["pos"] + tq + 1)
        m.d.comb += dec.cmd.payload.t.eq(Tq)
        for h in range(H):
            m.d.comb += [dec.cmd.payload.c[h].eq(Cs[h]), dec.cmd.payload.lsh[h].eq(lshs[h])]
        f["start"] = wire(m, st.is_("CMD") & dec.cmd.valid & dec.cmd.ready, "q_start")
        f["Tq"] = Signal(k.t_bits + 1, name="q_Tq_held")
        with m.If(f["start"]):
            m.d.sync += f["Tq"].eq(Tq)
        # ---- QOUT: INT8 query beats from the query memory (read one cycle ahead)
        ob = Signal(range(H * NC + 1), name="qo_beat")
        ov = Signal(name="qo_valid")
        oh = Signal(range(max(2, H)), name="qo_head")
        adv = wire(m, ~ov | dec.query.ready, "qo_adv")
        more = wire(m, st.is_("QOUT") & (ob < H * NC), "qo_more")
        m.d.comb += [qr.addr.eq(ob), qr.en.eq(adv)]
        with m.If(f["start"]):
            m.d.sync += [ob.eq(0), ov.eq(0)]
        with m.Elif(adv):
            m.d.sync += [ov.eq(more), oh.eq(ob >> exact_log2(NC) if NC > 1 else ob)]
            with m.If(more):
                m.d.sync += ob.eq(ob + 1)
        m127_o = wire(m, select(oh, m127), "qo_m")
        sh_o = wire(m, (RCP_BITS + select(oh, Lx))[:6], "qo_sh")
        used = wire(m, oh < heads, "qo_used")
        m.d.comb += dec.query.valid.eq(ov)
        for i in range(L):
            xv = qr.data[32 * i:32 * (i + 1)].as_signed()
            prod = wire(m, xv * m127_o, f"qo_p{i}")
            a = wire(m, rshift_round(m, prod, sh_o, f"qo_r{i}"), f"qo_a{i}")
            q8 = Mux(a > _QMAX, _QMAX, Mux(a < -_QMAX, -_QMAX, a))
            m.d.comb += dec.query.payload[i].eq(Mux(used, q8, 0))
        with st.state("QOUT"):
            with m.If((ob == H * NC) & ov & dec.query.ready | (ob == H * NC) & ~ov):
                m.d.sync += tq.eq(tq + 1)
                with m.If(tq + 1 == r["tokens"]):
                    st.next("END")
                with m.Else():
                    st.next("IN")
        with m.If(r["accept"]):
            m.d.sync += [tq.eq(0), wq.eq(0), hq.eq(0), jq.eq(0), f["abort"].eq(0),
                         f["issued"].eq(0)]
            st.next("IN")
        f["end"] = st.is_("END")
        return f

    def _decode(self, m, r, on, mems, f):
        """The K and V feeders, the decoder's out beats -> requant -> y."""
        c = self.config
        k = c.kv4
        H, L, NC = k.heads, k.lanes, k.chunks
        dec = self.dec
        Tq = f["Tq"]
        n4 = wire(m, Mux(Tq > k.recent, Tq - k.recent, 0), "fd_n4")
        for side in ("k", "v"):
            sel = {"c4": mems[f"{side}4"], "s": mems[f"{side}s"], "z": mems[f"{side}z"]}
            if k.recent:
                sel.update(c8=mems[f"{side}8"], z8=mems[f"{side}z8"])
            _Feeder(self, m, side, sel, getattr(dec, side), Tq, n4, f["start"])
        # out beats: a used head's go to y, requantized; the others are dropped
        ob = Signal(range(max(2, H * NC)), name="yo_beat")
        done_q = Signal(range(c.max_tokens + 1), name="yo_queries")
        oh = wire(m, ob >> exact_log2(NC) if NC > 1 else ob, "yo_head")
        used = wire(m, oh < r["heads"], "yo_used")
        s = wire(m, r["frac_v"] + k.out_frac - r["out_frac"], "yo_shift")
        for i in range(L):
            m.d.comb += self.y.payload[i].eq(
                _shift_sat(m, dec.out.payload[i], s, X_BITS, f"yo{i}"))
        m.d.comb += [self.y.valid.eq(dec.out.valid & used),
                     dec.out.ready.eq(Mux(used, self.y.ready, 1))]
        q_end = wire(m, dec.out.valid & dec.out.ready & (ob == H * NC - 1), "yo_q_end")
        with m.If(dec.out.valid & dec.out.ready):
            m.d.sync += ob.eq(Mux(ob == H * NC - 1, 0, ob + 1))
        with m.If(q_end):
            m.d.sync += done_q.eq(done_q + 1)
        with m.If(r["accept"]):
            m.d.sync += [ob.eq(0), done_q.eq(0)]
        # the instruction ends with its last query's last out beat (or, after a refused
        # query, once the queries already issued are out)
        outs = Mux(q_end, done_q + 1, done_q)
        with m.If(on & f["end"] & (outs == f["issued"]) & ~r["go"]):
            m.d.comb += r["done"].eq(1)
