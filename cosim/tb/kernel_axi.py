"""cocotb testbench of a Vitis RTL kernel (fpga_boards.kernel.RtlKernel), driven
exactly as XRT drives a compute unit: cocotbext-axi's AxiLiteMaster on
`s_axi_control`, one AxiRam per `m_axi_<name>` master over one shared device
memory, and the ap_ctrl_hs protocol:

  write the argument registers (0x10..), write ap_start (0x00 bit 0), then wait
  for completion by polling 0x00 for ap_done ("poll"), or by the `interrupt`
  line after enabling GIE/IER ("irq": then read ISR and toggle it clear),
  finally read the result buffers back.

The job (cosim.runner.read_job) is written by fpga_boards.host's simulation
backend or by cosim.kernel_mixpe:
  masters   [{"name", "direction": "in"|"out"}]
  memory    [[address, hex bytes], ...]      device memory before the first run
  runs      [{"regs": [[offset, value32], ...], "wait": "poll"|"irq",
              "readback": [[address, nbytes], ...]}]
  p_stall   probability of a pause per cycle on every AXI channel (back-pressure
            and gaps on AR/R/AW/W/B and on the control bus); 0 = ideal memory
  checks    true: also check the register map (idle after reset, argument
            read-back, ap_done clear-on-read, ISR toggle, interrupt drop)
  seed, max_cycles
Result: passed, errors, runs [{"cycles", "readback": [hex...]}] where cycles
count clock edges from the ap_start write's response to ap_done being seen
(irq: exact, the interrupt rises one edge after ap_done; poll: as observed).
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import TYPE_CHECKING

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from cosim.runner import read_job, write_result
from cosim.tb.common import CLK_PERIOD_NS

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

REG_CTRL, REG_GIE, REG_IER, REG_ISR = 0x00, 0x04, 0x08, 0x0C
AP_START, AP_DONE, AP_IDLE, AP_READY = 0x1, 0x2, 0x4, 0x8


def _pauses(rng: random.Random, p: float):
    return (rng.random() < p for _ in itertools.count())


class KernelTB:
    """Drives one RTL kernel as XRT does: AXI4-Lite control, one AxiRam per master over a shared
    memory."""
    def __init__(self, dut: HierarchyObject, job: dict):
        from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiReadBus, AxiWriteBus)
        from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
        from cocotbext.axi.sparse_memory import SparseMemory

        self.dut = dut
        self.errors: list[str] = []
        self.cycle_ns = CLK_PERIOD_NS
        # len() of the memory must fit a Py_ssize_t: a 2**48-byte device address space.
        self.mem = SparseMemory(2**48)
        rst = dut.ap_rst_n
        self.ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                                  rst, reset_active_level=False)
        self.rams = []
        for mst in job["masters"]:
            prefix = f"m_axi_{mst['name']}"
            if mst["direction"] == "in":
                ram = AxiRamRead(AxiReadBus.from_prefix(dut, prefix), dut.ap_clk, rst,
                                 reset_active_level=False, mem=self.mem)
            else:
                ram = AxiRamWrite(AxiWriteBus.from_prefix(dut, prefix), dut.ap_clk, rst,
                                  reset_active_level=False, mem=self.mem)
            self.rams.append(ram)
        # cocotbext-axi logs every burst at INFO: keep the log to warnings.
        for obj in [self.ctrl.write_if, self.ctrl.read_if, *self.rams]:
            obj.log.setLevel(logging.WARNING)
        p = float(job.get("p_stall", 0.0))
        if p > 0:
            rng = random.Random(int(job.get("seed", 1)))
            for ram in self.rams:
                for ch in ("ar_channel", "r_channel", "aw_channel", "w_channel", "b_channel"):
                    if hasattr(ram, ch):
                        getattr(ram, ch).set_pause_generator(_pauses(rng, p))
            for side, chans in ((self.ctrl.write_if, ("aw_channel", "w_channel", "b_channel")),
                                (self.ctrl.read_if, ("ar_channel", "r_channel"))):
                for ch in chans:
                    getattr(side, ch).set_pause_generator(_pauses(rng, p))

    def check(self, ok: bool, msg: str) -> None:
        """Record `msg` as an error unless `ok`."""
        if not ok:
            self.errors.append(msg)

    def now_cycles(self) -> int:
        """Simulated time in kernel clock cycles."""
        return int(get_sim_time("ns") // self.cycle_ns)

    async def reset(self) -> None:
        """Hold ap_rst_n low for a few cycles, then release it."""
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, 8)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)

    async def read(self, off: int) -> int:
        """Read the control register at byte offset `off`."""
        return await self.ctrl.read_dword(off)

    async def write(self, off: int, value: int) -> None:
        """Write the control register at byte offset `off` (32 bits)."""
        await self.ctrl.write_dword(off, value & 0xFFFFFFFF)

    async def run(self, run: dict, max_cycles: int, checks: bool) -> dict:
        """One kernel run: write the registers (read back with `checks`), start, wait for done by
        polling or interrupt; returns the run's record."""
        mode = run.get("wait", "poll")
        for off, val in run["regs"]:
            await self.write(off, val)
        if checks:
            for off, val in run["regs"]:
                got = await self.read(off)
                self.check(got == val & 0xFFFFFFFF,
                           f"argument register 0x{off:02x} reads 0x{got:08x}, wrote 0x{val:08x}")
        if mode == "irq":
            await self.write(REG_GIE, 1)
            await self.write(REG_IER, 1)   # ap_done
        await self.write(REG_CTRL, AP_START)
        t0 = self.now_cycles()
        deadline = Timer(max_cycles * CLK_PERIOD_NS, unit="ns")
        if mode == "irq":
            if int(self.dut.interrupt.value):
                self.errors.append("interrupt high right after ap_start")
            fired = await First(RisingEdge(self.dut.interrupt), deadline)
            if fired is deadline:
                raise TimeoutError(f"no interrupt within {max_cycles} cycles")
            cycles = self.now_cycles() - t0
            await RisingEdge(self.dut.ap_clk)
            isr = await self.read(REG_ISR)
            self.check(isr & 1 == 1, f"ISR reads 0x{isr:x} after the interrupt (ap_done bit clear)")
            await self.write(REG_ISR, isr & 1)            # toggle-on-write clears it
            await RisingEdge(self.dut.ap_clk)
            await ReadOnly()
            self.check(int(self.dut.interrupt.value) == 0,
                       "interrupt still high after the ISR write")
            await RisingEdge(self.dut.ap_clk)
            isr2 = await self.read(REG_ISR)
            self.check(isr2 & 1 == 0, f"ISR still 0x{isr2:x} after toggling bit 0")
            await self.write(REG_GIE, 0)
            ctrl = await self.read(REG_CTRL)
            self.check(ctrl & AP_DONE, f"control 0x{ctrl:02x}: ap_done not set after the interrupt")
        else:
            while True:
                ctrl = await self.read(REG_CTRL)
                if ctrl & AP_DONE:
                    break
                if self.now_cycles() - t0 > max_cycles:
                    raise TimeoutError(f"ap_done not seen within {max_cycles} cycles")
            cycles = self.now_cycles() - t0
        if checks:
            self.check(ctrl & AP_IDLE, f"control 0x{ctrl:02x}: ap_idle not set with ap_done")
            self.check(not ctrl & AP_START, f"control 0x{ctrl:02x}: ap_start still set when done")
            again = await self.read(REG_CTRL)
            self.check(not again & AP_DONE,
                       f"control 0x{again:02x}: ap_done not cleared by the previous read")
            self.check(not again & AP_READY,
                       f"control 0x{again:02x}: ap_ready not cleared by the previous read")
            self.check(again & AP_IDLE, f"control 0x{again:02x}: not idle after the run")
        readback = [self.mem[a:a + n].hex() for a, n in run.get("readback", [])]
        return {"cycles": cycles, "wait": mode, "readback": readback}


@cocotb.test()
async def kernel_axi(dut: HierarchyObject) -> None:
    """cocotb test: every run of the job on the kernel, as XRT would drive it, then the result
    buffers."""
    job = read_job()
    Clock(dut.ap_clk, CLK_PERIOD_NS, unit="ns").start()
    tb = KernelTB(dut, job)
    checks = bool(job.get("checks", False))
    max_cycles = int(job.get("max_cycles", 1_000_000))
    for addr, hexdata in job.get("memory", []):
        tb.mem[addr:addr + len(hexdata) // 2] = bytes.fromhex(hexdata)
    await tb.reset()
    if checks:
        ctrl = await tb.read(REG_CTRL)
        tb.check(ctrl == AP_IDLE, f"control reads 0x{ctrl:02x} after reset, expected ap_idle only")
        for off in (REG_GIE, REG_IER, REG_ISR):
            v = await tb.read(off)
            tb.check(v == 0, f"register 0x{off:02x} reads 0x{v:x} after reset, expected 0")
    runs = []
    sim_t0 = get_sim_time("ns")
    import time
    wall0 = time.perf_counter()
    for run in job["runs"]:
        runs.append(await tb.run(run, max_cycles, checks))
    wall = time.perf_counter() - wall0
    sim_cycles = int((get_sim_time("ns") - sim_t0) // CLK_PERIOD_NS)
    write_result({"test": "kernel", "passed": not tb.errors, "errors": tb.errors,
                  "runs": runs, "sim_cycles": sim_cycles, "sim_seconds": wall,
                  "seed": job.get("seed"), "p_stall": job.get("p_stall", 0.0)})
    assert not tb.errors, "; ".join(tb.errors)
