"""Number formats every block shares (DESIGN §3): activations, QoQ weights,
scale words, the int32 accumulator, and the int32 safety bound derived from
them.

Standard library only, so that `hdl` reads it without torch.
"""
from __future__ import annotations

__all__ = ["ACT_BITS", "ACT_QMAX", "ACT_MIN", "ACT_MAX", "QOQ_W8_QMAX", "SCALE_BITS",
           "SCALE_MAX", "SCALE_PAIR_BITS", "ACC_BITS", "INT32_MIN", "INT32_MAX", "W8_ABS_MAX",
           "INT8_ABS_MAX", "int32_safe_terms"]

#: Activation format (DESIGN §3.1): per-token symmetric INT8. The quantizer emits
#: codes in [-ACT_QMAX, ACT_QMAX]; the hardware accepts the whole int8 range.
ACT_BITS = 8
ACT_QMAX = (1 << (ACT_BITS - 1)) - 1
ACT_MIN = -(1 << (ACT_BITS - 1))
ACT_MAX = ACT_QMAX
#: QoQ step 1 protective range (DESIGN §3.2): per-channel INT8 codes in [-119, 119].
QOQ_W8_QMAX = 119
#: Width of the integer per-group scale `s2` and of the product `z * s2` in the
#: hardware's scale words (both unsigned). quantflow refuses values that do not fit.
SCALE_BITS = 8
SCALE_MAX = (1 << SCALE_BITS) - 1
#: One (s2, z*s2) pair of MixPE's and the LUT block's scale words: s2 in bits
#: [0, SCALE_BITS), z*s2 in [SCALE_BITS, SCALE_PAIR_BITS).
SCALE_PAIR_BITS = 2 * SCALE_BITS
#: Accumulator / result format: int32, two's complement, wraps on overflow
#: (golden wraps the same way; each config bounds its reduction so that it cannot).
ACC_BITS = 32
INT32_MIN = -(1 << (ACC_BITS - 1))
INT32_MAX = (1 << (ACC_BITS - 1)) - 1

#: Largest |operand| of an int8 x int8 product (-128 * -128).
INT8_ABS_MAX = -ACT_MIN
#: Largest |w8| a dequantized group weight (q - z) * s2 can take: both factors are
#: unsigned SCALE_BITS-wide at most, and |q - z| * s2 <= (2**SCALE_BITS - 1).
W8_ABS_MAX = SCALE_MAX


def int32_safe_terms(abs_a: int, abs_b: int) -> int:
    """Largest n for which a sum of n products |a| <= abs_a, |b| <= abs_b cannot
    leave int32: n * abs_a * abs_b <= INT32_MAX."""
    return INT32_MAX // (abs_a * abs_b)
