"""The core's Vitis RTL kernel (fpga_boards.kernel_core) as a simulated card:
`SimCoreDevice` has the calls of fpga_boards.host_core.CoreDevice, so the host
loop runs on the RTL kernel under Verilator exactly as on a card through XRT.

    with SimCoreDevice(core) as dev:                  # core: the kernel's CoreConfig
        dev.load(build_memory(image, program))
        res = fpga_boards.host_core.generate(dev, program, ids, max_new_tokens=4)

The simulation runs in a thread of this process (cosim.runner.run of
cosim/tb/kernel_core.py); its cocotb test serves commands over a Unix socket and
blocks between them, so simulation time stands still while the host code runs.
Memory is cocotbext-axi's AxiRam behind m_axi_gmem; `load`, `write` and `read`
reach it directly and in binary, as a buffer object's sync does; `run` plays
XRT's register protocol on s_axi_control (arguments, ap_start, the interrupt or
polling for ap_done, the status registers). Device address 0 of the protocol is
the buffer's base `base` (4 KiB aligned, like XRT's), the kernel's `mem`.

`golden_tokens` is the integer model's greedy generation (the expectation),
`golden_runs` its LM-head accumulators per start of the host loop, and
`checked_generation` compares a device's generation with both; `sim_items` is
make sim's record of one whole generation through the kernel, `python -m
cosim.kernel_core` runs it alone.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fpga_boards.kernel_core import (NAME, OFFSETS, PC_NONE, STATUS_BYTES, STATUS_WORDS,
                                     core_kernel, parse_status, register_writes)

from cosim import runner
from cosim.tb.frames import recv_message, send_message

if TYPE_CHECKING:
    from fpga_boards.host_core import CoreDevice
    from golden.core_config import CoreConfig
    from quantflow.program import CompiledImage, CoreProgram

__all__ = ["BLOCK", "SIM_BASE", "SIM_STATUS", "SimCoreDevice", "kernel_build", "golden_tokens",
           "golden_runs", "checked_generation", "random_generation", "sim_items", "main"]

BLOCK = "kernel_core"
TB = "cosim.tb.kernel_core"
#: The device address of the memory image's byte 0 (the buffer object's address).
SIM_BASE = 0x4_0000_0000
#: The device address of the status record (a second, small buffer object).
SIM_STATUS = 0x3_0000_0000
#: The read-only status registers the host reads after every run.
STATUS = STATUS_WORDS + ("state",)


def kernel_build(config: CoreConfig, *, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    """The Verilated kernel of `config` (cached by Verilog hash under build/cosim;
    the Verilog itself once per process, fpga_boards.kernel_core)."""
    return runner.build(core_kernel(config).verilog(), NAME, sim=sim, waves=waves)


class SimCoreDevice:
    """The core kernel under Verilator as a CoreDevice (module docstring).

    wait: "irq" (the interrupt) or "poll" (read ap_done every `poll` cycles);
    p_stall: probability of a pause per cycle on every AXI channel (memory and
    control); mem_bytes: the buffer's size (writes and reads beyond it are refused,
    as a buffer object's are; None: no limit); record: give the kernel a status
    record address and check the record it writes against the registers;
    max_cycles: a run that has not finished by then raises TimeoutError naming the
    core's state; timeout_s: wall seconds one command may take; run_dir: where the
    simulation runs (default: a new directory under the build's runs/)."""

    def __init__(self, config: CoreConfig, *, wait: str = "irq", p_stall: float = 0.0,
                 seed: int = 1, sim: str | None = None, base: int = SIM_BASE,
                 mem_bytes: int | None = None, record: bool = True, poll: int = 256,
                 max_cycles: int = 20_000_000, timeout_s: float = 3600,
                 run_dir: Path | str | None = None):
        from hdl.core import check_rtl_config
        if wait not in ("irq", "poll"):
            raise ValueError(f"wait must be 'irq' or 'poll', got {wait!r}")
        if not 0.0 <= p_stall < 1.0:
            raise ValueError(f"p_stall must be in [0, 1), got {p_stall!r}")
        self.config = check_rtl_config(config)
        self.wait_mode, self.p_stall, self.seed, self.sim = wait, p_stall, seed, sim
        self.base, self.mem_bytes, self.record = base, mem_bytes, record
        self.poll, self.max_cycles, self.timeout_s = poll, max_cycles, timeout_s
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.runs: list[dict] = []
        self.result: dict | None = None
        self._sock = None
        self._thread = None
        self._tmp = None
        self._build = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def build(self) -> runner.Build:
        """The Verilated kernel, built (or taken from the cache) on first use."""
        if self._build is None:
            self._build = kernel_build(self.config, sim=self.sim)
        return self._build

    def start(self) -> "SimCoreDevice":
        """Build (cached) and start the simulation; the first call of any command
        does it too."""
        if self._sock is not None:
            return self
        b = self.build()
        self._tmp = tempfile.mkdtemp(prefix="qkc-")        # a short path: AF_UNIX limit
        path = os.path.join(self._tmp, "s")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        if self.run_dir is None:
            runs = b.directory.parent / "runs"
            runs.mkdir(parents=True, exist_ok=True)
            self.run_dir = Path(tempfile.mkdtemp(prefix=f"{b.toplevel}-", dir=runs))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        job = {"socket": path, "p_stall": self.p_stall, "seed": self.seed, "poll": self.poll}

        def simulate():
            try:
                self.result = runner.run(b, test_module=TB, job=job, run_dir=self.run_dir)
            except BaseException as e:        # reported by the next command
                self._error = e

        self._thread = threading.Thread(target=simulate, name="SimCoreDevice", daemon=True)
        self._thread.start()
        srv.settimeout(0.5)
        t0 = time.monotonic()
        try:
            while True:
                try:
                    self._sock, _ = srv.accept()
                    break
                except socket.timeout:
                    self._check_alive()
                    if time.monotonic() - t0 > 300:
                        raise runner.CosimError(f"the simulation did not connect within 300 s; "
                                                f"log {self.run_dir / 'sim.log'}") from None
        finally:
            srv.close()
        self._sock.settimeout(None)
        return self

    def close(self) -> dict | None:
        """End the simulation; returns the testbench's result (commands served,
        simulated cycles, seconds)."""
        if self._sock is not None:
            try:
                send_message(self._sock, {"op": "stop"})
            except OSError:
                pass
            self._sock.close()
            self._sock = None
            self._thread.join(timeout=60)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _check_alive(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            log = self.run_dir / "sim.log"
            tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
            why = f"{type(self._error).__name__}: {self._error}" if self._error else "it exited"
            raise runner.CosimError(f"the simulated kernel stopped ({why}); log {log}:\n{tail}")

    def _call(self, header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        self.start()
        send_message(self._sock, header, payload)
        t0 = time.monotonic()
        # wait in steps, so that a dead simulation is reported instead of hanging
        while True:
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if ready:
                break
            self._check_alive()
            if time.monotonic() - t0 > self.timeout_s:
                raise TimeoutError(f"the simulated kernel did not answer {header['op']!r} "
                                   f"within {self.timeout_s:.0f} s")
        resp, data = recv_message(self._sock)
        if resp is None:
            self._check_alive()
            raise runner.CosimError("the simulated kernel closed the connection")
        if not resp.get("ok"):
            raise runner.CosimError(f"simulated kernel, command {header['op']!r}: "
                                    f"{resp.get('error')}")
        return resp, data

    # ------------------------------------------------------------------ CoreDevice
    def _addr(self, addr: int, n: int) -> int:
        if addr < 0 or n < 0:
            raise ValueError(f"device address {addr} / length {n} must be >= 0")
        if self.mem_bytes is not None and addr + n > self.mem_bytes:
            raise ValueError(f"bytes [{addr}, {addr + n}) lie beyond the {self.mem_bytes}-byte "
                             f"buffer; allocate the device with mem_bytes >= the memory image")
        return self.base + addr

    def load(self, memory: bytes) -> None:
        """The whole memory image at device addresses [0, len(memory))."""
        self.write(0, bytes(memory))

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes at a device address of the simulated kernel's memory."""
        self._call({"op": "write", "addr": self._addr(addr, len(data))}, bytes(data))

    def read(self, addr: int, n: int) -> bytes:
        """Read n bytes at a device address of the simulated kernel's memory."""
        _, data = self._call({"op": "read", "addr": self._addr(addr, n), "n": int(n)})
        return data

    def run(self, prog: int, pos: int, tokens: int) -> dict:
        """One start of the kernel with mem = the image's base (CoreDevice.run)."""
        return self.run_registers(mem=self.base, prog=prog, pos=pos, tokens=tokens)

    # ------------------------------------------------------------------ registers
    def run_registers(self, *, mem: int, prog: int, pos: int, tokens: int) -> dict:
        """A start with every argument given (a test's unaligned `mem`): XRT's
        register writes, ap_start, the wait, the status registers and (with
        `record`) the status record, which must equal them. Returns {"cycles",
        "error", "err_pc", "error_name", "runs", "state", "refused_by_kernel",
        "sim_cycles", "seconds"}."""
        from hdl.core import ERRORS, STATES
        t0 = time.perf_counter()
        status = SIM_STATUS if self.record else 0
        resp, _ = self._call({
            "op": "run",
            "regs": register_writes(mem=mem, prog=prog, pos=pos, tokens=tokens, status=status),
            "wait": self.wait_mode, "max_cycles": self.max_cycles,
            "status": {name: OFFSETS[name] for name in STATUS},
            "record": [status, STATUS_BYTES] if status else None})
        st = resp["status"]
        state = STATES[st["state"]] if st["state"] < len(STATES) else str(st["state"])
        if resp["timeout"]:
            raise TimeoutError(f"the kernel did not finish within {self.max_cycles} cycles "
                               f"(pos {pos}, tokens {tokens}); the core waits in state "
                               f"{state}: raise max_cycles for a longer program")
        if resp["notes"]:
            raise runner.CosimError("the kernel broke the ap_ctrl_hs protocol: "
                                    + "; ".join(resp["notes"]))
        if status:
            rec = parse_status(bytes.fromhex(resp["record"]))
            regs = {k: st[k] for k in STATUS_WORDS}
            if rec != regs:
                raise runner.CosimError(f"the status record {rec} differs from the status "
                                        f"registers {regs}")
        err = st["error"]
        out = {"cycles": st["cycles"], "error": err, "err_pc": st["err_pc"],
               "error_name": ERRORS[err] if err < len(ERRORS) else f"code {err}",
               "runs": st["runs"], "refused_by_kernel": st["err_pc"] == PC_NONE,
               "state": state, "sim_cycles": resp["waited"],
               "seconds": time.perf_counter() - t0}
        self.runs.append(out)
        return out

    def reg_read(self, offset: int) -> int:
        """One AXI4-Lite read of s_axi_control (clear-on-read bits included)."""
        resp, _ = self._call({"op": "reg_read", "offset": int(offset)})
        return int(resp["value"])

    def reg_write(self, offset: int, value: int) -> None:
        """Write a 32-bit control register at byte offset `offset` over AXI4-Lite."""
        self._call({"op": "reg_write", "offset": int(offset), "value": int(value)})

    def idle(self, cycles: int) -> None:
        """Let `cycles` clock cycles pass with nothing driven."""
        self._call({"op": "idle", "cycles": int(cycles)})


# --------------------------------------------------------------------------- golden

def golden_tokens(image: CompiledImage, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy generation on the integer model (golden.decoder.IntegerDecoder), as
    quantflow.generate's integer engine computes it: the whole prompt in one step,
    then one step per new token."""
    import torch
    from golden.decoder import IntegerDecoder
    dec = IntegerDecoder(image.config, image.tensors)
    state = dec.new_state()
    r = dec.step(torch.tensor(list(ids)), state)
    out = []
    while len(out) < max_new_tokens:
        nxt = int(r.next_tokens()[-1])
        out.append(nxt)
        if len(out) == max_new_tokens or state.pos >= dec.config.max_context:
            break
        r = dec.step(torch.tensor([nxt]), state)
    return out


def golden_runs(image: CompiledImage, ids: Sequence[int], max_new_tokens: int,
                max_tokens: int) -> list[dict]:
    """The integer model over the blocks fpga_boards.host_core.generate starts:
    prefill blocks of max_tokens, then one decode step per new token but the
    last. Per start: kind, pos, the ids and the LM head's accumulators acc
    [T, vocab] (what LOGITS leaves in the I/O region)."""
    import torch
    from fpga_boards.host_core import blocks
    from golden.decoder import IntegerDecoder
    ids = [int(i) for i in ids]
    dec = IntegerDecoder(image.config, image.tensors)
    state = dec.new_state()
    runs = []

    def step(kind, pos, block):
        r = dec.step(torch.tensor(block), state)
        runs.append({"kind": kind, "pos": pos, "ids": list(block), "acc": r.acc,
                     "next": int(r.next_tokens()[-1])})

    for p, n in blocks(len(ids), max_tokens):
        step("prefill", p, ids[p:p + n])
    pos, made = len(ids), 1
    while made < max_new_tokens and pos < dec.config.max_context:
        step("decode", pos, [runs[-1]["next"]])
        pos, made = pos + 1, made + 1
    return runs


def checked_generation(dev: CoreDevice, image: CompiledImage, program: CoreProgram,
                       ids: Sequence[int], max_new_tokens: int) -> dict:
    """fpga_boards.host_core.generate on `dev`, every start's LM-head accumulators
    (read back from the I/O region) compared with golden_runs, the tokens with
    golden_tokens. Returns {tokens, expected, mismatches, first_mismatch, result}."""
    import numpy as np
    from fpga_boards.host_core import generate
    mm, vocab = program.memory_map, program.decoder.vocab
    expected_runs = golden_runs(image, ids, max_new_tokens, program.core.max_tokens)
    got_acc = []

    def on_run(info):
        T = len(info.ids)
        raw = dev.read(mm.logits, 4 * T * vocab)
        got_acc.append(np.frombuffer(raw, "<i4").reshape(T, vocab).astype(np.int64))

    res = generate(dev, program, ids, max_new_tokens, on_run=on_run)
    expected = golden_tokens(image, ids, max_new_tokens)
    first, bad = None, 0
    if len(got_acc) != len(expected_runs):
        bad, first = 1, (f"{len(got_acc)} starts, the integer model's blocks make "
                         f"{len(expected_runs)}")
    for i, (g, e, info) in enumerate(zip(got_acc, expected_runs, res.runs)):
        if (info.kind, info.pos, list(info.ids)) != (e["kind"], e["pos"], e["ids"]):
            bad += 1
            first = first or f"start {i}: ran {info.kind}@{info.pos}, golden {e['kind']}@{e['pos']}"
            continue
        diff = np.argwhere(g != e["acc"].numpy())
        bad += len(diff)
        if len(diff) and first is None:
            t, j = (int(x) for x in diff[0])
            first = (f"start {i} ({info.kind}@{info.pos}): logits acc[{t}, {j}] = {g[t, j]}, "
                     f"golden {int(e['acc'][t, j])}")
    tok_bad = sum(a != b for a, b in zip(res.tokens, expected)) + abs(len(res.tokens)
                                                                       - len(expected))
    if tok_bad and first is None:
        first = f"tokens {res.tokens}, golden {expected}"
    return {"tokens": list(res.tokens), "expected": expected, "result": res,
            "mismatches": bad + tok_bad, "first_mismatch": first,
            "acc_elements": sum(int(a.size) for a in got_acc)}


#: make sim's generation: a random Llama like cosim.core's first case (GQA 2,
#: head_dim 32, Hadamard K/Q and the 8-bit recent window, vocabulary 400; this seed
#: generates different tokens, not one repeated), a prompt longer than the core's
#: max_tokens (two prefill blocks), then greedy tokens.
GEN_SHAPE, GEN_SCHEME, GEN_VOCAB = (4, 2, 128, 192), "w4a8kv4-g64", 400
GEN_PROMPT, GEN_NEW, GEN_SEED = 10, 4, 12


def random_generation(workdir: Path | str, *, shape: tuple[int, int, int, int] = GEN_SHAPE,
                      scheme: str = GEN_SCHEME, vocab: int = GEN_VOCAB, prompt: int = GEN_PROMPT,
                      seed: int = GEN_SEED
                      ) -> tuple[CompiledImage, CoreConfig, CoreProgram, bytearray, list[int]]:
    """(image, core, program, memory, prompt ids) of a seeded random Llama: the
    whole-model program for the co-simulated core (quantflow.program.sim_core_for)."""
    from quantflow.program import build_memory, compile_program, sim_core_for

    from .core import random_model_image
    img, ids = random_model_image(shape, seed=seed, workdir=workdir, scheme=scheme,
                                  vocab=vocab)
    core = sim_core_for(img.config)
    prog = compile_program(img, core)
    return img, core, prog, build_memory(img, prog), ids[0, :prompt].tolist()


def _generation_item(sim: str, wait: str, p_stall: float) -> dict:
    from cosim.report import make_record
    with tempfile.TemporaryDirectory(prefix="quattro-kcore-") as tmp:
        img, core, prog, mem, ids = random_generation(tmp)
        dev = SimCoreDevice(core, wait=wait, p_stall=p_stall, seed=GEN_SEED, sim=sim,
                            mem_bytes=len(mem))
        try:
            dev.load(mem)
            chk = checked_generation(dev, img, prog, ids, GEN_NEW)
        finally:
            result = dev.close() or {}
    h, kv, hid, inter = GEN_SHAPE
    runs = chk["result"].runs
    return make_record(
        block=BLOCK, test=f"generate-h{h}kv{kv}-d{hid}-{GEN_SCHEME}-{wait}-p{p_stall}",
        config=core.as_dict(), passed=chk["mismatches"] == 0, mismatches=chk["mismatches"],
        vectors=chk["acc_elements"] + len(chk["expected"]),
        cycles=sum(r.cycles for r in runs), macs=0, peak_macs_per_cycle=0,
        sim_seconds=result.get("sim_seconds", 0.0), sim_cycles=result.get("sim_cycles"),
        path="kernel", wait=wait, p_stall=p_stall, tokens=chk["tokens"],
        expected_tokens=chk["expected"], prompt_ids=list(ids),
        first_mismatch=chk["first_mismatch"],
        runs=[{"kind": r.kind, "pos": r.pos, "tokens": len(r.ids), "cycles": r.cycles,
               "sim_cycles": r.report.get("sim_cycles")} for r in runs],
        simulator=result.get("sim"))


def sim_items(*, sim: str) -> list:
    """make sim: one whole greedy generation (two prefill blocks, decode steps)
    through the kernel's AXI interfaces under 20 % random back-pressure on every
    channel, completion by interrupt; every start's LM-head accumulators and the
    tokens must equal the integer model's."""
    from .blocks import SimItem
    h, kv, hid, inter = GEN_SHAPE
    wait, p = "irq", 0.2
    return [SimItem(block=BLOCK, name=f"kernel-core-generate-h{h}kv{kv}-d{hid}", path="kernel",
                    config={"shape": list(GEN_SHAPE), "scheme": GEN_SCHEME, "wait": wait,
                            "p_stall": p},
                    macs=0, peak_macs_per_cycle=0,
                    run=lambda: _generation_item(sim, wait, p))]


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim.kernel_core`: greedy generation of a seeded random Llama
    through the simulated kernel, compared with the integer model."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m cosim.kernel_core", description=main.__doc__)
    ap.add_argument("--wait", choices=("irq", "poll"), default="irq")
    ap.add_argument("--p-stall", type=float, default=0.0)
    ap.add_argument("--sim", default=None)
    args = ap.parse_args(argv)
    rec = _generation_item(args.sim, args.wait, args.p_stall)
    print(json.dumps({k: rec[k] for k in ("passed", "tokens", "expected_tokens", "mismatches",
                                          "first_mismatch", "cycles", "runs", "sim_seconds")},
                     indent=1))
    return 0 if rec["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
