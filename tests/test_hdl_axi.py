# amaranth: UnusedElaboratable=no
"""hdl.axi: RangeBursts against a Python model of the burst split (4 KB pages,
256-beat cap, random ranges); AxiReader and AxiWriter against a Python AXI4
slave with random ready/valid stalls and several queued ranges (data, order,
wlast, busy/idle, sticky error and clear); the generated Verilog lint-clean;
and one cocotb + Verilator co-simulation of both engines on the Verilog memory
model cosim/axi_mem.v (preload, read back, write log, dump, pipelined timing)."""
from __future__ import annotations

import gc
import random
from collections import deque

import numpy as np
import pytest

from helpers.amaranth_streams import StreamSink, StreamSource
from helpers.amaranth_streams import simulate as _simulate
from hdl.axi import (AXI_ADDR_BITS, BOUNDARY_BYTES, MAX_BURST_BEATS, RESP_OKAY, RESP_SLVERR,
                     AxiReader, AxiWriter, RangeBursts)


def model_bursts(addr: int, beats: int, beat_bytes: int) -> list[tuple[int, int]]:
    """(addr, len) of the INCR bursts of a range: greedy, at most 256 beats,
    never across a 4 KB boundary."""
    out = []
    addr -= addr % beat_bytes
    while beats:
        to_page = (BOUNDARY_BYTES - addr % BOUNDARY_BYTES) // beat_bytes
        n = min(beats, MAX_BURST_BEATS, to_page)
        out.append((addr, n - 1))
        addr += n * beat_bytes
        beats -= n
    return out


def req_word(addr: int, beats: int) -> int:
    """A range request payload: {addr: 64 bits, beats} packed."""
    return addr | beats << AXI_ADDR_BITS


def random_ranges(rng, n, *, beat_bytes, max_beats, span=1 << 16):
    """Beat-aligned ranges in a `span`-byte window, biased to sit near 4 KB
    boundaries and to include the longest range."""
    out = []
    for _ in range(n):
        beats = rng.choice([1, min(2, max_beats), rng.randint(1, max_beats), max_beats])
        if rng.random() < 0.5:   # end just past a page boundary
            page = rng.randrange(1, span // BOUNDARY_BYTES)
            addr = page * BOUNDARY_BYTES - beat_bytes * rng.randint(1, min(beats, 8))
        else:
            addr = beat_bytes * rng.randrange(span // beat_bytes)
        out.append((max(0, addr), beats))
    return out


def simulate(dut, *benches, background=()):
    """helpers' simulate, then the testbenches a failing run left suspended are
    finalised at once: collected later, inside pytest's traceback formatting,
    they trip CPython 3.11's AST recursion check (INTERNALERROR)."""
    _simulate(dut, *benches, background=background)
    gc.collect()


def _seed(seed):
    print(f"seed={seed}")
    return random.Random(seed)


# ---------------------------------------------------------------- RangeBursts

def test_model_bursts_rules():
    assert model_bursts(0, 300, 1) == [(0, 255), (256, 43)]
    assert model_bursts(4096 - 64, 4, 32) == [(4096 - 64, 1), (4096, 1)]
    assert model_bursts(8192, 256, 32) == [(8192, 127), (8192 + 4096, 127)]


def _split_bench(dut, ranges, *, seed, p_idle, p_stall, limit=4000):
    rng = _seed(seed)
    want = [b for a, n in ranges for b in model_bursts(a, n, dut.beat_bytes)]
    src = StreamSource(dut.req, [req_word(a, n) for a, n in ranges], rng, p_idle=p_idle)
    sink = StreamSink(dut.bursts, rng, count=len(want), p_stall=p_stall, limit=limit,
                      decode=lambda w: (w & ((1 << AXI_ADDR_BITS) - 1), w >> AXI_ADDR_BITS))
    simulate(dut, sink, background=[src])
    return sink, want


@pytest.mark.parametrize("seed, beat_bytes, max_beats", [
    (1, 32, 300), (2, 64, 1), (3, 1, 1000), (4, 128, 70), (5, 4, 5000)])
def test_range_bursts_random(seed, beat_bytes, max_beats):
    dut = RangeBursts(beat_bytes=beat_bytes, max_beats=max_beats)
    ranges = random_ranges(random.Random(seed), 30, beat_bytes=beat_bytes,
                           max_beats=max_beats)
    sink, want = _split_bench(dut, ranges, seed=seed, p_idle=0.3, p_stall=0.4)
    assert sink.got == want


def test_range_bursts_cap_boundary_and_zero():
    dut = RangeBursts(beat_bytes=1, max_beats=5000)
    # 256 cap, a 4 KB split inside a range, a 0-beat range that is dropped,
    # and an unaligned address whose low bits are cleared (beat_bytes 1: none).
    ranges = [(0, 600), (4096 - 10, 20), (100, 0), (8192, 4096)]
    sink, want = _split_bench(dut, ranges, seed=0, p_idle=0.0, p_stall=0.0)
    assert sink.got == want
    assert want[:3] == [(0, 255), (256, 255), (512, 87)]
    assert (4096 - 10, 9) in want and (4096, 9) in want
    assert len(want) == 3 + 2 + 16


def test_range_bursts_one_per_cycle():
    """Ranges of one burst each, offered back to back: one burst per cycle (the
    next range is taken with its predecessor's last burst)."""
    dut = RangeBursts(beat_bytes=32, max_beats=16)
    ranges = [(64 * 32 * k, 4) for k in range(10)]
    sink, want = _split_bench(dut, ranges, seed=0, p_idle=0.0, p_stall=0.0)
    assert sink.got == want
    assert sink.ticks == len(want) + 1   # one cycle from the first range to its burst


@pytest.mark.parametrize("kw, match", [
    ({"beat_bytes": 24, "max_beats": 4}, "power of two"),
    ({"beat_bytes": 256, "max_beats": 4}, "power of two from 1 to 128"),
    ({"beat_bytes": 32, "max_beats": 0}, "max_beats"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        RangeBursts(**kw)
    with pytest.raises(ValueError, match=match):
        AxiReader(**kw)
    with pytest.raises(ValueError, match=match):
        AxiWriter(**kw)
    with pytest.raises(ValueError, match="fifo_depth"):
        AxiWriter(beat_bytes=32, max_beats=4, fifo_depth=0)
    with pytest.raises(ValueError, match="max_outstanding"):
        AxiReader(beat_bytes=32, max_beats=4, max_outstanding=0)


# ---------------------------------------------------------------- AXI slave model

class Memory:
    """Byte-addressed memory of random contents (a bytearray)."""

    def __init__(self, rng, size):
        self.bytes = bytearray(rng.getrandbits(8) for _ in range(size))

    def beat(self, addr, beat_bytes):
        return int.from_bytes(self.bytes[addr:addr + beat_bytes], "little")


class Protocol:
    """What the slave saw of one channel's address handshakes: valid held and
    the payload stable until ready (AXI4 A3.2.1), bursts legal."""

    def __init__(self, beat_bytes, name):
        self.beat_bytes, self.name = beat_bytes, name
        self.waiting = None
        self.bursts = []

    def cycle(self, valid, ready, payload):
        if self.waiting is not None:
            assert valid and payload == self.waiting, \
                f"{self.name}: valid dropped or payload changed before ready"
        self.waiting = payload if valid and not ready else None
        if valid and ready:
            addr, length, size, burst = payload
            assert size == self.beat_bytes.bit_length() - 1 and burst == 1, payload
            assert addr % self.beat_bytes == 0, f"{self.name}: unaligned {addr:#x}"
            assert addr // BOUNDARY_BYTES == \
                (addr + (length + 1) * self.beat_bytes - 1) // BOUNDARY_BYTES, \
                f"{self.name}: burst {addr:#x}+{length + 1} beats crosses 4 KB"
            self.bursts.append((addr, length))
            return True
        return False


def read_slave(dut, mem, rng, *, p_stall, p_gap, latency, error_bursts=(), watch):
    """Background testbench: AR with random arready, R beats `latency` cycles
    after their AR at the earliest, with random gaps; the bursts numbered in
    `error_bursts` answer SLVERR. `watch` gets (cycle, busy, outstanding)."""
    axi, bb = dut.axi, dut.beat_bytes
    proto = Protocol(bb, "AR")

    async def bench(ctx):
        beats = deque()        # (due cycle, data, resp, last)
        cur = None
        cycle = 0
        outstanding = 0        # bursts with R beats still to come
        while True:
            arready = rng.random() >= p_stall
            ctx.set(axi.arready, arready)
            if cur is None and beats and beats[0][0] <= cycle and rng.random() >= p_gap:
                cur = beats.popleft()
            ctx.set(axi.rvalid, cur is not None)
            if cur is not None:
                ctx.set(axi.rdata, cur[1])
                ctx.set(axi.rresp, cur[2])
                ctx.set(axi.rlast, cur[3])
            else:   # garbage the DUT must ignore
                ctx.set(axi.rdata, rng.getrandbits(8 * bb))
                ctx.set(axi.rlast, rng.getrandbits(1))
            (_, _, arvalid, araddr, arlen, arsize, arburst, rready,
             busy) = await ctx.tick().sample(axi.arvalid, axi.araddr, axi.arlen, axi.arsize,
                                             axi.arburst, axi.rready, dut.busy)
            watch(cycle, busy, outstanding)
            if proto.cycle(arvalid, arready, (araddr, arlen, arsize, arburst)):
                resp = RESP_SLVERR if len(proto.bursts) - 1 in error_bursts else RESP_OKAY
                for k in range(arlen + 1):
                    beats.append((cycle + latency, mem.beat(araddr + k * bb, bb), resp,
                                  k == arlen))
                outstanding += 1
            if cur is not None and rready:
                outstanding -= cur[3]
                cur = None
            cycle += 1
    return bench, proto


def write_slave(dut, mem, rng, *, p_stall, latency, error_bursts=(), watch):
    """Background testbench: AW and W with random ready, W beats written into
    `mem` by strb (wlast checked against the AW length), B after `latency`
    cycles or more; bursts numbered in `error_bursts` answer SLVERR.
    `watch` gets (cycle, idle, bursts without their B)."""
    axi, bb = dut.axi, dut.beat_bytes
    proto = Protocol(bb, "AW")

    async def bench(ctx):
        aws = deque()          # (addr, len, burst number) without all W beats
        bs = deque()           # (due cycle, resp)
        beat = 0
        cycle = 0
        open_bursts = 0        # AW taken, B not yet delivered
        cur_b = None
        while True:
            awready = rng.random() >= p_stall
            wready = rng.random() >= p_stall
            ctx.set(axi.awready, awready)
            ctx.set(axi.wready, wready)
            if cur_b is None and bs and bs[0][0] <= cycle:
                cur_b = bs.popleft()
            ctx.set(axi.bvalid, cur_b is not None)
            ctx.set(axi.bresp, cur_b[1] if cur_b is not None else rng.getrandbits(2))
            (_, _, awvalid, awaddr, awlen, awsize, awburst, wvalid, wdata, wstrb, wlast,
             bready, idle) = await ctx.tick().sample(
                axi.awvalid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst, axi.wvalid,
                axi.wdata, axi.wstrb, axi.wlast, axi.bready, dut.idle)
            watch(cycle, idle, open_bursts)
            if wvalid and wready:
                assert aws, "a W beat before its AW (this slave takes W after AW)"
                addr, length, number = aws[0]
                assert wlast == (beat == length), f"wlast={wlast} on beat {beat} of {length + 1}"
                a = addr + beat * bb
                for i in range(bb):
                    if wstrb >> i & 1:
                        mem.bytes[a + i] = wdata >> (8 * i) & 0xff
                beat += 1
                if wlast:
                    aws.popleft()
                    beat = 0
                    bs.append((cycle + latency,
                               RESP_SLVERR if number in error_bursts else RESP_OKAY))
            if proto.cycle(awvalid, awready, (awaddr, awlen, awsize, awburst)):
                aws.append((awaddr, awlen, len(proto.bursts) - 1))
                open_bursts += 1
            if cur_b is not None and bready:
                cur_b = None
                open_bursts -= 1
            cycle += 1
    return bench, proto


def _pulse(ctx, sig):
    """Drive `sig` high for one cycle (inside a testbench)."""
    async def go():
        ctx.set(sig, 1)
        await ctx.tick()
        ctx.set(sig, 0)
    return go()


# ---------------------------------------------------------------- AxiReader

@pytest.mark.parametrize("seed, beat_bytes, max_beats", [(11, 32, 80), (12, 8, 600),
                                                         (13, 64, 3)])
def test_reader_random_stalls(seed, beat_bytes, max_beats):
    rng = _seed(seed)
    dut = AxiReader(beat_bytes=beat_bytes, max_beats=max_beats, max_outstanding=4)
    span = 1 << 15
    mem = Memory(rng, span + MAX_BURST_BEATS * beat_bytes)
    ranges = random_ranges(rng, 12, beat_bytes=beat_bytes, max_beats=max_beats, span=span)
    want = [mem.beat(a + k * beat_bytes, beat_bytes) for a, n in ranges for k in range(n)]
    bad = []

    def watch(cycle, busy, outstanding):
        if outstanding and not busy:
            bad.append(cycle)

    slave, proto = read_slave(dut, mem, rng, p_stall=0.4, p_gap=0.3,
                              latency=rng.randint(1, 12), watch=watch)
    src = StreamSource(dut.req, [req_word(a, n) for a, n in ranges], rng, p_idle=0.3)
    sink = StreamSink(dut.data, rng, count=len(want), p_stall=0.4, limit=40 * len(want) + 2000)

    async def bench(ctx):
        await sink(ctx)
        ctx.set(dut.data.ready, 0)
        assert not ctx.get(dut.busy)
        assert not ctx.get(dut.error)

    simulate(dut, bench, background=[src, slave])
    assert sink.got == want
    assert proto.bursts == [b for a, n in ranges for b in model_bursts(a, n, beat_bytes)]
    assert not bad, f"busy low while R beats were outstanding, cycles {bad[:5]}"


def test_reader_error_is_sticky_until_clear():
    rng = _seed(21)
    dut = AxiReader(beat_bytes=16, max_beats=8)
    mem = Memory(rng, 4096)
    ranges = [(0, 4), (256, 8), (512, 2)]
    want = [mem.beat(a + k * 16, 16) for a, n in ranges for k in range(n)]
    slave, _ = read_slave(dut, mem, rng, p_stall=0.2, p_gap=0.2, latency=3,
                          error_bursts=(1,), watch=lambda *a: None)
    src = StreamSource(dut.req, [req_word(a, n) for a, n in ranges], rng)
    sink = StreamSink(dut.data, rng, count=len(want), limit=500)

    async def bench(ctx):
        await sink(ctx)
        assert ctx.get(dut.error)          # burst 1 answered SLVERR; still set at the end
        await _pulse(ctx, dut.clear)
        assert not ctx.get(dut.error)

    simulate(dut, bench, background=[src, slave])
    assert sink.got == want                # data of an erroneous burst still delivered


# ---------------------------------------------------------------- AxiWriter

def _writer_run(seed, *, beat_bytes, max_beats, n_ranges, p_stall, p_idle, latency,
                error_bursts=(), fifo_depth=8, after=None):
    rng = _seed(seed)
    dut = AxiWriter(beat_bytes=beat_bytes, max_beats=max_beats, fifo_depth=fifo_depth,
                    max_outstanding=4)
    span = 1 << 15
    size = span + MAX_BURST_BEATS * beat_bytes
    mem = Memory(rng, size)
    want = bytearray(mem.bytes)
    ranges = random_ranges(rng, n_ranges, beat_bytes=beat_bytes, max_beats=max_beats,
                           span=span)
    beats = []
    full = (1 << beat_bytes) - 1
    for a, n in ranges:
        for k in range(n):
            d = rng.getrandbits(8 * beat_bytes)
            s = full if rng.random() < 0.5 else rng.getrandbits(beat_bytes)
            beats.append(d | s << (8 * beat_bytes))
            for i in range(beat_bytes):
                if s >> i & 1:
                    want[a + k * beat_bytes + i] = d >> (8 * i) & 0xff
    bad = []

    def watch(cycle, idle, open_bursts):
        if open_bursts and idle:
            bad.append(cycle)

    slave, proto = write_slave(dut, mem, rng, p_stall=p_stall, latency=latency,
                               error_bursts=error_bursts, watch=watch)
    req = StreamSource(dut.req, [req_word(a, n) for a, n in ranges], rng, p_idle=p_idle)
    data = StreamSource(dut.data, beats, rng, p_idle=p_idle)
    seen = {}

    async def bench(ctx):
        for cycle in range(60 * len(beats) + 2000):
            _, _, idle, busy_req = await ctx.tick().sample(dut.idle, dut.req.valid)
            if idle and not busy_req and len(proto.bursts) == sum(
                    len(model_bursts(a, n, beat_bytes)) for a, n in ranges) and cycle > 2:
                break
        else:
            raise AssertionError("the writer never went idle")
        seen["error"] = ctx.get(dut.error)
        if after is not None:
            await after(ctx, dut)

    simulate(dut, bench, background=[req, data, slave])
    assert proto.bursts == [b for a, n in ranges for b in model_bursts(a, n, beat_bytes)]
    assert not bad, f"idle high while bursts had no B response, cycles {bad[:5]}"
    return mem, want, seen


@pytest.mark.parametrize("seed, beat_bytes, max_beats, fifo_depth", [
    (31, 32, 80, 8), (32, 4, 700, 2), (33, 64, 2, 1)])
def test_writer_random_stalls(seed, beat_bytes, max_beats, fifo_depth):
    mem, want, seen = _writer_run(seed, beat_bytes=beat_bytes, max_beats=max_beats,
                                  n_ranges=10, p_stall=0.4, p_idle=0.3,
                                  latency=random.Random(seed).randint(1, 10),
                                  fifo_depth=fifo_depth)
    assert mem.bytes == want
    assert not seen["error"]


def test_writer_error_is_sticky_until_clear():
    async def after(ctx, dut):
        assert ctx.get(dut.error)
        await _pulse(ctx, dut.clear)
        assert not ctx.get(dut.error)
    mem, want, seen = _writer_run(41, beat_bytes=16, max_beats=8, n_ranges=4, p_stall=0.2,
                                  p_idle=0.2, latency=5, error_bursts=(1,), after=after)
    assert seen["error"] and mem.bytes == want


# ---------------------------------------------------------------- lint

def test_generated_verilog_lint_clean(tmp_path):
    lint = pytest.importorskip("cosim.lint")
    from cosim import runner
    from hdl.generate import write_verilog
    try:
        runner.find_verilator()
    except runner.SimulatorUnavailable as e:
        pytest.skip(str(e))
    for name, dut in (("axi_reader", AxiReader(beat_bytes=32, max_beats=4096)),
                      ("axi_writer", AxiWriter(beat_bytes=32, max_beats=4096)),
                      ("axi_reader_narrow", AxiReader(beat_bytes=4, max_beats=3))):
        result = lint.lint_file(write_verilog(dut, name, tmp_path))
        assert result.clean, (name, result.messages)


# ---------------------------------------------------------------- co-simulation

def test_axi_mem_files_roundtrip(tmp_path):
    from cosim.axi_mem import read_dump, write_init
    data = np.random.default_rng(5).integers(0, 256, 1000, dtype=np.uint8)
    path = write_init(tmp_path / "init.hex", data, 32)
    lines = path.read_text().splitlines()
    assert len(lines) == 32 and all(len(x) == 64 for x in lines)
    assert int(lines[0], 16).to_bytes(32, "little") == data[:32].tobytes()
    back = read_dump(path, 32)
    assert back[:1000] == data.tobytes() and back[1000:] == bytes(24)
    with pytest.raises(ValueError, match="MEM_BYTES"):
        write_init(tmp_path / "big.hex", data, 32, mem_bytes=512)
    with pytest.raises(ValueError, match="wider than 16 bytes"):
        read_dump(path, 16)


def test_cosim_reader_writer_on_memory_model(tmp_path):
    """AxiReader + AxiWriter (Amaranth -> Verilog) on quattro_axi_mem under
    Verilator: preload, reads with back-pressure, writes checked through the
    write log and the dump, read after write, errors past MEM_BYTES, and the
    pipelined timing rule held to the cycle (cosim/tb/axi_mem.py)."""
    from cosim import runner
    from cosim.tb import axi_mem as tb
    seed = 7
    print(f"seed={seed}")
    job = tb.default_job(tmp_path, seed=seed)
    try:
        res = tb.run_job(job)
    except runner.SimulatorUnavailable as e:
        pytest.skip(str(e))
    assert res["passed"], (seed, res["errors"])
    assert res["read_beats"] > 256 and res["written_beats"] > 256
    # N ranges of B beats back to back, rready high: LATENCY + 2 + (N*B - 1)*(1 + GAP)
    # cycles from the first range taken to the last beat taken; e.g. 8 x 4 beats at
    # LATENCY 20, GAP 0: 53 cycles, and at LATENCY 7, GAP 2: 102.
    timing = {(t["port"], t["n"], t["beats"]): t for t in res["timing"]}
    assert timing["rd", 8, 4]["cycles"] == 20 + 2 + 31 == 53
    assert timing["rd2", 8, 4]["cycles"] == 7 + 2 + 31 * 3 == 102
    for t in res["timing"]:
        assert t["cycles"] == t["model_cycles"] == tb.model_cycles(
            t["latency"], t["gap"], t["n"], t["beats"]), t


def test_cosim_memory_model_gap_plusarg(tmp_path):
    """+mem_gap sets the read beat gap of one run on the same build (the core's
    full-bandwidth and stalled runs share a model): the first memory follows it to
    the cycle, the second (FILES=0) keeps its GAP parameter."""
    from cosim import runner
    from cosim.tb import axi_mem as tb
    job = {**tb.default_job(tmp_path, seed=8), "run_gap": 3}
    try:
        res = tb.run_job(job)
    except runner.SimulatorUnavailable as e:
        pytest.skip(str(e))
    assert res["passed"], res["errors"]
    timing = {(t["port"], t["n"], t["beats"]): t for t in res["timing"]}
    assert timing["rd", 8, 4]["cycles"] == 20 + 2 + 31 * 4 == 146
    assert timing["rd2", 8, 4]["cycles"] == 7 + 2 + 31 * 3 == 102
