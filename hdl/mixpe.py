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

from typing import Iterable

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.formats import ACC_BITS, ACT_BITS, ACT_MIN, ACT_MAX

from golden.mixpe_config import MixPEConfig

from .streams import (SYSTEM_OVERHEAD, LoadPort, NestedAddressGenerator, PreloadedMemory,
                      RunControl)

from .dq_lane import SCALE_PAIR, DQLane, DQLaneGeometry
from .rtl import count_width, is_const, select, tree_sum, wire

__all__ = [
    "PIPELINE_LATENCY", "system_cycle_model", "MixPECell", "MixPEDQLane",
    "MixPE", "MixPESystem", "cycle_model", "pipeline_latency", "dq_lane_cells",
    "dq_lane_length", "act_layout", "code_layout", "scale_layout", "result_layout",
    "product_shape", "group_sum_shape", "act_sum_shape", "element_ports", "shift_add_product",
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
        raise TypeError(f"expected a golden.mixpe_config.MixPEConfig, got {type(config).__name__}")
    return config


def act_layout(config: MixPEConfig) -> data.ArrayLayout:
    """Layout of an act beat: one INT8 activation per row."""
    return data.ArrayLayout(signed(ACT_BITS), config.rows)


def code_layout(config: MixPEConfig) -> data.ArrayLayout:
    """Layout of a code beat: one bits-wide weight code per column."""
    return data.ArrayLayout(unsigned(config.bits), config.cols)


def scale_layout(config: MixPEConfig) -> data.ArrayLayout:
    """Layout of a scale beat: one (s2, z) pair per column."""
    return data.ArrayLayout(SCALE_PAIR, config.cols)


def result_layout(config: MixPEConfig) -> data.ArrayLayout:
    """Layout of a result beat: one int32 accumulator per column."""
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


def element_ports(config: MixPEConfig) -> dict:
    """The operands of one element at a PE: signed INT8 activation `a`, unsigned
    `bits`-bit code `q` (hdl.baselines' PE and product kernel take the same, so
    that a comparison with MixPECell is like for like)."""
    return {"a": In(signed(ACT_BITS)), "q": In(unsigned(config.bits))}


def shift_add_product(a: Value, q: Value, bits: int) -> Value:
    """a * q without a multiplier, as S2 computes it: one gated shifted copy of
    `a` per code bit, summed in a tree."""
    return tree_sum([Mux(q[i], a << i, 0) for i in range(bits)])


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
        super().__init__({**element_ports(config), **_GROUP_STROBES,
                          "Pg": Out(group_sum_shape(config))})

    def elaborate(self, platform: object) -> Module:
        """Build the PE: shift-and-add product and the group partial sum."""
        m = Module()
        cfg = self.config
        # S2: shift-and-add product.
        pp = Signal(product_shape(cfg))
        m.d.sync += pp.eq(shift_add_product(self.a, self.q, cfg.bits))

        # S3: group partial sum, the finished one held in Pg.
        _group_sum(m, self, pp, self.Pg, "P")
        return m


class _RowActSum(wiring.Component):
    """A[m]: the group sum of one row's activations, shared by the row's PEs;
    Ag holds the last finished group's sum (as Pg in MixPECell)."""

    def __init__(self, config: MixPEConfig):
        self.config = config
        super().__init__({"a": In(signed(ACT_BITS)), **_GROUP_STROBES,
                          "Ag": Out(act_sum_shape(config))})

    def elaborate(self, platform):
        m = Module()
        a_d = Signal(signed(ACT_BITS))  # aligns `a` with the PEs' pp register
        m.d.sync += a_d.eq(self.a)
        _group_sum(m, self, a_d, self.Ag, "A")
        return m


#: The strobes _group_sum reads from its unit (MixPECell, _RowActSum).
_GROUP_STROBES = {"p_en": In(1), "p_first": In(1), "p_last": In(1)}


def _group_sum(m, unit, term, held, name: str) -> None:
    """Running group sum `name` of `term` under `unit`'s strobes (p_en: add,
    p_first: restart, p_last: the group's last term); the finished sum goes to
    `held`, so that the next group starts accumulating in the next cycle."""
    acc = Signal(held.shape(), name=name)
    acc_next = Signal(held.shape(), name=f"{name}_next")
    m.d.comb += acc_next.eq(Mux(unit.p_first, 0, acc) + term)
    with m.If(unit.p_en):
        m.d.sync += acc.eq(acc_next)
        with m.If(unit.p_last):
            m.d.sync += held.eq(acc_next)


# ---------------------------------------------------------------------------
# One time-shared dequantization lane
# ---------------------------------------------------------------------------
class MixPEDQLane(DQLane):
    """The DQLane (hdl.dq_lane) of a run of PEs: dequantizes and accumulates
    their group sums, one PE per cycle: acc[i] += s2[n_i] * Pg[i] - zs2[n_i] * Ag[m_i].

    `cells` is a run of PEs (m, n) consecutive in row-major order (as
    `dq_lane_cells` makes them), at most `group` long (a group's sums are held
    for `group` cycles). The lane sees only the columns and rows its PEs use:
    `lane.cols` / `lane.rows` list them, and `scale[j]` / `ag[j]` carry column
    `lane.cols[j]` / row `lane.rows[j]`; `pg[i]` is the Pg of `cells[i]`.
    """

    def __init__(self, config: MixPEConfig, *, cells: Iterable[tuple[int, int]]):
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
        # The lane's walk is row-major over its own columns: it wraps exactly
        # where the row changes (the largest used column is cols-1 whenever the
        # run wraps), checked here against the cell list.
        geometry = DQLaneGeometry(cells=len(cells), cols=len(self.cols),
                                  col_start=self.cols.index(cells[0][1]),
                                  pg_shape=group_sum_shape(cfg), ag_shape=act_sum_shape(cfg))
        walk = [divmod(geometry.col_start + i, geometry.cols) for i in range(len(cells))]
        assert geometry.rows == len(self.rows) and all(
            (self.rows[lr], self.cols[lc]) == cell for (lr, lc), cell in zip(walk, cells)), \
            "lane walk does not match cells"
        super().__init__(geometry)


# ---------------------------------------------------------------------------
# The array
# ---------------------------------------------------------------------------
class MixPE(wiring.Component):
    """rows x cols MixPE array with stream interfaces:

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

    def elaborate(self, platform: object) -> Module:
        """Build the array: PE cells, row activation sums, DQ lanes, stream control, output bank."""
        m = Module()
        claimed = Signal()   # output bank reserved by a tile whose last beat is in
        pos = self._input_side(m, claimed)
        s1 = self._input_registers(m, pos)
        scale_dq = self._scales(m, pos, s1)
        row_sums, cells = self._datapath(m, s1)
        bank, done = self._dq_lanes(m, s1, scale_dq, row_sums, cells)
        self._output_bank(m, pos, claimed, bank, done)
        return m

    def _input_side(self, m, claimed):
        """Position counters (k in group, group in tile) and the fire condition."""
        cfg = self.config
        k_in_group = Signal(count_width(cfg.group - 1))
        group_idx = Signal(count_width(cfg.groups - 1))
        pos = {n: Signal(name=n) for n in ("first_k", "last_k", "first_group", "last_group",
                                           "fire")}
        m.d.comb += [
            pos["first_k"].eq(is_const(k_in_group, 0)),
            pos["last_k"].eq(is_const(k_in_group, cfg.group - 1)),
            pos["first_group"].eq(is_const(group_idx, 0)),
            pos["last_group"].eq(is_const(group_idx, cfg.groups - 1)),
        ]
        fire = pos["fire"]
        m.d.comb += [
            fire.eq(self.act.valid & self.code.valid
                    & (self.scale.valid | ~pos["first_k"])
                    & ~(pos["last_k"] & pos["last_group"] & claimed)),
            self.act.ready.eq(fire),
            self.code.ready.eq(fire),
            self.scale.ready.eq(fire & pos["first_k"]),
        ]
        with m.If(fire):
            with m.If(pos["last_k"]):
                m.d.sync += [k_in_group.eq(0),
                             group_idx.eq(Mux(pos["last_group"], 0, group_idx + 1))]
            with m.Else():
                m.d.sync += k_in_group.eq(k_in_group + 1)
        return pos

    def _input_registers(self, m, pos):
        """S1: operand registers and the control pipeline (S1, and S2 for the
        P/A accumulate strobes; pp itself is registered in the cells)."""
        cfg = self.config
        s1 = {"a": Signal(act_layout(cfg), name="a_s1"), "q": Signal(code_layout(cfg), name="q_s1")}
        flags = ("first_k", "last_k", "first_group", "last_group")
        s1.update({n: Signal(name=f"{n}_s1") for n in ("valid",) + flags})
        m.d.sync += [s1["valid"].eq(pos["fire"])] + [s1[n].eq(pos[n]) for n in flags]
        with m.If(pos["fire"]):
            m.d.sync += [s1["a"].eq(self.act.payload), s1["q"].eq(self.code.payload)]
        for n in ("valid", "first_k", "last_k"):
            s1[f"{n}_s2"] = Signal(name=f"{n}_s2")
            m.d.sync += s1[f"{n}_s2"].eq(s1[n])
        # The lanes start in S1 of a group's last beat.
        s1["dq_start"] = Signal(name="dq_start")
        m.d.comb += s1["dq_start"].eq(s1["valid"] & s1["last_k"])
        return s1

    def _scales(self, m, pos, s1):
        """`scale_in` holds the group being accumulated; in S1 of the group's
        last beat (before the next group's first beat can overwrite it) it moves
        to `scale_dq`, which the lanes read while they walk."""
        cfg = self.config
        scale_in = Signal(scale_layout(cfg))
        scale_dq = Signal(scale_layout(cfg))
        with m.If(pos["fire"] & pos["first_k"]):
            m.d.sync += scale_in.eq(self.scale.payload)
        with m.If(s1["dq_start"]):
            m.d.sync += scale_dq.eq(scale_in)
        return scale_dq

    def _datapath(self, m, s1):
        """One shared A per row, one multiplier-free cell per (m, n)."""
        cfg = self.config

        def strobes(unit):
            return [unit.p_en.eq(s1["valid_s2"]), unit.p_first.eq(s1["first_k_s2"]),
                    unit.p_last.eq(s1["last_k_s2"])]

        row_sums = []
        for r in range(cfg.rows):
            rs = _RowActSum(cfg)
            m.submodules[f"asum_{r}"] = rs
            m.d.comb += [rs.a.eq(s1["a"][r])] + strobes(rs)
            row_sums.append(rs)
        cells = [[None] * cfg.cols for _ in range(cfg.rows)]
        for r in range(cfg.rows):
            for c in range(cfg.cols):
                cells[r][c] = cell = MixPECell(cfg)
                m.submodules[f"pe_{r}_{c}"] = cell
                m.d.comb += [cell.a.eq(s1["a"][r]), cell.q.eq(s1["q"][c])] + strobes(cell)
        return row_sums, cells

    def _dq_lanes(self, m, s1, scale_dq, row_sums, cells):
        """The DQ lanes and the output bank (rows x cols int32 registers), each
        register written by its lane's enable (no input mux). Returns the bank
        and the strobe of its last write."""
        cfg = self.config
        bank = [[Signal(signed(ACC_BITS), name=f"out_{r}_{c}") for c in range(cfg.cols)]
                for r in range(cfg.rows)]
        lanes = []
        for li, lane_cells in enumerate(dq_lane_cells(cfg)):
            lane = MixPEDQLane(cfg, cells=lane_cells)
            m.submodules[f"dq_{li}"] = lane
            lanes.append(lane)
            m.d.comb += [lane.start.eq(s1["dq_start"]), lane.first_group.eq(s1["first_group"]),
                         lane.last_group.eq(s1["last_group"])]
            m.d.comb += [lane.scale[j].eq(scale_dq[c]) for j, c in enumerate(lane.cols)]
            m.d.comb += [lane.ag[j].eq(row_sums[r].Ag) for j, r in enumerate(lane.rows)]
            for i, (r, c) in enumerate(lane_cells):
                m.d.comb += lane.pg[i].eq(cells[r][c].Pg)
                # A tile finishes only into a drained bank (the claim), so a
                # write never overwrites a result still to be read.
                with m.If(lane.wr_en[i]):
                    m.d.sync += bank[r][c].eq(lane.wr_data)
        # Lane 0 is (one of) the longest: its last write completes the bank.
        return bank, lanes[0].done

    def _output_bank(self, m, pos, claimed, bank, done):
        """The result stream reads the bank one row per beat through a row
        multiplexer (cheaper in LUTs than a shift chain, whose every bit would
        need a load-or-shift mux); the bank is claimed from a tile's last beat
        until its last row has been read."""
        cfg = self.config
        out_valid = Signal()
        out_row = Signal(count_width(cfg.rows - 1))
        xfer = self.result.valid & self.result.ready
        last_row = is_const(out_row, cfg.rows - 1)
        m.d.comb += self.result.valid.eq(out_valid)
        with m.If(done):
            m.d.sync += [out_valid.eq(1), out_row.eq(0)]
        with m.Elif(xfer):
            m.d.sync += out_row.eq(out_row + 1)
            with m.If(last_row):
                m.d.sync += out_valid.eq(0)
        with m.If(pos["fire"] & pos["last_k"] & pos["last_group"]):
            m.d.sync += claimed.eq(1)
        with m.Elif(xfer & last_row):
            m.d.sync += claimed.eq(0)
        for c in range(cfg.cols):
            m.d.comb += self.result.payload[c].eq(
                wire(m, select(out_row, [bank[r][c] for r in range(cfg.rows)]), f"result_{c}"))


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

    def elaborate(self, platform: object) -> Module:
        """Build MixPE with its preloaded input memories, result memory and run control."""
        m = Module()
        m.submodules.mixpe = pe = MixPE(self.config)
        m.submodules.run = run = RunControl()
        self._input_memories(m, pe, run)
        res_busy = self._result_memory(m, pe, run)
        # The run ends when the result write-address walk has ended.
        run.connect_system(m, self, finished=~res_busy)
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
            src.connect_run(m, self, run, n_outer=self.n_tiles, n_inner=self.m_tiles)
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
