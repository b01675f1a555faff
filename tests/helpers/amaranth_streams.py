"""Amaranth-simulator drivers for `lib.stream` interfaces: a source that
offers words with random idle cycles, a sink that takes them with random
stalls, a monitor of first/last transfer cycles, and the word packing of the
blocks' stream payloads (element i at bits [i*width, (i+1)*width)).

A bench composes them:

    rng = random.Random(seed)
    src = StreamSource(dut.act, words, rng, p_idle=0.3)
    snk = StreamSink(dut.result, rng, count=len(want), p_stall=0.4, limit=1000)
    mon = TransferMonitor(dut.act.valid & dut.act.ready,
                          dut.result.valid & dut.result.ready)
    simulate(dut, snk, background=[src, mon])
    assert snk.got == want and mon.cycles == model
"""
from __future__ import annotations

import inspect

from amaranth.hdl import Const, Value
from amaranth.sim import Simulator

__all__ = ["pack", "unpack_signed", "StreamSource", "StreamSink", "TransferMonitor",
           "simulate"]


def pack(values, width: int) -> int:
    """Little-endian word of `values`, each cut to `width` bits."""
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << width) - 1)) << (i * width)
    return word


def unpack_signed(word: int, width: int, count: int) -> list[int]:
    """The `count` signed `width`-bit elements of `word` (inverse of pack)."""
    out = []
    for i in range(count):
        v = (word >> (i * width)) & ((1 << width) - 1)
        out.append(v - (1 << width) if v >> (width - 1) else v)
    return out


class StreamSource:
    """Testbench offering `words` on `stream` in order. Before each beat it
    idles with probability `p_idle` per cycle, driving a random payload that
    the DUT must ignore; each beat is held until `ready`. `before_beat(ctx, n)`
    runs before beat n is offered (to drive a side-band port with it)."""

    def __init__(self, stream, words, rng, *, p_idle: float = 0.0, before_beat=None):
        self.stream, self.words, self.rng = stream, list(words), rng
        self.p_idle, self.before_beat = p_idle, before_beat

    async def __call__(self, ctx):
        valid, payload = self.stream.valid, Value.cast(self.stream.payload)
        for n, w in enumerate(self.words):
            while self.rng.random() < self.p_idle:
                ctx.set(valid, 0)
                ctx.set(payload, self.rng.getrandbits(len(payload)))
                await ctx.tick()
            if self.before_beat is not None:
                self.before_beat(ctx, n)
            ctx.set(valid, 1)
            ctx.set(payload, w)
            await ctx.tick().until(self.stream.ready)
        ctx.set(valid, 0)


class StreamSink:
    """Testbench taking payloads from `stream` into `got` (through `decode`),
    `ready` low with probability `p_stall` per cycle. It returns once it holds
    `count` payloads, or (count=None) in the first cycle `until` samples low;
    after `limit` cycles it fails, so a deadlock cannot hang the test.
    `ticks` counts the cycles it ran."""

    def __init__(self, stream, rng, *, count: int | None = None, until=None,
                 p_stall: float = 0.0, limit: int, decode=None):
        if (count is None) == (until is None):
            raise ValueError("StreamSink stops on `count` payloads or on `until` falling; "
                             "give exactly one")
        self.stream, self.rng, self.count, self.until = stream, rng, count, until
        self.p_stall, self.limit = p_stall, limit
        self.decode = decode or (lambda word: word)
        self.got, self.ticks = [], 0

    async def __call__(self, ctx):
        payload = Value.cast(self.stream.payload)
        until = Const(1) if self.until is None else self.until
        for _ in range(self.limit):
            if self.count is not None and len(self.got) == self.count:
                return
            ready = self.rng.random() >= self.p_stall
            ctx.set(self.stream.ready, ready)
            _, _, valid, word, more = await ctx.tick().sample(self.stream.valid, payload, until)
            self.ticks += 1
            if ready and valid:
                self.got.append(self.decode(word))
            if not more:
                return
        raise AssertionError(f"sink timed out after {self.limit} cycles with "
                             f"{len(self.got)} payloads")


class TransferMonitor:
    """Background testbench recording the cycle of the first `begin` and of
    the last `end` (one-bit expressions, e.g. an input's and the result's
    valid & ready); `cycles` spans both, inclusive."""

    def __init__(self, begin, end):
        self.begin, self.end = begin, end
        self.first = self.last = None

    async def __call__(self, ctx):
        cycle = 0
        async for _, _, b, e in ctx.tick().sample(self.begin, self.end):
            if b and self.first is None:
                self.first = cycle
            if e:
                self.last = cycle
            cycle += 1

    @property
    def cycles(self) -> int:
        return self.last - self.first + 1


def simulate(dut, *testbenches, background=(), period: float = 1e-8) -> None:
    """Run `testbenches` to completion against `dut` (one clock), with the
    `background` testbenches alongside."""
    sim = Simulator(dut)
    sim.add_clock(period)
    for tb in background:
        sim.add_testbench(_coroutine(tb), background=True)
    for tb in testbenches:
        sim.add_testbench(_coroutine(tb))
    sim.run()


def _coroutine(tb):
    # Amaranth takes async functions only; the drivers are objects whose
    # __call__ is one.
    return tb if inspect.iscoroutinefunction(tb) else tb.__call__
