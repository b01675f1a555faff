"""Stream testbench of hdl.lut.LUTBlock: act/code/scale sources with random
idle cycles, a result sink with random back-pressure, a bit-exact scoreboard
against golden.lut. The caller (cosim.lut.stimulus) loads the quantflow LUT
images and computes golden's result words, so that a passing run never imports
torch here (~1.7 s of CPU per run).

Job fields: config (LUTConfig fields), mode ({bits, ternary}), data_dir (the
images the words come from), words ({act, code, scale}: each port's words in stream
order), expected (golden's result words), M, N, m_tiles, tiles, macs, seed
(printed), p_idle, p_stall, optional max_cycles, corrupt_expected ([[word,
xor_mask], ...]). The `bits` port is held at mode.bits for the whole run.
Result: as cosim.tb.mixpe_stream's, plus `error` (the block's sticky
mode-error flag, which fails the run).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import cocotb

from golden.lut_config import LUTConfig
from cosim.runner import write_result
from cosim.tb.common import inject_errors, open_job, start_clock
from cosim.tb.streams import Scoreboard, StreamRun, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

#: The source ports, in the order their random generators are drawn.
STREAMS = ("act", "code", "scale")


def _describe(cfg: LUTConfig, m_tiles: int) -> Callable[[int, int, int], str]:
    def describe(i: int, got: int, exp: int) -> str:
        # quantflow imports torch: only a failing run pays for it
        from golden.formats import ACC_BITS
        from quantflow.pack import unpack_words
        tile, s = divmod(i, cfg.slices)
        tn, tm = divmod(tile, m_tiles)
        g = unpack_words([got], ACC_BITS, cfg.rows * cfg.lanes, signed=True)[0]
        e = unpack_words([exp], ACC_BITS, cfg.rows * cfg.lanes, signed=True)[0]
        bad = [(tm * cfg.rows + x // cfg.lanes, tn * cfg.cols + s * cfg.lanes + x % cfg.lanes,
                int(g[x]), int(e[x])) for x in range(len(g)) if g[x] != e[x]]
        return (f"result word {i} (tile n{tn} m{tm}, slice {s}): "
                + ", ".join(f"acc[{m},{n}] got {gv} expected {ev}" for m, n, gv, ev in bad[:4]))
    return describe


@cocotb.test()
async def lut_stream(dut: HierarchyObject) -> None:
    """cocotb test: one LUT block case streamed with the job's idle and back-pressure
    probabilities, every result word compared with golden."""
    job, seed = open_job(dut, "lut_stream")
    cfg = LUTConfig(**job["config"])
    words = {k: job["words"][k] for k in STREAMS}
    expected = inject_errors(list(job["expected"]), job.get("corrupt_expected"))
    sources, sink = stream_ends(dut, words, job, seed)
    sb = Scoreboard(expected, describe=_describe(cfg, int(job["m_tiles"])))
    dut.bits.value = int(job["mode"]["bits"])
    max_cycles = int(job.get("max_cycles") or (20 * len(words["code"]) + 10_000))
    start_clock(dut.clk)
    run = StreamRun(dut, sources, sink)
    await run.reset()
    sim_seconds = await run.run(len(expected), max_cycles, watch=("error",))
    error = run.raised["error"]

    errors = run.check(sb, max_cycles)
    if error:
        errors.append("the block raised `error` (plane count changed inside a tile or "
                      "unsupported bits)")
    res = run.result(sb, errors, macs=job["macs"], tiles=job["tiles"], M=job["M"], N=job["N"],
                     sim_seconds=sim_seconds, seed=seed, error=error)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
