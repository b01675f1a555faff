"""Host code of the Alveo kernels: one host sequence, two backends.

    device = XrtDevice("build/boards/u280/mixpe/mixpe.xclbin", spec)   # a card (pyxrt)
    device = SimDevice(spec)                                           # Verilator + cocotb
    res = run_mixpe(device, images)                                    # same code for both

The sequence is XRT's: allocate one buffer object per kernel argument in the
memory bank the argument is linked to (`kernel.group_id(i)`), write quantflow's
words, sync to the device, start the kernel with (buffers..., scalars...), wait,
sync the result buffer back, read it and compare with golden.

`XrtDevice` imports `pyxrt` (shipped with XRT, not on PyPI) only when it is
constructed; `SimDevice` runs each `wait()` as one cocotb simulation of the RTL
kernel (cosim/tb/kernel_axi.py) that plays XRT's register protocol against the
AXI4-Lite port while AxiRam models device memory, so this module is exercised
in CI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .kernel import KernelSpec, bytes_to_words, words_to_bytes

__all__ = ["XrtUnavailable", "XrtDevice", "SimDevice", "HostResult", "run_kernel",
           "run_mixpe", "register_writes", "main"]

#: Device addresses the simulation backend hands out: one window per memory bank
#: group, buffers 4 KB aligned (as XRT allocates them).
SIM_BANK_BASE = 0x4_0000_0000
SIM_BANK_STRIDE = 0x1_0000_0000
SIM_ALIGN = 4096


class XrtUnavailable(RuntimeError):
    """pyxrt cannot be imported: XRT is not installed / not sourced."""


def _import_pyxrt():
    try:
        import pyxrt  # noqa: PLC0415 (only on a machine with XRT)
    except ImportError:
        raise XrtUnavailable(
            "pyxrt (XRT's Python binding) is not importable: install XRT "
            "(https://github.com/Xilinx/XRT, 2022.2 or later) on the machine with the "
            "Alveo card and `source /opt/xilinx/xrt/setup.sh` before running; on a "
            "machine without a card use the simulation backend (SimDevice, "
            "`python -m fpga_boards host --sim`)") from None
    return pyxrt


def register_writes(spec: KernelSpec, values: dict) -> list[tuple[int, int]]:
    """The (offset, 32-bit value) writes XRT makes for one start: every argument
    in register-map order, 64-bit pointers as low word then high word."""
    out = []
    for a in spec.args:
        v = int(values[a.name])
        off = spec.offsets[a.name]
        out.append((off, v & 0xFFFFFFFF))
        if a.bits == 64:
            out.append((off + 4, (v >> 32) & 0xFFFFFFFF))
    return out


# --------------------------------------------------------------------------- XRT

class _XrtBuffer:
    def __init__(self, pyxrt, dev, nbytes: int, group: int):
        self._x = pyxrt
        self.nbytes = nbytes
        self.bo = pyxrt.bo(dev, max(nbytes, 1), pyxrt.bo.normal, group)

    @property
    def address(self) -> int:
        return int(self.bo.address())

    def write(self, data: bytes) -> None:
        self.bo.write(data, 0)

    def sync_to_device(self) -> None:
        self.bo.sync(self._x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, self.nbytes, 0)

    def sync_from_device(self) -> None:
        self.bo.sync(self._x.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, self.nbytes, 0)

    def read(self) -> bytes:
        return bytes(self.bo.read(self.nbytes, 0))


class XrtDevice:
    """An Alveo card through pyxrt, with `xclbin` loaded and the kernel opened."""

    def __init__(self, xclbin, spec: KernelSpec, *, index: int = 0):
        self.x = _import_pyxrt()
        path = Path(xclbin)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; build it on a Vitis machine "
                                    f"with build/boards/<board>/{spec.name}/build_xclbin.sh")
        self.spec = spec
        self.dev = self.x.device(index)
        self.uuid = self.dev.load_xclbin(str(path))
        self.kernel = self.x.kernel(self.dev, self.uuid, spec.name,
                                    self.x.kernel.cu_access_mode.exclusive)
        self.last_cycles = None

    def alloc(self, arg_index: int, nbytes: int) -> _XrtBuffer:
        return _XrtBuffer(self.x, self.dev, nbytes, self.kernel.group_id(arg_index))

    def start(self, values: list):
        return _XrtRun(self.x, self.kernel(*values))


class _XrtRun:
    def __init__(self, pyxrt, run):
        self.x, self.run = pyxrt, run

    def wait(self, timeout_ms: int = 0) -> None:
        state = self.run.wait(timeout_ms)
        if state != self.x.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"kernel run ended in state {state}")


# --------------------------------------------------------------------------- simulation

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

    def build(self):
        if self._build is None:
            from cosim.kernel_mixpe import kernel_build
            self._build = kernel_build(self.spec, sim=self.sim)
        return self._build

    def alloc(self, arg_index: int, nbytes: int) -> _SimBuffer:
        # group_id of XRT: the bank the argument is linked to; here one window per arg.
        base = self._next.get(arg_index,
                              SIM_BANK_BASE + arg_index * SIM_BANK_STRIDE + self.offset)
        buf = _SimBuffer(base, nbytes)
        self._next[arg_index] = base + -(-max(nbytes, 1) // SIM_ALIGN) * SIM_ALIGN
        self.buffers.append(buf)
        return buf

    def start(self, values: list):
        vals = {}
        for a, v in zip(self.spec.args, values):
            vals[a.name] = v.address if isinstance(v, _SimBuffer) else int(v)
        return _SimRun(self, register_writes(self.spec, vals))

    def execute(self, runs: list[list[tuple[int, int]]]) -> dict:
        """Run one simulation of `runs` (each a list of register writes), back to
        back, with every buffer's device copy as the memory image."""
        from cosim import runner
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


# --------------------------------------------------------------------------- the sequence

@dataclass(frozen=True, kw_only=True)
class HostResult:
    outputs: dict           # buffer name -> words read back
    cycles: int | None      # simulated kernel cycles (SimDevice), None on a card


def run_kernel(device, spec: KernelSpec, inputs: dict, scalars: dict) -> HostResult:
    """XRT's host sequence for one kernel run. `inputs`: buffer name -> memory
    words (quantflow's); output buffers are sized from the scalars."""
    bufs = []
    for i, b in enumerate(spec.buffers):
        if b.direction == "in":
            raw = words_to_bytes(inputs[b.name], b.word_bits)
            need = b.words(scalars) * b.word_bytes
            if len(raw) < need:
                raise ValueError(f"buffer {b.name!r} holds {len(raw)} bytes but the run reads "
                                 f"{need}; check m_tiles/n_tiles against the images")
            buf = device.alloc(i, len(raw))
            buf.write(raw)
            buf.sync_to_device()
        else:
            buf = device.alloc(i, b.words(scalars) * b.word_bytes)
        bufs.append(buf)
    run = device.start(bufs + [int(scalars[s]) for s in spec.scalars])
    run.wait()
    outputs = {}
    for b, buf in zip(spec.buffers, bufs):
        if b.direction == "out":
            buf.sync_from_device()
            outputs[b.name] = bytes_to_words(buf.read(), b.word_bits)
    return HostResult(outputs=outputs, cycles=getattr(device, "last_cycles", None))


def mixpe_inputs(images) -> tuple[dict, dict]:
    """(buffer words, scalars) of a MixPE run from quantflow's MixPEImages."""
    return ({"act": list(images.act_words), "code": list(images.code_words),
             "scale": list(images.scale_words)},
            {"m_tiles": images.m_tiles, "n_tiles": images.n_tiles})


def mixpe_expected(images) -> list[int]:
    """Golden result words in the kernel's emission order (golden.mixpe on the
    decoded images)."""
    from golden.mixpe import mixpe_acc
    from quantflow.mixpe import pack_result_words
    acc = mixpe_acc(images.a, images.q, images.s2, images.z, images.config)
    return pack_result_words(acc, images.config)


def run_mixpe(device, images) -> dict:
    """The MixPE host program: run the kernel on quantflow's images and compare
    every result word with golden. Returns {passed, mismatches, words, cycles}."""
    spec = device.spec
    inputs, scalars = mixpe_inputs(images)
    res = run_kernel(device, spec, inputs, scalars)
    got = res.outputs["result"]
    exp = mixpe_expected(images)
    bad = [i for i, (g, e) in enumerate(zip(got, exp)) if g != e]
    if len(got) != len(exp):
        bad.append(min(len(got), len(exp)))
    return {"passed": not bad, "mismatches": len(bad), "words": len(exp),
            "first_mismatch": bad[0] if bad else None, "cycles": res.cycles}


def main(argv=None) -> int:
    import argparse
    import json
    from golden.mixpe_config import MixPEConfig
    from quantflow import load_mixpe
    from .kernel import mixpe_kernel

    ap = argparse.ArgumentParser(prog="python -m fpga_boards host",
                                 description="run the MixPE kernel on quantflow images")
    ap.add_argument("images", type=Path, help="a quantflow export directory")
    ap.add_argument("--config", default="{}", help="MixPE configuration as JSON")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--xclbin", type=Path, help="run on a card through pyxrt")
    g.add_argument("--sim", action="store_true", help="run the simulated kernel")
    ap.add_argument("--wait", choices=("poll", "irq"), default="poll")
    args = ap.parse_args(argv)
    cfg = MixPEConfig(**json.loads(args.config))
    spec = mixpe_kernel(cfg)
    images = load_mixpe(args.images, cfg)
    try:
        device = SimDevice(spec, wait=args.wait) if args.sim else XrtDevice(args.xclbin, spec)
    except XrtUnavailable as e:
        print(f"error: {e}", file=os.sys.stderr)
        return 3
    out = run_mixpe(device, images)
    print(json.dumps(out))
    return 0 if out["passed"] else 1
