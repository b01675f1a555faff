"""quantflow.schemes and the fake-quantized model (quantflow.fakequant): registry,
validation, A8 + SmoothQuant, the integer path, generic modules."""
from __future__ import annotations

import pytest
import torch

from golden.mixpe import mixpe_acc, reference_acc
from quantflow import quantize_act
from quantflow.errors import QuantflowError
from quantflow.fakequant import (IntegerLinear, collect_llama_stats, fake_quant_act,
                                 fold_smoothquant, quantize_model, use_integer_path)
from quantflow.models import LlamaConfig, LlamaForCausalLM
from quantflow.schemes import (SCHEMES, ActScheme, KVScheme, QuantScheme, WeightScheme,
                               get_scheme)

torch.set_num_threads(1)

CFG = LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)


def tiny(seed=0):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(CFG).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 2.0)
            else:
                p.normal_(0, 0.1)
        # an outlier input channel, as trained LLMs have: what SmoothQuant is for
        for layer in m.model.layers:
            layer.input_layernorm.weight[5] = 20.0
    return m


IDS = torch.randint(0, CFG.vocab_size, (4, 40), generator=torch.Generator().manual_seed(7))


def test_registry_target_and_components():
    s = get_scheme("w4a8kv4-g64")
    assert (s.weight.method, s.weight.bits, s.weight.group) == ("qoq", 4, 64)
    # the default rotates the residual stream; -norot is the same scheme without
    norot = get_scheme("w4a8kv4-g64-norot")
    assert s.rotation.kind == "random-hadamard" and norot.rotation is None
    assert (norot.weight, norot.act, norot.kv) == (s.weight, s.act, s.kv)
    assert s.act.bits == 8 and s.kv.bits == 4 and s.kv.window == 8
    comps = s.components()
    assert list(comps) == ["W4", "A8", "KV4"]
    assert comps["W4"].weight == s.weight and comps["W4"].act is None and comps["W4"].kv is None
    assert comps["KV4"].kv == s.kv and comps["KV4"].weight is None
    for name in ("w4-rtn-sym-ch", "w4-rtn-asym-ch", "w4-rtn-sym-g64", "w4-rtn-asym-g64",
                 "w4-qoq-g64", "fp32"):
        assert name in SCHEMES
    assert get_scheme("fp32").is_float
    assert get_scheme(s) is s


@pytest.mark.parametrize("make, exc, msg", [
    (lambda: WeightScheme(method="nf4"), QuantflowError, "not supported"),
    (lambda: WeightScheme(method="qoq", group=None), QuantflowError, "needs a group"),
    (lambda: WeightScheme(bits=5, method="qoq"), QuantflowError, "qoq bits"),
    (lambda: WeightScheme(gptq=1), TypeError, "True or False"),
    (lambda: ActScheme(bits=4), QuantflowError, "INT8"),
    (lambda: ActScheme(smooth_alpha=1.5), QuantflowError, r"\[0, 1\]"),
    (lambda: KVScheme(sink_tokens=-1), ValueError, ">= 0"),
    (lambda: QuantScheme(name="a/b"), QuantflowError, "without '/'"),
    (lambda: QuantScheme(name="x", weight=ActScheme()), TypeError, "WeightScheme"),
    (lambda: get_scheme("w3a16"), QuantflowError, "known schemes: fp32"),
])
def test_bad_schemes(make, exc, msg):
    """A wrong type is a TypeError, a bad value a ValueError (QuantflowError is one)."""
    with pytest.raises(exc, match=msg):
        make()


def test_fake_quant_act_equals_quantize_act():
    x = torch.randn(2, 9, 64) * torch.linspace(0.1, 30, 64)
    x[0, 3] = 0  # a zero token
    a, s = quantize_act(x.reshape(-1, 64))
    assert torch.equal(fake_quant_act(x).reshape(-1, 64), a.float() * s.unsqueeze(1))


def test_smoothquant_fold_leaves_float_output_unchanged():
    m = tiny()
    with torch.no_grad():
        ref = m(IDS)
        st = collect_llama_stats(m, IDS, progress=False)
        scales = fold_smoothquant(m, st["xmax"], 0.5)
        out = m(IDS)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    # it did move the outlier: channel 5 of the q/k/v input is divided by a large s
    s = scales["layers.0.qkv"]
    assert s[5] > 3 * s.median()


def test_smoothquant_helps_a8_with_outliers():
    m = tiny()
    with torch.no_grad():
        ref = m(IDS)
    err = {}
    for alpha in (None, 0.5):
        sch = QuantScheme(name="a", act=ActScheme(smooth_alpha=alpha))
        qm = quantize_model(m, sch, calib_ids=IDS, progress=False)
        with torch.no_grad():
            err[alpha] = float((qm.model(IDS) - ref).norm() / ref.norm())
    assert err[0.5] < err[None]
    with torch.no_grad():  # quantize_model left the float model alone
        assert torch.equal(m(IDS), ref)


def test_integer_path_equals_fake_quant_path():
    m = tiny()
    qm = quantize_model(m, "w4a8kv4-g64", calib_ids=IDS, progress=False)
    name = "layers.1.mlp.down_proj"
    lin = qm.model.get_submodule("model." + name)
    x = torch.randn(5, 7, CFG.intermediate_size) * 3
    with torch.no_grad():
        y_fake = lin(x)  # A8 pre-hook + fake-quant weight
    il = IntegerLinear(qm.qoq(name))
    y_int = il(x)
    assert torch.allclose(y_int, y_fake, rtol=1e-5, atol=1e-5 * float(y_fake.abs().max()))
    # and the integer accumulator is the plain integer GEMM of the same codes
    a, _ = quantize_act(x.reshape(-1, x.shape[-1]))
    qw = qm.qoq(name)
    assert torch.equal(mixpe_acc(a, qw.q, qw.s2, qw.z, il.config), reference_acc(a, qw.w8()))
    # swapping it into the model changes the logits only by float rounding
    with torch.no_grad():
        before = qm.model(IDS[:1])
        use_integer_path(qm, name)
        after = qm.model(IDS[:1])
    assert isinstance(qm.model.get_submodule("model." + name), IntegerLinear)
    assert torch.allclose(after, before, atol=1e-3, rtol=1e-3)


def test_integer_path_needs_qoq_and_a8():
    m = tiny()
    qm = quantize_model(m, "w4-rtn-asym-g64", calib_ids=IDS, progress=False)
    with pytest.raises(QuantflowError, match="A8"):
        use_integer_path(qm, "layers.0.self_attn.q_proj")
    qm = quantize_model(m, QuantScheme(name="x", weight=WeightScheme(method="rtn-asym"),
                                       act=ActScheme(smooth_alpha=None)), progress=False)
    with pytest.raises(QuantflowError, match="no QoQ weights"):
        use_integer_path(qm, "layers.0.self_attn.q_proj")


def test_group_must_divide_k():
    sch = QuantScheme(name="g48", weight=WeightScheme(method="qoq", group=48))
    with pytest.raises(QuantflowError, match=r"K=128 is not a multiple of group=48.*group=\d+"):
        quantize_model(tiny(), sch, calib_ids=IDS, progress=False)


def test_calibrated_scheme_needs_tokens():
    with pytest.raises(QuantflowError, match="needs calibration tokens"):
        quantize_model(tiny(), "w4a8kv4-g64", progress=False)
    with pytest.raises(QuantflowError, match="fewer than"):
        quantize_model(tiny(), "w4-g64", calib_ids=IDS[:1, :20], progress=False)


def test_any_module_weights_and_a8():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    x = torch.randn(256, 64)
    with torch.no_grad():
        ref = m(x)
    sch = QuantScheme(name="w4a8", weight=WeightScheme(method="qoq", group=64, gptq=True),
                      act=ActScheme(smooth_alpha=None))
    qm = quantize_model(m, sch, calib=lambda mod: mod(x), progress=False)
    with torch.no_grad():
        out = qm.model(x)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.2
    assert set(qm.weights) == {"0", "2"} and qm.weights["0"].qoq is not None
    with pytest.raises(QuantflowError, match="need a Llama"):
        quantize_model(m, "kv4", progress=False)
    with pytest.raises(QuantflowError, match="pass calib=run"):
        quantize_model(m, sch, progress=False)


@pytest.mark.parametrize("window, exc, msg", [
    (-1, ValueError, ">= 0"), (257, QuantflowError, r"\[0, 256\]"), (2.0, TypeError, "an int"),
    (True, TypeError, "an int")])
def test_kv_window_validation(window, exc, msg):
    with pytest.raises(exc, match=msg):
        KVScheme(window=window)


def test_kv_schemes_follow_the_kv4_unit():
    """kv4 / w4a8kv4-g64 use the KV4 attention unit's scheme (golden KV4Config
    defaults: Hadamard K/Q, recent window, no sinks); the old KV scheme stays
    registered."""
    from golden.kv4_attention_config import KV4Config
    hw = KV4Config()
    for name in ("kv4", "w4a8kv4-g64"):
        kv = get_scheme(name).kv
        assert kv.hadamard == hw.rotate and kv.window == hw.recent and kv.sink_tokens == 0
        assert kv.bits == 4 and kv.integer_zero
    old = get_scheme("kv4-smooth-sinks").kv
    assert (old.smooth_attention, old.hadamard, old.sink_tokens, old.window) == (True, True, 4, 0)
    assert KVScheme(window=256).label.endswith("recent 256 @8b (240 levels)")


@pytest.mark.parametrize("name, full", [("w4-qoq-g64-rot", "w4a8kv4-g64"),
                                        ("w4-qoq-g64-rot-keep16", "w4a8kv4-g64-rot-keep16")])
def test_weight_only_rotation_pair(name, full):
    """The cheap weight-only rotation measurements: plain QoQ g64 rounding (w4-qoq-g64)
    on the residual stream of the full rotated scheme; no activation or KV quantizer.
    On the tiny model (norm weight 20 on channel 5, folded into the q/k/v and gate/up
    columns by the rotation) the rotated weights round better than the plain ones."""
    s = get_scheme(name)
    assert s.weight == get_scheme("w4-qoq-g64").weight and not s.weight.needs_calibration
    assert s.act is None and s.kv is None
    assert s.rotation is not None and s.rotation == get_scheme(full).rotation
    m = tiny()
    with torch.no_grad():
        ref = m(IDS)
    qm = quantize_model(m, s, calib_ids=IDS, progress=False)
    assert qm.residual_rotation is not None
    plain = quantize_model(m, "w4-qoq-g64", progress=False)
    with torch.no_grad():
        rel = float((qm.model(IDS) - ref).norm() / ref.norm())
        rel_plain = float((plain.model(IDS) - ref).norm() / ref.norm())
    assert 0 < rel < rel_plain


def test_rotation_seed_and_w4_component_schemes():
    """w4a8kv4-g64-rot-seed1 is the default w4a8kv4-g64 with another draw of the signs
    (and w4a8kv4-g64-rot-keep16-seed1 of its random rotation);
    w4-g64-rot and a8-rot are that scheme's W4 and A8 components under registered names."""
    rot, s1 = get_scheme("w4a8kv4-g64"), get_scheme("w4a8kv4-g64-rot-seed1")
    assert (s1.weight, s1.act, s1.kv) == (rot.weight, rot.act, rot.kv)
    assert s1.rotation.kind == rot.rotation.kind and (rot.rotation.seed, s1.rotation.seed) == (0, 1)
    k, k1 = get_scheme("w4a8kv4-g64-rot-keep16"), get_scheme("w4a8kv4-g64-rot-keep16-seed1")
    assert (k1.weight, k1.act, k1.kv) == (k.weight, k.act, k.kv)
    assert (k1.rotation.kind, k1.rotation.keep, k1.rotation.seed) == ("random", 16, 1)
    w = get_scheme("w4-g64-rot")
    c = rot.components()["W4"]
    assert (w.weight, w.act, w.kv, w.rotation) == (c.weight, c.act, c.kv, c.rotation)
    assert w.weight == get_scheme("w4-g64").weight
    a, ca = get_scheme("a8-rot"), rot.components()["A8"]
    assert (a.weight, a.act, a.kv, a.rotation) == (ca.weight, ca.act, ca.kv, ca.rotation)


def test_plain_rounding_ignores_calibration_tokens():
    """A weight scheme without clip search, AWQ or GPTQ reads no activations: given
    calibration tokens (compile passes them for the image's formats) it rounds the
    same codes as without, and skips the sequential calibration pass."""
    m = tiny()
    with_ids = quantize_model(m, "w4-qoq-g64", calib_ids=IDS, progress=False)
    without = quantize_model(m, "w4-qoq-g64", progress=False)
    assert with_ids.weights.keys() == without.weights.keys()
    for n, r in with_ids.weights.items():
        assert torch.equal(r.qoq.q, without.weights[n].qoq.q), n
        assert torch.equal(r.w_fake, without.weights[n].w_fake), n
        assert "sqnr_db" not in r.stats          # no calibration Hessian was built
