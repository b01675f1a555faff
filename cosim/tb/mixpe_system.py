"""Fast-path testbench of hdl.mixpe.MixPESystem: load the act/code/scale
memories with quantflow's image words through the load port, pulse `start`, await
`done` with the clock running in the GPI (C) layer -- no Python runs per cycle
while the array computes -- then read the result memory back and compare every
word with golden.mixpe. The words and expected words come in the job
(cosim.mixpe.stimulus, cosim.tb.mixpe_stream.load_case): a passing run imports no torch.

Job fields: config, data_dir (the images, for the record), seed (unused by the
data path; recorded), optional repeat (run the same load `repeat` times, for the
speed bench), max_cycles, clock_impl, and stimulus's fields (M, N, m_tiles,
n_tiles, macs, act/code/scale words, expected_words). Result: passed,
mismatches, vectors, cycles (the DUT's own cycle counter, start..done), macs,
sim_seconds (start..done only, wall clock), load_seconds, readback_seconds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cosim.runner import read_job, write_result
from cosim.tb.common import Stopwatch, job_seed, start_clock
from cosim.tb.mixpe_stream import describe_mismatch, load_case
from cosim.tb.streams import Scoreboard
from cosim.tb.system import PreloadedSystemTB

# The memory-select codes of MixPESystem's load port.
from hdl.mixpe import LOAD_ACT, LOAD_CODE, LOAD_SCALE

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject


class MixPESystemTB(PreloadedSystemTB):
    """`clock`: "gpi" -- cocotb drives `clk` from its C layer (Clock(impl="gpi"));
    "hdl" -- the toplevel is a wrapper whose clock toggles inside the model
    (Verilator --timing) and is visible as `clk_o`; Python never touches it."""

    def __init__(self, dut: HierarchyObject, clock: str = "gpi"):
        super().__init__(dut, dut.clk_o if clock == "hdl" else dut.clk)

    async def start_and_wait(self, m_tiles: int, n_tiles: int, max_cycles: int) -> tuple[int, float]:
        """Pulse start; await done. Returns (DUT cycle counter, wall seconds)."""
        secs = await self.start_and_await_done(max_cycles, m_tiles=m_tiles, n_tiles=n_tiles)
        return int(self.dut.cycles.value), secs


@cocotb.test()
async def mixpe_system(dut: HierarchyObject) -> None:
    """cocotb test: load the case's images, run MixPESystem (`repeat` times), compare every
    result word with golden."""
    job = read_job()
    seed = job_seed(job)
    data = load_case(job)
    cfg = data.config
    tiles = data.m_tiles * data.n_tiles
    max_cycles = int(job.get("max_cycles") or (8 * tiles * max(cfg.K, cfg.rows + 8) + 10_000))
    clock = job.get("clock_impl", "gpi")
    if clock != "hdl":
        start_clock(dut.clk, impl=clock)
    tb = MixPESystemTB(dut, clock)
    sw = Stopwatch()
    await tb.reset()
    await tb.load(LOAD_ACT, data.act_words)
    await tb.load(LOAD_CODE, data.code_words)
    await tb.load(LOAD_SCALE, data.scale_words)
    load_seconds = sw.seconds()

    runs = []
    for _ in range(int(job.get("repeat", 1))):
        cycles, secs = await tb.start_and_wait(data.m_tiles, data.n_tiles, max_cycles)
        runs.append((cycles, secs))
        await RisingEdge(tb.clk)

    sw = Stopwatch()
    got = []
    n_words = len(data.expected_words)
    # Pipelined read: present address i, the word appears after the next edge.
    for addr in range(n_words + 1):
        await RisingEdge(tb.clk)
        if addr < n_words:
            dut.res_addr.value = addr
        if addr >= 1:
            await ReadOnly()
            got.append(dut.res_data.value.to_unsigned())
    readback_seconds = sw.seconds()

    sb = Scoreboard(data.expected_words, describe=describe_mismatch(data))
    sb.check(got)
    cycles = runs[-1][0]
    sim_seconds = sum(s for _, s in runs)
    sim_cycles = sum(c for c, _ in runs)
    errors = list(sb.report)
    passed = sb.passed and not errors
    write_result({
        "test": "fast", "passed": passed, "mismatches": sb.mismatches,
        "vectors": sb.compared, "expected_vectors": n_words, "cycles": cycles,
        "macs": data.macs, "tiles": tiles, "M": data.M, "N": data.N,
        "sim_cycles": sim_cycles, "sim_seconds": sim_seconds, "seed": seed,
        "repeat": len(runs), "load_seconds": load_seconds,
        "readback_seconds": readback_seconds, "errors": errors,
        "clock_impl": job.get("clock_impl", "gpi"),
    })
    assert passed, "; ".join(errors) or "scoreboard failed"
