"""Host code of the Alveo kernels: one host sequence for any device.

    device = XrtDevice("build/boards/u280/mixpe/mixpe.xclbin", spec)   # a card (pyxrt)
    res = run_mixpe(device, images)

The sequence is XRT's: allocate one buffer object per kernel argument in the
memory bank the argument is linked to (`kernel.group_id(i)`), write quantflow's
words, sync to the device, start the kernel with (buffers..., scalars...), wait,
sync the result buffer back, read it and compare with golden.

`XrtDevice` imports `pyxrt` (shipped with XRT, not on PyPI) only when it is
constructed. The simulated device with the same calls, `cosim.xrt_sim.SimDevice`
(the RTL kernel under Verilator and cocotb), lives in cosim, which imports this
module; fpga_boards never imports cosim. `python -m cosim host` runs this CLI on it.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .kernel import KernelSpec, bytes_to_words, words_to_bytes

if TYPE_CHECKING:
    from quantflow.mixpe import MixPEImages

__all__ = ["XrtUnavailable", "XrtDevice", "HostResult", "run_kernel", "run_mixpe",
           "mixpe_inputs", "mixpe_expected", "register_writes", "main"]


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
            "machine without a card run the simulated kernel instead: "
            "`python -m cosim host <images> --config '<json>'`") from None
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

    def __init__(self, xclbin: Path | str, spec: KernelSpec, *, index: int = 0):
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
        """A device buffer of nbytes in the memory bank of kernel argument arg_index."""
        return _XrtBuffer(self.x, self.dev, nbytes, self.kernel.group_id(arg_index))

    def start(self, values: list) -> _XrtRun:
        """Start the kernel with `values` (buffers and scalars, in argument order)."""
        return _XrtRun(self.x, self.kernel(*values))


class _XrtRun:
    def __init__(self, pyxrt, run):
        self.x, self.run = pyxrt, run

    def wait(self, timeout_ms: int = 0) -> None:
        state = self.run.wait(timeout_ms)
        if state != self.x.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"kernel run ended in state {state}")


# --------------------------------------------------------------------------- the sequence

@dataclass(frozen=True, kw_only=True)
class HostResult:
    """One kernel run's output buffers (words read back) and, when simulated, its cycles."""
    outputs: dict           # buffer name -> words read back
    cycles: int | None      # simulated kernel cycles (cosim.xrt_sim), None on a card


def run_kernel(device: XrtDevice, spec: KernelSpec, inputs: dict, scalars: dict) -> HostResult:
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


def mixpe_inputs(images: MixPEImages) -> tuple[dict, dict]:
    """(buffer words, scalars) of a MixPE run from quantflow's MixPEImages."""
    return ({"act": list(images.act_words), "code": list(images.code_words),
             "scale": list(images.scale_words)},
            {"m_tiles": images.m_tiles, "n_tiles": images.n_tiles})


def mixpe_expected(images: MixPEImages) -> list[int]:
    """Golden result words in the kernel's emission order (golden.mixpe on the
    decoded images)."""
    from golden.mixpe import mixpe_acc
    from quantflow.mixpe import pack_result_words
    acc = mixpe_acc(images.a, images.q, images.s2, images.z, images.config)
    return pack_result_words(acc, images.config)


def run_mixpe(device: XrtDevice, images: MixPEImages) -> dict:
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


def main(argv: list[str] | None = None, *, prog: str = "python -m fpga_boards host",
         simulated: Callable[[KernelSpec, str], object] | None = None) -> int:
    """Run the MixPE kernel on quantflow images and compare with golden: on a card
    (--xclbin), or, when `simulated` ((spec, wait) -> device) is given, on that
    device (cosim.xrt_sim.main passes its SimDevice)."""
    import argparse
    import json
    from quantflow import load_mixpe
    from .kernel import mixpe_kernel

    ap = argparse.ArgumentParser(prog=prog, description="run the MixPE kernel on quantflow "
                                 + ("images, simulated" if simulated else "images on a card"))
    ap.add_argument("images", type=Path, help="a quantflow export directory")
    ap.add_argument("--config", default=None, help="MixPE configuration as a JSON object "
                    "(default: the one the images' manifest.json records)")
    if simulated is None:
        ap.add_argument("--xclbin", type=Path, required=True, help="the kernel's xclbin")
    ap.add_argument("--wait", choices=("poll", "irq"), default="poll")
    args = ap.parse_args(argv)
    try:
        cfg = _host_config(args.images, args.config)
        images = load_mixpe(args.images, cfg)
        spec = mixpe_kernel(cfg)
        try:
            device = simulated(spec, args.wait) if simulated else XrtDevice(args.xclbin, spec)
        except XrtUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    except (ValueError, TypeError, OSError) as e:  # QuantflowError is a ValueError
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = run_mixpe(device, images)
    print(json.dumps(out))
    return 0 if out["passed"] else 1


def _host_config(images: Path, text: str | None):
    """The MixPEConfig of a host run: --config's JSON object, else the one the
    images were exported for. ValueError naming the fix otherwise."""
    import json
    from golden.mixpe_config import MixPEConfig
    from quantflow.imagedir import MANIFEST
    if text is None:
        if not (images / MANIFEST).is_file():
            raise ValueError(f"{images} is not a quantflow export directory (no {MANIFEST}); "
                             f"write one with `python -m quantflow export ... --out {images}`")
        try:
            fields = json.loads((images / MANIFEST).read_text(encoding="utf-8"))["config"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{images / MANIFEST} records no MixPE configuration; re-export "
                             f"the images with `python -m quantflow export`, or give "
                             f"--config") from None
    else:
        try:
            fields = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--config is not valid JSON ({e}); quote it in the shell, e.g. "
                             f"--config '{{\"bits\": 4, \"group\": 64}}'") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config must be a JSON object of MixPEConfig fields, got {text!r}")
    known = [f.name for f in dataclasses.fields(MixPEConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"--config: MixPEConfig has no field {', '.join(map(repr, unknown))}; "
                         f"its fields are {', '.join(known)}")
    return MixPEConfig(**fields)
