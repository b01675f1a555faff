"""Sparse DSP chain under Verilator (cocotb): one build serves >= 4
configurations (pattern x mode x split, changed per tile at run time),
back-pressure, the cycle model held to the RTL, a corrupted expectation fails."""
import pytest

from cosim import runner
from cosim.sparse_dsp import (DEFAULT_CONFIG, SparseDSPCase, build, default_plan, run_cases,
                              to_record)
from golden.sparse_dsp_config import TileMode
from hdl.sparse_dsp import cycle_model

pytestmark = pytest.mark.skipif(not runner.find_verilator(), reason="verilator not installed")

CASES = [SparseDSPCase(config=DEFAULT_CONFIG, mode=TileMode(pattern=p, mode=md, span=s),
                       rows=2 * (DEFAULT_CONFIG.n_groups // s), ma=2, seed=i,
                       method="wanda" if md == "w4a8" else "magnitude")
         for i, (p, md, s) in enumerate([("dense", "w8a8", 1), ("2:4", "w4a8", 2),
                                         ("1:4", "w8a8", 2), ("2:8", "w4a8", 1),
                                         ("4:8", "w8a8", 1), ("2:4", "w4a8", 1)])]


@pytest.fixture(scope="module")
def chain_build():
    return build(DEFAULT_CONFIG)


def test_mixed_modes_back_pressure(chain_build, tmp_path):
    res = run_cases(CASES, build_=chain_build, p_idle=0.2, p_stall=0.4, seed=11,
                    data_root=tmp_path)
    assert res["passed"], res["errors"]
    assert res["torch_imported"] is False  # stimulus and golden words come from the caller
    assert res["vectors"] == sum(c.tiles for c in CASES)
    assert res["stall_cycles"] > 0


def test_mixed_modes_ideal_cycle_model(chain_build, tmp_path):
    res = run_cases(CASES, build_=chain_build, p_idle=0.0, p_stall=0.0, data_root=tmp_path)
    assert res["passed"], res["errors"]
    modes = [m for c in CASES for m in c.modes]
    assert res["cycles"] == cycle_model(DEFAULT_CONFIG, modes)
    rec = to_record(CASES[0], run_cases(CASES[:1], build_=chain_build, p_idle=0.0,
                                        p_stall=0.0, data_root=tmp_path))
    assert rec["passed"] and rec["cycles"] == rec["expected_cycles"]
    assert rec["block"] == "sparse_dsp" and rec["config"]["pattern"] == "dense"


def test_corrupted_expectation_fails(chain_build, tmp_path):
    res = run_cases(CASES[1:2], build_=chain_build, p_idle=0.0, p_stall=0.0,
                    corrupt_expected=[(1, 1 << 5)], data_root=tmp_path)
    assert not res["passed"] and res["mismatches"] == 1


def test_plan_covers_every_pattern_split_and_size():
    plan = default_plan()
    keys = {(c.mode.pattern, c.mode.span, c.mode.mode) for c in plan}
    assert len(keys) == 5 * 2 * 2
    assert all(c.kept_macs >= 100_000 and c.macs >= 100_000 for c in plan)
    assert all(c.p_stall > 0 for c in plan)
