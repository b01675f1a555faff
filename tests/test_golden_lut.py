"""golden.lut: table construction and symmetry, bit-plane indices, the odd-code
identity, equality with golden.mixpe on the same quantized weights, bad inputs."""
import itertools

import pytest
import torch

from golden.mixpe_config import MixPEConfig
from golden.lut import (bit_plane_indices, full_table, lut_acc, lut_group_sums,
                        lut_plane_sums, odd_code, symmetric_table, table_lookup)
from golden.lut_config import LUTConfig, LUTMode, MODES
from golden.mixpe import dequant_w8, mixpe_acc, mixpe_group_sums, reference_acc


def _operands(mode, *, M, N, K, group, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (M, K), generator=gen)
    q = torch.randint(0, mode.max_code + 1, (N, K), generator=gen)
    G = K // group
    s2 = torch.randint(1, 256, (N, G), generator=gen)
    if mode.ternary:
        z = torch.ones((N, G), dtype=torch.int64)
    else:
        z = torch.randint(0, mode.levels + 1, (N, G), generator=gen)
    s2 = torch.where(z * s2 > 255, torch.clamp(255 // torch.clamp(z, min=1), min=1), s2)
    return a, q, s2, z


def test_full_table_hand_case():
    a = torch.tensor([[3, -5, 7, 11]])
    t = full_table(a)[0, 0]
    for idx in range(16):
        want = sum((v if (idx >> l) & 1 else -v) for l, v in enumerate([3, -5, 7, 11]))
        assert int(t[idx]) == want
    assert int(t[15]) == 16 and int(t[0]) == -16


def test_symmetry_and_stored_half():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (3, 32), generator=gen)
    full = full_table(a)
    for idx in range(16):
        assert torch.equal(full[..., 15 - idx], -full[..., idx])  # T[~idx] = -T[idx]
    stored = symmetric_table(a)
    assert stored.shape == (3, 8, 8)
    assert torch.equal(stored, full[..., 8:])
    # the all-positive entry is the chunk's activation sum (A comes from the table)
    assert torch.equal(stored[..., 7], a.reshape(3, 8, 4).sum(-1))
    # extremes fit the 11-bit signed entry the RTL uses
    ext = symmetric_table(torch.tensor([[-128, -128, -128, -128]]))
    assert int(ext.min()) == -512


def test_lookup_through_symmetry_equals_full_table():
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(-128, 128, (2, 16), generator=gen)
    idx = torch.randint(0, 16, (5, 4), generator=gen)
    got = table_lookup(symmetric_table(a), idx)
    full = full_table(a)
    want = torch.stack([torch.stack([full[m, torch.arange(4), idx[n]] for n in range(5)])
                        for m in range(2)])
    assert torch.equal(got, want)


def test_bit_plane_indices():
    q = torch.tensor([[0b1010, 0b0110, 0b0001, 0b1111]])
    idx = bit_plane_indices(q, MODES["w4"])
    # plane i: bit t = bit i of the code at k = t
    for i in range(4):
        want = sum((((int(q[0, t]) >> i) & 1) << t) for t in range(4))
        assert int(idx[i, 0, 0]) == want
    assert bit_plane_indices(torch.tensor([[1, 0, 1, 1]]), MODES["w1"]).tolist() == [[[0b1101]]]


@pytest.mark.parametrize("name", ["w1", "w2", "w4", "ternary"])
def test_odd_code_identity(name):
    mode = MODES[name]
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (4, 64), generator=gen)
    q = torch.randint(0, mode.max_code + 1, (6, 64), generator=gen)
    qo = odd_code(q, mode)
    assert bool((qo % 2 != 0).all()) and int(qo.abs().max()) <= mode.levels
    lhs = a @ q.T
    rhs = a @ qo.T + mode.levels * a.sum(1, keepdim=True)
    assert torch.equal(2 * lhs, rhs)
    # and q' is the sum of the +-1 planes: q' = sum_i 2**i (2 q_i - 1)
    planes = sum((1 << i) * (2 * ((q >> i) & 1) - 1) for i in range(mode.bits))
    assert torch.equal(planes, qo)


@pytest.mark.parametrize("name", ["w2", "w4", "ternary"])
@pytest.mark.parametrize("group", [32, 64])
def test_equals_mixpe(name, group):
    mode = MODES[name]
    cfg = LUTConfig(rows=1, cols=8, lanes=4, K=256, group=group)
    mcfg = MixPEConfig(bits=mode.bits, group=group, rows=1, cols=8, K=256)
    a, q, s2, z = _operands(mode, M=3, N=10, K=256, group=group, seed=group + mode.bits)
    Qodd, P, A = lut_group_sums(a, q, cfg, mode)
    Pm, Am = mixpe_group_sums(a, q, mcfg)
    assert torch.equal(P, Pm), "accumulation stage differs from MixPE's group sums"
    assert torch.equal(A, Am)
    assert torch.equal(lut_acc(a, q, s2, z, cfg, mode), mixpe_acc(a, q, s2, z, mcfg))
    assert torch.equal(lut_acc(a, q, s2, z, cfg, mode),
                       reference_acc(a, dequant_w8(q, s2, z, group)))


def test_w1_equals_reference_and_mixpe_as_w2():
    mode = MODES["w1"]
    cfg = LUTConfig(rows=1, cols=8, lanes=8, K=128, group=32)
    a, q, s2, z = _operands(mode, M=2, N=8, K=128, group=32, seed=9)
    got = lut_acc(a, q, s2, z, cfg, mode)
    assert torch.equal(got, reference_acc(a, (q - z.repeat_interleave(32, 1))
                                          * s2.repeat_interleave(32, 1)))
    # W1 codes/zero points are valid W2 codes: MixPE runs them as W2
    assert torch.equal(got, mixpe_acc(a, q, s2, z, MixPEConfig(bits=2, group=32, rows=1,
                                                               cols=8, K=128)))


def test_plane_sums_are_table_accumulations():
    mode = MODES["w2"]
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(-128, 128, (1, 16), generator=gen)
    q = torch.randint(0, 4, (2, 16), generator=gen)
    R = lut_plane_sums(a, q, mode, 8)
    for i, m, n, j in itertools.product(range(2), range(1), range(2), range(2)):
        t = 2 * ((q[n, 8 * j:8 * j + 8] >> i) & 1) - 1
        assert int(R[i, m, n, j]) == int((a[m, 8 * j:8 * j + 8] * t).sum())


def test_int32_wrap_matches_mixpe():
    mode = MODES["w4"]
    K = 8192
    cfg = LUTConfig(rows=1, cols=4, lanes=4, K=K, group=256)
    a = torch.full((1, K), -128)
    q = torch.zeros((2, K), dtype=torch.int64)
    s2 = torch.full((2, K // 256), 17)
    z = torch.full((2, K // 256), 15)
    got = lut_acc(a, q, s2, z, cfg, mode)
    want = mixpe_acc(a, q, s2, z, MixPEConfig(bits=4, group=256, rows=1, cols=4, K=K))
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bits, exc", [(0, ValueError), (3, ValueError), (5, ValueError),
                                       (8, ValueError), (True, TypeError), ("2", TypeError)])
def test_bad_bits(bits, exc):
    with pytest.raises(exc, match="W1, W2, W4 or ternary"):
        LUTMode(bits=bits)


def test_ternary_must_be_bool():
    with pytest.raises(TypeError, match="ternary must be a bool"):
        LUTMode(bits=2, ternary=1)


def test_bad_mode_parse_and_ternary_bits():
    with pytest.raises(ValueError, match="unknown LUT weight format"):
        LUTMode.parse("w3")
    with pytest.raises(ValueError, match="ternary weights are 2-bit"):
        LUTMode(bits=4, ternary=True)
    assert LUTMode.parse("Ternary") == LUTMode(bits=2, ternary=True)


@pytest.mark.parametrize("kw, match", [
    (dict(K=1026, group=64), "multiple of 4"),
    (dict(K=96, group=64), "not a multiple of group"),
    (dict(cols=60, lanes=8), "multiple of lanes"),
    (dict(group=16), "group must be >= 32"),
    (dict(group=512, K=1024), "group must be <= 256"),
    (dict(group=34, K=340), "multiple of 4"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        LUTConfig(**kw)


def test_bad_operands():
    cfg = LUTConfig(rows=1, cols=4, lanes=4, K=64, group=32)
    a = torch.zeros((1, 64), dtype=torch.int64)
    q = torch.zeros((4, 64), dtype=torch.int64)
    s2 = torch.ones((4, 2), dtype=torch.int64)
    z = torch.ones((4, 2), dtype=torch.int64)
    tern = LUTMode(bits=2, ternary=True)
    with pytest.raises(ValueError, match="ternary codes"):
        lut_acc(a, q + 3, s2, z, cfg, tern)
    with pytest.raises(ValueError, match="zero point 1"):
        lut_acc(a, q, s2, z * 0, cfg, tern)
    with pytest.raises(ValueError, match="1-bit unsigned codes"):
        lut_acc(a, q + 2, s2, z, cfg, LUTMode(bits=1))
    with pytest.raises(ValueError, match="multiple of 4"):
        symmetric_table(torch.zeros((1, 6), dtype=torch.int64))
    with pytest.raises(ValueError, match="config.K"):
        lut_acc(a[:, :32], q[:, :32], s2, z, cfg, LUTMode(bits=2))
    with pytest.raises(TypeError, match="integer dtype"):
        lut_acc(a.float(), q, s2, z, cfg, LUTMode(bits=2))
    with pytest.raises(TypeError, match="LUTMode"):
        lut_acc(a, q, s2, z, cfg, 2)
    with pytest.raises(TypeError, match="LUTConfig"):
        lut_acc(a, q, s2, z, {"K": 64}, LUTMode(bits=2))
    with pytest.raises(TypeError, match="group must be an int"):
        lut_plane_sums(a, q, LUTMode(bits=2), 32.0)
