"""Stream testbench of hdl.lut.LUTBlock: act/code/scale sources with random
idle cycles, a result sink with random back-pressure, a bit-exact scoreboard
against golden.lut. Inputs are the quantflow LUT images named by the job.

Job fields: config (LUTConfig fields), mode ({bits, ternary}), data_dir, seed
(printed), p_idle, p_stall, optional max_cycles, corrupt_expected
([[word, xor_mask], ...]). The `bits` port is held at mode.bits for the whole
run. Result: as cosim.tb.mixpe_stream's, plus `error` (the block's sticky
mode-error flag, which fails the run).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb

from cosim.runner import write_result
from cosim.tb.common import Stopwatch, inject_errors, open_job, start_clock
from cosim.tb.streams import Scoreboard, StreamRun, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

    from quantflow.lut import LUTImages


def load_lut_case(job: dict) -> tuple[LUTImages, list[int]]:
    """(images, expected result words from golden.lut on the decoded operands)."""
    from golden.lut import lut_acc
    from golden.lut_config import LUTConfig, LUTMode
    from quantflow.lut import load_lut, pack_lut_result_words

    config = LUTConfig(**job["config"])
    mode = LUTMode(**job["mode"])
    img = load_lut(job["data_dir"], config, mode)
    expected = pack_lut_result_words(lut_acc(img.a, img.q, img.s2, img.z, config, mode), config)
    inject_errors(expected, job.get("corrupt_expected"))
    return img, expected


def _describe(img):
    from golden.formats import ACC_BITS
    from quantflow.pack import unpack_words
    cfg = img.config

    def describe(i: int, got: int, exp: int) -> str:
        tile, s = divmod(i, cfg.slices)
        tn, tm = divmod(tile, img.m_tiles)
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
    sw = Stopwatch()
    img, expected = load_lut_case(job)
    load_seconds = sw.seconds()
    cfg, mode = img.config, img.mode
    per_tile = cfg.beats_per_tile(mode)
    order = [(tn, tm) for tn in range(img.n_tiles) for tm in range(img.m_tiles)]
    act = [w for tn, tm in order for w in img.act_words[tm * cfg.chunks:(tm + 1) * cfg.chunks]]
    code = [w for tn, tm in order for w in img.code_words[tn * per_tile:(tn + 1) * per_tile]]
    gs = cfg.groups * cfg.slices
    scale = [w for tn, tm in order for w in img.scale_words[tn * gs:(tn + 1) * gs]]
    sources, sink = stream_ends(dut, {"act": act, "code": code, "scale": scale}, job, seed)
    sb = Scoreboard(expected, describe=_describe(img))
    dut.bits.value = mode.bits
    max_cycles = int(job.get("max_cycles") or (20 * len(code) + 10_000))
    start_clock(dut.clk)
    run = StreamRun(dut, sources, sink)
    await run.reset()
    sim_seconds = await run.run(len(expected), max_cycles, watch=("error",))
    error = run.raised["error"]

    errors = run.check(sb, max_cycles)
    if error:
        errors.append("the block raised `error` (plane count changed inside a tile or "
                      "unsupported bits)")
    res = run.result(sb, errors, macs=img.macs, tiles=len(order), M=img.M, N=img.N,
                     sim_seconds=sim_seconds, seed=seed, load_seconds=load_seconds,
                     error=error)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
