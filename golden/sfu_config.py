"""Special-function unit (SFU) of the integer LLM model (docs/integer-model.md §1-2):
the number formats, widths and constant tables every op of golden.sfu uses, and the
`SFUConfig` that carries the measured choices.

Standard library only, so that `hdl` reads the widths and builds the same tables
without torch. The tables are built from closed formulas (floats only to build a
constant, rounded half to even), so every reader gets the same integers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from golden.formats import ACC_BITS
from golden.validate import check_int, check_multiple, check_pow2

__all__ = ["X_BITS", "MANT_BITS", "S1_BITS", "NW_BITS", "ROPE_FRAC", "ROPE_BITS",
           "RCP_BITS", "INT64_SAFE_BITS", "RMS_XS_BITS", "RMS_MAX_K", "RSQRT_M_BITS",
           "RSQRT_FRAC", "SQRTK_BITS", "NORM_G_SHIFT", "SIG_TABLE_MAX", "SFUConfig",
           "sigmoid_table", "rsqrt_table", "sqrt_k", "rms_eps", "SFU_MAX_LANES",
           "SFU_MAX_BUFFER", "SFUHWConfig"]

#: X32: the residual stream and every wide activation, int32, value = X * 2**-frac.
X_BITS = ACC_BITS
#: Token scale TS = (mn, L): mn is max|x| truncated to MANT_BITS significant bits,
#: mn in [2**(MANT_BITS-1), 2**MANT_BITS) (0 for an all-zero token).
MANT_BITS = 16
#: quant_a8's reciprocal RC = floor(2**RCP_BITS / mn): RC in (2**15, 2**16].
RCP_BITS = 31
#: Weight scale S1 = s1 / 127 as an unsigned S1_BITS-wide mantissa, one shift per linear.
S1_BITS = 15
#: RMSNorm weight NW: signed NW_BITS-wide mantissa (|NW| <= 2**(NW_BITS-1) - 1),
#: one exponent per norm.
NW_BITS = 16
#: RoPE cos/sin tables: signed ROPE_BITS-wide, ROPE_FRAC fraction bits (1.0 = 16384).
ROPE_FRAC = 14
ROPE_BITS = 16
#: Every product the SFU forms stays below 2**INT64_SAFE_BITS (int64 with a spare
#: bit, so that adding a rounding half cannot wrap).
INT64_SAFE_BITS = 62
#: RMSNorm's squares: each token is pre-shifted so |xs| <= 2**RMS_XS_BITS (a 22-bit
#: signed operand), a square is <= 2**(2 * RMS_XS_BITS) = 2**40, and a sum of up to
#: RMS_MAX_K of them stays below 2**60. 20 bits, not 16: on SmolLM2's massive
#: activations 16 left up to 7.9 X32 units of error, 20 leaves 0.6 (rounding only).
RMS_XS_BITS = 20
RMS_MAX_K = 1 << 20
#: Reciprocal square root: the sum T is normalised by an even shift to
#: M in [2**(RSQRT_M_BITS-2), 2**RSQRT_M_BITS); Y = 2**RSQRT_FRAC / sqrt(M / 2**RSQRT_M_BITS)
#: lies in (2**RSQRT_FRAC, 2**(RSQRT_FRAC+1)].
RSQRT_M_BITS = 30
RSQRT_FRAC = 30
#: sqrt(K) (the 1/K of the mean, folded into the reciprocal) as an unsigned
#: SQRTK_BITS-wide mantissa in [2**(SQRTK_BITS-1), 2**SQRTK_BITS) and an exponent.
SQRTK_BITS = 24
#: G = NW * R >> NORM_G_SHIFT keeps the per-element gain below 2**31 (|NW| < 2**15,
#: R <= 2**31).
NORM_G_SHIFT = NW_BITS - 1
#: Most entries a sigmoid table may have (one BRAM18 of 2048 x 9 bits per 9-bit
#: slice; the SFU reads it at one address per element).
SIG_TABLE_MAX = 2048


@dataclass(frozen=True, kw_only=True)
class SFUConfig:
    """The SFU's measured choices (docs/integer-model.md §1-2).

      frac             X32 fraction bits (value = X * 2**-frac). SmolLM2's residual
                       stream reaches max|x| = 24,904 (layers 11..27): 14 leaves
                       2**17 / 24,904 = 5.3x headroom, 16 only 1.3x.
      rsqrt_index_bits the reciprocal-square-root table is indexed by the top
                       rsqrt_index_bits of the normalised sum (3/4 of the
                       2**rsqrt_index_bits indices occur: the top two bits are 01, 10, 11)
      newton_steps     Newton-Raphson steps after the table
      sig_frac         fraction bits of sigmoid_fx (1.0 = 2**sig_frac)
      sig_step_bits    sigmoid table step h = 2**-sig_step_bits
      sig_range        the table covers |x| in [0, sig_range]; sigmoid saturates to
                       1.0 (0 for negative x) beyond it
    """

    frac: int = 14
    rsqrt_index_bits: int = 8
    newton_steps: int = 2
    sig_frac: int = 20
    sig_step_bits: int = 6
    sig_range: int = 16

    def __post_init__(self):
        check_int("frac", self.frac, 0, X_BITS - 2,
                  hint="X32 needs at least one integer bit besides the sign; 14 is measured")
        check_int("rsqrt_index_bits", self.rsqrt_index_bits, 4, 12,
                  hint="8 (192 used entries) with 2 Newton steps is exact to ~2**-29")
        check_int("newton_steps", self.newton_steps, 0, 3,
                  hint="each step squares the relative error: 2 reach the 2**-29 floor")
        check_int("sig_frac", self.sig_frac, 8, 24,
                  hint="sigmoid_fx * X32 must stay below 2**62 (sig_frac <= 24)")
        check_int("sig_step_bits", self.sig_step_bits, 0, self.frac,
                  hint="the step cannot be finer than one X32 unit 2**-frac")
        check_int("sig_range", self.sig_range, 1, 64)
        n = self.sig_entries
        if n > SIG_TABLE_MAX:
            raise ValueError(f"the sigmoid table would have sig_range * 2**sig_step_bits + 1 "
                             f"= {n} entries, more than {SIG_TABLE_MAX}; lower sig_step_bits "
                             f"or sig_range")

    @property
    def sig_entries(self) -> int:
        """Knots of the sigmoid table: x = j * 2**-sig_step_bits, j = 0 .. range * 2**step."""
        return (self.sig_range << self.sig_step_bits) + 1

    @property
    def rsqrt_entries(self) -> int:
        """Stored reciprocal-square-root entries (indices 2**(b-2) .. 2**b - 1)."""
        return 3 << (self.rsqrt_index_bits - 2)

    def replace(self, **kw: Any) -> "SFUConfig":
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **kw)


def _round_half_even(v: Fraction | float) -> int:
    return round(v)


def sigmoid_table(config: SFUConfig) -> tuple[int, ...]:
    """T[j] = round_half_even(sigmoid(j * 2**-sig_step_bits) * 2**sig_frac) for
    j = 0 .. sig_range * 2**sig_step_bits (x >= 0 only: sigmoid(-x) = 1 - sigmoid(x)).
    Values lie in [2**(sig_frac-1), 2**sig_frac]."""
    h = 2.0 ** -config.sig_step_bits
    one = 1 << config.sig_frac
    return tuple(_round_half_even(one / (1.0 + math.exp(-j * h)))
                 for j in range(config.sig_entries))


def rsqrt_table(config: SFUConfig) -> tuple[int, ...]:
    """Seed of the reciprocal square root of a normalised M in [1/4, 1) (value
    M / 2**RSQRT_M_BITS): entry i - 2**(b-2), for index i = M >> (RSQRT_M_BITS - b) in
    [2**(b-2), 2**b), is round_half_even(2**RSQRT_FRAC * 2 / (sqrt(lo) + sqrt(hi))) over
    the index's interval [lo, hi) = [i, i+1) / 2**b: the value whose relative error is
    equal at both ends (at most (sqrt(hi/lo) - 1) / 2 <= 2**-b, b = rsqrt_index_bits)."""
    b = config.rsqrt_index_bits
    out = []
    for i in range(1 << (b - 2), 1 << b):
        lo, hi = i / (1 << b), (i + 1) / (1 << b)
        out.append(_round_half_even((1 << RSQRT_FRAC) * 2.0 / (math.sqrt(lo) + math.sqrt(hi))))
    return tuple(out)


def sqrt_k(K: int) -> tuple[int, int]:
    """sqrt(K) as (SK, es): SK = round_half_even(sqrt(K) * 2**es) in
    [2**(SQRTK_BITS-1), 2**SQRTK_BITS), es chosen so (exact integer square root)."""
    check_int("K", K, 1, RMS_MAX_K, hint="the RMSNorm width (hidden size)")
    es = SQRTK_BITS - 1 - (math.isqrt(K).bit_length() - 1)
    while True:
        # round(sqrt(K * 4**es)) exactly: isqrt on the integer K * 4**es (es >= 0 here)
        v = K << (2 * es)
        r = math.isqrt(v)
        sk = r + (1 if v - r * r > r else 0)   # sqrt(v) > r + 1/2  <=>  v > r*r + r (+1/4)
        if sk >= 1 << SQRTK_BITS:
            es -= 1
        elif sk < 1 << (SQRTK_BITS - 1):
            es += 1
        else:
            return sk, es


def rms_eps(eps: float, K: int, frac: int) -> int:
    """RMSNorm's eps as an integer in the units of the sum of squares of X32 values
    with `frac` fraction bits: E = round_half_even(eps * K * 2**(2*frac)) (exact in
    rationals). mean(x^2) + eps = (sum X^2 + E) * 2**(-2*frac) / K."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {eps!r} ({type(eps).__name__}); "
                        f"pass the model's rms_norm_eps")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}; pass the model's "
                         f"rms_norm_eps")
    check_int("K", K, 1, RMS_MAX_K, hint="the RMSNorm width (hidden size)")
    check_int("frac", frac, 0, X_BITS - 2)
    E = _round_half_even(Fraction(eps) * K * (1 << (2 * frac)))
    if E >= 1 << 52:
        raise ValueError(f"eps={eps} is {E} in sum-of-squares units (K={K}, frac={frac}), "
                         f"above 2**52; an eps that large swamps the activations: check it")
    return E


#: Most elements the SFU (hdl.sfu) takes per beat, and the largest on-chip vector
#: buffer it is generated with (quant_a8, rmsnorm and rope hold one whole vector).
SFU_MAX_LANES = 16
SFU_MAX_BUFFER = 1 << 16


@dataclass(frozen=True, kw_only=True)
class SFUHWConfig(SFUConfig):
    """The SFU hardware (hdl.sfu, docs/sfu.md): the numeric choices of SFUConfig
    (inherited: every golden.sfu op accepts it as its config) plus what is fixed
    when the RTL is generated:

      max_k   elements of the on-chip vector buffer: the longest vector quant_a8,
              rmsnorm and rope take (the streaming ops take up to 2**20 - 1);
              a multiple of lanes
      lanes   elements per stream beat (one per cycle per lane in steady state)
    """

    max_k: int = 2048
    lanes: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_pow2("lanes", self.lanes, 1, SFU_MAX_LANES,
                   hint="elements per beat; every lane has its own multipliers")
        check_int("max_k", self.max_k, 2, SFU_MAX_BUFFER,
                  hint="the longest buffered vector (hidden size, intermediate size)")
        check_multiple("max_k", self.max_k, "lanes", self.lanes,
                       hint="the buffer holds whole beats: round max_k up")

    @property
    def buffer_beats(self) -> int:
        """Depth of the vector buffer in beats."""
        return self.max_k // self.lanes

    @property
    def q_bits(self) -> int:
        """RMSNorm's sum of squares Q: max_k squares of |xs| <= 2**RMS_XS_BITS."""
        return 2 * RMS_XS_BITS + 1 + (self.max_k - 1).bit_length()

    @property
    def sig_diff_bits(self) -> int:
        """Width of the sigmoid table's knot differences T[j+1] - T[j] (>= 0)."""
        t = sigmoid_table(self)
        return max(1, max(b - a for a, b in zip(t, t[1:])).bit_length())

    def numerics(self) -> SFUConfig:
        """The plain SFUConfig of the same numeric choices."""
        return SFUConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SFUConfig)})

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name for generated files: lanes, max_k and every field that differs from
        SFUConfig's default."""
        base = SFUConfig()
        diff = "".join(f"_{k}{getattr(self, f)}" for f, k in (
            ("frac", "f"), ("rsqrt_index_bits", "ri"), ("newton_steps", "n"),
            ("sig_frac", "sf"), ("sig_step_bits", "ss"), ("sig_range", "sr"))
            if getattr(self, f) != getattr(base, f))
        return f"sfu_l{self.lanes}_k{self.max_k}{diff}"
