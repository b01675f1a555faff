"""Word packing, the rule every block's memory layout is built on.

A word holds `elems_per_word` elements of `elem_bits` bits each, element 0 in
the least-significant bits ("lsb-first"); signed elements are stored two's
complement. Words are Python ints (any width), or a uint64 numpy array where
they fit 64 bits. The blocks' layouts (which element goes in which word) live
with each block: quantflow.mixpe, .lut, .sparse_dsp, .kv4_attention.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from golden.validate import check_int

from .errors import QuantflowError

__all__ = ["pack_words", "pack_words_array", "unpack_words", "words_uint64", "int64_array",
           "pad_to_multiple", "IntArray", "Words"]

#: Integers as the packers take them: a torch tensor, a numpy array or nested lists.
IntArray = Union[torch.Tensor, np.ndarray, Sequence]
#: Packed words: Python ints, or an integer numpy array (pack_words_array).
Words = Union[Sequence[int], np.ndarray]


def int64_array(name: str, values: IntArray) -> np.ndarray:
    """Integer `values` (tensor, array or nested lists) as an int64 numpy array;
    floats and bools are refused, naming `name`."""
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


def pack_words(values: IntArray, elem_bits: int, elems_per_word: int, *,
               signed: bool = False) -> list[int]:
    """Pack integers [W, elems_per_word] (or 1-D, length a multiple of
    elems_per_word) into W words, element 0 in the LSBs; signed values two's
    complement. Refuses values that do not fit `elem_bits`."""
    return pack_words_array(values, elem_bits, elems_per_word, signed=signed).tolist()


def pack_words_array(values: IntArray, elem_bits: int, elems_per_word: int, *,
                     signed: bool = False) -> np.ndarray:
    """pack_words as a numpy array: uint64 when a word fits 64 bits (no Python int
    per word: what write_hex formats fastest), else an object array of ints."""
    elem_bits = check_int("elem_bits", elem_bits, 1)
    elems_per_word = check_int("elems_per_word", elems_per_word, 1)
    v = int64_array("values", values)
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


def words_uint64(words: Words, width: int) -> np.ndarray | None:
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


def unpack_words(words: Words, elem_bits: int, elems_per_word: int, *,
                 signed: bool = False) -> np.ndarray:
    """Inverse of pack_words -> int64 array [W, elems_per_word]."""
    elem_bits = check_int("elem_bits", elem_bits, 1)
    elems_per_word = check_int("elems_per_word", elems_per_word, 1)
    width = elem_bits * elems_per_word
    u = words_uint64(words, width)
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
