"""quantflow.fakequant's model-level KV quantization (DESIGN §3.7): the per-token
per-head quantizer's invariants, SmoothAttention and the Hadamard rotation leave
the float model unchanged, sink tokens, and the 8-bit recent window of
quantflow.models.llama.window_attention."""
from __future__ import annotations

import pytest
import torch

from quantflow.fakequant import (collect_llama_stats, fake_quant_kv, fold_hadamard_v,
                                 fold_smooth_attention, hadamard, quantize_kv,
                                 quantize_model, smooth_attention_lambdas)
from quantflow.errors import QuantflowError
from quantflow.models import LlamaConfig, LlamaForCausalLM
from quantflow.schemes import KVScheme, QuantScheme

torch.set_num_threads(1)

CFG = LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
IDS = torch.randint(0, CFG.vocab_size, (3, 48), generator=torch.Generator().manual_seed(3))


def tiny(seed=0):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(CFG).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
        # K outlier channels (as in real LLMs): channel 3 of every KV head
        for layer in m.model.layers:
            w = layer.self_attn.k_proj.weight.view(2, 32, -1)
            w[:, 3] *= 12
    return m


def test_kv_quantizer_invariants():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 50, 64, generator=g) * torch.rand(1, 1, 50, 1, generator=g) * 5
    q, scale, zero, levels = quantize_kv(x, bits=4)
    assert q.min() >= 0 and q.max() <= 15 and torch.equal(q, q.round())
    assert torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= 15
    assert torch.allclose(scale, (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 15)
    deq = (q - zero) * scale
    # every token spans 0, so the integer zero costs nothing: error <= scale / 2
    assert bool(((deq - x).abs() <= scale / 2 * (1 + 1e-5) + 1e-7).all())
    assert torch.equal(fake_quant_kv(x), deq)


def test_kv_quantizer_sinks_constant_and_fractional_zero():
    x = torch.randn(1, 2, 10, 64)
    x[0, 0, 7] = 0.25  # a constant token: exact
    q, scale, zero, levels = quantize_kv(x, bits=4, sink_tokens=3, sink_bits=8)
    assert levels.tolist() == [255.0] * 3 + [15.0] * 7
    assert q[..., :3, :].max() > 15 and q[..., 3:, :].max() <= 15
    deq = (q - zero) * scale
    assert torch.allclose(deq[0, 0, 7], x[0, 0, 7])
    e8 = (deq - x)[..., :3, :].abs().max()
    e4 = (deq - x)[..., 3:, :].abs().max()
    assert e8 < e4 / 8
    # a one-signed token: the integer zero clamps at 0 and saturates; the fractional
    # zero keeps the error within scale / 2
    y = torch.rand(1, 1, 4, 64) + 1.0
    qi, si, zi, _ = quantize_kv(y, integer_zero=True)
    qf, sf, zf, _ = quantize_kv(y, integer_zero=False)
    assert bool((zi == 0).all())
    assert ((qf - zf) * sf - y).abs().max() <= sf.max() / 2 * (1 + 1e-5)
    assert ((qi - zi) * si - y).abs().max() > ((qf - zf) * sf - y).abs().max()


def test_hadamard_is_orthonormal_and_symmetric():
    H = hadamard(64)
    assert torch.allclose(H @ H.T, torch.eye(64), atol=1e-6)
    assert torch.equal(H, H.T)
    with pytest.raises(QuantflowError, match="power-of-two"):
        hadamard(48)


def test_smooth_attention_lambdas_pair_rope_channels():
    kmax = torch.rand(3, 64) * 10
    lam = smooth_attention_lambdas(kmax)
    assert torch.equal(lam[:, :32], lam[:, 32:])
    assert torch.allclose(lam, torch.maximum(kmax[:, :32], kmax[:, 32:]).repeat(1, 2).sqrt())


def test_folds_leave_float_model_unchanged():
    m = tiny()
    with torch.no_grad():
        ref = m(IDS)
        R = fold_hadamard_v(m)
        mid = m(IDS)
        st = collect_llama_stats(m, IDS, progress=False)
        lam = [smooth_attention_lambdas(k) for k in st["kmax"]]
        fold_smooth_attention(m, lam)
        # SmoothAttention flattened K: the outlier channel's max is now ~sqrt of it
        st2 = collect_llama_stats(m, IDS, progress=False)
        for layer in m.model.layers:  # Q/K rotation at run time, after RoPE
            layer.self_attn.qk_rotation = R
        out = m(IDS)
    assert torch.allclose(mid, ref, atol=1e-4, rtol=1e-4), (mid - ref).abs().max()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    ratio = lambda k: float(k.amax() / k.median())  # noqa: E731
    assert ratio(st2["kmax"][0]) < ratio(st["kmax"][0]) / 2


def test_kv4_error_drops_with_smooth_attention_and_sinks():
    m = tiny()
    with torch.no_grad():
        ref = m(IDS)
    err = {}
    for name, kv in {"plain": KVScheme(smooth_attention=False),
                     "smooth": KVScheme(smooth_attention=True),
                     "smooth+had+sinks": KVScheme(smooth_attention=True, hadamard=True,
                                                  sink_tokens=4)}.items():
        qm = quantize_model(m, QuantScheme(name="k", kv=kv), calib_ids=IDS, progress=False)
        with torch.no_grad():
            err[name] = float((qm.model(IDS) - ref).norm() / ref.norm())
    assert 0 < err["smooth"] < err["plain"]
    assert err["smooth+had+sinks"] < err["plain"]


def test_quantize_kv_levels_override():
    x = torch.randn(2, 3, 20, 64)
    q, scale, zero, levels = quantize_kv(x, levels=240)
    assert bool((levels == 240).all()) and q.max() <= 240 and zero.max() <= 240
    assert torch.equal(zero, torch.clamp(torch.round(-x.amin(-1, keepdim=True) / scale), 0, 240))
    assert torch.allclose(scale, (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 240)
    # bits alone keep 2**bits - 1 levels; levels=15 is the same quantizer
    assert all(torch.equal(a, b) for a, b in zip(quantize_kv(x, bits=4), quantize_kv(x, levels=15)))
    with pytest.raises(ValueError, match="levels must be >= 1"):   # golden.validate
        quantize_kv(x, levels=0)


def _window_reference(q, k, v, k8, v8, W):
    """Per query position p: softmax over tokens 0..p, each read from the 8-bit copy
    if it is one of p's last W tokens, else from the 4-bit cache (GQA)."""
    B, H, T, D = q.shape
    g = H // k.shape[1]
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kh, vh = h // g, h // g
            for p in range(T):
                keys = torch.stack([(k8 if t > p - W else k)[b, kh, t] for t in range(p + 1)])
                vals = torch.stack([(v8 if t > p - W else v)[b, vh, t] for t in range(p + 1)])
                a = torch.softmax(keys.double() @ q[b, h, p].double() / D ** 0.5, 0)
                out[b, h, p] = a @ vals.double()
    return out


@pytest.mark.parametrize("W", [1, 3, 8])
def test_window_attention_equals_per_query_reference(W):
    from quantflow.models.llama import window_attention
    g = torch.Generator().manual_seed(W)
    q = torch.randn(2, 4, 11, 16, generator=g)
    k, v, k8, v8 = (torch.randn(2, 2, 11, 16, generator=g) for _ in range(4))
    out = window_attention(q, k, v, k8, v8, W)
    assert torch.allclose(out.double(), _window_reference(q, k, v, k8, v8, W), atol=1e-5)


def test_window_attention_limits():
    """A window covering every token reads only the 8-bit copy; the model's
    window=0 path is the plain quantized SDPA path, bit for bit."""
    import torch.nn.functional as F
    from quantflow.models.llama import window_attention
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 9, 16, generator=g)
    k, v, k8, v8 = (torch.randn(1, 2, 9, 16, generator=g) for _ in range(4))
    rep = lambda x: x.repeat_interleave(2, dim=1)  # noqa: E731
    all8 = F.scaled_dot_product_attention(q, rep(k8), rep(v8), is_causal=True)
    for W in (9, 40):
        assert torch.allclose(window_attention(q, k, v, k8, v8, W), all8, atol=1e-5)
    m = tiny()
    ids = IDS[:1]
    qm = quantize_model(m, QuantScheme(name="k", kv=KVScheme(smooth_attention=False,
                                                                hadamard=True)),
                        calib_ids=ids, progress=False)
    with torch.no_grad():
        out = qm.model(ids)
        for layer in qm.model.model.layers:  # the same quantizer as a bare callable
            a = layer.self_attn
            a.kv_quant = lambda k, v: (fake_quant_kv(k), fake_quant_kv(v))
        assert torch.equal(qm.model(ids), out)


def test_model_window_reads_8bit_recent_tokens():
    """KVScheme.window in the model: window >= T equals every token at 8 bits
    (levels 240), and the window lowers the error of the 4-bit cache."""
    m = tiny()
    ids = IDS[:1]
    T = ids.shape[1]
    with torch.no_grad():
        ref = m(ids)
    kv = dict(smooth_attention=False, hadamard=True)
    out = {}
    for W in (0, 8, T):
        qm = quantize_model(m, QuantScheme(name="k", kv=KVScheme(window=W, **kv)),
                            calib_ids=ids, progress=False)
        assert qm.model.model.layers[0].self_attn.kv_quant.window == W
        with torch.no_grad():
            out[W] = qm.model(ids)
            if W == T:
                for layer in qm.model.model.layers:
                    kq = layer.self_attn.kv_quant
                    layer.self_attn.kv_quant = kq.recent  # every token 8-bit, SDPA path
                all8 = qm.model(ids)
    assert torch.allclose(out[T], all8, atol=1e-4, rtol=1e-4), (out[T] - all8).abs().max()
    err = {W: float((o - ref).norm() / ref.norm()) for W, o in out.items()}
    assert err[T] < err[8] < err[0], err
