"""KV4 attention co-simulation (cocotb + Verilator): one small build serves every
fast case (append through the hardware quantizer, decode bit-exact with golden,
back-pressure, T = 1 .. max_t, the T overflow of the cache and of the cmd, a
corrupted expectation that must fail); the make-sim plan configurations
(head_dim 64 with 3 GQA heads and head_dim 128, max_t 4096) and the real
SmolLM2 layer run under @pytest.mark.slow."""
from __future__ import annotations

import pytest
from golden.kv4_attention_config import KV4Config

from cosim.kv4_attention import (PLAN_CONFIGS, KV4Case, _run_item, case_job, default_plan,
                                 run_cases, to_record, unit_build)
from cosim.report import record_key
from hdl.kv4_attention import append_cycles, cycle_model


SMALL = KV4Config(head_dim=32, lanes=16, max_t=40, heads=2)


def test_small_unit_all_fast_cases(tmp_path):
    cases = [KV4Case(config=SMALL, T=1, seed=1),
             KV4Case(config=SMALL, T=13, seed=2, p_idle=0.3, p_stall=0.4, crafted=True,
                     busy_cmd=True),
             KV4Case(config=SMALL, T=40, seed=3, overflow_check=True),
             KV4Case(config=SMALL, T=29, seed=4)]
    jobs = [case_job(c, root=tmp_path) for c in cases]
    bad = {**case_job(KV4Case(config=SMALL, T=6, seed=5), root=tmp_path),
           "corrupt_expected": [[1, 1 << 5]]}
    jobs += [{"kind": "bad_t", "t": SMALL.max_t + 1}, {"kind": "bad_t", "t": 0}, bad,
             case_job(KV4Case(config=SMALL, T=3, seed=6), root=tmp_path),
             {"kind": "bad_t", "t": 5, "lsh": SMALL.min_lsh - 1},
             case_job(KV4Case(config=SMALL, T=SMALL.max_t, seed=7), root=tmp_path)]
    res = run_cases(SMALL, jobs, build=unit_build(SMALL))
    rs = res["cases"]
    for c, r in zip(cases, rs):
        assert r["passed"], (c.name, r["errors"])
        decodes = 2 if c.busy_cmd else 1       # busy_cmd: the decode runs twice
        assert r["mismatches"] == 0
        assert r["vectors"] == (c.T + decodes * SMALL.heads) * SMALL.chunks
        if c.ideal:
            assert r["cycles"] == cycle_model(SMALL, c.T), c.name
            assert r["append_cycles"] == append_cycles(SMALL, c.T), c.name
        else:
            assert r["cycles"] > cycle_model(SMALL, c.T)
    assert rs[4]["passed"] and rs[5]["passed"], (rs[4], rs[5])       # T > max_t, T = 0
    assert not rs[6]["passed"] and rs[6]["mismatches"] == 1            # corrupted word caught
    assert rs[7]["passed"], rs[7]["errors"]                            # the unit recovers
    assert rs[8]["passed"], rs[8]["errors"]                            # lsh < min_lsh
    assert rs[9]["passed"], rs[9]["errors"]       # filled exactly: `overflow` stays low
    assert not res["passed"]
    # the words came from the parent: the simulator's Python never loaded torch
    assert res["torch_imported"] is False
    rec = to_record(cases[3], rs[3], data_root=tmp_path)
    assert rec["block"] == "kv4_attention" and rec["config"]["head_dim"] == 32
    assert rec["expected_cycles"] == rec["cycles"]
    # random K/V with outlier channels: the hardware tracks the float scheme on the
    # same operands (its rotated, requantized query; 4-bit K/V, the last 8 at 8 bits)
    assert rec["cosine_hw_vs_float_scheme"] > 0.9999


def test_crafted_tokens_hold_the_quantizer_edge_cases():
    """Token 1's rotated K has an element of exactly -1 with a non-zero code, token
    2's V an exact round-half-even tie of the 4-bit step (15 |X| / S = 1/2)."""
    import torch

    from cosim.kv4_attention import _inputs
    from golden.kv4_attention import choose_frac, quantize_token, rotate_k, to_fixed
    for cfg in (SMALL, *PLAN_CONFIGS):
        case = KV4Case(config=cfg, T=5, seed=3, crafted=True)
        _, k, v = _inputs(case)
        Xk = rotate_k(to_fixed(k, choose_frac(k, cfg), cfg), cfg)[1:2]
        codes = quantize_token(Xk, cfg, width=cfg.k_bits)[0]
        assert bool(((Xk == -1) & (codes != 0)).any()), cfg.name()
        Xv = to_fixed(v, choose_frac(v, cfg), cfg)[2]
        S = int(Xv.max() - Xv.min())
        assert S == 30 and bool((15 * Xv.abs() * 2 == S).any()), cfg.name()
        assert int(torch.count_nonzero(Xv.abs() == 1)) == cfg.head_dim - 2
    with pytest.raises(ValueError, match="crafted"):
        KV4Case(config=SMALL, T=2, crafted=True)


def test_plan_records_have_distinct_report_keys():
    """report.json merges records by key: every planned run keeps its own."""
    plan = default_plan()
    keys = {record_key(to_record(case, {"passed": True, "cycles": 1})) for case in plan}
    assert len(keys) == len(plan)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", PLAN_CONFIGS, ids=lambda c: c.name())
def test_plan_configs_full_size(cfg):
    """T = max_t with the cache overflow check and T = 512 ideal: bit-exact, cycle
    model, lanes busy >= 95 %."""
    for case in (KV4Case(config=cfg, T=512, seed=7),
                 KV4Case(config=cfg, T=cfg.max_t, seed=8, overflow_check=True)):
        rec = _run_item(case, "verilator")
        assert rec["passed"], rec["errors"]
        assert rec["cycles"] == rec["expected_cycles"]
        assert rec["lanes_busy"] >= 0.95


@pytest.mark.slow
def test_real_smollm2_layer():
    case = KV4Case(config=PLAN_CONFIGS[0], source="real", T=512, kv_head=1,
                   p_idle=0.2, p_stall=0.3)
    rec = _run_item(case, "verilator")
    assert rec["passed"], rec["errors"]
    assert rec["model"] == "smollm2" and rec["real"]["layer"] == 10
    assert rec["cosine_hw_vs_float_scheme"] > 0.9999
    assert abs(rec["cosine"] - rec["cosine_float_kv4_q8"]) < 1e-3
