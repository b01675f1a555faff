"""KV4 (DESIGN §3.7): the per-token per-head quantizer's invariants, SmoothAttention
and the Hadamard rotation leave the float model unchanged, sink tokens (issue 3)."""
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
