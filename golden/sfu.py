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
from golden.sfu_config import (INT64_SAFE_BITS, MANT_BITS, NORM_G_SHIFT, NW_BITS, RCP_BITS,
                               RMS_MAX_K, RMS_XS_BITS, ROPE_BITS, ROPE_FRAC, RSQRT_FRAC,
                               RSQRT_M_BITS, S1_BITS, SQRTK_BITS, X_BITS, SFUConfig, rms_eps,
                               rsqrt_table, sigmoid_table, sqrt_k)
from golden.tensors import check_dims, check_range, check_shape, int_tensor
from golden.validate import check_int, check_multiple, expect_type

__all__ = [
    # helpers
    "shift_sat", "sat", "to_fixed", "to_float", "bitlen",
    # ops
    "token_scale", "quant_a8", "weight_scale", "embed_quantize", "embed_rows", "dequant", "norm_weight", "rsqrt_fx", "rmsnorm",
    "rope_inv_freq", "rope_table", "rope", "silu_table", "sigmoid_fx", "silu_fx", "swiglu",
    "residual_add", "requant", "argmax",
    # float references and bounds
    "quant_a8_exact", "quant_a8_float", "QUANT_A8_BOUND", "QUANT_A8_CODE_DIFF",
    "dequant_reference", "dequant_bound", "rsqrt_rel_bound", "rmsnorm_reference",
    "rmsnorm_bound", "rope_reference", "rope_bound", "sigmoid_bound", "silu_reference",
    "silu_bound", "swiglu_reference", "swiglu_bound",
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


def shift_sat(x: torch.Tensor, s: int | torch.Tensor, bits: int = X_BITS) -> torch.Tensor:
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


def to_fixed(x: torch.Tensor | np.ndarray, frac: int, bits: int = X_BITS) -> torch.Tensor:
    """sat_bits(round_half_even(x * 2**frac)) of a finite float tensor -> int64."""
    check_int("frac", frac, -64, 64)
    check_int("bits", bits, 2, X_BITS)
    x = _float_tensor("x", x)
    return sat(torch.round(torch.ldexp(x, torch.tensor(float(frac), dtype=torch.float64)))
               .clamp(-2.0 ** 62, 2.0 ** 62).to(torch.int64), bits)


def to_float(X: torch.Tensor | np.ndarray, frac: int) -> torch.Tensor:
    """X * 2**-frac as float64 (exact for |X| < 2**53)."""
    check_int("frac", frac, -64, 64)
    X = int_tensor("X", X)
    return torch.ldexp(X.double(), torch.tensor(float(-frac), dtype=torch.float64))


# --------------------------------------------------------------------------- token scale, A8
def token_scale(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
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


def quant_a8(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def quant_a8_exact(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """DESIGN §3.1 in exact integer arithmetic: clamp(round_half_even(127 x / max|x|),
    -127, 127) (0 for an all-zero token)."""
    x = _x32("x", x)
    _vectors("x", x)
    amax = x.abs().amax(-1, keepdim=True).clamp(min=1)
    num = ACT_QMAX * x.abs()
    q, r = num // amax, num % amax
    up = (2 * r > amax) | ((2 * r == amax) & (q % 2 == 1))
    return torch.sign(x) * (q + up.to(torch.int64))


def quant_a8_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The real value 127 x / max|x| (float64) that both A8 roundings approximate."""
    x = _x32("x", x)
    _vectors("x", x)
    return ACT_QMAX * x.double() / x.abs().amax(-1, keepdim=True).clamp(min=1).double()


# --------------------------------------------------------------------------- weight scale, dequant
def _unsigned_mantissas(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """round_half_even(v * 2**e) for v >= 0 (float64) with e the largest shift that
    keeps every mantissa below 2**S1_BITS; an all-zero v gives (0, 0)."""
    vmax = float(v.max()) if v.numel() else 0.0
    if vmax == 0.0:
        return torch.zeros(v.shape, dtype=torch.int64), 0
    lim = 1 << S1_BITS
    e = math.floor(math.log2((lim - 0.5) / vmax))
    while round(math.ldexp(vmax, e + 1)) < lim:
        e += 1
    while round(math.ldexp(vmax, e)) >= lim:
        e -= 1
    return torch.round(torch.ldexp(v, torch.tensor(float(e), dtype=torch.float64))).to(
        torch.int64), e


def weight_scale(s1: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
    """Compile-time S1 of one linear: s1 [N] (float, >= 0, the per-channel QoQ scale,
    DESIGN §3.2) -> (S1 [N] int64, e) with S1[n] = round_half_even(s1[n] / 127 * 2**e)
    and e the largest shift with max S1 < 2**S1_BITS (so max S1 >= 2**(S1_BITS-1)).
    |S1[n] * 2**-e - s1[n] / 127| <= 2**-(e+1). Zero channels give S1 = 0; an
    all-zero s1 gives e = 0."""
    s1 = _float_tensor("s1", s1, 1, "[N]")
    if bool((s1 < 0).any()):
        n = int((s1 < 0).nonzero()[0, 0])
        raise ValueError(f"s1[{n}] = {float(s1[n])} is negative; a scale is max|W| / 119 >= 0")
    return _unsigned_mantissas(s1 / ACT_QMAX)


# --------------------------------------------------------------------------- embedding
def embed_quantize(E: torch.Tensor | np.ndarray, group: int) -> tuple[torch.Tensor, torch.Tensor,
                   int]:
    """Compile-time embedding table: E [V, H] float -> (codes [V, H] int8 range,
    S [V, H/group] int64, e): per row and group of `group` columns, symmetric INT8
    with s = max|E| / 127, codes = clamp(round_half_even(E / s), -127, 127), and
    S = round_half_even(s * 2**e) the unsigned S1_BITS-wide mantissa of s with one
    shift e for the table (zero groups: s = 0, codes 0). The GGUF Q8_0 embedding of
    SmolLM2 is this format at group 32 up to the scale's rounding."""
    E = _float_tensor("E", E, 2, "[V, H]")
    V, H = E.shape
    check_int("group", group, 1, H)
    check_multiple("H", H, "group", group, hint="choose a divisor of H")
    Eg = E.reshape(V, H // group, group)
    s = Eg.abs().amax(-1) / ACT_QMAX
    codes = torch.round(Eg / torch.where(s > 0, s, 1.0).unsqueeze(-1)).clamp(-ACT_QMAX, ACT_QMAX)
    S, e = _unsigned_mantissas(s)
    return codes.reshape(V, H).to(torch.int64), S, e


def embed_rows(codes: torch.Tensor | np.ndarray, S: torch.Tensor | np.ndarray, e: int, *,
               out_frac: int) -> torch.Tensor:
    """The embedding lookup of rows already selected: codes [T, H], S [T, H/group]
    -> X32 with out_frac fraction bits:
      x[t, k] = sat32(rshift_round(codes[t, k] * S[t, k // group], e - out_frac))
    (|codes| <= 127, S < 2**15: the product fits 22 bits). Error 0.5 unit of out_frac
    plus the scale's rounding, |S 2**-e - s| <= 2**-(e+1), times |code| <= 127."""
    codes = _ints("codes", codes, lo=-ACT_QMAX, hi=ACT_QMAX, why="INT8 embedding codes")
    S = _ints("S", S, lo=0, hi=(1 << S1_BITS) - 1, why="S is unsigned 15-bit")
    if codes.dim() != 2 or S.dim() != 2 or S.shape[0] != codes.shape[0] or \
            S.shape[1] == 0 or codes.shape[1] % S.shape[1]:
        raise ValueError(f"codes {list(codes.shape)} and S {list(S.shape)} must be [T, H] "
                         f"and [T, H/group]")
    check_int("e", e, -1024, 1024)
    group = codes.shape[1] // S.shape[1]
    return shift_sat(codes * S.repeat_interleave(group, dim=1), e - out_frac)


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


def dequant(acc: torch.Tensor | np.ndarray, S1: torch.Tensor | np.ndarray, e: int,
            mn: torch.Tensor | np.ndarray, L: torch.Tensor | np.ndarray, *, in_frac: int,
            out_frac: int) -> torch.Tensor:
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


def dequant_reference(acc: torch.Tensor | np.ndarray, s1: torch.Tensor | np.ndarray,
                      amax: torch.Tensor | np.ndarray, *, in_frac: int,
                      out_frac: int) -> torch.Tensor:
    """float64 acc * s1[n] * (amax[...] * 2**-in_frac / 127) * 2**out_frac: DESIGN §3.2
    step 4 (y = acc * s1 * s_a) in X32 units; amax is the max|x| quant_a8 saw."""
    acc = int_tensor("acc", acc).double()
    s1 = _float_tensor("s1", s1)
    amax = int_tensor("amax", amax).double()
    return acc * s1 * (amax.unsqueeze(-1) / ACT_QMAX) * 2.0 ** (out_frac - in_frac)


def dequant_bound(acc: torch.Tensor | np.ndarray, s1: torch.Tensor | np.ndarray, e: int,
                  amax: torch.Tensor | np.ndarray, *, in_frac: int, out_frac: int) -> torch.Tensor:
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


# --------------------------------------------------------------------------- RMSNorm
def norm_weight(w: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
    """Compile-time NW of one RMSNorm: w [K] float -> (NW [K] int64, e) with
    NW = round_half_even(w * 2**e) and e the largest exponent with
    max|NW| <= 2**(NW_BITS-1) - 1 (signed 16-bit, symmetric). |NW 2**-e - w| <= 2**-(e+1).
    An all-zero w gives e = 0."""
    w = _float_tensor("w", w, 1, "[K]")
    wmax = float(w.abs().max()) if w.numel() else 0.0
    if wmax == 0.0:
        return torch.zeros(w.shape, dtype=torch.int64), 0
    lim = (1 << (NW_BITS - 1)) - 1
    e = math.floor(math.log2(lim / wmax))
    while round(math.ldexp(wmax, e + 1)) <= lim:
        e += 1
    while round(math.ldexp(wmax, e)) > lim:
        e -= 1
    return torch.round(torch.ldexp(w, torch.tensor(float(e), dtype=torch.float64))).to(
        torch.int64), e


def rsqrt_fx(M: torch.Tensor, config: SFUConfig) -> torch.Tensor:
    """Y ~= 2**(RSQRT_FRAC + RSQRT_M_BITS/2) / sqrt(M) for normalised int64 M in
    [2**(W-2), 2**W), W = RSQRT_M_BITS, so Y in (2**RSQRT_FRAC, 2**(RSQRT_FRAC+1)]:
      Y   = TABLE[(M >> (W - b)) - 2**(b-2)]            (trunc index, b = rsqrt_index_bits)
      newton_steps times (Newton-Raphson on 1/sqrt, correction form):
        y2 = rshift_round(Y * Y, RSQRT_FRAC)            Y*Y <= 2**62
        t  = rshift_round(M * y2, W)                    M*y2 < 2**30 * 2**32 = 2**62;
                                                        t ~= 2**RSQRT_FRAC (M Y**2 ~= 1)
        Y  = Y + rshift_round(Y * (2**RSQRT_FRAC - t), RSQRT_FRAC + 1)
    Relative error at most rsqrt_rel_bound(config)."""
    b = config.rsqrt_index_bits
    table = torch.tensor(rsqrt_table(config), dtype=torch.int64)
    Y = table[(M >> (RSQRT_M_BITS - b)) - (1 << (b - 2))]
    one = 1 << RSQRT_FRAC
    for _ in range(config.newton_steps):
        y2 = rshift_round(Y * Y, RSQRT_FRAC)
        t = rshift_round(M * y2, RSQRT_M_BITS)
        Y = Y + rshift_round(Y * (one - t), RSQRT_FRAC + 1)
    return Y


def rsqrt_rel_bound(config: SFUConfig) -> float:
    """Bound on |rsqrt_fx(M) * sqrt(M) / 2**(RSQRT_FRAC + W/2) - 1|: the table's
    2**-b (half the log-width of an index interval, plus its rounding), squared by each
    Newton step (eps' = 1.5 eps**2 + 0.5 eps**3) plus 2**-28 of per-step rounding
    (three roundings of at most half a unit of 2**-30 each, times Y <= 2)."""
    expect_type("config", config, SFUConfig)
    eps = 2.0 ** -config.rsqrt_index_bits + 2.0 ** -RSQRT_FRAC
    for _ in range(config.newton_steps):
        eps = 1.5 * eps ** 2 + 0.5 * eps ** 3 + 2.0 ** -28
    return eps


def _rms_gain(x: torch.Tensor, eps: float, config: SFUConfig):
    """The per-token steps of rmsnorm before the per-element product (see rmsnorm):
    (R, k, p), int64 [...], then the compile-time ints (E, SK, es)."""
    K = x.shape[-1]
    E = rms_eps(eps, K, config.frac)
    SK, es = sqrt_k(K)
    amax = x.abs().amax(-1)
    k = (bitlen(amax) - RMS_XS_BITS).clamp(min=0)
    xs = rshift_round(x, k.unsqueeze(-1))                    # |xs| <= 2**20
    Q = (xs * xs).sum(-1)                                    # <= K * 2**40 <= 2**60
    T = (Q + rshift_round(torch.full_like(k, E), 2 * k)).clamp(min=1)   # < 2**61
    p = torch.div(bitlen(T) - RSQRT_M_BITS + 1, 2, rounding_mode="floor")
    M = torch.where(p >= 0, T >> (2 * p).clamp(min=0), T << (-2 * p).clamp(min=0))
    Y = rsqrt_fx(M, config)
    R = rshift_round(Y * SK, SQRTK_BITS)                     # Y*SK < 2**56; R <= 2**31
    return R, k, p, E, SK, es


def _norm_shift(e_w: int, es: int, config: SFUConfig) -> int:
    """The token-independent part of rmsnorm's final shift."""
    return (e_w + es + RSQRT_FRAC + RSQRT_M_BITS // 2 - NORM_G_SHIFT - SQRTK_BITS
            - config.frac)


def rmsnorm(x: torch.Tensor | np.ndarray, NW: torch.Tensor | np.ndarray, e_w: int, *, eps: float,
            config: SFUConfig) -> torch.Tensor:
    """RMSNorm of X32 vectors x [..., K] (frac = config.frac in and out), integer only:
    y = x / sqrt(mean(x**2) + eps) * w, with w ~= NW * 2**-e_w (norm_weight).
    Per token:
      k  = max(0, bitlen(max|x|) - RMS_XS_BITS);  xs = rshift_round(x, k)   |xs| <= 2**20
      Q  = sum xs**2                                          exact, <= K 2**40 <= 2**60
      T  = Q + rshift_round(E, 2k), E = rms_eps(eps, K, frac) < 2**52 (compile time),
           1 <= T < 2**61
           so that mean(x**2) + eps ~= T * 2**(2k - 2 frac) / K
      p  = ceil((bitlen(T) - W) / 2);  M = T >> 2p (trunc; T << -2p if p < 0),
           M in [2**(W-2), 2**W), W = RSQRT_M_BITS: T ~= M * 4**p
      Y  = rsqrt_fx(M)   ~= 2**(RSQRT_FRAC + W/2) / sqrt(M)      Y <= 2**31
      R  = rshift_round(Y * SK, SQRTK_BITS), sqrt(K) ~= SK 2**-es (compile time)
                                                              Y*SK < 2**56, R <= 2**31
    Per element:
      G  = rshift_round(NW[k] * R, NORM_G_SHIFT)              |NW * R| < 2**46, |G| < 2**31
      y  = sat32(rshift_round(x * G, s)),                     |x * G| < 2**62
      s  = e_w + es + k + p + RSQRT_FRAC + W/2 - NORM_G_SHIFT - SQRTK_BITS - frac
    (s <= 0 is a saturating left shift). An all-zero token gives y = 0.
    Float reference: rmsnorm_reference; |y - sat32(reference)| <= rmsnorm_bound."""
    expect_type("config", config, SFUConfig)
    x = _x32("x", x)
    _vectors("x", x)
    K = x.shape[-1]
    check_int("K (x.shape[-1])", K, 1, RMS_MAX_K)
    lim = (1 << (NW_BITS - 1)) - 1
    NW = _ints("NW", NW, lo=-lim, hi=lim, why="NW is a signed 16-bit mantissa (norm_weight)")
    check_shape("NW", NW, (K,), "[K]")
    check_int("e_w", e_w, -64, 128)
    R, k, p, _, _, es = _rms_gain(x, eps, config)
    G = rshift_round(NW * R.unsqueeze(-1), NORM_G_SHIFT)
    s = _norm_shift(e_w, es, config) + k + p
    return shift_sat(x * G, s.unsqueeze(-1))


def rmsnorm_reference(x: torch.Tensor | np.ndarray, w: torch.Tensor | np.ndarray, *, eps: float,
                      frac: int) -> torch.Tensor:
    """float64 x / sqrt(mean(x**2) + eps) * w in X32 units (frac in and out),
    quantflow.models.llama.RMSNorm."""
    xf = to_float(x, frac)
    w = _float_tensor("w", w)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf * r * w * 2.0 ** frac


def rmsnorm_bound(x: torch.Tensor | np.ndarray, w: torch.Tensor | np.ndarray, e_w: int, *,
                  eps: float, config: SFUConfig) -> torch.Tensor:
    """Elementwise bound on |rmsnorm - rmsnorm_reference| in X32 units (before
    saturation, which only shrinks it):
      0.5 (final rounding) + |x| 2**-(s+1) (G rounding)
      + |x r w'| rho            (the per-token gain's relative error rho, below;
                                 w' = w + 2**-(e_w+1) sign(w))
      + |x r| 2**-(e_w+1)       (NW rounding), x r in X32 units
    with rho = dT/2 (1 + dT) + 2**-(W-2) + rsqrt_rel_bound + 2**-(SQRTK_BITS-1) +
    2**-29 (+ a 1e-12 float margin), dT = (sum |x| 2**-k + K/4 [k > 0] + 1) / T_exact the
    sum of squares' rounding (pre-shift squares and eps)."""
    expect_type("config", config, SFUConfig)
    x = _x32("x", x)
    F = config.frac
    R, k, p, E, SK, es = _rms_gain(x, eps, config)
    K = x.shape[-1]
    kf = k.double()
    xa = x.abs().double()
    t_exact = (xa.pow(2).sum(-1) + E) * 4.0 ** -kf
    dq = torch.where(k > 0, xa.sum(-1) * 2.0 ** -kf + K / 4, torch.zeros_like(kf)) + 1.0
    # an all-zero token with eps = 0 is exactly 0 in both: only the final 0.5 remains
    dT = torch.where(t_exact > 0, dq / t_exact.clamp(min=1e-300), torch.zeros_like(dq))
    rho = (dT / 2 * (1 + dT) + 2.0 ** -(RSQRT_M_BITS - 2) + rsqrt_rel_bound(config)
           + 2.0 ** -(SQRTK_BITS - 1) + 2.0 ** -29 + 1e-12)
    r = torch.rsqrt(to_float(x, F).pow(2).mean(-1, keepdim=True) + eps)
    xr = xa * torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    w = _float_tensor("w", w).abs() + 2.0 ** -(e_w + 1)
    s = _norm_shift(e_w, es, config) + k + p
    g_round = xa * torch.ldexp(torch.tensor(0.5, dtype=torch.float64), -s.double()).unsqueeze(-1)
    return 0.5 + g_round + xr * w * rho.unsqueeze(-1) + xr * 2.0 ** -(e_w + 1)


# --------------------------------------------------------------------------- RoPE
def rope_inv_freq(theta: float, head_dim: int) -> list[float]:
    """The plain Llama inverse frequencies theta**(-2i / head_dim), i < head_dim/2,
    in float64 (models with rope scaling pass their own list to rope_table)."""
    check_int("head_dim", head_dim, 2)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) \
            or not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"theta must be a positive finite float, got {theta!r}; pass the "
                         f"model's rope_theta")
    return [theta ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]


def _inv_freq(inv_freq) -> torch.Tensor:
    if isinstance(inv_freq, (str, bytes)) or not isinstance(
            inv_freq, (Sequence, torch.Tensor, np.ndarray)):
        raise TypeError(f"inv_freq must be a sequence of floats, got "
                        f"{type(inv_freq).__name__}; pass the model's inverse frequencies")
    f = torch.as_tensor(np.asarray(inv_freq, dtype=np.float64)
                        if not isinstance(inv_freq, torch.Tensor) else inv_freq.double())
    if f.dim() != 1 or f.numel() < 1:
        raise ValueError(f"inv_freq must be a non-empty 1-D sequence (head_dim/2 values), "
                         f"got shape {list(f.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError("inv_freq holds NaN or Inf; fix the model's rope config")
    return f


def _angles(inv_freq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    # float64 products of exact integers and the given frequencies: the same on
    # every IEEE machine
    return pos.double().unsqueeze(-1) * inv_freq


def rope_table(inv_freq: Sequence[float] | torch.Tensor | np.ndarray,
               positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compile-time RoPE tables: cos, sin [positions, D/2] int64 holding ROPE_BITS-wide
    values round_half_even(cos(p * inv_freq[i]) * 2**ROPE_FRAC) (angles in float64;
    1.0 = 16384 fits int16). inv_freq comes from the model's config (rope scaling is
    the caller's business; rope_inv_freq gives the plain one)."""
    f = _inv_freq(inv_freq)
    check_int("positions", positions, 1, 1 << 24)
    ang = _angles(f, torch.arange(positions))
    one = float(1 << ROPE_FRAC)
    return (torch.round(torch.cos(ang) * one).to(torch.int64),
            torch.round(torch.sin(ang) * one).to(torch.int64))


def rope(x: torch.Tensor | np.ndarray, cos: torch.Tensor | np.ndarray,
         sin: torch.Tensor | np.ndarray, pos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """RoPE of X32 heads x [..., T, D] at positions pos [T], Hugging Face rotate_half
    pairing (channel i with i + D/2, quantflow.models.llama.apply_rope), c, s =
    cos[pos], sin[pos] [T, D/2]:
      out_i       = sat32(rshift_round(x_i * c - x_{i+D/2} * s, ROPE_FRAC))
      out_{i+D/2} = sat32(rshift_round(x_{i+D/2} * c + x_i * s, ROPE_FRAC))
    int64: |x| <= 2**31, |c|, |s| <= 2**15, so each sum is < 2**47.
    Float reference: rope_reference; |out - sat32(reference)| <= rope_bound."""
    x = _x32("x", x)
    lim = 1 << (ROPE_BITS - 1)
    cos = _ints("cos", cos, lo=-lim, hi=lim - 1, why="ROPE tables are int16")
    sin = _ints("sin", sin, lo=-lim, hi=lim - 1, why="ROPE tables are int16")
    check_dims("cos", cos, 2, "[positions, D/2]")
    check_shape("sin", sin, cos.shape, "cos.shape")
    if x.dim() < 2:
        raise ValueError(f"x must be [..., T, D], got shape {list(x.shape)}")
    T, D = x.shape[-2:]
    if D != 2 * cos.shape[1]:
        raise ValueError(f"x has D={D} but the tables cover D/2={cos.shape[1]} pairs; build "
                         f"them with rope_table(inv_freq of length D/2, ...)")
    pos = _ints("pos", pos, lo=0, hi=cos.shape[0] - 1,
                why=f"the tables hold positions 0..{cos.shape[0] - 1}: build longer ones")
    check_shape("pos", pos, (T,), "[T]")
    c, s = cos[pos], sin[pos]
    lo, hi = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([shift_sat(lo * c - hi * s, ROPE_FRAC),
                      shift_sat(hi * c + lo * s, ROPE_FRAC)], -1)


def rope_reference(x: torch.Tensor | np.ndarray,
                   inv_freq: Sequence[float] | torch.Tensor | np.ndarray,
                   pos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float64 x * cos + rotate_half(x) * sin at the float64 angles pos * inv_freq, in
    X32 units."""
    x = int_tensor("x", x).double()
    ang = _angles(_inv_freq(inv_freq), int_tensor("pos", pos))
    c, s = torch.cos(ang), torch.sin(ang)
    D = x.shape[-1]
    lo, hi = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([lo * c - hi * s, hi * c + lo * s], -1)


def rope_bound(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Elementwise bound on |rope - rope_reference| in X32 units: 0.5 (rounding) +
    (|x_i| + |x_{i+D/2}|) 2**-(ROPE_FRAC+1) (the tables' rounding)."""
    x = int_tensor("x", x).double().abs()
    D = x.shape[-1]
    pair = x[..., : D // 2] + x[..., D // 2:]
    return 0.5 + torch.cat([pair, pair], -1) * 2.0 ** -(ROPE_FRAC + 1)


# --------------------------------------------------------------------------- SiLU, SwiGLU
def silu_table(config: SFUConfig) -> torch.Tensor:
    """The sigmoid table of golden.sfu_config.sigmoid_table as an int64 tensor
    [sig_range * 2**sig_step_bits + 1]."""
    expect_type("config", config, SFUConfig)
    return torch.tensor(sigmoid_table(config), dtype=torch.int64)


def sigmoid_fx(g: torch.Tensor | np.ndarray, config: SFUConfig) -> torch.Tensor:
    """sigmoid of X32 g (frac = config.frac) with sig_frac fraction bits, by the table
    and linear interpolation on |g|, d = frac - sig_step_bits:
      a = |g|;  j = a >> d (trunc);  f = a mod 2**d
      sig(a) = TABLE[j] + rshift_round((TABLE[j+1] - TABLE[j]) * f, d)  for j < N
             = 2**sig_frac (saturate to 1.0)                            for j >= N
      (N = sig_range * 2**sig_step_bits);  sigmoid_fx(g) = 2**sig_frac - sig(a) for g < 0
    so sigmoid_fx(-g) = 2**sig_frac - sigmoid_fx(g) exactly and g <= -sig_range gives 0.
    |sigmoid_fx(g) 2**-sig_frac - sigmoid(g)| <= sigmoid_bound(config)."""
    expect_type("config", config, SFUConfig)
    g = _x32("g", g)
    table = silu_table(config)
    d = config.frac - config.sig_step_bits
    N = config.sig_entries - 1
    a = g.abs()
    j = (a >> d).clamp(max=N)
    f = a & ((1 << d) - 1)
    lo = table[j]
    hi = table[(j + 1).clamp(max=N)]
    one = 1 << config.sig_frac
    sig = torch.where(j < N, lo + rshift_round((hi - lo) * f, d), torch.full_like(a, one))
    return torch.where(g < 0, one - sig, sig)


def sigmoid_bound(config: SFUConfig) -> float:
    """Bound on |sigmoid_fx 2**-sig_frac - sigmoid| (real units): inside the table, half a
    unit of the knots' rounding + half a unit of the interpolation's rounding
    + h**2 max|sigmoid''| / 8 (linear interpolation, h = 2**-sig_step_bits,
    max|sigmoid''| = 1 / (6 sqrt(3))); outside it, sigmoid(-sig_range) (saturation)."""
    expect_type("config", config, SFUConfig)
    h = 2.0 ** -config.sig_step_bits
    inside = 2.0 ** -config.sig_frac + h * h / (8 * 6 * math.sqrt(3))
    return max(inside, 1.0 / (1.0 + math.exp(config.sig_range)))


def silu_fx(g: torch.Tensor | np.ndarray, config: SFUConfig) -> torch.Tensor:
    """SiLU of X32 g: rshift_round(g * sigmoid_fx(g), sig_frac) (X32, same frac;
    |g * sigmoid_fx| <= 2**31 * 2**24 = 2**55; |silu_fx(g)| <= |g| so it stays int32)."""
    g = _x32("g", g)
    return rshift_round(g * sigmoid_fx(g, config), config.sig_frac)


def swiglu(g: torch.Tensor | np.ndarray, u: torch.Tensor | np.ndarray, *, config: SFUConfig,
           shift: int | None = None) -> torch.Tensor:
    """The Llama MLP's SiLU(gate) * up of X32 g (frac = config.frac: the sigmoid
    table is indexed in those units) and u (same shape, any frac f_u):
      h = sat32(rshift_round(silu_fx(g) * u, shift))      |silu_fx * u| <= 2**62
    shift = config.frac by default (h in u's units); a caller whose h needs another
    format f_h passes shift = config.frac + f_u - f_h (|h| can exceed |u| by the
    largest |silu|, so h rarely fits u's format).
    Float reference: swiglu_reference; |h - sat32(reference)| <= swiglu_bound
    (for the default shift)."""
    expect_type("config", config, SFUConfig)
    g = _x32("g", g)
    u = _x32("u", u)
    check_shape("u", u, g.shape, "g.shape")
    shift = config.frac if shift is None else check_int("shift", shift, -64, 64)
    return shift_sat(silu_fx(g, config) * u, shift)


def silu_reference(g: torch.Tensor | np.ndarray, frac: int) -> torch.Tensor:
    """float64 silu(g) in X32 units."""
    gf = to_float(g, frac)
    return gf * torch.sigmoid(gf) * 2.0 ** frac


def swiglu_reference(g: torch.Tensor | np.ndarray, u: torch.Tensor | np.ndarray,
                     frac: int) -> torch.Tensor:
    """float64 silu(g) * u in X32 units."""
    return silu_reference(g, frac) * to_float(u, frac)


def silu_bound(g: torch.Tensor | np.ndarray, config: SFUConfig) -> torch.Tensor:
    """Elementwise bound on |silu_fx - silu_reference| in X32 units:
    0.5 (rounding) + min(|g|, sig_range 2**frac) sigmoid_bound (inside the table the
    sigmoid error times |g|; beyond it |x| sigmoid(-|x|) <= sig_range sigmoid(-sig_range))."""
    expect_type("config", config, SFUConfig)
    g = int_tensor("g", g).double().abs()
    cap = float(config.sig_range << config.frac)
    return 0.5 + g.clamp(max=cap) * sigmoid_bound(config)


def swiglu_bound(g: torch.Tensor | np.ndarray, u: torch.Tensor | np.ndarray,
                 config: SFUConfig) -> torch.Tensor:
    """Elementwise bound on |swiglu - swiglu_reference| in X32 units:
    0.5 (rounding) + |u| 2**-frac silu_bound(g) (silu_fx's error, scaled by u)."""
    u = int_tensor("u", u).double().abs()
    return 0.5 + u * 2.0 ** -config.frac * silu_bound(g, config)


# --------------------------------------------------------------------------- the rest
def residual_add(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """sat32(x + y) of X32 tensors of one shape (the same frac)."""
    x = _x32("x", x)
    y = _x32("y", y)
    check_shape("y", y, x.shape, "x.shape")
    return sat(x + y)


def requant(x: torch.Tensor | np.ndarray, from_frac: int | torch.Tensor | np.ndarray,
            to_frac: int | torch.Tensor | np.ndarray, bits: int = X_BITS) -> torch.Tensor:
    """Fixed point from from_frac to to_frac fraction bits in `bits` bits:
    sat_bits(rshift_round(x, from_frac - to_frac)), a saturating left shift when
    to_frac > from_frac. from_frac / to_frac are ints or int tensors broadcasting with
    x (e.g. one frac per KV head). |x| < 2**62. Error 0.5 unit of to_frac unless
    saturated."""
    x = _ints("x", x)
    check_int("bits", bits, 2, X_BITS)
    fr = [check_int(n, v, -64, 64) if not isinstance(v, (torch.Tensor, np.ndarray))
          else _ints(n, v, lo=-64, hi=64, why="a fraction-bit count")
          for n, v in (("from_frac", from_frac), ("to_frac", to_frac))]
    return shift_sat(x, torch.as_tensor(fr[0]) - torch.as_tensor(fr[1]), bits)


def argmax(v: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Index of the largest element along the last dim of an integer tensor, the lowest
    index among ties -> int64 [...]."""
    v = int_tensor("v", v)
    _vectors("v", v)
    V = v.shape[-1]
    idx = torch.arange(V).expand_as(v)
    top = v == v.amax(-1, keepdim=True)
    return torch.where(top, idx, torch.full_like(idx, V)).amin(-1)
