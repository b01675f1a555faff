"""golden.mixpe: the integer-exact MixPE specification (DESIGN §3.2/§3.3)."""
import itertools

import numpy as np
import pytest
import torch

from golden.formats import SCALE_BITS

from golden.mixpe_config import MIXPE_WEIGHT_BITS, MixPEConfig
from golden.mixpe import (dequant_w8, float_reference, mixpe_acc, mixpe_group_sums,
                          reference_acc, shift_add_product)


def _operands(cfg: MixPEConfig, M: int, N: int, seed: int):
    """Random legal operands over the full ranges the hardware accepts."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (M, cfg.K), generator=g)
    q = torch.randint(0, cfg.levels + 1, (N, cfg.K), generator=g)
    smax = (1 << SCALE_BITS) - 1
    s2 = torch.randint(1, smax + 1, (N, cfg.groups), generator=g)
    # z in [0, levels] with z*s2 fitting the 8-bit zs2 field
    zmax = torch.clamp(smax // s2, max=cfg.levels)
    z = (torch.rand((N, cfg.groups), generator=g) * (zmax + 1)).floor().long()
    return a, q, s2, z


def _python_acc(a, q, s2, z, group):
    """Independent scalar reference: plain Python ints, then two's-complement wrap."""
    M, K = a.shape
    N = q.shape[0]
    out = [[0] * N for _ in range(M)]
    al, ql, sl, zl = a.tolist(), q.tolist(), s2.tolist(), z.tolist()
    for m in range(M):
        for n in range(N):
            acc = sum(al[m][k] * (ql[n][k] - zl[n][k // group]) * sl[n][k // group]
                      for k in range(K))
            acc &= 0xFFFFFFFF
            out[m][n] = acc - (1 << 32) if acc >> 31 else acc
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("bits", MIXPE_WEIGHT_BITS)
def test_shift_add_product_exhaustive(bits):
    a = torch.arange(-128, 128).view(-1, 1)
    q = torch.arange(0, 1 << bits).view(1, -1)
    assert torch.equal(shift_add_product(a, q, bits), a * q)


def test_shift_add_rejects_code_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        shift_add_product(torch.tensor([1]), torch.tensor([16]), 4)


@pytest.mark.parametrize("bits,group,seed", [(b, g, s) for b in MIXPE_WEIGHT_BITS
                                             for g, s in ((32, 0), (64, 1))])
def test_mixpe_acc_equals_reference(bits, group, seed):
    cfg = MixPEConfig(bits=bits, group=group, rows=2, cols=4, K=4 * group)
    a, q, s2, z = _operands(cfg, M=5, N=7, seed=seed)
    got = mixpe_acc(a, q, s2, z, cfg)
    assert got.dtype == torch.int32 and got.shape == (5, 7)
    assert torch.equal(got, reference_acc(a, dequant_w8(q, s2, z, group)))


def test_mixpe_acc_matches_scalar_python_reference():
    cfg = MixPEConfig(bits=3, group=32, rows=1, cols=1, K=64)
    a, q, s2, z = _operands(cfg, M=3, N=4, seed=7)
    assert torch.equal(mixpe_acc(a, q, s2, z, cfg), _python_acc(a, q, s2, z, 32))


@pytest.mark.parametrize("bits", MIXPE_WEIGHT_BITS)
def test_extremes(bits):
    """a = -128 / 127, q = levels / 0, z = 0 / levels, largest legal s2."""
    cfg = MixPEConfig(bits=bits, group=32, rows=1, cols=1, K=64)
    L = cfg.levels
    smax = (1 << SCALE_BITS) - 1
    cases = []
    for av, qv, zv in itertools.product((-128, 127), (0, L), (0, L)):
        s2v = smax if zv == 0 else smax // zv  # zs2 must still fit 8 bits
        cases.append((av, qv, zv, s2v))
    a = torch.tensor([[c[0]] * cfg.K for c in cases])
    q = torch.tensor([[c[1]] * cfg.K for c in cases])
    z = torch.tensor([[c[2]] * cfg.groups for c in cases])
    s2 = torch.tensor([[c[3]] * cfg.groups for c in cases])
    got = mixpe_acc(a, q, s2, z, cfg)
    want = reference_acc(a, dequant_w8(q, s2, z, cfg.group))
    assert torch.equal(got, want)
    # the diagonal by hand: every k contributes a*(q - z)*s2
    for i, (av, qv, zv, s2v) in enumerate(cases):
        assert int(got[i, i]) == av * (qv - zv) * s2v * cfg.K


def test_reference_acc_wraps_int32():
    """a sum that overflows int32 wraps exactly like the 32-bit adder"""
    a = torch.full((1, 4), -128)
    w8 = torch.full((1, 4), -2**25)  # 4 * 128 * 2**25 = 2**34 -> wraps to 0
    assert int(reference_acc(a, w8)) == 0


def test_group_sums_localise():
    cfg = MixPEConfig(bits=4, group=32, rows=1, cols=1, K=96)
    a, q, s2, z = _operands(cfg, M=2, N=3, seed=3)
    P, A = mixpe_group_sums(a, q, cfg)
    assert P.shape == (2, 3, 3) and A.shape == (2, 3)
    for j in range(cfg.groups):
        sl = slice(j * 32, (j + 1) * 32)
        assert torch.equal(P[:, :, j], a[:, sl] @ q[:, sl].T)
        assert torch.equal(A[:, j], a[:, sl].sum(1))


def test_numpy_inputs_accepted():
    cfg = MixPEConfig(bits=4, group=32, rows=1, cols=1, K=32)
    a, q, s2, z = _operands(cfg, M=2, N=2, seed=4)
    got = mixpe_acc(a.numpy().astype(np.int8), q.numpy().astype(np.uint8), s2.numpy(),
                    z.numpy(), cfg)
    assert torch.equal(got, mixpe_acc(a, q, s2, z, cfg))


def test_float_reference_order_and_shapes():
    acc = torch.tensor([[2, -3], [5, 7]], dtype=torch.int32)
    s1 = torch.tensor([0.5, 0.25], dtype=torch.float16)
    s_a = torch.tensor([2.0, 4.0])
    y = float_reference(acc, s1, s_a)
    assert y.dtype == torch.float32
    assert y.tolist() == [[2.0, -1.5], [10.0, 7.0]]
    with pytest.raises(ValueError, match="s1 must have shape"):
        float_reference(acc, s_a[:1], s_a)


@pytest.mark.parametrize("change,exc,match", [
    (lambda a, q, s2, z: (a + 200, q, s2, z), ValueError, r"a\[.*outside"),
    (lambda a, q, s2, z: (a, q + 16, s2, z), ValueError, r"q\[.*outside"),
    (lambda a, q, s2, z: (a, q, s2 * 0, z), ValueError, r"s2\[.*outside"),
    (lambda a, q, s2, z: (a, q, s2, z + 16), ValueError, r"z\[.*outside"),
    (lambda a, q, s2, z: (a, q, torch.full_like(s2, 100), torch.full_like(z, 3)),
     ValueError, r"z\*s2"),
    (lambda a, q, s2, z: (a[:, :32], q, s2, z), ValueError, "config.K"),
    (lambda a, q, s2, z: (a, q, s2[:, :1], z), ValueError, r"s2 must have shape"),
    (lambda a, q, s2, z: (a[0], q, s2, z), ValueError, "2-D"),
    # a wrong type (not a tensor, or not an integer dtype) is a TypeError
    (lambda a, q, s2, z: (a.float(), q, s2, z), TypeError, "integer dtype"),
    (lambda a, q, s2, z: (a.tolist(), q, s2, z), TypeError, "torch.Tensor"),
    (lambda a, q, s2, z: (a, q, s2.numpy().astype(float), z), TypeError, "numpy dtype"),
])
def test_mixpe_acc_rejects_bad_operands(change, exc, match):
    cfg = MixPEConfig(bits=4, group=32, rows=1, cols=1, K=64)
    a, q, s2, z = _operands(cfg, M=2, N=3, seed=5)
    with pytest.raises(exc, match=match):
        mixpe_acc(*change(a, q, s2, z), cfg)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(bits=5), ValueError, "bits must be one of"),
    (dict(bits=4.0), TypeError, r"got 4.0 \(float\)"),
    (dict(bits=True), TypeError, r"got True \(bool\)"),
    (dict(group=16, K=64), ValueError, "group must be >= 32"),
    (dict(group=512, K=1024), ValueError, "group must be <= 256"),
    (dict(group="64"), TypeError, "group must be an int"),
    (dict(K=100, group=64), ValueError, "e.g. group=50"),
    (dict(rows=0), ValueError, "rows must be >= 1"),
    (dict(cols=True), TypeError, "cols must be an int"),
])
def test_config_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        MixPEConfig(**kw)


def test_config_k_bound():
    from golden.mixpe_config import MIXPE_MAX_K
    big = MIXPE_MAX_K - MIXPE_MAX_K % 64
    assert MixPEConfig(group=64, K=big).K == big
    with pytest.raises(ValueError, match="split the reduction"):
        MixPEConfig(group=64, K=big + 64)


def test_scalar_argument_types():
    with pytest.raises(TypeError, match="bits must be an int"):
        shift_add_product(torch.tensor([1]), torch.tensor([1]), 4.0)
    with pytest.raises(ValueError, match="bits must be >= 1"):
        shift_add_product(torch.tensor([1]), torch.tensor([1]), 0)
    with pytest.raises(TypeError, match="group must be an int"):
        dequant_w8(torch.zeros(1, 32, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                   torch.zeros(1, 1, dtype=torch.long), True)


def test_mixpe_acc_rejects_non_config():
    with pytest.raises(TypeError, match="MixPEConfig"):
        mixpe_acc(torch.zeros(1, 32, dtype=torch.long), torch.zeros(1, 32, dtype=torch.long),
                  torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                  {"bits": 4})


def test_dependency_direction():
    """golden imports no amaranth; quantflow imports neither hdl nor cosim (DESIGN §2)."""
    import subprocess
    import sys
    code = ("import sys, golden.mixpe; assert 'amaranth' not in sys.modules; "
            "import quantflow; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('amaranth', 'hdl', 'cosim', 'fpga_boards')]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
