"""Co-simulation under Icarus Verilog, the second simulator (skipped where `iverilog`
is not installed; Debian's package `iverilog`, version 11, suffices; `.ci/run`
installs it). One small configuration of every block runs through the same
testbench and the same record as under Verilator: bit-exact results, ideal runs
held to the block's cycle model, and the run's cycle count equal to Verilator's
on the same seed (back-pressure included), on the builds the Verilator tests of
each block share (cached in build/cosim/)."""
from __future__ import annotations

import shutil

import pytest
from golden.kv4_attention_config import KV4Config
from golden.lut_config import MODES, LUTConfig
from golden.mixpe_config import MixPEConfig
from golden.pim_config import PIMConfig
from golden.sfu_config import SFUHWConfig
from golden.sparse_dsp_config import TileMode

from cosim import kv4_attention as kv4
from cosim import lut, mixpe, pim, sfu, sparse_dsp
from cosim.flow import first_case

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed: "
                                       "apt-get install iverilog")

SIMS = ("icarus", "verilator")
#: What both simulators must agree on, run for run.
SAME = ("passed", "mismatches", "vectors", "cycles")


def _agree(recs: dict, what: str) -> dict:
    """The Icarus record, after checking it passed and equals Verilator's on SAME."""
    ic, vl = recs["icarus"], recs["verilator"]
    assert ic["passed"] and ic["mismatches"] == 0 and ic["vectors"] > 0, (what, ic["errors"])
    assert ic.get("simulator", "icarus") == "icarus"
    assert {k: ic[k] for k in SAME} == {k: vl[k] for k in SAME}, what
    if ic.get("expected_cycles") is not None:      # an ideal run: the cycle model holds
        assert ic["cycles"] == ic["expected_cycles"], what
    return ic


# ------------------------------------------------------------------------------ MixPE
# Configurations of tests/test_cosim_mixpe.py (their Verilator builds are shared):
# make sim's W3 2x4 array and the small system.
MIXPE_STREAM = MixPEConfig(bits=3, group=64, rows=2, cols=4, K=384)
MIXPE_SYSTEM = MixPEConfig(bits=4, group=64, rows=2, cols=4, K=256)


def test_mixpe_stream_and_fast_path(tmp_path):
    bp = mixpe.MixPECase(config=MIXPE_STREAM, m_tiles=2, n_tiles=2, seed=11, p_idle=0.2,
                         p_stall=0.3)
    fast = mixpe.MixPECase(config=MIXPE_SYSTEM, m_tiles=2, n_tiles=2, seed=9)
    for case, kw in ((bp, {}), (bp, {"p_idle": 0.0, "p_stall": 0.0})):
        recs = {s: mixpe.to_record(case, mixpe.run_stream(
            case, build=mixpe.stream_build(case.config, sim=s), data_root=tmp_path, **kw))
            for s in SIMS}
        rec = _agree(recs, f"mixpe stream {kw}")
        assert ("expected_cycles" in rec) == bool(kw)
    recs = {s: mixpe.to_record(fast, mixpe.run_fast(fast, data_root=tmp_path, build=mixpe.system_build(
        fast.config, max_m_tiles=2, max_n_tiles=2, sim=s))) for s in SIMS}
    assert _agree(recs, "mixpe fast")["expected_cycles"] > 0


# ------------------------------------------------------------------------------ LUT
LUT_SMALL = LUTConfig(rows=2, cols=16, lanes=4, K=64, group=32)   # tests/test_cosim_lut.py


@pytest.mark.parametrize("fmt,ideal", [("w2", False), ("ternary", True)])
def test_lut_stream(fmt, ideal, tmp_path):
    case = lut.LUTCase(config=LUT_SMALL, mode=MODES[fmt], m_tiles=2, n_tiles=2, seed=5,
                       **({"p_idle": 0.0, "p_stall": 0.0} if ideal else {}))
    recs = {s: lut.to_record(case, lut.run_stream(case, build=lut.stream_build(LUT_SMALL, sim=s),
                                                  data_root=tmp_path)) for s in SIMS}
    assert ("expected_cycles" in _agree(recs, fmt)) == ideal


# ------------------------------------------------------------------------------ sparse DSP
@pytest.mark.parametrize("pattern,mode,span,p", [("2:4", "w4a8", 2, 0.0), ("1:4", "w8a8", 1, 0.3)])
def test_sparse_dsp(pattern, mode, span, p, tmp_path):
    cfg = sparse_dsp.DEFAULT_CONFIG                   # tests/test_cosim_sparse_dsp.py's chain
    case = sparse_dsp.SparseDSPCase(config=cfg, mode=TileMode(pattern=pattern, mode=mode, span=span),
                                    rows=2 * (cfg.n_groups // span), ma=2, seed=7,
                                    method="wanda" if mode == "w4a8" else "magnitude",
                                    p_idle=p, p_stall=p)
    recs = {s: sparse_dsp.to_record(case, sparse_dsp.run_cases(
        [case], build_=sparse_dsp.build(cfg, sim=s), data_root=tmp_path)) for s in SIMS}
    rec = _agree(recs, case.name)
    assert ("expected_cycles" in rec) == (p == 0.0)
    if p:
        assert rec["stall_cycles"] > 0


# ------------------------------------------------------------------------------ PIM
PIM_SIZES = {"max_mem": 512, "max_jobs": 32, "max_reads": 512, "max_results": 128}
PIM_CFG = dict(banks=2, rows=16, columns=64, lanes=16, max_job_rows=4)  # tests/test_cosim_pim.py


def test_pim_dual_mode():
    cfg = PIMConfig(mode="dual", **PIM_CFG)
    specs = [{"name": "mixed_small", "kind": "mixed", "seed": 21, "n_mem": 400, "n_jobs": 12,
              "job_rows": 3},
             {"name": "subbatch_small", "kind": "subbatch", "seed": 22, "rounds": 3}]
    res = {s: pim.run_workloads(cfg, specs, sizes=PIM_SIZES, sim=s) for s in SIMS}
    assert res["icarus"]["sim"] == "icarus"
    for i, spec in enumerate(specs):
        model = pim.model_for(cfg, spec)
        recs = {s: pim.to_record(cfg, spec, res[s]["runs"][i], model) for s in SIMS}
        rec = _agree(recs, spec["name"])      # also the command, COMP and bus counts
        assert rec["timing_violations"] == 0 and rec["commands"] == model.commands


# ------------------------------------------------------------------------------ KV4
KV4_SMALL = KV4Config(head_dim=32, lanes=16, max_t=40, heads=2)  # tests/test_cosim_kv4_attention.py


def test_kv4_equals_verilator_and_the_cycle_model(tmp_path):
    # KV4 did not simulate under Icarus at all: cmd__ready/append__ready stayed X
    cases = [kv4.KV4Case(config=KV4_SMALL, T=40, seed=3, overflow_check=True),
             kv4.KV4Case(config=KV4_SMALL, T=6, seed=2, p_idle=0.3, p_stall=0.4)]
    jobs = [kv4.case_job(c, root=tmp_path) for c in cases]
    res = {s: kv4.run_cases(KV4_SMALL, jobs, build=kv4.unit_build(KV4_SMALL, sim=s), sim=s)
           for s in SIMS}
    assert res["icarus"]["passed"] and res["icarus"]["sim"] == "icarus"
    for i, c in enumerate(cases):
        recs = {s: kv4.to_record(c, res[s]["cases"][i], simulator=s, data_root=tmp_path)
                for s in SIMS}
        rec = _agree(recs, c.name)
        assert rec["append_cycles"] == recs["verilator"]["append_cycles"]
        assert rec["cosine_hw_vs_float_scheme"] > 0.999


def test_kv4_overflow_with_16_chunks_leaves_the_next_case_aligned(tmp_path):
    # 16 beats per head: the size at which a valid left high after the overflow
    # check misaligned every cache word of the next case (the testbench now also
    # counts the overflowing token's beats on the wire, for every size)
    cfg = KV4Config(head_dim=32, lanes=2, max_t=16, heads=1)
    assert cfg.chunks == 16
    cases = [kv4.KV4Case(config=cfg, T=16, seed=5, overflow_check=True),
             kv4.KV4Case(config=cfg, T=7, seed=6)]
    res = kv4.run_cases(cfg, [kv4.case_job(c, root=tmp_path) for c in cases],
                        build=kv4.unit_build(cfg, sim="icarus"), sim="icarus")
    assert res["passed"], [r["errors"] for r in res["cases"]]
    assert [r["mismatches"] for r in res["cases"]] == [0, 0]


# ------------------------------------------------------------------------------ SFU
SFU_SMALL = SFUHWConfig(max_k=64, lanes=1)                       # tests/test_cosim_sfu.py


def test_sfu_every_op_and_the_edge_cases():
    cases = [sfu.SFUCase(config=SFU_SMALL, source="random", seed=1, rounds=1),
             sfu.SFUCase(config=SFU_SMALL, source="edge", seed=3, p_idle=0.2, p_stall=0.3)]
    jobs = [sfu.case_job(c) for c in cases]
    res = {s: sfu.run_cases(SFU_SMALL, jobs, build=sfu.unit_build(SFU_SMALL, sim=s), sim=s)
           for s in SIMS}
    for i, c in enumerate(cases):
        recs = {s: sfu.to_record(c, res[s]["cases"][i], simulator=s) for s in SIMS}
        rec = _agree(recs, c.name)
        assert {op for op, _ in rec["ops"]} >= {"rmsnorm", "rope", "swiglu", "argmax"}
    assert first_case(res["icarus"])["passed"]


# ------------------------------------------------------------------------------ core
@pytest.mark.slow
def test_core_layer_bit_exact_and_on_its_cycle_model(tmp_path):
    """The whole core (sequencer, linear engine, KV4 unit, SFU, AXI masters) under
    Icarus: one layer of a random Llama, a 2-token prefill and a decode step, every
    instruction bit-exact with golden.core and every run's cycles equal to
    hdl.core.cycle_model. Slow: Icarus takes minutes over these 13,000 cycles of the
    whole core, too long for make test."""
    import torch

    from cosim import core as cc
    torch.set_num_threads(1)
    shape, scheme = cc.RANDOM_CASES[0]
    _, core, runs, mem = cc.random_layer_runs(shape, seed=3, workdir=tmp_path, scheme=scheme,
                                              prefill=2, decode_steps=1)
    case = cc.build_case(runs, mem, core, name="icarus")
    res = cc.run_case(case, latency=cc.SIM_LATENCY, sim="icarus")
    assert res["sim"] == "icarus"
    assert res["mismatch"] is None, res["mismatch"]
    assert res["cycle_diffs"] == []
    assert all(r["cycles"] > 0 for r in res["runs"]) and len(res["runs"]) == 2
