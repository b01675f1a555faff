"""Shared testbench base for memory-preloaded "system" wrappers (MixPESystem,
PIMSystem, ...): the wrappers share one port convention — rst, a load port
(load_sel / load_addr / load_data / load_en), start, done — so the reset,
memory loading and start/await-done sequence live here once.

Python touches the DUT only to load, start, and read back: between start and
done it awaits a single `done` edge, so the clock runs without Python.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

from cosim.tb.common import CLK_PERIOD_NS, Stopwatch
from cosim.tb.streams import RESET_CYCLES

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject, LogicObject


class PreloadedSystemTB:
    """Drives a preloaded system (hdl.streams.RunControl ports): reset, load its memories, start
    and await done."""
    def __init__(self, dut: HierarchyObject, clk: LogicObject | None = None):
        self.dut = dut
        self.clk = dut.clk if clk is None else clk

    async def reset(self) -> None:
        """Hold reset for RESET_CYCLES with start and load_en low, then release it."""
        d = self.dut
        d.rst.value = 1
        d.start.value = 0
        d.load_en.value = 0
        for _ in range(RESET_CYCLES):
            await RisingEdge(self.clk)
        d.rst.value = 0
        await RisingEdge(self.clk)

    async def load(self, sel: int, words: Sequence[int]) -> None:
        """Write `words` to addresses 0.. of the memory selected by `sel`."""
        d = self.dut
        d.load_sel.value = sel
        d.load_en.value = 1
        for addr, w in enumerate(words):
            d.load_addr.value = addr
            d.load_data.value = w
            await RisingEdge(self.clk)
        d.load_en.value = 0

    async def start_and_await_done(self, max_cycles: int, **inputs: int) -> float:
        """Set the run-time `inputs` (port name -> value), pulse start, await
        done (or fail after `max_cycles`). Returns wall seconds of the run; the
        caller reads the DUT's outputs in the ReadOnly phase it leaves us in."""
        d = self.dut
        for name, value in inputs.items():
            getattr(d, name).value = value
        d.start.value = 1
        await RisingEdge(self.clk)
        d.start.value = 0
        sw = Stopwatch()
        timeout = Timer(max_cycles * CLK_PERIOD_NS, unit="ns")
        fired = await First(RisingEdge(d.done), timeout)
        secs = sw.seconds()
        if fired is timeout:
            raise TimeoutError(f"{type(self).__name__}: the DUT did not raise done "
                               f"within {max_cycles} cycles")
        await ReadOnly()
        return secs
