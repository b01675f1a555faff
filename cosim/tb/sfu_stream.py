"""Stream testbench of hdl.sfu.SFU: one simulation runs a list of cases against one
build, the unit keeping its state from one case to the next.

Job fields: config (SFUHWConfig fields), seed (printed; every case's stream
generators are drawn from it), cases: a list of
  {"cmd": [words], "x": [words], "expected": [out words], "ops": [[op, k], ...],
   "p_idle", "p_stall", "model_cycles", "elements", "corrupt_expected": [[word, xor]]}
     (cosim.sfu.case_job: the calls' words and golden.sfu's outputs): the cmd and x
     sources idle with p_idle, the out sink stalls with p_stall; out is compared
     bit for bit; `cycles` runs from the first cmd transfer to the last out transfer
  {"kind": "bad", "cmd": word, "x": [words]}: a cmd the unit must refuse: it raises
     `error`, consumes the cmd (and the given x beats) and emits nothing.
Result: {"passed", "seed", "cases": [per-case dicts], "errors"}.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import cocotb

from cosim.tb.common import inject_errors, open_job
from cosim.tb.streams import Scoreboard, run_case_list, run_phase, start_unit, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

    from golden.sfu_config import SFUHWConfig

INPUTS = ("cmd", "x")


def _describe(case: dict, lanes: int):
    """'out word i' as the op and element it belongs to."""
    spans, n = [], 0
    for op, k in case["ops"]:
        # quant_a8: the TS beat and k/lanes codes; argmax: the index beat
        words = 1 if op == "argmax" else k // lanes + (op == "quant_a8")
        spans.append((n, n + words, op, k))
        n += words

    def describe(i: int, got: int, exp: int) -> str:
        for lo, hi, op, k in spans:
            if lo <= i < hi:
                return (f"out word {i}: {op} (k={k}) beat {i - lo}: got {got:#x} "
                        f"expected {exp:#x}")
        return f"out word {i}: got {got:#x} expected {exp:#x}"
    return describe


async def op_case(dut: HierarchyObject, case: dict, cfg: SFUHWConfig, rng: random.Random) -> dict:
    """One "ops" case: stream its cmd and x words, compare every out word with golden, check the
    cycles and that nothing follows."""
    expected = inject_errors(list(case["expected"]), case.get("corrupt_expected"))
    job = {"p_idle": case.get("p_idle", 0.0), "p_stall": case.get("p_stall", 0.0)}
    sources, sink = stream_ends(dut, {"cmd": case["cmd"], "x": case["x"]}, job,
                                rng.randrange(1 << 62), sink="out")
    sb = Scoreboard(expected, describe=_describe(case, cfg.lanes))
    limit = 40 * (len(case["x"]) + len(expected)) + 200 * len(case["cmd"]) + 1000
    run, secs = await run_phase(dut, sources, sink, len(expected), limit)
    await run_phase(dut, [], sink, len(expected) + 1, 4)     # nothing beyond the last word
    errors = run.check(sb, limit)
    if int(dut.error.value):
        errors.append("`error` raised by a valid cmd")
    return {"kind": "ops", "passed": sb.passed and not errors, "mismatches": sb.mismatches,
            "vectors": sb.compared, "cycles": run.cycles, "model_cycles": case["model_cycles"],
            "sim_cycles": run.cycle + 1, "sim_seconds": secs,
            "stall_cycles": sink.stall_cycles, "ops": case["ops"],
            "elements": case["elements"], "errors": errors}


async def bad_case(dut: HierarchyObject, case: dict) -> dict:
    """One "bad" case: the refused cmd (and its x beats) must be consumed, raise `error` and emit
    nothing."""
    words = {"cmd": [case["cmd"]], "x": list(case.get("x", []))}
    sources, sink = stream_ends(dut, words, {}, 0, sink="out")
    sink.p_stall = 0.0
    await run_phase(dut, sources, sink, 1, 60 + 4 * len(words["x"]))   # an out word: error
    errors = []
    if not all(s.done for s in sources):
        errors.append("the refused cmd (or its x beats) was not consumed")
    if int(dut.error.value) != 1:
        errors.append(f"cmd {case['cmd']:#x} did not raise `error`")
    if sink.words or int(dut.busy.value):
        errors.append(f"cmd {case['cmd']:#x} was not refused (out words or busy)")
    return {"kind": "bad", "passed": not errors, "errors": errors}


@cocotb.test()
async def sfu_stream(dut: HierarchyObject) -> None:
    """cocotb test: every case of the job on one SFU build, the unit keeping its state between
    cases."""
    from golden.sfu_config import SFUHWConfig
    job, seed = open_job(dut, "sfu_stream")
    cfg = SFUHWConfig(**job["config"])
    rng = random.Random(seed)
    await start_unit(dut, INPUTS)
    await run_case_list(dut, "sfu_stream", seed, job["cases"], lambda case: (
        bad_case(dut, case) if case.get("kind") == "bad" else op_case(dut, case, cfg, rng)),
        kind="ops")
