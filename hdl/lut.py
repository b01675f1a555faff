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

from types import SimpleNamespace

from amaranth.hdl import Cat, EnableInserter, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACC_BITS, ACT_BITS, ACT_MIN, ACT_MAX

from golden.lut_config import (LUT_K_CHUNK, LUT_MAX_PLANES, LUT_PLANE_BITS,
                               LUT_STORED_ENTRIES, LUTConfig, LUTMode)

from .dq_lane import SCALE_PAIR, DQLane, DQLaneGeometry
from .rtl import count_width, is_const, select, wire

__all__ = ["PIPELINE_LATENCY", "TABLE_FILL_CYCLES", "LUTBlock", "cycle_model", "latency",
           "precompute_share", "dq_lanes_per_unit", "dq_units", "dq_lane_geometry",
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

#: Per-beat flags that travel down the pipeline with the code beat (S1..S3).
_FLAGS = ("top_plane", "last_plane", "new_chunk", "first_cg", "last_cg", "first_group",
          "last_group", "last_slice")


def _check_config(config) -> LUTConfig:
    if not isinstance(config, LUTConfig):
        raise TypeError(f"expected a golden.lut_config.LUTConfig, got {type(config).__name__}")
    return config


# ---------------------------------------------------------------------------
# Layouts and shapes derived from the configuration
# ---------------------------------------------------------------------------
def act_layout(config: LUTConfig) -> data.ArrayLayout:
    """Layout of an act beat: 4 INT8 activations (one k chunk) per row."""
    return data.ArrayLayout(signed(ACT_BITS), LUT_K_CHUNK * config.rows)


def code_layout(config: LUTConfig) -> data.ArrayLayout:
    """Layout of a code beat: one 4-bit table index per lane."""
    return data.ArrayLayout(unsigned(LUT_K_CHUNK), config.lanes)


def scale_layout(config: LUTConfig) -> data.ArrayLayout:
    """Layout of a scale beat: one (s2, z) pair per lane."""
    return data.ArrayLayout(SCALE_PAIR, config.lanes)


def result_layout(config: LUTConfig) -> data.ArrayLayout:
    """Layout of a result beat: one int32 accumulator per row and lane."""
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
    """Shape of a group's activation sum: any sum of `group` INT8 values."""
    g = config.group
    return Shape.cast(range(ACT_MIN * g, ACT_MAX * g + 1))


def group_sum_shape(config: LUTConfig) -> Shape:
    """P = sum over a group of a * q (as MixPE's)."""
    g = config.group
    return Shape.cast(range(ACT_MIN * _MAX_LEVELS * g, ACT_MAX * _MAX_LEVELS * g + 1))


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
    (the walk, and with it the latency, stays within `group` cycles, as
    MixPE's lanes do)."""
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


def dq_lane_geometry(config: LUTConfig) -> DQLaneGeometry:
    """What one DQ unit's lane walks per group: its cells (slice s, row r) x
    lane l in row-major order over a grid lk lanes wide, one group sum P and
    one activation sum A per cell (the block presents each as the lane reads it)."""
    config = _check_config(config)
    return DQLaneGeometry(cells=dq_lane_length(config), cols=dq_lanes_per_unit(config),
                          pg_shape=group_sum_shape(config), ag_shape=act_sum_shape(config))


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
def _table_entries(a) -> list:
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

    def elaborate(self, platform: object) -> Module:
        """Build the block: table builder, bit-plane lookups, group accumulation, dequantization."""
        m = Module()
        w = self._walker_state(m)         # declared first: `adv` needs it
        inp = self._input_side(m, w)
        s1 = self._s1_input_registers(m, w, inp)
        s2, table = self._s2_table(m, w, s1)
        s3, psum, a_run = self._s3_lookup(m, w, s2, table)
        hold = self._s4_rings(m, w, s3, psum)
        a_hold, la_hold = self._group_hold(m, w, s3, a_run)
        self._walk(m, w)
        self._dq_units(m, w, s3, hold, a_hold, la_hold)
        return m

    # ---- the dequantization walker (lockstep with the DQ lanes' E0 stage:
    # cell i of a lane, slice s = i // (rows*lk), is at E0 in cycle start+1+i) ----
    def _walker_state(self, m):
        """The walker's registers, `start` (a group's last Q' enters the
        holding rings, driven in S4), the scale-due flag and `adv`, the enable
        of every stage register."""
        cfg = self.config
        rl = cfg.rows * dq_lanes_per_unit(cfg)  # cells of one DQ lane per slice
        w = SimpleNamespace(rl=rl, valid=Signal(name="w_valid"),
                            s=Signal(count_width(cfg.slices - 1), name="w_s"),
                            rl_idx=Signal(count_width(rl - 1), name="w_rl"),
                            last_rl=Signal(name="w_last_rl"), start=Signal(name="start"),
                            scale_due=Signal(name="scale_due"), adv=Signal(name="adv"))
        m.d.comb += [
            w.last_rl.eq(is_const(w.rl_idx, rl - 1)),
            # the scale beat of the slice the walk enters next
            w.scale_due.eq(w.start | (w.valid & w.last_rl & ~is_const(w.s, cfg.slices - 1))),
            w.adv.eq((~self.result.valid | self.result.ready)
                     & (self.scale.valid | ~w.scale_due)),
            self.scale.ready.eq(w.adv & w.scale_due),
        ]
        return w

    def _walk(self, m, w):
        """The walker's step: (slice, row x lane) of the cell at E0."""
        cfg = self.config
        with m.If(w.adv):
            with m.If(w.start):
                m.d.sync += [w.valid.eq(1), w.s.eq(0), w.rl_idx.eq(0)]
            with m.Elif(w.valid):
                with m.If(w.last_rl):
                    m.d.sync += w.rl_idx.eq(0)
                    with m.If(is_const(w.s, cfg.slices - 1)):
                        m.d.sync += [w.valid.eq(0), w.s.eq(0)]
                    with m.Else():
                        m.d.sync += w.s.eq(w.s + 1)
                with m.Else():
                    m.d.sync += w.rl_idx.eq(w.rl_idx + 1)

    # ---- input side: run-time plane count and the loop counters ----
    def _input_side(self, m, w):
        cfg = self.config
        in_tile = Signal()
        b_reg = Signal(3)
        bits_ok = Signal()
        b_cur = Signal(3)
        i_reg = Signal(count_width(LUT_MAX_PLANES - 1))
        i_cur = Signal.like(i_reg)
        i_top = Signal.like(i_reg)  # planes - 1: the first (MSB) plane of a slice
        m.d.comb += [bits_ok.eq(Cat(*[self.bits == b for b in LUT_PLANE_BITS]).any()),
                     b_cur.eq(Mux(in_tile, b_reg, self.bits)),
                     i_top.eq(b_cur - 1), i_cur.eq(Mux(in_tile, i_reg, i_top))]
        s = Signal(count_width(cfg.slices - 1))
        cg = Signal(count_width(cfg.group_chunks - 1))
        j = Signal(count_width(cfg.groups - 1))
        f = SimpleNamespace(**{n: Signal(name=n) for n in _FLAGS + ("last_beat", "fire")},
                            b_cur=b_cur)
        m.d.comb += [
            f.top_plane.eq(i_cur == i_top),
            f.last_plane.eq(is_const(i_cur, 0)),
            f.new_chunk.eq(is_const(s, 0) & f.top_plane),
            f.first_cg.eq(is_const(cg, 0)),
            f.last_cg.eq(is_const(cg, cfg.group_chunks - 1)),
            f.first_group.eq(is_const(j, 0)),
            f.last_group.eq(is_const(j, cfg.groups - 1)),
            f.last_slice.eq(is_const(s, cfg.slices - 1)),
            f.last_beat.eq(f.last_plane & f.last_slice & f.last_cg & f.last_group),
            f.fire.eq(w.adv & (in_tile | bits_ok) & self.code.valid
                      & (self.act.valid | ~f.new_chunk)),
            self.code.ready.eq(f.fire),
            self.act.ready.eq(f.fire & f.new_chunk),
        ]
        # Ports are driven from internal registers (combinationally): Yosys'
        # ABC9 reintegration asserts on flip-flops that are top-level ports.
        error = Signal()
        m.d.comb += self.error.eq(error)
        with m.If((in_tile & (self.bits != b_reg))
                  | (~in_tile & self.code.valid & ~bits_ok)):
            m.d.sync += error.eq(1)
        with m.If(f.fire):
            m.d.sync += [in_tile.eq(~f.last_beat), b_reg.eq(b_cur)]
            with m.If(f.last_plane):
                m.d.sync += i_reg.eq(i_top)
                with m.If(f.last_slice):
                    m.d.sync += s.eq(0)
                    with m.If(f.last_cg):
                        m.d.sync += [cg.eq(0), j.eq(Mux(f.last_group, 0, j + 1))]
                    with m.Else():
                        m.d.sync += cg.eq(cg + 1)
                with m.Else():
                    m.d.sync += s.eq(s + 1)
            with m.Else():
                m.d.sync += i_reg.eq(i_cur - 1)
        return f

    @staticmethod
    def _stage(m, w, prev, name):
        """Stage `name`'s valid, code indices, flags and plane count: `prev`'s,
        one advance later."""
        st = SimpleNamespace(valid=Signal(name=f"v_{name}"), flags=Signal(len(_FLAGS),
                             name=f"flags_{name}"), bits=Signal(3, name=f"bits_{name}"))
        with m.If(w.adv):
            m.d.sync += [st.valid.eq(prev.valid), st.flags.eq(prev.flags),
                         st.bits.eq(prev.bits)]
        return st

    def _s1_input_registers(self, m, w, f):
        cfg = self.config
        s1 = SimpleNamespace(valid=Signal(name="v_s1"), idx=Signal(code_layout(cfg)),
                             act=Signal(act_layout(cfg)), flags=Signal(len(_FLAGS)),
                             bits=Signal(3))
        with m.If(w.adv):
            m.d.sync += s1.valid.eq(f.fire)
            with m.If(f.fire):
                m.d.sync += [s1.idx.eq(self.code.payload), s1.bits.eq(f.b_cur),
                             s1.flags.eq(Cat(*[getattr(f, n) for n in _FLAGS]))]
                with m.If(f.new_chunk):
                    m.d.sync += s1.act.eq(self.act.payload)
        return s1

    def _s2_table(self, m, w, s1):
        """S2: table build (the act register holds the current chunk until the
        next chunk's first beat, so copying every cycle is exact)."""
        cfg = self.config
        s2 = self._stage(m, w, s1, "s2")
        s2.idx = Signal(code_layout(cfg))
        table = [[Signal(entry_shape(), name=f"table_{r}_{e}") for e in range(LUT_STORED_ENTRIES)]
                 for r in range(cfg.rows)]
        with m.If(w.adv):
            m.d.sync += s2.idx.eq(s1.idx)
            for r in range(cfg.rows):
                ents = _table_entries([s1.act[LUT_K_CHUNK * r + t] for t in range(LUT_K_CHUNK)])
                m.d.sync += [table[r][e].eq(ents[e]) for e in range(LUT_STORED_ENTRIES)]
        return s2, table

    def _s3_lookup(self, m, w, s2, table):
        """S3: lookup through the symmetry, Horner over the planes. The
        negation of -E is folded into the Horner adder: -E = ~E + 1, and the
        +1 fills the free LSB of 2*psum (no separate negator). A_run sums the
        group's A = E[7] = a3 + a2 + a1 + a0 of each chunk."""
        cfg = self.config
        R, L = cfg.rows, cfg.lanes
        top, new, fcg = (s2.flags[_FLAGS.index(n)] for n in ("top_plane", "new_chunk",
                                                            "first_cg"))
        s3 = self._stage(m, w, s2, "s3")
        psum = [[Signal(psum_shape(), name=f"psum_{r}_{l}") for l in range(L)] for r in range(R)]
        a_run = [Signal(act_sum_shape(cfg), name=f"a_run_{r}") for r in range(R)]
        for l in range(L):
            ix = s2.idx[l]
            pos = ix[LUT_K_CHUNK - 1]
            sel = Signal(3, name=f"sel_{l}")
            m.d.comb += sel.eq(ix[:LUT_K_CHUNK - 1] ^ Mux(pos, 0, LUT_STORED_ENTRIES - 1))
            for r in range(R):
                ent = wire(m, select(sel, table[r]), f"ent_{r}_{l}")
                twice = Cat(~pos, Mux(top, 0, psum[r][l])).as_signed()  # 2*psum (+1)
                with m.If(w.adv & s2.valid):
                    m.d.sync += psum[r][l].eq(twice + Mux(pos, ent, ~ent))
        for r in range(R):
            with m.If(w.adv & s2.valid & new):
                m.d.sync += a_run[r].eq(Mux(fcg, 0, a_run[r]) + table[r][LUT_STORED_ENTRIES - 1])
        return s3, psum, a_run

    def _s4_rings(self, m, w, s3, psum):
        """S4: Q' of a group in a ring per (row, lane); in the group's last
        chunk the finished sums are also pushed into the holding ring (slice s
        at its head after the last push + s shifts). The walk reads the head
        and shifts it once per slice (shifting in don't-care values: the next
        group's pushes refill it), so both rings are plain SRL shift registers
        (no reset, no taps, no feedback mux). Returns the holding rings' heads."""
        cfg = self.config
        R, L, S = cfg.rows, cfg.lanes, cfg.slices
        last, fcg, lcg, ls = (s3.flags[_FLAGS.index(n)] for n in ("last_plane", "first_cg",
                                                                  "last_cg", "last_slice"))
        slice_done = Signal()
        hold_shift = Signal()
        m.d.comb += [slice_done.eq(w.adv & s3.valid & last),
                     w.start.eq(s3.valid & last & lcg & ls),
                     hold_shift.eq((slice_done & lcg) | (w.adv & w.valid & w.last_rl))]
        hold = [[None] * L for _ in range(R)]
        for r in range(R):
            for l in range(L):
                ring = [Signal(odd_sum_shape(cfg), name=f"qring_{r}_{l}_{k}", reset_less=True)
                        for k in range(S)]
                hring = [Signal(odd_sum_shape(cfg), name=f"qhold_{r}_{l}_{k}", reset_less=True)
                         for k in range(S)]
                qnew = Signal(odd_sum_shape(cfg), name=f"qnew_{r}_{l}")
                m.d.comb += qnew.eq(Mux(fcg, 0, ring[0]) + psum[r][l])
                with m.If(slice_done):
                    m.d.sync += [ring[k].eq(ring[k + 1]) for k in range(S - 1)]
                    m.d.sync += ring[S - 1].eq(qnew)
                with m.If(hold_shift):
                    m.d.sync += [hring[k].eq(hring[k + 1]) for k in range(S - 1)]
                    m.d.sync += hring[S - 1].eq(qnew)
                hold[r][l] = hring[0]
        return hold

    def _group_hold(self, m, w, s3, a_run):
        """A and L*A of the finished group, held for the walk (one per row)."""
        cfg = self.config
        a_hold = [Signal(act_sum_shape(cfg), name=f"a_hold_{r}") for r in range(cfg.rows)]
        la_hold = [Signal(odd_sum_shape(cfg), name=f"la_hold_{r}") for r in range(cfg.rows)]
        for r in range(cfg.rows):
            # L*A = (A << bits) - A; bits is one of LUT_PLANE_BITS (a tile
            # never starts with another), so index 0 is never selected.
            la = Signal(odd_sum_shape(cfg), name=f"la_sel_{r}")
            m.d.comb += la.eq(select(s3.bits, [(a_run[r] << b) - a_run[r]
                                               if b in LUT_PLANE_BITS else 0
                                               for b in range(LUT_MAX_PLANES + 1)]))
            with m.If(w.adv & w.start):
                m.d.sync += [a_hold[r].eq(a_run[r]), la_hold[r].eq(la)]
        return a_hold, la_hold

    def _dq_units(self, m, w, s3, hold, a_hold, la_hold):
        """The walk's E0: cell (s, r, l) reads its holding ring, forms
        P = (Q' + L*A) >> 1 (exact: the sum is even) and registers it for the
        unit's DQ lane (E1..E3), which writes the result register."""
        cfg = self.config
        R, L, S = cfg.rows, cfg.lanes, cfg.slices
        lk, rl = dq_lanes_per_unit(cfg), w.rl
        fg, lg = (s3.flags[_FLAGS.index(n)] for n in ("first_group", "last_group"))
        scale_reg = Signal(scale_layout(cfg))
        with m.If(w.adv & w.scale_due):
            m.d.sync += scale_reg.eq(self.scale.payload)
        w_r = Signal(count_width(R - 1))
        w_l = Signal(count_width(lk - 1))
        if lk & (lk - 1) == 0:
            m.d.comb += [w_l.eq(w.rl_idx[:count_width(lk - 1)] if lk > 1 else 0),
                         w_r.eq(w.rl_idx >> (lk.bit_length() - 1))]
        else:
            m.d.comb += [w_l.eq(w.rl_idx % lk), w_r.eq(w.rl_idx // lk)]
        la_cur = wire(m, select(w_r, la_hold), "la_cur")
        a_cur = wire(m, select(w_r, a_hold), "a_cur")

        out_valid = Signal()
        out = Signal(result_layout(cfg))
        m.d.comb += [self.result.valid.eq(out_valid), self.result.payload.eq(out)]
        with m.If(self.result.valid & self.result.ready):
            m.d.sync += out_valid.eq(0)
        geometry = dq_lane_geometry(cfg)
        for u in range(dq_units(cfg)):
            q_cur = wire(m, select(w.rl_idx, [hold[r][u * lk + l] for r in range(R)
                                              for l in range(lk)]), f"q_cur_{u}")
            pg = Signal(group_sum_shape(cfg), name=f"pg_{u}")
            ag = Signal(act_sum_shape(cfg), name=f"ag_{u}")
            with m.If(w.adv):
                m.d.sync += [pg.eq((q_cur + la_cur) >> 1), ag.eq(a_cur)]
            lane = DQLane(geometry)
            # The whole block freezes under back-pressure, the lane included.
            m.submodules[f"dq_{u}"] = EnableInserter(w.adv)(lane)
            m.d.comb += [lane.start.eq(w.start), lane.first_group.eq(fg),
                         lane.last_group.eq(lg)]
            # Every input is presented when the lane reads it (E0: the slice's
            # scales; E1: this cell's P and A), so its own selects see one value.
            m.d.comb += [lane.scale[l].eq(scale_reg[u * lk + l]) for l in range(lk)]
            m.d.comb += [lane.pg[i].eq(pg) for i in range(geometry.cells)]
            m.d.comb += [lane.ag[i].eq(ag) for i in range(geometry.rows)]
            for r in range(R):
                for l in range(lk):
                    en = Cat(*[lane.wr_en[sl * rl + r * lk + l] for sl in range(S)]).any()
                    with m.If(w.adv & en):
                        m.d.sync += out[r * L + u * lk + l].eq(lane.wr_data)
            if u == 0:
                done = Cat(*[lane.wr_en[sl * rl + rl - 1] for sl in range(S)]).any()
                with m.If(w.adv & done):
                    m.d.sync += out_valid.eq(1)
