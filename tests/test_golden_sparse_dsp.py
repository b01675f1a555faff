"""golden.sparse_dsp: against the dense integer reference and golden.mixpe,
the group split, hand cases, and every bad input."""
import pytest
import torch

from golden.mixpe_config import MixPEConfig
from golden.mixpe import mixpe_acc, reference_acc
from golden.sparse_dsp import (chain_stages, check_compressed, compress_dense, dense_weights,
                               expand, sparse_dsp_acc)
from golden.sparse_dsp_config import (MODES, PATTERN_NAMES, SparseDSPConfig, TileMode,
                                      parse_pattern)

CFG = SparseDSPConfig(L=8, group_len=4, K=128, qgroup=32)


def random_compressed(R, pattern, K, gen, *, w4):
    n, m = parse_pattern(pattern)
    blocks = K // m
    idx = torch.stack([torch.randperm(m, generator=gen)[:n].sort().values
                       for _ in range(R * blocks)]).reshape(R, -1)
    if w4:
        vals = torch.randint(0, 16, idx.shape, generator=gen)
    else:
        vals = torch.randint(-128, 128, idx.shape, generator=gen)
    return vals, idx


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("span", CFG.spans)
def test_against_dense_reference_and_mixpe(pattern, mode, span):
    gen = torch.Generator().manual_seed(hash((pattern, mode, span)) % 1000)
    tm = TileMode(pattern=pattern, mode=mode, span=span)
    R = 2 * tm.segments(CFG)
    vals, idx = random_compressed(R, pattern, CFG.K, gen, w4=tm.w4)
    a = torch.randint(-128, 128, (3, CFG.K), generator=gen)
    Q = CFG.K // CFG.qgroup
    s2 = torch.randint(1, 16, (R, Q), generator=gen) if tm.w4 else None
    z = torch.randint(0, 16, (R, Q), generator=gen) if tm.w4 else None
    acc = sparse_dsp_acc(a, vals, idx, config=CFG, mode=tm, s2=s2, z=z)
    dense = dense_weights(vals, idx, config=CFG, mode=tm, s2=s2, z=z)
    assert torch.equal(acc, reference_acc(a, dense))
    # pruned positions hold no weight
    n, m = parse_pattern(pattern)
    assert int((dense != 0).reshape(R, -1, m).sum(-1).max()) <= n
    if tm.w4:  # MixPE's per-group dequantization on the dense codes, q = z where pruned
        zd = z.repeat_interleave(CFG.qgroup, 1)
        q = expand(vals, idx, pattern, CFG.K, fill=zd)
        mcfg = MixPEConfig(bits=4, group=CFG.qgroup, rows=1, cols=1, K=CFG.K)
        assert torch.equal(acc, mixpe_acc(a, q, s2, z, mcfg))


def test_group_split_stages():
    gen = torch.Generator().manual_seed(3)
    for span in CFG.spans:
        tm = TileMode(pattern="2:8", mode="w8a8", span=span)
        R = tm.segments(CFG)
        vals, idx = random_compressed(R, "2:8", CFG.K, gen, w4=False)
        a = torch.randint(-128, 128, (2, CFG.K), generator=gen)
        st = chain_stages(a, vals, idx, config=CFG, mode=tm)
        B = tm.beats(CFG)
        assert st.group_sums.shape == (2, R, B, span)
        assert torch.equal(st.group_sums.sum(-1), st.beat_sums)
        # group g of beat b holds the products of kept values b*seg_len + g*gl ...
        k = (torch.arange(vals.shape[1]) // 2 * 8).unsqueeze(0) + idx
        prod = a[:, k] * vals
        gl = CFG.group_len
        b, g = B - 1, span - 1
        c0 = b * tm.seg_len(CFG) + g * gl
        assert torch.equal(st.group_sums[:, :, b, g], prod[:, :, c0:c0 + gl].sum(-1))


def test_hand_case():
    cfg = SparseDSPConfig(L=4, group_len=4, K=32, qgroup=32)
    tm = TileMode(pattern="1:4", mode="w8a8", span=1)
    a = torch.arange(32).unsqueeze(0) - 16          # a[k] = k - 16
    idx = torch.full((1, 8), 3)                      # keep k = 4b + 3
    vals = torch.full((1, 8), 2)
    want = 2 * sum(4 * b + 3 - 16 for b in range(8))
    assert int(sparse_dsp_acc(a, vals, idx, config=cfg, mode=tm)[0, 0]) == want
    # W4A8: (q - z) * s2 with q = 5, z = 3, s2 = 7 -> w = 14
    tm4 = TileMode(pattern="1:4", mode="w4a8", span=1)
    acc = sparse_dsp_acc(a, torch.full((1, 8), 5), idx, config=cfg, mode=tm4,
                         s2=torch.tensor([[7]]), z=torch.tensor([[3]]))
    assert int(acc[0, 0]) == want * 7


def test_int32_wrap():
    cfg = SparseDSPConfig(L=8, group_len=4, K=2048, qgroup=64)
    tm = TileMode(pattern="dense", mode="w8a8", span=2)
    a = torch.full((1, 2048), -128)
    vals = torch.full((1, 2048), -128)
    acc = sparse_dsp_acc(a, vals, torch.zeros_like(vals), config=cfg, mode=tm)
    assert int(acc[0, 0]) == ((128 * 128 * 2048 + 2**31) % 2**32) - 2**31


def test_compress_dense_roundtrip():
    gen = torch.Generator().manual_seed(5)
    for p in PATTERN_NAMES:
        vals, idx = random_compressed(3, p, 64, gen, w4=False)
        vals[vals == 0] = 1
        d = expand(vals, idx, p, 64)
        v2, i2 = compress_dense(d, p)
        assert torch.equal(v2, vals) and torch.equal(i2, idx)


@pytest.mark.parametrize("kw,match", [
    (dict(L=8, group_len=3), "does not divide L"),
    (dict(L=12, group_len=4), "power of two"),
    (dict(L=8, group_len=2), "multiple of 4"),
    (dict(L=8, group_len=4, K=500), "multiple of the widest"),
    (dict(L=8, group_len=4, K=512, qgroup=48), "qgroup"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SparseDSPConfig(**kw)


@pytest.mark.parametrize("make", [
    lambda: SparseDSPConfig(L="8"),
    lambda: SparseDSPConfig(qgroup=64.0),
    lambda: TileMode(span=2.0),
    lambda: TileMode(pattern=4),
    lambda: chain_stages(torch.zeros(1, 128, dtype=torch.int64), torch.zeros(1, 128),
                         torch.zeros(1, 128), config=object(), mode=TileMode()),
    lambda: check_compressed(torch.ones(1, 4), torch.zeros(1, 4, dtype=torch.int64), "2:4", 8),
])
def test_wrong_types(make):
    with pytest.raises(TypeError):
        make()


def test_mode_errors():
    with pytest.raises(ValueError, match="unsupported sparsity pattern"):
        TileMode(pattern="3:4")
    with pytest.raises(ValueError, match="mode must be"):
        TileMode(mode="w2a8")
    with pytest.raises(ValueError, match="does not divide the 2 DSP groups"):
        TileMode(span=4).check(CFG)
    assert TileMode(pattern="4:4").pattern == "dense"


def test_compressed_errors():
    ok_v, ok_i = torch.ones(1, 4, dtype=torch.int64), torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="M=4 does not divide K=10"):
        check_compressed(torch.ones(1, 5, dtype=torch.int64), torch.zeros(1, 5, dtype=torch.int64), "2:4", 10)
    with pytest.raises(ValueError, match="outside"):
        check_compressed(ok_v, torch.tensor([[0, 4, 1, 2]]), "2:4", 8)
    with pytest.raises(ValueError, match="strictly increasing"):   # duplicate
        check_compressed(ok_v, torch.tensor([[1, 1, 0, 2]]), "2:4", 8)
    with pytest.raises(ValueError, match="strictly increasing"):   # unsorted
        check_compressed(ok_v, torch.tensor([[2, 1, 0, 2]]), "2:4", 8)
    with pytest.raises(ValueError, match=r"\[R, K\*N/M\]"):        # more than N per block
        check_compressed(torch.ones(1, 6, dtype=torch.int64), torch.zeros(1, 6, dtype=torch.int64), "2:4", 8)
    check_compressed(ok_v, ok_i, "2:4", 8)
    with pytest.raises(ValueError, match="do not fill whole tiles"):
        sparse_dsp_acc(torch.zeros(1, 128, dtype=torch.int64), torch.ones(1, 64, dtype=torch.int64),
                       torch.tensor([[0, 1] * 32]), config=CFG,
                       mode=TileMode(pattern="2:4", span=1))
    with pytest.raises(ValueError, match="more than N=2"):
        compress_dense(torch.tensor([[1, 1, 1, 0]]), "2:4")
    with pytest.raises(ValueError, match="outside"):  # W8 value out of int8
        sparse_dsp_acc(torch.zeros(1, 128, dtype=torch.int64), torch.full((2, 64), 200),
                       torch.tensor([[0, 1] * 32] * 2), config=CFG,
                       mode=TileMode(pattern="2:4", span=1))
