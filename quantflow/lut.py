"""Quantization, bit-plane packing and memory images of the LUT mpGEMM block
(DESIGN §3.4, §3.8; word layouts in golden/lut_config.py and docs/lut.md).

Weights:
  * W1, W2, W4: QoQ (quantflow.qoq, DESIGN §3.2) with 2**bits - 1 levels, so
    the same (q, s2, z) also run on MixPE (W1 codes are valid W2 codes).
  * ternary (BitNet b1.58, absmean): s1[n] = fp16(mean|W[n, :]|),
    w = clamp(round(W / s1), -1, 1), stored as q = w + 1 with z = 1, s2 = 1.
Images: act/code/scale/result .hex + .npy, side .npy (s1, s_a, s2, z) and a
manifest with every file's sha256: the QoQ image set (quantflow.qoq_images),
written atomically (quantflow.imagedir).
The code image is the bit-plane stream for the manifest's weight format; a
loader asked for another format or configuration refuses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golden.formats import ACC_BITS, ACT_BITS, ACT_QMAX, SCALE_BITS, SCALE_MAX, SCALE_PAIR_BITS
from golden.lut import lut_acc
from golden.lut_config import LUT_K_CHUNK, LUT_PLANE_BITS, LUTConfig, LUTMode
from golden.validate import expect_type

from ._check import as_float_tensor
from .errors import QuantflowError
from .imagedir import FIX, MANIFEST, read_manifest_for, read_npy, read_words
from .pack import IntArray, Words, pack_words, unpack_words
from .qoq import QoQWeights, quantize_act, quantize_qoq
from .qoq_images import (SCALE_FIELDS, QoQImages, check_qoq_images, qoq_fields, qoq_operands,
                         write_qoq_images)

__all__ = ["LUT_FORMAT", "LUT_FORMAT_VERSION", "LUTImages", "quantize_lut_weights",
           "pack_lut_act_words", "pack_lut_code_words", "pack_lut_scale_words",
           "pack_lut_result_words", "unpack_lut_act_words", "unpack_lut_code_words",
           "unpack_lut_scale_words", "unpack_lut_result_words",
           "write_lut_images", "export_lut", "load_lut"]

LUT_FORMAT = "quattro-lut-images"
LUT_FORMAT_VERSION = 1


def _cfg(config) -> LUTConfig:
    return expect_type("config", config, LUTConfig)


def _mode(mode) -> LUTMode:
    if isinstance(mode, str):
        try:
            return LUTMode.parse(mode)
        except ValueError as e:
            raise QuantflowError(str(e)) from None
    if not isinstance(mode, LUTMode):
        raise TypeError(f"mode must be a LUTMode or one of 'w1', 'w2', 'w4', 'ternary', "
                        f"got {mode!r}")
    return mode


def _np(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            raise QuantflowError(f"{name} must be integers, got {x.dtype}")
        return x.detach().cpu().to(torch.int64).numpy()
    return np.asarray(x).astype(np.int64)


def _tiles(length: int, size: int, what: str) -> int:
    if length % size:
        raise QuantflowError(f"{what}={length} is not a multiple of {size}; pad with zero "
                             f"rows (quantflow.pad_to_multiple) and drop them afterwards")
    return length // size


# --------------------------------------------------------------------------- quantize
def quantize_lut_weights(W: torch.Tensor | np.ndarray, *, mode: LUTMode | str,
                         group: int) -> QoQWeights:
    """Float W [N, K] -> QoQWeights in the LUT format `mode` (module docstring)."""
    mode = _mode(mode)
    if not mode.ternary:
        return quantize_qoq(W, bits=mode.bits, group=group, allowed_bits=LUT_PLANE_BITS)
    W = as_float_tensor("W", W, 2, "[N, K] weights (out_features x in_features)")
    N, K = W.shape
    if N == 0 or K == 0 or isinstance(group, bool) or not isinstance(group, int) \
            or group < 1 or K % group:
        raise QuantflowError(f"W {list(W.shape)} must be non-empty with K a multiple of "
                             f"group={group!r}")
    s1 = W.abs().mean(dim=1).to(torch.float16)
    s1f = s1.to(torch.float32)
    zero = s1f == 0
    w = torch.clamp(torch.round(W / torch.where(zero, 1.0, s1f).unsqueeze(1)), -1, 1)
    w = torch.where(zero.unsqueeze(1), 0.0, w)
    G = K // group
    return QoQWeights(q=(w + 1).to(torch.int32), s1=s1,
                      s2=torch.ones((N, G), dtype=torch.int32),
                      z=torch.ones((N, G), dtype=torch.int32), bits=2, group=group)


# --------------------------------------------------------------------------- pack
def pack_lut_act_words(a: IntArray, config: LUTConfig) -> list[int]:
    """word[tm*K/4 + c] holds a[tm*rows + r, 4c + t] as element 4r + t."""
    c = _cfg(config)
    a = _np("a", a)
    if a.ndim != 2 or a.shape[1] != c.K:
        raise QuantflowError(f"a must be [M, K={c.K}], got {list(a.shape)}")
    mt = _tiles(a.shape[0], c.rows, "M")
    v = a.reshape(mt, c.rows, c.chunks, LUT_K_CHUNK).transpose(0, 2, 1, 3)
    return pack_words(v.reshape(-1, LUT_K_CHUNK * c.rows), ACT_BITS, LUT_K_CHUNK * c.rows,
                      signed=True)


def unpack_lut_act_words(words: Words, config: LUTConfig) -> np.ndarray:
    """Inverse of pack_lut_act_words: activations [M, K] as int64."""
    c = _cfg(config)
    v = unpack_words(words, ACT_BITS, LUT_K_CHUNK * c.rows, signed=True)
    mt = v.shape[0] // c.chunks
    v = v.reshape(mt, c.chunks, c.rows, LUT_K_CHUNK).transpose(0, 2, 1, 3)
    return v.reshape(mt * c.rows, c.K)


def pack_lut_code_words(q: IntArray, config: LUTConfig, mode: LUTMode | str) -> list[int]:
    """Bit-plane layout: word[((tn*K/4 + c)*slices + s)*planes + (planes-1-i)]
    holds, as element l, plane i of q[tn*cols + s*lanes + l, 4c .. 4c+3]."""
    c, mode = _cfg(config), _mode(mode)
    q = _np("q", q)
    if q.ndim != 2 or q.shape[1] != c.K:
        raise QuantflowError(f"q must be [N, K={c.K}], got {list(q.shape)}")
    if q.size and (q.min() < 0 or q.max() > mode.max_code):
        raise QuantflowError(f"q holds codes outside [0, {mode.max_code}] for {mode.name}; "
                             f"quantize with quantize_lut_weights(mode={mode.name!r})")
    nt = _tiles(q.shape[0], c.cols, "N")
    v = q.reshape(nt, c.slices, c.lanes, c.chunks, LUT_K_CHUNK)
    planes = np.stack([(v >> i) & 1 for i in reversed(range(mode.planes))])  # [P, ...]
    idx = (planes << np.arange(LUT_K_CHUNK)).sum(-1)  # [P, nt, S, lanes, C]
    idx = idx.transpose(1, 4, 2, 0, 3)  # [nt, C, S, P, lanes]
    return pack_words(idx.reshape(-1, c.lanes), LUT_K_CHUNK, c.lanes)


def unpack_lut_code_words(words: Words, config: LUTConfig, mode: LUTMode | str) -> np.ndarray:
    """Inverse of pack_lut_code_words: weight codes [N, K] as int64."""
    c, mode = _cfg(config), _mode(mode)
    idx = unpack_words(words, LUT_K_CHUNK, c.lanes)
    per = c.chunks * c.slices * mode.planes
    if idx.shape[0] % per:
        raise QuantflowError(f"{idx.shape[0]} code words is not a whole number of tiles of "
                             f"{per} words; {FIX}")
    nt = idx.shape[0] // per
    idx = idx.reshape(nt, c.chunks, c.slices, mode.planes, c.lanes)
    bits = (idx[..., None] >> np.arange(LUT_K_CHUNK)) & 1  # [nt, C, S, P, lanes, 4]
    weights = (1 << np.arange(mode.planes))[::-1]  # plane order is MSB first
    q = (bits * weights[None, None, None, :, None, None]).sum(3)  # [nt, C, S, lanes, 4]
    return q.transpose(0, 2, 3, 1, 4).reshape(nt * c.cols, c.K)


def pack_lut_scale_words(s2: IntArray, z: IntArray, config: LUTConfig) -> list[int]:
    """word[(tn*groups + j)*slices + s] holds (s2 | z*s2 << 8) of column
    tn*cols + s*lanes + l as element l."""
    c = _cfg(config)
    s2, z = _np("s2", s2), _np("z", z)
    if s2.shape != z.shape or s2.ndim != 2 or s2.shape[1] != c.groups:
        raise QuantflowError(f"s2 {list(s2.shape)} and z {list(z.shape)} must both be "
                             f"[N, K/group={c.groups}]")
    nt = _tiles(s2.shape[0], c.cols, "N")
    zs2 = z * s2
    if s2.size and (s2.min() < 1 or max(s2.max(), zs2.max()) >> SCALE_BITS or zs2.min() < 0):
        raise QuantflowError(f"s2 must be in [1, {SCALE_MAX}] and z*s2 in [0, {SCALE_MAX}]")
    pair = (s2 | (zs2 << SCALE_BITS)).reshape(nt, c.slices, c.lanes, c.groups)
    return pack_words(pair.transpose(0, 3, 1, 2).reshape(-1, c.lanes), SCALE_PAIR_BITS, c.lanes)


def unpack_lut_scale_words(words: Words, config: LUTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_lut_scale_words: (s2, z*s2) [N, groups] as int64."""
    c = _cfg(config)
    v = unpack_words(words, SCALE_PAIR_BITS, c.lanes)
    nt = v.shape[0] // (c.groups * c.slices)
    v = v.reshape(nt, c.groups, c.slices, c.lanes).transpose(0, 2, 3, 1).reshape(-1, c.groups)
    return v & SCALE_MAX, v >> SCALE_BITS


def pack_lut_result_words(acc: IntArray, config: LUTConfig) -> list[int]:
    """word[(tn*m_tiles + tm)*slices + s] holds acc[tm*rows + r, tn*cols +
    s*lanes + l] as element r*lanes + l (the block's emission order)."""
    c = _cfg(config)
    acc = _np("acc", acc)
    mt = _tiles(acc.shape[0], c.rows, "M")
    nt = _tiles(acc.shape[1], c.cols, "N")
    v = acc.reshape(mt, c.rows, nt, c.slices, c.lanes).transpose(2, 0, 3, 1, 4)
    return pack_words(v.reshape(-1, c.rows * c.lanes), ACC_BITS, c.rows * c.lanes, signed=True)


def unpack_lut_result_words(words: Words, config: LUTConfig, *, M: int, N: int) -> np.ndarray:
    """Inverse of pack_lut_result_words: acc [M, N] as int64."""
    c = _cfg(config)
    mt, nt = _tiles(M, c.rows, "M"), _tiles(N, c.cols, "N")
    v = unpack_words(words, ACC_BITS, c.rows * c.lanes, signed=True)
    return v.reshape(nt, mt, c.slices, c.rows, c.lanes).transpose(1, 3, 0, 2, 4).reshape(M, N)


# --------------------------------------------------------------------------- images
def write_lut_images(outdir: Path | str, config: LUTConfig, mode: LUTMode | str, *,
                     weights: QoQWeights, a: IntArray, s_a: torch.Tensor | np.ndarray) -> dict:
    """Pack quantized operands, compute golden.lut's expected acc and write the
    image directory atomically (nothing is left behind on an error)."""
    c, mode = _cfg(config), _mode(mode)
    a, s_a, M, N = qoq_operands(
        weights, a, s_a, K=c.K, bits=mode.bits, group=c.group,
        quantize=f"quantflow.lut.quantize_lut_weights(W, mode={mode.name!r}, group={c.group})")
    try:
        acc = lut_acc(a, weights.q, weights.s2, weights.z, c, mode)
    except ValueError as e:
        raise QuantflowError(f"operands do not fit the {mode.name} format: {e}") from None
    # all packing (and its tiling errors) before any I/O
    words = {"act": pack_lut_act_words(a, c), "code": pack_lut_code_words(weights.q, c, mode),
             "scale": pack_lut_scale_words(weights.s2, weights.z, c),
             "result": pack_lut_result_words(acc, c)}
    desc = {
        "act": dict(elem_bits=ACT_BITS, signed=True, elems_per_word=LUT_K_CHUNK * c.rows,
                    word_bits=c.act_word_bits, layout="lut_act",
                    order="word[tm*K/4 + c] holds a[tm*rows + r, 4c + t] as element 4r + t"),
        "code": dict(elem_bits=LUT_K_CHUNK, signed=False, elems_per_word=c.lanes,
                     word_bits=c.code_word_bits, layout="lut_bitplane_code",
                     planes=mode.planes,
                     order="word[((tn*K/4 + c)*slices + s)*planes + planes-1-i] holds, as "
                           "element l, bit i of q[tn*cols + s*lanes + l, 4c + t] in bit t; "
                           "npy holds the codes q [N, K]"),
        "scale": dict(elem_bits=SCALE_PAIR_BITS, signed=False, elems_per_word=c.lanes,
                      word_bits=c.scale_word_bits, layout="lut_scale", fields=SCALE_FIELDS,
                      order="word[(tn*groups + j)*slices + s] holds (s2 | zs2 << 8) of column "
                            "tn*cols + s*lanes + l as element l; npy is [N, G, 2]"),
        "result": dict(elem_bits=ACC_BITS, signed=True, elems_per_word=c.rows * c.lanes,
                       word_bits=c.result_word_bits, layout="lut_result",
                       order="word[(tn*m_tiles + tm)*slices + s] holds acc[tm*rows + r, "
                             "tn*cols + s*lanes + l] as element r*lanes + l"),
    }
    manifest = {
        "format": LUT_FORMAT, "format_version": LUT_FORMAT_VERSION, "block": "lut",
        "config": c.as_dict(), "config_name": c.name(), "mode": mode.as_dict(),
        "dims": {"M": M, "N": N, "K": c.K, "groups": c.groups, "m_tiles": M // c.rows,
                 "n_tiles": N // c.cols},
        "quantization": {
            "weights": {"scheme": "ternary-absmean" if mode.ternary else "qoq",
                        "bits": mode.bits, "ternary": mode.ternary, "group": c.group,
                        "s1_dtype": "float16", "scale_bits": SCALE_BITS,
                        "rounding": "half-even"},
            "activations": {"scheme": "per-token-symmetric-int8", "qmax": ACT_QMAX,
                            "s_a_dtype": "float32", "rounding": "half-even"}},
    }
    return write_qoq_images(outdir, weights=weights, a=a, s_a=s_a, acc=acc, words=words,
                            desc=desc, manifest=manifest)


def export_lut(outdir: Path | str, config: LUTConfig, mode: LUTMode | str,
               W: torch.Tensor | np.ndarray, X: torch.Tensor | np.ndarray) -> dict:
    """Quantize float W [N, K] in `mode` and X [M, K] (per-token INT8), pack, write."""
    c, mode = _cfg(config), _mode(mode)
    qw = quantize_lut_weights(W, mode=mode, group=c.group)
    if qw.shape[1] != c.K:
        raise QuantflowError(f"W has K={qw.shape[1]} but config.K={c.K}; build the config "
                             f"with K={qw.shape[1]}")
    a, s_a = quantize_act(X)
    return write_lut_images(outdir, c, mode, weights=qw, a=a, s_a=s_a)


@dataclass(frozen=True, kw_only=True)
class LUTImages(QoQImages):
    """A verified LUT image directory (fields: quantflow.qoq_images.QoQImages) and
    the weight format its code image holds."""

    config: LUTConfig
    mode: LUTMode


def load_lut(outdir: Path | str, config: LUTConfig, mode: LUTMode | str) -> LUTImages:
    """Read and verify an image directory: checksums, configuration and weight
    format, word counts/widths, and every .hex against its .npy."""
    c, mode = _cfg(config), _mode(mode)
    outdir = Path(outdir)
    man = read_manifest_for(outdir, c, fmt=LUT_FORMAT, version=LUT_FORMAT_VERSION)
    mpath = outdir / MANIFEST
    if man.get("mode") != mode.as_dict():
        raise QuantflowError(f"{mpath} holds {man.get('mode')} weights, expected "
                             f"{mode.as_dict()} ({mode.name}); {FIX} with this format")
    M, N = int(man["dims"]["M"]), int(man["dims"]["N"])
    try:
        words = read_words(outdir, man)
        arrays = read_npy(outdir, man["tensors"])
        side = read_npy(outdir, man["side"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, QuantflowError):
            raise
        raise QuantflowError(f"{mpath} does not describe a LUT image ({e}); {FIX}") from None
    try:
        check_qoq_images(outdir, words, arrays, side,
                         act=lambda w: unpack_lut_act_words(w, c),
                         code=lambda w: unpack_lut_code_words(w, c, mode),
                         scale=lambda w: unpack_lut_scale_words(w, c),
                         result=lambda w: unpack_lut_result_words(w, c, M=M, N=N))
    except (ValueError, IndexError) as e:
        if isinstance(e, QuantflowError) and FIX in str(e):
            raise
        raise QuantflowError(f"{outdir}: images do not match the manifest ({e}); {FIX}") \
            from None
    return LUTImages(path=outdir, config=c, mode=mode, manifest=man, M=M, N=N,
                     **qoq_fields(words, arrays, side))
