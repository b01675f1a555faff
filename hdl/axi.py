"""AXI4 master DMA engines whose ranges arrive at run time (an instruction's
address and length), and the AXI constants and member dicts every AXI user
of the project shares (fpga_boards.axi re-exports them).

* `RangeBursts` -- a range of whole beats (a beat-aligned byte address and a
  beat count) -> AXI4 INCR bursts of at most 256 beats that never cross a
  4 KB boundary.
* `AxiReader`   -- a queue of ranges -> AR bursts; every R beat in order on
  `data`. New ranges are taken while earlier ones' data is still returning,
  so short ranges back to back keep the read channel full (one latency for
  the whole sequence, not one per range).
* `AxiWriter`   -- a queue of ranges plus a stream of (data, strb) beats ->
  AW bursts and W beats (wlast from the burst lengths); `idle` once every B
  response is back (what a SYNC waits for).

Both engines use one AXI ID: the slave returns every burst in order, so
neither needs a reorder buffer. Errors (a response other than OKAY) are sticky
until `clear`, so a core can check them once at the end of a program.

Ports of the AXI sides use the bare AXI names (araddr, rdata, ...); a top
renames them to whatever its platform expects.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .rtl import count_width, is_const, zext

__all__ = [
    "AXI_ADDR_BITS", "AXI_ID_BITS", "MAX_BURST_BEATS", "BOUNDARY_BYTES", "MAX_BEAT_BYTES",
    "RESP_OKAY", "RESP_SLVERR", "BURST_INCR", "BURST_LAYOUT",
    "axi_read_members", "axi_write_members", "range_signature", "write_beat_signature",
    "RangeBursts", "AxiReader", "AxiWriter",
]

AXI_ADDR_BITS = 64        # device addresses of Alveo platforms are 64-bit
AXI_ID_BITS = 1           # one ID: every burst of a master returns in order
MAX_BURST_BEATS = 256     # AXI4 INCR limit
BOUNDARY_BYTES = 4096     # AXI: a burst must not cross a 4 KB boundary
MAX_BEAT_BYTES = 128      # AXI4: the widest data bus is 1024 bits (arsize 7)

RESP_OKAY = 0
RESP_SLVERR = 2
BURST_INCR = 1

#: One AXI4 burst: its byte address and len (beats - 1), as on the AR/AW channel.
BURST_LAYOUT = data.StructLayout({"addr": unsigned(AXI_ADDR_BITS), "len": unsigned(8)})


def axi_read_members(data_bits: int) -> dict:
    """AR + R channels of an AXI4 master (bare AXI names)."""
    return {"arid": Out(AXI_ID_BITS), "araddr": Out(AXI_ADDR_BITS), "arlen": Out(8),
            "arsize": Out(3), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(AXI_ID_BITS), "rdata": In(data_bits), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1)}


def axi_write_members(data_bits: int) -> dict:
    """AW + W + B channels of an AXI4 master (bare AXI names)."""
    return {"awid": Out(AXI_ID_BITS), "awaddr": Out(AXI_ADDR_BITS), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_bits), "wstrb": Out(data_bits // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(AXI_ID_BITS), "bresp": In(2), "bvalid": In(1), "bready": Out(1)}


def range_signature(max_beats: int) -> stream.Signature:
    """A range request: a beat-aligned byte address and 1..max_beats beats."""
    return stream.Signature(data.StructLayout({
        "addr": unsigned(AXI_ADDR_BITS), "beats": unsigned(count_width(max_beats))}))


def write_beat_signature(beat_bytes: int) -> stream.Signature:
    """One W beat: its data and byte enables (strb bit i enables byte i)."""
    return stream.Signature(data.StructLayout({
        "data": unsigned(8 * beat_bytes), "strb": unsigned(beat_bytes)}))


def _check(beat_bytes: int, max_beats: int) -> None:
    if not isinstance(beat_bytes, int) or beat_bytes < 1 or beat_bytes & (beat_bytes - 1) \
            or beat_bytes > MAX_BEAT_BYTES:
        raise ValueError(f"beat_bytes must be a power of two from 1 to {MAX_BEAT_BYTES} "
                         f"(an AXI4 data bus of 8..1024 bits), got {beat_bytes!r}")
    if not isinstance(max_beats, int) or max_beats < 1:
        raise ValueError(f"max_beats (the longest range, in beats) must be an int >= 1, "
                         f"got {max_beats!r}")


def _check_depth(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class RangeBursts(wiring.Component):
    """Ranges -> AXI4 INCR bursts (addr, len = beats - 1) of at most 256 beats,
    none crossing a 4 KB boundary.

    Ports:
      req    : In(stream of {addr: 64, beats}) -- a byte address (its low
               log2(beat_bytes) bits are ignored: ranges are beat-aligned) and a
               beat count 1..max_beats; a range of 0 beats is taken and dropped
      bursts : Out(stream of BURST_LAYOUT)
      busy   : Out(1) -- a range is being split

    A range is taken when idle, or in the cycle its predecessor's last burst is
    taken (so ranges of one burst each give one burst per cycle)."""

    def __init__(self, *, beat_bytes: int, max_beats: int):
        _check(beat_bytes, max_beats)
        self.beat_bytes = beat_bytes
        self.max_beats = max_beats
        super().__init__({
            "req": In(range_signature(max_beats)),
            "bursts": Out(stream.Signature(BURST_LAYOUT)),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the range-to-burst splitter."""
        m = Module()
        shift = exact_log2(self.beat_bytes)
        page_beats = BOUNDARY_BYTES >> shift
        cap = min(MAX_BURST_BEATS, page_beats)
        cw = count_width(max(self.max_beats, page_beats))
        pw = count_width(page_beats)
        addr = Signal(AXI_ADDR_BITS)
        remaining = Signal(cw)
        active = Signal()

        # Stage 1: the next burst's length, min(remaining, 256, beats to the
        # next 4 KB boundary). The boundary distance 2**k - off (k-bit offset)
        # is -off mod 2**k with off == 0 giving 2**k. It needs only pw bits, and
        # Yosys narrows it to them, so it is compared with the cw-bit limit at
        # pw bits: operands of one width in the Verilog (Verilator -Wall).
        off = addr[shift:12]
        neg = Signal(12 - shift)
        to_page = Signal(pw)
        lim = Signal(cw)
        page_first = Signal()
        n = Signal(cw)
        last = Signal()
        m.d.comb += [neg.eq(~off + 1),
                     to_page.eq(Mux(is_const(off, 0), page_beats, neg)),
                     lim.eq(Mux(remaining < cap, remaining, cap))]
        if cw > pw:
            m.d.comb += page_first.eq(lim[pw:].any() | (to_page < lim[:pw]))
        else:
            m.d.comb += page_first.eq(to_page < lim)
        m.d.comb += [n.eq(Mux(page_first, to_page, lim)),
                     last.eq(remaining == n)]

        # Stage 2: emit; the last burst of a range makes room for the next one
        # in the same cycle.
        take = Signal()
        m.d.comb += [self.bursts.valid.eq(active),
                     self.bursts.payload.addr.eq(addr),
                     self.bursts.payload.len.eq(n - 1),
                     take.eq(self.bursts.valid & self.bursts.ready),
                     self.req.ready.eq(~active | (take & last)),
                     self.busy.eq(active)]
        with m.If(take):
            m.d.sync += [addr.eq(addr + zext(Cat(Const(0, shift), n), AXI_ADDR_BITS)),
                         remaining.eq(remaining - n)]
            with m.If(last):
                m.d.sync += active.eq(0)
        # Stage 0: take a range (after stage 2, so that it wins).
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [addr.eq(Cat(Const(0, shift), self.req.payload.addr[shift:])),
                         remaining.eq(self.req.payload.beats),
                         active.eq(self.req.payload.beats.any())]
        return m


class _Outstanding:
    """Bursts issued and not yet finished, capped at `limit` so the counter has
    a width: +1 on `issue`, -1 on `finish`; `room` while below the cap. `room`
    is a register output and falls only on an issue, so an address channel's
    valid gated by it never drops before its handshake (AXI requires that)."""

    def __init__(self, m: Module, limit: int, name: str):
        self.m, self.limit = m, limit
        self.count = Signal(range(limit + 1), name=f"{name}_count")
        self.room = Signal(name=f"{name}_room")
        self.none = Signal(name=f"{name}_none")
        m.d.comb += [self.room.eq(self.count != limit), self.none.eq(is_const(self.count, 0))]

    def track(self, issue, finish) -> None:
        with self.m.If(issue & ~finish):
            self.m.d.sync += self.count.eq(self.count + 1)
        with self.m.Elif(finish & ~issue):
            self.m.d.sync += self.count.eq(self.count - 1)


def _sticky(m: Module, flag, event, clear) -> None:
    """flag set by `event`, held until `clear` (an event in the clearing cycle
    wins: it is not lost)."""
    with m.If(event):
        m.d.sync += flag.eq(1)
    with m.Elif(clear):
        m.d.sync += flag.eq(0)


class AxiReader(wiring.Component):
    """AXI4 read master for ranges given at run time.

    Ports:
      req   : In(stream of {addr: 64, beats}) -- queued ranges (RangeBursts);
              the next one is taken while earlier ones' data still returns
      data  : Out(stream of unsigned(8 * beat_bytes)) -- every R beat in order
              (rready = data.ready: no buffer of its own)
      axi   : Out(axi_read_members(8 * beat_bytes))
      busy  : Out(1) -- a range offered or being split, or R beats to come
      error : Out(1) -- an R beat came with rresp != OKAY; sticky until `clear`
      clear : In(1)

    AR requests go out as soon as they are split, up to `max_outstanding`
    bursts without their last beat back: enough to cover the slave's latency
    with short bursts (latency / beats per burst)."""

    def __init__(self, *, beat_bytes: int, max_beats: int, max_outstanding: int = 64):
        _check(beat_bytes, max_beats)
        _check_depth("max_outstanding", max_outstanding)
        self.beat_bytes = beat_bytes
        self.max_beats = max_beats
        self.max_outstanding = max_outstanding
        super().__init__({
            "req": In(range_signature(max_beats)),
            "data": Out(stream.Signature(unsigned(8 * beat_bytes))),
            "axi": Out(wiring.Signature(axi_read_members(8 * beat_bytes))),
            "busy": Out(1),
            "error": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the read master: burst splitter, AR channel and R data path."""
        m = Module()
        axi = self.axi
        m.submodules.split = split = RangeBursts(beat_bytes=self.beat_bytes,
                                                 max_beats=self.max_beats)
        wiring.connect(m, wiring.flipped(self.req), split.req)
        pending = _Outstanding(m, self.max_outstanding, "pending")

        # AR: bursts straight from the splitter while below the cap.
        ar_fire = Signal()
        m.d.comb += [axi.arid.eq(0), axi.araddr.eq(split.bursts.payload.addr),
                     axi.arlen.eq(split.bursts.payload.len),
                     axi.arsize.eq(exact_log2(self.beat_bytes)), axi.arburst.eq(BURST_INCR),
                     axi.arvalid.eq(split.bursts.valid & pending.room),
                     split.bursts.ready.eq(axi.arready & pending.room),
                     ar_fire.eq(axi.arvalid & axi.arready)]

        # R: every beat to `data`; a burst is finished with its rlast beat.
        r_fire = Signal()
        m.d.comb += [self.data.valid.eq(axi.rvalid), self.data.payload.eq(axi.rdata),
                     axi.rready.eq(self.data.ready),
                     r_fire.eq(axi.rvalid & axi.rready)]
        pending.track(ar_fire, r_fire & axi.rlast)
        _sticky(m, self.error, r_fire & (axi.rresp != RESP_OKAY), self.clear)
        m.d.comb += self.busy.eq(self.req.valid | split.busy | ~pending.none)
        return m


class AxiWriter(wiring.Component):
    """AXI4 write master for ranges given at run time.

    Ports:
      req   : In(stream of {addr: 64, beats}) -- queued ranges (RangeBursts)
      data  : In(stream of {data: 8*beat_bytes, strb: beat_bytes}) -- the W
              beats of the ranges, in order
      axi   : Out(axi_write_members(8 * beat_bytes))
      idle  : Out(1) -- no range offered or being split, no burst without its
              W beats, every B response back: what a SYNC waits for
      error : Out(1) -- a B response other than OKAY; sticky until `clear`
      clear : In(1)

    W beats follow their AW (a slave may wait for the address): the burst
    lengths travel from the AW side to the W side through a FIFO of
    `fifo_depth` bursts, which sets how far addresses may run ahead of data.
    At most `max_outstanding` bursts wait for their B response."""

    def __init__(self, *, beat_bytes: int, max_beats: int, fifo_depth: int = 8,
                 max_outstanding: int = 64):
        _check(beat_bytes, max_beats)
        _check_depth("fifo_depth", fifo_depth)
        _check_depth("max_outstanding", max_outstanding)
        self.beat_bytes = beat_bytes
        self.max_beats = max_beats
        self.fifo_depth = fifo_depth
        self.max_outstanding = max_outstanding
        super().__init__({
            "req": In(range_signature(max_beats)),
            "data": In(write_beat_signature(beat_bytes)),
            "axi": Out(wiring.Signature(axi_write_members(8 * beat_bytes))),
            "idle": Out(1),
            "error": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the write master: burst splitter, AW, W and B channels."""
        m = Module()
        axi = self.axi
        m.submodules.split = split = RangeBursts(beat_bytes=self.beat_bytes,
                                                 max_beats=self.max_beats)
        wiring.connect(m, wiring.flipped(self.req), split.req)
        m.submodules.lens = lens = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        pending = _Outstanding(m, self.max_outstanding, "pending")

        # AW: a burst goes out when its length has room in the FIFO and the
        # outstanding count is below the cap (both fall only on an AW).
        aw_ok = Signal()
        aw_fire = Signal()
        m.d.comb += [aw_ok.eq(split.bursts.valid & lens.w_rdy & pending.room),
                     axi.awid.eq(0), axi.awaddr.eq(split.bursts.payload.addr),
                     axi.awlen.eq(split.bursts.payload.len),
                     axi.awsize.eq(exact_log2(self.beat_bytes)), axi.awburst.eq(BURST_INCR),
                     axi.awvalid.eq(aw_ok),
                     split.bursts.ready.eq(axi.awready & lens.w_rdy & pending.room),
                     aw_fire.eq(axi.awvalid & axi.awready),
                     lens.w_data.eq(split.bursts.payload.len),
                     lens.w_en.eq(aw_fire)]

        # W: beats of the burst at the FIFO's head; wlast when the beat count
        # reaches its len.
        beat = Signal(8)
        last = Signal()
        w_fire = Signal()
        m.d.comb += [last.eq(beat == lens.r_data),
                     axi.wvalid.eq(self.data.valid & lens.r_rdy),
                     axi.wdata.eq(self.data.payload.data), axi.wstrb.eq(self.data.payload.strb),
                     axi.wlast.eq(last),
                     self.data.ready.eq(axi.wready & lens.r_rdy),
                     w_fire.eq(axi.wvalid & axi.wready),
                     lens.r_en.eq(w_fire & last)]
        with m.If(w_fire):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))

        # B: always taken; a burst is finished with its response.
        m.d.comb += axi.bready.eq(1)
        pending.track(aw_fire, axi.bvalid)
        _sticky(m, self.error, axi.bvalid & (axi.bresp != RESP_OKAY), self.clear)
        m.d.comb += self.idle.eq(~self.req.valid & ~split.busy & pending.none)
        return m
