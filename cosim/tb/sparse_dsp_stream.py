"""Stream testbench of hdl.sparse_dsp.SparseDSP: ctrl/act/weight/scale sources
with random idle cycles, a result sink with random back-pressure, a bit-exact
scoreboard against golden.sparse_dsp. The caller (cosim.sparse_dsp.stimulus)
loads the image directories and their golden result words, so that the run
never imports torch here (~1.7 s of CPU per run).

Job fields: config (SparseDSPConfig fields), data_dirs (image directories, run
back to back in one stream, so tiles of different patterns/modes/spans follow
each other: the run-time mode changes per tile), words ({ctrl, act, weight,
scale}: every directory's words concatenated), expected (golden's result
words), tiles, macs (dense-equivalent), kept_macs, seed (printed), p_idle,
p_stall, optional max_cycles, corrupt_expected ([[word, xor_mask], ...]).
Result: passed, mismatches, vectors, cycles (first accepted beat .. last result
beat, inclusive), macs (dense-equivalent), kept_macs, tiles, sim_cycles,
sim_seconds, stall/idle counts, errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb

from cosim.runner import write_result
from cosim.tb.common import inject_errors, open_job, start_clock
from cosim.tb.streams import Scoreboard, StreamRun, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

#: The source ports, in the order their random generators are drawn.
STREAMS = ("ctrl", "act", "weight", "scale")


@cocotb.test()
async def sparse_dsp_stream(dut: HierarchyObject) -> None:
    """cocotb test: the job's tiles streamed through the sparse DSP block, every result word
    compared with golden."""
    job, seed = open_job(dut, "sparse_dsp_stream")
    words = {k: job["words"].get(k, []) for k in STREAMS}  # W8A8 images have no scale words
    expected = inject_errors(list(job["expected"]), job.get("corrupt_expected"))
    beats = len(words["weight"])
    max_cycles = int(job.get("max_cycles") or (20 * beats + 50 * len(expected) + 10_000))
    sources, sink = stream_ends(dut, words, job, seed)
    sb = Scoreboard(expected)
    start_clock(dut.clk)
    run = StreamRun(dut, sources, sink)
    await run.reset()
    sim_seconds = await run.run(len(expected), max_cycles)

    errors = run.check(sb, max_cycles)
    res = run.result(sb, errors, macs=job["macs"], kept_macs=job["kept_macs"],
                     tiles=job["tiles"], beats=beats, sim_seconds=sim_seconds, seed=seed)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
