"""Word packing and the MixPE memory layouts (golden/config.py docstring).

Generic rule: a word holds `elems_per_word` elements of `elem_bits` bits each,
element 0 in the least-significant bits ("lsb-first"); signed elements are
stored two's complement. Words are Python ints (any width).

MixPE layouts (M must be a multiple of config.rows, N of config.cols; otherwise
QuantflowError: pad with zero rows/channels, see pad_to_multiple):
  act    word[tm*K + k]        = a[tm*rows + r, k],     r = 0..rows-1   (int8)
  code   word[tn*K + k]        = q[tn*cols + c, k],     c = 0..cols-1   (bits)
  scale  word[tn*G + j]        = (s2 | zs2 << 8)[tn*cols + c, j]         (16-bit pairs)
  result word[(tn*MT + tm)*rows + m] = acc[tm*rows + m, tn*cols + c]     (int32)
with MT = M/rows m-tiles: the emission order of hdl.mixpe.MixPESystem.
"""
from __future__ import annotations

import numpy as np
import torch

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS

from golden.mixpe_config import MixPEConfig

from ._check import check_int
from .errors import QuantflowError

__all__ = [
    "pack_words", "pack_words_array", "unpack_words", "pad_to_multiple",
    "pack_act_words", "unpack_act_words",
    "pack_code_words", "unpack_code_words",
    "pack_scale_words", "unpack_scale_words",
    "pack_result_words", "unpack_result_words",
]


def _to_int64_array(name: str, values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.dtype == torch.bool:
            raise QuantflowError(f"{name} must be integers, got {values.dtype}")
        return values.detach().cpu().to(torch.int64).numpy()
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise QuantflowError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def pack_words(values, elem_bits: int, elems_per_word: int, *, signed: bool = False) -> list[int]:
    """Pack integers [W, elems_per_word] (or 1-D, length a multiple of
    elems_per_word) into W words, element 0 in the LSBs; signed values two's
    complement. Refuses values that do not fit `elem_bits`."""
    return pack_words_array(values, elem_bits, elems_per_word, signed=signed).tolist()


def pack_words_array(values, elem_bits: int, elems_per_word: int, *,
                     signed: bool = False) -> np.ndarray:
    """pack_words as a numpy array: uint64 when a word fits 64 bits (no Python int
    per word: what write_hex formats fastest), else an object array of ints."""
    elem_bits = check_int("elem_bits", elem_bits, 1)
    elems_per_word = check_int("elems_per_word", elems_per_word, 1)
    v = _to_int64_array("values", values)
    if v.ndim == 1:
        if v.size % elems_per_word:
            raise QuantflowError(f"{v.size} values do not fill whole words of "
                                 f"{elems_per_word} elements; pad the input")
        v = v.reshape(-1, elems_per_word)
    if v.ndim != 2 or v.shape[1] != elems_per_word:
        raise QuantflowError(f"values must have shape [words, {elems_per_word}], got "
                             f"{list(v.shape)}")
    lo, hi = ((-(1 << (elem_bits - 1)), (1 << (elem_bits - 1)) - 1) if signed
              else (0, (1 << elem_bits) - 1))
    bad = (v < lo) | (v > hi)
    if bad.any():
        w, e = (int(i) for i in np.argwhere(bad)[0])
        raise QuantflowError(f"value {int(v[w, e])} (word {w}, element {e}) does not fit "
                             f"{'signed' if signed else 'unsigned'} {elem_bits} bits "
                             f"[{lo}, {hi}]")
    return _pack_array(v, elem_bits)


def _pack_array(v: np.ndarray, elem_bits: int) -> np.ndarray:
    """Range-checked int64 elements [W, E] -> words: uint64 when E * elem_bits <= 64
    (vectorised; what the whole-model export packs), else an object array of
    Python ints. `.tolist()` of either gives the Python ints of pack_words."""
    elems_per_word = v.shape[1]
    mask = (1 << elem_bits) - 1
    if elem_bits * elems_per_word <= 64:
        u = v.astype(np.uint64) & np.uint64(mask)  # two's complement wraps modulo 2**64
        words = np.zeros(v.shape[0], dtype=np.uint64)
        for e in range(elems_per_word):
            words |= u[:, e] << np.uint64(e * elem_bits)
        return words
    words = np.zeros(v.shape[0], dtype=object)
    for e in range(elems_per_word):
        # object dtype keeps Python ints: words can be wider than 64 bits
        words += (v[:, e].astype(object) & mask) << (e * elem_bits)
    return words


def _words_uint64(words, width: int) -> np.ndarray | None:
    """`words` as a uint64 array when they are integers that fit `width` <= 64
    bits, else None (the caller's general path then handles or refuses them)."""
    if width > 64:
        return None
    if isinstance(words, np.ndarray):
        w = words
    else:
        try:
            w = np.asarray(words if isinstance(words, (list, tuple)) else list(words))
        except (OverflowError, ValueError, TypeError):
            return None
    if w.ndim != 1:
        return None
    if w.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if w.dtype.kind not in "iu" or (w.dtype.kind == "i" and int(w.min()) < 0):
        return None
    w = w.astype(np.uint64, copy=False)
    if width < 64 and bool((w >> np.uint64(width)).any()):
        return None
    return w


def unpack_words(words, elem_bits: int, elems_per_word: int, *,
                 signed: bool = False) -> np.ndarray:
    """Inverse of pack_words -> int64 array [W, elems_per_word]."""
    elem_bits = check_int("elem_bits", elem_bits, 1)
    elems_per_word = check_int("elems_per_word", elems_per_word, 1)
    width = elem_bits * elems_per_word
    u = _words_uint64(words, width)
    if u is not None:  # vectorised: every word fits 64 bits
        mask = np.uint64((1 << elem_bits) - 1)
        out = np.empty((u.size, elems_per_word), dtype=np.int64)
        up = np.uint64(64 - elem_bits)
        for e in range(elems_per_word):
            col = (u >> np.uint64(e * elem_bits)) & mask
            # signed: move the element's sign bit to bit 63, shift back arithmetically
            out[:, e] = ((col << up).view(np.int64) >> (64 - elem_bits)) if signed else col
        return out
    w = np.array([int(x) for x in words], dtype=object)
    if w.size and (min(w) < 0 or max(w) >> width):
        raise QuantflowError(f"a word does not fit {width} unsigned bits")
    mask = (1 << elem_bits) - 1
    out = np.zeros((w.size, elems_per_word), dtype=np.int64)
    for e in range(elems_per_word):
        col = (w >> (e * elem_bits)) & mask
        if signed:  # in Python ints: 1 << 63 would overflow int64
            col = np.where(col >= 1 << (elem_bits - 1), col - (1 << elem_bits), col)
        out[:, e] = col.astype(np.int64)
    return out


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Append zero rows so that x.shape[0] is a multiple of `multiple`. Zero weight
    channels quantize to s1 = 0 (exact zero outputs); zero activation rows to
    s_a = 0. Drop the padded rows/columns from the results."""
    multiple = check_int("multiple", multiple, 1)
    pad = (-x.shape[0]) % multiple
    if not pad:
        return x
    return torch.cat([x, torch.zeros((pad, *x.shape[1:]), dtype=x.dtype)], dim=0)


def _tiles(name: str, length: int, size: int, what: str, attr: str) -> int:
    if length % size:
        raise QuantflowError(
            f"{name}={length} is not a multiple of config.{attr}={size}; pad the {what} "
            f"with {(-length) % size} zero rows (quantflow.pad_to_multiple) or pick a "
            f"{attr} that divides {name}")
    return length // size


def _np2d(name: str, x, cols: int | None = None) -> np.ndarray:
    v = _to_int64_array(name, x)
    if v.ndim != 2 or (cols is not None and v.shape[1] != cols):
        want = f"[*, {cols}]" if cols is not None else "2-D"
        raise QuantflowError(f"{name} must be {want}, got shape {list(v.shape)}")
    return v


def _check_cfg(config) -> MixPEConfig:
    if not isinstance(config, MixPEConfig):
        raise QuantflowError(f"config must be a MixPEConfig, got {type(config).__name__}")
    return config


# ---- activations: [M, K] -> words (tile_m, k), `rows` int8 per word
def pack_act_words(a, config: MixPEConfig) -> list[int]:
    c = _check_cfg(config)
    v = _np2d("a", a, c.K)
    mt = _tiles("M", v.shape[0], c.rows, "activations", "rows")
    # [MT, rows, K] -> [MT, K, rows]: one word per (tile_m, k)
    elems = v.reshape(mt, c.rows, c.K).transpose(0, 2, 1).reshape(-1, c.rows)
    return pack_words(elems, ACT_BITS, c.rows, signed=True)


def unpack_act_words(words, config: MixPEConfig) -> np.ndarray:
    c = _check_cfg(config)
    e = unpack_words(words, ACT_BITS, c.rows, signed=True)
    mt = _tiles("act words", e.shape[0], c.K, "act words", "K")
    return e.reshape(mt, c.K, c.rows).transpose(0, 2, 1).reshape(mt * c.rows, c.K)


# ---- codes: [N, K] -> words (tile_n, k), `cols` codes per word
def pack_code_words(q, config: MixPEConfig, *, as_array: bool = False) -> list[int]:
    """as_array: the words as a numpy array (pack_words_array) instead of a list."""
    c = _check_cfg(config)
    v = _np2d("q", q, c.K)
    nt = _tiles("N", v.shape[0], c.cols, "weights", "cols")
    elems = v.reshape(nt, c.cols, c.K).transpose(0, 2, 1).reshape(-1, c.cols)
    words = pack_words_array(elems, c.bits, c.cols)
    return words if as_array else words.tolist()


def unpack_code_words(words, config: MixPEConfig) -> np.ndarray:
    c = _check_cfg(config)
    e = unpack_words(words, c.bits, c.cols)
    nt = _tiles("code words", e.shape[0], c.K, "code words", "K")
    return e.reshape(nt, c.K, c.cols).transpose(0, 2, 1).reshape(nt * c.cols, c.K)


# ---- scales: s2, z [N, G] -> words (tile_n, group), `cols` (s2, z*s2) pairs per word
def pack_scale_words(s2, z, config: MixPEConfig, *, as_array: bool = False) -> list[int]:
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
    smax = (1 << SCALE_BITS) - 1
    if (s2v > smax).any() or (zs2 > smax).any():
        raise QuantflowError(f"s2 and z*s2 must fit {SCALE_BITS} bits; re-quantize with "
                             f"quantflow.quantize_qoq")
    nt = _tiles("N", s2v.shape[0], c.cols, "weights", "cols")
    pairs = s2v | (zs2 << SCALE_BITS)
    elems = pairs.reshape(nt, c.cols, c.groups).transpose(0, 2, 1).reshape(-1, c.cols)
    words = pack_words_array(elems, 2 * SCALE_BITS, c.cols)
    return words if as_array else words.tolist()


def unpack_scale_words(words, config: MixPEConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> (s2, zs2) int64 [N, G] each."""
    c = _check_cfg(config)
    e = unpack_words(words, 2 * SCALE_BITS, c.cols)
    nt = _tiles("scale words", e.shape[0], c.groups, "scale words", "groups")
    pairs = e.reshape(nt, c.groups, c.cols).transpose(0, 2, 1).reshape(nt * c.cols, c.groups)
    mask = (1 << SCALE_BITS) - 1
    return pairs & mask, (pairs >> SCALE_BITS) & mask


# ---- results: acc [M, N] -> words ((tn*MT + tm)*rows + m), `cols` int32 per word
def pack_result_words(acc, config: MixPEConfig) -> list[int]:
    c = _check_cfg(config)
    v = _np2d("acc", acc)
    M, N = v.shape
    mt = _tiles("M", M, c.rows, "activations", "rows")
    nt = _tiles("N", N, c.cols, "weights", "cols")
    # [MT, rows, NT, cols] -> [NT, MT, rows, cols]
    elems = v.reshape(mt, c.rows, nt, c.cols).transpose(2, 0, 1, 3).reshape(-1, c.cols)
    return pack_words(elems, ACC_BITS, c.cols, signed=True)


def unpack_result_words(words, config: MixPEConfig, *, M: int, N: int) -> np.ndarray:
    c = _check_cfg(config)
    mt = _tiles("M", check_int("M", M, 1), c.rows, "activations", "rows")
    nt = _tiles("N", check_int("N", N, 1), c.cols, "weights", "cols")
    e = unpack_words(words, ACC_BITS, c.cols, signed=True)
    if e.shape[0] != nt * mt * c.rows:
        raise QuantflowError(f"expected {nt * mt * c.rows} result words for M={M}, N={N}, "
                             f"got {e.shape[0]}")
    return e.reshape(nt, mt, c.rows, c.cols).transpose(1, 2, 0, 3).reshape(M, N)
