"""Co-simulation of hdl.axi's AxiReader and AxiWriter on the Verilog memory
model cosim/axi_mem.v (`quattro_axi_mem`), and the design and runner around it.

Design (`design_verilog`): an Amaranth top `quattro_axi_dma` holding a reader
`rd` and a writer `wr` on memory `mem` (FILES=1: +mem_init/+mem_log/+mem_dump)
and a second reader `rd2` on memory `mem2` with other LATENCY and GAP (FILES=0),
under a Verilog wrapper `quattro_axi_mem_tb` whose ports are the engines'
non-AXI ports (rd_req__valid, wr_data__payload, rd_busy, wr_idle, ...), clk,
rst and the model's `dump`.

Job fields: seed (printed), beat_bytes, mem_bytes, latency, gap, latency2, gap2,
init / log / dump (the plusargs' paths; init is preloaded with random bytes),
timing: [[n, beats], ...] (n back-to-back ranges of `beats` beats per check),
optional run_gap (`mem`'s gap for this run through +mem_gap instead of the GAP
parameter `gap`; `mem2`, FILES=0, ignores the plusarg and keeps gap2).
Phases, one simulation:
  reads   random ranges (4 KB crossings, > 256 beats) with back-pressure, the
          bytes checked against the preload;
  writes  random ranges, data and strb with idle cycles, until `idle`: the write
          log must list exactly the beats sent, the dump the expected memory;
  reread  the written ranges through the reader (read after write);
  timing  n ranges of `beats` beats back to back, no stalls, on both memories:
          cycles from the first range taken to the last beat taken must be
          LATENCY + 2 + (n*beats - 1)*(1 + GAP) (model_cycles: the AR leaves the
          cycle after its range is taken, the first beat is valid LATENCY cycles
          after the AR, each later one 1 + GAP cycles after its predecessor);
  errors  a range across the end of the memory on each engine: the burst
          inside is served, the one past the end refused (read beats 0, nothing
          written), `error` raised; `clear` drops it.
Result: {"passed", "seed", "errors", "read_beats", "written_beats", "timing": [...]}.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import cocotb
from amaranth.hdl import Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from cocotb.triggers import RisingEdge

from cosim import axi_mem, runner
from cosim.tb.common import open_job, start_clock
from cosim.tb.streams import StreamSink, StreamSource, step_cycle
from hdl.axi import AXI_ADDR_BITS, AxiReader, AxiWriter, axi_read_members, axi_write_members
from hdl.generate import verilog

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

__all__ = ["TOPLEVEL", "DMA_MODULE", "DmaTop", "design_verilog", "model_cycles", "default_job",
           "design_params", "run_job"]

TOPLEVEL = "quattro_axi_mem_tb"
DMA_MODULE = "quattro_axi_dma"


class DmaTop(wiring.Component):
    """The engines under test side by side, every port of each exposed under
    `<name>_` (Amaranth flattens them to rd_req__valid, rd_axi__araddr, ...)."""

    def __init__(self, *, beat_bytes: int, max_beats: int):
        self.engines = {"rd": AxiReader(beat_bytes=beat_bytes, max_beats=max_beats),
                        "wr": AxiWriter(beat_bytes=beat_bytes, max_beats=max_beats),
                        "rd2": AxiReader(beat_bytes=beat_bytes, max_beats=max_beats)}
        super().__init__({f"{p}_{name}": member for p, e in self.engines.items()
                          for name, member in e.signature.members.items()})

    def elaborate(self, platform: object) -> Module:
        """Build the engines and expose every port of each under its prefix."""
        m = Module()
        for p, e in self.engines.items():
            m.submodules[p] = e
            for name, member in e.signature.members.items():
                outer, inner = getattr(self, f"{p}_{name}"), getattr(e, name)
                if member.is_port:
                    m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
                elif member.flow == Out:
                    wiring.connect(m, inner, wiring.flipped(outer))
                else:
                    wiring.connect(m, wiring.flipped(outer), inner)
        return m


def _decl(width: int) -> str:
    return f"[{width - 1}:0] " if width > 1 else ""


def design_verilog(*, beat_bytes: int, mem_bytes: int, latency: int, gap: int,
                   latency2: int, gap2: int, max_beats: int = 600) -> str:
    """One Verilog text: the Amaranth engines, the memory model and the wrapper."""
    top = DmaTop(beat_bytes=beat_bytes, max_beats=max_beats)
    ports, axi_nets = [], []
    for path, member, value in top.signature.flatten(top):
        name = "__".join(str(p) for p in path)
        width = len(Value.cast(value))
        if path[0].endswith("_axi"):
            axi_nets.append(f"  wire {_decl(width)}{name};")
        else:
            io = "output" if member.flow == Out else "input"
            ports.append(f"  {io} wire {_decl(width)}{name}")
    names = [p.split()[-1] for p in ports] + [n.split()[-1].rstrip(";") for n in axi_nets]
    rd = list(axi_read_members(8 * beat_bytes))
    wr_members = axi_write_members(8 * beat_bytes)
    wr = list(wr_members)
    # The second memory's write slave is idle: its inputs (the master's outputs)
    # tied low, bready high; its outputs open.
    wr_off = [f".s_{n}({'1' if n == 'bready' else '0'})" if wr_members[n].flow == Out
              else f".s_{n}()" for n in wr]

    def mem(inst, params, read_from, write):
        conns = [f".s_{n}({read_from}_axi__{n})" for n in rd] + write
        return (f"  quattro_axi_mem #({params}) {inst} (\n    .clk(clk), .rst(rst), "
                f".dump({'dump' if inst == 'mem' else '0'}),\n    "
                + ",\n    ".join(conns) + ");\n")

    common = f".ADDR_BITS({AXI_ADDR_BITS}), .DATA_BYTES({beat_bytes}), .MEM_BYTES({mem_bytes})"
    wrapper = (f"module {TOPLEVEL} (\n  input wire clk,\n  input wire rst,\n"
               f"  input wire dump,\n" + ",\n".join(ports) + "\n);\n"
               + "\n".join(axi_nets) + "\n"
               + f"  {DMA_MODULE} dma (\n    .clk(clk), .rst(rst),\n    "
               + ",\n    ".join(f".{n}({n})" for n in names) + ");\n"
               + mem("mem", f"{common}, .LATENCY({latency}), .GAP({gap})", "rd",
                     [f".s_{n}(wr_axi__{n})" for n in wr])
               + mem("mem2", f"{common}, .LATENCY({latency2}), .GAP({gap2}), .FILES(0)", "rd2",
                     wr_off)
               + "endmodule\n")
    return verilog(top, DMA_MODULE) + "\n" + axi_mem.verilog_text() + "\n" + wrapper


def model_cycles(latency: int, gap: int, n: int, beats: int) -> int:
    """Cycles from the first of `n` back-to-back ranges of `beats` beats taken to
    their last beat taken, rready high (the model's timing rule, module docstring)."""
    return latency + 2 + (n * beats - 1) * (1 + gap)


def default_job(out_dir: Path, *, seed: int) -> dict:
    """A job for `design_verilog(**design_params(job))` whose preload (random
    bytes) is written to out_dir/init.hex."""
    job = {"seed": seed, "beat_bytes": 32, "mem_bytes": 1 << 16, "latency": 20, "gap": 0,
           "latency2": 7, "gap2": 2, "timing": [[8, 4], [3, 1], [2, 40]]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = random.Random(seed).randbytes(job["mem_bytes"])
    axi_mem.write_init(out_dir / "init.hex", data, job["beat_bytes"], mem_bytes=job["mem_bytes"])
    job.update(init=str(out_dir / "init.hex"), log=str(out_dir / "write.log"),
               dump=str(out_dir / "dump.hex"))
    return job


def design_params(job: dict) -> dict:
    """The fields of a job that select the generated design (beat size, memory size, latencies
    and gaps)."""
    return {k: job[k] for k in ("beat_bytes", "mem_bytes", "latency", "gap", "latency2",
                                "gap2")}


def run_job(job: dict, *, sim: str | None = None, root: Path | None = None) -> dict:
    """Build (cached) and run the testbench on `job`."""
    b = runner.build(design_verilog(**design_params(job)), TOPLEVEL, sim=sim, root=root)
    return runner.run(b, test_module="cosim.tb.axi_mem", job=job,
                      plusargs=axi_mem.plusargs(init=job["init"], log=job["log"],
                                                dump=job["dump"], gap=job.get("run_gap")))


# ---------------------------------------------------------------- the testbench

class _Bench:
    """The clock loop: stream parts stepped every cycle (cosim.tb.streams)."""

    def __init__(self, dut):
        self.dut = dut
        self.cycle = 0

    async def run(self, parts, done, limit: int, what: str) -> None:
        for _ in range(limit):
            await step_cycle(self.dut.clk, parts, self.cycle)
            self.cycle += 1
            if done():
                # Leave the ReadOnly phase; a source whose last beat was just
                # taken must not offer it again.
                await RisingEdge(self.dut.clk)
                self.cycle += 1
                for p in parts:
                    if isinstance(p, StreamSource) and p.done:
                        p.valid.value = 0
                return
        raise AssertionError(f"{what}: not finished after {limit} cycles")

    async def idle(self, n: int = 1) -> None:
        for _ in range(n):
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def pulse(self, sig) -> None:
        await RisingEdge(self.dut.clk)
        sig.value = 1
        await RisingEdge(self.dut.clk)
        sig.value = 0
        self.cycle += 2


def _ranges(rng, n, bb, mem_bytes, max_beats):
    """Random beat-aligned ranges inside the memory: some across 4 KB, some
    longer than 256 beats."""
    out = []
    for _ in range(n):
        beats = rng.choice([1, rng.randint(2, 40), rng.randint(257, max_beats)])
        hi = mem_bytes // bb - beats
        if rng.random() < 0.5:
            page = rng.randrange(1, mem_bytes // 4096)
            start = min(hi, page * 4096 // bb - rng.randint(1, 6))
        else:
            start = rng.randrange(hi + 1)
        out.append((start * bb, beats))
    return out


def _req(addr, beats):
    return addr | beats << AXI_ADDR_BITS


def _word(mem, addr, bb):
    return int.from_bytes(mem[addr:addr + bb], "little")


@cocotb.test()
async def axi_mem_dma(dut: HierarchyObject) -> None:
    """cocotb test: the AXI read and write engines against the memory model, with back-pressure,
    strobes, idle cycles and the memory dump checked."""
    job, seed = open_job(dut, "axi_mem_dma")
    rng = random.Random(seed)
    bb, size = int(job["beat_bytes"]), int(job["mem_bytes"])
    errors: list[str] = []
    res = {"seed": seed, "errors": errors, "timing": []}
    mem = axi_mem.read_dump(job["init"], bb)
    mem += bytes(size - len(mem))
    start_clock(dut.clk)
    for name in ("rd_clear", "wr_clear", "rd2_clear", "dump", "rd_req__valid", "wr_req__valid",
                 "wr_data__valid", "rd2_req__valid", "rd_data__ready", "rd2_data__ready"):
        getattr(dut, name).value = 0
    bench = _Bench(dut)
    dut.rst.value = 1
    await bench.idle(3)
    dut.rst.value = 0

    async def read(port, ranges, *, p_stall, p_idle, limit=None):
        src = StreamSource(dut, f"{port}_req", [_req(a, n) for a, n in ranges], p_idle=p_idle,
                           rng=random.Random(rng.randrange(1 << 62)))
        sink = StreamSink(dut, f"{port}_data", p_stall=p_stall,
                          rng=random.Random(rng.randrange(1 << 62)))
        total = sum(n for _, n in ranges)
        busy = getattr(dut, f"{port}_busy")
        await bench.run([src, sink], lambda: len(sink.words) >= total and not busy.value,
                        limit or 20 * total + 500, f"{port} read of {len(ranges)} ranges")
        return src, sink

    # ---- reads of the preload, with back-pressure
    ranges = _ranges(rng, 6, bb, size, 600)
    _, sink = await read("rd", ranges, p_stall=0.3, p_idle=0.3)
    want = [_word(mem, a + k * bb, bb) for a, n in ranges for k in range(n)]
    bad = [i for i, (g, w) in enumerate(zip(sink.words, want)) if g != w]
    if bad or len(sink.words) != len(want):
        errors.append(f"reads: {len(bad)} of {len(want)} beats differ from the preload "
                      f"(first at beat {bad[:1]}), {len(sink.words)} received")
    res["read_beats"] = len(sink.words)

    # ---- writes with strobes and idle cycles
    wranges = _ranges(rng, 5, bb, size, 600)
    beats, sent = [], []
    full = (1 << bb) - 1
    for a, n in wranges:
        for k in range(n):
            d = rng.getrandbits(8 * bb)
            s = full if rng.random() < 0.6 else rng.getrandbits(bb)
            beats.append(d | s << (8 * bb))
            sent.append((a + k * bb, d.to_bytes(bb, "little"), s))
            for i in range(bb):
                if s >> i & 1:
                    mem[a + k * bb + i] = d >> (8 * i) & 0xff
    req = StreamSource(dut, "wr_req", [_req(a, n) for a, n in wranges], p_idle=0.3,
                       rng=random.Random(rng.randrange(1 << 62)))
    data = StreamSource(dut, "wr_data", beats, p_idle=0.3,
                        rng=random.Random(rng.randrange(1 << 62)))
    await bench.run([req, data], lambda: req.done and data.done and dut.wr_idle.value,
                    30 * len(beats) + 500, "writes")
    if int(dut.wr_error.value):
        errors.append("writes: wr_error raised by legal bursts")
    log = axi_mem.read_log(job["log"], bb)
    if log != sent:
        diff = next((i for i, (g, w) in enumerate(zip(log, sent)) if g != w), min(len(log),
                                                                                 len(sent)))
        errors.append(f"write log: {len(log)} lines for {len(sent)} beats sent, first "
                      f"difference at line {diff}")
    res["written_beats"] = len(log)
    await bench.pulse(dut.dump)
    await bench.idle()
    dumped = axi_mem.read_dump(job["dump"], bb)
    if dumped != mem:
        first = next(i for i in range(len(mem)) if i >= len(dumped) or dumped[i] != mem[i])
        errors.append(f"dump after writes differs from the expected memory at byte {first:#x}")

    # ---- read after write, through the reader
    _, sink = await read("rd", wranges, p_stall=0.2, p_idle=0.0)
    want = [_word(mem, a + k * bb, bb) for a, n in wranges for k in range(n)]
    if sink.words != want:
        errors.append("re-read of the written ranges differs from what was written")

    # ---- timing: back-to-back ranges, no stalls
    for port, lat, gap in (("rd", job["latency"], job.get("run_gap", job["gap"])),
                           ("rd2", job["latency2"], job["gap2"])):
        for n, b in job["timing"]:
            tr = [(rng.randrange(4096 // bb - b + 1) * bb + 4096 * rng.randrange(size // 4096), b)
                  for _ in range(n)]
            src, sink = await read(port, tr, p_stall=0.0, p_idle=0.0)
            got = sink.cycles[-1] - src.first_cycle + 1
            model = model_cycles(lat, gap, n, b)
            ok = sink.words == [_word(mem, a + k * bb, bb) for a, m in tr for k in range(m)] \
                if port == "rd" else len(sink.words) == n * b
            res["timing"].append({"port": port, "latency": lat, "gap": gap, "n": n, "beats": b,
                                  "cycles": got, "model_cycles": model, "data_ok": ok})
            if got != model or not ok:
                errors.append(f"timing {port} (LATENCY={lat}, GAP={gap}) {n} x {b} beats: "
                              f"{got} cycles, model {model}, data ok: {ok}")

    # ---- errors: a range across the end of memory on each engine. Its burst
    # inside the memory is served; the one past the end (split off at the 4 KB
    # boundary that MEM_BYTES is) is refused: zeros and SLVERR, nothing written.
    _, sink = await read("rd", [(size - 2 * bb, 4)], p_stall=0.0, p_idle=0.0)
    want = [_word(mem, size - 2 * bb, bb), _word(mem, size - bb, bb), 0, 0]
    if not int(dut.rd_error.value) or sink.words != want:
        errors.append(f"a read across MEM_BYTES: rd_error={int(dut.rd_error.value)}, beats "
                      f"{[hex(w) for w in sink.words]}, expected error and "
                      f"{[hex(w) for w in want]}")
    await bench.pulse(dut.rd_clear)
    await bench.idle()
    if int(dut.rd_error.value):
        errors.append("rd_clear did not clear rd_error")
    last = [rng.getrandbits(8 * bb) for _ in range(2)]
    req = StreamSource(dut, "wr_req", [_req(size - bb, 2)], rng=random.Random(1))
    data = StreamSource(dut, "wr_data", [d | full << (8 * bb) for d in last],
                        rng=random.Random(2))
    await bench.run([req, data], lambda: req.done and data.done and dut.wr_idle.value, 400,
                    "write across MEM_BYTES")
    mem[size - bb:] = last[0].to_bytes(bb, "little")
    await bench.pulse(dut.dump)
    await bench.idle()
    if not int(dut.wr_error.value):
        errors.append("a write across MEM_BYTES did not raise wr_error")
    if axi_mem.read_dump(job["dump"], bb) != mem:
        errors.append("a write across MEM_BYTES: the memory is not its first beat written "
                      "and nothing past the end")
    await bench.pulse(dut.wr_clear)
    await bench.idle()
    if int(dut.wr_error.value):
        errors.append("wr_clear did not clear wr_error")

    res["passed"] = not errors
    res["cycles"] = bench.cycle
    runner.write_result(res)
