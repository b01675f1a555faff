"""PIM channel co-simulated under Verilator (hdl.pim.PIMSystem) against
golden.pim: data, checker silence, cycles and command counts equal to the
command-level model. One small build per mode serves every workload; the
full make-sim plan (>= 10,000 commands per run) is marked slow."""
from __future__ import annotations

import pytest

from golden.pim_config import PIMConfig

from cosim import pim

SIZES = {"max_mem": 512, "max_jobs": 32, "max_reads": 512, "max_results": 128}
CFG = dict(banks=2, rows=16, columns=64, lanes=16, max_job_rows=4)
SPECS = [
    {"name": "mixed_small", "kind": "mixed", "seed": 21, "n_mem": 400, "n_jobs": 12,
     "job_rows": 3},
    {"name": "subbatch_small", "kind": "subbatch", "seed": 22, "rounds": 3},
    {"name": "mixed_corrupt", "kind": "mixed", "seed": 23, "n_mem": 60, "n_jobs": 2,
     "corrupt_expected": [[0, 1]]},
]


@pytest.fixture(scope="module")
def runs():
    out = {}
    for mode in ("dual", "blocked"):
        cfg = PIMConfig(mode=mode, **CFG)
        res = pim.run_workloads(cfg, SPECS, sizes=SIZES)
        out[mode] = (cfg, res)
    return out


@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_rtl_matches_golden_and_model(runs, mode):
    cfg, res = runs[mode]
    # the words came from the caller: the simulator's Python never loaded torch
    assert res["torch_imported"] is False
    for spec, run in zip(SPECS[:2], res["runs"][:2]):
        model = pim.model_for(cfg, spec)
        rec = pim.to_record(cfg, spec, run, model)
        assert rec["passed"], rec["errors"]
        assert rec["mismatches"] == 0 and rec["vectors"] == run["reads"] + run["results"] > 0
        assert rec["timing_violations"] == 0
        assert rec["cycles"] == rec["expected_cycles"]          # exact
        assert rec["commands"] == model.commands
        assert rec["config"]["mode"] == mode and rec["block"] == "pim"
        assert 0 < rec["bank_utilisation"]["pim_lanes"] <= 1
        assert 0 < rec["bank_utilisation"]["data_bus"] <= 1


@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_scoreboard_can_fail(runs, mode):
    _, res = runs[mode]
    bad = res["runs"][2]
    assert not res["passed"] and not bad["passed"]
    assert bad["read_mismatches"] == 1 and bad["err_bits"] == 0


def test_dual_beats_blocked_on_subbatch(runs):
    d = runs["dual"][1]["runs"][1]["cycles"]
    b = runs["blocked"][1]["runs"][1]["cycles"]
    assert b / d >= 1.6


@pytest.mark.slow
def test_make_sim_plan():
    """make sim's pim items: both modes, >= 10,000 commands, zero errors,
    speedup >= 1.6 on the sub-batch workload."""
    recs = [item.run() for item in pim.sim_items(sim="verilator")]
    assert len(recs) == 4
    for r in recs:
        assert r["passed"], r["errors"]
        assert r["cycles"] == r["expected_cycles"]
        assert r["commands"] >= 10_000 and r["timing_violations"] == 0
    sub = [r for r in recs if r["workload"]["kind"] == "subbatch"]
    assert all(r["speedup"] >= 1.6 for r in sub)
