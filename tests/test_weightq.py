"""quantflow.weightq: RTN / QoQ / clip search / AWQ / GPTQ invariants and bad inputs."""
from dataclasses import dataclass

import pytest
import torch

import quantflow as qf
from golden.formats import QOQ_W8_QMAX, SCALE_BITS
from golden.mixpe import dequant_w8
from quantflow.weightq import (Calibration, WeightQuantOptions, output_error,
                               quantize_shared, quantize_weight)


@dataclass(frozen=True)
class Scheme:  # the attributes quantize_weight reads (quantflow.schemes.WeightScheme)
    method: str = "qoq"
    bits: int = 4
    group: int | None = 64
    clip_search: bool = False
    awq: bool = False
    gptq: bool = False


def _layer(N=48, K=128, T=512, seed=0, outliers=True):
    """Synthetic layer with correlated inputs (a random mixing matrix) and a few
    large-magnitude input channels, like real LLM activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g) / K ** 0.5
    X = torch.randn(T, K, generator=g) @ mix + 0.05 * torch.randn(T, K, generator=g)
    if outliers:
        X[:, :3] *= 15.0
    W = qf.random_linear_weights(N, K, seed=seed, outlier_channels=1)
    return W, X


def _out_err(W, fake, X, s=None):
    Xs = X if s is None else X / s
    return float(((X @ W.T - Xs @ fake.T) ** 2).sum())


ALL = [(m, c, a, g) for m in ("rtn-sym", "rtn-asym", "qoq")
       for (c, a, g) in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1))]


# ------------------------------------------------------------------ format invariants
@pytest.mark.parametrize("method,clip,awq,gptq", ALL)
def test_invariants_every_combination(method, clip, awq, gptq):
    W, X = _layer()
    sch = Scheme(method=method, clip_search=bool(clip), awq=bool(awq), gptq=bool(gptq))
    r = quantize_weight(W, scheme=sch, calib=Calibration.from_activations(X))
    assert r.w_fake.shape == W.shape and r.w_fake.dtype == torch.float32
    assert (r.input_scale is not None) == bool(awq)
    Wt = W * r.input_scale if awq else W
    G = W.shape[1] // 64
    if method == "qoq":
        qw = r.qoq
        L = (1 << 4) - 1
        assert qw.q.min() >= 0 and qw.q.max() <= L
        assert qw.z.min() >= 0 and qw.z.max() <= L
        assert qw.s2.min() >= 1 and qw.s2.max() < (1 << SCALE_BITS)
        assert (qw.z * qw.s2).max() < (1 << SCALE_BITS)
        assert qw.s1.dtype == torch.float16 and qw.s2.shape == (W.shape[0], G)
        w8 = dequant_w8(qw.q, qw.s2, qw.z, 64)       # golden reconstruction
        assert w8.abs().max() <= 127
        assert torch.equal(r.w_fake, w8.to(torch.float32) * qw.s1.float().unsqueeze(1))
    else:
        assert r.qoq is None
        # each group holds at most 2**bits distinct values (2**bits - 1 symmetric)
        cap = 15 if method == "rtn-sym" else 16
        vals = r.w_fake.view(W.shape[0], G, 64)
        for n in range(0, W.shape[0], 7):
            for j in range(G):
                assert vals[n, j].unique().numel() <= cap
    # close to the (scaled) weights; GPTQ trades weight error for output error
    assert float((r.w_fake - Wt).norm() / Wt.norm()) < (0.5 if gptq else 0.2)
    assert 0 < r.stats["out_err"] < 0.05


def test_qoq_plain_equals_quantize_qoq():
    W, _ = _layer(outliers=False)
    W[3] = 0.0
    r = quantize_weight(W, scheme=Scheme(group=32))
    ref = qf.quantize_qoq(W, bits=4, group=32)
    for a in ("q", "s1", "s2", "z"):
        assert torch.equal(getattr(r.qoq, a), getattr(ref, a)), a
    assert torch.equal(r.w_fake, ref.dequantize())


@pytest.mark.parametrize("gptq", [False, True])
def test_qoq_zero_channel_stays_zero(gptq):
    W, X = _layer()
    W[5] = 0.0
    r = quantize_weight(W, scheme=Scheme(clip_search=True, gptq=gptq),
                        calib=Calibration.from_activations(X))
    assert r.qoq.s1[5] == 0 and (r.qoq.q[5] == 0).all() and (r.qoq.z[5] == 0).all()
    assert (r.qoq.s2[5] == 1).all() and (r.w_fake[5] == 0).all()


@pytest.mark.parametrize("method", ["rtn-sym", "rtn-asym", "qoq"])
def test_per_channel_group_none(method):
    W, X = _layer()
    r = quantize_weight(W, scheme=Scheme(method=method, group=None, clip_search=True),
                        calib=Calibration.from_activations(X))
    if method == "qoq":
        assert r.qoq.group == W.shape[1] and r.qoq.s2.shape == (W.shape[0], 1)
    else:
        assert r.w_fake[0].unique().numel() <= 16


def test_rtn_asym_plain_matches_definition():
    W, _ = _layer(N=4, K=64)
    r = quantize_weight(W, scheme=Scheme(method="rtn-asym", bits=3, group=32))
    for n in range(4):
        for j in range(2):
            w = W[n, 32 * j:32 * j + 32]
            lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
            scale = (hi - lo) / 7
            z = min(max(round(-lo / scale), 0), 7)
            want = [(min(max(round(float(v) / scale) + z, 0), 7) - z) * scale for v in w]
            torch.testing.assert_close(r.w_fake[n, 32 * j:32 * j + 32],
                                       torch.tensor(want), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ searches
@pytest.mark.parametrize("method", ["rtn-sym", "rtn-asym", "qoq"])
def test_clip_search_never_worse_per_channel(method):
    W, X = _layer(seed=3)
    cal = Calibration.from_activations(X)
    plain = quantize_weight(W, scheme=Scheme(method=method))
    clip = quantize_weight(W, scheme=Scheme(method=method, clip_search=True), calib=cal)
    H = X.T.double() @ X.double()
    e_plain = output_error(W - plain.w_fake, H)
    e_clip = output_error(W - clip.w_fake, H)
    assert (e_clip <= e_plain * (1 + 1e-9) + 1e-12).all()
    assert e_clip.sum() < e_plain.sum()        # on outlier-heavy data it does help
    assert clip.stats["clip_min"] < 1.0


@pytest.mark.parametrize("method", ["rtn-sym", "rtn-asym", "qoq"])
def test_gptq_beats_rtn_on_correlated_inputs(method):
    W, X = _layer(seed=4)
    cal = Calibration.from_activations(X)
    rtn = quantize_weight(W, scheme=Scheme(method=method))
    gq = quantize_weight(W, scheme=Scheme(method=method, gptq=True), calib=cal)
    assert _out_err(W, gq.w_fake, X) < 0.8 * _out_err(W, rtn.w_fake, X)


def test_gptq_act_order_valid_and_better_than_rtn():
    W, X = _layer(seed=5)
    cal = Calibration.from_activations(X)
    opts = WeightQuantOptions(act_order=True)
    gq = quantize_weight(W, scheme=Scheme(gptq=True, clip_search=True), calib=cal,
                         options=opts)
    rtn = quantize_weight(W, scheme=Scheme(clip_search=True), calib=cal)
    w8 = dequant_w8(gq.qoq.q, gq.qoq.s2, gq.qoq.z, 64)
    assert torch.equal(gq.w_fake, w8.float() * gq.qoq.s1.float().unsqueeze(1))
    assert _out_err(W, gq.w_fake, X) < _out_err(W, rtn.w_fake, X)


def test_awq_scale_folding_and_not_worse():
    W, X = _layer(seed=6)
    cal = Calibration.from_activations(X)
    plain = quantize_weight(W, scheme=Scheme(method="rtn-asym"))
    r = quantize_weight(W, scheme=Scheme(method="rtn-asym", awq=True), calib=cal)
    s = r.input_scale
    assert s.shape == (W.shape[1],) and (s > 0).all()
    # the documented side: (x / s) @ w_fake.T == x @ effective_weight().T
    torch.testing.assert_close((X / s) @ r.w_fake.T, X @ r.effective_weight().T,
                               rtol=1e-4, atol=1e-4)
    assert _out_err(W, r.w_fake, X, s) <= _out_err(W, plain.w_fake, X) * (1 + 1e-6)
    assert 0.0 <= r.stats["awq_alpha"] <= 1.0


def test_shared_scale_for_layers_reading_one_input():
    W, X = _layer(seed=7)
    W2 = qf.random_linear_weights(16, W.shape[1], seed=9)
    rs = quantize_shared([W, W2], scheme=Scheme(awq=True, clip_search=True),
                         calib=Calibration.from_activations(X), names=["q", "k"])
    assert len(rs) == 2 and torch.equal(rs[0].input_scale, rs[1].input_scale)
    assert rs[1].w_fake.shape == W2.shape and rs[1].stats["name"] == "k"


def test_deterministic():
    W, X = _layer(seed=8)
    sch = Scheme(clip_search=True, awq=True, gptq=True)
    a = quantize_weight(W, scheme=sch, calib=Calibration.from_activations(X))
    b = quantize_weight(W, scheme=sch, calib=Calibration.from_activations(X))
    assert torch.equal(a.w_fake, b.w_fake) and torch.equal(a.qoq.q, b.qoq.q)


def test_calibration_merge_equals_whole():
    _, X = _layer()
    a = Calibration.from_activations(X[:200]).merge(Calibration.from_activations(X[200:]))
    b = Calibration.from_activations(X.view(2, 256, -1))     # leading dims flatten
    assert a.tokens == b.tokens == X.shape[0]
    torch.testing.assert_close(a.xtx, b.xtx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a.mean_abs, X.double().abs().mean(0))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    W, X = _layer()
    cal = Calibration.from_activations(X)
    Wn = W.clone()
    Wn[2, 7] = float("nan")
    with pytest.raises(qf.QuantflowError, match=r"layers\.0\.q_proj.*non-finite.*\[2, 7\]"):
        quantize_weight(Wn, scheme=Scheme(), name="layers.0.q_proj")
    Xn = X.clone()
    Xn[1, 1] = float("inf")
    with pytest.raises(qf.QuantflowError, match="calib_x.*non-finite"):
        Calibration.from_activations(Xn, name="calib_x")
    with pytest.raises(qf.QuantflowError, match="fewer than"):
        quantize_weight(W, scheme=Scheme(gptq=True),
                        calib=Calibration.from_activations(X[:10]))
    with pytest.raises(qf.QuantflowError, match="K=64 features but W has K=128"):
        quantize_weight(W, scheme=Scheme(clip_search=True),
                        calib=Calibration.from_activations(X[:, :64]))
    with pytest.raises(qf.QuantflowError, match="need calibration"):
        quantize_weight(W, scheme=Scheme(awq=True))
    with pytest.raises(qf.QuantflowError, match="not a multiple of group=48"):
        quantize_weight(W, scheme=Scheme(group=48))
    with pytest.raises(qf.QuantflowError, match="method='gptq' is not supported"):
        quantize_weight(W, scheme=Scheme(method="gptq"))
    with pytest.raises(qf.QuantflowError, match="bits=5"):
        quantize_weight(W, scheme=Scheme(bits=5))
    with pytest.raises(qf.QuantflowError, match="must have method"):
        quantize_weight(W, scheme=object())
    with pytest.raises(qf.QuantflowError, match="floating-point"):
        quantize_weight(W.to(torch.int32), scheme=Scheme())
    with pytest.raises(qf.QuantflowError, match="in_features but q has"):
        quantize_shared([W, W[:, :64]], scheme=Scheme(), names=["q", "k"])
    with pytest.raises(qf.QuantflowError, match="Calibration"):
        quantize_weight(W, scheme=Scheme(gptq=True), calib=X)


# ------------------------------------------------------------------ whole model
def _tiny_llama():
    from quantflow.models.llama import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
        for layer in m.model.layers:   # non-trivial norms so folding is exercised
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return m


def test_llama_awq_folding_preserves_float_model():
    """With 8-bit RTN the quantization is nearly lossless, so the model output after
    folding all AWQ scales (norms, v_proj rows, up_proj rows) must stay close."""
    from quantflow.weightq import quantize_llama_weights
    m = _tiny_llama()
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids)
    res = quantize_llama_weights(m, ids, scheme=Scheme(method="rtn-asym", bits=8, awq=True),
                                 progress=False)
    assert len(res) == 2 * 7
    assert any(not torch.all(r.input_scale == 1) for r in res.values())
    with torch.no_grad():
        out = m(ids)
    assert float((out - ref).norm() / ref.norm()) < 0.02


def test_llama_qoq_gptq_results_are_golden_format():
    from quantflow.weightq import quantize_llama_weights
    m = _tiny_llama()
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(2))
    res = quantize_llama_weights(m, ids, scheme=Scheme(group=32, clip_search=True, awq=True,
                                                      gptq=True), progress=False)
    for name, r in res.items():
        w8 = dequant_w8(r.qoq.q, r.qoq.s2, r.qoq.z, 32)
        assert torch.equal(r.w_fake, w8.float() * r.qoq.s1.float().unsqueeze(1)), name
        lin = m.get_submodule(name)
        assert torch.equal(lin.weight.data, r.w_fake), name


def test_gptq_generalises_to_held_out_tokens_with_few_calibration_tokens():
    # Few calibration tokens for K (as a K=1536 down_proj with 2048 tokens): the
    # default damping must keep GPTQ better than plain rounding on *unseen* tokens
    # of the same distribution, not only on the calibration set it fitted.
    W, X = _layer(N=48, K=256, T=4096 + 320, seed=11, outliers=False)
    Xc, Xh = X[:320], X[320:]
    cal = Calibration.from_activations(Xc)
    rtn = quantize_weight(W, scheme=Scheme(clip_search=True), calib=cal)
    gq = quantize_weight(W, scheme=Scheme(clip_search=True, gptq=True), calib=cal)
    assert _out_err(W, gq.w_fake, Xh) < _out_err(W, rtn.w_fake, Xh)


# ------------------------------------------------------------------ INT8 reconstruction
def _reach_ok(qw) -> bool:
    """Every path's promise (quantflow.qoq step 3): |q - z| <= round(119 / s2) per
    group, the codes plain QoQ reaches from step-1 codes in [-119, 119]."""
    s2 = qw.s2.repeat_interleave(qw.group, dim=1).double()
    z = qw.z.repeat_interleave(qw.group, dim=1)
    return bool(((qw.q - z).abs().double() <= torch.round(QOQ_W8_QMAX / s2)).all())


@pytest.mark.parametrize("path", ["w4a8kv4-g64", "weights", "weights-act-order", "plain",
                                  "clip", "w3-gptq"])
def test_w4_reconstruction_stays_int8_in_every_path(path):
    """The default scheme's GPTQ re-rounds with fixed (s2, z); on a small random Llama
    it used to reach (q - z) * s2 = 128..130 in most layers."""
    from dataclasses import replace
    from quantflow.fakequant import quantize_model
    from quantflow.schemes import QuantScheme, get_scheme
    full = get_scheme("w4a8kv4-g64")
    w = full.weight
    scheme, opts = {
        "w4a8kv4-g64": (full, None),
        "weights": (QuantScheme(name="w", weight=w), None),
        "weights-act-order": (QuantScheme(name="w", weight=w), WeightQuantOptions(act_order=True)),
        "plain": (QuantScheme(name="w", weight=replace(w, clip_search=False, awq=False,
                                                       gptq=False)), None),
        "clip": (QuantScheme(name="w", weight=replace(w, awq=False, gptq=False)), None),
        "w3-gptq": (QuantScheme(name="w", weight=replace(w, bits=3)), None),
    }[path]
    ids = torch.randint(0, 96, (2, 64), generator=torch.Generator().manual_seed(3))
    qm = quantize_model(_tiny_llama(), scheme, calib_ids=ids, weight_options=opts,
                        progress=False, keep_reference=False)
    assert len(qm.weights) == 2 * 7
    for name, r in qm.weights.items():
        assert _reach_ok(r.qoq), name
        if r.qoq.bits == 4:
            assert int(r.qoq.w8().abs().max()) <= 127, name


def test_gptq_damping_follows_calibration_tokens_per_feature():
    """Unset, GPTQ's damping is GPTQ_DAMP_FEW below GPTQ_TOKENS_PER_FEATURE calibration
    tokens per input feature and GPTQ_DAMP from there; a set value wins; a bad one is
    refused by name. The layer's stats record the damping used."""
    from quantflow.errors import QuantflowError
    from quantflow.weightq.core import GPTQ_DAMP, GPTQ_DAMP_FEW, GPTQ_TOKENS_PER_FEATURE
    o = WeightQuantOptions()
    K = 1536
    assert o.damping(GPTQ_TOKENS_PER_FEATURE * K - 1, K) == GPTQ_DAMP_FEW
    assert o.damping(GPTQ_TOKENS_PER_FEATURE * K, K) == GPTQ_DAMP
    assert WeightQuantOptions(gptq_damp=0.01).damping(10, K) == 0.01
    for bad in (0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(QuantflowError, match="gptq_damp must be a positive number"):
            WeightQuantOptions(gptq_damp=bad)
    W, X = _layer(N=16, K=64, T=GPTQ_TOKENS_PER_FEATURE * 64, seed=3, outliers=False)
    for T, want in ((64, GPTQ_DAMP_FEW), (GPTQ_TOKENS_PER_FEATURE * 64, GPTQ_DAMP)):
        r = quantize_weight(W, scheme=Scheme(gptq=True),
                            calib=Calibration.from_activations(X[:T]))
        assert r.stats["gptq_damp"] == want
