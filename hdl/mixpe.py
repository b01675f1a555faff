"""MixPE array (DESIGN §3.3, arXiv 2411.16158) in Amaranth 0.5.

acc[m, n] = sum_groups( s2[n] * P[m, n] - zs2[n] * A[m] )
  P = sum_{k in group} a[m, k] * q[n, k]   (shift-and-add, no multiplier)
  A = sum_{k in group} a[m, k]            (one per row, shared by its PEs)

The per-group dequantization (two multiplies and the int32 accumulation) is
time-shared: a PE only keeps the shift-and-add product, P and Pg (P latched at
the group's end); `config.dq_lanes` = ceil(rows*cols/group) DQ lanes each visit
their PEs one per cycle while the next group accumulates.

Pipeline (cycle c = the cycle a group's last input beat is accepted, i = the
PE's position in its lane, n = dq_lane_length(config)):
  c+1    S1  input registers: a[m], q[n], group/tile position flags;
             the group's scales move to `scale_dq`, the lanes start
  c+2    S2  pp[m][n] = sum_i q_i ? (a << i) : 0           (registered)
  c+3    S3  P/A hold the running sums; Pg/Ag hold the finished group
  c+2+i  E0  lane selects s2/zs2 of PE i's column          (registered)
  c+3+i  E1  lane registers Pg[i], Ag[row of i], s2, zs2   (DSP A/B regs)
  c+4+i  E2  mP = s2*Pg, mA = zs2*Ag                       (DSP M regs)
  c+5+i  E3  acc[i] = (first group ? 0 : acc[i]) + mP - mA (ring of int32);
             after a tile's last group also written into the output bank
result.valid rises at c + pipeline_latency(config) = c + PIPELINE_LATENCY + n.
Stage registers always advance (no internal stall); back-pressure only stops
inputs from being accepted. See docs/mixpe.md.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS, ACT_MIN, ACT_MAX

from golden.mixpe_config import MixPEConfig

from .streams import (SYSTEM_OVERHEAD, LoadPort, NestedAddressGenerator, PreloadedMemory,
                      RunControl)

from .rtl import count_width, is_const, tree_sum

__all__ = [
    "PIPELINE_LATENCY", "system_cycle_model", "MixPECell", "MixPEDQLane",
    "MixPE", "MixPESystem", "cycle_model", "pipeline_latency", "dq_lane_cells",
    "dq_lane_length", "act_layout", "code_layout", "scale_layout", "result_layout",
    "product_shape", "group_sum_shape", "act_sum_shape",
]

#: Fixed part of the latency: cycles from the clock edge that accepts a tile's
#: last input beat to its first valid result beat, *less* the DQ lane's serial
#: walk over its PEs (S1 + the lane's E0..E3 registers + the output bank, with
#: S2/S3 overlapping E0/E1). The whole latency is `pipeline_latency(config)`.
PIPELINE_LATENCY = 5


# ---------------------------------------------------------------------------
# Shapes derived from the configuration (never written down twice)
# ---------------------------------------------------------------------------


def _check_config(config) -> MixPEConfig:
    if not isinstance(config, MixPEConfig):
        raise TypeError(f"expected a golden.config.MixPEConfig, got {type(config).__name__}")
    return config


def act_layout(config: MixPEConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(ACT_BITS), config.rows)


def code_layout(config: MixPEConfig) -> data.ArrayLayout:
    return data.ArrayLayout(unsigned(config.bits), config.cols)


_SCALE_PAIR = data.StructLayout({"s2": unsigned(SCALE_BITS), "zs2": unsigned(SCALE_BITS)})


def scale_layout(config: MixPEConfig) -> data.ArrayLayout:
    return data.ArrayLayout(_SCALE_PAIR, config.cols)


def result_layout(config: MixPEConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(ACC_BITS), config.cols)


def product_shape(config: MixPEConfig) -> Shape:
    """a * q for one k: INT8 times a `bits`-bit unsigned code."""
    return Shape.cast(range(ACT_MIN * config.levels, ACT_MAX * config.levels + 1))


def group_sum_shape(config: MixPEConfig) -> Shape:
    """P: sum of `group` products."""
    g = config.group
    return Shape.cast(range(ACT_MIN * config.levels * g, ACT_MAX * config.levels * g + 1))


def act_sum_shape(config: MixPEConfig) -> Shape:
    """A: sum of `group` activations."""
    g = config.group
    return Shape.cast(range(ACT_MIN * g, ACT_MAX * g + 1))


def _scaled_shape(operand: Shape) -> Shape:
    """unsigned(SCALE_BITS) x operand, capped at the accumulator width (acc wraps
    mod 2**ACC_BITS, so bits above it never matter)."""
    width = min(operand.width + SCALE_BITS, ACC_BITS)
    return signed(width)


# ---------------------------------------------------------------------------
# DQ lanes: which PEs each lane serves (derived here only)
# ---------------------------------------------------------------------------
def dq_lane_cells(config: MixPEConfig) -> tuple[tuple[tuple[int, int], ...], ...]:
    """PEs (m, n) of each of the `config.dq_lanes` lanes, in visiting order.

    The rows*cols PEs, in row-major order, are cut into `dq_lanes` contiguous
    runs whose lengths differ by at most one (the longest first), so the
    longest run, `dq_lane_length(config)` <= group, sets the latency."""
    config = _check_config(config)
    total, lanes = config.rows * config.cols, config.dq_lanes
    base, extra = divmod(total, lanes)
    out, start = [], 0
    for lane in range(lanes):
        size = base + (1 if lane < extra else 0)
        out.append(tuple(divmod(i, config.cols) for i in range(start, start + size)))
        start += size
    return tuple(out)


def dq_lane_length(config: MixPEConfig) -> int:
    """PEs of the longest DQ lane: the cycles a lane needs per group."""
    config = _check_config(config)
    return -(-config.rows * config.cols // config.dq_lanes)


def pipeline_latency(config: MixPEConfig) -> int:
    """Cycles from the edge that accepts a tile's last beat to the cycle its
    first result beat is valid: PIPELINE_LATENCY + dq_lane_length(config)."""
    return PIPELINE_LATENCY + dq_lane_length(config)


def cycle_model(config: MixPEConfig, tiles: int) -> int:
    """Cycles from the first accepted input beat to the last result transfer,
    both ends inclusive, with an always-valid source and an always-ready sink.

    A tile's last beat may only be accepted once the previous tile's results
    have fully drained (one output register bank), so tiles are spaced by
    max(K, latency + rows) cycles, latency = pipeline_latency(config).
    """
    config = _check_config(config)
    if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
        raise ValueError(f"tiles must be an int >= 1, got {tiles!r}")
    latency = pipeline_latency(config)
    period = max(config.K, latency + config.rows)
    return config.K + (tiles - 1) * period + latency + config.rows - 1


def system_cycle_model(config: MixPEConfig, m_tiles: int, n_tiles: int) -> int:
    """Value of MixPESystem's `cycles` output after a run of m_tiles x n_tiles
    (hdl.streams.SYSTEM_OVERHEAD: the preloaded memories' start and first read)."""
    config = _check_config(config)
    return cycle_model(config, m_tiles * n_tiles) + SYSTEM_OVERHEAD


def _select(m: Module, index, values, shape, name: str):
    """values[index] as a mux (the last value also covers out-of-range indices)."""
    out = Signal(shape, name=name)
    if len(values) == 1:
        m.d.comb += out.eq(values[0])
        return out
    with m.Switch(index):
        for i, v in enumerate(values[:-1]):
            with m.Case(i):
                m.d.comb += out.eq(v)
        with m.Default():
            m.d.comb += out.eq(values[-1])
    return out


# ---------------------------------------------------------------------------
# One processing element
# ---------------------------------------------------------------------------
class MixPECell(wiring.Component):
    """One MixPE processing element for output (m, n): the multiplier-free part.

    Inputs are aligned to the stage that uses them; the array generates the
    strobes from one shared control pipeline (cycle t = the S1 cycle of a k):

      t    a, q            operands of one k (registered by the array)
      t+1  p_en, p_first,  pp holds a*q: P <= (p_first ? 0 : P) + pp;
           p_last          on the group's last k that sum also goes to Pg
      out  Pg              the last finished group sum, held until the next
                           group finishes (read by the PE's DQ lane)
    """

    def __init__(self, config: MixPEConfig):
        self.config = _check_config(config)
        super().__init__({
            "a": In(signed(ACT_BITS)),
            "q": In(unsigned(config.bits)),
            "p_en": In(1),
            "p_first": In(1),
            "p_last": In(1),
            "Pg": Out(group_sum_shape(config)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        # S2: shift-and-add product, one gated shifted copy of `a` per code bit.
        terms = [Mux(self.q[i], self.a << i, 0) for i in range(cfg.bits)]
        pp = Signal(product_shape(cfg))
        m.d.sync += pp.eq(tree_sum(terms))

        # S3: group partial sum; the finished sum is held in Pg so that the next
        # group starts accumulating in the next cycle.
        P = Signal(group_sum_shape(cfg))
        P_next = Signal(group_sum_shape(cfg))
        m.d.comb += P_next.eq(Mux(self.p_first, 0, P) + pp)
        with m.If(self.p_en):
            m.d.sync += P.eq(P_next)
            with m.If(self.p_last):
                m.d.sync += self.Pg.eq(P_next)
        return m


class _RowActSum(wiring.Component):
    """A[m]: the group sum of one row's activations, shared by the row's PEs;
    Ag holds the last finished group's sum (as Pg in MixPECell)."""

    def __init__(self, config: MixPEConfig):
        self.config = config
        super().__init__({
            "a": In(signed(ACT_BITS)),
            "p_en": In(1),
            "p_first": In(1),
            "p_last": In(1),
            "Ag": Out(act_sum_shape(config)),
        })

    def elaborate(self, platform):
        m = Module()
        a_d = Signal(signed(ACT_BITS))  # aligns `a` with the PEs' pp register
        m.d.sync += a_d.eq(self.a)
        A = Signal(act_sum_shape(self.config))
        A_next = Signal(act_sum_shape(self.config))
        m.d.comb += A_next.eq(Mux(self.p_first, 0, A) + a_d)
        with m.If(self.p_en):
            m.d.sync += A.eq(A_next)
            with m.If(self.p_last):
                m.d.sync += self.Ag.eq(A_next)
        return m


# ---------------------------------------------------------------------------
# One time-shared dequantization lane
# ---------------------------------------------------------------------------
class MixPEDQLane(wiring.Component):
    """Dequantizes and accumulates the group sums of a fixed run of PEs, one PE
    per cycle: acc[i] += s2[n_i] * Pg[i] - zs2[n_i] * Ag[m_i].

    `cells` is a run of PEs (m, n) consecutive in row-major order (as
    `dq_lane_cells` makes them), at most `group` long. The lane sees only the
    columns and rows its PEs use: `lane.cols` / `lane.rows` list them, and
    `scale[j]` / `ag[j]` carry column `lane.cols[j]` / row `lane.rows[j]`.

    Ports (cycle s = the `start` cycle; PE i is handled in E0..E3 at s+1+i ..
    s+4+i):
      start        In(1)   a group's sums arrive: Pg/Ag valid from s+2, scale
                           from s+1, each held for `group` cycles
      first_group, last_group  In(1), sampled at start
      scale        In      {s2, zs2} of the lane's columns (E0 reads them)
      pg           In      Pg of the lane's PEs, in `cells` order (E1)
      ag           In      Ag of the lane's rows (E1)
      wr_data      Out     acc of PE i in E3 (s+4+i)
      wr_en        Out     one bit per PE: write wr_data into that PE's output
                           register (E3 of a tile's last group)
      done         Out(1)  E3 of the lane's last PE in a tile's last group
    The int32 accumulators form a ring shift register (no reset, no taps, so it
    maps to SRL shift registers); the multiplies have registered operands and
    products, the DSP48E2 A/B -> M pipeline.
    """

    def __init__(self, config: MixPEConfig, *, cells):
        self.config = cfg = _check_config(config)
        cells = tuple((int(r), int(c)) for r, c in cells)
        if not 1 <= len(cells) <= cfg.group:
            raise ValueError(f"a DQ lane serves 1..group={cfg.group} PEs, got {len(cells)}")
        flat = [r * cfg.cols + c for r, c in cells]
        if (any(not (0 <= r < cfg.rows and 0 <= c < cfg.cols) for r, c in cells)
                or flat != list(range(flat[0], flat[0] + len(flat)))):
            raise ValueError("a DQ lane's cells must be consecutive PEs (m, n) of the array "
                             "in row-major order; use dq_lane_cells(config)")
        self.cells = cells
        self.cols = tuple(sorted({c for _, c in cells}))
        self.rows = tuple(sorted({r for r, _ in cells}))
        # Local column index: a counter mod len(cols) from col_start; it wraps
        # exactly where the row changes (the largest used column is cols-1
        # whenever the run wraps), checked here against the cell list.
        self._col_start = self.cols.index(cells[0][1])
        lc, lr = self._col_start, 0
        for r, c in cells:
            assert (self.cols[lc], self.rows[lr]) == (c, r), "lane walk does not match cells"
            lc, lr = (0, lr + 1) if lc == len(self.cols) - 1 else (lc + 1, lr)
        super().__init__({
            "start": In(1),
            "first_group": In(1),
            "last_group": In(1),
            "scale": In(data.ArrayLayout(_SCALE_PAIR, len(self.cols))),
            "pg": In(data.ArrayLayout(group_sum_shape(cfg), len(cells))),
            "ag": In(data.ArrayLayout(act_sum_shape(cfg), len(self.rows))),
            "wr_data": Out(signed(ACC_BITS)),
            "wr_en": Out(len(cells)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        n = len(self.cells)
        ncols, nrows = len(self.cols), len(self.rows)

        # E0: walk the PEs; select the column's scales.
        e0_valid = Signal()
        e0_idx = Signal(count_width(n - 1))
        e0_lc = Signal(count_width(ncols - 1))
        e0_lr = Signal(count_width(nrows - 1))
        # The group flags travel with the PE through E0..E3: the next group may
        # start while this one's last PEs are still in E1..E3.
        e0_fg, e0_lg = Signal(), Signal()
        with m.If(self.start):
            m.d.sync += [e0_valid.eq(1), e0_idx.eq(0), e0_lc.eq(self._col_start),
                         e0_lr.eq(0), e0_fg.eq(self.first_group), e0_lg.eq(self.last_group)]
        with m.Elif(e0_valid):
            m.d.sync += e0_idx.eq(e0_idx + 1)
            with m.If(is_const(e0_idx, n - 1)):
                m.d.sync += e0_valid.eq(0)
            with m.If(is_const(e0_lc, ncols - 1)):
                m.d.sync += [e0_lc.eq(0), e0_lr.eq(e0_lr + 1)]
            with m.Else():
                m.d.sync += e0_lc.eq(e0_lc + 1)
        s2_sel = _select(m, e0_lc, [self.scale[j].s2 for j in range(ncols)],
                         unsigned(SCALE_BITS), "s2_sel")
        zs2_sel = _select(m, e0_lc, [self.scale[j].zs2 for j in range(ncols)],
                          unsigned(SCALE_BITS), "zs2_sel")
        s2_r = Signal(unsigned(SCALE_BITS))
        zs2_r = Signal(unsigned(SCALE_BITS))
        e1_valid = Signal()
        e1_idx = Signal.like(e0_idx)
        e1_lr = Signal.like(e0_lr)
        e1_fg, e1_lg = Signal(), Signal()
        m.d.sync += [s2_r.eq(s2_sel), zs2_r.eq(zs2_sel),
                     e1_valid.eq(e0_valid), e1_idx.eq(e0_idx), e1_lr.eq(e0_lr),
                     e1_fg.eq(e0_fg), e1_lg.eq(e0_lg)]

        # E1: the PE's group sum and its row's activation sum (multiplier operands).
        pg_sel = _select(m, e1_idx, [self.pg[i] for i in range(n)], group_sum_shape(cfg),
                         "pg_sel")
        ag_sel = _select(m, e1_lr, [self.ag[j] for j in range(nrows)], act_sum_shape(cfg),
                         "ag_sel")
        op_p = Signal(group_sum_shape(cfg))
        op_a = Signal(act_sum_shape(cfg))
        op_s2 = Signal(unsigned(SCALE_BITS))
        op_zs2 = Signal(unsigned(SCALE_BITS))
        e2_valid = Signal()
        e2_idx = Signal.like(e0_idx)
        e2_fg, e2_lg = Signal(), Signal()
        m.d.sync += [op_p.eq(pg_sel), op_a.eq(ag_sel), op_s2.eq(s2_r), op_zs2.eq(zs2_r),
                     e2_valid.eq(e1_valid), e2_idx.eq(e1_idx), e2_fg.eq(e1_fg),
                     e2_lg.eq(e1_lg)]

        # E2: the two dequantization products (registered: DSP48E2 M registers).
        mP = Signal(_scaled_shape(group_sum_shape(cfg)))
        mA = Signal(_scaled_shape(act_sum_shape(cfg)))
        e3_valid = Signal()
        e3_idx = Signal.like(e0_idx)
        e3_fg, e3_lg = Signal(), Signal()
        m.d.sync += [mP.eq(op_s2 * op_p), mA.eq(op_zs2 * op_a),
                     e3_valid.eq(e2_valid), e3_idx.eq(e2_idx), e3_fg.eq(e2_fg),
                     e3_lg.eq(e2_lg)]

        # E3: int32 accumulation (wraps) through the ring of accumulators: the
        # head is PE i's sum because every group pushes exactly n values.
        ring = [Signal(signed(ACC_BITS), name=f"acc_{i}", reset_less=True) for i in range(n)]
        m.d.comb += self.wr_data.eq(Mux(e3_fg, 0, ring[0]) + mP - mA)
        with m.If(e3_valid):
            m.d.sync += [ring[i].eq(ring[i + 1]) for i in range(n - 1)]
            m.d.sync += ring[n - 1].eq(self.wr_data)
        for i in range(n):
            m.d.comb += self.wr_en[i].eq(e3_valid & e3_lg & is_const(e3_idx, i))
        m.d.comb += self.done.eq(self.wr_en[n - 1])
        return m


# ---------------------------------------------------------------------------
# The array
# ---------------------------------------------------------------------------
class MixPE(wiring.Component):
    """rows x cols MixPE array with stream interfaces (see the team contract):

      act    : In(stream of ArrayLayout(signed(8), rows))       one beat per k
      code   : In(stream of ArrayLayout(unsigned(bits), cols))  one beat per k
      scale  : In(stream of ArrayLayout({s2, zs2}, cols))       one beat per group,
               consumed with the group's first act/code beat
      result : Out(stream of ArrayLayout(signed(32), cols))     `rows` beats per tile

    An input beat fires when act, code (and scale on a group's first k) are all
    valid; all readys are asserted only in a firing cycle. A tile's last beat
    also waits until the previous tile's results have drained.
    """

    def __init__(self, config: MixPEConfig):
        self.config = _check_config(config)
        super().__init__({
            "act": In(stream.Signature(act_layout(config))),
            "code": In(stream.Signature(code_layout(config))),
            "scale": In(stream.Signature(scale_layout(config))),
            "result": Out(stream.Signature(result_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config

        # ---- input side: position counters and the fire condition ----
        k_in_group = Signal(count_width(cfg.group - 1))
        group_idx = Signal(count_width(cfg.groups - 1))
        first_k, last_k, first_group, last_group = (Signal(name=n) for n in
                                                    ("first_k", "last_k", "first_group", "last_group"))
        m.d.comb += [
            first_k.eq(is_const(k_in_group, 0)),
            last_k.eq(is_const(k_in_group, cfg.group - 1)),
            first_group.eq(is_const(group_idx, 0)),
            last_group.eq(is_const(group_idx, cfg.groups - 1)),
        ]

        claimed = Signal()   # output bank reserved by a tile whose last beat is in
        fire = Signal()
        m.d.comb += [
            fire.eq(self.act.valid & self.code.valid
                    & (self.scale.valid | ~first_k)
                    & ~(last_k & last_group & claimed)),
            self.act.ready.eq(fire),
            self.code.ready.eq(fire),
            self.scale.ready.eq(fire & first_k),
        ]
        with m.If(fire):
            with m.If(last_k):
                m.d.sync += [k_in_group.eq(0),
                             group_idx.eq(Mux(last_group, 0, group_idx + 1))]
            with m.Else():
                m.d.sync += k_in_group.eq(k_in_group + 1)

        # ---- S1: input registers and the control pipeline ----
        a1 = Signal(act_layout(cfg))
        q1 = Signal(code_layout(cfg))
        v1, first1, last1, fg1, lg1 = (Signal(name=f"{n}_s1") for n in
                                       ("valid", "first_k", "last_k", "first_group", "last_group"))
        m.d.sync += [v1.eq(fire), first1.eq(first_k), last1.eq(last_k),
                     fg1.eq(first_group), lg1.eq(last_group)]
        with m.If(fire):
            m.d.sync += [a1.eq(self.act.payload), q1.eq(self.code.payload)]
        # S2 (pp registered in the cells): P/A accumulate strobes.
        v2, first2, last2 = (Signal(name=f"{n}_s2") for n in ("valid", "first_k", "last_k"))
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1)]

        # Scales: `scale_in` holds the group being accumulated; in S1 of the
        # group's last beat (before the next group's first beat can overwrite
        # it) it moves to `scale_dq`, which the lanes read while they walk.
        scale_in = Signal(scale_layout(cfg))
        scale_dq = Signal(scale_layout(cfg))
        with m.If(fire & first_k):
            m.d.sync += scale_in.eq(self.scale.payload)
        dq_start = Signal()
        m.d.comb += dq_start.eq(v1 & last1)
        with m.If(dq_start):
            m.d.sync += scale_dq.eq(scale_in)

        # ---- datapath: one shared A per row, one multiplier-free cell per (m, n) ----
        row_sums = []
        for r in range(cfg.rows):
            rs = _RowActSum(cfg)
            m.submodules[f"asum_{r}"] = rs
            m.d.comb += [rs.a.eq(a1[r]), rs.p_en.eq(v2), rs.p_first.eq(first2),
                         rs.p_last.eq(last2)]
            row_sums.append(rs)

        cells = [[None] * cfg.cols for _ in range(cfg.rows)]
        for r in range(cfg.rows):
            for c in range(cfg.cols):
                cell = MixPECell(cfg)
                m.submodules[f"pe_{r}_{c}"] = cell
                cells[r][c] = cell
                m.d.comb += [
                    cell.a.eq(a1[r]), cell.q.eq(q1[c]),
                    cell.p_en.eq(v2), cell.p_first.eq(first2), cell.p_last.eq(last2),
                ]

        # ---- output bank: rows x cols int32 registers, each written by its
        # lane's enable (no input mux); the result stream reads one row per
        # beat through a row multiplexer (cheaper in LUTs than a shift chain,
        # whose every bit would need a load-or-shift mux) ----
        out_valid = Signal()
        out_row = Signal(count_width(cfg.rows - 1))
        xfer = self.result.valid & self.result.ready
        last_row = is_const(out_row, cfg.rows - 1)
        bank = [[Signal(signed(ACC_BITS), name=f"out_{r}_{c}") for c in range(cfg.cols)]
                for r in range(cfg.rows)]
        lanes = []
        for li, lane_cells in enumerate(dq_lane_cells(cfg)):
            lane = MixPEDQLane(cfg, cells=lane_cells)
            m.submodules[f"dq_{li}"] = lane
            lanes.append(lane)
            m.d.comb += [lane.start.eq(dq_start), lane.first_group.eq(fg1),
                         lane.last_group.eq(lg1)]
            m.d.comb += [lane.scale[j].eq(scale_dq[c]) for j, c in enumerate(lane.cols)]
            m.d.comb += [lane.ag[j].eq(row_sums[r].Ag) for j, r in enumerate(lane.rows)]
            for i, (r, c) in enumerate(lane_cells):
                m.d.comb += lane.pg[i].eq(cells[r][c].Pg)
                # A tile finishes only into a drained bank (the claim below),
                # so a write never overwrites a result still to be read.
                with m.If(lane.wr_en[i]):
                    m.d.sync += bank[r][c].eq(lane.wr_data)
        # Lane 0 is (one of) the longest: its last write completes the bank.
        load = lanes[0].done
        m.d.comb += self.result.valid.eq(out_valid)
        with m.If(load):
            m.d.sync += [out_valid.eq(1), out_row.eq(0)]
        with m.Elif(xfer):
            m.d.sync += out_row.eq(out_row + 1)
            with m.If(last_row):
                m.d.sync += out_valid.eq(0)
        with m.If(fire & last_k & last_group):
            m.d.sync += claimed.eq(1)
        with m.Elif(xfer & last_row):
            m.d.sync += claimed.eq(0)
        for c in range(cfg.cols):
            m.d.comb += self.result.payload[c].eq(
                _select(m, out_row, [bank[r][c] for r in range(cfg.rows)],
                        signed(ACC_BITS), f"result_{c}"))
        return m


# ---------------------------------------------------------------------------
# Fast path for simulation: memories + sequencer around the array
# ---------------------------------------------------------------------------
LOAD_ACT, LOAD_CODE, LOAD_SCALE = 0, 1, 2


class MixPESystem(wiring.Component):
    """MixPE with on-chip memories, for fast simulation (Python only loads,
    starts, waits for `done` and reads back). Ports (see docs/mixpe.md):

      load_sel  : In(2)   LOAD_ACT=0 / LOAD_CODE=1 / LOAD_SCALE=2
      load_addr : In(w)   word address in the selected memory
      load_data : In(d)   word (LSB-aligned; width = widest of act/code/scale words)
      load_en   : In(1)   write strobe (ignored while running)
      m_tiles   : In      number of row tiles (1..max_m_tiles), sampled at start
      n_tiles   : In      number of column tiles (1..max_n_tiles), sampled at start
      start     : In(1)   one-cycle pulse
      done      : Out(1)  high from the end of a run until the next start
      cycles    : Out(32) cycles from start to done of the last run
      res_addr  : In      result word address
      res_data  : Out     result word at the res_addr of the previous cycle

    Memory layouts: act word (tm*K + k), code word (tn*K + k), scale word
    (tn*groups + g), result word ((tn*m_tiles + tm)*rows + m), tiles streamed
    `for tn: for tm:`.
    """

    def __init__(self, config: MixPEConfig, *, max_m_tiles: int, max_n_tiles: int):
        self.config = _check_config(config)
        for name, v in (("max_m_tiles", max_m_tiles), ("max_n_tiles", max_n_tiles)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.max_m_tiles = max_m_tiles
        self.max_n_tiles = max_n_tiles
        cfg = config
        self.act_depth = max_m_tiles * cfg.K
        self.code_depth = max_n_tiles * cfg.K
        self.scale_depth = max_n_tiles * cfg.groups
        self.result_depth = max_m_tiles * max_n_tiles * cfg.rows
        self.load_addr_width = ceil_log2(max(self.act_depth, self.code_depth, self.scale_depth))
        self.load_data_width = max(cfg.act_word_bits, cfg.code_word_bits, cfg.scale_word_bits)
        self._load = LoadPort(sel_width=2, addr_width=max(1, self.load_addr_width),
                              data_width=self.load_data_width)
        super().__init__({
            **self._load.members(),
            "m_tiles": In(count_width(max_m_tiles)),
            "n_tiles": In(count_width(max_n_tiles)),
            "start": In(1),
            "done": Out(1),
            "cycles": Out(32),
            "res_addr": In(max(1, ceil_log2(self.result_depth))),
            "res_data": Out(cfg.result_word_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mixpe = pe = MixPE(self.config)
        m.submodules.run = run = RunControl()
        self._input_memories(m, pe, run)
        res_busy = self._result_memory(m, pe, run)
        # The run ends when the result write-address walk has ended.
        m.d.comb += [run.start.eq(self.start), run.finished.eq(~res_busy),
                     self.done.eq(run.done), self.cycles.eq(run.cycles)]
        return m

    def _input_memories(self, m, pe, run):
        """act / code / scale memories, each streamed into the array tile by tile."""
        cfg = self.config
        # name: (select, layout, depth, inner_len, inner_stride, outer_stride, sink)
        inputs = {
            "act": (LOAD_ACT, act_layout(cfg), self.act_depth, cfg.K, cfg.K, 0, pe.act),
            "code": (LOAD_CODE, code_layout(cfg), self.code_depth, cfg.K, 0, cfg.K, pe.code),
            "scale": (LOAD_SCALE, scale_layout(cfg), self.scale_depth, cfg.groups, 0,
                      cfg.groups, pe.scale),
        }
        for name, (sel, layout, depth, inner_len, istride, ostride, sink) in inputs.items():
            src = PreloadedMemory(load=self._load, sel=sel, shape=layout, depth=depth,
                                  inner_len=inner_len, inner_stride=istride,
                                  outer_stride=ostride, max_outer=self.max_n_tiles,
                                  max_inner=self.max_m_tiles)
            m.submodules[f"{name}_src"] = src
            self._load.connect(m, self, src)
            m.d.comb += [src.lock.eq(run.running), src.start.eq(run.go),
                         src.n_outer.eq(self.n_tiles), src.n_inner.eq(self.m_tiles)]
            wiring.connect(m, src.data, sink)

    def _result_memory(self, m, pe, run):
        """Results written in emission order (linear, rows words per tile);
        returns the write-address walk's `busy`."""
        cfg = self.config
        res_mem = memory.Memory(shape=result_layout(cfg), depth=self.result_depth, init=[])
        m.submodules.result_mem = res_mem
        raw = max(1, ceil_log2(self.result_depth))
        res_gen = NestedAddressGenerator(addr_width=raw, inner_len=cfg.rows,
                                         inner_stride=cfg.rows, outer_stride=None,
                                         max_outer=self.max_n_tiles, max_inner=self.max_m_tiles)
        m.submodules.result_addr = res_gen
        m.d.comb += [res_gen.start.eq(run.go), res_gen.n_outer.eq(self.n_tiles),
                     res_gen.n_inner.eq(self.m_tiles)]
        wp = res_mem.write_port()
        m.d.comb += [
            pe.result.ready.eq(res_gen.addr.valid),
            res_gen.addr.ready.eq(pe.result.valid),
            wp.addr.eq(res_gen.addr.payload),
            wp.data.eq(pe.result.payload),
            wp.en.eq(pe.result.valid & res_gen.addr.valid),
        ]
        rp = res_mem.read_port()
        m.d.comb += [rp.addr.eq(self.res_addr), self.res_data.eq(rp.data)]
        return res_gen.busy
