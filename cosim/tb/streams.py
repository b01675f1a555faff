"""Cycle-stepped stream drivers, monitor and scoreboard (cocotbext-axi style).

Every driver/monitor is an object with two hooks that one clock loop calls each
cycle: `drive()` right after the rising edge (writes this cycle's valid /
payload / ready) and `sample(cycle)` in the ReadOnly phase (sees settled
values; valid & ready there means the beat transfers at the *next* edge).
One coroutine stepping all of them costs two scheduler wake-ups per cycle
instead of two per stream, which is what makes Python-driven streams usable.
StreamRun is that coroutine, with the reset before it and the checks and result
fields every stream testbench reports after it; `run_phase` and `run_case_list`
serve the units whose one simulation runs a list of cases, phase after phase.

Stream rules followed (amaranth.lib.stream, AXI-Stream alike): a source keeps
`valid` high and the payload stable until the beat is taken; idle cycles are
only inserted between beats. The sink may drop `ready` in any cycle.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

from cocotb.triggers import ReadOnly, RisingEdge

from cosim.runner import write_result
from cosim.tb.common import Stopwatch, start_clock

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject, LogicObject

#: Reset length of every testbench (stream and preloaded-system alike).
RESET_CYCLES = 3


def _handle(dut, name: str):
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(
            f"the toplevel has no port {name!r}; the generated Verilog must flatten "
            f"stream ports as <name>__payload/__valid/__ready") from None


class _StreamEnd:
    """The toplevel's ports of stream `name` and the generator of its random
    idle / stall cycles."""

    def __init__(self, dut, name: str, rng: random.Random | None):
        self.name = name
        self.valid = _handle(dut, f"{name}__valid")
        self.ready = _handle(dut, f"{name}__ready")
        self.payload = _handle(dut, f"{name}__payload")
        self.rng = rng or random.Random(0)


class StreamSource(_StreamEnd):
    """Drives one stream with a list of words (ints, element 0 in the LSBs)."""

    def __init__(self, dut: HierarchyObject, name: str, words: list[int], *, p_idle: float = 0.0,
                 rng: random.Random | None = None):
        super().__init__(dut, name, rng)
        self.words = words
        self.p_idle = p_idle
        self.idx = 0              # next word to offer
        self.offering = False     # valid driven high this cycle
        self.first_cycle = None   # cycle whose ReadOnly saw the first transfer
        self.last_cycle = None
        self.idle_cycles = 0
        self.valid.value = 0

    @property
    def done(self) -> bool:
        """Whether every word has been taken."""
        return self.idx >= len(self.words)

    def drive(self) -> None:
        """Set valid and payload for this cycle: hold an untaken beat, or offer the next word
        unless idling (p_idle)."""
        if self.offering:          # beat not yet taken: hold it
            return
        if self.idx < len(self.words) and not (self.p_idle and self.rng.random() < self.p_idle):
            self.payload.value = self.words[self.idx]
            self.valid.value = 1
            self.offering = True
        else:
            if self.idx < len(self.words):
                self.idle_cycles += 1
            self.valid.value = 0

    def sample(self, cycle: int) -> None:
        """Note whether the offered beat was taken in cycle `cycle` (valid and ready)."""
        if self.offering and self.ready.value:
            if self.first_cycle is None:
                self.first_cycle = cycle
            self.last_cycle = cycle
            self.idx += 1
            self.offering = False


class StreamSink(_StreamEnd):
    """Takes words from one stream with random back-pressure."""

    def __init__(self, dut: HierarchyObject, name: str, *, p_stall: float = 0.0,
                 rng: random.Random | None = None):
        super().__init__(dut, name, rng)
        self.p_stall = p_stall
        self.words: list[int] = []
        self.cycles: list[int] = []
        self.ready_now = False
        self.stall_cycles = 0       # valid high while ready low (a real stall)
        self.ready_low_cycles = 0   # back-pressure applied, data or not
        self.ready.value = 0

    def drive(self) -> None:
        """Set ready for this cycle: low with probability p_stall."""
        r = not (self.p_stall and self.rng.random() < self.p_stall)
        self.ready_low_cycles += not r
        if r != self.ready_now:
            self.ready.value = int(r)
            self.ready_now = r

    def sample(self, cycle: int) -> None:
        """Collect the payload of a beat transferred in cycle `cycle`."""
        if self.valid.value:
            if self.ready_now:
                self.words.append(self.payload.value.to_unsigned())
                self.cycles.append(cycle)
            else:
                self.stall_cycles += 1


class Scoreboard:
    """Compares received words with expected ones bit for bit."""

    def __init__(self, expected: list[int], *,
                 describe: Callable[[int, int, int], str] | None = None, max_report: int = 8):
        self.expected = expected
        self.describe = describe or (lambda i, got, exp: f"word {i}: got {got:#x}, "
                                                         f"expected {exp:#x}")
        self.max_report = max_report
        self.mismatches = 0
        self.compared = 0
        self.report: list[str] = []

    def check(self, got: list[int]) -> None:
        """Compare `got` with the expected words, counting and reporting (up to max_report) each
        mismatch."""
        for i, (g, e) in enumerate(zip(got, self.expected)):
            self.compared += 1
            if g != e:
                self.mismatches += 1
                if len(self.report) < self.max_report:
                    self.report.append(self.describe(i, g, e))
        if len(got) != len(self.expected):
            self.report.append(f"received {len(got)} words, expected {len(self.expected)}")

    @property
    def passed(self) -> bool:
        """Whether every expected word was received and matched."""
        return (self.mismatches == 0 and self.compared == len(self.expected)
                and self.compared > 0)


def stream_rngs(seed: int, n: int) -> list[random.Random]:
    """n generators drawn from `seed`, one per stream, so that changing one
    stream's probability leaves the others' patterns unchanged (reproducibility
    when narrowing a failure down)."""
    rng = random.Random(seed)
    return [random.Random(rng.randrange(1 << 62)) for _ in range(n)]


def stream_ends(dut: HierarchyObject, words: dict[str, list[int]], job: dict, seed: int, *,
                sink: str = "result") -> tuple[list[StreamSource], StreamSink]:
    """A StreamSource per input stream of `words` (name -> words, in that order)
    idling with the job's p_idle, and the StreamSink of `sink` stalling with its
    p_stall (0 when the job has none); one generator each, drawn from `seed`
    (stream_rngs) in that order."""
    rngs = stream_rngs(seed, len(words) + 1)
    p_idle, p_stall = float(job.get("p_idle", 0.0)), float(job.get("p_stall", 0.0))
    sources = [StreamSource(dut, name, w, p_idle=p_idle, rng=rng)
               for (name, w), rng in zip(words.items(), rngs)]
    return sources, StreamSink(dut, sink, p_stall=p_stall, rng=rngs[-1])


async def step_cycle(clk: LogicObject, parts: Iterable[StreamSource | StreamSink],
                     cycle: int) -> None:
    """One clock cycle of stream drivers/monitors: drive after the edge, sample
    the settled values (ReadOnly) as cycle `cycle`."""
    await RisingEdge(clk)
    for p in parts:
        p.drive()
    await ReadOnly()
    for p in parts:
        p.sample(cycle)


class StreamRun:
    """The clock loop of a stream testbench: `sources` and the result `sink`
    stepped once a cycle, after a reset; `cycle` counts every clock cycle from
    the first reset cycle on, `raised` holds the watched flags (run)."""

    def __init__(self, dut: HierarchyObject, sources: list[StreamSource], sink: StreamSink):
        self.dut = dut
        self.sources = sources
        self.sink = sink
        self.cycle = 0
        self.raised: dict[str, int] = {}

    async def reset(self, cycles: int = RESET_CYCLES) -> None:
        """Hold rst high for `cycles` clock cycles, then release it."""
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
            self.cycle += 1
        self.dut.rst.value = 0

    async def run(self, want: int, max_cycles: int, *, watch: tuple[str, ...] = ()) -> float:
        """Step until the sink holds `want` words or `max_cycles` is reached, then
        let the edge that transfers the last sampled beats pass. `watch`: output
        flags whose values every cycle are ORed into raised[name]. Returns the
        wall seconds."""
        clk = self.dut.clk
        parts = self.sources + [self.sink]
        flags = [(name, getattr(self.dut, name)) for name in watch]
        self.raised = {name: 0 for name in watch}
        sw = Stopwatch()
        while len(self.sink.words) < want and self.cycle < max_cycles:
            self.cycle += 1
            await step_cycle(clk, parts, self.cycle)
            for name, flag in flags:
                self.raised[name] |= int(flag.value)
        await RisingEdge(clk)
        return sw.seconds()

    @property
    def cycles(self) -> int:
        """First accepted input beat .. last result beat, inclusive (0 when
        either never happened)."""
        firsts = [s.first_cycle for s in self.sources if s.first_cycle is not None]
        return (self.sink.cycles[-1] - min(firsts) + 1) if (firsts and self.sink.cycles) else 0

    def check(self, sb: Scoreboard, max_cycles: int) -> list[str]:
        """Score the received words: the scoreboard's report, input beats never
        accepted, and a timeout."""
        sb.check(self.sink.words)
        errors = list(sb.report)
        unconsumed = {s.name: len(s.words) - s.idx for s in self.sources if not s.done}
        if unconsumed:
            errors.append(f"input beats never accepted: {unconsumed}")
        if self.cycle >= max_cycles:
            errors.append(f"timed out after {max_cycles} cycles with "
                          f"{len(self.sink.words)}/{len(sb.expected)} result words")
        return errors

    def result(self, sb: Scoreboard, errors: list[str], **fields: object) -> dict:
        """The result (cosim.runner.write_result) fields every stream run reports,
        plus the testbench's own `fields` (seed, sim/load seconds, macs, ...)."""
        return {"test": "stream", "passed": sb.passed and not errors,
                "mismatches": sb.mismatches, "vectors": sb.compared,
                "expected_vectors": len(sb.expected), "cycles": self.cycles,
                "sim_cycles": self.cycle, "stall_cycles": self.sink.stall_cycles,
                "ready_low_cycles": self.sink.ready_low_cycles,
                "idle_cycles": {s.name: s.idle_cycles for s in self.sources},
                **fields, "errors": errors}


async def run_phase(dut: HierarchyObject, sources: list[StreamSource], sink: StreamSink, want: int,
                    limit: int) -> tuple[StreamRun, float]:
    """One phase of a unit's case: step `sources` and `sink` until the sink holds
    `want` words or `limit` cycles have passed, then idle them (StreamRun.run has
    let the edge that transfers the last sampled beats pass, so the next phase can
    drive). Returns the run and its wall seconds."""
    run = StreamRun(dut, sources, sink)
    seconds = await run.run(want, limit)
    for s in sources:
        s.valid.value = 0
        s.offering = False
    sink.ready.value = 0
    sink.ready_now = False
    return run, seconds


async def start_unit(dut: HierarchyObject, inputs: Iterable[str], low: Iterable[str] = ()) -> None:
    """The clock started, the `inputs` streams' valid, the out stream's ready and
    the `low` ports held low through the reset."""
    start_clock(dut.clk)
    for n in inputs:
        getattr(dut, f"{n}__valid").value = 0
    dut.out__ready.value = 0
    for n in low:
        getattr(dut, n).value = 0
    await StreamRun(dut, [], None).reset()


async def run_case_list(dut: HierarchyObject, test: str, seed: int, cases: list[dict],
                        run_case: Callable[[dict], Awaitable[dict]], *,
                        kind: str | None = None) -> None:
    """`await run_case(case)` for each case in order, the unit keeping its state; a
    case that raises fails alone (its kind, or `kind` when it names none) and the
    run goes on. Writes the result {"test", "passed", "seed", "cases", "errors"}
    and fails the test unless every case passed."""
    results, errors = [], []
    for i, case in enumerate(cases):
        try:
            r = await run_case(case)
        except Exception as e:  # noqa: BLE001 - reported per case, the run continues
            r = {"kind": case.get("kind", kind), "passed": False,
                 "errors": [f"{type(e).__name__}: {e}"]}
            await RisingEdge(dut.clk)
        results.append(r)
        errors += [f"case {i}: {e}" for e in r["errors"]]
    passed = all(r["passed"] for r in results) and bool(results)
    write_result({"test": test, "passed": passed, "seed": seed, "cases": results,
                  "errors": errors})
    assert passed, "; ".join(errors[:6]) or "no cases"
