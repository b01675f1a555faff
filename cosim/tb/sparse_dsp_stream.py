"""Stream testbench of hdl.sparse_dsp.SparseDSP: ctrl/act/weight/scale sources
with random idle cycles, a result sink with random back-pressure, a bit-exact
scoreboard against golden.sparse_dsp (the result words quantflow re-derives
when it loads each image directory).

Job fields: config (SparseDSPConfig fields), data_dirs (image directories, run
back to back in one stream, so tiles of different patterns/modes/spans follow
each other: the run-time mode changes per tile), seed (printed), p_idle,
p_stall, optional max_cycles, corrupt_expected ([[word, xor_mask], ...]).
Result: passed, mismatches, vectors, cycles (first accepted beat .. last result
beat, inclusive), macs (dense-equivalent), kept_macs, tiles, sim_cycles,
sim_seconds, stall/idle counts, errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb

from cosim.runner import write_result
from cosim.tb.common import Stopwatch, inject_errors, open_job, start_clock
from cosim.tb.streams import Scoreboard, StreamRun, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

    from golden.sparse_dsp_config import SparseDSPConfig, TileMode

STREAMS = ("ctrl", "act", "weight", "scale")


def load_job(job: dict) -> tuple[SparseDSPConfig, dict[str, list[int]], list[int],
                                list[TileMode], int, int]:
    """(config, words by stream, expected result words, tile modes, dense MACs,
    kept MACs) of every image directory in the job, concatenated."""
    from golden.sparse_dsp_config import SparseDSPConfig
    from quantflow.sparse_dsp import load_sparse_dsp

    cfg = SparseDSPConfig(**job["config"])
    words = {k: [] for k in STREAMS + ("result",)}
    modes, macs, kept = [], 0, 0
    for d in job["data_dirs"]:
        img = load_sparse_dsp(d, cfg)
        for k in words:
            words[k] += img.words.get(k, [])
        modes += [img.mode] * img.tiles
        macs += img.dense_macs
        kept += img.kept_macs
    expected = inject_errors(list(words.pop("result")), job.get("corrupt_expected"))
    return cfg, words, expected, modes, macs, kept


@cocotb.test()
async def sparse_dsp_stream(dut: HierarchyObject) -> None:
    """cocotb test: the job's tiles streamed through the sparse DSP block, every result word
    compared with golden."""
    job, seed = open_job(dut, "sparse_dsp_stream")
    sw = Stopwatch()
    cfg, words, expected, modes, macs, kept = load_job(job)
    load_seconds = sw.seconds()
    beats = len(words["weight"])
    max_cycles = int(job.get("max_cycles") or (20 * beats + 50 * len(expected) + 10_000))
    sources, sink = stream_ends(dut, {k: words[k] for k in STREAMS}, job, seed)
    sb = Scoreboard(expected)
    start_clock(dut.clk)
    run = StreamRun(dut, sources, sink)
    await run.reset()
    sim_seconds = await run.run(len(expected), max_cycles)

    errors = run.check(sb, max_cycles)
    res = run.result(sb, errors, macs=macs, kept_macs=kept, tiles=len(modes), beats=beats,
                     sim_seconds=sim_seconds, seed=seed, load_seconds=load_seconds)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
