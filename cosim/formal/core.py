"""Formal harnesses of the accelerator core: its AXI4 read master
(hdl.axi.AxiReader, the unit every fetch and load goes through) against a
free AXI slave, and the core's sequencer (hdl.core.Core) on a tiny
configuration, fetching a free program from that slave."""
from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.asserts import AnySeq
from amaranth.hdl import Assume, Cat, Const, Module, Mux, Signal
from amaranth.lib import data

from golden.core_config import INSTR_BYTES, CoreConfig
from golden.kv4_attention_config import KV4Config
from golden.sfu_config import SFUHWConfig
from hdl import axi as axi_rtl
from hdl import core as rtl

from .harness import Harness
from .monitors import counter_width, free, sink, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["AxiReadHarness", "CoreHarness", "AXI_SMALL", "CORE_SMALL", "checks"]

#: An 8-byte data bus, ranges of up to 1024 beats (split at 256 beats and at
#: 4 KB), two bursts outstanding.
AXI_SMALL = dict(beat_bytes=8, max_beats=1024, max_outstanding=2)


class _Slave:
    """An AXI4 read slave of free timing and data that keeps the protocol
    (assumed): arready free; R beats only for accepted bursts, in order, rlast
    on each burst's last beat, OKAY responses, rvalid held with its data until
    rready. Holds up to `depth` bursts."""

    def __init__(self, m, past, axi, depth: int, name: str = "slave"):
        self.lens = [Signal(8, name=f"{name}_len{i}") for i in range(depth)]
        self.count = Signal(range(depth + 1), name=f"{name}_count")
        self.beat = Signal(8, name=f"{name}_beat")
        free(m, axi.arready, f"{name}_arready")
        m.d.comb += Assume(~axi.arready | (self.count != depth), "slave: room for the burst")
        rv = free(m, axi.rvalid, f"{name}_rvalid")
        free(m, axi.rdata, f"{name}_rdata")
        m.d.comb += [axi.rresp.eq(0), axi.rid.eq(0),
                     axi.rlast.eq(self.beat == self.lens[0])]
        m.d.comb += Assume(~rv | (self.count != 0), "slave: R beats of accepted bursts only")
        stalled = past(axi.rvalid & ~axi.rready, f"{name}_r_stalled")
        with m.If(past.ok & stalled):
            m.d.comb += [Assume(axi.rvalid, "slave: rvalid held until rready"),
                         Assume(axi.rdata == past(axi.rdata, f"{name}_rdata"),
                                "slave: rdata stable while stalled")]
        self.ar = axi.arvalid & axi.arready
        self.r = axi.rvalid & axi.rready
        self.r_last = self.r & axi.rlast
        pop = self.r_last
        n = self.count
        # the queue: pop the head on a burst's last beat, push at the tail
        for i in range(depth):
            nxt = self.lens[i + 1] if i + 1 < depth else Const(0, 8)
            with m.If(pop):
                m.d.sync += self.lens[i].eq(nxt)
                with m.If(self.ar & (n - 1 == i)):
                    m.d.sync += self.lens[i].eq(axi.arlen)
            with m.Elif(self.ar & (n == i)):
                m.d.sync += self.lens[i].eq(axi.arlen)
        m.d.sync += n.eq(n + self.ar - pop)
        with m.If(self.r):
            m.d.sync += self.beat.eq(Mux(axi.rlast, 0, self.beat + 1))


class AxiReadHarness(Harness):
    """Formal harness of hdl.axi.AxiReader (`config`: its keyword arguments, as
    AXI_SMALL): range requests from a free source under the stream protocol,
    `clear` free, a free AXI4 read slave that keeps the protocol, the data stream
    taken by a checked sink (property groups and faults: the tables below)."""

    block = "core.axi_read"
    groups = {
        "stream": "data: valid held until ready, payload stable while stalled; AR: arvalid "
                  "held until arready with its address and length",
        "bursts": "every burst an INCR of at most 256 beats that stays inside a 4 KB page; "
                  "a range's bursts cover it exactly, in order, from its first beat",
        "beats": "as many data beats as the ranges asked for, in order of the bursts: none "
                 "lost (not busy only with nothing owed) or duplicated",
        "reset": "the cycle after reset: no AR request, no range being split, no burst "
                 "outstanding",
        "cover": "reachable: a range split at a 4 KB boundary, its last data beat",
    }
    helpers = {"stream": ("bursts", "beats"), "beats": ("bursts",)}
    faults = {
        "dup_beat": "a data beat is presented twice (port)",
        "glitch_payload": "data payload bit 0 flips while stalled (port)",
        "burst_addr": "the harness sees each AR address one beat further (port)",
        "ar_after_reset": "arvalid shows high in the cycle after a reset (port)",
    }

    def make_block(self) -> axi_rtl.AxiReader:
        """An AxiReader of `config` (every fault is a port fault)."""
        return axi_rtl.AxiReader(**self.config)

    def build(self, m: Module, past: Past, dut: axi_rtl.AxiReader, peek: Internals) -> None:
        """Drive the range requests from a free source and the AXI read channels
        from a free slave, tap data (the port faults) into a checked sink, and
        assert each active group's properties against a reference of the range
        being split into bursts and the data and R beats owed."""
        BB, maxb = self.config["beat_bytes"], self.config["max_beats"]
        req = source(m, past, dut.req, "req")
        free(m, dut.clear, "clear")
        axi = dut.axi
        slave = _Slave(m, past, axi, self.config["max_outstanding"])
        d = tap(m, past, dut.data, "data", self.broken if self.broken in
                ("dup_beat", "glitch_payload") else None)
        arvalid = axi.arvalid | (~past.ok if self.broken == "ar_after_reset" else 0)
        araddr = axi.araddr + (BB if self.broken == "burst_addr" else 0)
        out = sink(m, past, d, "data", check=self.checker("stream"))

        ar_stalled = past(axi.arvalid & ~axi.arready, "ar_stalled")
        ar_word = Cat(axi.araddr, axi.arlen)
        with m.If(past.ok & ar_stalled):
            self.check(m, "stream", axi.arvalid, "arvalid held until arready")
            self.check(m, "stream", ar_word == past(ar_word, "ar_word"),
                       "araddr / arlen stable until arready")

        shift = BB.bit_length() - 1
        # the range being issued as bursts: next address and beats left
        rem = Signal(counter_width(maxb), name="ref_range_left")
        nxt = Signal(len(axi.araddr), name="ref_next_addr")
        rp = dut.req.payload
        with m.If(slave.ar):
            m.d.sync += [nxt.eq(nxt + ((axi.arlen + 1) << shift)), rem.eq(rem - axi.arlen - 1)]
        with m.If(req):
            m.d.sync += [nxt.eq(Cat(Const(0, shift), rp.addr[shift:])), rem.eq(rp.beats)]
        page = axi_rtl.BOUNDARY_BYTES
        with m.If(axi.arvalid):
            self.check(m, "bursts", (araddr == nxt) & (axi.arlen + 1 <= rem),
                       "a burst continues its range")
            self.check(m, "bursts", axi.araddr[:12] + ((axi.arlen + 1) << shift) <= page,
                       "a burst stays inside its 4 KB page")
            self.check(m, "bursts", (axi.arburst == axi_rtl.BURST_INCR)
                       & (axi.arsize == shift), "INCR bursts of whole beats")
        with m.If(req):
            self.check(m, "bursts", (rem == 0) | (slave.ar & (rem == axi.arlen + 1)),
                       "a range is taken once the last one is issued")
        self.check(m, "bursts", nxt[:shift] == 0, "ranges are beat-aligned")
        self.check(m, "bursts", peek["remaining"] == rem, "the splitter's beats left")
        self.check(m, "bursts", peek["active"] == (rem != 0), "the splitter busy with a range")
        with m.If(rem != 0):
            self.check(m, "bursts", peek["addr"] == nxt, "the splitter's next address")

        # beats: owed by the ranges and by the bursts
        owed = Signal(counter_width(2 * maxb + 2 * 256), name="data_owed")
        m.d.sync += owed.eq(owed + Mux(req, rp.beats, 0) - out)
        r_owed = Signal(counter_width(2 * 256), name="r_owed")
        m.d.sync += r_owed.eq(r_owed + Mux(slave.ar, axi.arlen + 1, 0) - slave.r)
        self.check(m, "beats", ~out | (owed != 0), "no data beat beyond the ranges'")
        self.check(m, "beats", owed == r_owed + rem, "beats owed = bursts' beats to come + "
                   "the range's beats not yet requested")
        self.check(m, "beats", d.valid == axi.rvalid, "every R beat is a data beat")
        q = [(slave.lens[i] + 1) for i in range(len(slave.lens))]
        queued = sum(Mux(slave.count > i, q[i], 0) for i in range(len(q)))
        depth = len(slave.lens)
        self.check(m, "beats", slave.count <= depth, "the slave's queue in range")
        with m.If(slave.count == 0):
            self.check(m, "beats", slave.beat == 0, "no burst: no beat position")
        with m.Else():
            self.check(m, "beats", slave.beat <= slave.lens[0], "the beat inside its burst")
        self.check(m, "beats", r_owed == queued - slave.beat,
                   "R beats owed = the outstanding bursts' beats")
        self.check(m, "beats", peek["pending_count"] == slave.count,
                   "the master's outstanding count = the slave's")
        with m.If(~dut.busy):
            self.check(m, "beats", owed == 0, "not busy only with nothing owed")

        with m.If(~past.ok):
            self.check(m, "reset", ~arvalid & ~peek["active"]
                       & (peek["pending_count"] == 0),
                       "no AR request, no range being split, nothing outstanding after reset")

        self.cover(m, "cover", slave.ar & (axi.arlen + 1 < rem) & (axi.arlen != 255),
                   "a range split at a 4 KB boundary")
        self.cover(m, "cover", out & (owed == 1), "a range's last data beat")


def checks() -> list[Check]:
    """The core's checks: the AXI read master's (on AXI_SMALL: proofs, the cover
    and the fault demonstrations), then the sequencer's (core_checks)."""
    from .checks import Check
    H, S = AxiReadHarness, AXI_SMALL
    n = "beat_bytes=8 max_beats=1024 max_outstanding=2"
    return [
        Check(H, S, n, "stream", "prove", 4),
        Check(H, S, n, "bursts", "prove", 4, quick=True),
        Check(H, S, n, "beats", "prove", 6),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 12),
        Check(H, S, n, "beats", "bmc", 12, broken="dup_beat"),
        Check(H, S, n, "stream", "bmc", 12, broken="glitch_payload"),
        Check(H, S, n, "bursts", "bmc", 6, broken="burst_addr", quick=True),
        Check(H, S, n, "reset", "bmc", 3, broken="ar_after_reset"),
    ] + core_checks()


#: A tiny core: 4 SFU / KV4 lanes, an 8-byte bus (an instruction is 8 beats),
#: one-token buffers of 32 elements, an 8-column engine of K <= 32.
CORE_SMALL = CoreConfig(
    rows=1, cols=8, max_k=32, max_n=8, w_bits=2, buffers=2, max_tokens=1, buf_elems=32,
    sfu=SFUHWConfig(lanes=4, max_k=32),
    kv4=KV4Config(head_dim=32, lanes=4, max_t=2, heads=1, x_bits=6, logit_frac=2, p_frac=6,
                  out_frac=0, recip_bits=8, logit_bits=12, rotate=False, recent=0),
    addr_bits=32, beat_bytes=8, mem_ports=1, mem_latency=1)


def _range_layout(sig) -> data.StructLayout:
    """The layout of a range request word of `sig`'s width (hdl.axi.range_signature:
    a 64-bit address, then the beat count)."""
    return data.StructLayout({"addr": axi_rtl.AXI_ADDR_BITS,
                              "beats": len(sig) - axi_rtl.AXI_ADDR_BITS})


class _WriteSlave:
    """An AXI4 write slave of free timing that keeps the protocol (assumed): a
    B response only for a burst whose AW and last W beat are both in."""

    def __init__(self, m, axi, name: str = "wslave"):
        free(m, axi.awready, f"{name}_awready")
        free(m, axi.wready, f"{name}_wready")
        bv = free(m, axi.bvalid, f"{name}_bvalid")
        m.d.comb += [axi.bresp.eq(0), axi.bid.eq(0)]
        aw = Signal(4, name=f"{name}_aw")
        wl = Signal(4, name=f"{name}_wlast")
        m.d.sync += [aw.eq(aw + (axi.awvalid & axi.awready) - (axi.bvalid & axi.bready)),
                     wl.eq(wl + (axi.wvalid & axi.wready & axi.wlast)
                           - (axi.bvalid & axi.bready))]
        m.d.comb += Assume(~bv | ((aw != 0) & (wl != 0)), "slave: B for a finished burst only")


class CoreHarness(Harness):
    """Formal harness of hdl.core.Core's sequencer: start, prog, pos and tokens
    free (prog on an instruction boundary), free AXI4 read and write slaves that
    keep the protocol, the SFU, engine and KV4 units cut (property groups and
    faults: the tables below)."""

    block = "core"
    # the sequencer's properties do not depend on what the units compute or when
    # they finish: they are cut (their outputs free), which keeps the model small
    cut = ("sfu", "engine", "kv4")
    groups = {
        "sequencer": "the sequencer never issues out of its program: every instruction "
                     "fetch reads prog + 64*pc, pc starts at 0 and grows by one per "
                     "retired instruction, the instruction decoded is the one fetched, no "
                     "fetch after HALT (DONE) or while idle",
        "reset": "the cycle after reset: idle, pc 0, no AXI request",
        "cover": "reachable: a second instruction fetched, a HALT retired",
    }
    faults = {
        "fetch_addr": "the sequencer's fetch request (its range into the read master) "
                      "is seen one instruction further (port)",
        "ar_after_reset": "arvalid shows high in the cycle after a reset (port)",
    }

    def make_block(self) -> rtl.Core:
        """A Core of `config` (every fault is a port fault)."""
        return rtl.Core(self.config)

    def build(self, m: Module, past: Past, dut: rtl.Core, peek: Internals) -> None:
        """Drive the core's control inputs free and its AXI ports from free
        slaves, and assert each active group's properties on the sequencer's
        state, pc, fetch requests (seen one instruction further with fault
        `fetch_addr`), decoded instruction and retire trace."""
        c = self.config
        BB = c.beat_bytes
        ib = INSTR_BYTES // BB
        for name in ("start", "prog", "pos", "tokens"):
            free(m, getattr(dut, name), name)
        m.d.comb += Assume(dut.prog[:6] == 0, "the program starts on an instruction boundary")
        rd, wr = dut.rd, dut.wr
        slave = _Slave(m, past, rd, 2, "rslave")
        _WriteSlave(m, wr)
        st = {n: dut.state == i for i, n in enumerate(rtl.STATES)}
        pc, prog = peek["pc"], peek["prog_base"]
        fetching = st["FETCH"] | st["FETCH_WAIT"]
        # the sequencer's read requests (ranges) into the read master
        rq_valid, rq_ready = peek.read_by("req__valid", "rd"), peek["rd", "req__ready"]
        rq_word = peek.read_by("req__payload", "rd")
        rq = data.View(_range_layout(rq_word), rq_word)
        aw = axi_rtl.AXI_ADDR_BITS
        addr = (rq.addr + (INSTR_BYTES if self.broken == "fetch_addr" else 0))[:aw]
        with m.If(st["FETCH"] & rq_valid):
            self.check(m, "sequencer", addr == (prog + pc * INSTR_BYTES)[:aw],
                       "an instruction fetch reads prog + 64*pc (modulo 2**64)")
            self.check(m, "sequencer", rq.beats == ib, "one instruction per fetch")
        with m.If(st["IDLE"] | st["DONE"]):
            self.check(m, "sequencer", ~rq_valid, "no read request while idle or after HALT")
        self.cover(m, "cover", st["FETCH"] & rq_valid & rq_ready & (pc == 1),
                   "a second instruction fetched")
        # pc: 0 at a start, +1 per retire, otherwise held
        with m.If(past.ok):
            ppc = past(pc, "pc")
            was = {n: past(v, f"was_{n}") for n, v in st.items()
                   if n in ("RETIRE", "IDLE", "DONE", "ERROR")}
            began = past(dut.start & (st["IDLE"] | st["DONE"] | st["ERROR"]), "began")
            with m.If(was["RETIRE"]):
                self.check(m, "sequencer", pc == ppc + 1, "RETIRE: pc + 1")
            with m.Elif(~began):
                self.check(m, "sequencer", (pc == ppc) | (pc == 0) & was["ERROR"],
                           "pc moves only at RETIRE and at a start")
            with m.If(began & ~(st["ERROR"] & was["ERROR"])):
                self.check(m, "sequencer", pc == 0, "a run starts at pc 0")
        # the fetched beats, as the slave returned them; DECODE decodes them
        shadow = Signal(8 * INSTR_BYTES, name="fetched")
        with m.If(st["FETCH_WAIT"] & rd.rvalid & rd.rready):
            m.d.sync += shadow.eq(Cat(shadow[8 * BB:], rd.rdata))
        with m.If(st["DECODE"]):
            self.check(m, "sequencer", peek["ir"] == shadow,
                       "the instruction decoded is the one fetched")
        retire = dut.trace.valid & (dut.trace.kind == rtl.TRACE_KINDS.index("retire"))
        with m.If(retire):
            self.check(m, "sequencer", dut.trace.pc == pc, "a retire reports its pc")

        with m.If(~past.ok):
            arv = rd.arvalid | (1 if self.broken == "ar_after_reset" else 0)
            self.check(m, "reset", st["IDLE"] & (pc == 0) & ~arv & ~wr.awvalid,
                       "idle at pc 0 with no AXI request after reset")

        self.cover(m, "cover", st["DONE"], "a HALT retired")


def _core_name(c: CoreConfig) -> str:
    return (f"rows={c.rows} cols={c.cols} max_k={c.max_k} buffers={c.buffers} "
            f"max_tokens={c.max_tokens} buf_elems={c.buf_elems} sfu.lanes={c.sfu.lanes} "
            f"kv4 head_dim={c.kv4.head_dim} beat_bytes={c.beat_bytes}")


def core_checks() -> list[Check]:
    """The sequencer's checks on CORE_SMALL: the sequencer by BMC, reset proven,
    the cover and the fault demonstrations."""
    from .checks import Check
    H, S = CoreHarness, CORE_SMALL
    n = _core_name(S)
    return [
        Check(H, S, n, "sequencer", "bmc", 16,
              note="the sequencer's state is every mover's: k-induction would need their "
                   "invariants; 16 cycles hold a start, a whole instruction (fetch, decode, "
                   "retire) and the next fetch, of any instruction word"),
        Check(H, S, n, "reset", "prove", 3),
        Check(H, S, n, "cover", "cover", 30),
        Check(H, S, n, "sequencer", "bmc", 20, broken="fetch_addr"),
        Check(H, S, n, "reset", "bmc", 3, broken="ar_after_reset"),
    ]
