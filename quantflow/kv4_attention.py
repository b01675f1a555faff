"""KV4 attention formats: the stream words of hdl.kv4_attention and the KV4
cache image (DESIGN §3.8) on top of quantflow.pack and quantflow.images.

Words (element 0 / first field in the LSBs, docs/kv4_attention.md):
  token word   codes[lanes] (4 bits each) | S << 4*lanes | zero << (4*lanes + scale_bits)
  cache word   k token word | v token word << token_bits          (append path output)
  append word  k[lanes] (signed x_bits) | v[lanes] << lanes*x_bits
  cmd word     t (16) | c[h] (16 each) | lsh[h] (6 each)
  query word   q8[lanes] (signed 8);  out word  out[lanes] (signed out_bits)

Cache image directory: k.hex / v.hex (one token word per (token, chunk)),
k_codes.npy, v_codes.npy [T, D] uint8, and side k_scale/k_zero/v_scale/v_zero
[T] int64, plus manifest.json (config, T, frac_k, frac_v, sha256 of every file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golden.config import ACT_BITS
from golden.kv4_attention import KV4Cache
from golden.kv4_config import C_BITS, CMD_T_BITS, KV_BITS, LSH_BITS, KV4Config

from .errors import QuantflowError
from .images import _write_dir_atomically, read_hex, read_manifest, write_hex
from .pack import pack_words, unpack_words

__all__ = ["FORMAT", "FORMAT_VERSION", "token_bits", "pack_token_words", "unpack_token_words",
           "pack_append_words", "pack_cmd_word", "pack_query_words", "unpack_out_words",
           "unpack_cache_words", "export_kv4_cache", "load_kv4_cache", "kv_bytes_per_token"]

FORMAT = "quattro-kv4-cache"
FORMAT_VERSION = 1
_FIX = "re-export the cache with quantflow.kv4_attention.export_kv4_cache"


def _cfg(config) -> KV4Config:
    if not isinstance(config, KV4Config):
        raise QuantflowError(f"config must be a KV4Config, got {type(config).__name__}")
    return config


def token_bits(config: KV4Config) -> int:
    c = _cfg(config)
    return KV_BITS * c.lanes + c.scale_bits + KV_BITS


def pack_token_words(codes, S, zero, config: KV4Config) -> list[int]:
    """codes [T, D], S [T], zero [T] -> T*chunks token words (token-major)."""
    c = _cfg(config)
    codes = np.asarray(codes, dtype=np.int64)
    T = codes.shape[0]
    cw = pack_words(codes.reshape(-1), KV_BITS, c.lanes)
    out = []
    for t in range(T):
        hi = (int(S[t]) | (int(zero[t]) << c.scale_bits)) << (KV_BITS * c.lanes)
        out += [w | hi for w in cw[t * c.chunks:(t + 1) * c.chunks]]
    return out


def unpack_token_words(words, config: KV4Config):
    """Inverse of pack_token_words: (codes [T, D], S [T], zero [T]) int64 arrays,
    checking that every beat of a token repeats its scale and zero."""
    c = _cfg(config)
    words = list(words)
    if len(words) % c.chunks:
        raise QuantflowError(f"{len(words)} token words are not a multiple of "
                             f"chunks={c.chunks}; {_FIX}")
    cb = KV_BITS * c.lanes
    codes = unpack_words([w & ((1 << cb) - 1) for w in words], KV_BITS, c.lanes)
    hi = [w >> cb for w in words]
    S = np.array([h & ((1 << c.scale_bits) - 1) for h in hi[::c.chunks]], dtype=np.int64)
    z = np.array([h >> c.scale_bits for h in hi[::c.chunks]], dtype=np.int64)
    T = len(words) // c.chunks
    for t in range(T):
        if len(set(hi[t * c.chunks:(t + 1) * c.chunks])) != 1:
            raise QuantflowError(f"token {t}: its beats disagree on scale/zero; {_FIX}")
    return codes.reshape(T, c.head_dim).astype(np.int64), S, z


def unpack_cache_words(words, config: KV4Config):
    """Append-path output words -> ((k codes, S, z), (v codes, S, z))."""
    tb = token_bits(config)
    k = unpack_token_words([w & ((1 << tb) - 1) for w in words], config)
    v = unpack_token_words([w >> tb for w in words], config)
    return k, v


def pack_append_words(Xk, Xv, config: KV4Config) -> list[int]:
    """Fixed-point K, V [T, D] -> T*chunks append words."""
    c = _cfg(config)
    kw = pack_words(np.asarray(Xk).reshape(-1), c.x_bits, c.lanes, signed=True)
    vw = pack_words(np.asarray(Xv).reshape(-1), c.x_bits, c.lanes, signed=True)
    return [a | (b << (c.x_bits * c.lanes)) for a, b in zip(kw, vw)]


def pack_cmd_word(T: int, C, lsh, config: KV4Config) -> int:
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


def pack_query_words(q8, config: KV4Config) -> list[int]:
    """q8 [heads, D] -> heads*chunks words, head-major."""
    c = _cfg(config)
    return pack_words(np.asarray(q8, dtype=np.int64).reshape(-1), ACT_BITS, c.lanes, signed=True)


def unpack_out_words(words, config: KV4Config) -> np.ndarray:
    c = _cfg(config)
    return unpack_words(words, c.out_bits, c.lanes, signed=True).reshape(-1, c.head_dim)


def kv_bytes_per_token(config: KV4Config) -> dict:
    """Cache bytes per token and KV head (K and V, scales and zeros included) vs FP16."""
    c = _cfg(config)
    bits = 2 * (KV_BITS * c.head_dim + c.scale_bits + KV_BITS)
    return {"kv4_bytes": bits / 8, "fp16_bytes": 2 * 2 * c.head_dim,
            "ratio": (bits / 8) / (4 * c.head_dim)}


# --------------------------------------------------------------------------- images
def export_kv4_cache(outdir, cache: KV4Cache, config: KV4Config) -> dict:
    """Write one KV head's cache as an image directory (atomic, checksummed)."""
    from .images import _sha256
    c = _cfg(config)
    if cache.T > c.max_t:
        raise QuantflowError(f"the cache holds {cache.T} tokens, more than max_t={c.max_t}")
    tb = token_bits(c)
    kw = pack_token_words(cache.kcodes, cache.ks, cache.kz, c)
    vw = pack_token_words(cache.vcodes, cache.vs, cache.vz, c)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": c.as_dict(),
                "config_name": c.name(), "T": cache.T, "frac_k": cache.frac_k,
                "frac_v": cache.frac_v,
                "tensors": {n: {"hex": f"{n}.hex", "npy": f"{n}_codes.npy", "word_bits": tb,
                                "words": len(w)} for n, w in (("k", kw), ("v", vw))},
                "side": {n: {"npy": f"{n}.npy"} for n in ("k_scale", "k_zero", "v_scale",
                                                          "v_zero")}}

    def fill(tmp: Path) -> None:
        import json
        write_hex(tmp / "k.hex", kw, tb)
        write_hex(tmp / "v.hex", vw, tb)
        np.save(tmp / "k_codes.npy", cache.kcodes.numpy().astype(np.uint8))
        np.save(tmp / "v_codes.npy", cache.vcodes.numpy().astype(np.uint8))
        for n, t in (("k_scale", cache.ks), ("k_zero", cache.kz), ("v_scale", cache.vs),
                     ("v_zero", cache.vz)):
            np.save(tmp / f"{n}.npy", t.numpy().astype(np.int64))
        manifest["sha256"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))

    _write_dir_atomically(Path(outdir), fill)
    return manifest


@dataclass(frozen=True, kw_only=True)
class KV4CacheImage:
    cache: KV4Cache
    k_words: tuple
    v_words: tuple
    manifest: dict


def load_kv4_cache(outdir, config: KV4Config) -> KV4CacheImage:
    """Read and verify a cache image: checksums, config, word counts, and that
    the hex words agree with the .npy arrays."""
    c = _cfg(config)
    outdir = Path(outdir)
    man = read_manifest(outdir, fmt=FORMAT, version=FORMAT_VERSION)
    if man.get("config") != c.as_dict():
        raise QuantflowError(f"{outdir}/manifest.json was written for "
                             f"{man.get('config_name')}, expected {c.name()}; {_FIX}")
    T = man.get("T")
    if not isinstance(T, int) or not 1 <= T <= c.max_t:
        raise QuantflowError(f"{outdir}: T={T!r} is not in [1, max_t={c.max_t}]; {_FIX}")
    tb = token_bits(c)
    parts, words = {}, {}
    for n in ("k", "v"):
        t = man["tensors"][n]
        if int(t["word_bits"]) != tb or int(t["words"]) != T * c.chunks:
            raise QuantflowError(f"{outdir}: {n}.hex shape disagrees with the manifest "
                                 f"({t['words']} words of {t['word_bits']} bits, expected "
                                 f"{T * c.chunks} of {tb}); {_FIX}")
        words[n] = read_hex(outdir / t["hex"], tb, T * c.chunks)
        codes, S, z = unpack_token_words(words[n], c)
        arr = np.load(outdir / t["npy"], allow_pickle=False).astype(np.int64)
        side_s = np.load(outdir / f"{n}_scale.npy", allow_pickle=False)
        side_z = np.load(outdir / f"{n}_zero.npy", allow_pickle=False)
        if not (np.array_equal(arr, codes) and np.array_equal(side_s, S)
                and np.array_equal(side_z, z)):
            raise QuantflowError(f"{outdir}: {n}.hex disagrees with its .npy files; {_FIX}")
        parts[n] = (torch.from_numpy(codes), torch.from_numpy(S), torch.from_numpy(z))
    cache = KV4Cache(kcodes=parts["k"][0], ks=parts["k"][1], kz=parts["k"][2],
                     vcodes=parts["v"][0], vs=parts["v"][1], vz=parts["v"][2],
                     frac_k=int(man["frac_k"]), frac_v=int(man["frac_v"]))
    return KV4CacheImage(cache=cache, k_words=tuple(words["k"]), v_words=tuple(words["v"]),
                         manifest=man)
