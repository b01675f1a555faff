"""golden.pim and golden.pim_config: configuration errors, the word format,
functional memory + GEMV, the checker's rules and the scheduler's legality /
cycle figures."""
from __future__ import annotations

import pytest
import torch

from golden.pim import Checker, expected_outputs, gemv, schedule
from golden.pim_config import (RULES, TIMING_FIELDS, Cmd, GemvJob, MemReq, PIMConfig,
                               pack_word, rule_bit, unpack_word)
from quantflow.pim import mixed_workload, subbatch_workload

SMALL = dict(banks=2, rows=8, columns=32, lanes=8, tCL=3, tRCD=3, tRP=2, tRAS=6,
             tCCD_S=1, tCCD_L=2, tWR=3, tFAW=8, quantum=4, max_job_rows=2)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kw, match", [
    ({"lanes": 0}, "lanes must be >= 1"),
    ({"columns": 100, "lanes": 16}, "not a multiple of lanes"),
    ({"mode": "fast"}, "mode must be one of"),
    ({"banks": 0}, "banks must be >= 1"),
    ({"max_job_rows": 100}, "max_job_rows"),
    ({"columns": 1 << 20}, "could wrap"),
] + [({t: 0}, f"timing {t} must be >= 1") for t in TIMING_FIELDS])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        PIMConfig(**kw)


@pytest.mark.parametrize("kw", [{"banks": 2.0}, {"rows": "64"}, {"tCL": True},
                                {"quantum": None}])
def test_config_wrong_type(kw):
    with pytest.raises(TypeError, match="must be an int"):
        PIMConfig(**kw)


def test_config_derived():
    c = PIMConfig()
    assert (c.lanes, c.col_words, c.word_bits) == (16, 16, 128)
    assert (c.tCL, c.tRCD, c.tRP, c.tRAS, c.tCCD_S, c.tCCD_L, c.tWR, c.tFAW) == (
        14, 14, 14, 34, 1, 2, 16, 30)  # DESIGN §3.6
    assert PIMConfig(tRP=5).name() != c.name()


# ------------------------------------------------------------------ functional
def test_pack_roundtrip():
    vals = [-128, -1, 0, 1, 127, 5, -7, 64]
    assert unpack_word(pack_word(vals, 8), 8) == vals
    with pytest.raises(ValueError):
        pack_word([128] + [0] * 7, 8)


def test_gemv_matches_loop():
    g = torch.Generator().manual_seed(0)
    W = torch.randint(-128, 128, (5, 32), generator=g)
    x = torch.randint(-128, 128, (32,), generator=g)
    want = [sum(int(W[i, k]) * int(x[k]) for k in range(32)) for i in range(5)]
    assert gemv(W, x).tolist() == want


def test_reads_return_last_write_and_gemv():
    cfg = PIMConfig(**SMALL)
    S = torch.arange(cfg.banks * cfg.rows * cfg.columns).reshape(
        cfg.banks, cfg.rows, cfg.columns) % 200 - 100
    w1 = pack_word([1] * 8, 8)
    w2 = pack_word([2] * 8, 8)
    mem = [MemReq(0, 5, 1, False), MemReq(0, 5, 1, True, w1), MemReq(1, 6, 0, True, w2),
           MemReq(0, 5, 1, False), MemReq(1, 6, 0, False), MemReq(0, 5, 1, True, w2),
           MemReq(0, 5, 1, False)]
    vec = tuple(range(-16, 16))
    jobs = [GemvJob(1, 0, 2, vec)]
    reads, results = expected_outputs(cfg, S, mem, jobs)
    assert reads == [pack_word(S[0, 5, 8:16].tolist(), 8), w1, w2, w2]
    assert results == [sum(int(S[1, r, k]) * vec[k] for k in range(32)) for r in (0, 1)]
    with pytest.raises(ValueError, match="memory stream writes"):
        expected_outputs(cfg, S, mem, [GemvJob(0, 5, 1, vec)])


def test_bad_requests():
    cfg = PIMConfig(**SMALL)
    S = torch.zeros(cfg.banks, cfg.rows, cfg.columns, dtype=torch.int64)
    with pytest.raises(ValueError, match="outside"):
        expected_outputs(cfg, S, [MemReq(2, 0, 0, False)], [])
    with pytest.raises(ValueError, match="consecutive rows"):
        expected_outputs(cfg, S, [], [GemvJob(0, 7, 2, (0,) * 32)])
    with pytest.raises(ValueError, match="vector has 31 values"):
        expected_outputs(cfg, S, [], [GemvJob(0, 0, 1, (0,) * 31)])


# ------------------------------------------------------------------ checker
def _m(kind, bank=0, row=0, col=0):
    return Cmd("m", kind, bank, row, col)


def _p(kind, bank=0, row=0, col=0):
    return Cmd("p", kind, bank, row, col)


#: (rule, mode, [(cycle, mem cmd, pim cmd), ...]); the last step breaks the rule.
ILLEGAL = [
    ("act_open", "dual", [(0, _m("ACT", row=1), None), (40, _m("ACT", row=2), None)]),
    ("act_trp", "dual", [(0, _m("ACT", row=1), None), (10, _m("PRE"), None),
                         (11, _m("ACT", row=2), None)]),
    ("act_conflict", "dual", [(0, None, _p("PACT", row=3)), (5, _m("ACT", row=3), None)]),
    ("act_conflict", "blocked", [(0, None, _p("PACT", row=3)), (5, _m("ACT", row=4), None)]),
    ("col_closed", "dual", [(0, _m("RD"), None)]),
    ("col_trcd", "dual", [(0, _m("ACT", row=1), None), (1, _m("RD"), None)]),
    ("col_tccd", "dual", [(0, _m("ACT", row=1), None), (5, _m("RD"), None),
                          (6, _m("WR"), None)]),
    ("pre_closed", "dual", [(0, _m("PRE"), None)]),
    ("pre_tras", "dual", [(0, _m("ACT", row=1), None), (3, _m("PRE"), None)]),
    ("pre_twr", "dual", [(0, _m("ACT", row=1), None), (9, _m("WR"), None),
                         (10, _m("PRE"), None)]),
    ("pact_open", "dual", [(0, None, _p("PACT", row=1)), (20, None, _p("PACT", row=2))]),
    ("pact_trp", "dual", [(0, None, _p("PACT", row=1)), (10, None, _p("PPRE")),
                          (11, None, _p("PACT", row=1))]),
    ("pact_conflict", "dual", [(0, _m("ACT", row=2), None), (1, None, _p("PACT", row=2))]),
    ("comp_closed", "dual", [(0, None, _p("COMP"))]),
    ("comp_trcd", "dual", [(0, None, _p("PACT", row=1)), (2, None, _p("COMP"))]),
    ("pcol_tccd", "dual", [(0, None, _p("GWR")), (1, None, _p("GWR", col=1))]),
    ("ppre_closed", "dual", [(0, None, _p("PPRE"))]),
    ("ppre_tras", "dual", [(0, None, _p("PACT", row=1)), (5, None, _p("PPRE"))]),
    ("dual_act", "dual", [(0, _m("ACT", row=1), _p("PACT", row=2))]),
    ("bus_conflict", "dual", [(0, _m("ACT", row=4), None), (5, _m("RD"), None),
                              (8, None, _p("GWR"))]),
    ("bus_conflict", "dual", [(0, _m("ACT", row=4), None), (5, _m("WR"), _p("GWR"))]),
    ("tfaw", "dual", [(0, _m("ACT", 0, 4), _p("PACT", 1, 1)), (1, _m("ACT", 1, 5), None),
                      (2, None, _p("PACT", 0, 2)), (3, _m("ACT", 2, 6), None)]),
    ("blocked_excl", "blocked", [(0, _m("ACT", 0, 4), None), (3, None, _p("GWR", 1))]),
    ("blocked_excl", "blocked", [(0, _m("WR", 0), _p("GWR", 1))]),
]


def illegal_cases():
    return [pytest.param(r, mode, seq, id=f"{r}-{mode}-{i}")
            for i, (r, mode, seq) in enumerate(ILLEGAL)]


@pytest.mark.parametrize("rule, mode, seq", illegal_cases())
def test_checker_catches(rule, mode, seq):
    chk = Checker(PIMConfig(mode=mode, **{**SMALL, "banks": 4}))
    *ok, last = seq
    for t, m, p in ok:
        assert chk.issue(t, m, p) == 0, (t, m, p)
    err = chk.issue(*last)
    assert err >> rule_bit(rule) & 1, [RULES[i] for i in range(len(RULES)) if err >> i & 1]


def test_every_rule_has_a_case():
    covered = {r for r, _, _ in ILLEGAL}
    assert covered == set(RULES) - {"row_range"}  # row_range: only with rows not 2**n


def test_row_range():
    chk = Checker(PIMConfig(**{**SMALL, "rows": 6, "max_job_rows": 2}))
    assert chk.issue(0, _m("ACT", row=7), None) >> rule_bit("row_range") & 1


# ------------------------------------------------------------------ scheduler
@pytest.mark.parametrize("mode", ["dual", "blocked"])
def test_schedule_is_legal_and_complete(mode):
    cfg = PIMConfig(mode=mode, **SMALL)
    w = mixed_workload(cfg, seed=5, n_mem=300, n_jobs=12, job_rows=2, max_burst=5)
    r = schedule(cfg, w.mem, w.jobs)
    # replay the trace through an independent checker, every cycle
    chk = Checker(cfg)
    for t, m, p in r.trace:
        assert chk.issue(t, m, p) == 0, (t, m, p)
    assert r.errors == 0
    assert len(r.read_times) == w.n_reads and len(r.result_times) == w.n_results
    assert r.count("RD") + r.count("WR") == len(w.mem)
    assert r.count("COMP") == w.n_results * cfg.col_words
    assert r.count("GWR") == len(w.jobs) * cfg.col_words
    assert r.cycles > max(r.read_times + r.result_times)


def test_subbatch_speedup_model():
    """Dual mode overlaps the two sub-batches; blocked serialises them."""
    cyc = {}
    for mode in ("dual", "blocked"):
        cfg = PIMConfig(mode=mode)
        w = subbatch_workload(cfg, seed=3, rounds=3)
        r = schedule(cfg, w.mem, w.jobs)
        cyc[mode] = r.cycles
        u = r.utilisation()
        assert 0 < u["pim_lanes"] <= 1 and 0 < u["data_bus"] <= 1
    assert cyc["blocked"] / cyc["dual"] >= 1.6


def test_blocked_never_overlaps():
    cfg = PIMConfig(mode="blocked", **{k: v for k, v in SMALL.items()})
    w = mixed_workload(cfg, seed=9, n_mem=200, n_jobs=8)
    r = schedule(cfg, w.mem, w.jobs)
    assert all(m is None or p is None for _, m, p in r.trace)
