"""Formal harness of hdl.mixpe.MixPE (the array with its four streams)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.hdl import Assert, Module, Mux, Signal

from golden.mixpe_config import MixPEConfig
from hdl import mixpe as rtl

from .harness import Harness
from .monitors import Past, counter_width, port_faults, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals

__all__ = ["MixPEHarness", "SMALL", "DEMO", "checks"]

#: The smallest legal configurations worth proving: two groups per tile, and
#: two rows (a result tile of two beats).
SMALL = MixPEConfig(bits=2, group=32, rows=2, cols=1, K=64)
#: One group per tile: the fault demonstrations that need two whole tiles.
DEMO = MixPEConfig(bits=2, group=32, rows=2, cols=1, K=32)


class _NoClaim(rtl.MixPE):
    """Fault `ready_gating`: a tile's last beat is accepted while the previous
    tile's results are still being read (the `claimed` gate dropped)."""

    def _input_side(self, m, claimed):
        return super()._input_side(m, Signal(name="claim_ignored"))


class MixPEHarness(Harness):
    """Formal harness of hdl.mixpe.MixPE: free act, code and scale sources under the
    stream protocol, the result taken by a checked sink (property groups and
    faults: the tables below)."""

    block = "mixpe"
    groups = {
        "stream": "result: valid held until ready, payload stable while stalled "
                  "(act/code/scale assumed to keep the protocol)",
        "beats": "act and code beats transfer together, one scale beat at each group's "
                 "first k, rows result beats per tile of K input beats: none lost (each "
                 "result within the pipeline latency) or duplicated",
        "counters": "the group counter (k in group) and tile counter (group in tile) "
                    "follow the accepted beats; the output row counter and the bank claim "
                    "follow the result beats",
        "reset": "the cycle after reset: no result valid, counters and claim cleared",
        "cover": "reachable: a stalled result, a tile's last result beat, the next tile's "
                 "last input beat waiting for the bank",
    }
    helpers = {"stream": ("counters",), "beats": ("counters",)}
    faults = {
        "ready_gating": "the tile's last beat no longer waits for the bank "
                        "(MixPE._input_side without the claim)",
        **port_faults("a result", "an act", taker="MixPE"),
    }

    def make_block(self) -> rtl.MixPE:
        """A MixPE of `config`; with fault `ready_gating` the subclass that ignores
        the bank claim."""
        return (_NoClaim if self.broken == "ready_gating" else rtl.MixPE)(self.config)

    def build(self, m: Module, past: Past, dut: rtl.MixPE, peek: Internals) -> None:
        """Drive act (losing a beat with fault `lose_input`), code and scale from
        free sources, tap result (the port faults) into a checked sink, and assert
        each active group's properties against a reference position in the tile,
        the result beats owed and the cycles they have waited."""
        cfg = self.config
        act = source(m, past, dut.act, "act", fault=self.broken == "lose_input")
        code = source(m, past, dut.code, "code")
        scale = source(m, past, dut.scale, "scale")
        port_fault = self.broken if self.broken in ("glitch_payload", "dup_beat", "lose_beat",
                                                    "valid_after_reset") else None
        res = tap(m, past, dut.result, "result", port_fault)
        out = sink(m, past, res, "result", check=self.checker("stream"))

        # the reference position of the next input beat: k of the tile
        hk = Signal(counter_width(cfg.K - 1), name="ref_k")
        with m.If(act):
            m.d.sync += hk.eq(Mux(hk == cfg.K - 1, 0, hk + 1))
        tile_in = act & (hk == cfg.K - 1)
        # result beats owed: rows per finished tile, less the beats out
        pend = Signal(counter_width(2 * cfg.rows), name="pending")
        m.d.sync += pend.eq(pend + Mux(tile_in, cfg.rows, 0) - out)
        wait = Signal(counter_width(rtl.pipeline_latency(cfg) + 1), name="wait")
        with m.If((pend != 0) & ~res.valid):
            with m.If(wait != (1 << len(wait)) - 1):
                m.d.sync += wait.eq(wait + 1)
        with m.Else():
            m.d.sync += wait.eq(0)

        self.check(m, "beats", act == code, "act and code beats transfer together")
        self.check(m, "beats", scale == (act & (hk % cfg.group == 0)),
                   "one scale beat, with each group's first act/code beat")
        self.check(m, "beats", ~out | (pend != 0), "no result beat beyond rows per tile")
        self.check(m, "beats", pend <= cfg.rows, "at most one tile of results waits")
        self.check(m, "beats", ~res.valid | (pend != 0), "no result valid without a tile owed")
        self.check(m, "beats", wait <= rtl.pipeline_latency(cfg),
                   "a tile's results appear within the pipeline latency")

        k_in_group, group_idx = peek["k_in_group"], peek["group_idx"]
        out_row, claimed, out_valid = peek["out_row"], peek["claimed"], peek["out_valid"]
        self.check(m, "counters", k_in_group == hk % cfg.group,
                   "k in group = accepted beats mod group")
        self.check(m, "counters", group_idx == hk // cfg.group,
                   "group in tile = accepted beats / group (mod groups)")
        self.check(m, "counters", claimed == (pend != 0),
                   "the bank is claimed exactly while a tile's results are owed")
        self.check(m, "counters", ~out_valid | (out_row == cfg.rows - pend),
                   "the output row is the next row owed")
        self.check(m, "counters", out_row < cfg.rows, "output row in range")

        self.cover(m, "cover", res.valid & ~res.ready, "a result waits for ready")
        self.cover(m, "cover", out & (pend == 1), "a tile's last result beat transfers")
        self.cover(m, "cover", dut.act.valid & dut.code.valid & (hk == cfg.K - 1) & claimed,
                   "a tile's last beat waits for the bank")

        rst = Signal(name="was_reset")
        m.d.comb += rst.eq(~past.ok)
        with m.If(rst):
            self.check(m, "reset", ~res.valid, "no result valid after reset")
            self.check(m, "reset", (k_in_group == 0) & (group_idx == 0) & (out_row == 0),
                       "counters cleared by reset")
            self.check(m, "reset", ~claimed, "claim cleared by reset")


def _name(c: MixPEConfig) -> str:
    return f"bits={c.bits} group={c.group} rows={c.rows} cols={c.cols} K={c.K}"


def checks() -> list[Check]:
    """MixPE's checks: the proofs on SMALL; the cover and the fault
    demonstrations that need two whole tiles on DEMO, the others on SMALL."""
    from .checks import Check
    H, S, D = MixPEHarness, SMALL, DEMO
    return [
        Check(H, S, _name(S), "stream", "prove", 16, quick=True),
        Check(H, S, _name(S), "beats", "prove", 16, quick=True),
        Check(H, S, _name(S), "counters", "prove", 16),
        Check(H, S, _name(S), "reset", "prove", 3, quick=True),
        Check(H, D, _name(D), "cover", "cover", 80),
        Check(H, D, _name(D), "stream", "bmc", 80, broken="ready_gating"),
        Check(H, D, _name(D), "stream", "bmc", 45, broken="glitch_payload"),
        Check(H, D, _name(D), "beats", "bmc", 45, broken="dup_beat"),
        Check(H, D, _name(D), "beats", "bmc", 60, broken="lose_beat"),
        Check(H, S, _name(S), "beats", "bmc", 4, broken="lose_input", quick=True),
        Check(H, S, _name(S), "counters", "bmc", 4, broken="lose_input"),
        Check(H, S, _name(S), "reset", "bmc", 3, broken="valid_after_reset"),
    ]
