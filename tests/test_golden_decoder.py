"""golden.decoder: the integer model of a whole decoder, from a compiled image.

A tiny random Llama is quantized (quantflow.fakequant), compiled
(quantflow.compile) and run; its linears must equal golden.mixpe, its attention
golden.kv4_attention's one-query decode, chunked prefill and decode the one-block
prefill, and its logits must follow the fake-quant model's."""
from __future__ import annotations

import pytest
import torch

from golden.decoder import IntegerDecoder, image_spec
from golden.decoder_config import LINEARS, DecoderConfig
from golden.kv4_attention import kv4_decode, logit_multiplier_fixed
from golden.mixpe import mixpe_acc
from golden.mixpe_config import MixPEConfig
from golden.sfu import quant_a8, requant
from quantflow.compile import build_tensors, decoder_config
from helpers.tiny_llama import tiny_config, tiny_quantized, token_ids

torch.set_num_threads(1)

CFG = tiny_config(heads=2, kv_heads=1)
IDS = token_ids(CFG, 3, 40, seed=5)
CONTEXT = 48


@pytest.fixture(scope="module")
def built():
    qm = tiny_quantized(CFG, "w4a8kv4-g64", IDS, seed=0)
    config = decoder_config(qm.model, qm.scheme, context=CONTEXT, head_bits=8)
    tensors = {k: torch.from_numpy(v) for k, v in build_tensors(qm, config, IDS).items()}
    return qm, config, tensors, IntegerDecoder(config, tensors)


def _trace():
    got: dict = {}
    return got, lambda n, t, frac: got.__setitem__(n, t)


def test_image_spec_is_complete(built):
    _, config, tensors, _ = built
    assert set(tensors) == set(image_spec(config))
    for lin in LINEARS:
        N, K = config.linear_shape(lin)
        assert tuple(tensors[f"layers.1.{lin}.q"].shape) == (N, K)


def test_linears_equal_golden_mixpe(built):
    _, config, tensors, dec = built
    got, trace = _trace()
    dec.step(IDS[0, :9], dec.new_state(), trace=trace)
    for lin in LINEARS:
        p = f"layers.1.{lin}"
        N, K = config.linear_shape(lin)
        mc = MixPEConfig(bits=config.w_bits, group=config.group, rows=1, cols=8, K=K)
        want = mixpe_acc(got[f"{p}.a"], tensors[f"{p}.q"], tensors[f"{p}.s2"],
                         tensors[f"{p}.z"], mc).to(torch.int64)
        assert torch.equal(got[f"{p}.acc"], want), lin


def test_attention_equals_kv4_decode(built):
    """Every query of a prefill equals golden.kv4_attention's one-query decode over
    the cache the prefill wrote, at its own length."""
    _, config, _, dec = built
    got, trace = _trace()
    state = dec.new_state()
    T = 12
    dec.step(IDS[1, :T], state, trace=trace)
    kv4, g, D = config.kv4, config.kv_groups, config.head_dim
    for layer in range(config.layers):
        fr = dec.layers[layer]["fracs"]
        q = got[f"layers.{layer}.rope_q"]                                 # [T, H, D]
        att = got[f"layers.{layer}.attn"].view(T, config.heads, D)
        for h in range(config.kv_heads):
            cache = state.caches[layer][h]
            fk = dec.layers[layer]["frac_k"][h]
            hs = slice(h * g, (h + 1) * g)
            for p in (0, 5, T - 1):
                q8, mn, L = quant_a8(q[p, hs])
                C, lsh = logit_multiplier_fixed(mn, L, in_frac=fr["q_proj"], frac_k=fk,
                                                config=kv4)
                r = kv4_decode(q8, C, lsh, cache, p + 1, kv4)
                want = requant(r.out, r.frac_out, fr["attn"], 32)
                assert torch.equal(att[p, hs], want), (layer, h, p)


def test_chunked_prefill_and_decode_equal_one_block(built):
    _, _, _, dec = built
    ids = IDS[2, :20]
    whole = dec.step(ids, dec.new_state())
    state = dec.new_state()
    parts = [dec.step(ids[:7], state), dec.step(ids[7:19], state), dec.step(ids[19:], state)]
    assert torch.equal(torch.cat([r.acc for r in parts]), whole.acc)
    assert state.pos == 20


@torch.no_grad()
def test_integer_logits_follow_fake_quant(built):
    """Close, not equal: the integer model adds the INT8 query, the W8 LM head and
    the fixed-point SFU to the fake-quant model's errors (on this random model;
    SmolLM2's perplexity is measured by quantflow eval --engine integer)."""
    qm, _, _, dec = built
    ids = IDS[0, :32]
    ref = qm.model(ids[None])[0].double()
    got = dec.logits(ids[None])[0]
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.mean()) > 0.99 and float(cos.min()) > 0.95, cos
    assert float(got.argmax(-1).eq(ref.argmax(-1)).double().mean()) > 0.8


def test_greedy_generation_is_argmax_of_acc_s1(built):
    _, _, _, dec = built
    out = dec.generate(IDS[0, :5], 4)
    seq = IDS[0, :5].tolist()
    for t in out:
        r = dec.step(torch.tensor(seq), dec.new_state())
        assert int((r.acc[-1] * r.S1).argmax()) == t
        seq.append(t)
    assert len(out) == 4


def test_bad_inputs(built):
    _, config, tensors, dec = built
    with pytest.raises(ValueError, match="exceed the context"):
        dec.step(torch.zeros(CONTEXT + 1, dtype=torch.int64), dec.new_state())
    with pytest.raises(ValueError, match="non-empty"):
        dec.step(torch.zeros(0, dtype=torch.int64), dec.new_state())
    with pytest.raises(ValueError, match="token ids"):
        dec.step(torch.tensor([CFG.vocab_size]), dec.new_state())
    with pytest.raises(ValueError, match="lacks"):
        IntegerDecoder(config, {k: v for k, v in tensors.items() if k != "norm.w"})
    bad = dict(tensors)
    bad["rope.cos"] = bad["rope.cos"][:-1]
    with pytest.raises(ValueError, match="shape"):
        IntegerDecoder(config, bad)
    with pytest.raises(TypeError):
        IntegerDecoder(config.as_dict(), tensors)


def test_config_validation():
    base = dict(vocab=64, hidden=128, intermediate=192, layers=2, heads=2, kv_heads=1,
                head_dim=64, max_context=48, rms_eps=1e-5)
    from golden.kv4_attention_config import KV4Config
    kv4 = KV4Config(head_dim=64, heads=2, max_t=64)
    DecoderConfig(**base, kv4=kv4)
    with pytest.raises(ValueError, match="head_dim"):
        DecoderConfig(**{**base, "head_dim": 32}, kv4=kv4)
    with pytest.raises(ValueError, match="GQA"):
        DecoderConfig(**base, kv4=KV4Config(head_dim=64, heads=1, max_t=64))
    with pytest.raises(ValueError, match="max_context"):
        DecoderConfig(**{**base, "max_context": 65}, kv4=kv4)
    with pytest.raises(ValueError, match="multiple of group"):
        DecoderConfig(**{**base, "intermediate": 200}, kv4=kv4)
    with pytest.raises(TypeError):
        DecoderConfig(**{**base, "layers": 2.0}, kv4=kv4)
