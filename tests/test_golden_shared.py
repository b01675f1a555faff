"""golden's shared pieces: number formats, argument validation (TypeError for
a wrong type, ValueError for a bad value) and the integer-tensor checks."""
import numpy as np
import pytest
import torch

from golden.formats import (INT8_ABS_MAX, INT32_MAX, INT32_MIN, SCALE_BITS, SCALE_MAX,
                            W8_ABS_MAX, int32_safe_terms)
from golden.lut_config import LUT_MAX_K
from golden.mixpe_config import MIXPE_MAX_K
from golden.tensors import check_dims, check_range, check_shape, int_tensor, wrap_int32
from golden.validate import check_bool, check_choice, check_int, check_pow2, expect_type


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("a, b", [(1, 1), (128, 255), (128, 128), (127, 15), (3, 7),
                                  (INT32_MAX, 1), (1 << 16, 1 << 15)])
def test_int32_safe_terms_is_the_largest_safe_count(a, b):
    n = int32_safe_terms(a, b)
    assert n * a * b <= INT32_MAX < (n + 1) * a * b


def test_derived_bounds():
    assert (INT32_MIN, INT32_MAX) == (-2**31, 2**31 - 1)
    assert SCALE_MAX == W8_ABS_MAX == 2**SCALE_BITS - 1
    assert MIXPE_MAX_K == LUT_MAX_K == int32_safe_terms(INT8_ABS_MAX, W8_ABS_MAX)
    # the worst-case reduction of the largest admitted K fits int32; one more term may not
    assert MIXPE_MAX_K * INT8_ABS_MAX * W8_ABS_MAX <= INT32_MAX
    assert (MIXPE_MAX_K + 1) * INT8_ABS_MAX * W8_ABS_MAX > INT32_MAX


# --------------------------------------------------------------------------- validate
@pytest.mark.parametrize("value", [True, 2.0, "2", None])
def test_check_int_wrong_type(value):
    with pytest.raises(TypeError, match=r"n must be an int.*; say how"):
        check_int("n", value, 1, hint="say how")


def test_check_int_bounds():
    assert check_int("n", 5, 1, 8) == 5
    assert check_int("n", -3) == -3
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0; say how"):
        check_int("n", 0, 1, hint="say how")
    with pytest.raises(ValueError, match=r"n must be <= 8, got 9"):
        check_int("n", 9, hi=8)


def test_check_bool():
    assert check_bool("flag", False) is False
    for bad in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="flag must be a bool"):
            check_bool("flag", bad)


def test_check_choice():
    assert check_choice("bits", 4, (1, 2, 4)) == 4
    assert check_choice("mode", "b", ["a", "b"]) == "b"
    with pytest.raises(ValueError, match=r"bits must be one of \(1, 2, 4\), got 3; hint"):
        check_choice("bits", 3, (1, 2, 4), hint="hint")
    with pytest.raises(ValueError, match="mode must be one of"):
        check_choice("mode", "c", ("a", "b"))
    # no choice has the value's type: True is not the int 1, "2" not 2
    for bad in (True, "2", 2.0, None):
        with pytest.raises(TypeError, match=r"bits must be one of \(1, 2, 4\)"):
            check_choice("bits", bad, (1, 2, 4))
    with pytest.raises(TypeError, match=r"\(int\)"):
        check_choice("mode", 1, ("a", "b"))


def test_check_pow2():
    assert check_pow2("w", 8, 1, 16) == 8
    with pytest.raises(ValueError, match="power of two, got 12"):
        check_pow2("w", 12)
    with pytest.raises(ValueError, match="w must be <= 16"):
        check_pow2("w", 32, hi=16)
    with pytest.raises(TypeError, match="w must be an int"):
        check_pow2("w", 8.0)


def test_expect_type():
    x = torch.zeros(1)
    assert expect_type("x", x, torch.Tensor) is x
    assert expect_type("x", 3, (int, float)) == 3
    with pytest.raises(TypeError, match=r"x must be a Tensor, got list; build one with"):
        expect_type("x", [1], torch.Tensor)
    with pytest.raises(TypeError, match="x must be a int or float, got str"):
        expect_type("x", "3", (int, float))


# --------------------------------------------------------------------------- tensors
def test_int_tensor_accepts_integer_tensors_and_arrays():
    for x in (torch.tensor([1, -2], dtype=torch.int8), torch.tensor([1, -2]),
              np.array([1, -2], dtype=np.int16), np.array([1, 254], dtype=np.uint8)):
        t = int_tensor("x", x)
        assert t.dtype == torch.int64 and t.tolist() == list(np.asarray(x).astype(int))


@pytest.mark.parametrize("x, match", [
    (torch.tensor([1.0]), "x must have an integer dtype, got torch.float32"),
    (torch.tensor([True]), "integer dtype, got torch.bool"),
    (torch.tensor([1j]), "integer dtype"),
    (np.array([1.5]), "x must hold integers, got numpy dtype float64"),
    ([1, 2], "x must be a torch.Tensor or numpy array of integers, got list"),
    (3, "got int"),
])
def test_int_tensor_wrong_type(x, match):
    with pytest.raises(TypeError, match=match):
        int_tensor("x", x)


def test_check_dims_and_shape():
    x = torch.zeros((2, 3), dtype=torch.int64)
    check_dims("x", x, 2, "[M, K]")
    check_shape("x", x, (2, 3), "[M, K]")
    with pytest.raises(ValueError, match=r"x must be 3-D \[M, C, 8\], got shape \[2, 3\]"):
        check_dims("x", x, 3, "[M, C, 8]")
    with pytest.raises(ValueError, match=r"x must have shape \[N, G\] = \[2, 4\], got \[2, 3\]"):
        check_shape("x", x, (2, 4), "[N, G]")


def test_check_range_names_the_first_bad_element():
    x = torch.tensor([[0, 5], [16, 17]])
    check_range("q", x, 0, 17, "5-bit codes")
    check_range("q", torch.zeros((0, 3), dtype=torch.int64), 1, 1, "empty")
    with pytest.raises(ValueError, match=r"q\[1, 0\] = 16 is outside \[0, 15\] \(4-bit codes\)"):
        check_range("q", x, 0, 15, "4-bit codes")
    with pytest.raises(ValueError, match=r"q\[0, 0\] = 0 is outside \[1, 255\]"):
        check_range("q", x, 1, 255, "non-zero scale")


def test_wrap_int32():
    x = torch.tensor([INT32_MAX, INT32_MAX + 1, INT32_MIN - 1, 2**32 + 5, -1, 0])
    got = wrap_int32(x)
    assert got.dtype == torch.int32
    assert got.tolist() == [INT32_MAX, INT32_MIN, INT32_MAX, 5, -1, 0]
    assert wrap_int32(torch.tensor([7], dtype=torch.int32)).tolist() == [7]
