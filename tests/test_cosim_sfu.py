"""SFU co-simulation (cocotb + Verilator): one small build (one lane) serves every
fast case: every op at random k with ideal streams (the cycle model enforced) and
with idle cycles and back-pressure, the edge cases, refused cmds, and a corrupted
expectation that must fail. The make-sim plan (one lane, max_k 2048) and the real
SmolLM2 tokens run under @pytest.mark.slow."""
from __future__ import annotations

import pytest

from cosim.report import record_key
from cosim.sfu import (PLAN_CONFIG, REAL_DATA, REAL_MODEL, SFUCase, _run_item, case_job,
                       default_plan, run_cases, to_record, unit_build)
from golden.sfu_config import SFUHWConfig
from hdl.sfu import pack_cmd, pack_elems

SMALL = SFUHWConfig(max_k=64, lanes=1)


def test_small_unit_all_fast_cases():
    cases = [SFUCase(config=SMALL, source="random", seed=1, rounds=2),
             SFUCase(config=SMALL, source="random", seed=2, rounds=2, p_idle=0.3, p_stall=0.4),
             SFUCase(config=SMALL, source="edge", seed=3, p_idle=0.2, p_stall=0.3)]
    jobs = [case_job(c) for c in cases]
    bad = [{"kind": "bad", "cmd": pack_cmd("swiglu", 0, shift=14)},
           {"kind": "bad", "cmd": pack_cmd("rmsnorm", SMALL.max_k + 2, E=0, SK=1 << 23, es=0,
                                           e_w=0)},
           {"kind": "bad", "cmd": pack_cmd("requant", 5, from_frac=0, to_frac=0, bits=40)},
           {"kind": "bad", "cmd": pack_cmd("rope", 12, d=8), "x": pack_elems(SMALL, range(12))}]
    corrupt = case_job(SFUCase(config=SMALL, source="random", seed=4),
                       corrupt_expected=[[5, 1 << 3]])
    again = case_job(SFUCase(config=SMALL, source="random", seed=5))
    res = run_cases(SMALL, jobs + bad + [corrupt, again], build=unit_build(SMALL))
    rs = res["cases"]
    for c, r in zip(cases, rs):
        assert r["passed"], (c.name, r["errors"])
        assert r["vectors"] == len(case_job(c)["expected"]) > 0
        if c.ideal:
            assert r["cycles"] == r["model_cycles"], c.name
        else:
            assert r["cycles"] > r["model_cycles"]
    for r in rs[3:7]:
        assert r["passed"], r["errors"]                          # refused, nothing out
    assert not rs[7]["passed"] and rs[7]["mismatches"] == 1      # the corrupted word caught
    assert rs[8]["passed"] and rs[8]["cycles"] == rs[8]["model_cycles"]   # recovers
    assert not res["passed"]
    # the words came from the caller: the simulator's Python never loaded torch
    assert res["torch_imported"] is False
    rec = to_record(cases[0], rs[0], simulator=res.get("sim"))
    assert rec["block"] == "sfu" and rec["expected_cycles"] == rec["cycles"]
    assert rec["peak_macs_per_cycle"] == 1 and rec["macs"] == rs[0]["elements"]


def test_plan_records_have_distinct_report_keys():
    """report.json merges records by key: every planned run keeps its own."""
    plan = default_plan()
    keys = {record_key(to_record(case, {"passed": True, "cycles": 1})) for case in plan}
    assert len(keys) == len(plan) >= 4


@pytest.mark.slow
def test_plan_config_random_and_edge():
    for case in (SFUCase(config=PLAN_CONFIG, source="random", seed=13, rounds=2),
                 SFUCase(config=PLAN_CONFIG, source="edge", seed=14, p_idle=0.2, p_stall=0.3)):
        rec = _run_item(case, "verilator")
        assert rec["passed"], rec["errors"]
        if case.ideal:
            assert rec["cycles"] == rec["expected_cycles"]


@pytest.mark.slow
def test_real_smollm2_tokens():
    from quantflow.models.loaders import models_dir
    if not REAL_DATA.is_file() and not (models_dir() / REAL_MODEL).is_dir():
        pytest.skip("build/models/smollm2 is not prepared (run `make models`)")
    for case in (SFUCase(config=PLAN_CONFIG, source="real", tokens=2),
                 SFUCase(config=SFUHWConfig(max_k=2048, lanes=4), source="real", tokens=1,
                         p_idle=0.2, p_stall=0.3)):
        rec = _run_item(case, "verilator")
        assert rec["passed"], rec["errors"]
        assert rec["model"] == REAL_MODEL and rec["real"]["layer"] == 12
