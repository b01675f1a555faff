"""Stream testbench of hdl.mixpe.MixPE: act/code/scale sources with random idle
cycles, a result sink with random back-pressure, a bit-exact scoreboard against
golden.mixpe. The case loading and mismatch description are shared with
cosim.tb.mixpe_system.

The words and the expected result words come in the job, computed by the caller
from quantflow's images (cosim.mixpe.stimulus): a passing run imports no torch.

Job fields: config (dict), data_dir (the images, for the record), seed (printed;
reproducible), p_idle (per source), p_stall (sink), optional max_cycles,
corrupt_expected ([[word, xor_mask], ...], error injection for the harness's own
test), and stimulus's M, N, m_tiles, n_tiles, macs, act_words, code_words,
scale_words, expected_words.
Result (JSON, cosim.runner.write_result): passed, mismatches, vectors,
cycles (first accepted input beat .. last result beat, inclusive), macs,
sim_cycles (clock cycles simulated incl. reset), sim_seconds, seed,
stall/idle counts, mismatch details.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

import cocotb

from golden.mixpe_config import MixPEConfig

from cosim.runner import CosimError, write_result
from cosim.tb.common import Stopwatch, inject_errors, open_job, start_clock
from cosim.tb.streams import Scoreboard, StreamRun, stream_ends

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject


@dataclass(frozen=True, kw_only=True)
class MixPECaseData:
    """A case as the job carries it (cosim.mixpe.stimulus): the configuration,
    its sizes, the act/code/scale memory words as in quantflow's .hex images and
    the result words the scoreboard expects (golden.mixpe, emission order)."""
    config: MixPEConfig
    M: int
    N: int
    m_tiles: int
    n_tiles: int
    macs: int
    act_words: list[int]
    code_words: list[int]
    scale_words: list[int]
    expected_words: list[int]


def load_case(job: dict) -> MixPECaseData:
    """The case of `job`: its stimulus fields (cosim.mixpe.stimulus) with the
    job's corrupt_expected XORed into the expected words (error injection)."""
    names = [f.name for f in fields(MixPECaseData) if f.name != "config"]
    missing = [k for k in names if k not in job]
    if missing:
        raise CosimError(f"MixPE job lacks {', '.join(missing)}: make the job with "
                         f"cosim.mixpe.stream_job / run_fast (cosim.mixpe.stimulus)")
    data = {k: job[k] for k in names}
    data["expected_words"] = inject_errors(list(job["expected_words"]),
                                           job.get("corrupt_expected"))
    return MixPECaseData(config=MixPEConfig(**job["config"]), **data)


def describe_mismatch(data: MixPECaseData) -> Callable[[int, int, int], str]:
    """Closure naming (tile, m, n, got, expected) of a mismatching result word."""
    from golden.formats import ACC_BITS

    cfg = data.config

    def describe(i: int, got: int, exp: int) -> str:
        # quantflow imports torch: only here, when a mismatch is described (a failing run)
        from quantflow.pack import unpack_words
        tile, m = divmod(i, cfg.rows)
        tn, tm = divmod(tile, data.m_tiles)
        g = unpack_words([got], ACC_BITS, cfg.cols, signed=True)[0]
        e = unpack_words([exp], ACC_BITS, cfg.cols, signed=True)[0]
        bad = [(tn * cfg.cols + c, int(g[c]), int(e[c])) for c in range(cfg.cols)
               if g[c] != e[c]]
        return (f"result word {i} (tile n{tn} m{tm}, row {tm * cfg.rows + m}): "
                + ", ".join(f"acc[{tm * cfg.rows + m},{n}] got {gv} expected {ev}"
                            for n, gv, ev in bad[:4]))
    return describe


class MixPEStreamTB:
    """The three sources, the sink and the scoreboard (cosim.tb.streams.StreamRun
    clocks them)."""

    def __init__(self, dut: HierarchyObject, data: MixPECaseData, job: dict, *, seed: int):
        self.dut = dut
        self.data = data
        self.seed = seed
        cfg = data.config
        order = [(tn, tm) for tn in range(data.n_tiles) for tm in range(data.m_tiles)]
        act = [w for tn, tm in order for w in data.act_words[tm * cfg.K:(tm + 1) * cfg.K]]
        code = [w for tn, tm in order for w in data.code_words[tn * cfg.K:(tn + 1) * cfg.K]]
        g = cfg.groups
        scale = [w for tn, tm in order for w in data.scale_words[tn * g:(tn + 1) * g]]
        self.sources, self.sink = stream_ends(dut, {"act": act, "code": code, "scale": scale},
                                              job, seed)
        self.scoreboard = Scoreboard(data.expected_words, describe=describe_mismatch(data))


@cocotb.test()
async def mixpe_stream(dut: HierarchyObject) -> None:
    """cocotb test: one MixPE case streamed with the job's idle and back-pressure
    probabilities, every result word compared with golden."""
    job, seed = open_job(dut, "mixpe_stream")
    sw = Stopwatch()
    data = load_case(job)
    load_seconds = sw.seconds()
    cfg = data.config
    tiles = data.m_tiles * data.n_tiles
    max_cycles = int(job.get("max_cycles") or (50 * tiles * max(cfg.K, cfg.rows + 8) + 10_000))
    start_clock(dut.clk)
    tb = MixPEStreamTB(dut, data, job, seed=seed)
    run = StreamRun(dut, tb.sources, tb.sink)
    await run.reset()
    sim_seconds = await run.run(len(data.expected_words), max_cycles)
    sb = tb.scoreboard
    errors = run.check(sb, max_cycles)
    res = run.result(sb, errors, macs=data.macs, tiles=tiles, M=data.M, N=data.N,
                     sim_seconds=sim_seconds, seed=seed, load_seconds=load_seconds)
    write_result(res)
    assert res["passed"], "; ".join(errors) or "scoreboard failed"
