"""quantflow.kv4_attention: stream words (4-bit token words, recent 8-bit words,
the decode streams, the append path's cache words) round-trip and bit layout,
the cache image (atomic, checksummed) decoding like the cache it came from and
every way it can disagree with its manifest, bytes per token."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from golden.kv4_attention import (append_cache, append_fixed, decode_codes, kv4_decode,
                                  logit_multiplier, quantize_query, to_fixed)
from golden.kv4_attention_config import KV4Config
from quantflow.errors import QuantflowError
from quantflow.kv4_attention import (cache_token_bits, decode_words, export_kv4_cache,
                                     kv_bytes_per_token, load_kv4_cache, pack_append_words,
                                     pack_cache_words, pack_cmd_word, pack_query_words,
                                     pack_recent_words, pack_token_words, token_bits,
                                     unpack_cache_words, unpack_out_words, unpack_recent_words,
                                     unpack_token_words)
from quantflow.pack import pack_words
from quattro_fs import sha256_file

#: recent=3 < T=7: a decode reads both 4-bit and 8-bit tokens
C = KV4Config(head_dim=32, lanes=8, max_t=20, heads=2, recent=3)


def _kv(T=7, seed=0, D=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)


def _cache(T=7, seed=0, c=C):
    return append_cache(*_kv(T, seed, c.head_dim), c)


def _field(w: int, pos: int, bits: int) -> int:
    return (w >> pos) & ((1 << bits) - 1)


def test_token_words_round_trip_and_layout():
    cache = _cache()
    w = pack_token_words(cache.kcodes, cache.ks, cache.kz, C)
    assert len(w) == 7 * C.chunks and max(w) >> token_bits(C) == 0
    assert token_bits(C) == 4 * C.lanes + C.scale_bits + 8
    codes, S, z = unpack_token_words(w, C)
    assert np.array_equal(codes, cache.kcodes.numpy()) and np.array_equal(S, cache.ks.numpy())
    assert np.array_equal(z, cache.kz.numpy())
    # first field in the LSBs: code 0 of token 0 is the low nibble; word 1 starts at lanes
    assert w[0] & 0xF == int(cache.kcodes[0, 0]) and w[1] & 0xF == int(cache.kcodes[0, C.lanes])
    assert _field(w[0], 4 * C.lanes, C.scale_bits) == int(cache.ks[0])
    assert w[0] >> (4 * C.lanes + C.scale_bits) == int(cache.kz[0])
    # a token whose beats disagree on the scale
    w[1] ^= 1 << (4 * C.lanes)
    with pytest.raises(QuantflowError, match="token 0: its words disagree"):
        unpack_token_words(w, C)
    with pytest.raises(QuantflowError, match="multiple of"):
        unpack_token_words(w[:-1], C)
    with pytest.raises(QuantflowError, match=r"zero value \d+ does not fit its unsigned 8-bit"):
        pack_token_words(cache.kcodes, cache.ks, cache.kz + 256, C)


def test_recent_words_round_trip_and_nibble_layout():
    cache = _cache()
    w = pack_recent_words(cache.kcodes8, cache.ks, cache.kz8, C)
    assert len(w) == 7 * 2 * C.chunks and max(w) >> token_bits(C) == 0
    c8, S, z8 = unpack_recent_words(w, C)
    assert np.array_equal(c8, cache.kcodes8.numpy()) and np.array_equal(S, cache.ks.numpy())
    assert np.array_equal(z8, cache.kz8.numpy())
    assert int(cache.kcodes8.max()) > 15           # the high nibbles are not all zero
    code = int(cache.kcodes8[0, 0])
    # the high nibbles of token 0 first (chunks words), then its low nibbles
    assert w[0] & 0xF == code >> 4 and w[C.chunks] & 0xF == code & 15
    assert w[1] & 0xF == int(cache.kcodes8[0, C.lanes]) >> 4
    assert w[2 * C.chunks] & 0xF == int(cache.kcodes8[1, 0]) >> 4
    for t in range(2 * C.chunks):                  # every word repeats S and z8
        assert _field(w[t], 4 * C.lanes, C.scale_bits) == int(cache.ks[0])
        assert w[t] >> (4 * C.lanes + C.scale_bits) == int(cache.kz8[0])
    w[2 * C.chunks + C.chunks] ^= 1 << (4 * C.lanes + C.scale_bits)   # token 1's low-nibble z8
    with pytest.raises(QuantflowError, match="recent token 1: its words disagree"):
        unpack_recent_words(w, C)
    with pytest.raises(QuantflowError, match="multiple of 8"):
        unpack_recent_words(w[:C.chunks], C)
    with pytest.raises(QuantflowError, match="not kept"):
        pack_recent_words(torch.full((1, 32), -1), [5], [3], C)


def test_decode_words_are_the_decode_streams():
    cache = _cache()
    for T in (7, 4, 3, 1):
        R = C.recent_tokens(T)
        n4 = T - R
        kw, vw = decode_words(cache, T, C)
        assert len(kw) == len(vw) == (T + R) * C.chunks
        assert kw[:n4 * C.chunks] == pack_token_words(cache.kcodes, cache.ks, cache.kz,
                                                      C)[:n4 * C.chunks]
        assert vw[n4 * C.chunks:] == pack_recent_words(cache.vcodes8[n4:T], cache.vs[n4:T],
                                                       cache.vz8[n4:T], C)
        # the streams carry exactly golden's 8-bit-domain operands of that decode
        kc, kz, vc, vz = decode_codes(cache, T, C)
        for words, cc, zz in ((kw, kc, kz), (vw, vc, vz)):
            c4, _, z4 = unpack_token_words(words[:n4 * C.chunks], C)
            c8, _, z8 = unpack_recent_words(words[n4 * C.chunks:], C)
            assert np.array_equal(np.concatenate([c4 << 4, c8]), cc.numpy())
            assert np.array_equal(np.concatenate([z4 << 4, z8]), zz.numpy())
    with pytest.raises(QuantflowError, match="T must be"):
        decode_words(cache, 8, C)


def test_cache_words_round_trip_and_layout():
    k, v = _kv()
    fk, fv = 11, 12
    cache = append_fixed(to_fixed(k, fk, C), to_fixed(v, fv, C), C, frac_k=fk, frac_v=fv)
    assert cache.rotated
    w = pack_cache_words(cache, C)
    cb = cache_token_bits(C)
    assert cb == 12 * C.lanes + C.scale_bits + 12
    assert len(w) == 7 * C.chunks and max(w) >> (2 * cb) == 0
    (kc4, kc8, ks, kz4, kz8), (vc4, vc8, vs, vz4, vz8) = unpack_cache_words(w, C)
    for got, want in ((kc4, cache.kcodes), (kc8, cache.kcodes8), (ks, cache.ks),
                      (kz4, cache.kz), (kz8, cache.kz8), (vc4, cache.vcodes),
                      (vc8, cache.vcodes8), (vs, cache.vs), (vz4, cache.vz), (vz8, cache.vz8)):
        assert np.array_equal(got, want.numpy())
    # codes4 | codes8 | S | zero4 | zero8, K side then V side, LSB first
    x, p = w[C.chunks + 1], 4 * C.lanes          # token 1, chunk 1
    assert x & 0xF == int(cache.kcodes[1, C.lanes])
    assert _field(x, p, 8) == int(cache.kcodes8[1, C.lanes])
    assert _field(x, p + 8 * (C.lanes - 1), 8) == int(cache.kcodes8[1, 2 * C.lanes - 1])
    p = 12 * C.lanes
    assert _field(x, p, C.scale_bits) == int(cache.ks[1])
    assert _field(x, p + C.scale_bits, 4) == int(cache.kz[1])
    assert _field(x, p + C.scale_bits + 4, 8) == int(cache.kz8[1])
    assert _field(x, cb, 4) == int(cache.vcodes[1, C.lanes]) and x >> (2 * cb - 8) == int(
        cache.vz8[1])
    w[C.chunks + 1] ^= 1 << (cb + p)               # V side S of token 1, one beat
    with pytest.raises(QuantflowError, match="cache token 1: its words disagree"):
        unpack_cache_words(w, C)


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
    c = KV4Config(head_dim=64)
    b = kv_bytes_per_token(c)
    # rotate (default): x_bits 16 + log2(64) - 3 = 19-bit K, scale_bits 22;
    # 2 x (64 codes x 4 bits + 22-bit S + 4-bit zero) = 564 bits vs 256 FP16 bytes
    assert c.scale_bits == 22 and b["kv4_bytes"] == 70.5 and b["fp16_bytes"] == 256
    assert 0.27 < b["ratio"] < 0.28
    for c in (c, KV4Config(head_dim=128, rotate=False, recent=16), KV4Config(recent=0)):
        b = kv_bytes_per_token(c)
        D = c.head_dim
        assert b["kv4_bytes"] == 2 * (4 * D + c.scale_bits + 4) / 8
        assert b["ratio"] == b["kv4_bytes"] / (4 * D)
        assert b["recent_tokens"] == c.recent
        assert b["ring_bytes"] == c.recent * 2 * (8 * D + c.scale_bits + 8) / 8


def _decode(cache, T, c, seed=5):
    q8, s_q = quantize_query(torch.randn(c.heads, c.head_dim,
                                         generator=torch.Generator().manual_seed(seed)))
    Cs, ls = zip(*(logit_multiplier(float(s), cache.frac_k, c) for s in s_q))
    return kv4_decode(q8, list(Cs), list(ls), cache, T, c).out


def test_cache_image_round_trip_decodes_like_the_original(tmp_path):
    for c, T in ((C, 7), (C, 2), (KV4Config(head_dim=32, lanes=16, max_t=20, recent=0), 5),
                 (KV4Config(head_dim=64, lanes=16, max_t=20, rotate=False), 12)):
        cache = _cache(T, T, c)
        d = tmp_path / f"img{T}_{c.recent}"
        man = export_kv4_cache(d, cache, c)
        R = c.recent_tokens(T)
        assert man["format_version"] == 2 and man["recent_tokens"] == R
        assert man["rotated"] is c.rotate and man["tensors"]["k8"]["words"] == R * 2 * c.chunks
        img = load_kv4_cache(d, c)
        got = img.cache
        for f in ("kcodes", "ks", "kz", "vcodes", "vs", "vz"):
            assert torch.equal(getattr(got, f), getattr(cache, f)), f
        for f in ("kcodes8", "kz8", "vcodes8", "vz8"):    # only the ring is kept
            assert torch.equal(getattr(got, f)[T - R:], getattr(cache, f)[T - R:]), f
            assert bool((getattr(got, f)[:T - R] == -1).all()), f
        assert (got.frac_k, got.frac_v, got.rotated) == (cache.frac_k, cache.frac_v, c.rotate)
        assert (img.k_words, img.v_words) == tuple(map(tuple, decode_words(cache, T, c)))
        assert torch.equal(_decode(got, T, c), _decode(cache, T, c))
        # a loaded image re-exports to the same files (it holds its own ring)
        export_kv4_cache(tmp_path / "again", got, c)
        assert json.loads((tmp_path / "again" / "manifest.json").read_text())["sha256"] == \
            man["sha256"]
        if T > c.recent > 0:
            # a shorter decode needs 8-bit codes of tokens the image did not keep
            with pytest.raises(QuantflowError, match="lacks 8-bit codes"):
                decode_words(got, T - 1, c)
            with pytest.raises(QuantflowError, match="lacks 8-bit codes"):
                pack_cache_words(got, c)


def _resign(d, name=None, **man_changes):
    """Change manifest fields and re-sign `name` (isolates the check behind it)."""
    man = json.loads((d / "manifest.json").read_text())
    man.update(man_changes)
    if name:
        man["sha256"][name] = sha256_file(d / name)
    (d / "manifest.json").write_text(json.dumps(man))


def _refused(d, match: str, config=C) -> None:
    with pytest.raises(QuantflowError, match=match):
        load_kv4_cache(d, config)


def test_cache_image_manifest_mismatches(tmp_path):
    cache = _cache()
    d = tmp_path / "cache"
    export_kv4_cache(d, cache, C)
    _refused(d, "written for", KV4Config(head_dim=32, lanes=8, max_t=20, heads=2))  # recent 8
    # a changed hex word: checksum
    (d / "k.hex").write_text((d / "k.hex").read_text().replace("0", "1", 1))
    _refused(d, "sha256")
    # manifest fields that disagree with the files (checksums re-signed)
    for changes, match in (({"T": 6}, "k.hex shape disagrees with the manifest"),  # word count
                           ({"T": 99}, "max_t"),
                           ({"recent_tokens": 2}, "recent_tokens=2 disagrees"),
                           ({"recent_tokens": 3, "rotated": False}, "rotated=False")):
        export_kv4_cache(d, cache, C)
        _resign(d, **changes)
        _refused(d, match)
    # npy that disagrees with the hex (checksum updated to isolate the check)
    for name, arr in (("k_zero.npy", cache.kz + 1), ("v_zero8.npy", cache.vz8[4:] + 1),
                      ("k_codes8.npy", (cache.kcodes8[4:] ^ 1).to(torch.uint8))):
        export_kv4_cache(d, cache, C)
        np.save(d / name, arr.numpy())
        _resign(d, name)
        _refused(d, "disagree with their .npy")
    # the ring's scale differs from the 4-bit words' (no npy holds it twice)
    export_kv4_cache(d, cache, C)
    from quantflow.imagedir import write_hex
    write_hex(d / "k8.hex", pack_recent_words(cache.kcodes8[4:], cache.ks[4:] + 1,
                                              cache.kz8[4:], C), token_bits(C))
    _resign(d, "k8.hex")
    _refused(d, "on the scale of the recent tokens 4..6")
    # files that agree with each other but hold a zero no append produces
    export_kv4_cache(d, cache, C)
    write_hex(d / "v.hex", pack_token_words(cache.vcodes, cache.vs, cache.vz + 16, C),
              token_bits(C))
    np.save(d / "v_zero.npy", (cache.vz + 16).numpy())
    _resign(d, "v.hex")
    _resign(d, "v_zero.npy")
    _refused(d, "no append produces")


def test_export_refuses_bad_caches_and_leaves_nothing(tmp_path):
    big = append_cache(*_kv(20), C)
    small = KV4Config(head_dim=32, lanes=8, max_t=10, heads=2, recent=3)
    with pytest.raises(QuantflowError, match="max_t"):
        export_kv4_cache(tmp_path / "x", big, small)
    with pytest.raises(QuantflowError, match="rotate=True but config.rotate=False"):
        export_kv4_cache(tmp_path / "x", _cache(), KV4Config(head_dim=32, lanes=8, max_t=20,
                                                             heads=2, recent=3, rotate=False))
    # an image cache keeps only its own ring: a wider recent window is refused
    export_kv4_cache(tmp_path / "img", _cache(), C)
    got = load_kv4_cache(tmp_path / "img", C).cache
    longer = KV4Config(**{**C.as_dict(), "recent": 4})
    with pytest.raises(QuantflowError, match="lacks 8-bit codes"):
        export_kv4_cache(tmp_path / "x", got, longer)
    assert not (tmp_path / "x").exists()
