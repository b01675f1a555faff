"""Formal harness of hdl.sfu.SFU (cmd, x -> out, the `error` and `busy` flags)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.hdl import Assume, Module, Mux, Signal

from golden.sfu_config import X_BITS, SFUHWConfig
from hdl import sfu as rtl

from .harness import Harness
from .monitors import counter_width, port_faults, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["SFUHarness", "SMALL", "K_MAX", "checks"]

#: One lane, a four-element buffer.
SMALL = SFUHWConfig(max_k=4, lanes=1)
#: The proofs' cmds carry k <= K_MAX (an assumption on the environment, so that a
#: bounded check sees whole ops; the counters are the same at any k).
K_MAX = 4


class SFUHarness(Harness):
    """Formal harness of hdl.sfu.SFU: free cmd (k <= K_MAX) and x sources under
    the stream protocol, out taken by a checked sink (property groups and
    faults: the tables below)."""

    block = "sfu"
    groups = {
        "stream": "out: valid held until ready, payload stable while stalled (the "
                  "element beats and the TS / argmax scalar beats)",
        "beats": "per good cmd k/lanes x beats and the op's out beats (quant_a8 1 + n, "
                 "argmax 1, the others n; rope over a k that is not whole heads none); a "
                 "refused cmd (k = 0, k > max_k buffered, k not whole beats, bad rope d or "
                 "requant bits) takes nothing and sets error: none lost (idle only with "
                 "nothing owed) or duplicated",
        "reset": "the cycle after reset: idle, no out beat, no error",
        "cover": "reachable: the last out beat of a quant_a8, of an rmsnorm and of an "
                 "argmax; a refused cmd",
    }
    faults = {
        **port_faults("an out", "an x", taker="the SFU",
                      names=("glitch_payload", "dup_beat", "lose_input", "valid_after_reset")),
    }

    def make_block(self) -> rtl.SFU:
        """An SFU of `config` (every fault is a port fault)."""
        return rtl.SFU(self.config)

    def build(self, m: Module, past: Past, dut: rtl.SFU, peek: Internals) -> None:
        """Drive cmd and x (losing a beat with fault `lose_input`) from free
        sources, tap out (the port faults) into a checked sink, and assert each
        active group's properties against the SFU's state and the beats owed per
        cmd."""
        c = self.config
        L = c.lanes
        cmd = source(m, past, dut.cmd, "cmd")
        x = source(m, past, dut.x, "x", fault=self.broken == "lose_input")
        port_fault = self.broken if self.broken in ("glitch_payload", "dup_beat",
                                                    "valid_after_reset") else None
        o = tap(m, past, dut.out, "out", port_fault)
        out = sink(m, past, o, "out", check=self.checker("stream"))

        # the out register's two sources never meet: the scalar beat (TS in DIV,
        # argmax's index in EMIT) waits with the element pipeline empty
        st = {name: peek["state"] == i for i, name in enumerate(rtl._STATES)}
        sc_valid = peek["sc_valid"]
        vs = [peek[f"v{i}"] for i in range(1, rtl.DEPTH + 1)]
        self.check(m, "stream", sc_valid == (st["DIV"] & sc_valid | st["EMIT"]),
                   "a scalar beat waits only in DIV (TS) or EMIT (argmax)")
        for v in vs:
            with m.If(v):
                self.check(m, "stream", st["RUN"] & ~sc_valid,
                           "element beats in flight only in a pass")
        self.check(m, "stream", peek["state"] < len(rtl._STATES), "state in range")

        cp = dut.cmd.payload
        m.d.comb += Assume(cp.k <= K_MAX, f"cmd.k <= {K_MAX}")
        m.d.comb += Assume(cp.p.rope.d <= K_MAX, f"rope's d <= {K_MAX}")
        op = {n: cp.op == code for n, code in rtl.OP_CODE.items()}
        k, d, bits = cp.k[:3], cp.p.rope.d[:3], cp.p.requant.bits
        buffered = op["quant_a8"] | op["rmsnorm"] | op["rope"]
        lb = L.bit_length() - 1
        bad = (k == 0) | (buffered & (k > c.max_k))
        if lb:
            bad = bad | (k[:lb] != 0)
        bad = bad | (op["rope"] & ((d == 0) | (d > k) | (d[:lb + 1] != 0)))
        bad = bad | (op["requant"] & ((bits < 2) | (bits > X_BITS)))
        whole_heads = Signal(name="ref_rope_whole_heads")
        m.d.comb += whole_heads.eq(0)
        for kk in range(1, K_MAX + 1):
            for dd in range(1, kk + 1):
                with m.If((k == kk) & (d == dd)):
                    m.d.comb += whole_heads.eq(kk % dd == 0)
        n = k >> lb
        outs = Mux(op["quant_a8"], n + 1, Mux(op["argmax"], 1,
                                              Mux(op["rope"] & ~whole_heads, 0, n)))
        x_owed = Signal(range(K_MAX + 1), name="x_owed")
        o_owed = Signal(range(K_MAX + 2), name="out_owed")
        good = cmd & ~bad
        m.d.sync += [x_owed.eq(x_owed + Mux(good, n, 0) - x),
                     o_owed.eq(o_owed + Mux(good, outs, 0) - out)]
        refused_rope = Signal(name="ref_rope_refused")   # error once its vector is in
        with m.If(cmd):
            m.d.sync += refused_rope.eq(op["rope"] & ~bad & ~whole_heads)
        state = peek["state"]
        idle = state == 0
        self.check(m, "beats", ~x | (x_owed != 0), "no x beat beyond k/lanes")
        self.check(m, "beats", ~out | (o_owed != 0), "no out beat beyond the op's")
        with m.If(cmd):
            self.check(m, "beats", (x_owed == 0) & (o_owed == 0),
                       "a cmd is taken once the previous op is done")
        with m.If(idle):
            self.check(m, "beats", (x_owed == 0) & (o_owed == 0), "idle only with nothing owed")
        self.check(m, "beats", dut.busy == ~idle, "busy exactly while an op runs")
        with m.If(past.ok & past(cmd, "cmd_xfer")):
            self.check(m, "beats", dut.error == past(bad, "cmd_bad"),
                       "error rises exactly for a refused cmd, a good one clears it")
        with m.If(past.ok & past(cmd & bad, "cmd_refused")):
            self.check(m, "beats", idle & ~dut.x.ready & ~dut.out.valid,
                       "after a refused cmd nothing runs")
        with m.If(idle & refused_rope & past.ok & ~past(idle, "was_idle")):
            self.check(m, "beats", dut.error, "rope over a k of no whole heads: error")

        with m.If(~past.ok):
            self.check(m, "reset", idle & ~o.valid & ~dut.error & ~dut.busy,
                       "idle, no out beat, no error after reset")

        for name in ("quant_a8", "rmsnorm", "argmax"):
            op_reg = peek["op"] == rtl.OP_CODE[name]
            self.cover(m, "cover", out & (o_owed == 1) & op_reg, f"a {name}'s last out beat")
        self.cover(m, "cover", cmd & bad & (k != 0), "a cmd with k != 0 is refused")


def _name(c: SFUHWConfig) -> str:
    return f"lanes={c.lanes} max_k={c.max_k} (cmd.k <= {K_MAX})"


def checks() -> list[Check]:
    """The SFU's checks on SMALL: proofs (beats by BMC), the cover and the fault
    demonstrations."""
    from .checks import Check
    H, S = SFUHarness, SMALL
    n = _name(S)
    return [
        Check(H, S, n, "stream", "prove", 4, quick=True),
        Check(H, S, n, "beats", "bmc", 30,
              note="k-induction would need the owed counts tied to the pass counters, "
                   "the pipeline's valid bits and the gain / divider steps; 30 cycles hold "
                   "whole streaming ops, rope, argmax and quant_a8 of k <= 2, and rmsnorm's "
                   "first passes"),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 45),
        Check(H, S, n, "stream", "bmc", 20, broken="glitch_payload"),
        Check(H, S, n, "beats", "bmc", 15, broken="dup_beat"),
        Check(H, S, n, "beats", "bmc", 8, broken="lose_input"),
        Check(H, S, n, "reset", "bmc", 3, broken="valid_after_reset", quick=True),
    ]
