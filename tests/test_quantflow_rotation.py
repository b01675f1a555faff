"""quantflow.rotation: Hadamard / random orthogonal matrices, the RMSNorm fold and
the residual rotation leave a Llama's float logits unchanged; the rotated schemes
validate, quantize and compile."""
from __future__ import annotations

import pytest
import torch

from quantflow.errors import QuantflowError
from quantflow.fakequant import quantize_model
from quantflow.models import LlamaConfig
from quantflow.rotation import (ROTATION_KINDS, fuse_norms, hadamard_matrix, massive_channels,
                                partial_rotation, rotate_model, rotate_residual,
                                rotation_matrix)
from quantflow.schemes import (ROTATION_KINDS as SCHEME_KINDS, QuantScheme, RotationScheme,
                               get_scheme)
from helpers.tiny_llama import tiny_llama

torch.set_num_threads(1)

# hidden 192 = 12 x 16 (a Hadamard order with Paley's H12) = 3 blocks of 64
CFG = LlamaConfig(vocab_size=61, hidden_size=192, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=3, num_key_value_heads=1, rope_theta=10000.0)
IDS = torch.randint(0, CFG.vocab_size, (3, 40), generator=torch.Generator().manual_seed(5))
EYE = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731


def _close(a, b, tol=2e-5):
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


@pytest.mark.parametrize("n", [1, 2, 12, 48, 64, 192, 576, 1536])
def test_hadamard_is_orthonormal_pm1(n):
    H = hadamard_matrix(n)
    assert H.dtype == torch.float64 and H.shape == (n, n)
    assert torch.allclose(H @ H.T, EYE(n), atol=1e-12)
    assert torch.allclose(H.abs(), torch.full_like(H, n ** -0.5))


def test_hadamard_order_refused():
    with pytest.raises(QuantflowError, match="block-hadamard"):
        hadamard_matrix(40)


@pytest.mark.parametrize("kind", ROTATION_KINDS)
@pytest.mark.parametrize("n", [192, 576])
def test_rotations_are_orthogonal_and_seeded(kind, n):
    Q = rotation_matrix(kind, n, seed=1)
    assert torch.allclose(Q @ Q.T, EYE(n), atol=1e-12)
    assert torch.equal(Q, rotation_matrix(kind, n, seed=1))  # reproducible
    other = rotation_matrix(kind, n, seed=2)
    assert torch.equal(Q, other) == (kind in ("hadamard", "block-hadamard"))
    if kind == "block-hadamard":  # no mixing across blocks of 64
        assert torch.equal(Q[:64, 64:], torch.zeros(64, n - 64, dtype=torch.float64))
    assert kind in SCHEME_KINDS


def test_rotation_refusals():
    with pytest.raises(QuantflowError, match="not supported"):
        rotation_matrix("givens", 64)
    with pytest.raises(QuantflowError, match="block that divides"):
        rotation_matrix("block-hadamard", 192, block=48)
    m = tiny_llama(CFG)
    with pytest.raises(QuantflowError, match="fuse_norms first"):
        rotate_residual(m, rotation_matrix("hadamard", 192))
    fuse_norms(m)
    with pytest.raises(QuantflowError, match="not orthogonal"):
        rotate_residual(m, 2 * EYE(192))
    with pytest.raises(QuantflowError, match=r"\[192, 192\]"):
        rotate_residual(m, EYE(64))


def test_fuse_norms_keeps_logits():
    m = tiny_llama(CFG)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    with torch.no_grad():
        ref = m(IDS)
    E = m.model.embed_tokens.weight.detach().clone()
    fuse_norms(m)
    assert m.lm_head.weight is not m.model.embed_tokens.weight  # untied
    assert torch.equal(m.model.embed_tokens.weight, E)
    for layer in m.model.layers:
        assert torch.equal(layer.input_layernorm.weight, torch.ones(192))
        assert torch.equal(layer.post_attention_layernorm.weight, torch.ones(192))
    assert torch.equal(m.model.norm.weight, torch.ones(192))
    with torch.no_grad():
        assert _close(m(IDS), ref)


@pytest.mark.parametrize("kind", ROTATION_KINDS)
def test_rotation_keeps_logits(kind):
    m = tiny_llama(CFG, seed=1)
    with torch.no_grad():
        ref = m(IDS)
        g = m.model.norm.weight.detach().double().clone()
        E = m.model.embed_tokens.weight.detach().double().clone()
    Q = rotate_model(m, kind, seed=3)
    with torch.no_grad():
        assert _close(m(IDS), ref)
    # the embedding is E Q, the head W diag(g_final) Q (W = E: it was tied)
    assert torch.allclose(m.model.embed_tokens.weight.double(), E @ Q, atol=1e-6)
    assert torch.allclose(m.lm_head.weight.double(), (E * g) @ Q, atol=1e-6)


def test_rotation_scheme_validates():
    r = RotationScheme()
    assert (r.kind, r.seed, r.block) == ("hadamard", 0, 64)
    assert RotationScheme(kind="random", seed=7).label == "rotated (random seed 7)"
    with pytest.raises(QuantflowError, match="not supported"):
        RotationScheme(kind="spin")
    with pytest.raises(ValueError, match=">= 0"):
        RotationScheme(seed=-1)
    with pytest.raises(TypeError, match="an int"):
        RotationScheme(block=64.0)
    with pytest.raises(TypeError, match="RotationScheme"):
        QuantScheme(name="x", rotation="hadamard")


def test_rotation_only_scheme_keeps_logits_and_the_model():
    m = tiny_llama(CFG, seed=2)
    with torch.no_grad():
        ref = m(IDS)
    qm = quantize_model(m, QuantScheme(name="r", rotation=RotationScheme(kind="random")),
                        progress=False)
    assert qm.residual_rotation is not None
    with torch.no_grad():
        assert _close(qm.model(IDS), ref)
        assert torch.equal(m(IDS), ref)  # the float model is left alone
    with pytest.raises(QuantflowError, match="need a Llama"):
        quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                       QuantScheme(name="r", rotation=RotationScheme()), progress=False)


def test_partial_rotation_keeps_logits_and_massive_channels():
    m = tiny_llama(CFG, seed=4)
    with torch.no_grad():
        for layer in m.model.layers:  # a massive residual channel the MLP norm drops
            layer.self_attn.o_proj.weight[7] *= 30
            layer.post_attention_layernorm.weight[7] = 0.01
        ref = m(IDS)
    keep = massive_channels(m, IDS, 64)
    assert int(keep[0]) == 7 and len(set(keep.tolist())) == 64
    g = [l.post_attention_layernorm.weight.detach().clone() for l in m.model.layers]
    Q = rotate_model(m, "random-hadamard", keep=keep)  # 192 - 64 = 128 rotated
    assert torch.allclose(Q @ Q.T, EYE(192), atol=1e-12)
    assert torch.equal(Q[keep][:, :64], EYE(64))  # moved, unrotated, to channels 0..63
    with torch.no_grad():
        assert _close(m(IDS), ref)
    for layer, g0 in zip(m.model.layers, g):  # kept channels keep their norm weights
        w = layer.post_attention_layernorm.weight.detach()
        assert torch.equal(w[:64], g0[keep])
        rest = torch.ones(192, dtype=torch.bool)
        rest[keep] = False
        c = g0[rest].double().pow(2).mean().sqrt().float()  # the rotated ones' RMS
        assert torch.allclose(w[64:], c.expand(128))
    with pytest.raises(QuantflowError, match="partial rotation"):
        partial_rotation(EYE(128), 192, torch.zeros(64, dtype=torch.int64))


def test_partial_rotation_scheme_needs_calibration():
    sch = QuantScheme(name="r", rotation=RotationScheme(kind="random", keep=4))
    assert "4 massive channels kept" in sch.label
    with pytest.raises(QuantflowError, match="needs calibration tokens"):
        quantize_model(tiny_llama(CFG), sch, progress=False)
    m = tiny_llama(CFG, seed=5)
    qm = quantize_model(m, sch, calib_ids=IDS, progress=False)
    with torch.no_grad():
        assert _close(qm.model(IDS), m(IDS))


@pytest.mark.parametrize("name", ["w4a8kv4-g64", "w4a8kv4-g64-rot-keep16"])
def test_rotated_schemes_quantize_and_compile(name):
    """The default and the registered rotated variants are the unrotated target with a
    rotation; they compile with the untied LM head (W diag(g_final) Q) and the rotated
    embedding (E Q)."""
    from quantflow.compile import build_tensors, decoder_config
    s, target = get_scheme(name), get_scheme("w4a8kv4-g64-norot")
    assert target.rotation is None and s.rotation is not None
    assert (s.weight, s.act, s.kv) == (target.weight, target.act, target.kv)
    assert all(c.rotation == s.rotation for c in s.components().values())
    m = tiny_llama(CFG, seed=0)
    qm = quantize_model(m, s, calib_ids=IDS, progress=False, keep_reference=False)
    Q = qm.residual_rotation
    E = m.model.embed_tokens.weight.detach().double()
    assert torch.allclose(qm.model.model.embed_tokens.weight.double(), E @ Q, atol=1e-6)
    assert qm.model.lm_head.weight is not qm.model.model.embed_tokens.weight
    config = decoder_config(qm.model, s, context=48, head_bits=8)
    t = build_tensors(qm, config, IDS)  # the image holds embedding and LM head apart
    assert t["embed.codes"].shape == (CFG.vocab_size, CFG.hidden_size) and "lm_head.q" in t
    with torch.no_grad():
        ref = m(IDS)
        rel = float((qm.model(IDS) - ref).norm() / ref.norm())
    assert rel < 0.3
