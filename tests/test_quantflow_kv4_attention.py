"""quantflow.kv4_attention: stream words round-trip, the cache image (atomic,
checksummed) and every way it can disagree with its manifest, bytes per token."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from golden.kv4_attention import append_cache
from golden.kv4_config import KV4Config
from quantflow.errors import QuantflowError
from quantflow.kv4_attention import (export_kv4_cache, kv_bytes_per_token, load_kv4_cache,
                                     pack_append_words, pack_cmd_word, pack_query_words,
                                     pack_token_words, unpack_cache_words, unpack_out_words,
                                     unpack_token_words, token_bits)
from quantflow.pack import pack_words

C = KV4Config(head_dim=32, lanes=8, max_t=20, heads=2)


def _cache(T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return append_cache(torch.randn(T, 32, generator=g), torch.randn(T, 32, generator=g), C)


def test_token_words_round_trip_and_layout():
    cache = _cache()
    w = pack_token_words(cache.kcodes, cache.ks, cache.kz, C)
    assert len(w) == 7 * C.chunks and max(w) >> token_bits(C) == 0
    codes, S, z = unpack_token_words(w, C)
    assert np.array_equal(codes, cache.kcodes.numpy()) and np.array_equal(S, cache.ks.numpy())
    # first field in the LSBs: code 0 of token 0 is the low nibble
    assert w[0] & 0xF == int(cache.kcodes[0, 0])
    assert (w[0] >> (4 * C.lanes)) & ((1 << C.scale_bits) - 1) == int(cache.ks[0])
    vw = pack_token_words(cache.vcodes, cache.vs, cache.vz, C)
    (kc, _, _), (vc, _, _) = unpack_cache_words(
        [a | (b << token_bits(C)) for a, b in zip(w, vw)], C)
    assert np.array_equal(vc, cache.vcodes.numpy())


def test_cmd_query_append_out_words():
    w = pack_cmd_word(5, [3, 4], [40, 41], C)
    assert w & 0xFFFF == 5 and (w >> 16) & 0xFFFF == 3 and (w >> 48) & 0x3F == 40
    with pytest.raises(QuantflowError, match="pairs"):
        pack_cmd_word(5, [3], [40], C)
    q = np.arange(-32, 32).reshape(2, 32)
    assert len(pack_query_words(q, C)) == 2 * C.chunks
    a = pack_append_words(np.full((1, 32), -1), np.zeros((1, 32), dtype=np.int64), C)
    assert a[0] & ((1 << (C.x_bits * C.lanes)) - 1) == (1 << (C.x_bits * C.lanes)) - 1
    out = np.arange(64).reshape(2, 32) - 30
    assert np.array_equal(unpack_out_words(pack_words(out.reshape(-1), C.out_bits, C.lanes,
                                                      signed=True), C), out)


def test_bytes_per_token():
    b = kv_bytes_per_token(KV4Config(head_dim=64))
    # 2 x (64 codes x 4 bits + 19-bit S + 4-bit zero) = 558 bits vs 256 FP16 bytes
    assert b["kv4_bytes"] == 2 * (64 * 4 + 19 + 4) / 8 and b["fp16_bytes"] == 256
    assert 0.27 < b["ratio"] < 0.28


def test_cache_image_round_trip_and_manifest_mismatches(tmp_path):
    cache = _cache()
    d = tmp_path / "cache"
    export_kv4_cache(d, cache, C)
    img = load_kv4_cache(d, C)
    assert torch.equal(img.cache.vcodes, cache.vcodes) and img.cache.frac_k == cache.frac_k
    with pytest.raises(QuantflowError, match="written for"):
        load_kv4_cache(d, KV4Config(head_dim=32, lanes=8, max_t=20, heads=1))
    # a changed hex word: checksum
    (d / "k.hex").write_text((d / "k.hex").read_text().replace("0", "1", 1))
    with pytest.raises(QuantflowError, match="sha256"):
        load_kv4_cache(d, C)
    # manifest T that disagrees with the files (checksums re-signed): word count
    export_kv4_cache(d, cache, C)
    man = json.loads((d / "manifest.json").read_text())
    man["T"] = 6
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QuantflowError, match="disagrees with the manifest"):
        load_kv4_cache(d, C)
    man["T"] = 99
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QuantflowError, match="max_t"):
        load_kv4_cache(d, C)
    # npy that disagrees with the hex (checksum updated to isolate the check)
    export_kv4_cache(d, cache, C)
    from quantflow.images import _sha256
    np.save(d / "k_zero.npy", cache.kz.numpy() + 1)
    man = json.loads((d / "manifest.json").read_text())
    man["sha256"]["k_zero.npy"] = _sha256(d / "k_zero.npy")
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QuantflowError, match="disagrees with its .npy"):
        load_kv4_cache(d, C)


def test_export_refuses_oversized_cache_and_leaves_nothing(tmp_path):
    big = append_cache(torch.randn(20, 32), torch.randn(20, 32), C)
    small = KV4Config(head_dim=32, lanes=8, max_t=10, heads=2)
    with pytest.raises(QuantflowError, match="max_t"):
        export_kv4_cache(tmp_path / "x", big, small)
    assert not (tmp_path / "x").exists()
