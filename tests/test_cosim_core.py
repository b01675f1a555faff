"""The accelerator core (hdl.core) co-simulated under Verilator with the AXI memory
model (cosim.core): a random small Llama layer's program parts, prefill and a decode
step, every instruction's result bit-exact with golden.core.execute, the cycles of
every instruction equal to hdl.core.cycle_model, the refused programs with their
error status and instruction, and the mismatch locator naming an injected error.
One Verilator build (about 1.5 minutes cold) serves the module."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cosim import core as cc
from cosim.runner import SimulatorUnavailable
from golden.core import Step

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    shape, scheme = cc.RANDOM_CASES[0]          # Hadamard K/Q, an 8-token 8-bit window
    img, core, runs, mem = cc.random_model_runs(shape, seed=3, scheme=scheme,
                                                workdir=tmp_path_factory.mktemp("core"),
                                                prefill=6, decode_steps=2)
    case = cc.build_case(runs + cc.bad_runs(core), mem, core, name="test")
    try:
        res = cc.run_case(case, latency=cc.SIM_LATENCY)
    except SimulatorUnavailable as e:
        pytest.skip(str(e))
    return case, res


def test_random_layer_is_bit_exact(simulated):
    case, res = simulated
    assert res["mismatch"] is None, res["mismatch"]
    good = [e for e in case.expected if not isinstance(e, dict)]
    assert len(good) == 3          # the whole model: prefill, two decode steps
    for exp, got in zip(good, res["steps"]):
        assert [s.op for s in got] == [s.op for s in exp]
        assert sum(t.numel() for s in got for t in s.outputs.values()) > 1000
    ops = {s.op for run in res["steps"] for s in run}
    from golden.core_config import OPS
    assert ops == set(OPS) - {"LOAD", "STORE", "ADD"}      # the model program's opcodes
    # the next tokens the core wrote are the integer model's
    nxt = [s for run in res["steps"] for s in run if s.op == "ARGMAX"]
    assert len(nxt) == 3 and all(t.outputs["out"].numel() for t in nxt)
    assert case.config.kv4.rotate and case.config.kv4.recent
    # o_proj and down_proj add the residual in the engine's dequant pass
    assert any(s.op == "LINEAR" and s.instr["flags"] for run in res["steps"] for s in run)


def test_cycles_equal_the_cycle_model(simulated):
    case, res = simulated
    assert res["cycle_diffs"] == []
    for r, model, e in zip(res["runs"], res["model_cycles"], case.expected):
        if not isinstance(e, dict):
            assert r["cycles"] == sum(model) + 1


def test_refused_programs_set_their_status(simulated):
    case, res = simulated
    refused = [(run, rr) for run, rr, e in zip(case.runs, res["runs"], case.expected)
               if isinstance(e, dict)]
    assert len(refused) == len(cc.bad_runs(case.config))
    for (run, rr), e in zip(refused, [e for e in case.expected if isinstance(e, dict)]):
        assert rr["error_name"] == e["error"] and rr["err_pc"] == e["pc"], run["name"]
        assert not rr["done"]
    # the refusals the ISA makes are the reference executor's too; the other one is
    # this RTL's limit (a vector that is not whole lanes)
    golden = {run["name"]: e["golden"] for run, e in zip(case.runs, case.expected)
              if isinstance(e, dict)}
    assert all(v for k, v in golden.items() if k != "bad-lanes")


def test_mismatch_locator_names_an_injected_error(simulated):
    case, res = simulated
    exp = [list(e) if not isinstance(e, dict) else e for e in case.expected]
    st = exp[1][5]                 # the decode step's k_proj (after EMBED, norm, QUANT, q)
    assert st.op == "LINEAR"
    out = dict(st.outputs)
    out["acc"] = out["acc"].clone()
    out["acc"][0, 7] += 1
    exp[1][5] = Step(st.index, st.instr, out)
    bad = dataclasses.replace(case, expected=exp)
    mm = cc.compare_runs(bad, res["steps"], res["runs"])
    assert mm["run"] == 1 and mm["index"] == 5 and mm["op"] == "LINEAR"
    assert mm["tensor"] == "acc" and mm["element"] == [0, 7]
    assert mm["expected"] == mm["got"] + 1
    assert "instruction 5 (LINEAR) output 'acc' element [0, 7]" in mm["message"]
    # a cache byte the unit wrote differently is found in its KV_APPEND
    exp = [list(e) if not isinstance(e, dict) else e for e in case.expected]
    i = next(j for j, st in enumerate(exp[0]) if st.op == "KV_APPEND")
    st = exp[0][i]
    out = {k: v.clone() for k, v in st.outputs.items()}
    out["kz"][3] ^= 1
    exp[0][i] = Step(st.index, st.instr, out)
    mm = cc.compare_runs(dataclasses.replace(case, expected=exp), res["steps"], res["runs"])
    assert (mm["run"], mm["index"], mm["op"], mm["tensor"], mm["element"]) == \
        (0, i, "KV_APPEND", "kz", [3])
