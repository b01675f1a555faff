"""Golden model of the special-function unit (SFU): every op of the integer Llama
decoder that is neither a linear (golden.mixpe) nor attention (golden.kv4_attention),
bit for bit as the hardware computes it, with a float64 reference and an error bound
per op (docs/integer-model.md §1-2; widths in golden.sfu_config).

Integer-exact, vectorised over leading dims: inputs are integer tensors (read as
int64), outputs int64 tensors holding the named width. Every intermediate product
stays below 2**62 (INT64_SAFE_BITS), so nothing wraps; each op states why.

Rounding and saturation (the same names in every docstring):
  rshift_round(x, s) = floor((x + 2**(s-1)) / 2**s) for s > 0 (round half up,
                       golden.kv4_attention.rshift_round); x << -s for s <= 0
  sat_b(x)           clamp to signed b-bit two's complement; sat32 = sat_X_BITS
  shift_sat(x, s, b) = sat_b(rshift_round(x, s)), a left shift saturating instead of
                       wrapping however far it goes
  trunc              >> (floor), named where a step truncates instead of rounding

Formats: X32 (int32, value X * 2**-frac), A8 (int8 codes [-127, 127]), TS (mn, L),
S1 (unsigned 15-bit + shift e), NW (signed 16-bit + exponent), ROPE (int16, 14
fraction bits); see golden.sfu_config.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from golden.formats import ACT_QMAX, INT32_MAX, INT32_MIN
from golden.kv4_attention import rshift_round
from golden.sfu_config import (INT64_SAFE_BITS, MANT_BITS, RCP_BITS, S1_BITS, X_BITS,
                               SFUConfig)
from golden.tensors import check_dims, check_range, check_shape, int_tensor
from golden.validate import check_int, expect_type

__all__ = [
    # helpers
    "shift_sat", "sat", "to_fixed", "to_float", "bitlen",
    # ops
    "token_scale", "quant_a8", "weight_scale", "dequant",
    # float references and bounds
    "quant_a8_exact", "quant_a8_float", "QUANT_A8_BOUND", "QUANT_A8_CODE_DIFF",
    "dequant_reference", "dequant_bound",
]

#: Widest shift the helpers ever need to apply: any |x| < 2**62 shifted right by
#: 63 or more rounds to 0.
_RSHIFT_ZERO = INT64_SAFE_BITS + 1
_SAFE = (1 << INT64_SAFE_BITS) - 1
_POW2 = torch.tensor([1 << j for j in range(63)], dtype=torch.int64)

#: |quant_a8(x) - 127 x / max|x|| <= QUANT_A8_BOUND: half a code of round-half-up plus
#: 127 * 2**-15 from the truncated mantissa (mn * 2**L in (amax (1 - 2**-15), amax])
#: and the truncated reciprocal (RC * mn in (2**31 (1 - 2**-15), 2**31]).
QUANT_A8_BOUND = 0.5 + ACT_QMAX * 2.0 ** -(MANT_BITS - 1)
#: quant_a8 and DESIGN §3.1's exact round_half_even(x / (max|x| / 127)) differ by at
#: most this many codes (both lie within QUANT_A8_BOUND < 1 of the same real).
QUANT_A8_CODE_DIFF = 1


# --------------------------------------------------------------------------- helpers
def bitlen(a: torch.Tensor) -> torch.Tensor:
    """Bit length of each element of a non-negative int64 tensor (0 for 0): the
    leading-one detector, exact (no float log2)."""
    return (a.unsqueeze(-1) >= _POW2).sum(-1)


def sat(x: torch.Tensor, bits: int = X_BITS) -> torch.Tensor:
    """sat_bits(x): clamp to signed `bits`-bit two's complement."""
    return torch.clamp(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def shift_sat(x: torch.Tensor, s, bits: int = X_BITS) -> torch.Tensor:
    """sat_bits(rshift_round(x, s)) for int64 x with |x| < 2**62 and a shift s (int or
    int64 tensor broadcasting with x) of either sign; s <= 0 is a left shift by -s.

    The left shift cannot wrap: x is first clamped to +-2**(bits-1) and the shift to
    bits-1, which leaves every saturated result unchanged (a nonzero x shifted by
    bits-1 or more, or an |x| >= 2**(bits-1) shifted at all, saturates either way)
    and keeps |x << n| <= 2**(2*bits-2) <= 2**62."""
    s = torch.as_tensor(s, dtype=torch.int64)
    right = rshift_round(x, s.clamp(0, INT64_SAFE_BITS))
    right = torch.where(s >= _RSHIFT_ZERO, torch.zeros_like(right), right)
    half = 1 << (bits - 1)
    left = torch.clamp(x, -half, half) << (-s).clamp(0, bits - 1)
    return sat(torch.where(s > 0, right, left), bits)


def _ints(name: str, x, *, lo: int = -_SAFE, hi: int = _SAFE, why: str = "") -> torch.Tensor:
    x = int_tensor(name, x)
    check_range(name, x, lo, hi, why or f"|{name}| < 2**{INT64_SAFE_BITS} keeps int64 exact")
    return x


def _x32(name: str, x) -> torch.Tensor:
    return _ints(name, x, lo=INT32_MIN, hi=INT32_MAX, why="X32 activations are int32")


def _vectors(name: str, x: torch.Tensor) -> None:
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last dim (the vector), got shape "
                         f"{list(x.shape)}")


def _float_tensor(name: str, x, dims: int | None = None, what: str = "") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a float tensor, got {got}; convert it with "
                        f"torch.as_tensor(..., dtype=torch.float64)")
    if dims is not None:
        check_dims(name, x, dims, what)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or Inf; fix its producer (a compile-time "
                         f"constant must be finite)")
    return x.double()


def to_fixed(x, frac: int, bits: int = X_BITS) -> torch.Tensor:
    """sat_bits(round_half_even(x * 2**frac)) of a finite float tensor -> int64."""
    check_int("frac", frac, -64, 64)
    check_int("bits", bits, 2, X_BITS)
    x = _float_tensor("x", x)
    return sat(torch.round(torch.ldexp(x, torch.tensor(float(frac), dtype=torch.float64)))
               .clamp(-2.0 ** 62, 2.0 ** 62).to(torch.int64), bits)


def to_float(X, frac: int) -> torch.Tensor:
    """X * 2**-frac as float64 (exact for |X| < 2**53)."""
    check_int("frac", frac, -64, 64)
    X = int_tensor("X", X)
    return torch.ldexp(X.double(), torch.tensor(float(-frac), dtype=torch.float64))


# --------------------------------------------------------------------------- token scale, A8
def token_scale(x) -> tuple[torch.Tensor, torch.Tensor]:
    """TS of each vector along the last dim of an integer tensor x (any frac,
    |x| < 2**62): amax = max|x|; L = bitlen(amax) - MANT_BITS;
    mn = amax >> L (trunc) for L >= 0, amax << -L otherwise, so mn in [2**15, 2**16)
    and mn * 2**L in (amax - 2**L, amax]; (mn, L) = (0, 0) for an all-zero vector.
    Returns (mn, L), int64 tensors of shape x.shape[:-1]."""
    x = _ints("x", x)
    _vectors("x", x)
    amax = x.abs().amax(-1)
    L = bitlen(amax) - MANT_BITS
    mn = torch.where(L >= 0, amax >> L.clamp(min=0), amax << (-L).clamp(min=0))
    zero = amax == 0
    return mn.masked_fill(zero, 0), L.masked_fill(zero, 0)


def quant_a8(x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token A8 of X32 vectors x [..., K] (DESIGN §3.1) as the hardware computes
    it, one integer division per token and none per element:
      (mn, L) = token_scale(x)
      RC = floor(2**31 / mn)                      (trunc; RC in (2**15, 2**16])
      a  = clamp(rshift_round(x * 127 * RC, 31 + L), -127, 127)   (round half up)
      a  = 0 for an all-zero token (mn = 0)
    int64: |x| <= 2**31, 127 < 2**7, RC <= 2**16, so |x * 127 * RC| <= 2**54; the
    shift 31 + L >= 16 (L >= -15 for any nonzero token).
    |a - 127 x / max|x|| <= QUANT_A8_BOUND; a differs from DESIGN §3.1's exact
    round_half_even (quant_a8_exact) by at most QUANT_A8_CODE_DIFF code.
    Returns (a [..., K], mn [...], L [...]) int64."""
    x = _x32("x", x)
    _vectors("x", x)
    mn, L = token_scale(x)
    rc = torch.where(mn > 0, (1 << RCP_BITS) // mn.clamp(min=1), torch.zeros_like(mn))
    a = rshift_round(x * ACT_QMAX * rc.unsqueeze(-1), (RCP_BITS + L).unsqueeze(-1))
    return torch.clamp(a, -ACT_QMAX, ACT_QMAX), mn, L


def quant_a8_exact(x) -> torch.Tensor:
    """DESIGN §3.1 in exact integer arithmetic: clamp(round_half_even(127 x / max|x|),
    -127, 127) (0 for an all-zero token)."""
    x = _x32("x", x)
    _vectors("x", x)
    amax = x.abs().amax(-1, keepdim=True).clamp(min=1)
    num = ACT_QMAX * x.abs()
    q, r = num // amax, num % amax
    up = (2 * r > amax) | ((2 * r == amax) & (q % 2 == 1))
    return torch.sign(x) * (q + up.to(torch.int64))


def quant_a8_float(x) -> torch.Tensor:
    """The real value 127 x / max|x| (float64) that both A8 roundings approximate."""
    x = _x32("x", x)
    _vectors("x", x)
    return ACT_QMAX * x.double() / x.abs().amax(-1, keepdim=True).clamp(min=1).double()


# --------------------------------------------------------------------------- weight scale, dequant
def weight_scale(s1) -> tuple[torch.Tensor, int]:
    """Compile-time S1 of one linear: s1 [N] (float, >= 0, the per-channel QoQ scale,
    DESIGN §3.2) -> (S1 [N] int64, e) with S1[n] = round_half_even(s1[n] / 127 * 2**e)
    and e the largest shift with max S1 < 2**S1_BITS (so max S1 >= 2**(S1_BITS-1)).
    |S1[n] * 2**-e - s1[n] / 127| <= 2**-(e+1). Zero channels give S1 = 0; an
    all-zero s1 gives e = 0."""
    s1 = _float_tensor("s1", s1, 1, "[N]")
    if bool((s1 < 0).any()):
        n = int((s1 < 0).nonzero()[0, 0])
        raise ValueError(f"s1[{n}] = {float(s1[n])} is negative; a scale is max|W| / 119 >= 0")
    v = s1 / ACT_QMAX
    vmax = float(v.max()) if v.numel() else 0.0
    if vmax == 0.0:
        return torch.zeros(s1.shape, dtype=torch.int64), 0
    lim = 1 << S1_BITS
    e = math.floor(math.log2((lim - 0.5) / vmax))
    while round(math.ldexp(vmax, e + 1)) < lim:
        e += 1
    while round(math.ldexp(vmax, e)) >= lim:
        e -= 1
    return torch.round(torch.ldexp(v, torch.tensor(float(e), dtype=torch.float64))).to(
        torch.int64), e


def _token_pair(acc: torch.Tensor, mn, L) -> tuple[torch.Tensor, torch.Tensor]:
    mn = _ints("mn", mn, lo=0, hi=(1 << MANT_BITS) - 1, why="a TS mantissa is 16-bit")
    L = _ints("L", L, lo=-64, hi=64, why="a TS exponent of an int64 vector")
    check_shape("mn", mn, acc.shape[:-1], "acc.shape[:-1]")
    check_shape("L", L, acc.shape[:-1], "acc.shape[:-1]")
    bad = (mn > 0) & (mn < 1 << (MANT_BITS - 1))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"mn{list(idx)} = {int(mn[idx])} is not normalised (a TS mantissa "
                         f"is 0 or in [2**15, 2**16)); take (mn, L) from token_scale/quant_a8")
    return mn, L


def dequant(acc, S1, e: int, mn, L, *, in_frac: int, out_frac: int) -> torch.Tensor:
    """A linear's int32 accumulator acc [..., N] back to X32 with out_frac fraction bits:
      y = sat32(rshift_round(acc * S1[n] * mn[...], e + in_frac - out_frac - L[...]))
    (a negative shift is a saturating left shift, shift_sat). (mn, L) is the TS that
    quant_a8 took from its X32 input with in_frac fraction bits; (S1, e) from
    weight_scale. int64: |acc| <= 2**31, S1 < 2**15, mn < 2**16, product < 2**62.
    Float reference: dequant_reference; |y - sat32(reference)| <= dequant_bound."""
    acc = _x32("acc", acc)
    _vectors("acc", acc)
    S1 = _ints("S1", S1, lo=0, hi=(1 << S1_BITS) - 1, why="S1 is unsigned 15-bit")
    check_shape("S1", S1, acc.shape[-1:], "[N]")
    mn, L = _token_pair(acc, mn, L)
    check_int("e", e, -1024, 1024)
    check_int("in_frac", in_frac, -64, 64)
    check_int("out_frac", out_frac, -64, 64)
    p = acc * S1 * mn.unsqueeze(-1)
    return shift_sat(p, (e + in_frac - out_frac) - L.unsqueeze(-1))


def dequant_reference(acc, s1, amax, *, in_frac: int, out_frac: int) -> torch.Tensor:
    """float64 acc * s1[n] * (amax[...] * 2**-in_frac / 127) * 2**out_frac: DESIGN §3.2
    step 4 (y = acc * s1 * s_a) in X32 units; amax is the max|x| quant_a8 saw."""
    acc = int_tensor("acc", acc).double()
    s1 = _float_tensor("s1", s1)
    amax = int_tensor("amax", amax).double()
    return acc * s1 * (amax.unsqueeze(-1) / ACT_QMAX) * 2.0 ** (out_frac - in_frac)


def dequant_bound(acc, s1, e: int, amax, *, in_frac: int, out_frac: int) -> torch.Tensor:
    """Elementwise bound on |dequant - dequant_reference| (before saturation, which
    only shrinks it) in X32 units:
      0.5 (final rounding)
      + |acc| 2**(out_frac-in_frac) (amax 2**-(e+1) (S1 rounding)
                                     + s1/127 (2**L - 1 if L > 0) (mn truncation)).
    Relative to |reference|: at most 2**-(e+1) / (s1/127) + 2**-15."""
    acc = int_tensor("acc", acc).double().abs()
    s1 = _float_tensor("s1", s1)
    amax_i = int_tensor("amax", amax)
    L = bitlen(amax_i) - MANT_BITS
    trunc = torch.where(L > 0, (torch.ones_like(L) << L.clamp(min=0)) - 1,
                        torch.zeros_like(L)).double()
    amax = amax_i.double()
    per = (amax.unsqueeze(-1) * 2.0 ** -(e + 1)
           + (s1 / ACT_QMAX) * trunc.unsqueeze(-1))
    return 0.5 + acc * 2.0 ** (out_frac - in_frac) * per
