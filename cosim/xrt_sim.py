"""A simulated XRT device: the RTL kernel under Verilator with the same calls as
fpga_boards.host.XrtDevice, so the host sequence (fpga_boards.host.run_kernel,
run_mixpe) runs unchanged without a card.

    device = SimDevice(mixpe_kernel(cfg), wait="irq")
    res = fpga_boards.host.run_mixpe(device, images)

Each `wait()` is one cocotb simulation of the kernel (cosim/tb/kernel_axi.py)
that plays XRT's register protocol against the AXI4-Lite port while AxiRam
models device memory. It lives in cosim, not fpga_boards, because it runs
cocotb: cosim imports fpga_boards, never the other way round.

CLI: `python -m cosim host <quantflow export dir> --config '{...}'` is
`python -m fpga_boards host` on this device.
"""
from __future__ import annotations

from fpga_boards.host import register_writes
from fpga_boards.kernel import KernelSpec

from cosim import runner

__all__ = ["SimDevice", "SIM_BANK_BASE", "SIM_BANK_STRIDE", "SIM_ALIGN", "main"]

#: Device addresses handed out: one window per memory bank group, buffers 4 KB
#: aligned (as XRT allocates them).
SIM_BANK_BASE = 0x4_0000_0000
SIM_BANK_STRIDE = 0x1_0000_0000
SIM_ALIGN = 4096


class _SimBuffer:
    def __init__(self, address: int, nbytes: int):
        self.address = address
        self.nbytes = nbytes
        self.host = bytearray(nbytes)
        self.device = bytearray(nbytes)

    def write(self, data: bytes) -> None:
        if len(data) > self.nbytes:
            raise ValueError(f"writing {len(data)} bytes into a {self.nbytes}-byte buffer")
        self.host[:len(data)] = data

    def sync_to_device(self) -> None:
        self.device[:] = self.host

    def sync_from_device(self) -> None:
        self.host[:] = self.device

    def read(self) -> bytes:
        return bytes(self.host)


class SimDevice:
    """The RTL kernel under Verilator as a device: same calls as XrtDevice.

    wait: "poll" (XRT's default: poll ap_done) or "irq" (interrupt);
    p_stall: random AXI back-pressure on every channel; checks: also check the
    register map during the run (cosim/tb/kernel_axi.py); offset: see alloc."""

    def __init__(self, spec: KernelSpec, *, wait: str = "poll", p_stall: float = 0.0,
                 checks: bool = False, seed: int = 1, sim: str | None = None,
                 offset: int = 0):
        if wait not in ("poll", "irq"):
            raise ValueError(f"wait must be 'poll' or 'irq', got {wait!r}")
        self.spec = spec
        self.wait_mode, self.p_stall, self.checks, self.seed = wait, p_stall, checks, seed
        self.sim = sim
        # Added to every buffer address (a multiple of the widest beat): buffers
        # then straddle 4 KB boundaries, which the DMAs' bursts must not cross.
        self.offset = offset
        self.buffers: list[_SimBuffer] = []
        self._next: dict[int, int] = {}
        self._build = None
        self.last_cycles: int | None = None
        self.last_result: dict | None = None

    def build(self) -> runner.Build:
        """The Verilated MixPE kernel of the spec, built (or taken from the cache) on first use."""
        if self._build is None:
            from cosim.kernel_mixpe import kernel_build  # noqa: PLC0415 (it imports this module)
            self._build = kernel_build(self.spec, sim=self.sim)
        return self._build

    def alloc(self, arg_index: int, nbytes: int) -> _SimBuffer:
        """A buffer of nbytes in the simulated memory window of argument arg_index."""
        # group_id of XRT: the bank the argument is linked to; here one window per arg.
        base = self._next.get(arg_index,
                              SIM_BANK_BASE + arg_index * SIM_BANK_STRIDE + self.offset)
        buf = _SimBuffer(base, nbytes)
        self._next[arg_index] = base + -(-max(nbytes, 1) // SIM_ALIGN) * SIM_ALIGN
        self.buffers.append(buf)
        return buf

    def start(self, values: list) -> _SimRun:
        """Record a run with `values` (buffers and scalars, in argument order); wait() simulates
        it."""
        vals = {}
        for a, v in zip(self.spec.args, values):
            vals[a.name] = v.address if isinstance(v, _SimBuffer) else int(v)
        return _SimRun(self, register_writes(self.spec, vals))

    def execute(self, runs: list[list[tuple[int, int]]]) -> dict:
        """Run one simulation of `runs` (each a list of register writes), back to
        back, with every buffer's device copy as the memory image."""
        job = {
            "masters": [{"name": b.name, "direction": b.direction} for b in self.spec.buffers],
            "memory": [[b.address, bytes(b.device).hex()] for b in self.buffers if b.nbytes],
            "runs": [{"regs": [list(r) for r in regs], "wait": self.wait_mode,
                      "readback": [[b.address, b.nbytes] for b in self.buffers]}
                     for regs in runs],
            "p_stall": self.p_stall, "checks": self.checks, "seed": self.seed,
        }
        res = runner.run(self.build(), test_module="cosim.tb.kernel_axi", job=job)
        if not res.get("passed"):
            raise RuntimeError("simulated kernel run failed: "
                               + "; ".join(res.get("errors", [])) + f" (log {res.get('log')})")
        last = res["runs"][-1]
        for b, hexdata in zip(self.buffers, last["readback"]):
            b.device[:] = bytes.fromhex(hexdata)
        self.last_cycles = last["cycles"]
        self.last_result = res
        return res


class _SimRun:
    def __init__(self, device: SimDevice, regs):
        self.device, self.regs = device, regs

    def wait(self, timeout_ms: int = 0) -> None:
        self.device.execute([self.regs])


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim host`: fpga_boards.host's CLI on the simulated device."""
    from fpga_boards.host import main as host_main  # noqa: PLC0415 (CLI only)
    return host_main(argv, prog="python -m cosim host",
                     simulated=lambda spec, wait: SimDevice(spec, wait=wait))
