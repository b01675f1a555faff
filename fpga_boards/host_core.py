"""Host code of the accelerator core: greedy generation on any core device.

    program = quantflow.program.compile_program(image, core)      # the whole model
    memory  = quantflow.program.build_memory(image, program)
    device.load(memory)                                            # once
    res = generate(device, program, ids, max_new_tokens=8, on_token=print)

A *core device* is anything with the four calls of `CoreDevice`: the Verilated core
with its memory model (cosim.core_device.VerilatedCore), the Vitis kernel under
cocotb (cosim) or on a card through XRT. Device address 0 is byte 0 of the memory
`build_memory` laid out (a kernel adds its buffer's base address itself).

The sequence is the program's contract (quantflow.program): the token ids of a
block go to the I/O region's `ids`, one start runs the whole model on the block
(registers pos = the block's first position, tokens = its length), ARGMAX leaves
the next token after every position in `next`. A prompt longer than the core's
max_tokens is prefilled in blocks of max_tokens (the KV cache in memory carries
the earlier blocks); each decode step is a block of one token.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Collection, Protocol, Sequence

import numpy as np

from quantflow.program import CoreProgram
from quattro_fs import build_root

if TYPE_CHECKING:
    from golden.core_config import CoreConfig

__all__ = ["GENERATE_DIR", "CoreDevice", "CoreDeviceError", "RunInfo", "GenerateResult", "blocks", "generate",
           "ReferenceDevice"]


#: Where `python -m cosim generate` writes its records (the system model reads them).
GENERATE_DIR = build_root() / "sim" / "generate"


class CoreDevice(Protocol):
    """What the host loop needs of a device holding the core and its memory."""

    def load(self, memory: bytes) -> None:
        """Copy the whole memory image to device addresses [0, len(memory))."""

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes at a device address (the token ids of a block)."""

    def read(self, addr: int, n: int) -> bytes:
        """Read n bytes at a device address (ARGMAX's next tokens)."""

    def run(self, prog: int, pos: int, tokens: int) -> dict:
        """Start the core on the program at `prog` with registers pos / tokens and
        wait until it is done or stops with an error. Returns at least
        {"cycles": int, "error": int, "err_pc": int} (error 0: done)."""


class CoreDeviceError(RuntimeError):
    """The core stopped with an error status (hdl.core.ERRORS names it)."""


@dataclass(frozen=True)
class RunInfo:
    """One start of the core: the block it ran and what the device reported."""
    index: int
    kind: str              # "prefill" | "decode"
    pos: int
    ids: tuple
    next_token: int
    cycles: int
    seconds: float
    report: dict = field(default_factory=dict)


@dataclass
class GenerateResult:
    """A generation on the core: the prompt's ids, the generated ids and every start's RunInfo."""
    prompt_ids: list
    tokens: list           # the generated ids (greedy)
    runs: list             # RunInfo per start
    @property
    def cycles_prefill(self) -> int:
        """Core cycles of the prefill starts together."""
        return sum(r.cycles for r in self.runs if r.kind == "prefill")

    @property
    def cycles_per_token(self) -> list[int]:
        """Core cycles of each decode start (one per generated token after the first)."""
        return [r.cycles for r in self.runs if r.kind == "decode"]


def blocks(n: int, max_tokens: int) -> list[tuple[int, int]]:
    """(first position, length) of the prefill blocks of an n-token prompt."""
    if n < 1:
        raise ValueError("the prompt has no tokens; give at least one")
    return [(p, min(max_tokens, n - p)) for p in range(0, n, max_tokens)]


def _error_name(code: int) -> str:
    from hdl.core import ERRORS
    return ERRORS[code] if 0 <= code < len(ERRORS) else f"code {code}"


def generate(device: CoreDevice, program: CoreProgram, ids: Sequence[int], max_new_tokens: int, *,
             on_token: Callable[[int], None] | None = None,
             on_run: Callable[[RunInfo], None] | None = None,
             stop_ids: Collection[int] = ()) -> GenerateResult:
    """Greedy generation of up to `max_new_tokens` after `ids` on `device`, whose
    memory holds `program`'s image (device.load(build_memory(...)) done by the
    caller). `on_token(id)` is called as each token appears, `on_run(info)` after
    every start (a co-simulation compares the run there); generation stops early
    at a token in `stop_ids` or at the model's context."""
    if program.scope != "model":
        raise ValueError(f"generation needs the whole-model program, got the {program.scope} "
                         "program; compile with compile_program(image, core)")
    ids = [int(i) for i in ids]
    d, core, mm = program.decoder, program.core, program.memory_map
    ctx = d.max_context
    if len(ids) > ctx:
        raise ValueError(f"the prompt has {len(ids)} tokens, the image holds a context of "
                         f"{ctx}; shorten the prompt or recompile with a longer context")
    if any(not 0 <= i < d.vocab for i in ids):
        raise ValueError(f"token ids must lie in [0, {d.vocab})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    runs: list[RunInfo] = []
    out: list[int] = []

    def start(kind: str, pos: int, block: list[int]) -> int:
        device.write(mm.ids, np.asarray(block, dtype="<i4").tobytes())
        t0 = time.perf_counter()
        rep = device.run(mm.program.base, pos, len(block))
        dt = time.perf_counter() - t0
        if rep.get("error", 0):
            pc = int(rep.get("err_pc", 0))
            where = program.labels[pc] if 0 <= pc < len(program.labels) else "outside the program"
            name = rep.get("error_name") or _error_name(rep["error"])
            detail = f": {rep['message']}" if rep.get("message") else ""
            raise CoreDeviceError(
                f"the core stopped with error {name!r} at instruction {pc} ({where}) in the "
                f"{kind} block at position {pos}{detail}")
        nxt = np.frombuffer(device.read(mm.next + 4 * (len(block) - 1), 4), "<i4")[0]
        info = RunInfo(index=len(runs), kind=kind, pos=pos, ids=tuple(block),
                       next_token=int(nxt), cycles=int(rep["cycles"]), seconds=dt, report=rep)
        runs.append(info)
        if on_run:
            on_run(info)
        return int(nxt)

    nxt = None
    for p, n in blocks(len(ids), core.max_tokens):
        nxt = start("prefill", p, ids[p:p + n])
    pos = len(ids)
    while len(out) < max_new_tokens:
        out.append(nxt)
        if on_token:
            on_token(nxt)
        if nxt in stop_ids or len(out) == max_new_tokens or pos >= ctx:
            break
        nxt = start("decode", pos, [nxt])
        pos += 1
    return GenerateResult(prompt_ids=ids, tokens=out, runs=runs)


class ReferenceDevice:
    """The core's executable specification as a device: golden.core.execute runs each
    start on a bytearray memory. Runs the host loop without RTL (and is what the
    co-simulation compares the RTL with, instruction by instruction)."""

    def __init__(self, core: CoreConfig):
        self.core = core
        self.memory = bytearray()

    def load(self, memory: bytes | bytearray) -> None:
        """Copy the whole memory image to addresses [0, len(memory))."""
        self.memory = bytearray(memory)

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes at an address."""
        self.memory[addr:addr + len(data)] = data

    def read(self, addr: int, n: int) -> bytes:
        """Read n bytes at an address."""
        return bytes(self.memory[addr:addr + n])

    def run(self, prog: int, pos: int, tokens: int) -> dict:
        """Execute the program at `prog` with registers pos and tokens (golden.core.execute);
        returns the status report: error 0, or error 1, err_pc and a message."""
        from golden.core import ProgramError, execute
        from golden.core_config import INSTR_BYTES, Registers, bytes_to_words, decode
        words, a = [], prog          # the program: its words up to the first HALT
        while a + INSTR_BYTES <= len(self.memory):
            words.append(bytes_to_words(self.memory[a:a + INSTR_BYTES])[0])
            a += INSTR_BYTES
            try:
                if decode(words[-1]).op == "HALT":
                    break
            except ValueError:
                break                # an unknown opcode: execute names it
        try:
            execute(words, self.memory, self.core, Registers(pos=pos, tokens=tokens))
        except ProgramError as e:
            return {"cycles": 0, "error": 1, "err_pc": e.index if e.index is not None else 0,
                    "error_name": e.field, "message": str(e)}
        return {"cycles": 0, "error": 0, "err_pc": 0}
