"""Formal harness of hdl.lut.LUTBlock (four streams, the run-time `bits` port)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.hdl import Assume, Cat, Module, Mux, Signal

from golden.lut_config import LUT_PLANE_BITS, LUTConfig
from hdl import lut as rtl

from .harness import Harness
from .monitors import counter_width, free, port_faults, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["LUTHarness", "SMALL", "checks"]

#: Two column slices (cols / lanes), two groups of eight chunks per tile.
SMALL = LUTConfig(rows=1, cols=2, lanes=1, K=64, group=32)


class _NoStall(rtl.LUTBlock):
    """Fault `ready_gating`: the pipeline advances while the result waits
    (`adv` no longer looks at result.ready): a later slice's result overwrites
    the waiting one."""

    def _walker_state(self, m):
        w = super()._walker_state(m)
        m.d.comb += w.adv.eq(self.scale.valid | ~w.scale_due)   # the later assignment wins
        return w


class LUTHarness(Harness):
    """Formal harness of hdl.lut.LUTBlock: free act, code and scale sources under
    the stream protocol, a free legal `bits` held inside a tile, the result taken
    by a checked sink (property groups and faults: the tables below)."""

    block = "lut"
    groups = {
        "stream": "result: valid held until ready, payload stable while stalled",
        "beats": "one act beat with each chunk's first code beat; scale beats follow the "
                 "groups (slices per group, none early); slices result beats per tile: "
                 "every beat owed is in the pipeline (none lost), none beyond (none "
                 "duplicated)",
        "latency": "every owed result beat is valid within latency(config) advancing "
                   "cycles (the pipeline advances unless result or scale stall it)",
        "counters": "plane, slice, chunk-in-group (group counter) and group (tile "
                    "counter) registers follow the accepted code beats; in_tile and the "
                    "sampled plane count match the tile; no error for legal `bits`; the "
                    "pipeline stages and the DQ walk hold what the accepted beats put there",
        "reset": "the cycle after reset: no result valid, not in a tile, no error, walker idle",
        "cover": "reachable: a stalled result, a tile's last result beat, a W2 tile's "
                 "first beat after a W1 tile",
    }
    helpers = {"stream": ("counters",), "beats": ("counters",)}
    faults = {
        "ready_gating": "the pipeline no longer stops for result.ready "
                        "(LUTBlock._walker_state's adv)",
        **port_faults("a result", "a code"),
    }

    def make_block(self) -> rtl.LUTBlock:
        """A LUTBlock of `config`; with fault `ready_gating` the subclass whose
        pipeline does not stop for result.ready."""
        return (_NoStall if self.broken == "ready_gating" else rtl.LUTBlock)(self.config)

    def build(self, m: Module, past: Past, dut: rtl.LUTBlock, peek: Internals) -> None:
        """Drive act, code (losing a beat with fault `lose_input`) and scale from
        free sources and `bits` from a free legal plane count, tap result (the port
        faults) into a checked sink, and assert each active group's properties
        against a reference plane / slice / chunk position and the scale and result
        beats owed."""
        cfg = self.config
        S, GC, NC = cfg.slices, cfg.group_chunks, cfg.chunks
        act = source(m, past, dut.act, "act")
        code = source(m, past, dut.code, "code", fault=self.broken == "lose_input")
        scale = source(m, past, dut.scale, "scale")
        port_fault = self.broken if self.broken in ("glitch_payload", "dup_beat", "lose_beat",
                                                    "valid_after_reset") else None
        res = tap(m, past, dut.result, "result", port_fault)
        out = sink(m, past, res, "result", check=self.checker("stream"))

        # the reference position of the next code beat: plane (from planes-1
        # down to 0), slice, chunk of the tile; the plane count sampled at the
        # tile's first beat
        pl = Signal(2, name="ref_plane")
        sl = Signal(counter_width(S - 1), name="ref_slice")
        ch = Signal(counter_width(NC - 1), name="ref_chunk")
        planes = Signal(3, name="ref_planes")
        start = Signal(name="ref_tile_start")
        m.d.comb += start.eq((pl == 0) & (sl == 0) & (ch == 0) & (planes == 0))
        bits = free(m, dut.bits, "bits")
        m.d.comb += Assume(Cat(*[bits == b for b in LUT_PLANE_BITS]).any(),
                           "bits is a plane count of LUT_PLANE_BITS")
        with m.If(~start):
            m.d.comb += Assume(bits == planes, "bits holds inside a tile")
        cur_planes = Mux(start, bits, planes)
        top = Signal(2, name="ref_top")
        m.d.comb += top.eq(cur_planes - 1)
        cur_pl = Mux(start, top, pl)
        last_beat = (cur_pl == 0) & (sl == S - 1) & (ch == NC - 1)
        group_end = (cur_pl == 0) & (sl == S - 1) & (ch % GC == GC - 1)
        with m.If(code):
            m.d.sync += planes.eq(Mux(last_beat, 0, cur_planes))
            with m.If(cur_pl == 0):
                m.d.sync += pl.eq(top)
                with m.If(sl == S - 1):
                    m.d.sync += [sl.eq(0), ch.eq(Mux(ch == NC - 1, 0, ch + 1))]
                with m.Else():
                    m.d.sync += sl.eq(sl + 1)
            with m.Else():
                m.d.sync += pl.eq(cur_pl - 1)

        # owed scale beats (slices per finished group) and result beats (slices per tile)
        sc_owed = Signal(counter_width(2 * S), name="scale_owed")
        m.d.sync += sc_owed.eq(sc_owed + Mux(code & group_end, S, 0) - scale)
        pend = Signal(counter_width(2 * S), name="pending")
        m.d.sync += pend.eq(pend + Mux(code & last_beat, S, 0) - out)
        adv = peek["adv"]
        wait = Signal(counter_width(rtl.latency(cfg) + 1), name="wait")
        with m.If((pend != 0) & ~res.valid):
            with m.If(adv & (wait != (1 << len(wait)) - 1)):
                m.d.sync += wait.eq(wait + 1)
        with m.Else():
            m.d.sync += wait.eq(0)

        first_of_chunk = (sl == 0) & (cur_pl == top)
        self.check(m, "beats", act == (code & first_of_chunk),
                   "one act beat, with each chunk's first code beat")
        self.check(m, "beats", ~scale | (sc_owed != 0), "no scale beat before its group ends")
        self.check(m, "beats", sc_owed <= S, "scale beats keep up with the groups")
        self.check(m, "beats", ~out | (pend != 0), "no result beat beyond slices per tile")
        self.check(m, "beats", ~res.valid | (pend != 0), "no result valid without a beat owed")
        self.check(m, "beats", pend <= S, "at most one tile of results owed")
        self.check(m, "latency", wait <= rtl.latency(cfg),
                   "a tile's results appear within the latency (advancing cycles)")

        # what the pipeline holds: code beats in S1..S3 (their flags), the DQ
        # lane's walk (E0..E3, cell i of slice i // rl), the result register
        F = rtl._FLAGS
        stages = [(peek["v_s1"], peek.get("", "$signal", len(F))),
                  (peek["v_s2"], peek["flags_s2"]), (peek["v_s3"], peek["flags_s3"])]

        def flag(flags, name):
            return flags[F.index(name)]
        group_last = [v & flag(f, "last_plane") & flag(f, "last_slice") & flag(f, "last_cg")
                      for v, f in stages]
        tile_last = [g & flag(f, "last_group") for g, (_, f) in zip(group_last, stages)]
        rl = cfg.rows * rtl.dq_lanes_per_unit(cfg)
        cells = rtl.dq_lane_length(cfg)
        e = [(peek["dq_0", f"e{k}_valid"], peek["dq_0", f"e{k}_lg"], peek["dq_0", f"e{k}_idx"])
             for k in range(4)]
        in_lane = [v & lg & (idx % rl == rl - 1) for v, lg, idx in e]
        ahead = Signal(counter_width(S), name="walk_slices_ahead")   # not yet at E0
        m.d.comb += ahead.eq(0)
        for i in range(cells):
            with m.If(e[0][2] == i):
                m.d.comb += ahead.eq(sum(1 for c in range(i + 1, cells) if c % rl == rl - 1))
        held = (peek["out_valid"] + S * sum(tile_last) + sum(in_lane)
                + Mux(e[0][0] & e[0][1], ahead, 0))
        w_valid, w_s = peek["w_valid"], peek["w_s"]
        scale_held = S * sum(group_last) + Mux(w_valid, S - 1 - w_s, 0)
        self.check(m, "beats", pend == held,
                   "result beats owed = the pipeline's last-group slices and the result "
                   "register (none lost)")
        self.check(m, "beats", sc_owed == scale_held,
                   "scale beats owed = the groups in S1..S3 and the walk's slices ahead")
        # the next beat's index in its group: what follows a group's last beat
        # (in the pipeline, or walked) is at most a few beats of the next group
        bg = Signal(range(GC * S * 4), name="ref_beat_in_group")
        m.d.comb += bg.eq(Mux(start, 0, (ch % GC) * S * planes + sl * planes + (planes - 1 - pl)))
        first_group = ch < GC
        for k, (g, (_, f)) in enumerate(zip(group_last, stages), start=1):
            with m.If(g):
                self.check(m, "counters", (bg <= k - 1) & (flag(f, "last_group") == first_group),
                           "a group's last beat in the pipeline is the last beats' group")
        for k, (v, lg, i) in enumerate(e):
            with m.If(v):
                self.check(m, "counters", (bg <= 3 + i + k) & (lg == first_group),
                           "a walked group is the last beats' group")
        self.check(m, "counters", sum(group_last) <= 1, "one group's last beat in S1..S3 at most")
        with m.If(sum(group_last) != 0):
            self.check(m, "counters", ~w_valid & ~sum(v for v, _, _ in e).bool(),
                       "a group's last beat follows the previous walk out of the lane")
        for k in range(3):
            (v0, lg0, i0), (v1, lg1, i1) = e[k], e[k + 1]
            with m.If(v1 & (i1 != cells - 1)):
                self.check(m, "counters", v0 & (i0 == i1 + 1) & (lg0 == lg1),
                           "the lane's E stages hold consecutive cells of one walk")
            with m.If(v0 & (i0 != 0)):
                self.check(m, "counters", v1 & (i1 == i0 - 1) & (lg0 == lg1),
                           "the lane's E stages hold consecutive cells of one walk")
        for v, _, i in e:
            self.check(m, "counters", ~v | (i < cells), "the lane's cell index in range")
        self.check(m, "counters", (w_s < S) & (peek["w_rl"] < rl), "the walker in range")
        self.check(m, "counters", w_valid == e[0][0], "walker and DQ lane in lockstep")
        with m.If(w_valid):
            self.check(m, "counters", e[0][2] == w_s * rl + peek["w_rl"],
                       "walker and DQ lane at the same cell")

        in_tile = peek["in_tile"]
        self.check(m, "counters", in_tile == ~start, "in_tile exactly inside a tile")
        with m.If(in_tile):
            self.check(m, "counters", peek["i_reg"] == pl, "plane counter")
            self.check(m, "counters", peek["b_reg"] == planes, "sampled plane count")
        self.check(m, "counters", peek["s"] == sl, "slice counter")
        self.check(m, "counters", peek["cg"] == ch % GC, "chunk-in-group (group) counter")
        self.check(m, "counters", peek["j"] == ch // GC, "group-in-tile (tile) counter")
        self.check(m, "counters", ~dut.error, "no error for legal bits")

        self.cover(m, "cover", res.valid & ~res.ready, "a result waits for ready")
        self.cover(m, "cover", out & (pend == 1), "a tile's last result beat transfers")
        self.cover(m, "cover", code & start & (bits == 2) & (past(bits, "bits") == 1)
                   & (ch == 0), "a W2 tile starts right after a W1 tile")

        with m.If(~past.ok):
            self.check(m, "reset", ~res.valid, "no result valid after reset")
            self.check(m, "reset", ~in_tile & ~dut.error & ~peek["w_valid"],
                       "not in a tile, no error, walker idle after reset")


def _name(c: LUTConfig) -> str:
    return f"rows={c.rows} cols={c.cols} lanes={c.lanes} K={c.K} group={c.group}"


def checks() -> list[Check]:
    """LUTBlock's checks on SMALL: proofs (latency by BMC), the cover and the
    fault demonstrations."""
    from .checks import Check
    H, S = LUTHarness, SMALL
    n = _name(S)
    return [
        Check(H, S, n, "stream", "prove", 16),
        Check(H, S, n, "beats", "prove", 16, quick=True),
        Check(H, S, n, "latency", "bmc", 45,
              note="k-induction does not close (a withheld scale beat freezes the pipeline "
                   "for any k); the accounting of `beats` is the proven form"),
        Check(H, S, n, "counters", "prove", 16),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 75),
        Check(H, S, n, "stream", "bmc", 45, broken="ready_gating"),
        Check(H, S, n, "stream", "bmc", 45, broken="glitch_payload"),
        Check(H, S, n, "beats", "bmc", 45, broken="dup_beat"),
        Check(H, S, n, "beats", "bmc", 60, broken="lose_beat"),
        Check(H, S, n, "counters", "bmc", 4, broken="lose_input", quick=True),
        Check(H, S, n, "latency", "bmc", 60, broken="lose_beat"),
        Check(H, S, n, "reset", "bmc", 3, broken="valid_after_reset"),
    ]
