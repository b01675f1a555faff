"""cocotb testbench of the accelerator core (cosim/core.py): the memory is
preloaded by the memory model ($readmemh), the clock runs in cocotb's C layer,
and Python acts only between program runs: set the registers, pulse start, then
wait for done or an error status in steps of many cycles. The results (each
instruction's outputs) come from the trace and write-log files the Verilog side
writes; this bench records per run the cycles, the error status and the
simulation speed."""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge, Timer

from cosim.runner import write_result
from cosim.tb.common import CLK_PERIOD_NS, Stopwatch, open_job, start_clock

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

#: Cycles between two looks at done / error (Python's share of a long run); a job's
#: "poll" overrides it (cosim.core_speed measures the effect).
POLL = 512


@cocotb.test()
async def core_runs(dut: HierarchyObject) -> None:
    """cocotb test: each run of the job on the core (registers, start, wait for done or an
    error), recording cycles, error status and speed."""
    job, _ = open_job(dut, "core_runs")
    poll = int(job.get("poll", POLL))
    from hdl.core import ERRORS, STATES
    start_clock(dut.clk, impl="gpi")
    dut.rst.value = 1
    dut.start.value = 0
    dut.dump.value = 0
    dut.prog.value = 0
    dut.pos.value = 0
    dut.tokens.value = 0
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    runs = []
    sim_cycles = 0
    watch = Stopwatch()
    for r in job["runs"]:
        dut.prog.value = int(r["prog"])
        dut.pos.value = int(r["pos"])
        dut.tokens.value = int(r["tokens"])
        while not int(dut.idle.value):      # after an error the masters drain first
            await ClockCycles(dut.clk, 8)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        waited = 1
        t0 = watch.seconds()
        while True:
            # ClockCycles would wake Python on every edge; a Timer sleeps POLL cycles
            await Timer((poll - 1) * CLK_PERIOD_NS + CLK_PERIOD_NS // 2, "ns")
            await RisingEdge(dut.clk)
            waited += poll
            err = int(dut.error.value)
            if int(dut.done.value) or err or waited > job["max_cycles"]:
                break
        err = int(dut.error.value)
        rec = {"name": r["name"], "cycles": int(dut.cycles.value), "error": err,
               "error_name": ERRORS[err] if err < len(ERRORS) else str(err),
               "err_pc": int(dut.err_pc.value), "done": bool(int(dut.done.value)),
               "timeout": waited > job["max_cycles"], "sim_cycles": waited,
               "state": STATES[int(dut.state.value)] if int(dut.state.value) < len(STATES)
               else str(int(dut.state.value)),
               "sim_seconds": watch.seconds() - t0}
        if rec["timeout"] and job.get("peek"):       # a debug build (public="all")
            rec["peek"] = {}
            for name in job["peek"]:
                h = dut
                try:
                    for part in name.split("."):
                        h = getattr(h, part)
                    rec["peek"][name] = str(h.value)
                except AttributeError:
                    rec["peek"][name] = None
        sim_cycles += waited
        runs.append(rec)
        dut._log.info(f"run {r['name']}: {rec}")
        if rec["timeout"]:             # a hung core: the later runs would not start
            break
    write_result({"runs": runs, "sim_cycles": sim_cycles, "sim_seconds": watch.seconds()})
