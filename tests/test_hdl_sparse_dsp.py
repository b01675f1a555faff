"""hdl.sparse_dsp under amaranth.sim: bit-exact against golden over every
pattern x mode x split in one stream (the mode changes per tile), random
stalls, the cycle model equal to the RTL count, utilisation, DSP mapping."""
import random

import pytest
from amaranth.sim import Simulator

from golden.sparse_dsp_config import MODES, PATTERN_NAMES, SparseDSPConfig, TileMode
from hdl.sparse_dsp import SparseDSP, cycle_model, pipeline_latency
from quantflow import quantize_act, random_activations, random_linear_weights
from quantflow.sparse_dsp import quantize_sparse, stream_words

CFG = SparseDSPConfig(L=8, group_len=4, K=64, qgroup=32)
STREAMS = ("ctrl", "act", "weight", "scale")


def workload(cfg, modes):
    seqs = {k: [] for k in STREAMS + ("result",)}
    tiles = []
    for i, md in enumerate(modes):
        S = md.segments(cfg)
        W = random_linear_weights(S * 2, cfg.K, seed=i, outlier_channels=1)
        a, _ = quantize_act(random_activations(2, cfg.K, seed=100 + i))
        w = stream_words(cfg, quantize_sparse(W, config=cfg, mode=md), a)
        for k in seqs:
            seqs[k] += w.get(k, [])
        tiles += [md] * len(w["ctrl"])
    return seqs, tiles


def simulate(cfg, seqs, *, p_idle, p_stall, seed=1, max_cycles=50_000):
    dut = SparseDSP(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got, st = [], {}

    def source(name, words, rnd):
        port = getattr(dut, name)

        async def tb(ctx):
            for w in words:
                while p_idle and rnd.random() < p_idle:
                    await ctx.tick()
                ctx.set(port.valid, 1)
                ctx.set(port.payload.as_value(), w)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return tb

    async def sink(ctx):
        rnd, cyc = random.Random(seed + 7), 0
        while len(got) < len(seqs["result"]):
            ready = not (p_stall and rnd.random() < p_stall)
            ctx.set(dut.result.ready, ready)
            await ctx.delay(0)
            if "first" not in st and ctx.get(dut.act.valid) and ctx.get(dut.act.ready):
                st["first"] = cyc
            if ready and ctx.get(dut.result.valid):
                got.append(ctx.get(dut.result.payload.as_value()))
                st["last"] = cyc
            await ctx.tick()
            cyc += 1
            assert cyc < max_cycles, "watchdog: the chain stopped producing results"

    for i, k in enumerate(STREAMS):
        sim.add_testbench(source(k, seqs[k], random.Random(seed * 10 + i)), background=True)
    sim.add_testbench(sink)
    sim.run()
    return got, st["last"] - st["first"] + 1


ALL_MODES = [TileMode(pattern=p, mode=md, span=s)
             for p in PATTERN_NAMES for md in MODES for s in CFG.spans]


def test_every_mode_ideal_cycles_exact():
    seqs, tiles = workload(CFG, ALL_MODES)
    got, cycles = simulate(CFG, seqs, p_idle=0.0, p_stall=0.0)
    assert got == seqs["result"]
    assert cycles == cycle_model(CFG, tiles)


def test_every_mode_with_stalls():
    modes = list(ALL_MODES)
    random.Random(4).shuffle(modes)
    seqs, _ = workload(CFG, modes)
    got, _ = simulate(CFG, seqs, p_idle=0.3, p_stall=0.5, seed=3)
    assert got == seqs["result"]


def test_scoreboard_can_fail():
    seqs, _ = workload(CFG, ALL_MODES[:2])
    seqs["weight"][0] ^= 1 << 3          # flip one weight bit
    got, _ = simulate(CFG, seqs, p_idle=0.0, p_stall=0.0)
    assert got != seqs["result"]


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_steady_state_utilisation(pattern):
    cfg = SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64)
    for span in cfg.spans:
        tm = TileMode(pattern=pattern, span=span)
        tiles = 64
        macs = tiles * tm.segments(cfg) * cfg.K               # dense-equivalent
        util = macs / cycle_model(cfg, [tm] * tiles) / cfg.peak_macs_per_cycle(pattern)
        assert util >= 0.95
        n, m = tm.nm
        assert cfg.peak_macs_per_cycle(pattern) == cfg.L * m // n
    assert pipeline_latency(cfg) == cfg.group_len + 6


def test_config_errors_at_build_time():
    with pytest.raises(ValueError, match="does not divide L"):
        SparseDSP(SparseDSPConfig(L=8, group_len=3))
    with pytest.raises(TypeError):
        SparseDSP(TileMode())


@pytest.mark.slow
def test_dsp48e2_mapping():
    """synth_xilinx -family xcup: exactly L DSP48E2, every multiplier of the chain
    in a DSP (no LUT multiplier); -family xc7 shows the registers and cascade
    packed (Yosys 0.70 packs them only for DSP48E1; see fpga_boards.sparse_dsp)."""
    from fpga_boards.resources_sparse_dsp import dsp_mapping
    for cfg in (SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64),
                SparseDSPConfig(L=16, group_len=8, K=1024, qgroup=64)):
        up = dsp_mapping(cfg, family="xcup")
        assert up["muls_before"] == cfg.L
        assert up["cells"].get("DSP48E2", 0) == cfg.L
        assert all(d["params"]["USE_MULT"] == "MULTIPLY" for d in up["dsps"])
        assert not any(t.startswith("$") and "mul" in t for t in up["cells"])
        x7 = dsp_mapping(cfg, family="xc7")
        assert x7["cells"].get("DSP48E1", 0) == cfg.L
        for d in x7["dsps"]:
            p = d["params"]
            assert p["AREG"] >= 1 and p["BREG"] >= 1 and p["MREG"] == 1 and p["PREG"] == 1
        assert sum(d["pcin"] for d in x7["dsps"]) == cfg.L - cfg.n_groups
