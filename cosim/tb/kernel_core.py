"""cocotb testbench of the core's Vitis kernel (fpga_boards.kernel_core.CoreKernel)
as a device server: cosim.kernel_core.SimCoreDevice sends it commands over a Unix
socket and this test carries each out on the simulated card, the way XRT would:

  write / read   device memory (cocotbext-axi AxiRam on m_axi_gmem) written and
                 read directly, as a buffer object's sync does: binary, never
                 through the kernel's AXI ports
  reg_write / reg_read   one AXI4-Lite access (cocotbext-axi AxiLiteMaster)
  run            XRT's start: write the arguments, ap_start, then wait for the
                 interrupt (GIE/IER set; read ISR, toggle it clear) or poll
                 ap_done, read the status registers and the status record
  stop           write the result file and end the simulation

While it waits for the next command the test blocks in a socket read: the
simulator waits with it, so simulation time does not advance between commands.
The job (cosim.runner.read_job): socket (path), p_stall (random pauses on every
AXI channel, memory and control), seed, poll (cycles between two ap_done polls).
Messages both ways: cosim/tb/frames.py.
"""
from __future__ import annotations

import itertools
import logging
import random
import socket
import time
from typing import TYPE_CHECKING

import cocotb
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from cosim.runner import read_job, write_result
from cosim.tb.common import CLK_PERIOD_NS, start_clock
from cosim.tb.frames import recv_message, send_message

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

REG_CTRL, REG_GIE, REG_IER, REG_ISR = 0x00, 0x04, 0x08, 0x0C
AP_START, AP_DONE, AP_IDLE, AP_READY = 0x1, 0x2, 0x4, 0x8


def _pauses(rng: random.Random, p: float):
    return (rng.random() < p for _ in itertools.count())


class CoreKernelTB:
    """Drives the core's kernel as XRT does: AXI4-Lite control and an AxiRam on m_axi_gmem."""
    def __init__(self, dut: HierarchyObject, job: dict):
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam
        from cocotbext.axi.sparse_memory import SparseMemory

        self.dut = dut
        # len() of the memory must fit a Py_ssize_t: a 2**48-byte device address space
        self.mem = SparseMemory(2**48)
        rst = dut.ap_rst_n
        self.ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                                  rst, reset_active_level=False)
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_gmem"), dut.ap_clk, rst,
                          reset_active_level=False, mem=self.mem)
        # cocotbext-axi logs every burst at INFO: keep the log to warnings
        for obj in (self.ctrl.write_if, self.ctrl.read_if, self.ram.write_if, self.ram.read_if):
            obj.log.setLevel(logging.WARNING)
        self.poll = int(job.get("poll", 256))
        p = float(job.get("p_stall", 0.0))
        if p > 0:
            rng = random.Random(int(job.get("seed", 1)))
            for side, chans in ((self.ram.read_if, ("ar_channel", "r_channel")),
                                (self.ram.write_if, ("aw_channel", "w_channel", "b_channel")),
                                (self.ctrl.write_if, ("aw_channel", "w_channel", "b_channel")),
                                (self.ctrl.read_if, ("ar_channel", "r_channel"))):
                for ch in chans:
                    getattr(side, ch).set_pause_generator(_pauses(rng, p))

    def now(self) -> int:
        """Simulated time in clock cycles."""
        return int(get_sim_time("ns") // CLK_PERIOD_NS)

    async def reset(self) -> None:
        """Hold ap_rst_n low for a few cycles, then release it."""
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, 8)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)

    async def reg_read(self, off: int) -> int:
        """Read the control register at byte offset `off`."""
        return await self.ctrl.read_dword(off)

    async def reg_write(self, off: int, value: int) -> None:
        """Write the control register at byte offset `off` (32 bits)."""
        await self.ctrl.write_dword(off, value & 0xFFFFFFFF)

    async def run(self, h: dict) -> dict:
        """XRT's start and wait (module docstring)."""
        mode, max_cycles = h.get("wait", "irq"), int(h["max_cycles"])
        for off, val in h["regs"]:
            await self.reg_write(off, val)
        if mode == "irq":
            await self.reg_write(REG_GIE, 1)
            await self.reg_write(REG_IER, 1)          # ap_done
        await self.reg_write(REG_CTRL, AP_START)
        t0 = self.now()
        deadline = Timer(max_cycles * CLK_PERIOD_NS, unit="ns")
        timeout = False
        notes = []
        if mode == "irq":
            fired = await First(RisingEdge(self.dut.interrupt), deadline)
            timeout = fired is deadline
            waited = self.now() - t0
            if not timeout:
                await RisingEdge(self.dut.ap_clk)
                isr = await self.reg_read(REG_ISR)
                if not isr & 1:
                    notes.append(f"ISR reads 0x{isr:x} after the interrupt (ap_done bit clear)")
                await self.reg_write(REG_ISR, isr & 1)      # toggle-on-write clears it
                await RisingEdge(self.dut.ap_clk)
                await ReadOnly()
                if int(self.dut.interrupt.value):
                    notes.append("interrupt still high after the ISR write")
                await RisingEdge(self.dut.ap_clk)
                ctrl = await self.reg_read(REG_CTRL)    # clears ap_done, as XRT's read does
                if not ctrl & AP_DONE:
                    notes.append(f"control 0x{ctrl:02x}: ap_done not set after the interrupt")
        else:
            while True:
                ctrl = await self.reg_read(REG_CTRL)
                if ctrl & AP_DONE:
                    break
                if self.now() - t0 > max_cycles:
                    timeout = True
                    break
                # a Timer sleeps `poll` cycles; polling every cycle wakes Python each edge
                await Timer(self.poll * CLK_PERIOD_NS, unit="ns")
                await RisingEdge(self.dut.ap_clk)
            waited = self.now() - t0
        status = {name: await self.reg_read(off) for name, off in h["status"].items()}
        out = {"timeout": timeout, "waited": waited, "status": status, "notes": notes}
        if not timeout:
            ctrl = await self.reg_read(REG_CTRL)
            if not ctrl & AP_IDLE or ctrl & (AP_START | AP_DONE):
                notes.append(f"control 0x{ctrl:02x} after the run: expected ap_idle only")
            if h.get("record"):             # the status record the kernel wrote
                addr, n = h["record"]
                out["record"] = bytes(self.mem.read(int(addr), int(n))).hex()
        return out

    async def serve(self, h: dict, payload: bytes) -> tuple[dict, bytes]:
        """Carry out one command of the device protocol (write, read, reg_write, reg_read,
        run, idle); returns the reply header and payload."""
        op = h["op"]
        if op == "write":
            self.mem.write(int(h["addr"]), payload)
            return {"ok": True}, b""
        if op == "read":
            return {"ok": True}, bytes(self.mem.read(int(h["addr"]), int(h["n"])))
        if op == "reg_write":
            await self.reg_write(int(h["offset"]), int(h["value"]))
            return {"ok": True}, b""
        if op == "reg_read":
            return {"ok": True, "value": await self.reg_read(int(h["offset"]))}, b""
        if op == "run":
            return {"ok": True, **await self.run(h)}, b""
        if op == "idle":
            await ClockCycles(self.dut.ap_clk, int(h["cycles"]))
            return {"ok": True}, b""
        return {"ok": False, "error": f"unknown command {op!r}"}, b""


@cocotb.test()
async def kernel_core_serve(dut: HierarchyObject) -> None:
    """cocotb test: serve SimCoreDevice's commands over the job's Unix socket until it says stop."""
    job = read_job()
    start_clock(dut.ap_clk, impl="gpi")
    tb = CoreKernelTB(dut, job)
    await tb.reset()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(job["socket"])
    served, t0, sim0 = 0, time.perf_counter(), tb.now()
    errors = []
    try:
        while True:
            # blocks the simulator too: no simulation time passes between commands
            header, payload = recv_message(sock)
            if header is None or header["op"] == "stop":
                break
            try:
                resp, data = await tb.serve(header, payload)
            except Exception as e:     # a bad command: report it, keep serving
                resp, data = {"ok": False, "error": f"{type(e).__name__}: {e}"}, b""
                errors.append(resp["error"])
            send_message(sock, resp, data)
            served += 1
    finally:
        sock.close()
        write_result({"test": "kernel_core", "passed": not errors, "errors": errors,
                      "commands": served, "sim_cycles": tb.now() - sim0,
                      "sim_seconds": time.perf_counter() - t0})
