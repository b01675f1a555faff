"""Formal harness of hdl.sparse_dsp.SparseDSP (ctrl, act, weight, scale ->
result)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.hdl import Assume, Module, Mux, Signal
from amaranth.lib import data

from golden.sparse_dsp_config import PATTERNS, SparseDSPConfig, TileMode, pattern_name
from hdl import sparse_dsp as rtl

from .harness import Harness
from .monitors import counter_width, port_faults, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["SparseDSPHarness", "SMALL", "checks"]

#: Two DSP groups of four stages (spans 1 and 2), two W4A8 quantization groups.
SMALL = SparseDSPConfig(L=8, group_len=4, K=64, qgroup=32)


class _NoStall(rtl.SparseDSP):
    """Fault `ready_gating`: the pipeline no longer stops when a tile's result
    would overwrite the untaken one (`en` held high)."""

    def _result(self, m, en, qsum, sb_q):
        super()._result(m, en, qsum, sb_q)
        m.d.comb += en.eq(1)    # the later assignment wins


def _modes(cfg: SparseDSPConfig):
    """(pattern code, span_log, w4) -> (beats per tile, beats per quantization group)."""
    out = {}
    for code, nm in enumerate(PATTERNS):
        for sl, span in enumerate(cfg.spans):
            for w4 in (0, 1):
                tm = TileMode(pattern=pattern_name(nm), mode="w4a8" if w4 else "w8a8",
                              span=span)
                out[code, sl, w4] = (tm.beats(cfg), tm.qgroup_beats(cfg))
    return out


class SparseDSPHarness(Harness):
    """Formal harness of hdl.sparse_dsp.SparseDSP: free ctrl, act, weight and
    scale sources under the stream protocol (ctrl naming a legal pattern and
    span), the result taken by a checked sink (property groups and faults: the
    tables below)."""

    block = "sparse_dsp"
    groups = {
        "stream": "result: valid held until ready, payload stable while stalled",
        "beats": "act and weight beats transfer together, K/window per tile (from the "
                 "tile's ctrl beat); one ctrl beat with each tile's first beat; W4A8: one "
                 "scale beat with each quantization group's first beat; one result beat "
                 "per tile: every tile owed is in the pipeline (none lost) and appears "
                 "within the pipeline latency, none beyond (none duplicated)",
        "counters": "the beat counter and the tile's mode follow the accepted beats",
        "reset": "the cycle after reset: no result valid, not in a tile, pipeline empty",
        "cover": "reachable: a stalled result with a tile behind it, results of a dense "
                 "W8A8 and of a 1:4 W4A8 tile",
    }
    helpers = {"beats": ("counters",)}
    faults = {
        "ready_gating": "the pipeline no longer stops for result.ready "
                        "(SparseDSP._result's en)",
        **port_faults("a result", "an act"),
    }

    def make_block(self) -> rtl.SparseDSP:
        """A SparseDSP of `config`; with fault `ready_gating` the subclass whose
        pipeline does not stop for an untaken result."""
        return (_NoStall if self.broken == "ready_gating" else rtl.SparseDSP)(self.config)

    def build(self, m: Module, past: Past, dut: rtl.SparseDSP, peek: Internals) -> None:
        """Drive ctrl, act (losing a beat with fault `lose_input`), weight and scale
        from free sources, tap result (the port faults) into a checked sink, and
        assert each active group's properties against a reference beat of the tile,
        the tile's mode (from its ctrl beat) and the results owed."""
        cfg = self.config
        ctrl = source(m, past, dut.ctrl, "ctrl")
        act = source(m, past, dut.act, "act", fault=self.broken == "lose_input")
        weight = source(m, past, dut.weight, "weight")
        scale = source(m, past, dut.scale, "scale")
        cp = dut.ctrl.payload
        m.d.comb += Assume(cp.pattern < len(PATTERNS), "ctrl: a pattern of PATTERNS")
        m.d.comb += Assume(cp.span_log < len(cfg.spans), "ctrl: a span of config.spans")
        port_fault = self.broken if self.broken in ("glitch_payload", "dup_beat", "lose_beat",
                                                    "valid_after_reset") else None
        res = tap(m, past, dut.result, "result", port_fault)
        out = sink(m, past, res, "result", check=self.checker("stream"))

        # reference: beat of the tile, and the tile's beats / quantization-group beats
        modes = _modes(cfg)
        nmax = max(b for b, _ in modes.values())
        hb = Signal(counter_width(nmax - 1), name="ref_beat")
        nb = Signal(counter_width(nmax), name="ref_beats")
        nq = Signal(counter_width(nmax), name="ref_qbeats")
        w4 = Signal(name="ref_w4")
        first = hb == 0
        cur_nb, cur_nq, cur_w4 = (Signal.like(nb, name="ref_cur_beats"),
                                  Signal.like(nq, name="ref_cur_qbeats"), Signal(name="ref_cur_w4"))
        m.d.comb += [cur_nb.eq(nb), cur_nq.eq(nq), cur_w4.eq(w4)]
        with m.If(first):
            m.d.comb += cur_w4.eq(cp.w4)
            for (code, sl, w), (b, q) in modes.items():
                with m.If((cp.pattern == code) & (cp.span_log == sl) & (cp.w4 == w)):
                    m.d.comb += [cur_nb.eq(b), cur_nq.eq(q)]
        last = hb == cur_nb - 1
        with m.If(act):
            m.d.sync += [hb.eq(Mux(last, 0, hb + 1)), nb.eq(cur_nb), nq.eq(cur_nq),
                         w4.eq(cur_w4)]
        qfirst = Signal(name="ref_qfirst")
        m.d.comb += qfirst.eq(0)
        for q in sorted({q for _, q in modes.values()}):
            with m.If(cur_nq == q):
                m.d.comb += qfirst.eq(hb % q == 0)

        pend = Signal(8, name="pending")
        m.d.sync += pend.eq(pend + (act & last) - out)
        out_valid = peek["out_valid"]
        sbl = rtl._sideband(cfg)
        n_sb = rtl.chain_latency(cfg) + 2
        sbs = [data.View(sbl, peek[f"sb{d}"]) for d in range(1, n_sb + 1)]
        en = ~(out_valid & ~dut.result.ready & sbs[-1].valid & sbs[-1].tlast)
        wait = Signal(counter_width(rtl.pipeline_latency(cfg) + 1), name="wait")
        with m.If((pend != 0) & ~res.valid):
            with m.If(en & (wait != (1 << len(wait)) - 1)):
                m.d.sync += wait.eq(wait + 1)
        with m.Else():
            m.d.sync += wait.eq(0)
        bound = n_sb + 1    # the sideband's stages and the result register

        self.check(m, "beats", act == weight, "act and weight beats transfer together")
        self.check(m, "beats", ctrl == (act & first), "one ctrl beat, with a tile's first beat")
        self.check(m, "beats", scale == (act & cur_w4 & qfirst),
                   "W4A8: one scale beat, with each quantization group's first beat")
        self.check(m, "beats", ~out | (pend != 0), "no result beat beyond one per tile")
        self.check(m, "beats", ~res.valid | (pend != 0), "no result valid without a tile owed")
        self.check(m, "beats", pend <= bound, "no more tiles owed than the pipeline's stages hold")
        self.check(m, "beats", wait <= rtl.pipeline_latency(cfg),
                   "a tile's result appears within the pipeline latency (enabled cycles)")

        in_tile, beat = peek["in_tile"], peek["beat"]
        cur = data.View(rtl.CTRL, peek["cur"])
        self.check(m, "counters", beat == hb, "beat counter = accepted beats of the tile")
        self.check(m, "counters", in_tile == ~first, "in_tile exactly inside a tile")
        self.check(m, "counters", hb < cur_nb, "the reference beat is inside its tile")
        with m.If(in_tile):
            self.check(m, "counters", cur.w4 == w4, "the tile's W4A8 flag")
            self.check(m, "counters", (cur.pattern < len(PATTERNS))
                       & (cur.span_log < len(cfg.spans)), "the tile's mode is a legal one")
            for (code, sl, w), (b, q) in modes.items():
                with m.If((cur.pattern == code) & (cur.span_log == sl) & (cur.w4 == w)):
                    self.check(m, "counters", (nb == b) & (nq == q),
                               "the tile's mode gives the reference's beats")
        owed = sum((s.valid & s.tlast) for s in sbs) + out_valid
        self.check(m, "beats", pend == owed,
                   "the tiles owed are the result register's and the sideband's (none lost)")

        self.cover(m, "cover", res.valid & ~res.ready & sbs[-1].valid & sbs[-1].tlast,
                   "a result waits with the next tile's result behind it")
        self.cover(m, "cover", out & ~w4 & (nb == modes[0, len(cfg.spans) - 1, 0][0])
                   & (pend == 1), "a dense W8A8 tile's result transfers")
        self.cover(m, "cover", out & w4 & (nq != nb) & (nb == modes[2, 0, 1][0])
                   & (pend == 1), "a 1:4 W4A8 tile's result transfers")

        with m.If(~past.ok):
            self.check(m, "reset", ~res.valid, "no result valid after reset")
            self.check(m, "reset", ~in_tile & (beat == 0), "not in a tile after reset")
            self.check(m, "reset", ~sum(s.valid for s in sbs).bool(), "pipeline empty after reset")


def _name(c: SparseDSPConfig) -> str:
    return f"L={c.L} group_len={c.group_len} K={c.K} qgroup={c.qgroup}"


def checks() -> list[Check]:
    """SparseDSP's checks on SMALL: proofs, the cover and the fault
    demonstrations."""
    from .checks import Check
    H, S = SparseDSPHarness, SMALL
    n = _name(S)
    return [
        Check(H, S, n, "stream", "prove", 4),
        Check(H, S, n, "beats", "prove", 12, quick=True),
        Check(H, S, n, "counters", "prove", 12),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 40),
        Check(H, S, n, "stream", "bmc", 30, broken="ready_gating"),
        Check(H, S, n, "stream", "bmc", 30, broken="glitch_payload"),
        Check(H, S, n, "beats", "bmc", 30, broken="dup_beat"),
        Check(H, S, n, "beats", "bmc", 40, broken="lose_beat"),
        Check(H, S, n, "beats", "bmc", 4, broken="lose_input"),
        Check(H, S, n, "counters", "bmc", 4, broken="lose_input"),
        Check(H, S, n, "reset", "bmc", 3, broken="valid_after_reset"),
    ]
