"""The system performance model (fpga_boards.perf): hand-computed bounds, agreement
with the core's cycle model (hdl.core.cycle_model, held to the RTL) on SmolLM2's
shape and with a compiled image's program, the what-ifs, and the refusals."""
from __future__ import annotations

import json

import pytest
import torch

from golden.core_config import Registers, decode
from golden.system_config import SystemConfig
from hdl.core import cycle_model
from hdl import core_linear
from fpga_boards.boards import BOARDS
from fpga_boards.fit import FitError
from fpga_boards.model_shapes import MODELS
from fpga_boards.perf import (GENERATE_DIR, PerfError, SystemModel, agreement, core_from_json,
                              decoder_for, default_core, evaluate, evaluate_system, lower,
                              main, parse_scheme)
from quantflow.program import compile_program, sim_core_for
from quantflow.shape_image import shape_image
from helpers.tiny_llama import tiny_config, tiny_image, tiny_quantized, token_ids

torch.set_num_threads(1)

U280 = BOARDS["u280"]
SMOL = MODELS["smollm2-135m"]
PLAIN = parse_scheme("w4a8kv4-g64-plain")


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's decoder (context 256) on the default core, lowered once."""
    d = decoder_for(SMOL, PLAIN, 256)
    core = default_core(d)
    return d, core, lower(d, core)


def _model(smol, board=U280, **kw):
    d, core, low = smol
    return SystemModel(d, core, SystemConfig(w_bits=4, group=64, context=256, **kw), board,
                       lowered=low)


def test_board_bandwidths():
    assert U280.banks.gbps == pytest.approx(460.0)
    assert BOARDS["u55c"].banks.gbps == pytest.approx(460.0)
    assert BOARDS["u250"].banks.gbps == pytest.approx(76.8)
    assert U280.memory[1].gbps == pytest.approx(38.4)


def test_linear_bytes_and_stream_by_hand(smol):
    """Every LINEAR's bytes: N K codes (a byte each; half with packed W4), 2 N K / g
    scale bytes, 4 N of S1, 64 of the word; its weight stream beats / f on one port."""
    rtl, packed = _model(smol), _model(smol, packed=True)
    f = 300e6
    seen = 0
    for w in set(rtl.canon):
        ins = decode(w)
        if ins.op != "LINEAR":
            continue
        n, k, g = ins["n"], ins["k"], ins["group"]
        scales = 2 * n * k // g + 4 * n + 64
        assert rtl.cost(w, 1, 0).bytes == n * k + scales
        assert packed.cost(w, 1, 0).bytes == n * k // 2 + scales
        # one port of 32 B at 300 MHz (9.6 GB/s) is below a pseudo-channel's 14.4 GB/s:
        # the engine's beat rate binds, one beat a cycle
        beats = core_linear.mem_beats(rtl.core, n, k, g)
        c = rtl.cost(w, 1, 0)
        assert c.by_bound["engine"] == pytest.approx(beats / f)
        assert c.by_bound["memory"] == 0
        assert c.seconds == pytest.approx(c.cycles / f)
        seen += 1
    assert seen == 7          # q, k, v, o, gate, up, down (distinct shapes and flags)


def test_memory_bound_by_hand(smol):
    """U250 with 32 ports: 8 ports share each 19.2 GB/s DDR4 channel, 2.4 GB/s a port,
    so a LINEAR's stream takes its worst slice's beats x 32 B / 2.4 GB/s."""
    m = _model(smol, board=BOARDS["u250"], ports=32)
    assert m.port_bw == pytest.approx(2.4e9)
    for w in set(m.canon):
        ins = decode(w)
        if ins.op == "LINEAR":
            n, k, g = ins["n"], ins["k"], ins["group"]
            tiles = core_linear.tile_shapes(m.core, n, k, g)
            worst = max(2 * blk + nt * k // 32 for nt, blk in tiles)
            c = m.cost(w, 1, 0)
            assert c.by_bound["memory"] == pytest.approx(worst * 32 / 2.4e9)
            assert c.by_bound["engine"] == 0


def test_bound_and_rtl_seconds(smol):
    d, core, low = smol
    sc = evaluate_system(d, core, SystemConfig(w_bits=4, group=64, context=256), U280,
                         lowered=low)
    assert sc.bound_tps == pytest.approx(460e9 / sc.bytes_per_token)
    assert sc.pct_of_bound == pytest.approx(sc.decode_tps / sc.bound_tps)
    # what the RTL builds: seconds are its cycles at the kernel clock, whole
    assert sc.decode.seconds == pytest.approx(sc.decode.cycles / 300e6)
    assert sum(sc.decode.by_unit.values()) == pytest.approx(sc.decode.seconds)
    assert sum(sc.decode.by_bound.values()) == pytest.approx(sc.decode.seconds)
    assert sc.aggregate_tps == pytest.approx(min(sc.instances * sc.decode_tps, sc.bound_tps))
    assert sc.instances >= 1 and sc.fit.fits


def test_agrees_with_the_cores_cycle_model_on_smollm2(smol):
    """The model's RTL pricing of SmolLM2's whole program is hdl.core.cycle_model's sum
    (plus the start cycle), for decode steps and a prefill block, at two latencies."""
    d, core, low = smol
    for latency in (20, 64):
        m = SystemModel(d, core, SystemConfig(w_bits=4, group=64, context=256), U280,
                        latency=latency, lowered=low)
        for pos, T in ((5, 1), (200, 1), (0, 8), (16, 5)):
            rtl = sum(cycle_model(list(m.words), m.core, Registers(pos=pos, tokens=T),
                                  latency=latency)) + 1
            assert m.run(T, pos).cycles == rtl
    rep = agreement()
    assert rep["within"] and rep["worst_error"] <= 0.02
    assert "agreement on SmolLM2" in rep["text"]


@pytest.mark.skipif(not any(GENERATE_DIR.glob("smollm2*.json")),
                    reason="no `python -m cosim generate` record in build/sim/generate/")
def test_agrees_with_the_cosimulated_core():
    rep = agreement()
    assert rep["against_cosim"]
    for c in rep["checks"]:
        assert c["cosim_cycles"] is not None
        assert abs(c["model_cycles"] - c["cosim_cycles"]) <= 0.02 * c["cosim_cycles"]


def test_shape_only_program_prices_as_a_compiled_one(tmp_path):
    """A compiled random image and the shape-only image of its configuration lower to
    programs whose every instruction takes the same cycles."""
    cfg = tiny_config(heads=4, kv_heads=2)
    ids = token_ids(cfg, 2, 32, seed=3)
    qm = tiny_quantized(cfg, "w4a8kv4-g64-plain", ids, seed=2)
    img = tiny_image(qm, ids, tmp_path / "tiny", context=40)
    core = sim_core_for(img.config, cols=32, rows=2)
    real = compile_program(img, core)
    shape = compile_program(shape_image(img.config), core)
    assert real.labels == shape.labels
    for pos, T in ((0, 5), (7, 1)):
        regs = Registers(pos=pos, tokens=T)
        assert (cycle_model(list(real.words), core, regs, latency=7)
                == cycle_model(list(shape.words), core, regs, latency=7))


def test_compiled_smollm2_image_prices_as_its_shape():
    from helpers.real_model import smollm2_plain_image
    real = smollm2_plain_image()
    core = sim_core_for(real.config)
    a = compile_program(real, core)
    b = compile_program(shape_image(real.config), core)
    assert shape_image(real.config).offsets == real.offsets
    regs = Registers(pos=9, tokens=1)
    assert cycle_model(list(a.words), core, regs, latency=20) == \
        cycle_model(list(b.words), core, regs, latency=20)


def test_whatifs_move_the_figures_the_right_way(smol):
    d, core, low = smol
    base = SystemConfig(w_bits=4, group=64, context=256)
    run = lambda **kw: evaluate_system(d, core, base.replace(**kw), U280, lowered=low,
                                       prefill=False, strict=False)
    rtl = run()
    packed = run(packed=True)
    assert packed.bytes_per_token < rtl.bytes_per_token
    assert packed.decode.seconds < rtl.decode.seconds
    assert run(kv_units=3).decode.by_unit["kv4"] < rtl.decode.by_unit["kv4"]
    sparse = run(packed=True, sparsity="2:4")
    assert sparse.bytes_per_token < packed.bytes_per_token
    assert "sparse DSP engine (2:4)" in sparse.system.whatifs
    batch = run(batch=4)
    assert batch.decode_tps > rtl.decode_tps          # the weights serve four sequences
    pim = run(batch=4, attention="pim")
    assert pim.decode.macs > 0 and pim.system.whatifs[-1] == "attention in PIM banks"
    assert rtl.system.rtl and not packed.system.rtl


def test_llama2_7b_lowers_with_a_labelled_isa_whatif():
    d = decoder_for(MODELS["llama2-7b"], parse_scheme("w4a8kv4-g128"), 64)
    words, notes = lower(d, default_core(d))
    assert notes and "heads field" in notes[0]
    ropes = [decode(w) for w in words if decode(w).op == "ROPE"]
    assert sum(r["heads"] for r in ropes) == d.layers * (d.heads + d.kv_heads)


def test_report_json_and_roofline(tmp_path, capsys):
    rc = main(["--board", "u280", "--model", "smollm2", "--scheme", "w4a8kv4-g64",
               "--context", "128", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "RTL as built" in out and "agreement on SmolLM2" in out and "within 2%: yes" in out
    j, = tmp_path.glob("*.json")
    rep = json.loads(j.read_text())
    assert rep["scenarios"][0]["rtl"] and rep["agreement"]["within"]
    png, = tmp_path.glob("*-roofline.png")
    assert png.stat().st_size > 10_000


def test_any_hf_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}))
    rep = evaluate(str(tmp_path), "w4a8kv4-g64", "u55c", SystemConfig(context=64),
                   with_agreement=False)
    assert rep["scenarios"][0]["decode_tokens_per_s"] > 0


@pytest.mark.parametrize("args, code, match", [
    (["--board", "u999"], 2, "unknown board 'u999'; choose one of u250, u280, u55c"),
    (["--model", "gpt-9"], 2, "unknown model 'gpt-9'"),
    (["--model", "smollm2", "--scheme", "w4a8kv4-g128"], 2, "group=64"),
    (["--scheme", "w4-whatever"], 2, "unknown scheme"),
    (["--model", "smollm2", "--scheme", "w4a8kv4-g64", "--instances", "500"], 3,
     "does not fit U280"),
    (["--model", "smollm2", "--scheme", "w4a8kv4-g64", "--batch", "64"], 2, "max_tokens"),
    (["--model", "smollm2", "--scheme", "w4a8kv4-g64", "--attention", "pim"], 2,
     "batch >= 2"),
    (["--model", "smollm2", "--scheme", "w4a8kv4-g64", "--core-config", '{"rowz": 2}'], 2,
     "unknown field"),
])
def test_bad_inputs_give_one_clear_error(args, code, match, capsys, tmp_path):
    assert main(args + ["--no-plot", "--no-agreement", "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_config_that_does_not_fit_raises(smol):
    d, core, low = smol
    with pytest.raises(FitError, match="does not fit U280"):
        evaluate_system(d, core, SystemConfig(w_bits=4, group=64, context=256,
                                              instances=500), U280, lowered=low)
    big = core_from_json(d, {"buffers": 16, "max_tokens": 256})
    with pytest.raises(FitError, match="BRAM36"):
        evaluate_system(d, big, SystemConfig(w_bits=4, group=64, context=256), U280,
                        lowered=low, prefill=False)
    with pytest.raises(PerfError, match="cannot generate"):
        SystemModel(d, core.replace(beat_bytes=64), SystemConfig(w_bits=4, group=64,
                                                                 context=256), U280)
