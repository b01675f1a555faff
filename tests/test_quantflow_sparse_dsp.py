"""quantflow.prune and quantflow.sparse_dsp: N:M invariants, Wanda vs magnitude,
the image round trip, and bad inputs (nothing half-written)."""
import json

import numpy as np
import pytest
import torch

from golden.sparse_dsp import dense_weights, sparse_dsp_acc
from golden.sparse_dsp_config import PATTERN_NAMES, SparseDSPConfig, TileMode, parse_pattern
from quantflow import QuantflowError, random_activations, random_linear_weights
from quattro_fs import sha256_file
from quantflow.prune import (check_nm_mask, compress, nm_mask, prune_magnitude, prune_wanda,
                             wanda_score)
from quantflow.sparse_dsp import export_sparse_dsp, load_sparse_dsp, quantize_sparse

CFG = SparseDSPConfig(L=8, group_len=4, K=128, qgroup=32)


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_nm_invariants(pattern):
    n, m = parse_pattern(pattern)
    W = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    Wp, mask = prune_magnitude(W, pattern)
    check_nm_mask(mask, pattern)
    assert torch.equal(mask.reshape(6, -1, m).sum(-1), torch.full((6, 64 // m), n))
    # the kept ones are the largest |W| of their block
    blk, mb = W.abs().reshape(6, -1, m), mask.reshape(6, -1, m)
    kept_min = torch.where(mb, blk, torch.inf).amin(-1)
    drop_max = torch.where(~mb, blk, -torch.inf).amax(-1)
    assert bool((kept_min >= drop_max).all())
    vals, idx = compress(Wp, mask, pattern)
    assert vals.shape == (6, 64 * n // m)
    ib = idx.reshape(6, -1, n)
    assert bool((ib[..., 1:] > ib[..., :-1]).all())   # sorted and unique
    assert bool(((idx >= 0) & (idx < m)).all())


def test_wanda_uses_activation_norms():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(16, 64, generator=gen)
    X = torch.randn(256, 64, generator=gen)
    X[:, :8] *= 30.0   # outlier features: Wanda keeps their weights
    Wm, _ = prune_magnitude(W, "2:4")
    Ww, mw = prune_wanda(W, X, "2:4")
    check_nm_mask(mw, "2:4")
    err = lambda Wp: float(((X @ (W - Wp).T) ** 2).sum())  # noqa: E731
    assert err(Ww) < err(Wm)
    # uniform activation norms: Wanda == magnitude
    Xu = torch.ones(4, 64)
    assert torch.equal(prune_wanda(W, Xu, "2:4")[1], prune_magnitude(W, "2:4")[1])
    assert torch.allclose(wanda_score(W, Xu), W.abs() * 2)


def test_prune_errors():
    with pytest.raises(QuantflowError, match="M=8 does not divide K=20"):
        prune_magnitude(torch.randn(2, 20), "2:8")
    with pytest.raises(QuantflowError, match="disagree on K"):
        prune_wanda(torch.randn(2, 16), torch.randn(3, 8), "2:4")
    with pytest.raises(QuantflowError, match="exactly 2"):
        check_nm_mask(torch.ones(1, 4, dtype=torch.bool), "2:4")
    with pytest.raises(QuantflowError, match="unsupported"):
        nm_mask(torch.randn(2, 8), "3:8")


@pytest.mark.parametrize("mode", ["w8a8", "w4a8"])
def test_quantize_sparse_pruned_are_zero(mode):
    tm = TileMode(pattern="2:4", mode=mode, span=2)
    W = random_linear_weights(4, CFG.K, seed=3)
    layer = quantize_sparse(W, config=CFG, mode=tm)
    dense = dense_weights(layer.values, layer.indices, config=CFG, mode=tm, s2=layer.s2, z=layer.z)
    assert int((dense != 0).reshape(4, -1, 4).sum(-1).max()) <= 2
    # integer weights approximate the pruned float weights
    Wp, _ = prune_magnitude(W, "2:4")
    rel = (dense * layer.s1.unsqueeze(1) - Wp).norm() / Wp.norm()
    assert float(rel) < (0.02 if mode == "w8a8" else 0.15)


def _export(tmp_path, name="img", **kw):
    tm = kw.pop("mode", TileMode(pattern="2:8", mode="w4a8", span=1))
    W = random_linear_weights(4, CFG.K, seed=4)
    X = random_activations(3, CFG.K, seed=5)
    return tmp_path / name, export_sparse_dsp(tmp_path / name, CFG, W, X, mode=tm,
                                              method="wanda", calib=X, **kw)


def test_image_roundtrip(tmp_path):
    out, man = _export(tmp_path)
    assert man["block"] == "sparse_dsp" and man["sparsity"]["index_bits"] == 3
    img = load_sparse_dsp(out, CFG)
    acc = sparse_dsp_acc(img.a, img.layer.values, img.layer.indices, config=CFG,
                         mode=img.mode, s2=img.layer.s2, z=img.layer.z)
    assert torch.equal(acc, img.acc)
    assert img.tiles == 4 // 2 * 3 and len(img.words["weight"]) == img.tiles * img.mode.beats(CFG)


def _retamper(out, name, arr):
    np.save(out / name, arr, allow_pickle=False)
    man = json.loads((out / "manifest.json").read_text())
    man["sha256"][name] = sha256_file(out / name)
    (out / "manifest.json").write_text(json.dumps(man))


def test_load_refuses_bad_indices(tmp_path):
    out, _ = _export(tmp_path)
    idx = np.load(out / "indices.npy")
    bad = idx.copy()
    bad[0, 1] = bad[0, 0]                       # duplicate inside a block of 2:8
    _retamper(out, "indices.npy", bad)
    with pytest.raises(QuantflowError, match="strictly increasing"):
        load_sparse_dsp(out, CFG)
    bad = idx.copy()
    bad[1, 3] = 8                               # out of range for M = 8
    _retamper(out, "indices.npy", bad)
    with pytest.raises(QuantflowError, match="outside"):
        load_sparse_dsp(out, CFG)
    _retamper(out, "indices.npy", idx)
    load_sparse_dsp(out, CFG)
    (out / "weight.hex").write_text("0" * 22 + "\n")
    with pytest.raises(QuantflowError, match="sha256"):
        load_sparse_dsp(out, CFG)


def test_nothing_half_written(tmp_path):
    out, _ = _export(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    W = random_linear_weights(3, CFG.K, seed=1)   # 3 rows: not a multiple of 2 segments
    with pytest.raises(QuantflowError, match="pad the layer"):
        export_sparse_dsp(out, CFG, W, random_activations(2, CFG.K, seed=1),
                          mode=TileMode(pattern="2:4", mode="w8a8", span=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(QuantflowError, match="does not divide"):
        export_sparse_dsp(tmp_path / "new", CFG, torch.randn(4, 128),
                          random_activations(2, CFG.K, seed=1),
                          mode=TileMode(pattern="2:4", mode="w8a8", span=4))
    with pytest.raises(QuantflowError, match="needs calibration"):
        export_sparse_dsp(tmp_path / "new", CFG, torch.randn(4, 128),
                          random_activations(2, CFG.K, seed=1),
                          mode=TileMode(pattern="2:4"), method="wanda")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(QuantflowError, match="written for"):
        load_sparse_dsp(out, SparseDSPConfig(L=8, group_len=4, K=128, qgroup=64))


def test_prune_model_every_decoder_linear():
    from torch import nn

    from quantflow.sparse_eval import prune_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.layers = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 8)])
            self.lm_head = nn.Linear(8, 10)

        def forward(self, ids):
            x = self.emb(ids)
            for lin in self.layers:
                x = lin(x)
            return self.lm_head(x)

    torch.manual_seed(0)
    m = Tiny()
    ids = torch.randint(0, 10, (2, 5))
    for method in ("wanda", "magnitude"):
        p = prune_model(m, "2:4", method=method, calib_ids=ids)
        for lin in p.layers:
            check_nm_mask(lin.weight != 0, "2:4")
        assert torch.equal(p.lm_head.weight, m.lm_head.weight)
        assert bool((m.layers[0].weight != 0).all())     # original untouched
    with pytest.raises(QuantflowError, match="calibration"):
        prune_model(m, "2:4", method="wanda")


def test_sparse_eval_refuses_a_rotating_scheme(capsys):
    """A residual rotation (W <- W Q) would make the pruned N:M weights dense again:
    refused by name before the model loads; the default scheme is the unrotated one."""
    from quantflow.sparse_eval import main
    assert main(["--scheme", "w4a8kv4-g64"]) == 2
    err = capsys.readouterr().err
    assert "rotates the residual stream" in err and "w4a8kv4-g64-norot" in err
