"""MixPE array (DESIGN §3.3, arXiv 2411.16158) in Amaranth 0.5.

acc[m, n] = sum_groups( s2[n] * P[m, n] - zs2[n] * A[m] )
  P = sum_{k in group} a[m, k] * q[n, k]   (shift-and-add, no multiplier)
  A = sum_{k in group} a[m, k]            (one per row, shared by its PEs)

Pipeline (cycle c = the cycle an input beat is accepted):
  c+1  S1  input registers: a[m], q[n], group/tile position flags
  c+2  S2  pp[m][n] = sum_i q_i ? (a << i) : 0           (registered)
  c+3  S3  P[m][n] += pp, A[m] += a                     (group partial sums)
  c+4  D1  mP = s2 * P, mA = zs2 * A        (after a group's last k only)
  c+5  D2  acc += mP - mA; after a tile's last group the sum goes to the
           output bank, so result.valid rises at c + PIPELINE_LATENCY.
Stage registers always advance (no internal stall); back-pressure only stops
inputs from being accepted. See docs/mixpe.md.
"""
from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.config import ACC_BITS, ACT_BITS, SCALE_BITS, MixPEConfig

from .stream_utils import (MemoryStreamReader, NestedAddressGenerator, count_width, is_const,
                           tree_sum)

__all__ = [
    "PIPELINE_LATENCY", "SYSTEM_OVERHEAD", "system_cycle_model", "MixPECell", "MixPE", "MixPESystem", "cycle_model",
    "act_layout", "code_layout", "scale_layout", "result_layout",
    "product_shape", "group_sum_shape", "act_sum_shape",
]

#: Cycles from the clock edge that accepts a tile's last input beat to the cycle
#: in which that tile's first result beat is valid (S1, S2, S3, D1, D2 registers).
PIPELINE_LATENCY = 5


# ---------------------------------------------------------------------------
# Shapes derived from the configuration (never written down twice)
# ---------------------------------------------------------------------------
_ACT_MIN = -(1 << (ACT_BITS - 1))
_ACT_MAX = (1 << (ACT_BITS - 1)) - 1


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
    return Shape.cast(range(_ACT_MIN * config.levels, _ACT_MAX * config.levels + 1))


def group_sum_shape(config: MixPEConfig) -> Shape:
    """P: sum of `group` products."""
    g = config.group
    return Shape.cast(range(_ACT_MIN * config.levels * g, _ACT_MAX * config.levels * g + 1))


def act_sum_shape(config: MixPEConfig) -> Shape:
    """A: sum of `group` activations."""
    g = config.group
    return Shape.cast(range(_ACT_MIN * g, _ACT_MAX * g + 1))


def _scaled_shape(operand: Shape) -> Shape:
    """unsigned(SCALE_BITS) x operand, capped at the accumulator width (acc wraps
    mod 2**ACC_BITS, so bits above it never matter)."""
    width = min(operand.width + SCALE_BITS, ACC_BITS)
    return signed(width)


def cycle_model(config: MixPEConfig, tiles: int) -> int:
    """Cycles from the first accepted input beat to the last result transfer,
    both ends inclusive, with an always-valid source and an always-ready sink.

    A tile's last beat may only be accepted once the previous tile's results
    have fully drained (one output register bank), so tiles are spaced by
    max(K, PIPELINE_LATENCY + rows) cycles.
    """
    config = _check_config(config)
    if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
        raise ValueError(f"tiles must be an int >= 1, got {tiles!r}")
    period = max(config.K, PIPELINE_LATENCY + config.rows)
    return config.K + (tiles - 1) * period + PIPELINE_LATENCY + config.rows - 1


#: MixPESystem `cycles` beyond `cycle_model`: one cycle for the address
#: generators to start and one for the first synchronous memory read.
SYSTEM_OVERHEAD = 2


def system_cycle_model(config: MixPEConfig, m_tiles: int, n_tiles: int) -> int:
    """Value of MixPESystem's `cycles` output after a run of m_tiles x n_tiles."""
    config = _check_config(config)
    return cycle_model(config, m_tiles * n_tiles) + SYSTEM_OVERHEAD


# ---------------------------------------------------------------------------
# One processing element
# ---------------------------------------------------------------------------
class MixPECell(wiring.Component):
    """One MixPE processing element for output (m, n).

    Every input is aligned to the stage that uses it; the array generates the
    strobes from one shared control pipeline (cycle t = the S1 cycle of a k):

      t    a, q          operands of one k (registered by the array)
      t+1  p_en, p_first pp register holds a*q: P <= (p_first ? 0 : P) + pp
      t+2  dq_en         P holds a finished group sum: mP <= s2*P, mA <= zs2*A
           s2, zs2, A    column scale and the row's group activation sum
      t+3  acc_en        acc_next = (acc_first ? 0 : acc) + mP - mA
           acc_first     first group of a tile
           acc_last      last group of a tile: acc_next goes to `out`
      any  shift,        out <= shift_in (drain the output bank one row per beat)
           shift_in

    `out` is the cell's output register (the second bank of the double-buffered
    accumulator); a load (acc_en & acc_last) and a shift never coincide because
    the array only finishes a tile into an empty bank.
    """

    def __init__(self, config: MixPEConfig):
        self.config = _check_config(config)
        super().__init__({
            "a": In(signed(ACT_BITS)),
            "q": In(unsigned(config.bits)),
            "p_en": In(1),
            "p_first": In(1),
            "dq_en": In(1),
            "s2": In(unsigned(SCALE_BITS)),
            "zs2": In(unsigned(SCALE_BITS)),
            "A": In(act_sum_shape(config)),
            "acc_en": In(1),
            "acc_first": In(1),
            "acc_last": In(1),
            "shift": In(1),
            "shift_in": In(signed(ACC_BITS)),
            "out": Out(signed(ACC_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        # S2: shift-and-add product, one gated shifted copy of `a` per code bit.
        terms = [Mux(self.q[i], self.a << i, 0) for i in range(cfg.bits)]
        pp = Signal(product_shape(cfg))
        m.d.sync += pp.eq(tree_sum(terms))

        # S3: group partial sum.
        P = Signal(group_sum_shape(cfg))
        with m.If(self.p_en):
            m.d.sync += P.eq(Mux(self.p_first, 0, P) + pp)

        # D1: dequantisation products, once per group (the only multipliers).
        mP = Signal(_scaled_shape(group_sum_shape(cfg)))
        mA = Signal(_scaled_shape(act_sum_shape(cfg)))
        with m.If(self.dq_en):
            m.d.sync += [mP.eq(self.s2 * P), mA.eq(self.zs2 * self.A)]

        # D2: int32 accumulation (wraps), then hand-off to the output bank.
        acc = Signal(signed(ACC_BITS))
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(self.acc_first, 0, acc) + mP - mA)
        with m.If(self.acc_en):
            m.d.sync += acc.eq(acc_next)
        with m.If(self.acc_en & self.acc_last):
            m.d.sync += self.out.eq(acc_next)
        with m.Elif(self.shift):
            m.d.sync += self.out.eq(self.shift_in)
        return m


class _RowActSum(wiring.Component):
    """A[m]: the group sum of one row's activations, shared by the row's PEs."""

    def __init__(self, config: MixPEConfig):
        self.config = config
        super().__init__({
            "a": In(signed(ACT_BITS)),
            "p_en": In(1),
            "p_first": In(1),
            "A": Out(act_sum_shape(config)),
        })

    def elaborate(self, platform):
        m = Module()
        a_d = Signal(signed(ACT_BITS))  # aligns `a` with the PEs' pp register
        m.d.sync += a_d.eq(self.a)
        with m.If(self.p_en):
            m.d.sync += self.A.eq(Mux(self.p_first, 0, self.A) + a_d)
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

        # Scales: `scale_in` holds the group being accumulated; it moves to
        # `scale_dq` when the group's last beat is accepted, so the next group
        # may start at once while the previous one is being dequantised.
        scale_in = Signal(scale_layout(cfg))
        scale_dq = Signal(scale_layout(cfg))
        with m.If(fire & first_k):
            m.d.sync += scale_in.eq(self.scale.payload)
        with m.If(fire & last_k):
            m.d.sync += scale_dq.eq(scale_in)

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
        v2, first2, last2, fg2, lg2 = (Signal(name=f"{n}_s2") for n in
                                       ("valid", "first_k", "last_k", "first_group", "last_group"))
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1), fg2.eq(fg1), lg2.eq(lg1)]
        # S3: P/A hold a finished group -> dequantisation multiplies.
        dq3, fg3, lg3 = Signal(name="dq_s3"), Signal(name="first_group_s3"), Signal(name="last_group_s3")
        m.d.sync += [dq3.eq(v2 & last2), fg3.eq(fg2), lg3.eq(lg2)]
        # D1: products valid -> accumulate.
        acc4, fg4, lg4 = Signal(name="acc_d1"), Signal(name="first_group_d1"), Signal(name="last_group_d1")
        m.d.sync += [acc4.eq(dq3), fg4.eq(fg3), lg4.eq(lg3)]

        # ---- output bank drain ----
        out_valid = Signal()
        out_row = Signal(count_width(cfg.rows - 1))
        load = acc4 & lg4
        xfer = self.result.valid & self.result.ready
        last_row = is_const(out_row, cfg.rows - 1)
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

        # ---- datapath: one shared A per row, one cell per (m, n) ----
        row_sums = []
        for r in range(cfg.rows):
            rs = _RowActSum(cfg)
            m.submodules[f"asum_{r}"] = rs
            m.d.comb += [rs.a.eq(a1[r]), rs.p_en.eq(v2), rs.p_first.eq(first2)]
            row_sums.append(rs)

        cells = [[None] * cfg.cols for _ in range(cfg.rows)]
        for r in range(cfg.rows):
            for c in range(cfg.cols):
                cell = MixPECell(cfg)
                m.submodules[f"pe_{r}_{c}"] = cell
                cells[r][c] = cell
                m.d.comb += [
                    cell.a.eq(a1[r]), cell.q.eq(q1[c]),
                    cell.p_en.eq(v2), cell.p_first.eq(first2),
                    cell.dq_en.eq(dq3), cell.s2.eq(scale_dq[c].s2), cell.zs2.eq(scale_dq[c].zs2),
                    cell.A.eq(row_sums[r].A),
                    cell.acc_en.eq(acc4), cell.acc_first.eq(fg4), cell.acc_last.eq(lg4),
                    cell.shift.eq(xfer),
                ]
        for r in range(cfg.rows):
            for c in range(cfg.cols):
                nxt = cells[r + 1][c].out if r + 1 < cfg.rows else Const(0, signed(ACC_BITS))
                m.d.comb += cells[r][c].shift_in.eq(nxt)
        # Row 0 of the bank is always the next result beat.
        for c in range(cfg.cols):
            m.d.comb += self.result.payload[c].eq(cells[0][c].out)
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
      load_en   : In(1)   write strobe (use only while not running)
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
        super().__init__({
            "load_sel": In(2),
            "load_addr": In(max(1, self.load_addr_width)),
            "load_data": In(self.load_data_width),
            "load_en": In(1),
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
        cfg = self.config
        m.submodules.mixpe = pe = MixPE(cfg)

        running = Signal()
        go = Signal()  # start is ignored while a run is in progress
        m.d.comb += go.eq(self.start & ~running)

        # (memory layout, depth, inner_len, inner_stride, outer_stride, sink stream)
        inputs = {
            "act": (act_layout(cfg), self.act_depth, cfg.K, cfg.K, 0, pe.act, LOAD_ACT),
            "code": (code_layout(cfg), self.code_depth, cfg.K, 0, cfg.K, pe.code, LOAD_CODE),
            "scale": (scale_layout(cfg), self.scale_depth, cfg.groups, 0, cfg.groups,
                      pe.scale, LOAD_SCALE),
        }
        for name, (layout, depth, inner_len, istride, ostride, sink, sel) in inputs.items():
            mem = memory.Memory(shape=layout, depth=depth, init=[])
            m.submodules[f"{name}_mem"] = mem
            aw = max(1, ceil_log2(depth))
            wp = mem.write_port()
            m.d.comb += [
                wp.addr.eq(self.load_addr[:aw]),
                wp.data.eq(self.load_data[:Shape.cast(layout).width]),
                wp.en.eq(self.load_en & is_const(self.load_sel, sel) & ~running),
            ]
            gen = NestedAddressGenerator(addr_width=aw, inner_len=inner_len,
                                         inner_stride=istride, outer_stride=ostride,
                                         max_outer=self.max_n_tiles, max_inner=self.max_m_tiles)
            rd = MemoryStreamReader(addr_width=aw, shape=layout)
            m.submodules[f"{name}_addr"] = gen
            m.submodules[f"{name}_reader"] = rd
            m.d.comb += [gen.start.eq(go), gen.n_outer.eq(self.n_tiles),
                         gen.n_inner.eq(self.m_tiles)]
            wiring.connect(m, gen.addr, rd.addr)
            wiring.connect(m, rd.port, mem.read_port())
            wiring.connect(m, rd.data, sink)

        # Results: written in emission order; the write-address walk ending
        # (linear, rows words per tile) is what finishes the run.
        res_mem = memory.Memory(shape=result_layout(cfg), depth=self.result_depth, init=[])
        m.submodules.result_mem = res_mem
        raw = max(1, ceil_log2(self.result_depth))
        res_gen = NestedAddressGenerator(addr_width=raw, inner_len=cfg.rows,
                                         inner_stride=cfg.rows, outer_stride=None,
                                         max_outer=self.max_n_tiles, max_inner=self.max_m_tiles)
        m.submodules.result_addr = res_gen
        m.d.comb += [res_gen.start.eq(go), res_gen.n_outer.eq(self.n_tiles),
                     res_gen.n_inner.eq(self.m_tiles)]
        wp = res_mem.write_port()
        write = pe.result.valid & res_gen.addr.valid
        m.d.comb += [
            pe.result.ready.eq(res_gen.addr.valid),
            res_gen.addr.ready.eq(pe.result.valid),
            wp.addr.eq(res_gen.addr.payload),
            wp.data.eq(pe.result.payload),
            wp.en.eq(write),
        ]
        rp = res_mem.read_port()
        m.d.comb += [rp.addr.eq(self.res_addr), self.res_data.eq(rp.data)]

        # Run control: `running` from the cycle after start until the last result
        # is written; `cycles` counts those cycles.
        with m.If(go):
            m.d.sync += [running.eq(1), self.done.eq(0), self.cycles.eq(0)]
        with m.Elif(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(~res_gen.busy):
                m.d.sync += [running.eq(0), self.done.eq(1)]
        return m
