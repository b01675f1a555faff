# amaranth: UnusedElaboratable=no
"""hdl.mixpe: the MixPE array under random stream stalls, bit-exact against
golden.mixpe; cycle model against the simulated count; MixPESystem end to end;
Verilog generation and the CLI."""
import random
import subprocess
import sys

import pytest
import torch
from amaranth.hdl import Fragment

from helpers.amaranth_streams import (StreamSink, StreamSource, TransferMonitor, pack, simulate,
                                      unpack_signed)
from golden.mixpe_config import MixPEConfig
from golden.mixpe import mixpe_acc
from hdl.dq_lane import DQLane, DQLaneGeometry
from hdl.generate import default_designs, design_name, verilog, write_verilog
from hdl.mixpe import (LOAD_ACT, LOAD_CODE, LOAD_SCALE, PIPELINE_LATENCY, MixPE, MixPECell,
                       MixPEDQLane, MixPESystem, cycle_model, dq_lane_cells, dq_lane_length,
                       pipeline_latency, system_cycle_model)


# --- memory words written from golden/mixpe_config.py's documented layouts ---
def _scale_word(s2_col, zs2_col):
    return pack([int(s) | (int(zs) << 8) for s, zs in zip(s2_col, zs2_col)], 16)


def _random_tile(cfg, gen):
    """a [rows, K] incl. -128, q [cols, K], s2/z [cols, groups] with z*s2 < 256."""
    a = torch.randint(-128, 128, (cfg.rows, cfg.K), generator=gen)
    q = torch.randint(0, cfg.levels + 1, (cfg.cols, cfg.K), generator=gen)
    s2 = torch.randint(1, 256, (cfg.cols, cfg.groups), generator=gen)
    z = torch.randint(0, cfg.levels + 1, (cfg.cols, cfg.groups), generator=gen)
    # keep z*s2 inside the 8-bit zs2 field: shrink s2 where needed
    s2 = torch.where(z * s2 > 255, torch.clamp(255 // torch.clamp(z, min=1), min=1), s2)
    return a, q, s2, z


def _tile_beats(cfg, tile):
    a, q, s2, z = tile
    act = [pack(a[:, k].tolist(), 8) for k in range(cfg.K)]
    code = [pack(q[:, k].tolist(), cfg.bits) for k in range(cfg.K)]
    scale = [_scale_word(s2[:, g].tolist(), (z * s2)[:, g].tolist()) for g in range(cfg.groups)]
    return act, code, scale


def _run_array(cfg, tiles, *, p_idle, p_stall, seed):
    """Stream `tiles` through MixPE; returns (results per tile, cycles from the
    first accepted beat to the last result transfer, inclusive)."""
    rng = random.Random(seed)
    dut = MixPE(cfg)
    beats = [_tile_beats(cfg, t) for t in tiles]
    sources = [StreamSource(stream, [b for t in beats for b in t[i]], rng, p_idle=p_idle)
               for i, stream in enumerate((dut.act, dut.code, dut.scale))]
    n_results = len(tiles) * cfg.rows
    # generous bound so that a deadlock fails instead of hanging
    deadline = 4 * (sum(len(s.words) for s in sources) + n_results) + 100
    sink = StreamSink(dut.result, rng, count=n_results, p_stall=p_stall,
                      limit=int(deadline / max(1e-3, (1 - p_stall) * (1 - p_idle))),
                      decode=lambda w: unpack_signed(w, 32, cfg.cols))
    monitor = TransferMonitor(dut.act.valid & dut.act.ready,
                              dut.result.valid & dut.result.ready)
    simulate(dut, sink, background=[*sources, monitor])
    got = sink.got
    results = [got[i * cfg.rows:(i + 1) * cfg.rows] for i in range(len(tiles))]
    return results, monitor.cycles


def _expected(cfg, tile):
    return mixpe_acc(*tile, cfg).tolist()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_array_matches_golden_under_random_stalls(bits):
    cfg = MixPEConfig(bits=bits, group=32, rows=2, cols=3, K=64)
    gen = torch.Generator().manual_seed(bits)
    tiles = [_random_tile(cfg, gen) for _ in range(3)]
    got, _ = _run_array(cfg, tiles, p_idle=0.3, p_stall=0.4, seed=bits)
    for i, tile in enumerate(tiles):
        assert got[i] == _expected(cfg, tile), f"tile {i}"


def test_array_extreme_operands_wrap_like_golden():
    """All-(-128) activations and all-max codes/scales: the largest magnitudes;
    K=2*128... keeps the int32 path exercised without relying on random draws."""
    cfg = MixPEConfig(bits=8, group=64, rows=1, cols=2, K=128)
    a = torch.full((1, cfg.K), -128)
    q = torch.full((cfg.cols, cfg.K), cfg.levels)
    s2 = torch.tensor([[255, 255], [1, 1]])
    z = torch.tensor([[0, 0], [255, 0]])
    got, _ = _run_array(cfg, [(a, q, s2, z)], p_idle=0.2, p_stall=0.2, seed=7)
    assert got[0] == _expected(cfg, (a, q, s2, z))


@pytest.mark.parametrize("cfg, tiles", [
    (MixPEConfig(bits=4, group=32, rows=2, cols=3, K=64), 3),
    (MixPEConfig(bits=2, group=32, rows=1, cols=2, K=32), 4),
    # rows + latency > K: tiles are spaced by the output drain, not by K
    (MixPEConfig(bits=4, group=32, rows=40, cols=1, K=32), 3),
    # rows*cols == group with groups back to back: the lane has no idle cycle,
    # the next group's sums are latched in the cycle after its last PE's E1
    (MixPEConfig(bits=4, group=32, rows=4, cols=8, K=96), 3),
    # rows*cols == group == K: one group per tile, latency + rows > K
    (MixPEConfig(bits=2, group=32, rows=2, cols=16, K=32), 3),
    # two unequal DQ lanes (18 + 17 PEs)
    (MixPEConfig(bits=4, group=32, rows=5, cols=7, K=64), 2),
])
def test_cycle_model_equals_simulation(cfg, tiles):
    gen = torch.Generator().manual_seed(tiles)
    data = [_random_tile(cfg, gen) for _ in range(tiles)]
    got, cycles = _run_array(cfg, data, p_idle=0.0, p_stall=0.0, seed=0)
    assert cycles == cycle_model(cfg, tiles)
    for i, tile in enumerate(data):
        assert got[i] == _expected(cfg, tile)


def test_cycle_model_shape():
    cfg = MixPEConfig(bits=4, group=64, rows=4, cols=8, K=1024)
    # 32 PEs, group 64: one lane walks all 32 PEs after the fixed stages
    assert pipeline_latency(cfg) == PIPELINE_LATENCY + cfg.rows * cfg.cols
    assert cycle_model(cfg, 1) == cfg.K + pipeline_latency(cfg) + cfg.rows - 1
    assert cycle_model(cfg, 5) - cycle_model(cfg, 4) == cfg.K
    with pytest.raises(ValueError, match="tiles"):
        cycle_model(cfg, 0)


# --- time-shared dequantization lanes ---
@pytest.mark.parametrize("cfg, tiles, p_idle, p_stall", [
    # 35 PEs, group 32: two lanes of 18 and 17 PEs, under random stalls
    (MixPEConfig(bits=4, group=32, rows=5, cols=7, K=96), 2, 0.3, 0.4),
    # 80 PEs: three lanes; lane 1 covers columns 27..39 of row 0 and 0..13 of row 1
    (MixPEConfig(bits=3, group=32, rows=2, cols=40, K=64), 2, 0.2, 0.3),
    # rows*cols == group: one lane that is busy in every cycle of a group
    (MixPEConfig(bits=8, group=32, rows=4, cols=8, K=96), 2, 0.2, 0.5),
])
def test_lanes_match_golden_under_random_stalls(cfg, tiles, p_idle, p_stall):
    gen = torch.Generator().manual_seed(cfg.rows * cfg.cols)
    data = [_random_tile(cfg, gen) for _ in range(tiles)]
    got, _ = _run_array(cfg, data, p_idle=p_idle, p_stall=p_stall, seed=cfg.cols)
    for i, tile in enumerate(data):
        assert got[i] == _expected(cfg, tile), f"tile {i}"


@pytest.mark.parametrize("rows, cols, group", [
    (1, 8, 64), (4, 4, 64), (8, 8, 64), (5, 7, 32), (2, 40, 32), (40, 1, 32), (16, 16, 32),
    (1, 257, 256),
])
def test_dq_lane_cells_partition(rows, cols, group):
    cfg = MixPEConfig(bits=4, group=group, rows=rows, cols=cols, K=group)
    lanes = dq_lane_cells(cfg)
    want_lanes = -(-rows * cols // group)          # each lane: at most `group` PEs
    assert cfg.dq_lanes == len(lanes) == want_lanes
    flat = [cell for lane in lanes for cell in lane]
    assert flat == [(r, c) for r in range(rows) for c in range(cols)]  # all PEs, once, in order
    sizes = [len(lane) for lane in lanes]
    assert max(sizes) <= group and max(sizes) - min(sizes) <= 1
    assert dq_lane_length(cfg) == max(sizes) == sizes[0]
    for lane in lanes:  # every lane is a buildable run
        Fragment.get(MixPEDQLane(cfg, cells=lane), None)


def test_dq_lane_rejects_bad_cells():
    cfg = MixPEConfig(bits=4, group=32, rows=2, cols=40, K=32)
    with pytest.raises(ValueError, match="1..group"):
        MixPEDQLane(cfg, cells=[(0, c) for c in range(33)])
    with pytest.raises(ValueError, match="consecutive"):
        MixPEDQLane(cfg, cells=[(0, 0), (0, 2)])
    with pytest.raises(ValueError, match="consecutive"):
        MixPEDQLane(cfg, cells=[(2, 0)])


def test_dq_lane_geometry():
    """A MixPE lane's geometry is its run's walk over its own columns; the
    geometry itself refuses walks that are not one."""
    cfg = MixPEConfig(bits=3, group=32, rows=2, cols=40, K=64)
    lane = MixPEDQLane(cfg, cells=dq_lane_cells(cfg)[1])  # columns 27..39, then 0..13
    g = lane.geometry
    assert (g.cells, g.cols, g.col_start, g.rows) == (27, 27, 14, 2)
    assert len(lane.cols) == g.cols and len(lane.rows) == g.rows
    assert DQLaneGeometry(cells=12, cols=4, pg_shape=8, ag_shape=8, col_start=3).rows == 4
    with pytest.raises(ValueError, match="cells"):
        DQLaneGeometry(cells=0, cols=1, pg_shape=8, ag_shape=8)
    with pytest.raises(ValueError, match="col_start"):
        DQLaneGeometry(cells=2, cols=2, pg_shape=8, ag_shape=8, col_start=2)
    with pytest.raises(TypeError, match="DQLaneGeometry"):
        DQLane(cfg)


# --- MixPESystem ---
def _run_system(cfg, m_tiles, n_tiles, a, q, s2, z, *, max_m, max_n):
    dut = MixPESystem(cfg, max_m_tiles=max_m, max_n_tiles=max_n)
    out = {}

    async def bench(ctx):
        loads = []
        for tm in range(m_tiles):
            for k in range(cfg.K):
                loads.append((LOAD_ACT, tm * cfg.K + k,
                              pack(a[tm * cfg.rows:(tm + 1) * cfg.rows, k].tolist(), 8)))
        for tn in range(n_tiles):
            cols = slice(tn * cfg.cols, (tn + 1) * cfg.cols)
            for k in range(cfg.K):
                loads.append((LOAD_CODE, tn * cfg.K + k, pack(q[cols, k].tolist(), cfg.bits)))
            for g in range(cfg.groups):
                loads.append((LOAD_SCALE, tn * cfg.groups + g,
                              _scale_word(s2[cols, g].tolist(), (z * s2)[cols, g].tolist())))
        for sel, addr, word in loads:
            ctx.set(dut.load_sel, sel)
            ctx.set(dut.load_addr, addr)
            ctx.set(dut.load_data, word)
            ctx.set(dut.load_en, 1)
            await ctx.tick()
        ctx.set(dut.load_en, 0)
        ctx.set(dut.m_tiles, m_tiles)
        ctx.set(dut.n_tiles, n_tiles)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        limit = 4 * system_cycle_model(cfg, m_tiles, n_tiles) + 100
        for _ in range(limit):  # bounded: a deadlock fails instead of hanging
            if ctx.get(dut.done):
                break
            await ctx.tick()
        else:
            raise AssertionError("MixPESystem never raised done")
        out["cycles"] = ctx.get(dut.cycles)
        words = []
        for r in range(m_tiles * n_tiles * cfg.rows):
            ctx.set(dut.res_addr, r)
            await ctx.tick()
            words.append(unpack_signed(ctx.get(dut.res_data), 32, cfg.cols))
        out["words"] = words

    simulate(dut, bench)
    return out


def test_system_end_to_end():
    cfg = MixPEConfig(bits=4, group=32, rows=2, cols=3, K=64)
    m_tiles, n_tiles = 2, 2
    gen = torch.Generator().manual_seed(11)
    a, _, _, _ = _random_tile(MixPEConfig(bits=4, group=32, rows=cfg.rows * m_tiles,
                                          cols=1, K=cfg.K), gen)
    _, q, s2, z = _random_tile(MixPEConfig(bits=4, group=32, rows=1,
                                           cols=cfg.cols * n_tiles, K=cfg.K), gen)
    out = _run_system(cfg, m_tiles, n_tiles, a, q, s2, z, max_m=3, max_n=2)
    full = mixpe_acc(a, q, s2, z, cfg)  # [M, N]
    for tn in range(n_tiles):
        for tm in range(m_tiles):
            for r in range(cfg.rows):
                word = out["words"][(tn * m_tiles + tm) * cfg.rows + r]
                row = tm * cfg.rows + r
                assert word == full[row, tn * cfg.cols:(tn + 1) * cfg.cols].tolist(), (tn, tm, r)
    assert out["cycles"] == system_cycle_model(cfg, m_tiles, n_tiles)


def test_system_drain_bound_tiles():
    """rows + latency > K: the array stalls tiles' last beats, so the readers
    must hold their words under back-pressure."""
    cfg = MixPEConfig(bits=2, group=32, rows=40, cols=1, K=32)
    gen = torch.Generator().manual_seed(5)
    a, _, _, _ = _random_tile(MixPEConfig(bits=2, group=32, rows=cfg.rows * 2, cols=1, K=32),
                              gen)
    _, q, s2, z = _random_tile(MixPEConfig(bits=2, group=32, rows=1, cols=2, K=32), gen)
    out = _run_system(cfg, 2, 2, a, q, s2, z, max_m=2, max_n=2)
    full = mixpe_acc(a, q, s2, z, cfg)
    for tn in range(2):
        for tm in range(2):
            for r in range(cfg.rows):
                word = out["words"][(tn * 2 + tm) * cfg.rows + r]
                assert word == full[tm * cfg.rows + r, tn:tn + 1].tolist()
    assert out["cycles"] == system_cycle_model(cfg, 2, 2)


def test_system_bad_arguments():
    cfg = MixPEConfig(bits=4, group=32, rows=1, cols=1, K=32)
    with pytest.raises(ValueError, match="max_m_tiles"):
        MixPESystem(cfg, max_m_tiles=0, max_n_tiles=1)
    with pytest.raises(TypeError, match="MixPEConfig"):
        MixPE({"bits": 4})


# --- Verilog generation and CLI ---
def test_verilog_ports(tmp_path):
    cfg = MixPEConfig(bits=4, group=32, rows=2, cols=3, K=64)
    path = write_verilog(MixPE(cfg), design_name(cfg), tmp_path)
    text = path.read_text()
    assert f"module {cfg.name()}(" in text
    for port in ("clk", "rst", "act__payload", "act__valid", "act__ready", "code__payload",
                 "code__valid", "code__ready", "scale__payload", "scale__valid",
                 "scale__ready", "result__payload", "result__valid", "result__ready"):
        assert f" {port};" in text or f" {port}," in text, port
    assert f"input [{cfg.act_word_bits - 1}:0] act__payload" in text
    assert f"output [{cfg.result_word_bits - 1}:0] result__payload" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_verilog_system_and_cell_ports():
    cfg = MixPEConfig(bits=2, group=32, rows=1, cols=2, K=32)
    text = verilog(MixPESystem(cfg, max_m_tiles=2, max_n_tiles=2), "sys")
    for port in ("load_sel", "load_addr", "load_data", "load_en", "m_tiles", "n_tiles",
                 "start", "done", "cycles", "res_addr", "res_data"):
        assert port in text, port
    text = verilog(MixPECell(cfg), "mixpe_cell")
    assert "module mixpe_cell(" in text and "Pg" in text and "shift_in" not in text
    with pytest.raises(ValueError, match="identifier"):
        verilog(MixPECell(cfg), "bad name")


def test_default_designs_are_named_and_buildable():
    designs = default_designs()
    names = [n for n, _ in designs]
    assert len(set(names)) == len(names)
    assert any(n.endswith("_cell") for n in names)
    assert any("_sys_" in n for n in names)
    # elaborating (not converting) every design is cheap and catches factory errors
    for _, factory in designs:
        Fragment.get(factory(), None)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hdl", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_writes_verilog(tmp_path):
    r = _cli("mixpe", "--bits", "2", "--group", "32", "--rows", "1", "--cols", "2",
             "--K", "64", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mixpe_w2_g32_r1_c2_k64.v").exists()
    r = _cli("mixpe", "--bits", "2", "--group", "32", "--rows", "1", "--cols", "2",
             "--K", "64", "--system", "--max-m-tiles", "2", "--max-n-tiles", "3",
             "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mixpe_w2_g32_r1_c2_k64_sys_m2_n3.v").exists()


@pytest.mark.parametrize("args, words", [
    (("mixpe", "--bits", "5"), "bits"),
    (("mixpe", "--K", "100", "--group", "64"), "multiple of group"),
    (("mixpe", "--system", "--max-m-tiles", "0"), "max-m-tiles"),
    ((), "--all"),
])
def test_cli_config_errors(tmp_path, args, words):
    r = _cli(*args, "--out", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
