"""Co-simulation under Icarus Verilog (skipped where `iverilog` is not installed;
Debian's package `iverilog`, version 11, suffices): the same testbenches and
records as under Verilator, ideal runs held to the same cycle models."""
from __future__ import annotations

import shutil

import pytest
from golden.kv4_attention_config import KV4Config

from cosim import runner
from cosim.kv4_attention import KV4Case, case_job, run_cases, unit_build
from hdl.kv4_attention import cycle_model

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed")



def test_kv4_under_icarus_equals_the_cycle_model(tmp_path):
    # KV4 did not simulate under Icarus at all: cmd__ready/append__ready stayed X
    cfg = KV4Config(head_dim=32, lanes=16, max_t=40, heads=2)
    cases = [KV4Case(config=cfg, T=40, seed=3, overflow_check=True),
             KV4Case(config=cfg, T=6, seed=2, p_idle=0.3, p_stall=0.4)]
    res = run_cases(cfg, [case_job(c, root=tmp_path) for c in cases],
                    build=unit_build(cfg, sim="icarus"), sim="icarus")
    for c, r in zip(cases, res["cases"]):
        assert r["passed"] and r["mismatches"] == 0, (c.name, r["errors"])
        if c.ideal:
            assert r["cycles"] == cycle_model(cfg, c.T), c.name
    assert res["passed"]


def test_kv4_overflow_with_16_chunks_leaves_the_next_case_aligned(tmp_path):
    # 16 beats per head: the size at which a valid left high after the overflow
    # check misaligned every cache word of the next case (the testbench now also
    # counts the overflowing token's beats on the wire, for every size)
    cfg = KV4Config(head_dim=32, lanes=2, max_t=16, heads=1)
    assert cfg.chunks == 16
    cases = [KV4Case(config=cfg, T=16, seed=5, overflow_check=True),
             KV4Case(config=cfg, T=7, seed=6)]
    res = run_cases(cfg, [case_job(c, root=tmp_path) for c in cases],
                    build=unit_build(cfg, sim="icarus"), sim="icarus")
    assert res["passed"], [r["errors"] for r in res["cases"]]
    assert [r["mismatches"] for r in res["cases"]] == [0, 0]
