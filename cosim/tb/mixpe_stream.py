"""Stream testbench of hdl.mixpe.MixPE: act/code/scale sources with random idle
cycles, a result sink with random back-pressure, a bit-exact scoreboard against
golden.mixpe. Inputs come from the quantflow images named by the job.

Job fields: config (dict), data_dir, seed (printed; reproducible), p_idle
(per source), p_stall (sink), optional max_cycles, corrupt_expected
([[word, xor_mask], ...], error injection for the harness's own test).
Result (JSON, cosim.runner.write_result): passed, mismatches, vectors,
cycles (first accepted input beat .. last result beat, inclusive), macs,
sim_cycles (clock cycles simulated incl. reset), sim_seconds, seed,
stall/idle counts, mismatch details.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock

from cosim.runner import read_job, write_result
from cosim.tb.mixpe_common import MixPECaseData, describe_mismatch, load_case
from cosim.tb.common import Stopwatch, job_seed
from cosim.tb.streams import Scoreboard, StreamRun, StreamSink, StreamSource


class MixPEStreamTB:
    """The three sources, the sink and the scoreboard (cosim.tb.streams.StreamRun
    clocks them)."""

    def __init__(self, dut, data: MixPECaseData, *, seed: int, p_idle: float,
                 p_stall: float):
        self.dut = dut
        self.data = data
        self.seed = seed
        # One RNG per stream so that changing one probability leaves the others'
        # patterns unchanged (reproducibility when narrowing a failure down).
        rng = random.Random(seed)
        sub = [random.Random(rng.randrange(1 << 62)) for _ in range(4)]
        cfg = data.config
        order = [(tn, tm) for tn in range(data.n_tiles) for tm in range(data.m_tiles)]
        act = [w for tn, tm in order for w in data.act_words[tm * cfg.K:(tm + 1) * cfg.K]]
        code = [w for tn, tm in order for w in data.code_words[tn * cfg.K:(tn + 1) * cfg.K]]
        g = cfg.groups
        scale = [w for tn, tm in order for w in data.scale_words[tn * g:(tn + 1) * g]]
        self.sources = [StreamSource(dut, "act", act, p_idle=p_idle, rng=sub[0]),
                        StreamSource(dut, "code", code, p_idle=p_idle, rng=sub[1]),
                        StreamSource(dut, "scale", scale, p_idle=p_idle, rng=sub[2])]
        self.sink = StreamSink(dut, "result", p_stall=p_stall, rng=sub[3])
        self.scoreboard = Scoreboard(data.expected_words, describe=describe_mismatch(data))


@cocotb.test()
async def mixpe_stream(dut):
    job = read_job()
    seed = job_seed(job)
    dut._log.info(f"mixpe_stream seed={seed} (rerun with job seed={seed})")
    sw = Stopwatch()
    data = load_case(job)
    load_seconds = sw.seconds()
    cfg = data.config
    tiles = data.m_tiles * data.n_tiles
    max_cycles = int(job.get("max_cycles") or (50 * tiles * max(cfg.K, cfg.rows + 8) + 10_000))
    Clock(dut.clk, 2, unit="ns").start()
    tb = MixPEStreamTB(dut, data, seed=seed, p_idle=float(job.get("p_idle", 0.0)),
                       p_stall=float(job.get("p_stall", 0.0)))
    run = StreamRun(dut, tb.sources, tb.sink)
    await run.reset()
    sim_seconds = await run.run(len(data.expected_words), max_cycles)
    sb = tb.scoreboard
    errors = run.check(sb, max_cycles)
    res = run.result(sb, errors, macs=data.macs, tiles=tiles, M=data.M, N=data.N,
                     sim_seconds=sim_seconds, seed=seed, load_seconds=load_seconds)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
