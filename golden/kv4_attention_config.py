"""KV4 decode-attention unit configuration (DESIGN §3.7): the single source of
truth for every width of the fixed-point pipeline (docs/kv4_attention.md).

Standard library only, so that hdl reads it without torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from golden.formats import ACT_BITS, INT8_ABS_MAX
from golden.validate import check_bool, check_choice, check_int, check_multiple


#: K/V cache codes: 4-bit unsigned, levels 0..15, per token and head asymmetric.
KV_BITS = 4
KV_LEVELS = (1 << KV_BITS) - 1
#: The per-token quantizer's divider only needs |round(15 x / S)| up to this cap:
#: any larger value saturates the code the same way (docs/kv4_attention.md).
KV_T_CAP = KV_LEVELS + 1
#: Recent-window tokens (the last `recent` of the context) are kept at 8 bits with
#: levels 0..240 = 15 * 16, so that a 4-bit token is the same value with code 16*c4
#: and zero 16*z4: the decode datapath works in one "8-bit domain" for both.
CODE_SHIFT = 4
KV8_LEVELS = KV_LEVELS << CODE_SHIFT
KV8_T_CAP = KV8_LEVELS + 1
#: Bits of a stored zero point (z4 in the low nibble for 4-bit tokens).
ZERO_BITS = 8
#: Largest 8-bit-domain code or zero the datapath can hold (its operands are
#: ZERO_BITS wide; the quantizer itself emits at most KV8_LEVELS).
CODE8_MAX = (1 << ZERO_BITS) - 1
#: Width of the decode command's T field: wider than any max_T, so T > max_T is
#: representable and flagged instead of wrapping.
CMD_T_BITS = 16
#: Width of a query head's logit multiplier mantissa C and of its right shift.
C_BITS = 16
LSH_BITS = 6
#: Rescale shifts saturate here: every accumulator is < 2**62, so >> 63 is 0.
SHIFT_SAT = 63
KV4_HEAD_DIMS = (32, 64, 128, 256)
KV4_MAX_T = 4096
#: Largest GQA group (query heads sharing one KV head) of one unit.
KV4_MAX_HEADS = 16
#: Largest recent window (tokens kept at 8 bits).
KV4_MAX_RECENT = 256


@dataclass(frozen=True, kw_only=True)
class KV4Config:
    """One KV4 decode-attention unit: `heads` query heads (a GQA group) read one
    KV head's 4-bit cache of up to `max_t` tokens, `lanes` elements of head_dim
    per cycle on each of the K and V sides.

    Fixed-point parameters (every one named in docs/kv4_attention.md):
      x_bits     KV-append input: signed fixed point, unit u = 2**-frac per head
      logit_frac fraction bits of the base-2 logit (and index bits of the exp2 table)
      p_frac     fraction bits of a softmax weight p in [0, 1]
      out_frac   fraction bits of the output, in units of the V input unit u_v
      recip_bits fraction bits of the normalisation reciprocal
      logit_bits width of the saturating signed logit

    Scheme (chosen by measurement, docs/kv4_attention.md):
      rotate     Walsh-Hadamard rotation of K (append path) and of the query
                 (query path), exact integer butterflies; V is not rotated
      recent     the last `recent` tokens of the context are read at 8 bits (the
                 append path emits both 4- and 8-bit codes; 0 = KV4 only)
    """

    head_dim: int = 64
    lanes: int = 16
    max_t: int = 4096
    heads: int = 1
    x_bits: int = 16
    logit_frac: int = 8
    p_frac: int = 12
    out_frac: int = 4
    recip_bits: int = 24
    logit_bits: int = 24
    rotate: bool = True
    recent: int = 8

    def __post_init__(self):
        check_int("head_dim", self.head_dim)
        check_choice("head_dim", self.head_dim, KV4_HEAD_DIMS)
        check_int("lanes", self.lanes, 1)
        check_multiple("head_dim", self.head_dim, "lanes", self.lanes,
                       hint=f"choose lanes that divide head_dim, e.g. "
                            f"lanes={math.gcd(self.head_dim, self.lanes)}")
        check_int("max_t", self.max_t, 1, KV4_MAX_T, hint="split the context over several units")
        check_int("heads", self.heads, 1, KV4_MAX_HEADS,
                  hint="heads counts the query heads of one KV head (a GQA group)")
        for name, lo, hi in (("x_bits", 6, 20), ("logit_frac", 2, 10), ("p_frac", 6, 16),
                             ("out_frac", 0, 8), ("recip_bits", 8, 32),
                             ("logit_bits", 12, 32)):
            check_int(name, getattr(self, name), lo, hi)
        check_bool("rotate", self.rotate)
        check_int("recent", self.recent, 0, min(self.max_t, KV4_MAX_RECENT),
                  hint=f"the recent window is at most max_t and {KV4_MAX_RECENT} tokens")
        if self.logit_bits - self.logit_frac < 8:
            raise ValueError(f"logit_bits - logit_frac must be >= 8 integer bits, got "
                             f"{self.logit_bits} - {self.logit_frac}; raise logit_bits")
        over = max(self.acc_bits - 62, self.prod_bits - 63)
        if over > 0:
            # K (x_bits wide, widened by the rotation) feeds both; name the x_bits that fits
            x_max = self.x_bits - over
            fix = (f"set x_bits={x_max} or lower" if x_max >= 6 else
                   "lower p_frac or max_t (x_bits is at its minimum 6)")
            raise ValueError(f"head_dim={self.head_dim} with x_bits={self.x_bits} overflows "
                             f"64-bit arithmetic (acc {self.acc_bits} bits > 62, logit product "
                             f"{self.prod_bits} bits > 63; rotate=True widens K by "
                             f"log2(head_dim)/2 bits): {fix}")

    # --- derived widths (never re-derive these elsewhere) ---
    @property
    def chunks(self) -> int:
        """Beats per head_dim vector: head_dim / lanes."""
        return self.head_dim // self.lanes

    @property
    def t_bits(self) -> int:
        """Bits of a token count 0..max_t."""
        return self.max_t.bit_length()

    @property
    def log2_d(self) -> int:
        """log2 of head_dim."""
        return self.head_dim.bit_length() - 1

    @property
    def rot_shift(self) -> int:
        """Right shift (round half up) after the K butterfly: log2(D) // 2, so the
        rotated K is H_D x / 2**rot_shift (orthonormal for even log2 D)."""
        return self.log2_d // 2 if self.rotate else 0

    @property
    def k_bits(self) -> int:
        """Signed width of K at the quantizer (after the rotation)."""
        return self.x_bits + (self.log2_d - self.rot_shift if self.rotate else 0)

    @property
    def qr_bits(self) -> int:
        """Signed width of the rotated query H_D q8 (exact)."""
        return ACT_BITS + (self.log2_d if self.rotate else 0)

    @property
    def min_lsh(self) -> int:
        """Smallest cmd lsh: the query requantization shift e (<= log2 D + 1) is
        subtracted from it in hardware."""
        return self.log2_d + 1 if self.rotate else 0

    @property
    def scale_bits(self) -> int:
        """Scale numerator S (scale = S * u / 15 for 4-bit, S * u / 240 for 8-bit
        codes): the range max - min < 2**k_bits, or 15 * |min| < 15 * 2**(k_bits-1)
        for a constant token."""
        return self.k_bits + 3

    @property
    def dot_bits(self) -> int:
        """Signed q8 . (c - z) in the 8-bit domain: |sum q*c| and |z * sum q| <=
        128 * 255 * head_dim."""
        return (2 * INT8_ABS_MAX * CODE8_MAX * self.head_dim).bit_length() + 1

    @property
    def sumq_bits(self) -> int:
        """Signed sum of a query's INT8 elements: |sum q| <= 128 * head_dim."""
        return (INT8_ABS_MAX * self.head_dim).bit_length() + 1

    @property
    def prod_bits(self) -> int:
        """Signed dot * S * C before the logit shift."""
        return self.dot_bits + self.scale_bits + C_BITS

    @property
    def max_bits(self) -> int:
        """Signed integer running maximum m = ceil(logit)."""
        return self.logit_bits - self.logit_frac + 1

    @property
    def p_bits(self) -> int:
        """p in [0, 2**p_frac] (1.0 included)."""
        return self.p_frac + 1

    @property
    def w_bits(self) -> int:
        """Per-token V weight w = p * S_v."""
        return self.p_bits + self.scale_bits

    @property
    def acc_bits(self) -> int:
        """Unsigned P.V accumulator sum_t w_t * v_t (and sum_t w_t * z_v), codes in
        the 8-bit domain."""
        return self.w_bits + 2 * KV_BITS + self.t_bits

    @property
    def d_bits(self) -> int:
        """Unsigned softmax denominator sum_t p_t."""
        return self.p_bits + self.t_bits

    @property
    def dd_bits(self) -> int:
        """240 * d, normalised to [2**(dd_bits-1), 2**dd_bits) before the reciprocal."""
        return (KV8_LEVELS * ((1 << self.p_frac) * self.max_t)).bit_length()

    @property
    def recip_width(self) -> int:
        """R = floor(2**(dd_bits - 1 + recip_bits) / dn) lies in (2**recip_bits, 2**(recip_bits+1)]."""
        return self.recip_bits + 2

    @property
    def out_bits(self) -> int:
        """Signed output in units of u_v * 2**-out_frac, saturating."""
        return self.x_bits + self.out_frac + 1

    @property
    def table_size(self) -> int:
        """Entries of the exp2 table: 2**logit_frac."""
        return 1 << self.logit_frac

    def recent_tokens(self, T: int) -> int:
        """Tokens of a T-token context read at 8 bits: the last min(recent, T)."""
        return min(self.recent, T)

    @property
    def peak_macs_per_cycle(self) -> int:
        """K side and V side, every query head: 2 * heads * lanes."""
        return 2 * self.heads * self.lanes

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name that encodes every field, for generated files and build caches."""
        return (f"kv4_d{self.head_dim}_l{self.lanes}_t{self.max_t}_h{self.heads}"
                f"_x{self.x_bits}{'_rot' if self.rotate else ''}_r{self.recent}")


def exp2_table(config: KV4Config) -> tuple[int, ...]:
    """TABLE[j] = round(2**p_frac * 2**(-j / 2**logit_frac)), j < 2**logit_frac: the
    fractional part of exp2 (the integer part is a right shift)."""
    n = config.table_size
    return tuple(int(round((1 << config.p_frac) * 2.0 ** (-j / n))) for j in range(n))
