"""KV4 attention formats: the stream words of hdl.kv4_attention and the KV4
cache image (DESIGN §3.8) on top of quantflow.pack and quantflow.imagedir.

Words (element 0 / first field in the LSBs; the RTL's amaranth StructLayouts,
widths from golden.kv4_attention_config.KV4Config, docs/kv4_attention.md):
  token word   codes[lanes] (4 bits each) | S << 4*lanes | zero << (4*lanes + scale_bits)
               token_bits = 4*lanes + scale_bits + ZERO_BITS (8): one K or V stream
               beat of a decode. A 4-bit token is `chunks` words (word j holds
               elements j*lanes.., zero = z4); a recent (8-bit) token is 2*chunks
               words: the chunks words of its high nibbles (code8 >> 4), then the
               chunks words of its low nibbles (code8 & 15), every one with the same
               S and zero = z8. A T-token decode streams the first T - R tokens at
               4 bits, then the last R = config.recent_tokens(T) at 8 bits
               (golden.kv4_attention.decode_codes): (T + R) * chunks words per side.
  cache word   side(k) | side(v) << cache_token_bits, `chunks` words per token (the
               append path's output: it emits both widths of every token), with
               side = codes4[lanes] (4b each) | codes8[lanes] (8b each) | S | zero4 (4b)
                      | zero8 (8b), cache_token_bits = 12*lanes + scale_bits + 12;
               the K side holds the codes of the rotated K (when config.rotate)
  append word  k[lanes] (signed x_bits) | v[lanes] << lanes*x_bits
  cmd word     t (16) | c[h] (16 each) | lsh[h] (6 each)
  query word   q8[lanes] (signed 8);  out word  out[lanes] (signed out_bits)

Cache image directory (FORMAT_VERSION 2), T tokens, R = config.recent_tokens(T):
  k.hex / v.hex          4-bit token words of all T tokens (T * chunks)
  k8.hex / v8.hex        recent words of the last R tokens (R * 2 * chunks): the
                         ring a decode at the image's own T reads
  k_codes.npy / v_codes.npy    [T, D] uint8 4-bit codes
  k_codes8.npy / v_codes8.npy  [R, D] uint8 8-bit codes of the last R tokens
  k_scale, k_zero, v_scale, v_zero [T] int64;  k_zero8, v_zero8 [R] int64
  manifest.json          config, T, recent_tokens, rotated, frac_k, frac_v, sha256
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from golden.formats import ACT_BITS
from golden.kv4_attention import KV4Cache
from golden.kv4_attention_config import (C_BITS, CMD_T_BITS, CODE_SHIFT, KV8_LEVELS, KV_BITS, KV_LEVELS,
                               LSH_BITS, ZERO_BITS, KV4Config)

from golden.validate import expect_type

from .errors import QuantflowError
from .imagedir import read_hex, read_manifest, write_hex, write_image_dir
from .pack import IntArray, Words, pack_words, unpack_words

__all__ = ["FORMAT", "FORMAT_VERSION", "KV4CacheImage", "token_bits", "cache_token_bits",
           "pack_token_words", "unpack_token_words", "pack_recent_words",
           "unpack_recent_words", "decode_words", "pack_cache_words", "unpack_cache_words",
           "pack_append_words", "pack_cmd_word", "pack_query_words", "unpack_out_words",
           "export_kv4_cache", "load_kv4_cache", "kv_bytes_per_token"]

FORMAT = "quattro-kv4-cache"
FORMAT_VERSION = 2
_FIX = "re-export the cache with quantflow.kv4_attention.export_kv4_cache"
_CODE8_BITS = KV_BITS + CODE_SHIFT


def _cfg(config) -> KV4Config:
    return expect_type("config", config, KV4Config)


def token_bits(config: KV4Config) -> int:
    """Width of one decode K/V stream beat (4-bit and recent words alike)."""
    c = _cfg(config)
    return KV_BITS * c.lanes + c.scale_bits + ZERO_BITS


def cache_token_bits(config: KV4Config) -> int:
    """Width of one side (K or V) of an append-path cache word."""
    c = _cfg(config)
    return (KV_BITS + _CODE8_BITS) * c.lanes + c.scale_bits + KV_BITS + ZERO_BITS


# --------------------------------------------------------------------------- fields
def _ints(name: str, x, shape: tuple) -> np.ndarray:
    """x as int64 numpy of `shape` (None: any length there)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not (np.issubdtype(a.dtype, np.integer) and a.ndim == len(shape) and all(
            n is None or n == m for n, m in zip(shape, a.shape))):
        want = ", ".join("n" if n is None else str(n) for n in shape)
        raise QuantflowError(f"{name} must be integers of shape [{want}], got {a.dtype} "
                             f"{list(a.shape)}")
    return a.astype(np.int64)


def _join(parts) -> list[int]:
    """[(name, values per word, bits), ...] -> words, the first part in the LSBs;
    refuses a value that does not fit its field (it would corrupt the next)."""
    words, pos = None, 0
    for name, vals, bits in parts:
        vals = [int(v) for v in vals]
        if vals and (min(vals) < 0 or max(vals) >> bits):
            bad = next(v for v in vals if v < 0 or v >> bits)
            raise QuantflowError(f"{name} value {bad} does not fit its unsigned {bits}-bit "
                                 f"field")
        words = [0] * len(vals) if words is None else words
        if len(vals) != len(words):
            raise QuantflowError(f"{name} has {len(vals)} values for {len(words)} words")
        for i, v in enumerate(vals):
            words[i] |= v << pos
        pos += bits
    return words


def _split(words, widths) -> list[list[int]]:
    """Inverse of _join: one list of field values per width."""
    out, pos = [], 0
    for bits in widths:
        m = (1 << bits) - 1
        out.append([(w >> pos) & m for w in words])
        pos += bits
    return out


def _per_token(words, per: int, what: str, sides):
    """Check `words` form whole tokens of `per` beats that all repeat the token's
    per-token fields `sides` (lists per beat); -> the fields per token (int64)."""
    if len(words) % per:
        raise QuantflowError(f"{len(words)} {what} words are not a multiple of {per} "
                             f"(words per token); {_FIX}")
    out = []
    for vals in sides:
        a = np.array(vals, dtype=np.int64).reshape(-1, per)
        bad = np.flatnonzero((a != a[:, :1]).any(1))
        if bad.size:
            raise QuantflowError(f"{what} token {int(bad[0])}: its words disagree on "
                                 f"scale/zero; {_FIX}")
        out.append(a[:, 0].copy())
    return out


def _check_fit(words, bits: int, what: str) -> list[int]:
    words = [int(w) for w in words]
    if any(w < 0 or w >> bits for w in words):
        raise QuantflowError(f"a {what} word does not fit {bits} bits; {_FIX}")
    return words


# --------------------------------------------------------------------------- stream words
def pack_token_words(codes: IntArray, S: IntArray, zero: IntArray, config: KV4Config) -> list[int]:
    """4-bit codes [T, D], S [T], zero [T] -> T*chunks token words (token-major)."""
    c = _cfg(config)
    codes = _ints("codes", codes, (None, c.head_dim))
    T = codes.shape[0]
    rep = lambda n, x: np.repeat(_ints(n, x, (T,)), c.chunks)  # noqa: E731
    return _join([("code", pack_words(codes.reshape(-1), KV_BITS, c.lanes), KV_BITS * c.lanes),
                  ("S", rep("S", S), c.scale_bits), ("zero", rep("zero", zero), ZERO_BITS)])


def unpack_token_words(words: Words, config: KV4Config) -> tuple[np.ndarray, np.ndarray,
                       np.ndarray]:
    """Inverse of pack_token_words: (codes [T, D], S [T], zero [T]) int64 arrays,
    checking that every beat of a token repeats its scale and zero."""
    c = _cfg(config)
    words = _check_fit(words, token_bits(c), "token")
    cw, S, z = _split(words, (KV_BITS * c.lanes, c.scale_bits, ZERO_BITS))
    S, z = _per_token(words, c.chunks, "4-bit", (S, z))
    codes = unpack_words(cw, KV_BITS, c.lanes)
    return codes.reshape(-1, c.head_dim), S, z


def pack_recent_words(codes8: IntArray, S: IntArray, z8: IntArray, config: KV4Config) -> list[int]:
    """8-bit codes [R, D] (0..240), S [R], z8 [R] -> R*2*chunks recent words:
    per token the chunks words of code8 >> 4, then the chunks words of code8 & 15."""
    c = _cfg(config)
    codes8 = _ints("codes8", codes8, (None, c.head_dim))
    R = codes8.shape[0]
    if codes8.size and (codes8.min() < 0 or codes8.max() >> _CODE8_BITS):
        raise QuantflowError(f"8-bit codes must be in [0, {(1 << _CODE8_BITS) - 1}], got "
                             f"[{codes8.min()}, {codes8.max()}] (-1 marks a token whose "
                             f"8-bit codes were not kept)")
    nib = np.stack([codes8 >> CODE_SHIFT, codes8 & ((1 << CODE_SHIFT) - 1)], 1)  # [R, 2, D]
    rep = lambda n, x: np.repeat(_ints(n, x, (R,)), 2 * c.chunks)  # noqa: E731
    return _join([("code", pack_words(nib.reshape(-1), KV_BITS, c.lanes), KV_BITS * c.lanes),
                  ("S", rep("S", S), c.scale_bits), ("zero8", rep("zero8", z8), ZERO_BITS)])


def unpack_recent_words(words: Words, config: KV4Config) -> tuple[np.ndarray, np.ndarray,
                        np.ndarray]:
    """Inverse of pack_recent_words: (codes8 [R, D], S [R], z8 [R]) int64 arrays,
    checking that the 2*chunks words of a token agree on S and zero."""
    c = _cfg(config)
    words = _check_fit(words, token_bits(c), "recent")
    cw, S, z = _split(words, (KV_BITS * c.lanes, c.scale_bits, ZERO_BITS))
    S, z = _per_token(words, 2 * c.chunks, "recent", (S, z))
    nib = unpack_words(cw, KV_BITS, c.lanes).reshape(-1, 2, c.head_dim)
    return (nib[:, 0] << CODE_SHIFT) | nib[:, 1], S, z


def _need8(cache: KV4Cache, lo: int, hi: int, why: str) -> None:
    for name, t in (("kcodes8", cache.kcodes8[lo:hi]), ("kz8", cache.kz8[lo:hi]),
                    ("vcodes8", cache.vcodes8[lo:hi]), ("vz8", cache.vz8[lo:hi])):
        if bool((t < 0).any()):
            raise QuantflowError(f"the cache lacks 8-bit codes ({name}) for tokens {lo}..{hi - 1}, "
                                 f"which {why}; use a cache from golden.append_cache (every "
                                 f"token's 8-bit codes) or decode at the image's own T")


def decode_words(cache: KV4Cache, T: int, config: KV4Config) -> tuple[list[int], list[int]]:
    """(k_words, v_words): the exact K and V stream contents of a T-token decode,
    (T + R) * chunks words each, R = config.recent_tokens(T): 4-bit token words of
    tokens 0..T-R-1, then recent words of the last R tokens."""
    c = _cfg(config)
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= cache.T:
        raise QuantflowError(f"T must be an int in [1, {cache.T}] (the cached tokens), "
                             f"got {T!r}")
    n4 = T - c.recent_tokens(T)
    _need8(cache, n4, T, f"a T={T} decode reads at 8 bits")
    return tuple(
        pack_token_words(c4[:n4], S[:n4], z4[:n4], c) + pack_recent_words(c8[n4:T], S[n4:T],
                                                                          z8[n4:T], c)
        for c4, S, z4, c8, z8 in ((cache.kcodes, cache.ks, cache.kz, cache.kcodes8, cache.kz8),
                                  (cache.vcodes, cache.vs, cache.vz, cache.vcodes8, cache.vz8)))


def pack_cache_words(cache: KV4Cache, config: KV4Config) -> list[int]:
    """The append path's output for every token of `cache` (T*chunks cache words);
    needs every token's 8-bit codes (golden.append_cache / append_fixed)."""
    c = _cfg(config)
    T = cache.T
    _need8(cache, 0, T, "the append path emits")
    rep = lambda n, x: np.repeat(_ints(n, x, (T,)), c.chunks)  # noqa: E731
    sides = []
    for c4, c8, S, z4, z8 in ((cache.kcodes, cache.kcodes8, cache.ks, cache.kz, cache.kz8),
                              (cache.vcodes, cache.vcodes8, cache.vs, cache.vz, cache.vz8)):
        sides.append(_join([
            ("code", pack_words(_ints("codes4", c4, (T, c.head_dim)).reshape(-1), KV_BITS,
                                c.lanes), KV_BITS * c.lanes),
            ("code8", pack_words(_ints("codes8", c8, (T, c.head_dim)).reshape(-1), _CODE8_BITS,
                                 c.lanes), _CODE8_BITS * c.lanes),
            ("S", rep("S", S), c.scale_bits), ("zero4", rep("zero4", z4), KV_BITS),
            ("zero8", rep("zero8", z8), ZERO_BITS)]))
    cb = cache_token_bits(c)
    return [k | (v << cb) for k, v in zip(*sides)]


def unpack_cache_words(words: Words, config: KV4Config) -> tuple[tuple[np.ndarray, ...],
                       tuple[np.ndarray, ...]]:
    """Inverse of pack_cache_words -> ((codes4, codes8, S, z4, z8) of K, the same
    of V): codes [T, D], the rest [T], int64 arrays."""
    c = _cfg(config)
    cb = cache_token_bits(c)
    words = _check_fit(words, 2 * cb, "cache")
    out = []
    for side in (_split(words, (cb,))[0], [w >> cb for w in words]):
        c4, c8, S, z4, z8 = _split(side, (KV_BITS * c.lanes, _CODE8_BITS * c.lanes,
                                          c.scale_bits, KV_BITS, ZERO_BITS))
        S, z4, z8 = _per_token(side, c.chunks, "cache", (S, z4, z8))
        out.append((unpack_words(c4, KV_BITS, c.lanes).reshape(-1, c.head_dim),
                    unpack_words(c8, _CODE8_BITS, c.lanes).reshape(-1, c.head_dim), S, z4, z8))
    return tuple(out)


def pack_append_words(Xk: IntArray, Xv: IntArray, config: KV4Config) -> list[int]:
    """Fixed-point K, V [T, D] -> T*chunks append words."""
    c = _cfg(config)
    kw = pack_words(np.asarray(Xk).reshape(-1), c.x_bits, c.lanes, signed=True)
    vw = pack_words(np.asarray(Xv).reshape(-1), c.x_bits, c.lanes, signed=True)
    return [a | (b << (c.x_bits * c.lanes)) for a, b in zip(kw, vw)]


def pack_cmd_word(T: int, C: Sequence[int], lsh: Sequence[int], config: KV4Config) -> int:
    """The decode cmd word: token count T, then each head's multiplier C and shift lsh."""
    c = _cfg(config)
    if len(C) != c.heads or len(lsh) != c.heads:
        raise QuantflowError(f"need {c.heads} (C, lsh) pairs, got {len(C)}/{len(lsh)}")
    if not 0 <= int(T) < (1 << CMD_T_BITS):
        raise QuantflowError(f"T={T} does not fit the {CMD_T_BITS}-bit cmd field")
    w = int(T)
    pos = CMD_T_BITS
    for x in C:
        w |= int(x) << pos
        pos += C_BITS
    for x in lsh:
        w |= int(x) << pos
        pos += LSH_BITS
    return w


def pack_query_words(q8: IntArray, config: KV4Config) -> list[int]:
    """q8 [heads, D] -> heads*chunks words, head-major."""
    c = _cfg(config)
    return pack_words(np.asarray(q8, dtype=np.int64).reshape(-1), ACT_BITS, c.lanes, signed=True)


def unpack_out_words(words: Words, config: KV4Config) -> np.ndarray:
    """Inverse of the out stream's packing: the attention output [heads, D] as int64."""
    c = _cfg(config)
    return unpack_words(words, c.out_bits, c.lanes, signed=True).reshape(-1, c.head_dim)


def kv_bytes_per_token(config: KV4Config) -> dict:
    """Cache bytes per token and KV head, K and V with scales and zeros, vs FP16:
    kv4_bytes / ratio for the 4-bit region (4-bit codes, S, 4-bit zero), plus the
    fixed cost of the recent ring: `recent_tokens` tokens at 8 bits (8-bit codes,
    S, 8-bit zero), `ring_bytes` in all (once per KV head, not per token)."""
    c = _cfg(config)
    bits4 = 2 * (KV_BITS * c.head_dim + c.scale_bits + KV_BITS)
    bits8 = 2 * (_CODE8_BITS * c.head_dim + c.scale_bits + ZERO_BITS)
    return {"kv4_bytes": bits4 / 8, "fp16_bytes": 2 * 2 * c.head_dim,
            "ratio": (bits4 / 8) / (4 * c.head_dim), "recent_tokens": c.recent,
            "ring_bytes": c.recent * bits8 / 8}


# --------------------------------------------------------------------------- images
def export_kv4_cache(outdir: Path | str, cache: KV4Cache, config: KV4Config) -> dict:
    """Write one KV head's cache as an image directory (atomic, checksummed): the
    4-bit words of every token and the recent ring of a decode at T = cache.T."""
    c = _cfg(config)
    expect_type("cache", cache, KV4Cache)
    T = cache.T
    if not 1 <= T <= c.max_t:
        raise QuantflowError(f"the cache holds {T} tokens; an image needs 1..max_t={c.max_t}")
    if bool(cache.rotated) != c.rotate:
        raise QuantflowError(f"the cache was appended with rotate={bool(cache.rotated)} but "
                             f"config.rotate={c.rotate}; re-run golden.append_cache with "
                             f"this config")
    R = c.recent_tokens(T)
    n4 = T - R
    _need8(cache, n4, T, f"the recent ring of a T={T} decode holds")
    tb = token_bits(c)
    words = {"k": pack_token_words(cache.kcodes, cache.ks, cache.kz, c),
             "v": pack_token_words(cache.vcodes, cache.vs, cache.vz, c),
             "k8": pack_recent_words(cache.kcodes8[n4:], cache.ks[n4:], cache.kz8[n4:], c),
             "v8": pack_recent_words(cache.vcodes8[n4:], cache.vs[n4:], cache.vz8[n4:], c)}
    u8 = lambda t: t.numpy().astype(np.uint8)  # noqa: E731
    i64 = lambda t: t.numpy().astype(np.int64)  # noqa: E731
    arrays = {"k_codes": u8(cache.kcodes), "v_codes": u8(cache.vcodes),
              "k_codes8": u8(cache.kcodes8[n4:]), "v_codes8": u8(cache.vcodes8[n4:]),
              "k_scale": i64(cache.ks), "k_zero": i64(cache.kz), "v_scale": i64(cache.vs),
              "v_zero": i64(cache.vz), "k_zero8": i64(cache.kz8[n4:]),
              "v_zero8": i64(cache.vz8[n4:])}
    npy = {"k": "k_codes", "v": "v_codes", "k8": "k_codes8", "v8": "v_codes8"}

    def fill(tmp: Path) -> dict:
        for n, w in words.items():
            write_hex(tmp / f"{n}.hex", w, tb)
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a, allow_pickle=False)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": c.as_dict(),
                "config_name": c.name(), "T": T, "recent_tokens": R,
                "rotated": bool(cache.rotated), "frac_k": cache.frac_k,
                "frac_v": cache.frac_v,
                "tensors": {n: {"hex": f"{n}.hex", "npy": f"{npy[n]}.npy", "word_bits": tb,
                                "words": len(w)} for n, w in words.items()},
                "side": {n: {"npy": f"{n}.npy"} for n in arrays if n not in npy.values()}}

    return write_image_dir(Path(outdir), fill)


@dataclass(frozen=True, kw_only=True)
class KV4CacheImage:
    """A verified cache image: `cache` (8-bit codes / zeros -1 outside the recent
    ring), and k_words / v_words, the exact K / V streams of a decode at T = cache.T."""
    cache: KV4Cache
    k_words: tuple
    v_words: tuple
    manifest: dict


def load_kv4_cache(outdir: Path | str, config: KV4Config) -> KV4CacheImage:
    """Read and verify a cache image: checksums, config, T and the recent window,
    word counts, and that the hex words agree with the .npy arrays."""
    c = _cfg(config)
    outdir = Path(outdir)
    man = read_manifest(outdir, fmt=FORMAT, version=FORMAT_VERSION)
    if man.get("config") != c.as_dict():
        raise QuantflowError(f"{outdir}/manifest.json was written for "
                             f"{man.get('config_name')}, expected {c.name()}; {_FIX}")
    T = man.get("T")
    if not isinstance(T, int) or not 1 <= T <= c.max_t:
        raise QuantflowError(f"{outdir}: T={T!r} is not in [1, max_t={c.max_t}]; {_FIX}")
    R = c.recent_tokens(T)
    n4 = T - R
    tb = token_bits(c)

    def load(name: str) -> np.ndarray:
        return np.load(outdir / name, allow_pickle=False)

    parts, streams = {}, {}
    for n in ("k", "v"):
        want = {n: T * c.chunks, f"{n}8": R * 2 * c.chunks}
        words = {}
        for m, count in want.items():
            t = man["tensors"].get(m)
            if t is None or int(t["word_bits"]) != tb or int(t["words"]) != count:
                raise QuantflowError(
                    f"{outdir}: {m}.hex shape disagrees with the manifest ("
                    f"{t and t['words']} words of {t and t['word_bits']} bits, expected "
                    f"{count} of {tb} for T={T}, recent tokens {R}); {_FIX}")
            words[m] = read_hex(outdir / t["hex"], tb, count)
        codes, S, z = unpack_token_words(words[n], c)
        codes8, S8, z8 = unpack_recent_words(words[f"{n}8"], c)
        if not (np.array_equal(load(man["tensors"][n]["npy"]), codes)
                and np.array_equal(load(f"{n}_scale.npy"), S)
                and np.array_equal(load(f"{n}_zero.npy"), z)
                and np.array_equal(load(man["tensors"][f"{n}8"]["npy"]), codes8)
                and np.array_equal(load(f"{n}_zero8.npy"), z8)):
            raise QuantflowError(f"{outdir}: {n}.hex / {n}8.hex disagree with their .npy "
                                 f"files; {_FIX}")
        if not np.array_equal(S8, S[n4:]):
            raise QuantflowError(f"{outdir}: {n}8.hex disagrees with {n}.hex on the scale of "
                                 f"the recent tokens {n4}..{T - 1}; {_FIX}")
        if z.max() > KV_LEVELS or codes8.max(initial=0) > KV8_LEVELS or z8.max(
                initial=0) > KV8_LEVELS:
            raise QuantflowError(f"{outdir}: {n} holds a 4-bit zero > {KV_LEVELS} or an 8-bit "
                                 f"code/zero > {KV8_LEVELS}, which no append produces; {_FIX}")
        full8 = np.full((T, c.head_dim), -1, dtype=np.int64)
        full8[n4:] = codes8
        fullz8 = np.full(T, -1, dtype=np.int64)
        fullz8[n4:] = z8
        parts[n] = [torch.from_numpy(a) for a in (codes, S, z, full8, fullz8)]
        streams[n] = tuple(words[n][:n4 * c.chunks] + words[f"{n}8"])
    if man.get("recent_tokens") != R:
        raise QuantflowError(f"{outdir}: recent_tokens={man.get('recent_tokens')!r} disagrees "
                             f"with the manifest's T={T} (a decode at T reads the last "
                             f"min(recent={c.recent}, T) = {R} tokens at 8 bits); {_FIX}")
    if man.get("rotated") is not c.rotate:
        raise QuantflowError(f"{outdir}: rotated={man.get('rotated')!r} but config.rotate="
                             f"{c.rotate}; {_FIX}")
    (kc, ks, kz, kc8, kz8), (vc, vs, vz, vc8, vz8) = parts["k"], parts["v"]
    cache = KV4Cache(kcodes=kc, ks=ks, kz=kz, vcodes=vc, vs=vs, vz=vz, kcodes8=kc8, kz8=kz8,
                     vcodes8=vc8, vz8=vz8, frac_k=int(man["frac_k"]),
                     frac_v=int(man["frac_v"]), rotated=c.rotate)
    return KV4CacheImage(cache=cache, k_words=streams["k"], v_words=streams["v"], manifest=man)
