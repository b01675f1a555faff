"""quantflow.compile: the model image (flat memory map + manifest) round trip,
its checksums and refusals; quantflow.generate's and the text loader's bad inputs."""
from __future__ import annotations

import json

import pytest
import torch

from golden.decoder import IntegerDecoder, image_spec
from quantflow.compile import ALIGN, compile_quantized, decoder_config, load_image
from quantflow.errors import QuantflowError
from quantflow.fakequant import quantize_model
from quantflow.generate import _check_prompt, generate
from quantflow.models import LlamaConfig, LlamaForCausalLM
from helpers.tiny_llama import tiny_llama
from quantflow.text import get_text

torch.set_num_threads(1)

CFG = LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, rope_theta=10000.0)
IDS = torch.randint(0, CFG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    m = tiny_llama(CFG, seed=1)
    qm = quantize_model(m, "w4a8kv4-g64-plain", calib_ids=IDS, progress=False)
    d = tmp_path_factory.mktemp("img") / "tiny"
    man = compile_quantized(qm, IDS, d, context=40, model_name="tiny")
    return qm, d, man


def test_round_trip_gives_identical_integer_logits(image):
    from quantflow.compile import build_tensors
    qm, d, man = image
    config, tensors = load_image(d)
    assert config == decoder_config(qm.model, qm.scheme, context=40, head_bits=8)
    direct = {k: torch.from_numpy(v) for k, v in build_tensors(qm, config, IDS).items()}
    assert set(tensors) == set(direct) == set(image_spec(config))
    for k in tensors:
        assert torch.equal(tensors[k].to(torch.int64), direct[k].to(torch.int64)), k
    a = IntegerDecoder(config, tensors).step(IDS[0], IntegerDecoder(config, tensors).new_state())
    dec = IntegerDecoder(config, direct)
    b = dec.step(IDS[0], dec.new_state())
    assert torch.equal(a.acc, b.acc)


def test_manifest_is_one_aligned_memory_map(image):
    _, d, man = image
    ents = sorted(man["tensors"].values(), key=lambda e: e["offset"])
    end = 0
    for e in ents:
        assert e["offset"] % ALIGN == 0 and e["offset"] >= end
        end = e["offset"] + e["bytes"]
    assert end <= man["image_bytes"] == (d / "image.bin").stat().st_size
    assert json.loads((d / "manifest.json").read_text())["decoder"]["layers"] == 2


def test_altered_or_missing_image_is_refused(image, tmp_path):
    import shutil
    _, d, man = image
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    raw = bytearray((bad / "image.bin").read_bytes())
    off = man["tensors"]["layers.1.down_proj.q"]["offset"]
    raw[off] ^= 1
    (bad / "image.bin").write_bytes(bytes(raw))
    with pytest.raises(QuantflowError, match="layers.1.down_proj.q fails its checksum"):
        load_image(bad)
    (bad / "image.bin").write_bytes(bytes(raw[:-1]))
    with pytest.raises(QuantflowError, match="bytes"):
        load_image(bad)
    m = json.loads((d / "manifest.json").read_text())
    del m["tensors"]["norm.w"]
    shutil.copy(d / "image.bin", bad / "image.bin")
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(QuantflowError, match="lacks"):
        load_image(bad)
    with pytest.raises(QuantflowError, match="not a compiled model image"):
        load_image(tmp_path / "nothing")


def test_scheme_the_integer_model_cannot_run_is_refused(image):
    qm, _, _ = image
    with pytest.raises(QuantflowError, match="A8"):
        decoder_config(qm.model, quantize_model(qm.model, "w4-qoq-g64", progress=False).scheme,
                       context=40, head_bits=8)
    with pytest.raises(QuantflowError, match="cannot be compiled"):
        decoder_config(qm.model, qm.scheme, context=5000, head_bits=8)


def test_generate_bad_inputs():
    with pytest.raises(QuantflowError, match="engine"):
        generate(LlamaForCausalLM(CFG), "hi", engine="quantum")
    with pytest.raises(QuantflowError, match="empty"):
        _check_prompt(torch.zeros(0, dtype=torch.int64), None)
    with pytest.raises(QuantflowError, match="context"):
        _check_prompt(torch.zeros(50, dtype=torch.int64), 40)


def test_user_text_files(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Some English prose. " * 50, encoding="utf-8")
    assert get_text(str(p)).startswith("Some English")
    p.write_bytes(b"\xff\xfe bad bytes")
    with pytest.raises(QuantflowError, match="not UTF-8"):
        get_text(str(p))
    with pytest.raises(QuantflowError, match="neither a known text nor a file"):
        get_text(str(tmp_path / "missing.txt"))
