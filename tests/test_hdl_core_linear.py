# amaranth: UnusedElaboratable=no
"""hdl.core_linear in the Amaranth simulator: every acc beat bit-exact with golden
(golden.mixpe.dequant_w8 weights, golden.decoder.linear_acc and an int64 matmul agree)
on random shapes (n not a multiple of cols, several groups, tokens < rows) with
extreme activations, codes, zeros and scales, under random idle cycles on every
input and back-pressure on acc (seeds printed); the overflow flag at its exact
boundary (|acc| = 2**31) and on invalid rows; refused cmds and recovery; the
ideal-stream cycles equal to cycle_model with one mem beat per cycle; the config
checks; Verilator -Wall lint of the generated Verilog."""
from __future__ import annotations

import random

import pytest
import torch
from amaranth.hdl import Value

from golden.core_config import CoreConfig
from golden.decoder import _chunk_k, linear_acc
from golden.mixpe import dequant_w8
from golden.sfu_config import SFUHWConfig
from hdl.core_linear import (LATENCY, LinearEngine, accept_delay, cycle_model, mem_beats,
                             mem_words, pack_act, pack_cmd, refusal, tile_shapes, unpack_acc)
from tests.helpers.amaranth_streams import StreamSink, StreamSource, simulate


def _core(rows, cols, beat_bytes, lanes, w_bits, max_k=512):
    return CoreConfig(rows=rows, cols=cols, max_k=max_k, max_n=4096, w_bits=w_bits,
                      beat_bytes=beat_bytes, sfu=SFUHWConfig(lanes=lanes, max_k=512))


#: act word = 4 act beats of 8 lanes (byte-lane enables); one act beat = one code beat;
#: an act beat = two code beats (the read picks half a word).
CFG_A = _core(rows=4, cols=64, beat_bytes=32, lanes=8, w_bits=8)
CFG_B = _core(rows=2, cols=64, beat_bytes=16, lanes=16, w_bits=4)
CFG_C = _core(rows=2, cols=32, beat_bytes=8, lanes=16, w_bits=8)


# --------------------------------------------------------------------------- cases
class Case:
    """One cmd with its tensors; `rows_written` are the token rows the bench writes
    into the activation file before the cmd (the others keep earlier cases' data)."""

    def __init__(self, config, n, k, group, tokens, a, q, s2, z, rows_written=None):
        self.n, self.k, self.group, self.tokens = n, k, group, tokens
        self.a, self.q, self.s2, self.z = a, q, s2, z          # int64 tensors
        self.rows_written = list(range(tokens)) if rows_written is None else rows_written
        self.bad = refusal(config, n, k, group, tokens)


def _pick(rng, extremes, lo, hi, count, p=0.3):
    return torch.tensor([rng.choice(extremes) if rng.random() < p else rng.randint(lo, hi)
                         for _ in range(count)], dtype=torch.int64)


def random_case(config, rng, *, n=None, k=None, group=None, tokens=None):
    B, L = config.beat_bytes, (1 << config.w_bits) - 1
    group = group or rng.choice([g for g in (32, 64, 128) if g % B == 0])
    k = k or group * rng.randint(1, config.max_k // group)
    n = n or rng.choice([rng.randint(1, config.cols - 1), rng.randint(config.cols + 1,
                                                                      3 * config.cols - 1)])
    tokens = tokens or rng.randint(1, config.rows)
    G = k // group
    a = _pick(rng, (-128, 127, 0, -1), -128, 127, config.rows * k).view(config.rows, k)
    q = _pick(rng, (0, L), 0, L, n * k).view(n, k)
    s2 = _pick(rng, (255, 1, 0), 0, 255, n * G).view(n, G)
    z = _pick(rng, (0, 255, L), 0, 255, n * G).view(n, G)
    return Case(config, n, k, group, tokens, a, q, s2, z)


def expected(config, case, afile):
    """acc beats of `case` given the activation file at its cmd: (n, acc[rows], ovf)."""
    w8 = dequant_w8(case.q, case.s2, case.z, case.group)
    a = afile[:, :case.k]
    ref = a @ w8.T                                                    # [rows, n] int64
    wmax = int(w8.abs().max())
    gold = linear_acc(a, w8.to(torch.float32), _chunk_k(case.k, wmax))
    assert torch.equal(gold, ref)
    beats = []
    for j in range(case.n):
        col = [int(ref[t, j]) if t < case.tokens else 0 for t in range(config.rows)]
        ovf = int(any(abs(v) >= 1 << 31 for v in col))
        wrap = [((v + (1 << 31)) % (1 << 32)) - (1 << 31) for v in col]
        beats.append((j, wrap, ovf))
    return beats


def _bytes(t):
    return bytes(t.to(torch.uint8).flatten().tolist())


# --------------------------------------------------------------------------- bench
class _Trace:
    """Background testbench: per cycle, cmd/mem/acc transfers and busy/error."""

    def __init__(self, dut):
        self.dut, self.rows = dut, []

    async def __call__(self, ctx):
        d = self.dut
        async for _, _, cv, cr, mv, mr, av, ar, busy, err in ctx.tick().sample(
                d.cmd.valid, d.cmd.ready, d.mem.valid, d.mem.ready, d.acc.valid, d.acc.ready,
                d.busy, d.error):
            self.rows.append((cv and cr, mv and mr, av and ar, busy, err))

    def cycles(self, i):
        return [c for c, row in enumerate(self.rows) if row[i]]


async def _push(ctx, stream, word, rng, p_idle):
    while rng.random() < p_idle:
        ctx.set(stream.valid, 0)
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(Value.cast(stream.payload), word)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


def run(config, cases, *, seed, p_idle=0.0, p_stall=0.0):
    """Simulate `cases` one after another; returns (got beats, expected beats, errors
    after each cmd, _Trace)."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = LinearEngine(config)
    lanes = config.sfu.lanes
    afile = torch.zeros(config.rows, config.max_k, dtype=torch.int64)
    words, want = [], []
    for case in cases:
        for t in case.rows_written:
            afile[t, :case.k] = case.a[t]
        if not case.bad:
            words += mem_words(config, _bytes(case.q), _bytes(case.s2) + rng.randbytes(64),
                               _bytes(case.z) + rng.randbytes(64), case.n, case.k, case.group)
            want += expected(config, case, afile)
    errors = []
    drv_rng = random.Random(rng.random())

    async def driver(ctx):
        for case in cases:
            for t in case.rows_written:
                for b in range(case.k // lanes):
                    await _push(ctx, dut.act, pack_act(config, t, b, case.a[t, b * lanes:
                                                                         (b + 1) * lanes]),
                                drv_rng, p_idle)
            await _push(ctx, dut.cmd, pack_cmd(config, case.n, case.k, case.group, case.tokens),
                        drv_rng, p_idle)
            errors.append(ctx.get(dut.error))
        # run on past the last acc beat, so that the trace sees busy fall
        while len(snk.got) < len(want):
            await ctx.tick()
        await ctx.tick().repeat(2)

    src = StreamSource(dut.mem, words, random.Random(rng.random()), p_idle=p_idle)
    snk = StreamSink(dut.acc, random.Random(rng.random()), count=len(want), p_stall=p_stall,
                     limit=20 * len(words) + 3000 + 200 * len(cases),
                     decode=lambda w: unpack_acc(config, w))
    trace = _Trace(dut)
    simulate(dut, snk, driver, background=[src, trace])
    return [(n, acc, o) for n, acc, o in snk.got], want, errors, trace


def assert_beats(got, want):
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want) and not bad, (
        f"{len(bad)} of {len(want)} beats differ (got {len(got)}); first {bad[:3]}")


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("config,seed", [(CFG_A, 11), (CFG_B, 12), (CFG_C, 13)],
                         ids=("r4b32l8w8", "r2b16l16w4", "r2b8l16w8"))
def test_random_cmds_with_stalls(config, seed):
    rng = random.Random(seed)
    cases = [random_case(config, rng, tokens=config.rows - 1 if config.rows > 2 else 1),
             random_case(config, rng), random_case(config, rng)]
    got, want, errors, _ = run(config, cases, seed=seed, p_idle=0.3, p_stall=0.4)
    assert errors == [0] * len(cases)
    assert_beats(got, want)


def test_stale_rows_tile_boundaries_and_one_beat_groups():
    """k = group = beat_bytes (one beat per group, an acc beat every cycle at the
    end), n = 2 cols + 1 (a one-output last tile), stale rows beyond tokens."""
    rng = random.Random(21)
    cfg = CFG_B
    first = random_case(cfg, rng, n=5, k=64, group=32, tokens=2)
    second = random_case(cfg, rng, n=2 * cfg.cols + 1, k=32, group=32, tokens=1)
    third = random_case(cfg, rng, n=cfg.cols, k=512, group=256, tokens=2)
    got, want, errors, _ = run(cfg, [first, second, third], seed=22, p_idle=0.2, p_stall=0.5)
    assert errors == [0, 0, 0]
    assert_beats(got, want)


def _overflow_case(config, target: str):
    """Row 0 summing to exactly -2**31 ("neg", overflow), -2**31 + 128 ("neg_ok", none)
    or +2**31 ("pos", overflow): k = 512 in 16 groups of 32, a = -128 everywhere."""
    k, group, G = 512, 32, 16
    q = torch.zeros(1, k, dtype=torch.int64)
    s2 = torch.full((1, G), 255, dtype=torch.int64)
    z = torch.zeros(1, G, dtype=torch.int64)
    if target in ("neg", "neg_ok"):
        # sum_g s2_g Q_g = 2**24 (-1): group 0 s2 = 1 with one code 1; 65793 = sum of
        # codes in the others at s2 = 255 (255 * 65793 = 2**24 - 1).
        L = (1 << config.w_bits) - 1
        s2[0, 0] = 1
        q[0, 0] = 1 if target == "neg" else 0
        left = 65793
        for i in range(group, k):
            q[0, i] = min(L, left)
            left -= int(q[0, i])
        assert left == 0
    else:
        # q = 0, w = -z s2: 128 * 32 * (8 * 255 * 255 + 56 * 73) = 2**31.
        z[0, :8] = 255
        z[0, 8], s2[0, 8] = 56, 73
    a = torch.full((config.rows, k), -128, dtype=torch.int64)
    return Case(config, 1, k, group, 1, a, q, s2, z)


def test_overflow_boundary_and_invalid_rows():
    cfg = CFG_A
    rng = random.Random(31)
    cases = [_overflow_case(cfg, t) for t in ("neg", "neg_ok", "pos")]
    # Every row overflowing but only row 0 valid and small: no overflow; then the
    # same stale rows valid: overflow.
    big = random_case(cfg, rng, n=3, k=512, group=32, tokens=cfg.rows)
    big.a.fill_(-128)
    big.q.fill_(255)
    big.z.fill_(0)
    big.s2.fill_(255)
    small = random_case(cfg, rng, n=3, k=512, group=32, tokens=1)
    small.q, small.z, small.s2 = big.q, big.z, big.s2
    small.a = torch.zeros_like(small.a)
    small.a[0, :4] = 1
    small.rows_written = [0]
    again = Case(cfg, 3, 512, 32, cfg.rows, big.a, big.q, big.s2, big.z, rows_written=[])
    got, want, errors, _ = run(cfg, cases + [big, small, again], seed=32, p_idle=0.2,
                               p_stall=0.3)
    assert errors == [0] * 6
    assert_beats(got, want)
    assert [o for _, _, o in got] == [1, 0, 1] + [1] * 3 + [0] * 3 + [1] * 3
    assert got[0][1][0] == -(1 << 31) and got[1][1][0] == -(1 << 31) + 128
    assert got[2][1][0] == -(1 << 31)          # +2**31 wraps


def test_refused_cmds_and_recovery():
    cfg = CFG_B     # rows 2, beat 16, max_k 512, max_n 4096
    rng = random.Random(41)
    good = random_case(cfg, rng, n=7, k=96, group=32, tokens=2)
    bads = [(7, 96, 64, 2),       # group does not divide k
            (7, 480, 64, 1),      # nor here (quotient 7, remainder 32)
            (7, 96, 24, 2),       # group < 32 (and not a multiple of beat_bytes)
            (7, 544, 32, 2),      # k > max_k
            (7, 0, 32, 2),        # k = 0
            (0, 96, 32, 2),       # n = 0
            (4097, 96, 32, 2),    # n > max_n
            (7, 96, 32, 0),       # tokens = 0
            (7, 96, 32, 3),       # tokens > rows
            (7, 288, 288, 1)]     # group > 256
    cases = []
    for n, k, group, tokens in bads:
        c = Case(cfg, n, k, group, tokens, None, None, None, None, rows_written=[])
        assert c.bad, (n, k, group, tokens)
        cases += [c, good]
    # group a multiple of 32 but not of beat_bytes: needs a wider beat
    wide = _core(rows=2, cols=64, beat_bytes=64, lanes=16, w_bits=8)
    assert refusal(wide, 7, 96, 32, 1) and not refusal(wide, 7, 128, 64, 1)
    got, want, errors, trace = run(cfg, cases, seed=42, p_idle=0.3, p_stall=0.3)
    assert errors == [1, 0] * len(bads)
    assert_beats(got, want)
    # A refused cmd never raises busy: the cycles after its transfer are idle.
    for c in trace.cycles(0)[0::2]:
        assert not trace.rows[c + 1][3]


@pytest.mark.parametrize("config", (CFG_A, CFG_C), ids=("r4b32", "r2b8l16"))
def test_cycle_model_ideal_streams(config):
    rng = random.Random(51)
    # two full tiles and a partial one, 3 groups: scale blocks of cols G / B beats
    case = random_case(config, rng, n=2 * config.cols + 5, k=96 if config.beat_bytes <= 32
                       else 128, group=32, tokens=config.rows)
    got, want, errors, trace = run(config, [case], seed=52)
    assert errors == [0]
    assert_beats(got, want)
    (cmd,) = trace.cycles(0)
    mem, acc = trace.cycles(1), trace.cycles(2)
    beats = mem_beats(config, case.n, case.k, case.group)
    assert mem == list(range(cmd + 1, cmd + 1 + beats)), "mem beats with bubbles"
    assert acc[-1] - cmd + 1 == cycle_model(config, case.n, case.k, case.group, case.tokens)
    assert acc[-1] == mem[-1] + LATENCY
    busy = [row[3] for row in trace.rows]
    assert all(busy[cmd + 1:acc[-1] + 1]) and not busy[acc[-1] + 1] and not busy[cmd]
    # the cmd was offered (idle engine) accept_delay cycles before its transfer
    acts = case.k // config.sfu.lanes * config.rows
    assert cmd == acts + accept_delay(config)


def test_model_helpers():
    cfg = CFG_A
    assert tile_shapes(cfg, 130, 96, 32) == [(64, 6), (64, 6), (2, 1)]
    assert mem_beats(cfg, 130, 96, 32) == 2 * 13 + 130 * 3
    assert cycle_model(cfg, 130, 96, 32, 4) == 2 * 13 + 130 * 3 + LATENCY + 1
    with pytest.raises(ValueError, match="divide"):
        cycle_model(cfg, 130, 96, 64, 4)
    q = bytes(range(2 * 64))
    s2 = bytes([200 + i for i in range(4)]) + b"\x07" * 40
    words = mem_words(cfg, q, s2, s2, 2, 64, 32)
    assert len(words) == 1 + 1 + 4
    assert words[0] & 0xFFFFFFFF == int.from_bytes(s2[:4], "little")
    assert (words[0] >> 32) & 0xFF == 7                       # the bytes that follow
    assert words[2] == int.from_bytes(q[:32], "little")


def test_config_checks():
    with pytest.raises(ValueError, match="cols=48 is not a multiple of beat_bytes=32"):
        LinearEngine(_core(rows=2, cols=48, beat_bytes=32, lanes=8, w_bits=8))
    with pytest.raises(ValueError, match="max_k"):
        LinearEngine(_core(rows=2, cols=64, beat_bytes=32, lanes=8, w_bits=8, max_k=528))
    with pytest.raises(TypeError):
        LinearEngine({"rows": 2})


def test_verilog_lints_clean(tmp_path):
    from cosim import lint
    from hdl.generate import write_verilog
    for name, cfg in (("core_linear_a", CFG_A), ("core_linear_c", CFG_C)):
        path = write_verilog(LinearEngine(cfg), name, tmp_path)
        result = lint.lint_file(path)
        assert result.clean, result.messages
