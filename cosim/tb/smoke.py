"""A tiny testbench for the harness itself (tests/test_cosim_runner.py): a counter
that must count `job["cycles"]` clock edges. It exercises job/result files,
the GPI clock and the cache without depending on any quattro block."""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from cosim.runner import read_job, write_result

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

#: Verilog of the counter, kept here so the harness test needs no generator.
COUNTER_VERILOG = """
module quattro_smoke_counter(input clk, input rst, output reg [31:0] count);
  always @(posedge clk) if (rst) count <= 0; else count <= count + 1;
endmodule
"""
TOPLEVEL = "quattro_smoke_counter"


@cocotb.test()
async def count_cycles(dut: HierarchyObject) -> None:
    """cocotb test: the counter must count job["cycles"] clock edges after reset."""
    job = read_job()
    n = int(job["cycles"])
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await ClockCycles(dut.clk, n)
    await ReadOnly()
    got = int(dut.count.value)
    write_result({"test": "smoke", "passed": got == n, "count": got, "cycles": n})
