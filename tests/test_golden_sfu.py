"""golden.sfu: each special-function op against its float64 reference within its
stated bound on random data (several seeds, zeros, one-signed, extreme magnitudes,
saturation) and on real SmolLM2 activations; int64 guards (worst-case operands give
the saturated answer, never a wrapped one); the tables of golden.sfu_config; and one
clear TypeError / ValueError per bad input."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from golden.formats import INT32_MAX, INT32_MIN
from golden.sfu import (QUANT_A8_BOUND, QUANT_A8_CODE_DIFF, argmax, bitlen, dequant,
                        dequant_bound, dequant_reference, norm_weight, quant_a8, quant_a8_exact,
                        quant_a8_float, requant, residual_add, rmsnorm, rmsnorm_bound,
                        rmsnorm_reference, rope, rope_bound, rope_inv_freq, rope_reference,
                        rope_table, rsqrt_fx, rsqrt_rel_bound, shift_sat, sigmoid_bound,
                        sigmoid_fx, silu_bound, silu_fx, silu_reference, silu_table, swiglu,
                        swiglu_bound, swiglu_reference, to_fixed, to_float, token_scale,
                        weight_scale)
from golden.sfu_config import (MANT_BITS, NW_BITS, ROPE_FRAC, RSQRT_FRAC, RSQRT_M_BITS,
                               S1_BITS, SFUConfig, rms_eps, rsqrt_table, sigmoid_table, sqrt_k)

torch.set_num_threads(1)
SEEDS = (0, 1, 2)
CFG = SFUConfig()
#: Float64 slack on a bound compared against a float64 reference.
SLACK = 1e-9


def _within(err: torch.Tensor, bound: torch.Tensor) -> bool:
    ok = err <= bound * (1 + SLACK) + SLACK
    if not bool(ok.all()):
        i = tuple(int(v) for v in (~ok).nonzero()[0])
        print(f"first violation at {list(i)}: error {float(err[i])} > bound {float(bound[i])}")
    return bool(ok.all())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x32_cases(seed: int, K: int = 96) -> torch.Tensor:
    """Rows of X32 vectors at many magnitudes plus the edge cases."""
    g = _gen(seed)
    rows = [torch.randint(INT32_MIN, INT32_MAX + 1, (8, K), generator=g)]
    for bits in (1, 3, 8, 15, 16, 17, 24, 30):
        rows.append(torch.randint(-(1 << bits), 1 << bits, (8, K), generator=g))
    heavy = (torch.randn(8, K, generator=g) * 2 ** 14).round().long()
    heavy[:, 3] = 24904 << 14                       # a massive activation
    rows.append(heavy)
    edge = torch.zeros(8, K, dtype=torch.int64)     # row 0: all zero
    edge[1] = -torch.arange(1, K + 1)               # all negative
    edge[2] = INT32_MAX                             # max magnitudes
    edge[3] = INT32_MIN
    edge[4, 0] = INT32_MIN                          # one element, the rest zero
    edge[5] = 1
    edge[6, ::2], edge[6, 1::2] = 3, -3
    edge[7] = torch.arange(K) - K // 2
    rows.append(edge)
    return torch.cat(rows)


# --------------------------------------------------------------------------- helpers
def test_bitlen_and_shift_sat_exact():
    vals = [0, 1, 2, 3, 4, 7, 8, (1 << 31) - 1, 1 << 31, (1 << 62) - 1, 1 << 62]
    assert bitlen(torch.tensor(vals)).tolist() == [v.bit_length() for v in vals]
    g = _gen(0)
    x = torch.randint(-(1 << 40), 1 << 40, (4000,), generator=g)
    x[:4] = torch.tensor([(1 << 62) - 1, -(1 << 62) + 1, 0, -1])
    s = torch.randint(-70, 70, (4000,), generator=g)
    y = shift_sat(x, s)
    for xi, si, yi in zip(x.tolist(), s.tolist(), y.tolist()):
        v = Fraction(xi, 1) / Fraction(2) ** si
        want = math.floor(v + Fraction(1, 2)) if si > 0 else int(v)   # round half up
        assert yi == min(max(want, INT32_MIN), INT32_MAX), (xi, si)


def test_to_fixed_to_float():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1e30, -1e30, 0.25]) * 2 ** -14
    X = to_fixed(x, 14)
    assert X.tolist() == [0, 2, 2, 0, -2, INT32_MAX, INT32_MIN, 0]   # half to even
    assert to_fixed(torch.tensor([3.0]), 0, bits=2).tolist() == [1]
    assert to_float(torch.tensor([3, -(1 << 20)]), 14).tolist() == [3 * 2 ** -14, -64.0]
    with pytest.raises(ValueError, match="NaN"):
        to_fixed(torch.tensor([float("nan")]), 14)
    with pytest.raises(TypeError, match="float tensor"):
        to_fixed(torch.tensor([1]), 14)


# --------------------------------------------------------------------------- token scale, A8
@pytest.mark.parametrize("seed", SEEDS)
def test_token_scale(seed):
    x = _x32_cases(seed)
    mn, L = token_scale(x)
    for row, m, l in zip(x.tolist(), mn.tolist(), L.tolist()):
        amax = max(abs(v) for v in row)
        if amax == 0:
            assert (m, l) == (0, 0)
            continue
        assert 1 << (MANT_BITS - 1) <= m < 1 << MANT_BITS
        assert l == amax.bit_length() - MANT_BITS
        assert (m == amax >> l) if l >= 0 else (m == amax << -l)
    # any frac: int64 vectors beyond int32 too
    big = torch.tensor([[(1 << 61) + 12345, -3]])
    mn, L = token_scale(big)
    assert (int(mn), int(L)) == (((1 << 61) + 12345) >> 46, 46)


@pytest.mark.parametrize("seed", SEEDS)
def test_quant_a8_against_design_formula(seed):
    x = _x32_cases(seed)
    a, mn, L = quant_a8(x)
    exact, real = quant_a8_exact(x), quant_a8_float(x)
    assert a.abs().max() <= 127
    assert (a - exact).abs().max() <= QUANT_A8_CODE_DIFF
    assert (a.double() - real).abs().max() <= QUANT_A8_BOUND
    assert a[x.abs().amax(-1) == 0].abs().sum() == 0
    # the max element of every nonzero token maps to +-127
    nz = x.abs().amax(-1) > 0
    assert bool((a[nz].abs().amax(-1) == 127).all())
    # one token written out: RC = floor(2**31 / mn), a = clamp(rshift_round(...))
    row = x[20].tolist()
    m, l = int(mn[20]), int(L[20])
    rc = (1 << 31) // m
    want = [max(-127, min(127, (v * 127 * rc + (1 << (30 + l))) >> (31 + l))) for v in row]
    assert a[20].tolist() == want


def test_quant_a8_differs_only_near_half_codes():
    """Where quant_a8 and the exact DESIGN rounding disagree, the real value is within
    127 * 2**-15 of a half code (or on a tie, which rounds up instead of to even)."""
    x = (torch.randn(2000, 576, generator=_gen(3)) * 2 ** 14).round().long()
    a, _, _ = quant_a8(x)
    exact, real = quant_a8_exact(x), quant_a8_float(x)
    diff = a != exact
    assert 0 < diff.double().mean() < 0.002
    dist = ((real[diff] - real[diff].floor()) - 0.5).abs()
    assert dist.max() <= QUANT_A8_BOUND - 0.5


# --------------------------------------------------------------------------- weight scale, dequant
def test_weight_scale():
    s1 = torch.tensor([0.0, 1e-3, 2.5e-3, 7e-4, 0.0], dtype=torch.float64)
    S1, e = weight_scale(s1)
    assert int(S1.max()) < 1 << S1_BITS <= 2 * int(S1.max()) + 1
    assert round(2.5e-3 / 127 * 2.0 ** (e + 1)) >= 1 << S1_BITS    # e is the largest
    assert S1[0] == 0 and S1[4] == 0
    assert ((S1 * 2.0 ** -e - s1 / 127).abs() <= 2.0 ** -(e + 1)).all()
    assert weight_scale(torch.zeros(3))[1] == 0
    # float16 scales (QoQ stores s1 in fp16) are read exactly
    S1h, eh = weight_scale(torch.tensor([0.01, 0.02], dtype=torch.float16))
    assert eh == e - 3 and int(S1h[1]) == round(float(torch.tensor(0.02, dtype=torch.float16))
                                                / 127 * 2.0 ** eh)


@pytest.mark.parametrize("seed", SEEDS)
def test_dequant_against_float(seed):
    g = _gen(seed)
    M, N = 40, 48
    x = _x32_cases(seed, K=64)[:M]
    _, mn, L = quant_a8(x)
    amax = x.abs().amax(-1)
    s1 = torch.rand(N, generator=g, dtype=torch.float64) * 0.02
    s1[0] = 0.0
    s1[1] = 1e-6                                   # a channel 10**4 below the largest
    S1, e = weight_scale(s1)
    acc = torch.randint(INT32_MIN, INT32_MAX + 1, (M, N), generator=g)
    acc[:, 2] = INT32_MIN
    acc[:, 3] = INT32_MAX
    acc[:, 4] = (torch.randn(M, generator=g) * 1000).round().long()
    for in_frac, out_frac in ((14, 14), (14, 20), (20, 8), (0, 14)):
        y = dequant(acc, S1, e, mn, L, in_frac=in_frac, out_frac=out_frac)
        ref = dequant_reference(acc, s1, amax, in_frac=in_frac, out_frac=out_frac)
        bound = dequant_bound(acc, s1, e, amax, in_frac=in_frac, out_frac=out_frac)
        assert y.abs().max() <= INT32_MAX + 1
        err = (y - ref.clamp(INT32_MIN, INT32_MAX)).abs()
        assert _within(err, bound), float((err / bound).max())
    # the saturating corner was reached, on both sides
    assert (y == INT32_MAX).any() and (y == INT32_MIN).any()


def test_dequant_worst_case_saturates_never_wraps():
    acc = torch.tensor([[INT32_MIN, INT32_MAX, 1, -1, 0]])
    S1 = torch.full((5,), (1 << S1_BITS) - 1)
    mn, L = torch.tensor([(1 << MANT_BITS) - 1]), torch.tensor([15])
    big = dequant(acc, S1, -60, mn, L, in_frac=0, out_frac=30)     # a huge left shift
    assert big.tolist() == [[INT32_MIN, INT32_MAX, INT32_MAX, INT32_MIN, 0]]
    tiny = dequant(acc, S1, 100, mn, L, in_frac=14, out_frac=0)    # shifted out
    assert tiny.tolist() == [[0, 0, 0, 0, 0]]


# --------------------------------------------------------------------------- bad inputs
def _ok_dequant(**over):
    kw = dict(acc=torch.zeros(2, 3, dtype=torch.int64), S1=torch.ones(3, dtype=torch.int64),
              e=20, mn=torch.full((2,), 1 << 15), L=torch.zeros(2, dtype=torch.int64),
              in_frac=14, out_frac=14)
    kw.update(over)
    return dequant(kw.pop("acc"), kw.pop("S1"), kw.pop("e"), kw.pop("mn"), kw.pop("L"), **kw)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: quant_a8(torch.zeros(3, 4)), TypeError, "integer dtype"),
    (lambda: quant_a8([1, 2]), TypeError, "torch.Tensor"),
    (lambda: quant_a8(torch.tensor([[1 << 31]])), ValueError, "int32"),
    (lambda: quant_a8(torch.zeros(3, 0, dtype=torch.int64)), ValueError, "non-empty"),
    (lambda: token_scale(torch.tensor([1 << 62])), ValueError, "2\\*\\*62"),
    (lambda: weight_scale(torch.tensor([1, 2])), TypeError, "float tensor"),
    (lambda: weight_scale(torch.tensor([0.1, -0.1])), ValueError, "negative"),
    (lambda: weight_scale(torch.tensor([0.1, float("inf")])), ValueError, "NaN or Inf"),
    (lambda: weight_scale(torch.ones(2, 2)), ValueError, "1-D"),
    (lambda: _ok_dequant(acc=torch.full((2, 3), 1 << 31)), ValueError, "int32"),
    (lambda: _ok_dequant(S1=torch.full((3,), 1 << 15)), ValueError, "15-bit"),
    (lambda: _ok_dequant(S1=torch.ones(4, dtype=torch.int64)), ValueError, "shape"),
    (lambda: _ok_dequant(mn=torch.full((2,), 100)), ValueError, "normalised"),
    (lambda: _ok_dequant(mn=torch.full((3,), 1 << 15)), ValueError, "shape"),
    (lambda: _ok_dequant(e=2.0), TypeError, "e must be an int"),
    (lambda: _ok_dequant(in_frac=True), TypeError, "in_frac must be an int"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_config_validation():
    c = SFUConfig()
    assert c.frac == 14 and c.sig_entries <= 2048
    with pytest.raises(TypeError, match="frac must be an int"):
        SFUConfig(frac=14.0)
    with pytest.raises(ValueError, match="frac must be <= 30"):
        SFUConfig(frac=31)
    with pytest.raises(ValueError, match="entries"):
        SFUConfig(sig_step_bits=8)
    with pytest.raises(ValueError, match="sig_step_bits must be <= 4"):
        SFUConfig(frac=4, sig_step_bits=6)


# --------------------------------------------------------------------------- tables
def test_tables_from_their_formulas():
    sig = sigmoid_table(CFG)
    assert len(sig) == CFG.sig_entries == silu_table(CFG).numel()
    assert sig[0] == 1 << (CFG.sig_frac - 1) and sig[-1] <= 1 << CFG.sig_frac
    assert all(a <= b for a, b in zip(sig, sig[1:]))
    rs = rsqrt_table(CFG)
    assert len(rs) == CFG.rsqrt_entries
    b = CFG.rsqrt_index_bits
    for j, y in enumerate(rs):            # the seed's relative error over its interval
        i = j + (1 << (b - 2))
        for m in (i, i + 1):
            assert abs(y / 2 ** RSQRT_FRAC * math.sqrt(m / 2 ** b) - 1) <= 2.0 ** -b
    for K in (1, 2, 3, 576, 1536, 4096, 1 << 20):
        SK, es = sqrt_k(K)
        assert 1 << 23 <= SK < 1 << 24 and abs(SK * 2.0 ** -es - math.sqrt(K)) <= 2.0 ** -(es + 1)
    assert rms_eps(1e-5, 576, 14) == round(Fraction(1e-5) * 576 * 2 ** 28)
    assert rms_eps(0.0, 576, 14) == 0


# --------------------------------------------------------------------------- RMSNorm
def test_rsqrt_fx_relative_error():
    M = torch.randint(1 << (RSQRT_M_BITS - 2), 1 << RSQRT_M_BITS, (20000,), generator=_gen(0))
    M[:3] = torch.tensor([1 << (RSQRT_M_BITS - 2), (1 << RSQRT_M_BITS) - 1, 3 << 28])
    for steps in (0, 1, 2):
        c = CFG.replace(newton_steps=steps)
        Y = rsqrt_fx(M, c).double()
        rel = (Y * M.double().sqrt() * 2.0 ** -(RSQRT_FRAC + RSQRT_M_BITS // 2) - 1).abs()
        assert rel.max() <= rsqrt_rel_bound(c)
        assert Y.max() <= 2 ** 31 + 1
    assert rsqrt_rel_bound(CFG) < 1e-8


def test_norm_weight():
    w = torch.tensor([0.5, -1.25, 3.34375, 1e-7, 0.0], dtype=torch.float64)
    NW, e = norm_weight(w)
    lim = (1 << (NW_BITS - 1)) - 1
    assert NW.abs().max() <= lim < round(3.34375 * 2 ** (e + 1))
    assert ((NW * 2.0 ** -e - w).abs() <= 2.0 ** -(e + 1)).all()
    assert NW[1] < 0 and NW[3] == 0 and norm_weight(torch.zeros(4))[1] == 0


def _rms_case(seed: int, K: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    rows = []
    for scale in (1e-4, 1e-2, 1.0, 30.0, 3000.0, 24904.0, 1e5):
        rows.append(torch.randn(6, K, generator=g, dtype=torch.float64) * scale)
    xf = torch.cat(rows)
    xf[1, 7] = 24904.0                            # a massive activation in a small token
    x = to_fixed(xf, CFG.frac)
    x[2] = 0                                      # all zero
    x[3] = -torch.arange(1, K + 1)                # all negative
    x[4] = 2 ** 31 - 1                            # max magnitudes
    x[5] = -(2 ** 31)
    x[6, 0] = 1                                   # a single unit
    w = torch.rand(K, generator=g, dtype=torch.float64) * 1.2 - 0.1
    return x, w


@pytest.mark.parametrize("seed", SEEDS)
def test_rmsnorm_against_float(seed):
    x, w = _rms_case(seed)
    NW, e = norm_weight(w)
    for eps in (1e-5, 1e-6, 0.0):
        y = rmsnorm(x, NW, e, eps=eps, config=CFG)
        ref = rmsnorm_reference(x, w, eps=eps, frac=CFG.frac)
        ref = torch.nan_to_num(ref)               # 0 / 0 of the all-zero token with eps = 0
        bound = rmsnorm_bound(x, w, e, eps=eps, config=CFG)
        assert _within((y - ref.clamp(INT32_MIN, INT32_MAX)).abs(), bound)
        assert y[2].abs().sum() == 0
    # a weight NW represents exactly isolates the arithmetic: within 2 units here
    wq = NW * 2.0 ** -e
    ref = rmsnorm_reference(x, wq, eps=1e-5, frac=CFG.frac)
    y = rmsnorm(x, NW, e, eps=1e-5, config=CFG)
    assert (y - ref).abs().max() <= 2.5


def test_rmsnorm_saturates_never_wraps():
    K = 4
    x = torch.tensor([[2 ** 31 - 1, 0, 0, 0], [-(2 ** 31), 0, 0, 0], [1, 0, 0, 0]])
    NW, e = norm_weight(torch.tensor([1.0, 1, 1, 1]) * 2 ** 16)     # y = 2 * 2**16 * x/|x|
    y = rmsnorm(x, NW, e, eps=0.0, config=CFG)
    assert y[:, 0].tolist() == [INT32_MAX, INT32_MIN, INT32_MAX]
    y = rmsnorm(x, *norm_weight(torch.ones(K, dtype=torch.float64)), eps=0.0, config=CFG)
    assert y[:, 0].tolist() == [2 << CFG.frac, -(2 << CFG.frac), 2 << CFG.frac]


# --------------------------------------------------------------------------- RoPE
def test_rope_table():
    f = rope_inv_freq(100000.0, 64)
    cos, sin = rope_table(f, 300)
    assert cos.shape == sin.shape == (300, 32)
    assert cos[0].tolist() == [1 << ROPE_FRAC] * 32 and sin[0].abs().sum() == 0
    p, i = 257, 5
    assert int(cos[p, i]) == round(math.cos(p * f[i]) * 2 ** ROPE_FRAC)
    assert int(sin[p, i]) == round(math.sin(p * f[i]) * 2 ** ROPE_FRAC)
    assert cos.abs().max() <= 1 << ROPE_FRAC


@pytest.mark.parametrize("seed", SEEDS)
def test_rope_against_float_and_llama(seed):
    from quantflow.models.llama import apply_rope, rope_cos_sin
    g = _gen(seed)
    H, T, D = 2, 44, 64
    f = rope_inv_freq(10000.0, D)
    cos, sin = rope_table(f, 512)
    x = _x32_cases(seed, K=D)[: H * T].reshape(H, T, D)
    pos = torch.randint(0, 512, (T,), generator=g)
    pos[0] = 0
    out = rope(x, cos, sin, pos)
    ref = rope_reference(x, f, pos)
    assert _within((out - ref.clamp(INT32_MIN, INT32_MAX)).abs(), rope_bound(x))
    assert (out == INT32_MAX).any() and (out == INT32_MIN).any()     # saturation reached
    # the pairing is quantflow's apply_rope (HF rotate_half)
    xs = (torch.randn(1, H, T, D, generator=g, dtype=torch.float64) * 2 ** 14).round().long()
    pos = torch.arange(T)
    c, s = rope_cos_sin(T, D, 10000.0)
    want = apply_rope(xs.double(), c.double(), s.double())
    got = rope(xs, cos, sin, pos)
    # + 1 unit: the model's float32 angles and tables
    assert _within((got - want).abs(), rope_bound(xs) + 1)


# --------------------------------------------------------------------------- SiLU, SwiGLU
def test_sigmoid_and_silu_exhaustive():
    """Every X32 input of the table's domain (and beyond it)."""
    F = CFG.frac
    g = torch.arange(-(CFG.sig_range + 2) << F, ((CFG.sig_range + 2) << F) + 1)
    sig = sigmoid_fx(g, CFG)
    real = torch.sigmoid(to_float(g, F))
    assert (sig.double() * 2.0 ** -CFG.sig_frac - real).abs().max() <= sigmoid_bound(CFG)
    assert (sig + sigmoid_fx(-g, CFG) == 1 << CFG.sig_frac).all()     # exact symmetry
    assert int(sigmoid_fx(torch.tensor([-(CFG.sig_range << F)]), CFG)) == 0
    big = torch.tensor([INT32_MIN, INT32_MAX, 50 << F, -(50 << F)])
    assert sigmoid_fx(big, CFG).tolist() == [0, 1 << CFG.sig_frac, 1 << CFG.sig_frac, 0]
    s = silu_fx(g, CFG)
    assert _within((s - silu_reference(g, F)).abs(), silu_bound(g, CFG))
    assert silu_fx(big, CFG).tolist() == [0, INT32_MAX, 50 << F, 0]


@pytest.mark.parametrize("seed", SEEDS)
def test_swiglu_against_float(seed):
    x = _x32_cases(seed, K=64)
    gate, up = x[: x.shape[0] // 2], x[x.shape[0] // 2: 2 * (x.shape[0] // 2)]
    for g, u in ((gate, up), (up, gate), (gate, gate)):
        h = swiglu(g, u, config=CFG)
        ref = swiglu_reference(g, u, CFG.frac).clamp(INT32_MIN, INT32_MAX)
        assert _within((h - ref).abs(), swiglu_bound(g, u, CFG))
    h = swiglu(torch.tensor([INT32_MAX, INT32_MIN, INT32_MAX]),
               torch.tensor([INT32_MAX, INT32_MAX, INT32_MIN]), config=CFG)
    assert h.tolist() == [INT32_MAX, 0, INT32_MIN]


# --------------------------------------------------------------------------- the rest
def test_residual_requant_argmax():
    x = torch.tensor([INT32_MAX, INT32_MIN, 5, -5])
    assert residual_add(x, torch.tensor([1, -1, 7, 2])).tolist() == [INT32_MAX, INT32_MIN,
                                                                      12, -3]
    v = torch.tensor([1000, -1000, 3, -3, 2 ** 20 + 1])
    assert requant(v, 14, 10, 16).tolist() == [63, -62, 0, 0, 32767]     # 62.5 -> 63, -62.5 -> -62
    assert requant(v, 10, 14, 16).tolist() == [16000, -16000, 48, -48, 32767]
    assert requant(torch.tensor([[1], [1]]), torch.tensor([[0], [4]]), 2).tolist() == [[4],
                                                                                     [0]]
    assert requant(torch.tensor([-1]), 0, 40).tolist() == [INT32_MIN]
    a = torch.tensor([[3, 7, 7, 1], [-5, -5, -9, -5], [0, 0, 0, 0]])
    assert argmax(a).tolist() == [1, 0, 0]
    assert argmax(a[0]).tolist() == 1


@pytest.mark.parametrize("call, exc, match", [
    (lambda: norm_weight([1.0]), TypeError, "float tensor"),
    (lambda: rmsnorm(torch.zeros(2, 4, dtype=torch.int64), torch.ones(3, dtype=torch.int64),
                     15, eps=1e-5, config=CFG), ValueError, "shape"),
    (lambda: rmsnorm(torch.zeros(2, 4, dtype=torch.int64), torch.full((4,), 1 << 15), 15,
                     eps=1e-5, config=CFG), ValueError, "16-bit"),
    (lambda: rmsnorm(torch.zeros(2, 4, dtype=torch.int64), torch.ones(4, dtype=torch.int64),
                     15, eps=-1.0, config=CFG), ValueError, "eps"),
    (lambda: rmsnorm(torch.zeros(2, 4, dtype=torch.int64), torch.ones(4, dtype=torch.int64),
                     15, eps=1e-5, config=None), TypeError, "SFUConfig"),
    (lambda: rope_table("abc", 8), TypeError, "sequence of floats"),
    (lambda: rope_table([0.1, float("nan")], 8), ValueError, "NaN"),
    (lambda: rope_inv_freq(10000.0, 63), ValueError, "even"),
    (lambda: rope(torch.zeros(2, 4, dtype=torch.int64), *rope_table([1.0, 0.1], 4),
                  torch.tensor([0, 4])), ValueError, "positions 0..3"),
    (lambda: rope(torch.zeros(2, 6, dtype=torch.int64), *rope_table([1.0, 0.1], 4),
                  torch.tensor([0, 1])), ValueError, "D/2"),
    (lambda: rope(torch.zeros(2, 4, dtype=torch.int64), *rope_table([1.0, 0.1], 4),
                  torch.tensor([0, 1, 2])), ValueError, "shape"),
    (lambda: swiglu(torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                    config=CFG), ValueError, "shape"),
    (lambda: swiglu(torch.zeros(2), torch.zeros(2), config=CFG), TypeError, "integer dtype"),
    (lambda: requant(torch.tensor([1]), 14, 10, bits=33), ValueError, "bits must be <= 32"),
    (lambda: requant(torch.tensor([1]), 14.0, 10), TypeError, "from_frac must be an int"),
    (lambda: residual_add(torch.tensor([1]), torch.tensor([1 << 31])), ValueError, "int32"),
    (lambda: argmax(torch.tensor([1.0, 2.0])), TypeError, "integer dtype"),
])
def test_bad_inputs_rest(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- real SmolLM2
REAL_LAYERS = (2, 12, 29)       # before, inside and after the massive-activation layers


def _smollm2_or_skip():
    from helpers.real_model import smollm2
    return smollm2()


def _capture(lm, windows: int, length: int, layers) -> dict[str, torch.Tensor]:
    """Float activations of the model on real text: residual stream at both norms
    (res_a, res_m), q_proj input (ln), q/k projections before RoPE, gate, up, and the
    down_proj input (h), each [tokens, width] (q, k: [windows, heads, length, 64])."""
    from quantflow.text import evaluation_tokens
    m = lm.model
    ids = evaluation_tokens(lm.tokenizer, windows=windows, length=length)
    out: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(mod, args, result=None):
            t = args[0] if result is None else result
            out.setdefault(name, []).append(t.detach().double().reshape(-1, t.shape[-1]))
        return hook

    hooks = []
    for i in layers:
        L = m.model.layers[i]
        hooks += [L.input_layernorm.register_forward_pre_hook(keep(f"res_a{i}")),
                  L.post_attention_layernorm.register_forward_pre_hook(keep(f"res_m{i}")),
                  L.self_attn.q_proj.register_forward_pre_hook(keep(f"ln{i}")),
                  L.self_attn.q_proj.register_forward_hook(keep(f"q{i}")),
                  L.self_attn.k_proj.register_forward_hook(keep(f"k{i}")),
                  L.mlp.gate_proj.register_forward_hook(keep(f"g{i}")),
                  L.mlp.up_proj.register_forward_hook(keep(f"u{i}")),
                  L.mlp.down_proj.register_forward_pre_hook(keep(f"h{i}"))]
    try:
        with torch.no_grad():
            for w in range(windows):
                m.hidden_states(ids[w:w + 1])
    finally:
        for h in hooks:
            h.remove()
    cat = {k: torch.cat(v) for k, v in out.items()}
    D = m.config.head_dim
    for k in [k for k in cat if k[0] in "qk"]:
        cat[k] = cat[k].reshape(windows, length, -1, D).transpose(1, 2)
    return cat


@pytest.fixture(scope="module")
def smollm2_acts():
    lm = _smollm2_or_skip()
    return lm.model, _capture(lm, windows=1, length=160, layers=REAL_LAYERS)


def test_real_quant_a8_and_dequant(smollm2_acts):
    model, acts = smollm2_acts
    F = CFG.frac
    for i in REAL_LAYERS:
        x = to_fixed(acts[f"ln{i}"], F)
        a, mn, L = quant_a8(x)
        exact = quant_a8_exact(x)
        assert (a - exact).abs().max() <= QUANT_A8_CODE_DIFF
        assert (a != exact).double().mean() < 1e-3          # 4.7e-5 on 8 x 512 tokens
        assert (a.double() - quant_a8_float(x)).abs().max() <= QUANT_A8_BOUND
        # q_proj as QoQ step 1 gives it (s1 in fp16, DESIGN §3.2): its s1 spans ~25x
        W = model.model.layers[i].self_attn.q_proj.weight.detach().double()
        s1 = (W.abs().amax(1) / 119).half().double()
        w8 = torch.clamp(torch.round(W / s1[:, None]), -119, 119).long()
        acc = a @ w8.T
        S1, e = weight_scale(s1)
        y = dequant(acc, S1, e, mn, L, in_frac=F, out_frac=F)
        amax = x.abs().amax(-1)
        ref = dequant_reference(acc, s1, amax, in_frac=F, out_frac=F)
        assert _within((y - ref).abs(), dequant_bound(acc, s1, e, amax, in_frac=F, out_frac=F))


def test_real_rmsnorm(smollm2_acts):
    model, acts = smollm2_acts
    F = CFG.frac
    eps = model.config.rms_norm_eps
    for i in REAL_LAYERS:
        layer = model.model.layers[i]
        for name, norm in ((f"res_a{i}", layer.input_layernorm),
                           (f"res_m{i}", layer.post_attention_layernorm)):
            x = to_fixed(acts[name], F)
            w = norm.weight.detach().double()
            NW, e = norm_weight(w)
            y = rmsnorm(x, NW, e, eps=eps, config=CFG)
            ref = rmsnorm_reference(x, w, eps=eps, frac=F)
            assert _within((y - ref).abs(), rmsnorm_bound(x, w, e, eps=eps, config=CFG))
            # the arithmetic alone (a weight NW holds exactly): rounding-level
            exact_w = rmsnorm_reference(x, NW * 2.0 ** -e, eps=eps, frac=F)
            assert (y - exact_w).abs().max() <= 1.0
    # the massive activation is there (layer 12's input), and int32 has room for it
    big = acts["res_a12"].abs().max()
    assert big > 1000 and big * 2 ** F * 4 < INT32_MAX


def test_real_rope_and_swiglu(smollm2_acts):
    from quantflow.models.llama import apply_rope, rope_cos_sin
    model, acts = smollm2_acts
    F = CFG.frac
    cfg = model.config
    f = rope_inv_freq(cfg.rope_theta, cfg.head_dim)
    T = acts[f"q{REAL_LAYERS[0]}"].shape[-2]
    cos, sin = rope_table(f, T)
    pos = torch.arange(T)
    c32, s32 = rope_cos_sin(T, cfg.head_dim, cfg.rope_theta)
    for i in REAL_LAYERS:
        for name in (f"q{i}", f"k{i}"):
            x = to_fixed(acts[name], F)
            out = rope(x, cos, sin, pos)
            assert _within((out - rope_reference(x, f, pos)).abs(), rope_bound(x))
            model_out = apply_rope(acts[name], c32.double(), s32.double()) * 2 ** F
            # + 2 units: the model's float32 angles (p * inv_freq, p < 160)
            assert _within((out - model_out).abs(), rope_bound(x) + 2)
        g, u = to_fixed(acts[f"g{i}"], F), to_fixed(acts[f"u{i}"], F)
        h = swiglu(g, u, config=CFG)
        assert _within((h - swiglu_reference(g, u, F)).abs(), swiglu_bound(g, u, CFG))


@pytest.mark.slow
def test_real_residual_headroom_8x512():
    """SFUConfig.frac = 14 on the measured residual stream: 8 x 512 tokens of Hamlet
    reach max|x| = 24,904 (layers 11..27); frac 14 leaves 2**17 / 24,904 = 5.3x,
    frac 16 would leave 1.3x."""
    from quantflow.text import evaluation_tokens
    lm = _smollm2_or_skip()
    m = lm.model
    ids = evaluation_tokens(lm.tokenizer, windows=8, length=512)
    amax = [0.0]

    def track(mod, args):
        amax[0] = max(amax[0], float(args[0].abs().max()))

    hooks = [L.input_layernorm.register_forward_pre_hook(track) for L in m.model.layers]
    hooks += [L.post_attention_layernorm.register_forward_pre_hook(track)
              for L in m.model.layers]
    hooks.append(m.model.norm.register_forward_pre_hook(track))
    try:
        with torch.no_grad():
            for w in range(ids.shape[0]):
                m.hidden_states(ids[w:w + 1])
    finally:
        for h in hooks:
            h.remove()
    assert 20000 < amax[0] < 2 ** (31 - CFG.frac) / 4
    assert amax[0] > 2 ** (31 - 16) / 2          # frac 16 would leave < 2x
