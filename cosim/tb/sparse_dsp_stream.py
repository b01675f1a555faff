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

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from cosim.runner import read_job, write_result
from cosim.tb.mixpe_common import Stopwatch, job_seed
from cosim.tb.streams import Scoreboard, StreamSink, StreamSource

RESET_CYCLES = 3
STREAMS = ("ctrl", "act", "weight", "scale")


def load_job(job: dict):
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
    expected = list(words.pop("result"))
    for idx, mask in job.get("corrupt_expected", []):
        expected[idx] ^= int(mask)  # error injection: proves the scoreboard can fail
    return cfg, words, expected, modes, macs, kept


@cocotb.test()
async def sparse_dsp_stream(dut):
    job = read_job()
    seed = job_seed(job)
    dut._log.info(f"sparse_dsp_stream seed={seed} (rerun with job seed={seed})")
    sw = Stopwatch()
    cfg, words, expected, modes, macs, kept = load_job(job)
    load_seconds = sw.seconds()
    beats = len(words["weight"])
    max_cycles = int(job.get("max_cycles") or (20 * beats + 50 * len(expected) + 10_000))
    p_idle, p_stall = float(job.get("p_idle", 0.0)), float(job.get("p_stall", 0.0))
    rng = random.Random(seed)
    sub = [random.Random(rng.randrange(1 << 62)) for _ in range(len(STREAMS) + 1)]
    sources = [StreamSource(dut, k, words[k], p_idle=p_idle, rng=sub[i])
               for i, k in enumerate(STREAMS)]
    sink = StreamSink(dut, "result", p_stall=p_stall, rng=sub[-1])
    sb = Scoreboard(expected)
    Clock(dut.clk, 2, unit="ns").start()
    dut.rst.value = 1
    cycle = 0
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
        cycle += 1
    dut.rst.value = 0
    sw = Stopwatch()
    parts = sources + [sink]
    while len(sink.words) < len(expected) and cycle < max_cycles:
        await RisingEdge(dut.clk)
        cycle += 1
        for p in parts:
            p.drive()
        await ReadOnly()
        for p in parts:
            p.sample(cycle)
    await RisingEdge(dut.clk)
    sim_seconds = sw.seconds()

    sb.check(sink.words)
    errors = list(sb.report)
    unconsumed = {s.name: len(s.words) - s.idx for s in sources if not s.done}
    if unconsumed:
        errors.append(f"input beats never accepted: {unconsumed}")
    if cycle >= max_cycles:
        errors.append(f"timed out after {max_cycles} cycles with "
                      f"{len(sink.words)}/{len(expected)} result words")
    firsts = [s.first_cycle for s in sources if s.first_cycle is not None]
    cycles = (sink.cycles[-1] - min(firsts) + 1) if (firsts and sink.cycles) else 0
    passed = sb.passed and not errors
    write_result({
        "test": "stream", "passed": passed, "mismatches": sb.mismatches,
        "vectors": sb.compared, "expected_vectors": len(expected), "cycles": cycles,
        "macs": macs, "kept_macs": kept, "tiles": len(modes), "beats": beats,
        "sim_cycles": cycle, "sim_seconds": sim_seconds, "seed": seed,
        "stall_cycles": sink.stall_cycles, "ready_low_cycles": sink.ready_low_cycles,
        "load_seconds": load_seconds,
        "idle_cycles": {s.name: s.idle_cycles for s in sources}, "errors": errors,
    })
    assert passed, "; ".join(errors) or "scoreboard failed"
