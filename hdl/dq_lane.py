"""The time-shared dequantization lane of MixPE and the LUT block: the two
multiplies and the int32 accumulation of a group sum, shared by several cells.

Per finished group the lane visits its `cells`, one per cycle, and forms
acc[i] += s2 * P[i] - zs2 * A[i] (int32, wrapping); the blocks keep only the
multiplier-free group sums P (and A) per cell. What the lane visits is its
`DQLaneGeometry`, not a block's configuration: MixPE sizes it from a run of its
PEs, the LUT block from a run of (slice, row, lane) cells.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACC_BITS, SCALE_BITS

from .rtl import count_width, is_const, select, wire

__all__ = ["SCALE_PAIR", "scaled_shape", "DQLaneGeometry", "DQLane"]

#: Control that travels with a cell through E0..E3: the group flags too, since
#: the next group may start while this one's last cells are still in E1..E3.
_CTRL = ("valid", "idx", "fg", "lg")

#: One column's dequantization scales: s2 and zs2 = z * s2.
SCALE_PAIR = data.StructLayout({"s2": unsigned(SCALE_BITS), "zs2": unsigned(SCALE_BITS)})


def scaled_shape(operand: Shape) -> Shape:
    """unsigned(SCALE_BITS) x operand, capped at the accumulator width (acc wraps
    mod 2**ACC_BITS, so bits above it never matter)."""
    return signed(min(Shape.cast(operand).width + SCALE_BITS, ACC_BITS))


@dataclass(frozen=True)
class DQLaneGeometry:
    """What one lane visits: `cells` group sums a group, one per cycle, in a
    row-major walk over a grid `cols` wide that starts at column `col_start`:
    cell i reads the scales of column (col_start + i) % cols and the
    activation sum of row (col_start + i) // cols. `pg_shape` / `ag_shape`
    are the shapes of the group sum P and of the activation sum A."""
    cells: int
    cols: int
    pg_shape: Shape
    ag_shape: Shape
    col_start: int = 0

    def __post_init__(self):
        for name in ("cells", "cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DQLaneGeometry.{name} must be an int >= 1, got {v!r}")
        if not 0 <= self.col_start < self.cols:
            raise ValueError(f"DQLaneGeometry.col_start={self.col_start} is not a column of "
                             f"0..{self.cols - 1}")
        object.__setattr__(self, "pg_shape", Shape.cast(self.pg_shape))
        object.__setattr__(self, "ag_shape", Shape.cast(self.ag_shape))

    @property
    def rows(self) -> int:
        """Activation-sum rows the walk touches."""
        return (self.col_start + self.cells - 1) // self.cols + 1


class DQLane(wiring.Component):
    """Dequantizes and accumulates the group sums of `geometry.cells` cells,
    one per cycle: acc[i] += s2[col of i] * Pg[i] - zs2[col of i] * Ag[row of i].

    Ports (cycle s = the `start` cycle; cell i is handled in E0..E3 at s+1+i ..
    s+4+i):
      start        In(1)   a group's sums arrive: Pg/Ag valid from s+2, scale
                           from s+1, each held until the walk has read them
      first_group, last_group  In(1), sampled at start
      scale        In      {s2, zs2} of each of the `cols` columns (read in E0)
      pg           In      Pg of each cell, in walk order (read in E1)
      ag           In      Ag of each of the `rows` rows (read in E1)
      wr_data      Out     acc of cell i in E3 (s+4+i)
      wr_en        Out     one bit per cell: write wr_data into that cell's
                           output register (E3 of a tile's last group)
      done         Out(1)  E3 of the last cell in a tile's last group
    The next group may start once the previous walk has left E0. The int32
    accumulators form a ring shift register (no reset, no taps, so it maps to
    SRL shift registers); the multiplies have registered operands and
    products, the DSP48E2 A/B -> M pipeline.
    """

    def __init__(self, geometry: DQLaneGeometry):
        if not isinstance(geometry, DQLaneGeometry):
            raise TypeError(f"expected a DQLaneGeometry, got {type(geometry).__name__}")
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "first_group": In(1),
            "last_group": In(1),
            "scale": In(data.ArrayLayout(SCALE_PAIR, g.cols)),
            "pg": In(data.ArrayLayout(g.pg_shape, g.cells)),
            "ag": In(data.ArrayLayout(g.ag_shape, g.rows)),
            "wr_data": Out(signed(ACC_BITS)),
            "wr_en": Out(g.cells),
            "done": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the lane: the cell walk and the E0..E3 multiply-accumulate pipeline."""
        m = Module()
        e0 = self._walk(m)
        e1 = self._scales(m, e0)
        e2 = self._operands(m, e1)
        e3 = self._products(m, e2)
        self._accumulate(m, e3)
        return m

    @staticmethod
    def _delay(m, prev, name, keys=_CTRL):
        """Stage `name`'s control registers: `prev`'s `keys` one cycle later."""
        nxt = {k: Signal.like(prev[k], name=f"{name}_{k}") for k in keys}
        m.d.sync += [nxt[k].eq(prev[k]) for k in keys]
        return nxt

    def _walk(self, m):
        """E0: the cell counter and its (column, row) position in the grid."""
        g = self.geometry
        e0 = {"valid": Signal(name="e0_valid"),
              "idx": Signal(count_width(g.cells - 1), name="e0_idx"),
              "lc": Signal(count_width(g.cols - 1), name="e0_lc"),
              "fg": Signal(name="e0_fg"), "lg": Signal(name="e0_lg")}
        # one row: no row counter (its registers would be dead logic)
        lr = {"lr": Signal(count_width(g.rows - 1), name="e0_lr")} if g.rows > 1 else {}
        e0.update(lr)
        with m.If(self.start):
            m.d.sync += [e0["valid"].eq(1), e0["idx"].eq(0), e0["lc"].eq(g.col_start),
                         e0["fg"].eq(self.first_group), e0["lg"].eq(self.last_group)]
            m.d.sync += [r.eq(0) for r in lr.values()]
        with m.Elif(e0["valid"]):
            m.d.sync += e0["idx"].eq(e0["idx"] + 1)
            with m.If(is_const(e0["idx"], g.cells - 1)):
                m.d.sync += e0["valid"].eq(0)
            with m.If(is_const(e0["lc"], g.cols - 1)):
                m.d.sync += [e0["lc"].eq(0), *(r.eq(r + 1) for r in lr.values())]
            with m.Else():
                m.d.sync += e0["lc"].eq(e0["lc"] + 1)
        return e0

    def _scales(self, m, e0):
        """E0 -> E1: the column's scales, selected and registered."""
        cols = range(self.geometry.cols)
        e1 = self._delay(m, e0, "e1", _CTRL + (("lr",) if "lr" in e0 else ()))
        e1["s2"] = Signal(unsigned(SCALE_BITS), name="s2_r")
        e1["zs2"] = Signal(unsigned(SCALE_BITS), name="zs2_r")
        m.d.sync += [
            e1["s2"].eq(wire(m, select(e0["lc"], [self.scale[j].s2 for j in cols]), "s2_sel")),
            e1["zs2"].eq(wire(m, select(e0["lc"], [self.scale[j].zs2 for j in cols]),
                              "zs2_sel")),
        ]
        return e1

    def _operands(self, m, e1):
        """E1 -> E2: the cell's group sum and its row's activation sum beside
        the scales (the multipliers' registered operands)."""
        g = self.geometry
        e2 = self._delay(m, e1, "e2")
        e2["p"] = Signal(g.pg_shape, name="op_p")
        e2["a"] = Signal(g.ag_shape, name="op_a")
        e2["s2"] = Signal(unsigned(SCALE_BITS), name="op_s2")
        e2["zs2"] = Signal(unsigned(SCALE_BITS), name="op_zs2")
        m.d.sync += [
            e2["p"].eq(wire(m, select(e1["idx"], [self.pg[i] for i in range(g.cells)]),
                            "pg_sel")),
            e2["a"].eq(wire(m, select(e1["lr"], [self.ag[j] for j in range(g.rows)]), "ag_sel")
                       if g.rows > 1 else self.ag[0]),
            e2["s2"].eq(e1["s2"]), e2["zs2"].eq(e1["zs2"]),
        ]
        return e2

    def _products(self, m, e2):
        """E2 -> E3: the two dequantization products (DSP48E2 M registers)."""
        g = self.geometry
        e3 = self._delay(m, e2, "e3")
        e3["mP"] = Signal(scaled_shape(g.pg_shape), name="mP")
        e3["mA"] = Signal(scaled_shape(g.ag_shape), name="mA")
        m.d.sync += [e3["mP"].eq(e2["s2"] * e2["p"]), e3["mA"].eq(e2["zs2"] * e2["a"])]
        return e3

    def _accumulate(self, m, e3):
        """E3: int32 accumulation (wraps) through the ring of accumulators: the
        head is cell i's sum because every group pushes exactly `cells` values."""
        n = self.geometry.cells
        ring = [Signal(signed(ACC_BITS), name=f"acc_{i}", reset_less=True) for i in range(n)]
        m.d.comb += self.wr_data.eq(Mux(e3["fg"], 0, ring[0]) + e3["mP"] - e3["mA"])
        with m.If(e3["valid"]):
            m.d.sync += [ring[i].eq(ring[i + 1]) for i in range(n - 1)]
            m.d.sync += ring[n - 1].eq(self.wr_data)
        for i in range(n):
            m.d.comb += self.wr_en[i].eq(e3["valid"] & e3["lg"] & is_const(e3["idx"], i))
        m.d.comb += self.done.eq(self.wr_en[n - 1])
