"""Formal harness of hdl.kv4_attention.KV4Unit (the decode core's cmd, query,
k, v -> out; the append path's append -> cache; the cache fill counter with
its `overflow` flag and the decode `error` flag)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.hdl import Module, Mux, Signal

from golden.kv4_attention_config import KV4Config
from hdl import kv4_attention as rtl

from .harness import Harness
from .monitors import counter_width, free, port_faults, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["KV4Harness", "SMALL", "checks"]

#: The narrowest legal unit: head_dim 32 in two chunks of 16 lanes, one head,
#: a two-token cache (max_t = 2) with one recent 8-bit token, no rotation.
SMALL = KV4Config(head_dim=32, lanes=16, max_t=2, heads=1, x_bits=6, logit_frac=2, p_frac=6,
                  out_frac=0, recip_bits=8, logit_bits=12, rotate=False, recent=1)


class _NoOverflow(rtl.KV4Unit):
    """Fault `overflow_flag`: the overflow flag never rises (a dropped token goes
    unreported)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self.overflow.eq(0)     # the later assignment wins
        return m


class KV4Harness(Harness):
    """Formal harness of hdl.kv4_attention.KV4Unit: free cmd, query, k, v and
    append sources under the stream protocol, cache_clear free, out and cache
    taken by checked sinks (property groups and faults: the tables below)."""

    block = "kv4_attention"
    groups = {
        "stream": "out and cache: valid held until ready; while stalled the registers each "
                  "payload is computed from (out: accumulators, wz, reciprocal, shift, "
                  "head/chunk/step, obuf; cache: token buffers, S, zeros, code buffers, "
                  "chunk/step) hold",
        "beats": "per good cmd: heads*chunks query beats, k_beats(T) K and V beats, "
                 "heads*chunks out beats, out only after the last V beat; per bad cmd "
                 "none; per appended token chunks cache beats (none for a dropped one): "
                 "none lost (idle only with nothing owed) or duplicated",
        "overflow": "the cache count follows the cached tokens and never passes max_t (no "
                    "wrap-around): an append beyond max_t is drained without cache beats "
                    "and raises `overflow` until cache_clear; a cmd with T = 0 or T > "
                    "max_t raises `error`, runs nothing and a good cmd clears it",
        "reset": "the cycle after reset: idle, no out/cache beat, count 0, no flags",
        "cover": "reachable: a decode step's last out beat, an append dropped at max_t, a "
                 "refused cmd",
    }
    helpers = {"beats": ("overflow",), "stream": ("overflow",)}
    faults = {
        "overflow_flag": "the overflow flag is never raised (KV4Unit with "
                         "overflow held at 0)",
        "drop_valid": "cache valid drops for a cycle while the beat waits (port)",
        **port_faults("an out", names=("lose_beat", "valid_after_reset")),
    }

    def make_block(self) -> rtl.KV4Unit:
        """A KV4Unit of `config`; with fault `overflow_flag` the subclass whose
        overflow flag stays 0."""
        return (_NoOverflow if self.broken == "overflow_flag" else rtl.KV4Unit)(self.config)

    def build(self, m: Module, past: Past, dut: rtl.KV4Unit, peek: Internals) -> None:
        """Drive cmd, query, k, v and append from free sources and cache_clear
        free, tap out and cache (the port faults) into checked sinks whose payload
        stability is asserted on the registers it is computed from, and assert each
        active group's properties against reference counts of tokens and beats owed."""
        c = self.config
        C, H = c.chunks, c.heads
        cmd = source(m, past, dut.cmd, "cmd")
        query = source(m, past, dut.query, "query")
        kx = source(m, past, dut.k, "k")
        vx = source(m, past, dut.v, "v")
        app = source(m, past, dut.append, "append")
        clear = free(m, dut.cache_clear, "cache_clear")
        out_s = tap(m, past, dut.out, "out",
                    self.broken if self.broken in ("valid_after_reset", "lose_beat")
                    else None)
        cache_s = tap(m, past, dut.cache, "cache",
                      "drop_valid" if self.broken == "drop_valid" else None)
        # the payloads' stability is asserted on the registers they are computed
        # from: a direct comparison is a miter of multipliers and dividers
        out_src = peek.matching(
            "core", r"acc\d+_\d+_\d+|wz\d+|R\d+|osh\d+|oh|oj|osub|obuf\d+")
        cache_src = peek.matching(
            "quant", r"[kv]buf\d+_\d+|[kv]S|[kv]z[48]|[kv]cb8?\d+|j|qsub|qstate")
        out = sink(m, past, out_s, "out", check=self.checker("stream"), sources=out_src)
        cache = sink(m, past, cache_s, "cache", check=self.checker("stream"),
                     sources=cache_src)

        # ---- append path: tokens, drops, the count
        aj = Signal(range(C), name="ref_append_chunk")
        with m.If(app):
            m.d.sync += aj.eq(Mux(aj == C - 1, 0, aj + 1))
        cj = Signal(range(C), name="ref_cache_chunk")
        with m.If(cache):
            m.d.sync += cj.eq(Mux(cj == C - 1, 0, cj + 1))
        ref_count = Signal(range(c.max_t + 2), name="ref_count")
        ref_ovf = Signal(name="ref_overflow")
        dropping = Signal(name="ref_dropping")      # the token being appended is dropped
        cache_owed = Signal(range(2 * C + 1), name="cache_owed")
        full = ref_count == c.max_t
        drop_now = Mux(aj == 0, full, dropping)
        with m.If(app):
            m.d.sync += dropping.eq(drop_now)
            with m.If(drop_now):
                m.d.sync += ref_ovf.eq(1)
        with m.If(cache & (cj == C - 1)):
            m.d.sync += ref_count.eq(ref_count + 1)
        m.d.sync += cache_owed.eq(cache_owed + Mux(app & ~drop_now, 1, 0) - cache)
        with m.If(clear):
            m.d.sync += [ref_count.eq(0), ref_ovf.eq(0)]
        self.check(m, "overflow", dut.count == ref_count,
                   "count = tokens whose cache beats all transferred (since cache_clear)")
        self.check(m, "overflow", dut.count <= c.max_t, "count never passes max_t (no wrap)")
        self.check(m, "overflow", dut.overflow == ref_ovf,
                   "overflow = a token was appended at max_t since cache_clear")
        self.check(m, "overflow", ~cache | (cache_owed != 0),
                   "no cache beat for a dropped token")
        # a token in the quantizer was accepted below max_t: it fits
        qstate = peek["quant", "qstate"]
        qbusy = (qstate != 0) | (aj != 0) & ~dropping
        with m.If(qbusy):
            self.check(m, "overflow", ref_count < c.max_t, "a token being cached fits")
        qstates = ["IN"] + (["ROT"] if c.rotate else []) + ["MINMAX", "SCALE", "ZERO", "OUT"]
        q_in, q_out = qstate == 0, qstate == qstates.index("OUT")
        self.check(m, "overflow", qstate < len(qstates), "the quantizer's state in range")
        self.check(m, "overflow", peek["", "j"] == aj, "the append chunk counter")
        with m.If(aj != 0):
            self.check(m, "overflow", peek["drop"] == dropping, "the drop flag of the token")
        with m.If(~q_in):
            self.check(m, "overflow", aj == 0, "no append beat while the quantizer works")
        with m.If(~q_out):
            self.check(m, "overflow", cj == 0, "cache beats only in OUT")
        self.check(m, "overflow", peek["", "oj"] == cj, "the cache chunk counter")
        self.check(m, "overflow", cache_owed == Mux(q_in, Mux(dropping, 0, aj),
                                                    Mux(q_out, C - cj, C)),
                   "cache beats owed = the token in the quantizer")
        with m.If(q_in & ~dropping):
            self.check(m, "overflow", peek["quant", "j"] == aj, "the quantizer's chunk counter")
        with m.If(q_in & dropping):
            self.check(m, "overflow", peek["quant", "j"] == 0, "a dropped token stays out")
        with m.If(q_out):
            self.check(m, "overflow", peek["quant", "j"] == cj, "the quantizer's chunk counter")

        # ---- decode: the cmd check and what a step owes
        cp = dut.cmd.payload
        bad = (cp.t == 0) | (cp.t > c.max_t)
        for h in range(H if c.min_lsh else 0):
            bad = bad | (cp.lsh[h] < c.min_lsh)
        kb = Signal(range(rtl.k_beats(c, c.max_t) + 1), name="ref_k_beats")
        m.d.comb += kb.eq(0)
        for T in range(1, c.max_t + 1):
            with m.If(cp.t == T):
                m.d.comb += kb.eq(rtl.k_beats(c, T))
        nq = H * C
        q_owed = Signal(range(nq + 1), name="query_owed")
        k_owed = Signal.like(kb, name="k_owed")
        v_owed = Signal.like(kb, name="v_owed")
        o_owed = Signal(range(nq + 1), name="out_owed")
        good = cmd & ~bad
        m.d.sync += [q_owed.eq(q_owed + Mux(good, nq, 0) - query),
                     k_owed.eq(k_owed + Mux(good, kb, 0) - kx),
                     v_owed.eq(v_owed + Mux(good, kb, 0) - vx),
                     o_owed.eq(o_owed + Mux(good, nq, 0) - out)]
        last_bad = Signal(name="ref_last_cmd_bad")
        with m.If(cmd):
            m.d.sync += last_bad.eq(bad)
        with m.If(past.ok & past(cmd, "cmd_xfer")):
            self.check(m, "overflow", dut.error == past(bad, "cmd_bad"),
                       "error rises exactly for a cmd with T = 0 or T > max_t")
        state = peek["core", "state"]
        states = ["IDLE", "QUERY"] + (["QROT", "QMAX", "QPUT"] if c.rotate else []) + [
            "RUN", "NORM", "DIV", "OUT"]
        self.check(m, "overflow", dut.busy == (state == states.index("RUN")),
                   "busy exactly in the core's RUN state")
        self.check(m, "overflow", state < len(states), "the core's state in range")
        with m.If(last_bad):
            self.check(m, "overflow", state == 0, "after a refused cmd the core stays idle")
            self.check(m, "overflow", dut.error & ~dut.busy & ~dut.query.ready
                       & ~dut.k.ready & ~dut.v.ready & ~dut.out.valid,
                       "after a refused cmd nothing runs until the next cmd")
        self.check(m, "beats", ~query | (q_owed != 0), "no query beat beyond heads*chunks")
        self.check(m, "beats", ~kx | (k_owed != 0), "no K beat beyond k_beats(T)")
        self.check(m, "beats", ~vx | (v_owed != 0), "no V beat beyond k_beats(T)")
        self.check(m, "beats", ~out | (o_owed != 0), "no out beat beyond heads*chunks")
        with m.If(out_s.valid):
            self.check(m, "beats", (q_owed == 0) & (k_owed == 0) & (v_owed == 0),
                       "out only after the step's last query, K and V beats")
        with m.If(cmd):
            self.check(m, "beats", (q_owed == 0) & (k_owed == 0) & (v_owed == 0)
                       & (o_owed == 0), "a cmd is taken once the previous step is done")
        with m.If(state == 0):      # IDLE
            self.check(m, "beats", (q_owed == 0) & (k_owed == 0) & (v_owed == 0)
                       & (o_owed == 0), "idle only with nothing owed")

        with m.If(~past.ok):
            self.check(m, "reset", ~out_s.valid & ~cache_s.valid, "no out/cache beat after reset")
            self.check(m, "reset", (state == 0) & (qstate == 0) & (dut.count == 0)
                       & ~dut.overflow & ~dut.error & ~dut.busy,
                       "idle, empty cache count, no flags after reset")

        self.cover(m, "cover", out & (o_owed == 1), "a decode step's last out beat")
        self.cover(m, "cover", app & drop_now, "an append beyond max_t is dropped")
        self.cover(m, "cover", cmd & bad & (cp.t != 0), "a cmd with T > max_t is refused")


def _name(c: KV4Config) -> str:
    return (f"head_dim={c.head_dim} lanes={c.lanes} max_t={c.max_t} heads={c.heads} "
            f"x_bits={c.x_bits} recent={c.recent} rotate={c.rotate}")


def checks() -> list[Check]:
    """KV4Unit's checks on SMALL: proofs (beats by BMC), the cover and the fault
    demonstrations."""
    from .checks import Check
    H, S = KV4Harness, SMALL
    n = _name(S)
    return [
        Check(H, S, n, "stream", "prove", 4),
        Check(H, S, n, "overflow", "prove", 8, quick=True),
        Check(H, S, n, "beats", "bmc", 45,
              note="k-induction would need the owed counts tied to every position "
                   "counter of the decode core"),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 45),
        Check(H, S, n, "overflow", "bmc", 45, broken="overflow_flag"),
        Check(H, S, n, "stream", "bmc", 20, broken="drop_valid"),
        Check(H, S, n, "beats", "bmc", 36, broken="lose_beat"),
        Check(H, S, n, "reset", "bmc", 3, broken="valid_after_reset"),
    ]
