"""quantflow.pack (lsb-first words) and the hex images of quantflow.imagedir."""
import numpy as np
import pytest

import quantflow as qf
from quantflow.pack import pack_words_array


# ------------------------------------------------------------------- packing
def test_pack_lsb_first_by_hand():
    assert qf.pack_words([[1, 2]], 4, 2) == [0x21]
    assert qf.pack_words([[-1, 1, -128]], 8, 3, signed=True) == [0x8001FF]
    assert qf.unpack_words([0x8001FF], 8, 3, signed=True).tolist() == [[-1, 1, -128]]
    with pytest.raises(qf.QuantflowError, match="does not fit"):
        qf.pack_words([[16]], 4, 1)
    with pytest.raises(qf.QuantflowError, match="does not fit"):
        qf.pack_words([[-1]], 4, 1)


@pytest.mark.parametrize("elem_bits,n,signed", [(2, 16, False), (3, 11, False), (4, 8, False),
                                                (8, 4, True), (16, 8, False), (32, 8, True)])
def test_pack_round_trip(elem_bits, n, signed):
    rng = np.random.default_rng(elem_bits)
    lo, hi = (-(1 << (elem_bits - 1)), 1 << (elem_bits - 1)) if signed else (0, 1 << elem_bits)
    v = rng.integers(lo, hi, size=(37, n))
    v[0] = lo
    v[1] = hi - 1
    words = qf.pack_words(v, elem_bits, n, signed=signed)
    assert all(0 <= w < 1 << (elem_bits * n) for w in words)
    assert np.array_equal(qf.unpack_words(words, elem_bits, n, signed=signed), v)


# ---- vectorised packing / hex (numpy words) against Python-int formatting
@pytest.mark.parametrize("bits,per_word,signed", [
    (4, 8, False), (2, 16, False), (3, 5, False), (8, 4, True), (16, 8, False),
    (32, 2, True), (32, 8, True), (63, 1, True), (63, 2, True), (5, 13, True)])
def test_vectorised_pack_hex_equal_python_ints(tmp_path, bits, per_word, signed):
    rng = np.random.default_rng(bits * 100 + per_word)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = rng.integers(lo, hi, size=(301, per_word), endpoint=True, dtype=np.int64)
    v[0], v[1] = lo, hi
    mask = (1 << bits) - 1
    ref = [sum((int(x) & mask) << (e * bits) for e, x in enumerate(row)) for row in v]
    width = bits * per_word
    d = (width + 3) // 4
    assert qf.pack_words(v, bits, per_word, signed=signed) == ref
    text = "".join(f"{w:0{d}x}\n" for w in ref).encode()
    for words in (ref, pack_words_array(v, bits, per_word, signed=signed)):
        qf.write_hex(tmp_path / "w.hex", words, width)
        assert (tmp_path / "w.hex").read_bytes() == text
    assert qf.read_hex(tmp_path / "w.hex", width, len(ref)) == ref
    assert np.array_equal(qf.unpack_words(ref, bits, per_word, signed=signed), v)
    # a malformed line still gets the line-by-line reader's error
    (tmp_path / "w.hex").write_bytes(text[:d + 1] + text[:d - 1].upper() + b"\n")
    with pytest.raises(qf.QuantflowError, match="line 2"):
        qf.read_hex(tmp_path / "w.hex", width)
    with pytest.raises(qf.QuantflowError, match="does not fit"):
        qf.write_hex(tmp_path / "x.hex", np.array([1 << min(width, 62)]) if width < 62
                     else [1 << width], width)
