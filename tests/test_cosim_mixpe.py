"""MixPE RTL co-simulated under Verilator against golden.mixpe, bit for bit.

Builds are shared with `make sim` (same Verilog -> same cached model), data is
exported by quantflow into a per-session temporary directory.
"""
from __future__ import annotations

import shutil

import pytest

from golden.mixpe_config import MixPEConfig

from cosim import mixpe
from cosim.cases import RealLayer
from cosim.mixpe import REAL_Q_PROJ, MixPECase, default_plan, real_plan
from hdl.mixpe import cycle_model, system_cycle_model

PLAN = default_plan()
# Four plan configurations (bits 4/2/8/3; groups 64/128/32; shapes 1x8, 4x8,
# 1x16, 2x4; GEMV and GEMM), on fewer tiles than `make sim` uses.
STREAM_CONFIGS = [PLAN[0].config, PLAN[2].config, PLAN[3].config, PLAN[4].config]


def _case(config: MixPEConfig, seed: int, **kw) -> MixPECase:
    m = 1 if config.rows == 1 else 2
    return MixPECase(config=config, m_tiles=m, n_tiles=kw.pop("n_tiles", 2), seed=seed, **kw)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mixpe_data")


def _assert_passed(res):
    assert res["passed"], res.get("errors")
    assert res["mismatches"] == 0
    assert res["vectors"] == res["expected_vectors"] > 0


@pytest.mark.parametrize("config", STREAM_CONFIGS, ids=lambda c: c.name())
def test_stream_bit_exact_with_backpressure(config, data_root):
    case = _case(config, seed=101 + config.bits, p_idle=0.25, p_stall=0.4)
    res = mixpe.run_stream(case, data_root=data_root)
    _assert_passed(res)
    # The words and expected words came in the job (mixpe.stimulus): no torch in the simulator.
    assert res["torch_imported"] is False
    # Back-pressure and idle cycles were applied (whether a result beat met a
    # low `ready` depends on timing; GEMM runs have enough beats that it does).
    assert res["ready_low_cycles"] > 0 and sum(res["idle_cycles"].values()) > 0
    if config.rows > 1:
        assert res["stall_cycles"] > 0
    # Stalls cost cycles: more than the ideal model, but every MAC was checked.
    assert res["cycles"] > cycle_model(config, case.tiles)
    assert res["macs"] == case.M * case.N * config.K


@pytest.mark.parametrize("config", [STREAM_CONFIGS[0], STREAM_CONFIGS[1]],
                         ids=lambda c: c.name())
def test_cycle_model_matches_rtl(config, data_root):
    case = _case(config, seed=7, n_tiles=3)
    res = mixpe.run_stream(case, data_root=data_root, p_idle=0.0, p_stall=0.0)
    _assert_passed(res)
    assert res["cycles"] == cycle_model(config, case.tiles)


def test_scoreboard_detects_corrupted_expectation(data_root):
    case = _case(STREAM_CONFIGS[1], seed=5)
    res = mixpe.run_stream(case, data_root=data_root, corrupt_expected=[(3, 1 << 40)])
    assert not res["passed"]
    assert res["mismatches"] == 1
    assert any("result word 3" in e for e in res["errors"])
    rec = mixpe.to_record(case, res)
    assert rec["passed"] is False and rec["mismatches"] == 1


def test_fast_path_system(data_root):
    config = MixPEConfig(bits=4, group=64, rows=2, cols=4, K=256)
    case = MixPECase(config=config, m_tiles=2, n_tiles=2, seed=9)
    res = mixpe.run_fast(case, data_root=data_root)
    _assert_passed(res)
    assert res["torch_imported"] is False  # stimulus and golden words came in the job
    # The system's counter runs from start to done: the array's ideal cycles
    # plus the sequencer/memory-read start-up, exactly as modelled.
    assert res["cycles"] == system_cycle_model(config, case.m_tiles, case.n_tiles)
    rec = mixpe.to_record(case, res)
    assert rec["test"].startswith("fast") and rec["utilisation"] > 0.9


@pytest.mark.skipif(shutil.which("iverilog") is None,
                    reason="Icarus Verilog (iverilog) is not installed: apt-get install iverilog")
def test_stream_bit_exact_under_icarus(data_root):
    """Second simulator (DESIGN §6): the same Verilog and testbench under Icarus."""
    config = MixPEConfig(bits=4, group=32, rows=2, cols=3, K=64)
    case = MixPECase(config=config, m_tiles=2, n_tiles=2, seed=11, p_idle=0.2, p_stall=0.3)
    res = mixpe.run_stream(case, build=mixpe.stream_build(config, sim="icarus"),
                           data_root=data_root)
    _assert_passed(res)
    assert res["sim"] == "icarus"


@pytest.mark.slow
@pytest.mark.parametrize("case", PLAN, ids=lambda c: c.name)
def test_plan_case_full_size(case, data_root):
    """The `make sim` workloads (>= 100k compared MACs each)."""
    res = mixpe.run_stream(case, data_root=data_root)
    _assert_passed(res)
    assert res["macs"] >= 100_000


# --------------------------------------------------------------------------- real layer
def _real_case(**kw) -> MixPECase:
    # 16 of q_proj's 576 output channels, 4 tokens: the make-sim configuration
    # (same Verilog, so the same cached build) on a slice of its workload
    return MixPECase(config=REAL_Q_PROJ, m_tiles=1, n_tiles=2, seed=3,
                     real=RealLayer(layer="layers.0.self_attn.q_proj"), **kw)


def test_real_smollm2_layer_bit_exact(data_root):
    """A real SmolLM2 layer (quantflow's export_real_layer: the scheme's weights,
    activations captured on Hamlet) through the stream testbench with back-pressure."""
    import json

    import torch

    from quantflow import load_mixpe
    from quantflow.export_model import capture_layer_inputs
    from quantflow.models.loaders import load_model

    case = _real_case(p_idle=0.2, p_stall=0.3)
    res = mixpe.run_stream(case, data_root=data_root)
    _assert_passed(res)
    assert res["macs"] == 4 * 16 * 576
    rec = mixpe.to_record(case, res)
    assert rec["passed"] and rec["model"] == "SmolLM2-135M-Instruct"
    assert rec["layer"] == "layers.0.self_attn.q_proj" and rec["layer_shape"] == [576, 576]
    assert rec["text"] == "hamlet" and len(rec["token_ids"]) == 4

    # The images are the real layer: golden's integer result, scaled back to
    # float, approximates the float layer on the same tokens (W4A8 error only).
    d = mixpe.prepare_data(case, root=data_root)
    im = load_mixpe(d, case.config)
    src = json.loads((d / "source.json").read_text())
    lm = load_model("smollm2", progress=False)
    X = capture_layer_inputs(lm.model, src["layer"], torch.tensor([src["token_ids"]]))
    W = lm.model.get_submodule("model." + src["layer"]).weight.detach()[:case.N]
    y = (X @ W.T).double()
    yq = im.acc.double() * im.s1.double()[None] * im.s_a.double()[:, None]
    sqnr = 10 * torch.log10(y.pow(2).sum() / (yq - y).pow(2).sum())
    assert sqnr > 20, sqnr


@pytest.mark.slow
@pytest.mark.parametrize("case", real_plan(),
                         ids=lambda c: c.name)
def test_real_plan_case_full_size(case, data_root):
    """make sim's real SmolLM2 layers, whole (every output channel, 8 tokens)."""
    res = mixpe.run_stream(case, data_root=data_root)
    _assert_passed(res)
    assert res["N"] == 576 and res["macs"] == case.M * 576 * case.config.K


def test_fast_path_with_clock_inside_the_model(data_root):
    """The bench's faster variant (clock toggled inside the Verilator model):
    same results and the same cycle count as the cocotb-clocked fast path."""
    config = MixPEConfig(bits=4, group=64, rows=2, cols=4, K=256)
    case = MixPECase(config=config, m_tiles=2, n_tiles=2, seed=9)
    b = mixpe.system_build(config, max_m_tiles=2, max_n_tiles=2, clock="hdl")
    res = mixpe.run_fast(case, build=b, clock_impl="hdl", data_root=data_root)
    _assert_passed(res)
    assert res["cycles"] == system_cycle_model(config, case.m_tiles, case.n_tiles)
