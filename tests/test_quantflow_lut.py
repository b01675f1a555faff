"""quantflow.lut: weight formats, bit-plane packing (round trip and the layout
written out by hand), atomic checksummed images, loader refusals."""
import json

import numpy as np
import pytest
import torch

from golden.mixpe_config import MixPEConfig
from golden.lut import lut_acc
from golden.lut_config import LUT_PLANE_BITS, LUTConfig, MODES
from golden.mixpe import mixpe_acc
from quantflow import (QuantflowError, quantize_qoq, random_activations,
                       random_linear_weights)
from quantflow.lut import (export_lut, load_lut, pack_lut_act_words, pack_lut_code_words,
                           pack_lut_result_words, pack_lut_scale_words, quantize_lut_weights,
                           unpack_lut_act_words, unpack_lut_code_words,
                           unpack_lut_result_words, unpack_lut_scale_words)

CFG = LUTConfig(rows=2, cols=8, lanes=4, K=64, group=32)


@pytest.mark.parametrize("name", ["w1", "w2", "w4", "ternary"])
def test_quantize_formats(name):
    mode = MODES[name]
    W = random_linear_weights(8, 64, seed=1)
    qw = quantize_lut_weights(W, mode=mode, group=32)
    assert int(qw.q.min()) >= 0 and int(qw.q.max()) <= mode.max_code
    if mode.ternary:
        assert bool((qw.z == 1).all()) and bool((qw.s2 == 1).all())
    # same quantized weights on MixPE (W1 runs as W2) give the same acc
    a = torch.randint(-127, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    mc = MixPEConfig(bits=max(2, mode.bits), group=32, rows=1, cols=8, K=64)
    assert torch.equal(lut_acc(a, qw.q, qw.s2, qw.z, CFG, mode),
                       mixpe_acc(a, qw.q, qw.s2, qw.z, mc))


def test_code_layout_by_hand_and_round_trip():
    mode = MODES["w2"]
    gen = torch.Generator().manual_seed(2)
    q = torch.randint(0, 4, (16, 64), generator=gen)
    words = pack_lut_code_words(q, CFG, mode)
    assert len(words) == 2 * 16 * 2 * 2  # n_tiles * chunks * slices * planes
    # word ((tn*16 + c)*2 + s)*2 + (1 - i), element l: bit t = bit i of q[tn*8+s*4+l, 4c+t]
    tn, c, s, i, l = 1, 5, 1, 0, 2
    w = words[((tn * 16 + c) * 2 + s) * 2 + (1 - i)]
    nib = (w >> (4 * l)) & 15
    assert nib == sum((((int(q[tn * 8 + s * 4 + l, 4 * c + t]) >> i) & 1) << t) for t in range(4))
    assert np.array_equal(unpack_lut_code_words(words, CFG, mode), q.numpy())
    a = torch.randint(-128, 128, (4, 64), generator=gen)
    assert np.array_equal(unpack_lut_act_words(pack_lut_act_words(a, CFG), CFG), a.numpy())
    s2 = torch.randint(1, 20, (16, 2), generator=gen)
    z = torch.randint(0, 4, (16, 2), generator=gen)
    s2u, zs2u = unpack_lut_scale_words(pack_lut_scale_words(s2, z, CFG), CFG)
    assert np.array_equal(s2u, s2.numpy()) and np.array_equal(zs2u, (z * s2).numpy())
    acc = torch.randint(-2**31, 2**31, (4, 16), generator=gen)
    assert np.array_equal(unpack_lut_result_words(pack_lut_result_words(acc, CFG), CFG,
                                                  M=4, N=16), acc.numpy())


def test_export_load_round_trip(tmp_path):
    W = random_linear_weights(16, 64, seed=3)
    X = random_activations(4, 64, seed=4)
    man = export_lut(tmp_path / "img", CFG, "ternary", W, X)
    assert man["block"] == "lut" and man["mode"] == {"bits": 2, "ternary": True}
    img = load_lut(tmp_path / "img", CFG, MODES["ternary"])
    assert torch.equal(img.acc, lut_acc(img.a, img.q, img.s2, img.z, CFG, MODES["ternary"]))
    assert img.m_tiles == 2 and img.n_tiles == 2


def test_loader_refusals(tmp_path):
    W = random_linear_weights(8, 64, seed=5)
    X = random_activations(2, 64, seed=6)
    d = tmp_path / "img"
    export_lut(d, CFG, "w2", W, X)
    with pytest.raises(QuantflowError, match="expected .*w4"):
        load_lut(d, CFG, MODES["w4"])
    with pytest.raises(QuantflowError, match="written for"):
        load_lut(d, LUTConfig(rows=2, cols=8, lanes=8, K=64, group=32), MODES["w2"])
    # a changed file fails its checksum
    (d / "code.hex").write_text((d / "code.hex").read_text().replace("0", "1", 1))
    with pytest.raises(QuantflowError, match="sha256"):
        load_lut(d, CFG, MODES["w2"])
    # consistent checksums but a .hex that disagrees with the .npy
    export_lut(d, CFG, "w2", W, X)
    lines = (d / "act.hex").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (d / "act.hex").write_text("\n".join(lines) + "\n")
    man = json.loads((d / "manifest.json").read_text())
    import hashlib
    man["sha256"]["act.hex"] = hashlib.sha256((d / "act.hex").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QuantflowError, match="act.hex disagrees"):
        load_lut(d, CFG, MODES["w2"])


def test_bad_inputs_write_nothing(tmp_path):
    W = random_linear_weights(8, 64, seed=7)
    X = random_activations(3, 64, seed=8)  # M=3 is not a multiple of rows=2
    with pytest.raises(QuantflowError, match="M=3 is not a multiple of 2"):
        export_lut(tmp_path / "img", CFG, "w4", W, X)
    with pytest.raises(QuantflowError, match="unknown LUT weight format"):
        export_lut(tmp_path / "img", CFG, "w3", W, X[:2])
    with pytest.raises(QuantflowError, match="bits=3 is not supported"):
        quantize_qoq(W, bits=3, group=32, allowed_bits=LUT_PLANE_BITS)
    assert not any(tmp_path.iterdir())
    with pytest.raises(QuantflowError, match="codes outside"):
        pack_lut_code_words(torch.full((8, 64), 3), CFG, MODES["ternary"])
