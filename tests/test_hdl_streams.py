# amaranth: UnusedElaboratable=no
"""hdl.streams: MemoryStreamReader under random stalls, full rate when
unstalled; NestedAddressGenerator against the Python loop nest;
PreloadedMemory (load port, lock, walk) and RunControl (start/done/cycles)."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring

from helpers.amaranth_streams import StreamSink, StreamSource, simulate
from hdl.streams import (LoadPort, MemoryStreamReader, NestedAddressGenerator, PreloadedMemory,
                         RunControl)

from hdl.rtl import tree_sum


def _reader_bench(addrs, *, p_idle, p_stall, seed, depth=16, width=12):
    rng = random.Random(seed)
    contents = [rng.getrandbits(width) for _ in range(depth)]
    m = Module()
    m.submodules.mem = mem = memory.Memory(shape=width, depth=depth, init=contents)
    m.submodules.rd = rd = MemoryStreamReader(addr_width=4, shape=width)
    wiring.connect(m, rd.port, mem.read_port())
    source = StreamSource(rd.addr, addrs, rng, p_idle=p_idle)
    sink = StreamSink(rd.data, rng, count=len(addrs), p_stall=p_stall,
                      limit=20 * len(addrs) + 20)
    simulate(m, sink, background=[source])
    return sink.got, [contents[a] for a in addrs], sink.ticks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reader_random_stalls(seed):
    addrs = [random.Random(seed).randrange(16) for _ in range(60)]
    got, want, _ = _reader_bench(addrs, p_idle=0.3, p_stall=0.4, seed=seed)
    assert got == want


def test_reader_full_rate():
    addrs = list(range(16)) * 2
    got, want, cycles = _reader_bench(addrs, p_idle=0.0, p_stall=0.0, seed=0)
    assert got == want
    assert cycles == len(addrs) + 1  # one cycle of read latency, then one word per cycle


def _walk(*, inner_len, inner_stride, outer_stride, n_outer, n_inner):
    out, base_o = [], 0
    for o in range(n_outer):
        base = base_o
        for i in range(n_inner):
            out += [base + j for j in range(inner_len)]
            base += inner_stride
        base_o = base if outer_stride is None else base_o + outer_stride
    return out


def _walk_bench(dut, sink, *, n_outer, n_inner, setup=None):
    """Testbench: `setup`, then a walk of n_outer x n_inner started and
    drained through `sink` until the DUT's busy falls."""
    async def bench(ctx):
        if setup is not None:
            await setup(ctx)
        ctx.set(dut.n_outer, n_outer)
        ctx.set(dut.n_inner, n_inner)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await sink(ctx)
        assert not ctx.get(dut.busy)
    return bench


@pytest.mark.parametrize("inner_len, inner_stride, outer_stride, n_outer, n_inner", [
    (4, 4, 0, 3, 2),      # act: restart every outer step
    (4, 0, 4, 3, 2),      # code: repeat the inner block, advance per outer step
    (3, 3, None, 2, 3),   # result: linear walk
    (1, 0, 1, 3, 1),
    (4, 4, 0, 0, 2),      # empty
])
def test_address_generator(inner_len, inner_stride, outer_stride, n_outer, n_inner):
    dut = NestedAddressGenerator(addr_width=8, inner_len=inner_len, inner_stride=inner_stride,
                                 outer_stride=outer_stride, max_outer=3, max_inner=3)
    want = _walk(inner_len=inner_len, inner_stride=inner_stride, outer_stride=outer_stride,
                 n_outer=n_outer, n_inner=n_inner)
    sink = StreamSink(dut.addr, random.Random(len(want)), until=dut.busy, p_stall=0.4,
                      limit=10 * len(want) + 10)

    simulate(dut, _walk_bench(dut, sink, n_outer=n_outer, n_inner=n_inner))
    assert sink.got == want


def test_tree_sum_rejects_empty():
    assert tree_sum([1, 2, 3]) == 6
    with pytest.raises(ValueError):
        tree_sum([])


def test_preloaded_memory_loads_and_streams():
    """Words written through the load port (only with its own select, never
    while locked) come out in walk order under back-pressure; busy falls after
    the last transfer."""
    load = LoadPort(sel_width=2, addr_width=6, data_width=16)
    dut = PreloadedMemory(load=load, sel=1, shape=12, depth=8, inner_len=2, inner_stride=0,
                          outer_stride=2, max_outer=4, max_inner=2)
    words = [(37 * i + 5) & 0xFFF for i in range(8)]
    want = [words[a] for a in _walk(inner_len=2, inner_stride=0, outer_stride=2,
                                    n_outer=3, n_inner=2)]
    sink = StreamSink(dut.data, random.Random(4), until=dut.busy, p_stall=0.4,
                      limit=10 * len(want) + 10)

    async def write(ctx, sel, addr, word, lock=0):
        ctx.set(dut.load_sel, sel)
        ctx.set(dut.load_addr, addr)
        ctx.set(dut.load_data, word)
        ctx.set(dut.load_en, 1)
        ctx.set(dut.lock, lock)
        await ctx.tick()
        ctx.set(dut.load_en, 0)
        ctx.set(dut.lock, 0)

    async def load(ctx):
        for a, w in enumerate(words):
            await write(ctx, 1, a, w)
        await write(ctx, 0, 0, 0x123)            # another memory's select
        await write(ctx, 1, 1, 0x456, lock=1)    # locked: ignored

    simulate(dut, _walk_bench(dut, sink, n_outer=3, n_inner=2, setup=load))
    assert sink.got == want


def test_preloaded_memory_rejects_a_narrow_load_port():
    with pytest.raises(ValueError, match="widen the LoadPort"):
        PreloadedMemory(load=LoadPort(sel_width=1, addr_width=2, data_width=8), sel=0,
                        shape=8, depth=8, max_outer=8)
    with pytest.raises(ValueError, match="sel=2"):
        PreloadedMemory(load=LoadPort(sel_width=1, addr_width=3, data_width=8), sel=2,
                        shape=8, depth=8, max_outer=8)


def test_run_control_counts_running_cycles():
    dut = RunControl()
    seen = {}

    async def bench(ctx):
        ctx.set(dut.start, 1)
        assert ctx.get(dut.go)
        await ctx.tick()
        ctx.set(dut.start, 1)   # a start while running is ignored
        assert ctx.get(dut.running) and not ctx.get(dut.go) and not ctx.get(dut.done)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(3):
            await ctx.tick()
        ctx.set(dut.finished, 1)
        await ctx.tick()
        ctx.set(dut.finished, 0)
        seen.update(done=ctx.get(dut.done), running=ctx.get(dut.running),
                    cycles=ctx.get(dut.cycles))

    simulate(dut, bench)
    assert seen == {"done": 1, "running": 0, "cycles": 5}
