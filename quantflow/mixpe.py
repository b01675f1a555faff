"""MixPE's memory layouts, image export and loading (DESIGN §3.3, §3.8; the
configuration in golden/mixpe_config.py, words in docs/formats.md).

Layouts (M must be a multiple of config.rows, N of config.cols; otherwise
QuantflowError: pad with zero rows/channels, see quantflow.pack.pad_to_multiple):
  act    word[tm*K + k]        = a[tm*rows + r, k],     r = 0..rows-1   (int8)
  code   word[tn*K + k]        = q[tn*cols + c, k],     c = 0..cols-1   (bits)
  scale  word[tn*G + j]        = (s2 | zs2 << 8)[tn*cols + c, j]         (16-bit pairs)
  result word[(tn*MT + tm)*rows + m] = acc[tm*rows + m, tn*cols + c]     (int32)
with MT = M/rows m-tiles: the emission order of hdl.mixpe.MixPESystem.

An image directory is the QoQ image set (quantflow.qoq_images): act [M,K] int8,
code [N,K] uint8, scale [N,G,2] uint8 holding (s2, z*s2), result [M,N] int32 =
golden acc, side s1, s_a, s2, z; manifest format FORMAT.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from golden.formats import (ACC_BITS, ACT_BITS, ACT_QMAX, QOQ_W8_QMAX, SCALE_BITS, SCALE_MAX,
                            SCALE_PAIR_BITS)
from golden.mixpe import mixpe_acc
from golden.mixpe_config import MixPEConfig
from golden.validate import check_int, expect_type

from .errors import QuantflowError
from .imagedir import FIX, read_manifest_for, read_npy, read_words
from .pack import IntArray, Words, int64_array, pack_words, pack_words_array, unpack_words
from .qoq import QoQWeights, quantize_act, quantize_qoq
from .qoq_images import (SCALE_FIELDS, QoQImages, agree, check_qoq_images, qoq_fields,
                         qoq_operands, write_qoq_images)

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT", "FORMAT_VERSION",
           "pack_act_words", "unpack_act_words", "pack_code_words", "unpack_code_words",
           "pack_scale_words", "unpack_scale_words", "pack_result_words",
           "unpack_result_words", "MixPEImages", "write_mixpe_images", "export_mixpe",
           "load_mixpe"]

FORMAT = "quattro-mixpe-images"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- words
def _tiles(name: str, length: int, size: int, what: str, attr: str) -> int:
    if length % size:
        raise QuantflowError(
            f"{name}={length} is not a multiple of config.{attr}={size}; pad the {what} "
            f"with {(-length) % size} zero rows (quantflow.pad_to_multiple) or pick a "
            f"{attr} that divides {name}")
    return length // size


def _np2d(name: str, x, cols: int | None = None) -> np.ndarray:
    v = int64_array(name, x)
    if v.ndim != 2 or (cols is not None and v.shape[1] != cols):
        want = f"[*, {cols}]" if cols is not None else "2-D"
        raise QuantflowError(f"{name} must be {want}, got shape {list(v.shape)}")
    return v


def _check_cfg(config) -> MixPEConfig:
    return expect_type("config", config, MixPEConfig)


# ---- activations: [M, K] -> words (tile_m, k), `rows` int8 per word
def pack_act_words(a: IntArray, config: MixPEConfig) -> list[int]:
    """Activations a [M, K] as act words: word[tm*K + k] holds a[tm*rows + r, k] as element r."""
    c = _check_cfg(config)
    v = _np2d("a", a, c.K)
    mt = _tiles("M", v.shape[0], c.rows, "activations", "rows")
    # [MT, rows, K] -> [MT, K, rows]: one word per (tile_m, k)
    elems = v.reshape(mt, c.rows, c.K).transpose(0, 2, 1).reshape(-1, c.rows)
    return pack_words(elems, ACT_BITS, c.rows, signed=True)


def unpack_act_words(words: Words, config: MixPEConfig) -> np.ndarray:
    """Inverse of pack_act_words: activations [M, K] as int64."""
    c = _check_cfg(config)
    e = unpack_words(words, ACT_BITS, c.rows, signed=True)
    mt = _tiles("act words", e.shape[0], c.K, "act words", "K")
    return e.reshape(mt, c.K, c.rows).transpose(0, 2, 1).reshape(mt * c.rows, c.K)


# ---- codes: [N, K] -> words (tile_n, k), `cols` codes per word
def pack_code_words(q: IntArray, config: MixPEConfig, *,
                    as_array: bool = False) -> list[int] | np.ndarray:
    """as_array: the words as a numpy array (pack_words_array) instead of a list."""
    c = _check_cfg(config)
    v = _np2d("q", q, c.K)
    nt = _tiles("N", v.shape[0], c.cols, "weights", "cols")
    elems = v.reshape(nt, c.cols, c.K).transpose(0, 2, 1).reshape(-1, c.cols)
    words = pack_words_array(elems, c.bits, c.cols)
    return words if as_array else words.tolist()


def unpack_code_words(words: Words, config: MixPEConfig) -> np.ndarray:
    """Inverse of pack_code_words: weight codes [N, K] as int64."""
    c = _check_cfg(config)
    e = unpack_words(words, c.bits, c.cols)
    nt = _tiles("code words", e.shape[0], c.K, "code words", "K")
    return e.reshape(nt, c.K, c.cols).transpose(0, 2, 1).reshape(nt * c.cols, c.K)


# ---- scales: s2, z [N, G] -> words (tile_n, group), `cols` (s2, z*s2) pairs per word
def pack_scale_words(s2: IntArray, z: IntArray, config: MixPEConfig, *,
                     as_array: bool = False) -> list[int] | np.ndarray:
    """as_array: the words as a numpy array (pack_words_array) instead of a list."""
    c = _check_cfg(config)
    s2v = _np2d("s2", s2, c.groups)
    zv = _np2d("z", z, c.groups)
    if s2v.shape != zv.shape:
        raise QuantflowError(f"s2 {list(s2v.shape)} and z {list(zv.shape)} differ in shape")
    if (s2v < 1).any():
        raise QuantflowError("s2 must be >= 1")
    if (zv < 0).any() or (zv > c.levels).any():
        raise QuantflowError(f"z must be in [0, {c.levels}]")
    zs2 = zv * s2v
    if (s2v > SCALE_MAX).any() or (zs2 > SCALE_MAX).any():
        raise QuantflowError(f"s2 and z*s2 must fit {SCALE_BITS} bits; re-quantize with "
                             f"quantflow.quantize_qoq")
    nt = _tiles("N", s2v.shape[0], c.cols, "weights", "cols")
    pairs = s2v | (zs2 << SCALE_BITS)
    elems = pairs.reshape(nt, c.cols, c.groups).transpose(0, 2, 1).reshape(-1, c.cols)
    words = pack_words_array(elems, SCALE_PAIR_BITS, c.cols)
    return words if as_array else words.tolist()


def unpack_scale_words(words: Words, config: MixPEConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> (s2, zs2) int64 [N, G] each."""
    c = _check_cfg(config)
    e = unpack_words(words, SCALE_PAIR_BITS, c.cols)
    nt = _tiles("scale words", e.shape[0], c.groups, "scale words", "groups")
    pairs = e.reshape(nt, c.groups, c.cols).transpose(0, 2, 1).reshape(nt * c.cols, c.groups)
    return pairs & SCALE_MAX, (pairs >> SCALE_BITS) & SCALE_MAX


# ---- results: acc [M, N] -> words ((tn*MT + tm)*rows + m), `cols` int32 per word
def pack_result_words(acc: IntArray, config: MixPEConfig) -> list[int]:
    """acc [M, N] as result words in the array's emission order: tile n, then tile m, then row."""
    c = _check_cfg(config)
    v = _np2d("acc", acc)
    M, N = v.shape
    mt = _tiles("M", M, c.rows, "activations", "rows")
    nt = _tiles("N", N, c.cols, "weights", "cols")
    # [MT, rows, NT, cols] -> [NT, MT, rows, cols]
    elems = v.reshape(mt, c.rows, nt, c.cols).transpose(2, 0, 1, 3).reshape(-1, c.cols)
    return pack_words(elems, ACC_BITS, c.cols, signed=True)


def unpack_result_words(words: Words, config: MixPEConfig, *, M: int, N: int) -> np.ndarray:
    """Inverse of pack_result_words: acc [M, N] as int64."""
    c = _check_cfg(config)
    mt = _tiles("M", check_int("M", M, 1), c.rows, "activations", "rows")
    nt = _tiles("N", check_int("N", N, 1), c.cols, "weights", "cols")
    e = unpack_words(words, ACC_BITS, c.cols, signed=True)
    if e.shape[0] != nt * mt * c.rows:
        raise QuantflowError(f"expected {nt * mt * c.rows} result words for M={M}, N={N}, "
                             f"got {e.shape[0]}")
    return e.reshape(nt, mt, c.rows, c.cols).transpose(1, 2, 0, 3).reshape(M, N)


# --------------------------------------------------------------------------- images
def write_mixpe_images(outdir: Path | str, config: MixPEConfig, *, weights: QoQWeights,
                       a: IntArray, s_a: torch.Tensor | np.ndarray) -> dict:
    """Pack already-quantized operands (weights from quantize_qoq, a/s_a from
    quantize_act), compute golden's expected acc, and write the image directory.
    Returns the manifest dict."""
    c = _check_cfg(config)
    a, s_a, M, N = qoq_operands(
        weights, a, s_a, K=c.K, bits=c.bits, group=c.group,
        quantize=f"quantflow.quantize_qoq(W, bits={c.bits}, group={c.group})")

    # packing first: it raises the tiling errors (M % rows, N % cols) before any I/O
    words = {
        "act": pack_act_words(a, c),
        "code": pack_code_words(weights.q, c),
        "scale": pack_scale_words(weights.s2, weights.z, c),
    }
    acc = mixpe_acc(a, weights.q, weights.s2, weights.z, c)
    words["result"] = pack_result_words(acc, c)
    desc = {
        "act": dict(elem_bits=ACT_BITS, signed=True, elems_per_word=c.rows,
                    word_bits=c.act_word_bits, layout="mixpe_act",
                    order=f"word[tm*K + k] holds a[tm*rows + r, k] in bits [8r, 8r+8)"),
        "code": dict(elem_bits=c.bits, signed=False, elems_per_word=c.cols,
                     word_bits=c.code_word_bits, layout="mixpe_code",
                     order=f"word[tn*K + k] holds q[tn*cols + c, k] in bits "
                           f"[{c.bits}c, {c.bits}c+{c.bits})"),
        "scale": dict(elem_bits=SCALE_PAIR_BITS, signed=False, elems_per_word=c.cols,
                      word_bits=c.scale_word_bits, layout="mixpe_scale", fields=SCALE_FIELDS,
                      order="word[tn*G + j] holds (s2 | zs2 << 8)[tn*cols + c, j] in bits "
                            "[16c, 16c+16); npy is [N, G, 2] = (s2, zs2)"),
        "result": dict(elem_bits=ACC_BITS, signed=True, elems_per_word=c.cols,
                       word_bits=c.result_word_bits, layout="mixpe_result",
                       order="word[(tn*m_tiles + tm)*rows + m] holds acc[tm*rows + m, "
                             "tn*cols + c] in bits [32c, 32c+32); golden expected values"),
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "block": "mixpe",
        "config": c.as_dict(),
        "config_name": c.name(),
        "dims": {"M": M, "N": N, "K": c.K, "groups": c.groups, "m_tiles": M // c.rows,
                 "n_tiles": N // c.cols},
        "quantization": {
            "weights": {"scheme": "qoq", "bits": c.bits, "group": c.group,
                        "w8_qmax": QOQ_W8_QMAX, "s1_dtype": "float16",
                        "scale_bits": SCALE_BITS, "rounding": "half-even"},
            "activations": {"scheme": "per-token-symmetric-int8", "qmax": ACT_QMAX,
                            "s_a_dtype": "float32", "rounding": "half-even"},
        },
    }
    return write_qoq_images(outdir, weights=weights, a=a, s_a=s_a, acc=acc, words=words,
                            desc=desc, manifest=manifest)


def export_mixpe(outdir: Path | str, config: MixPEConfig, W: torch.Tensor | np.ndarray,
                 X: torch.Tensor | np.ndarray) -> dict:
    """Quantize float weights W [N, K] (QoQ with config.bits/config.group) and float
    activations X [M, K] (per-token INT8), pack, and write the image directory.
    N must be a multiple of config.cols, M of config.rows. Returns the manifest."""
    c = _check_cfg(config)
    qw = quantize_qoq(W, bits=c.bits, group=c.group)
    if qw.shape[1] != c.K:
        raise QuantflowError(f"W has K={qw.shape[1]} but config.K={c.K}; build the config "
                             f"with K={qw.shape[1]}")
    a, s_a = quantize_act(X)
    return write_mixpe_images(outdir, c, weights=qw, a=a, s_a=s_a)


@dataclass(frozen=True, kw_only=True)
class MixPEImages(QoQImages):
    """A verified MixPE image directory (fields: QoQImages)."""

    config: MixPEConfig

    @property
    def weights(self) -> QoQWeights:
        """The images' weights as QoQWeights (q, s1, s2, z at the config's bits and group)."""
        return QoQWeights(q=self.q, s1=self.s1, s2=self.s2, z=self.z,
                          bits=self.config.bits, group=self.config.group)


def load_mixpe(outdir: Path | str, config: MixPEConfig) -> MixPEImages:
    """Read and verify an image directory written for `config`: checksums, config,
    hex widths/word counts, and that every .hex agrees with its .npy."""
    c = _check_cfg(config)
    outdir = Path(outdir)
    man = read_manifest_for(outdir, c, fmt=FORMAT, version=FORMAT_VERSION)
    dims = man["dims"]
    M, N = int(dims["M"]), int(dims["N"])
    words = read_words(outdir, man)
    arrays = read_npy(outdir, man["tensors"])
    side = read_npy(outdir, man["side"])
    try:
        check_qoq_images(outdir, words, arrays, side,
                         act=lambda w: unpack_act_words(w, c),
                         code=lambda w: unpack_code_words(w, c),
                         scale=lambda w: unpack_scale_words(w, c),
                         result=lambda w: unpack_result_words(w, c, M=M, N=N))
        agree(outdir, "s1.npy", side["s1"].shape == (N,) and side["s1"].dtype == np.float16)
        agree(outdir, "s_a.npy", side["s_a"].shape == (M,))
    except QuantflowError as e:
        if FIX in str(e):
            raise
        raise QuantflowError(f"{outdir}: {e}; {FIX}") from None
    return MixPEImages(path=outdir, config=c, manifest=man, M=M, N=N,
                       **qoq_fields(words, arrays, side))
