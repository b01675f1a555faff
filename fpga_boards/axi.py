"""AXI building blocks of the Vitis RTL kernel shell (DESIGN §5), in Amaranth 0.5.

* `ControlSlave`  -- AXI4-Lite slave with the `ap_ctrl_hs` register map:
      0x00 control   bit0 ap_start (R/W; cleared when the kernel takes it unless
                     auto_restart), bit1 ap_done (RO, clear on read), bit2 ap_idle
                     (RO), bit3 ap_ready (RO, clear on read), bit7 auto_restart (R/W)
      0x04 GIE       bit0 global interrupt enable
      0x08 IER       bit0 ap_done, bit1 ap_ready interrupt enable
      0x0C ISR       bit0 ap_done, bit1 ap_ready status (toggle on write)
      0x10...        kernel arguments: 32-bit scalars one word, 64-bit pointers
                     two words (low word first, 8-byte aligned); a read-only
                     argument (a status the kernel reports) ignores writes
  `interrupt` = GIE & |(ISR).
* `BurstSplitter` -- turns ranges (a byte address, a fixed number of beats) into
  AXI4 INCR bursts of at most 256 beats that never cross a 4 KB boundary
  (hdl.axi.RangeBursts with the beat count fixed).
* `AxiReadDMA`    -- loop nest of ranges -> AR bursts; R beats unpacked into a
  stream of memory words (several words per beat when a word is narrower).
* `AxiWriteDMA`   -- a stream of words -> AW bursts + W beats; `done` once every
  B response is back.

Ports of the AXI sides use the bare AXI names (awaddr, rdata, ...); the kernel
top renames them to the flat `s_axi_control_*` / `m_axi_<name>_*` names Vitis
expects. Memory words sit little-endian in device memory, each padded to a
power-of-two number of bytes (`word_bytes`); quantflow's word layouts are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from hdl.axi import (AXI_ADDR_BITS, AXI_ID_BITS, BOUNDARY_BYTES, BURST_LAYOUT,
                     MAX_BURST_BEATS, RangeBursts, axi_read_members, axi_write_members)
from hdl.streams import NestedAddressGenerator

from hdl.rtl import is_const, zext

__all__ = [
    "AXI_ADDR_BITS", "AXIL_DATA_BITS", "AXIL_ADDR_BITS", "AXI_ID_BITS", "MAX_BURST_BEATS",
    "BOUNDARY_BYTES", "MAX_DATA_BITS", "REG_CTRL", "REG_GIE", "REG_IER", "REG_ISR",
    "ARGS_BASE", "KernelArg", "Register", "control_registers", "arg_registers",
    "arg_offsets", "word_bytes", "beat_bits",
    "axil_slave_members", "axi_read_members", "axi_write_members",
    "ControlSlave", "BurstSplitter", "AxiReadDMA", "AxiWriteDMA",
]

# AXI_ADDR_BITS, AXI_ID_BITS, MAX_BURST_BEATS, BOUNDARY_BYTES, axi_read_members and
# axi_write_members live in hdl.axi (the run-time DMAs of the core use them too)
# and are re-exported here under the same names.
AXIL_DATA_BITS = 32
AXIL_ADDR_BITS = 12       # 4 KB control window
MAX_DATA_BITS = 512       # widest m_axi data bus Vitis links

REG_CTRL, REG_GIE, REG_IER, REG_ISR, ARGS_BASE = 0x00, 0x04, 0x08, 0x0C, 0x10
CTRL_START, CTRL_DONE, CTRL_IDLE, CTRL_READY, CTRL_AUTO_RESTART = 0, 1, 2, 3, 7


@dataclass(frozen=True, kw_only=True)
class KernelArg:
    """One kernel argument in the register map: a 64-bit buffer pointer (bits=64)
    or a 32-bit scalar (bits=32). `readonly`: a status register the kernel
    drives (the host reads it after ap_done; its writes are ignored)."""
    name: str
    bits: int
    readonly: bool = False

    def __post_init__(self):
        if self.bits not in (32, 64):
            raise ValueError(f"argument {self.name!r}: bits must be 32 or 64, got {self.bits}")
        if not self.name.isidentifier():
            raise ValueError(f"argument name {self.name!r} must be an identifier")


@dataclass(frozen=True, kw_only=True)
class Register:
    """One register of a kernel's s_axi_control map, as the build tree (package
    Tcl, manifest) and the docs list it. access: "control" (the four ap_ctrl_hs
    registers), "rw" (an argument the host writes), "ro" (a status it reads);
    `bus`: the m_axi bundle a pointer argument addresses (ASSOCIATED_BUSIF)."""
    name: str
    offset: int
    bits: int
    access: str
    description: str
    bus: str | None = None


def control_registers() -> tuple[Register, ...]:
    """The ap_ctrl_hs registers every kernel has, at 0x00..0x0C."""
    return (Register(name="CTRL", offset=REG_CTRL, bits=32, access="control",
                     description="ap_start/ap_done/ap_idle/ap_ready/auto_restart"),
            Register(name="GIER", offset=REG_GIE, bits=32, access="control",
                     description="global interrupt enable"),
            Register(name="IP_IER", offset=REG_IER, bits=32, access="control",
                     description="IP interrupt enable"),
            Register(name="IP_ISR", offset=REG_ISR, bits=32, access="control",
                     description="IP interrupt status"))


def arg_registers(args: Iterable[KernelArg], *, buses: dict | None = None,
                  descriptions: dict | None = None) -> tuple[Register, ...]:
    """The registers of `args` (KernelArg) at their arg_offsets; `buses` maps a
    pointer argument to its m_axi bundle, `descriptions` overrides the default
    text."""
    offs = arg_offsets(args)
    buses, descriptions = buses or {}, descriptions or {}
    out = []
    for a in args:
        bus = buses.get(a.name)
        kind = ("status" if a.readonly else "buffer pointer" if bus else
                "64-bit scalar" if a.bits == 64 else "scalar")
        out.append(Register(name=a.name, offset=offs[a.name], bits=a.bits,
                            access="ro" if a.readonly else "rw",
                            description=descriptions.get(a.name, f"{kind} argument {a.name}"),
                            bus=bus))
    return tuple(out)


def arg_offsets(args: Iterable[KernelArg]) -> dict[str, int]:
    """Byte offset of every argument: from 0x10, 64-bit ones 8-byte aligned."""
    out, off = {}, ARGS_BASE
    for a in args:
        if a.bits == 64 and off % 8:
            off += 4
        out[a.name] = off
        off += a.bits // 8
    if off > (1 << AXIL_ADDR_BITS):
        raise ValueError(f"{len(args)} arguments do not fit the {1 << AXIL_ADDR_BITS}-byte "
                         f"control window")
    return out


def word_bytes(word_bits: int) -> int:
    """Bytes a memory word occupies in device memory (a power of two >= 1)."""
    return 1 << ceil_log2(max(1, -(-word_bits // 8)))


def beat_bits(word_bits: int) -> int:
    """AXI data width of a master carrying `word_bits` words: the padded word,
    at least 32 bits (the narrowest m_axi Vitis accepts)."""
    return max(AXIL_DATA_BITS, 8 * word_bytes(word_bits))


def axil_slave_members() -> dict:
    """The AXI4-Lite slave's ports as wiring members (AW, W, B, AR, R channels)."""
    a, d = AXIL_ADDR_BITS, AXIL_DATA_BITS
    return {"awaddr": In(a), "awvalid": In(1), "awready": Out(1),
            "wdata": In(d), "wstrb": In(d // 8), "wvalid": In(1), "wready": Out(1),
            "bresp": Out(2), "bvalid": Out(1), "bready": In(1),
            "araddr": In(a), "arvalid": In(1), "arready": Out(1),
            "rdata": Out(d), "rresp": Out(2), "rvalid": Out(1), "rready": In(1)}


class ControlSlave(wiring.Component):
    """AXI4-Lite `s_axi_control` with the ap_ctrl_hs protocol (module docstring).

    Kernel side: `ap_start` (level: the host asked for a run), `ap_done` and
    `ap_ready` (one-cycle pulses from the kernel), `ap_idle` (level), and one
    `arg_<name>` port per argument: an output (the register contents), or for a
    read-only argument an input (the value the host reads)."""

    def __init__(self, args: Iterable[KernelArg]):
        self.args = tuple(args)
        self.offsets = arg_offsets(self.args)
        members = dict(axil_slave_members())
        members.update({"interrupt": Out(1), "ap_start": Out(1), "ap_done": In(1),
                        "ap_ready": In(1), "ap_idle": In(1)})
        for a in self.args:
            members[f"arg_{a.name}"] = In(a.bits) if a.readonly else Out(a.bits)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """Build the AXI4-Lite register file and the ap_ctrl_hs start/done/idle logic."""
        m = Module()
        start = Signal()
        done = Signal()
        ready = Signal()
        auto_restart = Signal()
        gie = Signal()
        ier = Signal(2)
        isr = Signal(2)
        m.d.comb += [self.ap_start.eq(start),
                     self.interrupt.eq(gie & isr.any())]

        # Write channel: take address and data together (the slave may wait for
        # both valids), answer OKAY.
        whs = Signal()
        m.d.comb += [whs.eq(self.awvalid & self.wvalid & ~self.bvalid),
                     self.awready.eq(whs), self.wready.eq(whs), self.bresp.eq(0)]
        with m.If(whs):
            m.d.sync += self.bvalid.eq(1)
        with m.Elif(self.bready):
            m.d.sync += self.bvalid.eq(0)

        def wr(offset):
            return whs & (self.awaddr == offset)

        # Words of each argument, low word first; the host writes only the
        # read-write ones.
        words = {}  # offset -> (signal slice)
        writable = {}
        for a in self.args:
            reg = getattr(self, f"arg_{a.name}")
            for w in range(a.bits // 32):
                words[self.offsets[a.name] + 4 * w] = reg[32 * w:32 * (w + 1)]
                if not a.readonly:
                    writable[self.offsets[a.name] + 4 * w] = reg[32 * w:32 * (w + 1)]
        for off, word in writable.items():
            for b in range(4):
                with m.If(wr(off) & self.wstrb[b]):
                    m.d.sync += word[8 * b:8 * (b + 1)].eq(self.wdata[8 * b:8 * (b + 1)])
        with m.If(wr(REG_GIE) & self.wstrb[0]):
            m.d.sync += gie.eq(self.wdata[0])
        with m.If(wr(REG_IER) & self.wstrb[0]):
            m.d.sync += ier.eq(self.wdata[:2])
        with m.If(wr(REG_CTRL) & self.wstrb[0]):
            m.d.sync += auto_restart.eq(self.wdata[CTRL_AUTO_RESTART])

        # ap_start: set by the host, cleared when the kernel takes the run
        # (ap_ready) unless auto_restart keeps it set.
        with m.If(wr(REG_CTRL) & self.wstrb[0] & self.wdata[CTRL_START]):
            m.d.sync += start.eq(1)
        with m.Elif(self.ap_ready):
            m.d.sync += start.eq(auto_restart)

        # Read channel.
        rhs = Signal()
        m.d.comb += [rhs.eq(self.arvalid & ~self.rvalid), self.arready.eq(rhs),
                     self.rresp.eq(0)]
        ctrl_word = Signal(32)
        m.d.comb += [ctrl_word[CTRL_START].eq(start), ctrl_word[CTRL_DONE].eq(done),
                     ctrl_word[CTRL_IDLE].eq(self.ap_idle), ctrl_word[CTRL_READY].eq(ready),
                     ctrl_word[CTRL_AUTO_RESTART].eq(auto_restart)]
        rd_ctrl = Signal()
        m.d.comb += rd_ctrl.eq(rhs & (self.araddr == REG_CTRL))
        with m.If(rhs):
            m.d.sync += self.rvalid.eq(1)
            with m.Switch(self.araddr):
                with m.Case(REG_CTRL):
                    m.d.sync += self.rdata.eq(ctrl_word)
                with m.Case(REG_GIE):
                    m.d.sync += self.rdata.eq(gie)
                with m.Case(REG_IER):
                    m.d.sync += self.rdata.eq(ier)
                with m.Case(REG_ISR):
                    m.d.sync += self.rdata.eq(isr)
                for off, word in words.items():
                    with m.Case(off):
                        m.d.sync += self.rdata.eq(word)
                with m.Default():
                    m.d.sync += self.rdata.eq(0)
        with m.Elif(self.rready):
            m.d.sync += self.rvalid.eq(0)

        # ap_done / ap_ready: set by the kernel's pulse, cleared by a read of 0x00
        # (a pulse in the same cycle as the read wins: it is not lost).
        for flag, pulse in ((done, self.ap_done), (ready, self.ap_ready)):
            with m.If(pulse):
                m.d.sync += flag.eq(1)
            with m.Elif(rd_ctrl):
                m.d.sync += flag.eq(0)
        # ISR: set by an enabled event, toggled by a host write of 1.
        for bit, pulse in ((0, self.ap_done), (1, self.ap_ready)):
            with m.If(ier[bit] & pulse):
                m.d.sync += isr[bit].eq(1)
            with m.Elif(wr(REG_ISR) & self.wstrb[0]):
                m.d.sync += isr[bit].eq(isr[bit] ^ self.wdata[bit])
        return m


class BurstSplitter(wiring.Component):
    """Ranges of `range_beats` beats of `beat_bytes` bytes each, starting at a
    beat-aligned byte address -> INCR bursts (addr, len = beats - 1) of at most
    256 beats, none crossing a 4 KB boundary. `busy` while a range is pending.
    hdl.axi.RangeBursts does the splitting; here the beat count is fixed."""

    def __init__(self, *, range_beats: int, beat_bytes: int):
        if range_beats < 1:
            raise ValueError(f"range_beats must be >= 1, got {range_beats}")
        exact_log2(beat_bytes)  # raises unless a power of two
        self.range_beats = range_beats
        self.beat_bytes = beat_bytes
        super().__init__({
            "ranges": In(stream.Signature(unsigned(AXI_ADDR_BITS))),
            "bursts": Out(stream.Signature(BURST_LAYOUT)),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the splitter: a range at a time through hdl.axi.RangeBursts."""
        m = Module()
        m.submodules.split = split = RangeBursts(beat_bytes=self.beat_bytes,
                                                 max_beats=self.range_beats)
        m.d.comb += [split.req.valid.eq(self.ranges.valid),
                     split.req.payload.addr.eq(self.ranges.payload),
                     split.req.payload.beats.eq(self.range_beats),
                     self.ranges.ready.eq(split.req.ready),
                     self.busy.eq(split.busy)]
        wiring.connect(m, split.bursts, wiring.flipped(self.bursts))
        return m


@dataclass(frozen=True, kw_only=True)
class RangeNest:
    """Where a buffer's words are, as a loop nest of ranges (word units):

        for o in range(n_outer): for i in range(n_inner):
            words [o*outer_stride + i*inner_stride, ... + length)

    `outer_stride=None`: continue where the inner loop stopped (linear walk).
    n_outer / n_inner are runtime values (kernel scalar arguments)."""
    length: int
    inner_stride: int
    outer_stride: int | None


#: Width of the word-index arithmetic of the range generators (2**40 words).
_INDEX_BITS = 40
#: Widest loop count (a 32-bit scalar argument).
_MAX_COUNT = (1 << 32) - 1


class _RangeDMA(wiring.Component):
    """Shared front half of both DMAs: a NestedAddressGenerator of range start
    word indices -> byte addresses -> BurstSplitter."""

    def __init__(self, *, word_bits: int, nest: RangeNest, extra: dict):
        self.word_bits = word_bits
        self.word_bytes = word_bytes(word_bits)
        self.data_bits = beat_bits(word_bits)
        if self.data_bits > MAX_DATA_BITS:
            raise ValueError(f"a {word_bits}-bit memory word needs a {self.data_bits}-bit "
                             f"AXI bus; Vitis links at most {MAX_DATA_BITS} bits: use a "
                             f"narrower configuration (fewer columns)")
        self.words_per_beat = self.data_bits // (8 * self.word_bytes)
        self.nest = nest
        wpb = self.words_per_beat
        for what, v in (("length", nest.length), ("inner_stride", nest.inner_stride),
                        ("outer_stride", nest.outer_stride or 0)):
            if v % wpb:
                raise ValueError(f"range {what}={v} words is not a multiple of the "
                                 f"{wpb} words per {self.data_bits}-bit beat; ranges must "
                                 f"start on beat boundaries")
        self.range_beats = nest.length // wpb
        super().__init__({"start": In(1), "base": In(AXI_ADDR_BITS),
                          "n_outer": In(32), "n_inner": In(32), **extra})

    def _front(self, m: Module) -> tuple[BurstSplitter, Signal]:
        m.submodules.ranges = gen = NestedAddressGenerator(
            addr_width=_INDEX_BITS, inner_len=1, inner_stride=self.nest.inner_stride,
            outer_stride=self.nest.outer_stride, max_outer=_MAX_COUNT, max_inner=_MAX_COUNT)
        m.submodules.split = split = BurstSplitter(range_beats=self.range_beats,
                                                   beat_bytes=self.data_bits // 8)
        base = Signal(AXI_ADDR_BITS)
        with m.If(self.start):
            m.d.sync += base.eq(self.base)
        m.d.comb += [gen.start.eq(self.start), gen.n_outer.eq(self.n_outer),
                     gen.n_inner.eq(self.n_inner),
                     split.ranges.valid.eq(gen.addr.valid),
                     split.ranges.payload.eq(base + zext(Cat(
                         Const(0, exact_log2(self.word_bytes)), gen.addr.payload),
                         AXI_ADDR_BITS)),
                     gen.addr.ready.eq(split.ranges.ready)]
        return split, gen.busy


class AxiReadDMA(_RangeDMA):
    """Reads a buffer's ranges (RangeNest) from `base` and emits its words on
    `data` in order. `start` samples base/n_outer/n_inner."""

    def __init__(self, *, word_bits: int, nest: RangeNest):
        super().__init__(word_bits=word_bits, nest=nest, extra={
            "data": Out(stream.Signature(unsigned(word_bits))),
            "axi": Out(wiring.Signature(axi_read_members(beat_bits(word_bits)))),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the DMA: range walk, burst splitter, AR channel and the R data path."""
        m = Module()
        split, _ = self._front(m)
        axi = self.axi
        m.d.comb += [axi.arid.eq(0), axi.araddr.eq(split.bursts.payload.addr),
                     axi.arlen.eq(split.bursts.payload.len),
                     axi.arsize.eq(exact_log2(self.data_bits // 8)),
                     axi.arburst.eq(1),  # INCR
                     axi.arvalid.eq(split.bursts.valid),
                     split.bursts.ready.eq(axi.arready)]
        # R beats -> words: word `idx` of the beat; the beat is released with its
        # last word. Bursts of one master return in order (one ID).
        wpb = self.words_per_beat
        pad = 8 * self.word_bytes
        m.d.comb += self.data.valid.eq(axi.rvalid)
        if wpb == 1:
            m.d.comb += [self.data.payload.eq(axi.rdata[:self.word_bits]),
                         axi.rready.eq(self.data.ready)]
        else:
            idx = Signal(range(wpb))
            m.d.comb += axi.rready.eq(self.data.ready & (idx == wpb - 1))
            with m.Switch(idx):
                for i in range(wpb):
                    with m.Case(i):
                        m.d.comb += self.data.payload.eq(
                            axi.rdata[i * pad:i * pad + self.word_bits])
            with m.If(self.data.valid & self.data.ready):
                m.d.sync += idx.eq(Mux(idx == wpb - 1, 0, idx + 1))
            with m.If(self.start):
                m.d.sync += idx.eq(0)
        return m


class AxiWriteDMA(_RangeDMA):
    """Writes the words of `data` into a buffer's ranges from `base`; `done`
    pulses once the last B response of the run is back. One word per beat."""

    def __init__(self, *, word_bits: int, nest: RangeNest, fifo_depth: int = 8):
        self.fifo_depth = fifo_depth
        super().__init__(word_bits=word_bits, nest=nest, extra={
            "data": In(stream.Signature(unsigned(word_bits))),
            "done": Out(1),
            "axi": Out(wiring.Signature(axi_write_members(beat_bits(word_bits)))),
        })
        if self.words_per_beat != 1:
            raise ValueError(f"the write DMA needs words of >= {AXIL_DATA_BITS} bits, "
                             f"got {word_bits}")

    def elaborate(self, platform: object) -> Module:
        """Build the DMA: range walk, burst splitter, AW, W and B channels."""
        m = Module()
        split, gen_busy = self._front(m)
        axi = self.axi
        # Burst lengths travel from the AW side to the W side through a FIFO.
        m.submodules.lens = lens = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        aw_ok = Signal()
        m.d.comb += [aw_ok.eq(split.bursts.valid & lens.w_rdy),
                     axi.awid.eq(0), axi.awaddr.eq(split.bursts.payload.addr),
                     axi.awlen.eq(split.bursts.payload.len),
                     axi.awsize.eq(exact_log2(self.data_bits // 8)), axi.awburst.eq(1),
                     axi.awvalid.eq(aw_ok),
                     split.bursts.ready.eq(axi.awready & lens.w_rdy),
                     lens.w_data.eq(split.bursts.payload.len),
                     lens.w_en.eq(aw_ok & axi.awready)]
        beat = Signal(8)
        last = Signal()
        m.d.comb += [last.eq(beat == lens.r_data),
                     axi.wvalid.eq(self.data.valid & lens.r_rdy),
                     axi.wdata.eq(self.data.payload), axi.wstrb.eq(-1), axi.wlast.eq(last),
                     self.data.ready.eq(axi.wready & lens.r_rdy),
                     lens.r_en.eq(axi.wvalid & axi.wready & last)]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))

        # Outstanding bursts: +1 per AW, -1 per B.
        outstanding = Signal(16)
        aw_fire = Signal()
        b_fire = Signal()
        m.d.comb += [aw_fire.eq(axi.awvalid & axi.awready), axi.bready.eq(1),
                     b_fire.eq(axi.bvalid)]
        with m.If(aw_fire & ~b_fire):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(b_fire & ~aw_fire):
            m.d.sync += outstanding.eq(outstanding - 1)
        running = Signal()
        finished = Signal()
        m.d.comb += finished.eq(running & ~gen_busy & ~split.busy & is_const(outstanding, 0)
                                & ~self.start)
        m.d.comb += self.done.eq(finished)
        with m.If(self.start):
            m.d.sync += [running.eq(1), beat.eq(0)]
        with m.Elif(finished):
            m.d.sync += running.eq(0)
        return m
