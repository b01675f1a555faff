"""hdl.pim under amaranth.sim: the hardware checker flags every illegal
sequence exactly as golden.pim.Checker does, and PIMSystem matches the golden
model in data, command counts and cycles (exactly, SYSTEM_OVERHEAD apart)."""
from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from golden.pim import Checker, expected_outputs, schedule
from golden.pim_config import MCMD, PCMD, RULES, Cmd, PIMConfig, rule_bit
from hdl.pim import (LOAD_BANK, LOAD_JOB, LOAD_MEM, LOAD_VEC, OUT_RD, OUT_RES, PIMChannel,
                     PIMSystem, job_layout, memreq_layout, pim_factory)
from hdl.streams import SYSTEM_OVERHEAD
from quantflow.pim import bank_words, job_words, memreq_words, mixed_workload, vector_words

from test_golden_pim import ILLEGAL, SMALL


def _names(bits):
    return [RULES[i] for i in range(len(RULES)) if bits >> i & 1]


def _run_raw(cfg, seq):
    dut = PIMChannel(cfg, raw=True)
    out = {}

    def put(port, c):
        if c is None:
            return {"cmd": 0}
        codes = MCMD if c.path == "m" else PCMD
        return {"cmd": codes[c.kind], "bank": c.bank, "row": c.row, "col": c.col}

    async def tb(ctx):
        t = 0
        for when, mcmd, pcmd in seq:
            while t < when:
                ctx.set(dut.m_issue.cmd, 0)
                ctx.set(dut.p_issue.cmd, 0)
                await ctx.tick()
                t += 1
            for port, c in ((dut.m_issue, mcmd), (dut.p_issue, pcmd)):
                f = put(port, c)
                for k, v in f.items():
                    ctx.set(getattr(port, k), v)
            await ctx.tick()
            t += 1
        ctx.set(dut.m_issue.cmd, 0)
        ctx.set(dut.p_issue.cmd, 0)
        await ctx.tick()
        out["bits"] = ctx.get(dut.err_bits)
        out["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


@pytest.mark.parametrize("rule, mode, seq", [pytest.param(r, m, s, id=f"{r}-{m}-{i}")
                                             for i, (r, m, s) in enumerate(ILLEGAL)])
def test_hw_checker_flags_illegal(rule, mode, seq):
    cfg = PIMConfig(mode=mode, **{**SMALL, "banks": 4})
    out = _run_raw(cfg, seq)
    chk = Checker(cfg)
    for t, m, p in seq:
        chk.issue(t, m, p)
    assert out["error"] == 1
    assert out["bits"] >> rule_bit(rule) & 1, _names(out["bits"])
    assert out["bits"] == chk.errors, (_names(out["bits"]), _names(chk.errors))


def test_hw_checker_quiet_on_legal_sequence():
    cfg = PIMConfig(mode="dual", **{**SMALL, "banks": 4})
    seq = [(0, Cmd("m", "ACT", 0, 4), Cmd("p", "GWR", 1)),
           (2, None, Cmd("p", "PACT", 1, 1)),
           (3, Cmd("m", "RD", 0, 4, 1), None),
           (5, Cmd("m", "WR", 0, 4, 2), Cmd("p", "COMP", 1, 1, 0)),
           (8, None, Cmd("p", "RDRES", 1)),
           (9, Cmd("m", "PRE", 0), Cmd("p", "PPRE", 1))]
    out = _run_raw(cfg, seq)
    assert out["bits"] == 0 and out["error"] == 0


def _run_system(cfg, w):
    dut = PIMSystem(cfg, max_mem=128, max_jobs=16, max_reads=128, max_results=32)
    out = {}

    async def tb(ctx):
        async def load(sel, words):
            ctx.set(dut.load_en, 1)
            ctx.set(dut.load_sel, sel)
            for a, word in enumerate(words):
                ctx.set(dut.load_addr, a)
                ctx.set(dut.load_data, word)
                await ctx.tick()
            ctx.set(dut.load_en, 0)
        await load(LOAD_BANK, bank_words(w.storage, cfg))
        await load(LOAD_MEM, memreq_words(w.mem, cfg))
        await load(LOAD_JOB, job_words(w.jobs, cfg))
        vec = vector_words(w.jobs, cfg)
        await load(LOAD_VEC, vec)
        ctx.set(dut.n_mem, len(w.mem))
        ctx.set(dut.n_job, len(w.jobs))
        ctx.set(dut.n_vec, len(vec))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            n += 1
            assert n < 50_000, "PIMSystem never finished"
        for k in ("cycles", "cmd_count", "comp_count", "bus_count", "err_bits", "n_rd", "n_res"):
            out[k] = ctx.get(getattr(dut, k))
        for sel, key, cnt in ((OUT_RD, "reads", out["n_rd"]), (OUT_RES, "results", out["n_res"])):
            vals = []
            for a in range(cnt):
                ctx.set(dut.out_sel, sel)
                ctx.set(dut.out_addr, a)
                await ctx.tick()
                vals.append(ctx.get(dut.out_data))
            out[key] = vals

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    out["results"] = [v - (1 << 32) if v >= 1 << 31 else v for v in out["results"]]
    return out


@pytest.mark.parametrize("mode, seed", [("dual", 3), ("blocked", 4), ("dual", 8)])
def test_system_matches_golden_and_cycle_model(mode, seed):
    cfg = PIMConfig(mode=mode, **SMALL)
    w = mixed_workload(cfg, seed=seed, n_mem=80, n_jobs=6, job_rows=2, max_burst=4)
    reads, results = expected_outputs(cfg, w.storage, w.mem, w.jobs)
    model = schedule(cfg, w.mem, w.jobs)
    out = _run_system(cfg, w)
    assert out["err_bits"] == 0, _names(out["err_bits"])
    assert out["reads"] == reads
    assert out["results"] == results
    assert out["cycles"] == model.cycles + SYSTEM_OVERHEAD
    assert out["cmd_count"] == model.commands
    assert out["comp_count"] == model.comp_cycles
    assert out["bus_count"] * cfg.tCCD_S == model.bus_cycles


def test_bad_designs():
    with pytest.raises(TypeError, match="PIMConfig"):
        PIMChannel(object())
    with pytest.raises(ValueError, match="max_mem"):
        PIMSystem(PIMConfig(), max_mem=0, max_jobs=1, max_reads=1, max_results=1)
    with pytest.raises(ValueError, match="kind"):
        pim_factory(PIMConfig(), kind="nope")


def test_request_layouts_are_the_configs_fields():
    """quantflow.pim packs request words from PIMConfig's field lists."""
    cfg = PIMConfig(**SMALL)
    for layout, fields in ((memreq_layout(cfg), cfg.memreq_fields),
                           (job_layout(cfg), cfg.job_fields)):
        offset = 0
        for name, bits in fields:
            assert (layout[name].offset, layout[name].width) == (offset, bits)
            offset += bits
        assert layout.size == offset


@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_system_with_one_column_word_per_row(mode):
    # col_words == 1: the global buffer is a register, not a depth-1 memory
    cfg = PIMConfig(mode=mode, **{**SMALL, "columns": SMALL.get("lanes", 16)})
    assert cfg.col_words == 1
    w = mixed_workload(cfg, seed=5, n_mem=40, n_jobs=4, job_rows=2, max_burst=1)
    reads, results = expected_outputs(cfg, w.storage, w.mem, w.jobs)
    model = schedule(cfg, w.mem, w.jobs)
    out = _run_system(cfg, w)
    assert out["err_bits"] == 0, _names(out["err_bits"])
    assert out["reads"] == reads and out["results"] == results
    assert out["cycles"] == model.cycles + SYSTEM_OVERHEAD
