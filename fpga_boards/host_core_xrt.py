"""The core kernel on an Alveo card through XRT: `XrtCoreDevice` has the calls of
fpga_boards.host_core.CoreDevice, so the host loop (generate) runs on the card.

    dev = XrtCoreDevice("build/boards/u280/core/core.xclbin", core, mem_bytes=len(memory))
    dev.load(memory)                                  # build_memory(image, program)
    res = fpga_boards.host_core.generate(dev, program, ids, max_new_tokens=8)

One buffer object holds the whole memory image, in the bank the kernel's `mem`
argument is linked to (kernel.group_id); load is a write and a sync of all of it,
write / read touch and sync only their byte range. run sets the arguments (mem =
the buffer, prog / 64, pos, tokens, status = a second, 4 KiB buffer in the same
bank), starts the compute unit and waits; then it reads the status record the
kernel wrote (error, err_pc, cycles, runs; fpga_boards.kernel_core). The record
is needed because pyxrt has no register read (XRT's C++ xrt::kernel::read_register
reads the same words at the status registers), and every scalar is a C int
because pyxrt passes no wider one.

`pyxrt` (shipped with XRT, not on PyPI) is imported only when a device is
constructed, with fpga_boards.host's message when it is missing. The simulated
card with the same calls is cosim.kernel_core.SimCoreDevice.

CLI: `python -m fpga_boards.host_core_xrt --xclbin <tree>/core.xclbin --image
<compiled image dir> --ids 1,2,3 --max-new-tokens 8` (the core's configuration
from the build tree's manifest.json next to the xclbin).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .host import XrtUnavailable, _import_pyxrt
from .kernel_core import (ARGS, MEM_ALIGN_BYTES, NAME, PYXRT_MAX_SCALAR, STATUS_BYTES,
                          config_from_dict, parse_status)

if TYPE_CHECKING:
    from golden.core_config import CoreConfig

__all__ = ["XrtCoreDevice", "ARG_INDEX", "find_xclbin", "main"]

#: XRT's argument index of every read-write register (kernel.xml follows the map).
ARG_INDEX = {a.name: i for i, a in enumerate(a for a in ARGS if not a.readonly)}
#: What the status buffer holds before a run: a record no kernel writes (runs and
#: error all ones), so a run that left it unwritten is seen.
_SENTINEL = b"\xff" * STATUS_BYTES
_STATUS_BO_BYTES = 4096


class XrtCoreDevice:
    """The core kernel on a card (module docstring). `mem_bytes`: the buffer's size,
    at least the memory image's; `timeout_ms`: how long one run may take (0: no
    limit)."""

    def __init__(self, xclbin: Path | str, config: CoreConfig, *, mem_bytes: int, index: int = 0,
                 timeout_ms: int = 0, kernel_name: str = NAME):
        try:
            self.x = _import_pyxrt()
        except XrtUnavailable as e:
            raise XrtUnavailable(f"{e}. For the core kernel the simulated card is "
                                 f"cosim.kernel_core.SimCoreDevice (python -m "
                                 f"cosim.kernel_core)") from None
        path = Path(xclbin)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; build it on a Vitis machine with "
                                    f"build/boards/<board>/{NAME}/build_xclbin.sh")
        if mem_bytes < 1:
            raise ValueError(f"mem_bytes must be >= 1 (the memory image's size), got {mem_bytes}")
        self.config, self.mem_bytes, self.timeout_ms = config, int(mem_bytes), timeout_ms
        self.dev = self.x.device(index)
        self.uuid = self.dev.load_xclbin(str(path))
        self.kernel = self.x.kernel(self.dev, self.uuid, kernel_name)
        normal = self.x.bo.normal
        self.bo = self.x.bo(self.dev, self.mem_bytes, normal,
                            self.kernel.group_id(ARG_INDEX["mem"]))
        self.status_bo = self.x.bo(self.dev, _STATUS_BO_BYTES, normal,
                                   self.kernel.group_id(ARG_INDEX["status"]))
        addr = int(self.bo.address())
        if addr % MEM_ALIGN_BYTES:
            # the kernel would refuse every run (error "align"): say why now
            raise RuntimeError(f"XRT placed the memory buffer at 0x{addr:x}, not on a "
                               f"{MEM_ALIGN_BYTES}-byte boundary, which the kernel needs")
        self.runs: list[dict] = []

    @classmethod
    def open_default(cls, config: CoreConfig, *, mem_bytes: int, board: str | None = None,
                     **kw: Any) -> XrtCoreDevice:
        """The device with the xclbin built for `config` under build/boards
        (find_xclbin)."""
        return cls(find_xclbin(config, board=board), config, mem_bytes=mem_bytes, **kw)

    # ------------------------------------------------------------------ CoreDevice
    def _range(self, addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > self.mem_bytes:
            raise ValueError(f"bytes [{addr}, {addr + n}) lie outside the {self.mem_bytes}-byte "
                             f"buffer; open the device with mem_bytes >= the memory image")

    def _sync(self, bo, to_device: bool, n: int, offset: int) -> None:
        d = self.x.xclBOSyncDirection
        bo.sync(d.XCL_BO_SYNC_BO_TO_DEVICE if to_device else d.XCL_BO_SYNC_BO_FROM_DEVICE,
                n, offset)

    def load(self, memory: bytes) -> None:
        """The whole memory image to device addresses [0, len(memory))."""
        self.write(0, bytes(memory))

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes at a device address (synced to the card)."""
        data = bytes(data)
        self._range(addr, len(data))
        if data:
            self.bo.write(data, addr)
            self._sync(self.bo, True, len(data), addr)

    def read(self, addr: int, n: int) -> bytes:
        """Read n bytes at a device address (synced from the card)."""
        self._range(addr, n)
        if not n:
            return b""
        self._sync(self.bo, False, n, addr)
        return bytes(self.bo.read(n, addr))

    def run(self, prog: int, pos: int, tokens: int) -> dict:
        """One start: arguments, start, wait, the status record (module docstring)."""
        if prog % 64:
            raise ValueError(f"prog=0x{prog:x} is not a multiple of 64 (an instruction)")
        for name, v in (("prog / 64", prog // 64), ("pos", pos), ("tokens", tokens)):
            if not 0 <= v <= PYXRT_MAX_SCALAR:
                raise ValueError(f"{name}={v} does not fit the C int pyxrt passes "
                                 f"(0..{PYXRT_MAX_SCALAR})")
        self.status_bo.write(_SENTINEL, 0)
        self._sync(self.status_bo, True, STATUS_BYTES, 0)
        t0 = time.perf_counter()
        r = self.x.run(self.kernel)
        r.set_arg(ARG_INDEX["mem"], self.bo)
        r.set_arg(ARG_INDEX["prog"], prog // 64)
        r.set_arg(ARG_INDEX["pos"], pos)
        r.set_arg(ARG_INDEX["tokens"], tokens)
        r.set_arg(ARG_INDEX["status"], self.status_bo)
        r.start()
        state = r.wait(self.timeout_ms)
        seconds = time.perf_counter() - t0
        if state != self.x.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"the core kernel's run (pos {pos}, tokens {tokens}) ended in "
                               f"state {state}")
        self._sync(self.status_bo, False, STATUS_BYTES, 0)
        raw = bytes(self.status_bo.read(STATUS_BYTES, 0))
        if raw == _SENTINEL:
            raise RuntimeError("the core kernel completed without writing its status record "
                               "(a write error on its memory port?)")
        rec = parse_status(raw)
        out = {"cycles": rec["cycles"], "error": rec["error"], "err_pc": rec["err_pc"],
               "runs": rec["runs"], "seconds": seconds}
        self.runs.append(out)
        return out


def find_xclbin(config: CoreConfig, *, board: str | None = None, root: Path | None = None) -> Path:
    """The core.xclbin under build/boards/<board>/core whose manifest.json holds
    `config`; FileNotFoundError naming the build command when there is none."""
    from .build import BUILD_ROOT
    root = Path(root or BUILD_ROOT)
    boards = [board] if board else sorted(p.name for p in root.glob("*") if p.is_dir())
    for b in boards:
        tree = root / b / NAME
        man = tree / "manifest.json"
        if (tree / f"{NAME}.xclbin").is_file() and man.is_file():
            if config_from_dict(json.loads(man.read_text())["config"]) == config:
                return tree / f"{NAME}.xclbin"
    raise FileNotFoundError(
        f"no {NAME}.xclbin for this core configuration under {root}; build one with "
        f"`python -m fpga_boards build --board <u280|u250|u55c> --kernel core --config "
        f"'<the configuration as JSON>'` and its build_xclbin.sh on a Vitis machine")


def main(argv: list[str] | None = None) -> int:
    """Greedy generation on the card: the image's whole-model program compiled for
    the kernel's core (manifest.json next to the xclbin)."""
    import argparse
    from quantflow.program import CompiledImage, build_memory, compile_program
    from .host_core import generate

    ap = argparse.ArgumentParser(prog="python -m fpga_boards.host_core_xrt",
                                 description=main.__doc__)
    ap.add_argument("--xclbin", type=Path, required=True, help="the core kernel's xclbin")
    ap.add_argument("--manifest", type=Path, default=None,
                    help="its build tree's manifest.json (default: next to the xclbin)")
    ap.add_argument("--image", type=Path, required=True,
                    help="a compiled model image (python -m quantflow compile)")
    ap.add_argument("--ids", required=True, help="prompt token ids, comma separated")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    man = args.manifest or args.xclbin.with_name("manifest.json")
    try:
        ids = [int(t) for t in args.ids.split(",") if t.strip()]
        config = config_from_dict(json.loads(man.read_text())["config"])
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e} (give --ids as comma-separated integers and the build tree's "
              f"manifest.json)", file=sys.stderr)
        return 2
    img = CompiledImage.from_dir(args.image)
    prog = compile_program(img, config)
    memory = build_memory(img, prog)
    try:
        dev = XrtCoreDevice(args.xclbin, config, mem_bytes=len(memory))
    except XrtUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    dev.load(memory)
    res = generate(dev, prog, ids, args.max_new_tokens,
                   on_token=lambda t: print(t, file=sys.stderr, flush=True))
    print(json.dumps({"prompt_ids": ids, "tokens": res.tokens,
                      "cycles_prefill": res.cycles_prefill,
                      "cycles_per_token": res.cycles_per_token}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
