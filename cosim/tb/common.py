"""What every testbench shares: the clock, the job and its seed, a stopwatch
and the error injection that proves a scoreboard can fail."""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Iterable

from cosim.runner import read_job

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject, LogicObject

__all__ = ["CLK_PERIOD_NS", "start_clock", "job_seed", "open_job", "Stopwatch",
           "inject_errors"]

#: Clock period of every testbench (any value works for a cycle-based run).
CLK_PERIOD_NS = 2


def start_clock(clk: LogicObject, *, impl: str | None = None) -> None:
    """Start the testbench clock on `clk`. impl="gpi" drives it from cocotb's C
    layer (no Python per edge: the memory-preloaded fast paths use it)."""
    from cocotb.clock import Clock  # noqa: PLC0415 (cocotb exists only inside a simulation)
    kw = {} if impl is None else {"impl": impl}
    Clock(clk, CLK_PERIOD_NS, unit="ns", **kw).start()


def job_seed(job: dict) -> int:
    """The job's seed, or a fresh one (the testbench prints and records it, so
    any run can be repeated)."""
    seed = job.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    return int(seed)


def open_job(dut: HierarchyObject, test: str) -> tuple[dict, int]:
    """The job this run was started with and its seed (job_seed), logged under
    `test` so that the run can be repeated."""
    job = read_job()
    seed = job_seed(job)
    dut._log.info(f"{test} seed={seed} (rerun with job seed={seed})")
    return job, seed


class Stopwatch:
    """Wall-clock seconds since construction (time.perf_counter)."""
    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the stopwatch was made."""
        return time.perf_counter() - self.t0


def inject_errors(expected: list[int], corrupt: Iterable[tuple[int, int]] | None) -> list[int]:
    """Deliberate error injection: XOR `mask` into expected word `index` for
    each [index, mask] of `corrupt` (a job's "corrupt_expected"), in place."""
    for index, mask in corrupt or ():
        expected[int(index)] ^= int(mask)
    return expected
