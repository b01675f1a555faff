"""hdl.baselines, checked in amaranth.sim: BaselinePE computes
acc = sum_k a*(q-z)*s2 (int32 wrap), BaselineArray per row and column,
ProductKernel a*q, DenseChain each group's dot product."""
import random

import pytest

from golden.mixpe_config import MixPEConfig
from golden.sparse_dsp_config import SparseDSPConfig
from hdl.baselines import BASELINE_LATENCY, BaselineArray, BaselinePE, DenseChain, ProductKernel

from helpers.amaranth_streams import simulate


def _wrap32(x: int) -> int:
    return (x + 2**31) % 2**32 - 2**31


def _run(config, dots, *, gaps=True, seed=0):
    """Feed each dot product (list of (a, q, s2, z)) back to back, with random idle
    cycles when `gaps`; return the acc values seen on acc_valid pulses."""
    rng = random.Random(seed)
    dut = BaselinePE(config)
    got = []

    async def bench(ctx):
        for elems in dots:
            for i, (a, q, s2, z) in enumerate(elems):
                while gaps and rng.random() < 0.25:
                    ctx.set(dut.valid, 0)
                    ctx.set(dut.a, rng.randint(-128, 127))  # junk must be ignored
                    await ctx.tick()
                    if ctx.get(dut.out_load):
                        got.append(ctx.get(dut.out))
                ctx.set(dut.valid, 1)
                ctx.set(dut.a, a)
                ctx.set(dut.q, q)
                ctx.set(dut.s2, s2)
                ctx.set(dut.z, z)
                ctx.set(dut.first, i == 0)
                ctx.set(dut.last, i == len(elems) - 1)
                await ctx.tick()
                if ctx.get(dut.out_load):
                    got.append(ctx.get(dut.out))
        ctx.set(dut.valid, 0)
        for _ in range(BASELINE_LATENCY + 2):
            await ctx.tick()
            if ctx.get(dut.out_load):
                got.append(ctx.get(dut.out))

    simulate(dut, bench)
    return got


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_baseline_pe_dot_products(bits):
    config = MixPEConfig(bits=bits, group=32, K=64)
    rng = random.Random(bits)
    dots = []
    for length in (1, 5, 64):
        elems = []
        for _ in range(length):
            elems.append((rng.randint(-128, 127), rng.randint(0, config.levels),
                          rng.randint(1, 255), rng.randint(0, config.levels)))
        dots.append(elems)
    # Extremes: largest |w8| with the largest |a|, so every width matters.
    dots.append([(-128, config.levels, 255, 0), (-128, 0, 255, config.levels),
                 (127, config.levels, 255, 0)])
    expected = [_wrap32(sum(a * (q - z) * s2 for a, q, s2, z in e)) for e in dots]
    assert _run(config, dots, seed=bits) == expected


def test_baseline_pe_wraps_int32():
    config = MixPEConfig(bits=8, group=32, K=64)
    elems = [(-128, 0, 255, 255)] * 300  # +128*255*255 per element: passes 2**31
    expected = _wrap32(sum(a * (q - z) * s2 for a, q, s2, z in elems))
    assert expected != sum(a * (q - z) * s2 for a, q, s2, z in elems)
    assert _run(config, [elems], gaps=False) == [expected]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_baseline_pe_rejects_non_config():
    with pytest.raises(TypeError, match="MixPEConfig"):
        BaselinePE({"bits": 4})


def test_baseline_pe_output_bank_shifts():
    """`shift` moves shift_in into `out` (the drain chain)."""
    dut = BaselinePE(MixPEConfig(bits=4, group=32, K=64))
    seen = []

    async def bench(ctx):
        ctx.set(dut.shift_in, -12345)
        ctx.set(dut.shift, 1)
        await ctx.tick()
        ctx.set(dut.shift, 0)
        ctx.set(dut.shift_in, 777)
        await ctx.tick()
        seen.append(ctx.get(dut.out))

    simulate(dut, bench)
    assert seen == [-12345]


def test_baseline_array_rows_and_columns():
    """Every PE (m, n) of the array gets row m's activation and column n's code,
    scale and zero point; `row` selects which row of results is shown."""
    config = MixPEConfig(bits=4, group=32, rows=3, cols=2, K=32)
    rng = random.Random(3)
    K = 5
    a = [[rng.randint(-128, 127) for _ in range(K)] for _ in range(config.rows)]
    q = [[rng.randint(0, config.levels) for _ in range(K)] for _ in range(config.cols)]
    s2 = [rng.randint(1, 255) for _ in range(config.cols)]
    z = [rng.randint(0, config.levels) for _ in range(config.cols)]
    expected = [[_wrap32(sum(a[m][k] * (q[n][k] - z[n]) * s2[n] for k in range(K)))
                 for n in range(config.cols)] for m in range(config.rows)]
    dut = BaselineArray(config)
    got = []

    async def bench(ctx):
        for n in range(config.cols):
            ctx.set(dut.s2[n], s2[n])
            ctx.set(dut.z[n], z[n])
        for k in range(K):
            ctx.set(dut.valid, 1)
            ctx.set(dut.first, k == 0)
            ctx.set(dut.last, k == K - 1)
            for m in range(config.rows):
                ctx.set(dut.a[m], a[m][k])
            for n in range(config.cols):
                ctx.set(dut.q[n], q[n][k])
            await ctx.tick()
        ctx.set(dut.valid, 0)
        for _ in range(BASELINE_LATENCY + 1):
            if ctx.get(dut.out_load):
                break
            await ctx.tick()
        assert ctx.get(dut.out_load)
        for m in range(config.rows):
            ctx.set(dut.row, m)
            got.append([ctx.get(dut.result[n]) for n in range(config.cols)])

    simulate(dut, bench)
    assert got == expected


@pytest.mark.parametrize("shift_add", [True, False])
def test_product_kernel(shift_add):
    """p = a * q one cycle later, over the whole INT8 x code range."""
    config = MixPEConfig(bits=4, group=32, K=64)
    dut = ProductKernel(config, shift_add=shift_add)
    pairs = [(a, q) for a in (-128, -1, 0, 1, 127) for q in range(config.levels + 1)]
    got = []

    async def bench(ctx):
        for a, q in pairs:
            ctx.set(dut.a, a)
            ctx.set(dut.q, q)
            await ctx.tick()
            got.append(ctx.get(dut.p))

    simulate(dut, bench)
    assert got == [a * q for a, q in pairs]


def test_dense_chain_sums_each_group():
    """Held operands: after the cascade fills, group g shows sum_j a[j] * b[j]
    over its stages."""
    config = SparseDSPConfig(L=8, group_len=4, K=512)
    rng = random.Random(7)
    a = [rng.randint(-128, 127) for _ in range(config.L)]
    b = [rng.randint(-128, 127) for _ in range(config.L)]
    dut = DenseChain(config)
    got = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for j in range(config.L):
            ctx.set(dut.a[j], a[j])
            ctx.set(dut.b[j], b[j])
        for _ in range(3 * config.L):
            await ctx.tick()
        got.extend(ctx.get(dut.p[g]) for g in range(config.n_groups))

    simulate(dut, bench)
    gl = config.group_len
    assert got == [sum(a[j] * b[j] for j in range(g * gl, (g + 1) * gl))
                   for g in range(config.n_groups)]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_baselines_reject_wrong_config_type():
    with pytest.raises(TypeError, match="SparseDSPConfig"):
        DenseChain(MixPEConfig())
    with pytest.raises(TypeError, match="shift_add"):
        ProductKernel(MixPEConfig(), shift_add=1)
