"""Shared stream plumbing: a memory-to-stream reader and a nested-loop address
generator (the two halves of a simple DMA read engine), and the two pieces of
a preloaded "system" wrapper built from them: memories written through one
load port and read out as streams (`PreloadedMemory`), and the start / done /
cycles handshake of a run (`RunControl`).

All are `wiring.Component`s built on `amaranth.lib.stream` with full
back-pressure; they are reused by the fast-path systems of every block.

A system wrapper (see hdl.mixpe.MixPESystem) reads::

    LOAD = LoadPort(sel_width=2, addr_width=10, data_width=64)
    # signature: {**LOAD.members(), "start": In(1), "done": Out(1),
    #             "cycles": Out(32), "n": In(count_width(depth)), ...}

    def elaborate(self, platform):
        m = Module()
        m.submodules.run = run = RunControl()
        m.submodules.dut = dut = Block(...)
        m.submodules.act_src = src = PreloadedMemory(
            load=LOAD, sel=0, shape=act_layout, depth=depth, max_outer=depth)
        src.connect_run(m, self, run, n_outer=self.n)   # load ports, lock, walk
        wiring.connect(m, src.data, dut.act)
        run.connect_system(m, self, finished=~src.busy & ...)   # start / done / cycles
        return m

SYSTEM_OVERHEAD cycles of such a run are not the datapath's: the address
generators start the cycle after `start`, and a synchronous read takes one more.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Shape, ShapeLike, Signal, ValueLike, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .rtl import count_width, is_const

__all__ = ["MemoryStreamReader", "NestedAddressGenerator", "LoadPort", "PreloadedMemory",
           "RunControl", "SYSTEM_OVERHEAD"]

#: `cycles` of a preloaded run beyond its datapath's own cycle model: one cycle
#: for the address generators to start and one for the first synchronous read.
SYSTEM_OVERHEAD = 2


class MemoryStreamReader(wiring.Component):
    """Turns a stream of addresses into a stream of memory words at one word per
    cycle, through a synchronous (1-cycle latency) `lib.memory` read port.

    The read port's own data register is the output register: while the output
    is stalled the port's `en` is low, so the word is held without a skid
    buffer. `addr.ready` is combinationally `~data.valid | data.ready`.

    Ports:
      addr : In(stream of unsigned(addr_width))
      data : Out(stream of `shape`)
      port : In(ReadPort.Signature) -- connect to `Memory.read_port()` (domain "sync")
    """

    def __init__(self, *, addr_width: int, shape: ShapeLike):
        self._shape = shape
        super().__init__({
            "addr": In(stream.Signature(unsigned(addr_width))),
            "data": Out(stream.Signature(shape)),
            "port": In(memory.ReadPort.Signature(addr_width=addr_width, shape=shape)),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the reader: address take, read port and the stalled output register."""
        m = Module()
        take = Signal()
        m.d.comb += [
            take.eq(~self.data.valid | self.data.ready),
            self.addr.ready.eq(take),
            self.port.addr.eq(self.addr.payload),
            # Holding `en` low while stalled keeps the read data register stable.
            self.port.en.eq(take),
            self.data.payload.eq(self.port.data),
        ]
        with m.If(take):
            m.d.sync += self.data.valid.eq(self.addr.valid)
        return m


class NestedAddressGenerator(wiring.Component):
    """Address stream for the loop nest

        for o in range(n_outer):
            for i in range(n_inner):
                for j in range(inner_len):
                    yield base(o, i) + j

    with base(o, i) = o * outer_stride + i * inner_stride. `outer_stride=None`
    means "continue where the inner loop stopped" (a linear walk), i.e.
    base(o+1, 0) = base(o, n_inner-1) + inner_stride. Strides and `inner_len`
    are elaboration-time constants; `n_outer`/`n_inner` are sampled at `start`.

    Ports:
      start   : In(1)  one-cycle pulse; (re)starts the walk
      n_outer : In(count_width(max_outer))
      n_inner : In(count_width(max_inner))
      addr    : Out(stream of unsigned(addr_width)), one beat per address
      busy    : Out(1) high from the cycle after `start` until the last beat transfers
    """

    def __init__(self, *, addr_width: int, inner_len: int, inner_stride: int,
                 outer_stride: int | None, max_outer: int, max_inner: int):
        if inner_len < 1:
            raise ValueError(f"inner_len must be >= 1, got {inner_len}")
        self.addr_width = addr_width
        self.inner_len = inner_len
        self.inner_stride = inner_stride
        self.outer_stride = outer_stride
        self.max_outer = max_outer
        self.max_inner = max_inner
        super().__init__({
            "start": In(1),
            "n_outer": In(count_width(max_outer)),
            "n_inner": In(count_width(max_inner)),
            "addr": Out(stream.Signature(unsigned(addr_width))),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the loop-nest counters and the address stream."""
        m = Module()
        aw = self.addr_width
        j = Signal(count_width(self.inner_len - 1))
        i = Signal(count_width(self.max_inner))
        o = Signal(count_width(self.max_outer))
        last_i = Signal.like(i)
        last_o = Signal.like(o)
        base_o = Signal(aw)
        base_i = Signal(aw)
        addr = Signal(aw)
        next_base_i = Signal(aw)
        next_base_o = Signal(aw)
        m.d.comb += [
            self.addr.payload.eq(addr),
            self.busy.eq(self.addr.valid),
            next_base_i.eq(base_i + self.inner_stride),
        ]
        if self.outer_stride is None:
            m.d.comb += next_base_o.eq(next_base_i)
        else:
            m.d.comb += next_base_o.eq(base_o + self.outer_stride)

        with m.If(self.start):
            m.d.sync += [
                j.eq(0), i.eq(0), o.eq(0),
                base_o.eq(0), base_i.eq(0), addr.eq(0),
                last_i.eq(self.n_inner - 1),
                last_o.eq(self.n_outer - 1),
                # An empty loop nest emits nothing.
                self.addr.valid.eq(self.n_outer.any() & self.n_inner.any()),
            ]
        with m.Elif(self.addr.valid & self.addr.ready):
            with m.If(j != self.inner_len - 1):
                m.d.sync += [j.eq(j + 1), addr.eq(addr + 1)]
            with m.Elif(i != last_i):
                m.d.sync += [j.eq(0), i.eq(i + 1),
                             base_i.eq(next_base_i), addr.eq(next_base_i)]
            with m.Elif(o != last_o):
                m.d.sync += [j.eq(0), i.eq(0), o.eq(o + 1), base_o.eq(next_base_o),
                             base_i.eq(next_base_o), addr.eq(next_base_o)]
            with m.Else():
                m.d.sync += self.addr.valid.eq(0)
        return m


@dataclass(frozen=True)
class LoadPort:
    """Widths of a system's load port, the back door through which the host
    writes its memories before a run: ports `load_sel` (which memory),
    `load_addr` (word address), `load_data` (word, LSB-aligned) and
    `load_en` (write strobe), all inputs of the system."""
    sel_width: int
    addr_width: int
    data_width: int

    def members(self) -> dict:
        """The load port's members, to splice into a component's signature."""
        return {"load_sel": In(self.sel_width), "load_addr": In(self.addr_width),
                "load_data": In(self.data_width), "load_en": In(1)}

    def connect(self, m: Module, source: wiring.Component, sink: wiring.Component) -> None:
        """Drive `sink`'s load ports from `source`'s (the system's own), each
        cut to the sink's width (a memory takes the low address and data bits)."""
        for name in self.members():
            port = getattr(sink, name)
            m.d.comb += port.eq(getattr(source, name)[:len(port)])


class PreloadedMemory(wiring.Component):
    """A `depth`-word memory of `shape`, written through a shared `LoadPort`
    and read out as a stream by a NestedAddressGenerator walk (its arguments
    as there; the defaults walk words 0 .. n_outer-1).

    Ports:
      load_sel, load_addr, load_data, load_en : In  the `load` port, `addr_width`
                address and `width` data bits (LoadPort.connect cuts the
                system's): while `load_sel == sel` and not `lock`, `load_en`
                writes load_data to load_addr
      lock    : In(1)  high during a run: loads are ignored
      start, n_outer, n_inner : In  the walk, as NestedAddressGenerator's
      data    : Out(stream of `shape`) the words the walk addresses, in order
      busy    : Out(1) some word of the walk has not been transferred yet
    """

    def __init__(self, *, load: LoadPort, sel: int, shape: ShapeLike, depth: int,
                 inner_len: int = 1, inner_stride: int = 1, outer_stride: int | None = None,
                 max_outer: int, max_inner: int = 1):
        if not 0 <= sel < (1 << load.sel_width):
            raise ValueError(f"sel={sel} does not fit load_sel of {load.sel_width} bits")
        self._load, self._sel, self._shape, self._depth = load, sel, shape, depth
        self.addr_width = max(1, ceil_log2(depth))
        self.width = (shape.size if isinstance(shape, data.Layout)
                      else Shape.cast(shape).width)
        if self.addr_width > load.addr_width or self.width > load.data_width:
            raise ValueError(f"a {depth}-word memory of {self.width}-bit words needs a load "
                             f"port of >= {self.addr_width} address and {self.width} data "
                             f"bits; widen the LoadPort")
        self._walk = dict(addr_width=self.addr_width, inner_len=inner_len,
                          inner_stride=inner_stride, outer_stride=outer_stride,
                          max_outer=max_outer, max_inner=max_inner)
        # The load port narrowed to this memory's words (LoadPort.connect
        # slices), so no input bit goes unused.
        super().__init__({
            "load_sel": In(load.sel_width),
            "load_addr": In(self.addr_width),
            "load_data": In(self.width),
            "load_en": In(1),
            "lock": In(1),
            "start": In(1),
            "n_outer": In(count_width(max_outer)),
            "n_inner": In(count_width(max_inner)),
            "data": Out(stream.Signature(shape)),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the memory, its load write port and the streaming read walk."""
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        wp = mem.write_port()
        m.d.comb += [
            wp.addr.eq(self.load_addr),
            wp.data.eq(self.load_data),
            wp.en.eq(self.load_en & is_const(self.load_sel, self._sel) & ~self.lock),
        ]
        m.submodules.walk = gen = NestedAddressGenerator(**self._walk)
        m.submodules.reader = rd = MemoryStreamReader(addr_width=self.addr_width,
                                                      shape=self._shape)
        m.d.comb += [gen.start.eq(self.start), gen.n_outer.eq(self.n_outer),
                     gen.n_inner.eq(self.n_inner)]
        wiring.connect(m, gen.addr, rd.addr)
        wiring.connect(m, rd.port, mem.read_port())
        wiring.connect(m, rd.data, wiring.flipped(self.data))
        m.d.comb += self.busy.eq(gen.busy | rd.data.valid)
        return m

    def connect_run(self, m: Module, system: wiring.Component, run: RunControl, *,
                    n_outer: ValueLike, n_inner: ValueLike = 1) -> None:
        """Load through `system`'s load ports (LoadPort.connect), locked while
        `run` runs; the walk restarts at `run.go` over n_outer x n_inner."""
        self._load.connect(m, system, self)
        m.d.comb += [self.lock.eq(run.running), self.start.eq(run.go),
                     self.n_outer.eq(n_outer), self.n_inner.eq(n_inner)]


class RunControl(wiring.Component):
    """The start / done / cycles handshake of a preloaded run.

    Ports:
      start    : In(1)   pulse; ignored while a run is in progress
      finished : In(1)   the system's work is complete (looked at while running)
      go       : Out(1)  the accepted start (start & ~running): (re)start the walks
      running  : Out(1)  from the cycle after `go` until the cycle after `finished`
      done     : Out(1)  high from the end of a run until the next `go`
      cycles   : Out(cycle_bits) cycles `running` was high in the last run
    """

    def __init__(self, *, cycle_bits: int = 32):
        super().__init__({
            "start": In(1),
            "finished": In(1),
            "go": Out(1),
            "running": Out(1),
            "done": Out(1),
            "cycles": Out(cycle_bits),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the running and done flags, the go pulse and the cycle counter."""
        m = Module()
        m.d.comb += self.go.eq(self.start & ~self.running)
        with m.If(self.go):
            m.d.sync += [self.running.eq(1), self.done.eq(0), self.cycles.eq(0)]
        with m.Elif(self.running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(self.finished):
                m.d.sync += [self.running.eq(0), self.done.eq(1)]
        return m

    def connect_system(self, m: Module, system: wiring.Component, *, finished: ValueLike) -> None:
        """Run `system`: started by its `start` port, ended by `finished`,
        reported on its `done` and `cycles` ports."""
        m.d.comb += [self.start.eq(system.start), self.finished.eq(finished),
                     system.done.eq(self.done), system.cycles.eq(self.cycles)]
