# amaranth: UnusedElaboratable=no
"""hdl.lut: the LUT block under random stream stalls, bit-exact against
golden.lut; W1/W2/W4/ternary tiles switched at run time through one elaboration;
cycle model equal to the simulated count; the run-time mode error."""
import random

import pytest
import torch

from helpers.amaranth_streams import (StreamSink, StreamSource, TransferMonitor, pack, simulate,
                                      unpack_signed)

from golden.lut import lut_acc
from golden.lut_config import LUTConfig, MODES
from hdl.generate import verilog
from hdl.lut import (LUTBlock, cycle_model, dq_lane_length, dq_lanes_per_unit, dq_units,
                     latency, precompute_share)


def _random_tile(cfg, mode, gen):
    a = torch.randint(-128, 128, (cfg.rows, cfg.K), generator=gen)
    q = torch.randint(0, mode.max_code + 1, (cfg.cols, cfg.K), generator=gen)
    s2 = torch.randint(1, 256, (cfg.cols, cfg.groups), generator=gen)
    z = (torch.ones_like(s2) if mode.ternary
         else torch.randint(0, mode.levels + 1, (cfg.cols, cfg.groups), generator=gen))
    s2 = torch.where(z * s2 > 255, torch.clamp(255 // torch.clamp(z, min=1), min=1), s2)
    return a, q, s2, z


# --- words written from golden/lut_config.py's documented layouts ---
def _tile_beats(cfg, mode, tile):
    a, q, s2, z = tile
    act = [pack([a[r, 4 * c + t] for r in range(cfg.rows) for t in range(4)], 8)
           for c in range(cfg.chunks)]
    code = []
    for c in range(cfg.chunks):
        for s in range(cfg.slices):
            for i in reversed(range(mode.bits)):
                code.append(pack([sum((((int(q[s * cfg.lanes + l, 4 * c + t]) >> i) & 1) << t)
                                       for t in range(4)) for l in range(cfg.lanes)], 4))
    zs2 = z * s2
    scale = [pack([int(s2[n, g]) | (int(zs2[n, g]) << 8)
                    for n in range(s * cfg.lanes, (s + 1) * cfg.lanes)], 16)
             for g in range(cfg.groups) for s in range(cfg.slices)]
    return act, code, scale


def _run(cfg, tiles, *, p_idle, p_stall, seed, bits_override=None):
    """tiles: list of (mode, (a, q, s2, z)). Returns (results per tile as
    [rows, cols] lists, cycles first-accepted .. last-result inclusive, error)."""
    rng = random.Random(seed)
    dut = LUTBlock(cfg)
    beats = [_tile_beats(cfg, mode, t) for mode, t in tiles]
    # the plane count to drive while the code beats of each tile are offered
    code_modes = [mode.bits for (mode, _), b in zip(tiles, beats) for _ in b[1]]
    if bits_override is not None:
        code_modes = bits_override(code_modes)

    def drive_bits(ctx, n):
        ctx.set(dut.bits, code_modes[n])

    sources = [StreamSource(dut.act, [w for b in beats for w in b[0]], rng, p_idle=p_idle),
               StreamSource(dut.code, [w for b in beats for w in b[1]], rng, p_idle=p_idle,
                            before_beat=drive_bits),
               StreamSource(dut.scale, [w for b in beats for w in b[2]], rng, p_idle=p_idle)]
    n_results = len(tiles) * cfg.slices
    deadline = 6 * (sum(len(s.words) for s in sources) + n_results) + 200
    sink = StreamSink(dut.result, rng, count=n_results, p_stall=p_stall,
                      limit=int(deadline / max(1e-3, (1 - p_stall) * (1 - p_idle) ** 2)),
                      decode=lambda w: unpack_signed(w, 32, cfg.rows * cfg.lanes))
    monitor = TransferMonitor(dut.code.valid & dut.code.ready,
                              dut.result.valid & dut.result.ready)
    err = {"v": 0}

    async def read_error(ctx):
        async for _, _, e in ctx.tick().sample(dut.error):
            err["v"] |= e

    simulate(dut, sink, background=[*sources, monitor, read_error])
    got = sink.got
    results = []
    for t in range(len(tiles)):
        acc = [[0] * cfg.cols for _ in range(cfg.rows)]
        for s in range(cfg.slices):
            word = got[t * cfg.slices + s]
            for r in range(cfg.rows):
                for l in range(cfg.lanes):
                    acc[r][s * cfg.lanes + l] = word[r * cfg.lanes + l]
        results.append(acc)
    return results, monitor.cycles, err["v"]


CFG_A = LUTConfig(rows=1, cols=8, lanes=4, K=64, group=32)
CFG_B = LUTConfig(rows=2, cols=4, lanes=2, K=64, group=64)
#: rows*lanes = 16 > group/4 - 1 = 7: four time-shared DQ units of 2 lanes.
CFG_C = LUTConfig(rows=2, cols=16, lanes=8, K=64, group=32)


@pytest.mark.parametrize("cfg", [CFG_A, CFG_B, CFG_C], ids=["r1c8l4", "r2c4l2", "r2c16l8"])
def test_runtime_modes_bit_exact_under_stalls(cfg):
    gen = torch.Generator().manual_seed(cfg.rows)
    names = ["w1", "w2", "w4", "ternary", "w2"]
    tiles = [(MODES[n], _random_tile(cfg, MODES[n], gen)) for n in names]
    got, _, err = _run(cfg, tiles, p_idle=0.3, p_stall=0.4, seed=7)
    assert not err
    for (mode, (a, q, s2, z)), res in zip(tiles, got):
        want = lut_acc(a, q, s2, z, cfg, mode).tolist()
        assert res == want, f"{mode.name} tile differs"


@pytest.mark.parametrize("name", ["w1", "w2", "w4", "ternary"])
@pytest.mark.parametrize("cfg", [CFG_A, CFG_C], ids=["r1c8l4", "r2c16l8"])
def test_cycle_model_ideal(name, cfg):
    mode = MODES[name]
    gen = torch.Generator().manual_seed(3)
    tiles = [(mode, _random_tile(cfg, mode, gen)) for _ in range(3)]
    got, cycles, err = _run(cfg, tiles, p_idle=0.0, p_stall=0.0, seed=1)
    assert not err
    assert cycles == cycle_model(cfg, mode, 3)
    assert cycles == 3 * mode.bits * (cfg.K // 4) * (cfg.cols // cfg.lanes) + latency(cfg)
    for (_, (a, q, s2, z)), res in zip(tiles, got):
        assert res == lut_acc(a, q, s2, z, cfg, mode).tolist()


def test_mode_changed_mid_tile_raises_error():
    cfg = CFG_A
    gen = torch.Generator().manual_seed(4)
    tiles = [(MODES["w2"], _random_tile(cfg, MODES["w2"], gen))]

    def flip(modes):
        modes = list(modes)
        modes[len(modes) // 2] = 4  # plane count changed inside the tile
        return modes
    _, _, err = _run(cfg, tiles, p_idle=0.0, p_stall=0.0, seed=1, bits_override=flip)
    assert err == 1


def test_unsupported_bits_not_accepted():
    cfg = CFG_A
    dut = LUTBlock(cfg)
    state = {}

    async def tb(ctx):
        ctx.set(dut.bits, 3)
        ctx.set(dut.code.valid, 1)
        ctx.set(dut.act.valid, 1)
        ctx.set(dut.scale.valid, 1)
        ctx.set(dut.result.ready, 1)
        taken = 0
        for _ in range(10):
            _, _, r = await ctx.tick().sample(dut.code.ready)
            taken += r
        state["taken"], state["err"] = taken, ctx.get(dut.error)

    simulate(dut, tb)
    assert state == {"taken": 0, "err": 1}


def test_model_figures():
    cfg = LUTConfig(rows=1, cols=64, lanes=8, K=1024, group=64)
    for name in ("w1", "w2", "w4", "ternary"):
        mode = MODES[name]
        assert precompute_share(cfg, mode, 1) < 0.05
        work = cfg.beats_per_tile(mode) * 4
        assert work / cycle_model(cfg, mode, 4) >= 0.98
    with pytest.raises(ValueError, match="tiles"):
        cycle_model(cfg, MODES["w2"], 0)


def test_verilog_ports():
    text = verilog(LUTBlock(CFG_A), "lut_test")
    for port in ("act__payload", "code__valid", "scale__ready", "result__payload", "bits",
                 "error", "clk", "rst"):
        assert port in text


def test_dq_split():
    # one DQ unit walks slices*rows*lk cells per group; the walk must end before
    # the next group's first holding-ring push ((group/4 - 1) * slices beats
    # later at W1) and stay within `group` cells
    for cfg in (CFG_A, CFG_B, CFG_C, LUTConfig(rows=1, cols=64, lanes=8, K=1024, group=64),
                LUTConfig(rows=2, cols=32, lanes=8, K=256, group=64)):
        lk = dq_lanes_per_unit(cfg)
        assert cfg.lanes % lk == 0 and dq_units(cfg) * lk == cfg.lanes
        assert cfg.rows * lk <= cfg.group // 4 - 1
        assert dq_lane_length(cfg) == cfg.slices * cfg.rows * lk <= cfg.group
        assert latency(cfg) == 7 + dq_lane_length(cfg)
        if lk < cfg.lanes:  # the next larger divisor would break a bound
            bigger = min(d for d in range(lk + 1, cfg.lanes + 1) if cfg.lanes % d == 0)
            assert (cfg.rows * bigger > cfg.group // 4 - 1
                    or cfg.slices * cfg.rows * bigger > cfg.group)
    assert dq_units(LUTConfig(rows=1, cols=64, lanes=8, K=1024, group=64)) == 1
    assert dq_units(CFG_C) == 4


def test_too_many_rows_for_the_walk_refused():
    with pytest.raises(ValueError, match="rows=8"):
        LUTBlock(LUTConfig(rows=8, cols=8, lanes=8, K=64, group=32))
