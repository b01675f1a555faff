"""Shared stream plumbing: memory-to-stream reader and a nested-loop address
generator (the two halves of a simple DMA read engine).

Both are `wiring.Component`s built on `amaranth.lib.stream` with full
back-pressure; they are reused by the fast-path systems of every block.
"""
from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .rtl import count_width

__all__ = ["MemoryStreamReader", "NestedAddressGenerator"]


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

    def __init__(self, *, addr_width: int, shape):
        self._shape = shape
        super().__init__({
            "addr": In(stream.Signature(unsigned(addr_width))),
            "data": Out(stream.Signature(shape)),
            "port": In(memory.ReadPort.Signature(addr_width=addr_width, shape=shape)),
        })

    def elaborate(self, platform):
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

    def elaborate(self, platform):
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
