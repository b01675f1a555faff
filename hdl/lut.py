"""LUT-based mpGEMM block (DESIGN §3.4; LUT Tensor Core arXiv 2408.06003,
T-MAC arXiv 2407.00088) in Amaranth 0.5.

For every chunk of 4 activations of a row the block builds the 8 stored
entries E[e] = a3 +-a2 +-a1 +-a0 of the symmetric table (T[~idx] = -T[idx]),
then reads the weights bit-serially: each code beat carries, for `lanes`
columns, the 4-bit index formed by plane i of 4 codes; the looked-up entry (or
its negation) is accumulated MSB plane first (Horner: psum = 2*psum + T[idx]),
so the shift by i needs no shifter. One table serves all `cols` columns of the
tile (the elongated tile): slices s = 0 .. cols/lanes - 1, each `planes`
beats. The plane count (1, 2 or 4: W1, W2, W4; ternary = 2) comes from the
`bits` port at each tile's first beat: run time, same RTL.

Per group the odd-code sum Q' = sum_i 2**i sum_c T_c[idx_i] becomes
P = (Q' + L*A) >> 1 (exact, L = 2**bits - 1, A = sum of the table's E[7]
entries) and is dequantized as MixPE's: acc += s2*P - zs2*A (int32, wraps).

Pipeline (x = the cycle a code beat is accepted; every stage register moves
only when `adv` = ~result.valid | result.ready, so back-pressure freezes the
whole pipeline and no skid buffer is needed):
  x+1  S1  idx, flags, act (on a chunk's first beat), scale (on a slice's
           first beat in a group's last chunk) registered
  x+2  S2  table E[0..7] per row built from the act register (adders)
  x+3  S3  psum = (top plane ? 0 : 2*psum) + (idx[3] ? E[sel] : -E[sel]);
           A_run = (group's first chunk ? 0 : A_run) + E[7] on a chunk's first beat
  x+4  S4  on a slice's last plane: Q ring (cols/lanes entries per row and
           lane) head <- (group's first chunk ? 0 : head) + psum
  x+5  S5  in a group's last chunk: P = (Q' + L*A) >> 1
  x+6  S6  s2*P, zs2*A (registered products: DSP48E2 M registers)
  x+7  S7  acc ring <- (first group ? 0 : head) + s2*P - zs2*A; in the last
           group also the result register (one beat: rows x lanes int32)
Cycle model: tiles * planes * K/4 * cols/lanes + LATENCY (7) cycles from the
first accepted beat to the last result transfer (ideal source and sink).
"""
from __future__ import annotations

from amaranth.hdl import Cat, EnableInserter, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS, ACT_MIN, ACT_MAX

from golden.mixpe_config import MixPEConfig
from golden.lut_config import (LUT_K_CHUNK, LUT_MAX_PLANES, LUT_PLANE_BITS,
                               LUT_STORED_ENTRIES, LUTConfig, LUTMode)

from .mixpe import _SCALE_PAIR, MixPEDQLane, _select, dq_lane_cells
from .rtl import count_width, is_const, tree_sum

__all__ = ["PIPELINE_LATENCY", "TABLE_FILL_CYCLES", "LUTBlock", "cycle_model", "latency",
           "precompute_share", "dq_lanes_per_unit", "dq_units", "dq_unit_config",
           "dq_lane_length",
           "act_layout", "code_layout", "scale_layout", "result_layout",
           "entry_shape", "psum_shape", "odd_sum_shape", "act_sum_shape", "group_sum_shape"]

#: Fixed part of the latency (cycles from the edge that accepts a tile's last
#: beat to its last result beat), less the dequantization walk over its cells:
#: S1..S3, the walker's E0 and the lane's E1..E3. `latency(config)` is the whole.
PIPELINE_LATENCY = 7
#: Cycles of table building not hidden behind lookups: the S2 stage of a run's
#: first chunk (every later table is built while the previous one is read).
TABLE_FILL_CYCLES = 1

_MAX_LEVELS = (1 << LUT_MAX_PLANES) - 1


def _check_config(config) -> LUTConfig:
    if not isinstance(config, LUTConfig):
        raise TypeError(f"expected a golden.lut_config.LUTConfig, got {type(config).__name__}")
    return config


# ---------------------------------------------------------------------------
# Layouts and shapes derived from the configuration
# ---------------------------------------------------------------------------
def act_layout(config: LUTConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(ACT_BITS), LUT_K_CHUNK * config.rows)


def code_layout(config: LUTConfig) -> data.ArrayLayout:
    return data.ArrayLayout(unsigned(LUT_K_CHUNK), config.lanes)


def scale_layout(config: LUTConfig) -> data.ArrayLayout:
    return data.ArrayLayout(_SCALE_PAIR, config.lanes)


def result_layout(config: LUTConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(ACC_BITS), config.rows * config.lanes)


def entry_shape() -> Shape:
    """A stored entry E[e] = a3 +-a2 +-a1 +-a0 (a3 always added): from
    4*(-128) (E[7], all -128) to 127 + 3*128 (E[0]), i.e. 10 bits, one fewer
    than a general sum of 4 signed int8 with signs (the lookup negates through
    the adder, so -E never needs its own width)."""
    return Shape.cast(range(LUT_K_CHUNK * ACT_MIN,
                            ACT_MAX - (LUT_K_CHUNK - 1) * ACT_MIN + 1))


def psum_shape() -> Shape:
    """One chunk's sum over up to 4 planes: |sum_i 2**i T| <= 15 * 512."""
    m = _MAX_LEVELS * LUT_K_CHUNK * -ACT_MIN
    return Shape.cast(range(-m, m + 1))


def odd_sum_shape(config: LUTConfig) -> Shape:
    """Q' = sum over a group of a * q'."""
    m = _MAX_LEVELS * config.group * -ACT_MIN
    return Shape.cast(range(-m, m + 1))


def act_sum_shape(config: LUTConfig) -> Shape:
    g = config.group
    return Shape.cast(range(ACT_MIN * g, ACT_MAX * g + 1))


def _la_shape(config: LUTConfig) -> Shape:
    m = _MAX_LEVELS * config.group * -ACT_MIN
    return Shape.cast(range(-m, m + 1))


def group_sum_shape(config: LUTConfig) -> Shape:
    """P = sum over a group of a * q (as MixPE's)."""
    g = config.group
    return Shape.cast(range(ACT_MIN * _MAX_LEVELS * g, ACT_MAX * _MAX_LEVELS * g + 1))


def _scaled_shape(operand: Shape) -> Shape:
    return signed(min(operand.width + SCALE_BITS, ACC_BITS))


# ---------------------------------------------------------------------------
# Cycle model
# ---------------------------------------------------------------------------
def _check_mode(mode) -> LUTMode:
    if not isinstance(mode, LUTMode):
        raise TypeError(f"expected a golden.lut_config.LUTMode, got {type(mode).__name__}")
    return mode


def dq_lanes_per_unit(config: LUTConfig) -> int:
    """Lookup lanes whose group sums one time-shared DQ unit dequantizes: the
    largest divisor lk of `lanes` with rows*lk <= group/4 - 1 (its walk over
    slices*rows*lk cells ends before the next group's first sum is pushed into
    the holding rings, at one plane per chunk) and slices*rows*lk <= group
    (MixPEDQLane serves at most `group` cells)."""
    config = _check_config(config)
    S, R, gc = config.slices, config.rows, config.group_chunks
    for lk in range(config.lanes, 0, -1):
        if config.lanes % lk == 0 and R * lk <= gc - 1 and S * R * lk <= config.group:
            return lk
    raise ValueError(f"rows={R} is too many for one dequantization walk per group of "
                     f"{config.group} (needs rows <= group/4 - 1 and slices*rows <= group); "
                     f"use fewer rows or a larger group")


def dq_units(config: LUTConfig) -> int:
    """Time-shared dequantization units (2 multipliers each): lanes / lk."""
    return config.lanes // dq_lanes_per_unit(config)


def dq_lane_length(config: LUTConfig) -> int:
    """Cells one DQ unit walks per group: slices * rows * lk (one per cycle)."""
    return config.slices * config.rows * dq_lanes_per_unit(config)


def dq_unit_config(config: LUTConfig) -> MixPEConfig:
    """The MixPEConfig a DQ unit is built from: its cells (slice s, row r) x
    lane l are MixPE's rows x cols, walked in row-major order; bits = 4 gives
    the group-sum shape of LUT_MAX_PLANES-bit codes (P of any LUT format)."""
    config = _check_config(config)
    return MixPEConfig(bits=LUT_MAX_PLANES, group=config.group,
                       rows=config.slices * config.rows, cols=dq_lanes_per_unit(config),
                       K=config.K)


def latency(config: LUTConfig) -> int:
    """Cycles from the edge that accepts a tile's last beat to its last result
    transfer: PIPELINE_LATENCY + dq_lane_length(config)."""
    return PIPELINE_LATENCY + dq_lane_length(config)


def cycle_model(config: LUTConfig, mode: LUTMode, tiles: int) -> int:
    """Cycles from the first accepted code beat to the last result transfer,
    both inclusive, with an always-valid source and an always-ready sink:
    tiles * planes * K/4 * ceil(cols/lanes) + latency(config) (tiles follow
    back to back; the table of the next chunk is built while the current one
    is read, and a group is dequantized while the next one is looked up)."""
    config = _check_config(config)
    mode = _check_mode(mode)
    if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
        raise ValueError(f"tiles must be an int >= 1, got {tiles!r}")
    return tiles * config.beats_per_tile(mode) + latency(config)


def precompute_share(config: LUTConfig, mode: LUTMode, tiles: int) -> float:
    """Share of cycles spent on table precompute that lookups do not hide."""
    return TABLE_FILL_CYCLES / cycle_model(config, mode, tiles)


# ---------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------
def _table_entries(m: Module, a) -> list:
    """E[e] = a3 + (e&4 ? a2 : -a2) + (e&2 ? a1 : -a1) + (e&1 ? a0 : -a0), from
    four shared pre-sums (12 adders per row instead of 24)."""
    a0, a1, a2, a3 = a
    up, um = a3 + a2, a3 - a2
    vp, vm = a1 + a0, a1 - a0
    out = []
    for e in range(LUT_STORED_ENTRIES):
        u = up if e & 4 else um
        if e & 2:
            out.append(u + (vp if e & 1 else vm))
        else:
            out.append(u - (vm if e & 1 else vp))
    return out


class LUTBlock(wiring.Component):
    """The LUT mpGEMM block (module docstring) with stream interfaces:

      act    : In(stream of ArrayLayout(signed(8), 4*rows))   one beat per chunk
               of 4 k, consumed with the chunk's first code beat
      code   : In(stream of ArrayLayout(unsigned(4), lanes))  one beat per
               (chunk, slice, plane from planes-1 down to 0)
      scale  : In(stream of ArrayLayout({s2, zs2}, lanes))    one beat per
               (group, slice), consumed with the slice's first code beat in
               the group's last chunk
      result : Out(stream of ArrayLayout(signed(32), rows*lanes)) one beat per
               slice, cols/lanes beats per tile
      bits   : In(3)   plane count 1, 2 or 4 (ternary: 2), sampled at a tile's
               first beat; other values are not accepted
      error  : Out(1)  sticky: `bits` changed inside a tile, or a tile was
               offered with bits outside {1, 2, 4}

    A beat fires when code, act (on a chunk's first beat) and scale (when
    due) are valid and the pipeline advances; all readys rise only then.
    """

    def __init__(self, config: LUTConfig):
        self.config = _check_config(config)
        dq_lanes_per_unit(config)  # refuses shapes one walk per group cannot serve
        super().__init__({
            "act": In(stream.Signature(act_layout(config))),
            "code": In(stream.Signature(code_layout(config))),
            "scale": In(stream.Signature(scale_layout(config))),
            "result": Out(stream.Signature(result_layout(config))),
            "bits": In(3),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        R, L, S = cfg.rows, cfg.lanes, cfg.slices
        lk, n_dq = dq_lanes_per_unit(cfg), cfg.lanes // dq_lanes_per_unit(cfg)
        rl = R * lk  # cells of one DQ lane per slice

        # ---- dequantization walker state (declared first: `adv` needs it) ----
        # The walker runs in lockstep with the DQ lanes' E0 stage: cell i of a
        # lane (slice s = i // rl, row r, lane l) is at E0 in cycle start+1+i.
        w_valid = Signal()
        w_s = Signal(count_width(S - 1))
        w_rl = Signal(count_width(rl - 1))
        w_last_rl = Signal()
        m.d.comb += w_last_rl.eq(is_const(w_rl, rl - 1))
        start = Signal()  # a group's last Q' enters the holding rings (S3 below)
        scale_due = Signal()  # the scale beat of the slice the walk enters next
        m.d.comb += scale_due.eq(start | (w_valid & w_last_rl & ~is_const(w_s, S - 1)))

        adv = Signal()
        m.d.comb += adv.eq((~self.result.valid | self.result.ready)
                           & (self.scale.valid | ~scale_due))

        # ---- input side: run-time plane count and the loop counters ----
        in_tile = Signal()
        b_reg = Signal(3)
        bits_ok = Signal()
        m.d.comb += bits_ok.eq(Cat(*[self.bits == b for b in LUT_PLANE_BITS]).any())
        b_cur = Signal(3)
        m.d.comb += b_cur.eq(Mux(in_tile, b_reg, self.bits))
        i_reg = Signal(count_width(LUT_MAX_PLANES - 1))
        i_cur = Signal.like(i_reg)
        i_top = Signal.like(i_reg)  # planes - 1: the first (MSB) plane of a slice
        m.d.comb += [i_top.eq(b_cur - 1), i_cur.eq(Mux(in_tile, i_reg, i_top))]
        s = Signal(count_width(S - 1))
        cg = Signal(count_width(cfg.group_chunks - 1))
        j = Signal(count_width(cfg.groups - 1))

        top, last_p, newchunk, fcg, lcg, fg, lg, last_s, last_beat = (
            Signal(name=n) for n in ("top_plane", "last_plane", "new_chunk", "first_cg",
                                     "last_cg", "first_group", "last_group", "last_slice",
                                     "last_beat"))
        m.d.comb += [
            top.eq(i_cur == i_top),
            last_p.eq(is_const(i_cur, 0)),
            newchunk.eq(is_const(s, 0) & top),
            fcg.eq(is_const(cg, 0)),
            lcg.eq(is_const(cg, cfg.group_chunks - 1)),
            fg.eq(is_const(j, 0)),
            lg.eq(is_const(j, cfg.groups - 1)),
            last_s.eq(is_const(s, S - 1)),
            last_beat.eq(last_p & last_s & lcg & lg),
        ]
        fire = Signal()
        m.d.comb += [
            fire.eq(adv & (in_tile | bits_ok) & self.code.valid
                    & (self.act.valid | ~newchunk)),
            self.code.ready.eq(fire),
            self.act.ready.eq(fire & newchunk),
            self.scale.ready.eq(adv & scale_due),
        ]
        # Ports are driven from internal registers (combinationally): Yosys'
        # ABC9 reintegration asserts on flip-flops that are top-level ports.
        error = Signal()
        m.d.comb += self.error.eq(error)
        with m.If((in_tile & (self.bits != b_reg))
                  | (~in_tile & self.code.valid & ~bits_ok)):
            m.d.sync += error.eq(1)
        with m.If(fire):
            m.d.sync += [in_tile.eq(~last_beat), b_reg.eq(b_cur)]
            with m.If(last_p):
                m.d.sync += i_reg.eq(i_top)
                with m.If(last_s):
                    m.d.sync += s.eq(0)
                    with m.If(lcg):
                        m.d.sync += [cg.eq(0), j.eq(Mux(lg, 0, j + 1))]
                    with m.Else():
                        m.d.sync += cg.eq(cg + 1)
                with m.Else():
                    m.d.sync += s.eq(s + 1)
            with m.Else():
                m.d.sync += i_reg.eq(i_cur - 1)

        # ---- S1: input registers ----
        NF = 8  # flags: top, last_p, newchunk, fcg, lcg, fg, lg, last_s
        v1 = Signal()
        idx1 = Signal(code_layout(cfg))
        act1 = Signal(act_layout(cfg))
        f1 = Signal(NF)
        b1 = Signal(3)
        with m.If(adv):
            m.d.sync += v1.eq(fire)
            with m.If(fire):
                m.d.sync += [idx1.eq(self.code.payload), b1.eq(b_cur),
                             f1.eq(Cat(top, last_p, newchunk, fcg, lcg, fg, lg, last_s))]
                with m.If(newchunk):
                    m.d.sync += act1.eq(self.act.payload)

        # ---- S2: table build (act1 holds the current chunk until the next
        # chunk's first beat, so copying every cycle is exact) ----
        v2 = Signal()
        idx2 = Signal(code_layout(cfg))
        f2 = Signal(NF)
        b2 = Signal(3)
        table = [[Signal(entry_shape(), name=f"table_{r}_{e}") for e in range(LUT_STORED_ENTRIES)]
                 for r in range(R)]
        with m.If(adv):
            m.d.sync += [v2.eq(v1), idx2.eq(idx1), f2.eq(f1), b2.eq(b1)]
            for r in range(R):
                ents = _table_entries(m, [act1[LUT_K_CHUNK * r + t] for t in range(LUT_K_CHUNK)])
                m.d.sync += [table[r][e].eq(ents[e]) for e in range(LUT_STORED_ENTRIES)]
        top2, new2, fcg2 = f2[0], f2[2], f2[3]

        # ---- S3: lookup through the symmetry, Horner over the planes. The
        # negation of -E is folded into the Horner adder: -E = ~E + 1, and the
        # +1 fills the free LSB of 2*psum (no separate negator) ----
        v3 = Signal()
        f3 = Signal(NF)
        b3 = Signal(3)
        psum = [[Signal(psum_shape(), name=f"psum_{r}_{l}") for l in range(L)] for r in range(R)]
        a_run = [Signal(act_sum_shape(cfg), name=f"a_run_{r}") for r in range(R)]
        with m.If(adv):
            m.d.sync += [v3.eq(v2), f3.eq(f2), b3.eq(b2)]
        for l in range(L):
            ix = idx2[l]
            pos = ix[LUT_K_CHUNK - 1]
            sel = Signal(3, name=f"sel_{l}")
            m.d.comb += sel.eq(ix[:LUT_K_CHUNK - 1] ^ Mux(pos, 0, LUT_STORED_ENTRIES - 1))
            for r in range(R):
                ent = _select(m, sel, table[r], entry_shape(), f"ent_{r}_{l}")
                twice = Cat(~pos, Mux(top2, 0, psum[r][l])).as_signed()  # 2*psum (+1)
                with m.If(adv & v2):
                    m.d.sync += psum[r][l].eq(twice + Mux(pos, ent, ~ent))
        for r in range(R):
            with m.If(adv & v2 & new2):
                m.d.sync += a_run[r].eq(Mux(fcg2, 0, a_run[r]) + table[r][LUT_STORED_ENTRIES - 1])
        last3, fcg3, lcg3, fg3, lg3, ls3 = f3[1], f3[3], f3[4], f3[5], f3[6], f3[7]

        # ---- S4: Q' of a group in a ring per (row, lane); in the group's last
        # chunk the finished sums are also pushed into the holding ring `hold`
        # (slice s at its head after the last push + s shifts). The DQ walk
        # reads the head and shifts it once per slice (shifting in don't-care
        # values: the next group's pushes refill it), so both rings are plain
        # SRL shift registers (no reset, no taps, no feedback mux). ----
        slice_done = Signal()
        hold_shift = Signal()
        m.d.comb += [slice_done.eq(adv & v3 & last3),
                     start.eq(v3 & last3 & lcg3 & ls3),
                     hold_shift.eq((slice_done & lcg3) | (adv & w_valid & w_last_rl))]
        hold = [[None] * L for _ in range(R)]
        for r in range(R):
            for l in range(L):
                ring = [Signal(odd_sum_shape(cfg), name=f"qring_{r}_{l}_{k}", reset_less=True)
                        for k in range(S)]
                hring = [Signal(odd_sum_shape(cfg), name=f"qhold_{r}_{l}_{k}", reset_less=True)
                         for k in range(S)]
                qnew = Signal(odd_sum_shape(cfg), name=f"qnew_{r}_{l}")
                m.d.comb += qnew.eq(Mux(fcg3, 0, ring[0]) + psum[r][l])
                with m.If(slice_done):
                    m.d.sync += [ring[k].eq(ring[k + 1]) for k in range(S - 1)]
                    m.d.sync += ring[S - 1].eq(qnew)
                with m.If(hold_shift):
                    m.d.sync += [hring[k].eq(hring[k + 1]) for k in range(S - 1)]
                    m.d.sync += hring[S - 1].eq(qnew)
                hold[r][l] = hring[0]

        # A and L*A of the finished group, held for the walk (one per row).
        a_hold = [Signal(act_sum_shape(cfg), name=f"a_hold_{r}") for r in range(R)]
        la_hold = [Signal(_la_shape(cfg), name=f"la_hold_{r}") for r in range(R)]
        with m.If(adv & start):
            for r in range(R):
                # L*A = (A << bits) - A; bits is one of LUT_PLANE_BITS
                la = _select(m, b3, [(a_run[r] << b) - a_run[r] if b in LUT_PLANE_BITS else 0
                                     for b in range(LUT_MAX_PLANES + 1)],
                             _la_shape(cfg), f"la_sel_{r}")
                m.d.sync += [a_hold[r].eq(a_run[r]), la_hold[r].eq(la)]

        # ---- the walk: E0 of cell (s, r, l) reads the holding ring, forms
        # P = (Q' + L*A) >> 1 (exact: the sum is even) and registers it for E1 ----
        scale_reg = Signal(scale_layout(cfg))
        with m.If(adv & scale_due):
            m.d.sync += scale_reg.eq(self.scale.payload)
        with m.If(adv):
            with m.If(start):
                m.d.sync += [w_valid.eq(1), w_s.eq(0), w_rl.eq(0)]
            with m.Elif(w_valid):
                with m.If(w_last_rl):
                    m.d.sync += w_rl.eq(0)
                    with m.If(is_const(w_s, S - 1)):
                        m.d.sync += [w_valid.eq(0), w_s.eq(0)]
                    with m.Else():
                        m.d.sync += w_s.eq(w_s + 1)
                with m.Else():
                    m.d.sync += w_rl.eq(w_rl + 1)
        w_r = Signal(count_width(R - 1))
        w_l = Signal(count_width(lk - 1))
        if lk & (lk - 1) == 0:
            m.d.comb += [w_l.eq(w_rl[:count_width(lk - 1)] if lk > 1 else 0),
                         w_r.eq(w_rl >> (lk.bit_length() - 1))]
        else:
            m.d.comb += [w_l.eq(w_rl % lk), w_r.eq(w_rl // lk)]
        la_cur = _select(m, w_r, la_hold, _la_shape(cfg), "la_cur")
        a_cur = _select(m, w_r, a_hold, act_sum_shape(cfg), "a_cur")

        out_valid = Signal()
        out = Signal(result_layout(cfg))
        m.d.comb += [self.result.valid.eq(out_valid), self.result.payload.eq(out)]
        with m.If(self.result.valid & self.result.ready):
            m.d.sync += out_valid.eq(0)
        fake = dq_unit_config(cfg)
        for u in range(n_dq):
            q_cur = _select(m, w_rl, [hold[r][u * lk + l] for r in range(R) for l in range(lk)],
                            odd_sum_shape(cfg), f"q_cur_{u}")
            pg = Signal(group_sum_shape(cfg), name=f"pg_{u}")
            ag = Signal(act_sum_shape(cfg), name=f"ag_{u}")
            with m.If(adv):
                m.d.sync += [pg.eq((q_cur + la_cur) >> 1), ag.eq(a_cur)]
            lane = MixPEDQLane(fake, cells=dq_lane_cells(fake)[0])
            # The whole block freezes under back-pressure, the lane included.
            m.submodules[f"dq_{u}"] = EnableInserter(adv)(lane)
            m.d.comb += [lane.start.eq(start), lane.first_group.eq(fg3),
                         lane.last_group.eq(lg3)]
            # Every input is presented when the lane reads it (E0: the slice's
            # scales; E1: this cell's P and A), so its own selects see one value.
            m.d.comb += [lane.scale[l].eq(scale_reg[u * lk + l]) for l in range(lk)]
            m.d.comb += [lane.pg[i].eq(pg) for i in range(len(lane.cells))]
            m.d.comb += [lane.ag[i].eq(ag) for i in range(len(lane.rows))]
            for r in range(R):
                for l in range(lk):
                    en = Cat(*[lane.wr_en[sl * rl + r * lk + l] for sl in range(S)]).any()
                    with m.If(adv & en):
                        m.d.sync += out[r * L + u * lk + l].eq(lane.wr_data)
            if u == 0:
                done = Cat(*[lane.wr_en[sl * rl + rl - 1] for sl in range(S)]).any()
                with m.If(adv & done):
                    m.d.sync += out_valid.eq(1)
        return m
