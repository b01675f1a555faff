"""MixPE array configuration (DESIGN §3.3): the single source of truth shared
by hdl.mixpe, golden.mixpe, quantflow.mixpe and cosim.mixpe.

Standard library only, so that `hdl` reads it without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.formats import (ACC_BITS, ACT_BITS, INT8_ABS_MAX, SCALE_PAIR_BITS, W8_ABS_MAX,
                            int32_safe_terms)
from golden.validate import check_choice, check_counts, check_int

__all__ = ["MIXPE_WEIGHT_BITS", "MIXPE_GROUP_RANGE", "MIXPE_MAX_K", "MixPEConfig",
           "suggest_group", "check_reduction"]

MIXPE_WEIGHT_BITS = (2, 3, 4, 8)
MIXPE_GROUP_RANGE = (32, 256)
#: Largest K for which sum_k |a_k| * |w8_k| stays inside int32.
MIXPE_MAX_K = int32_safe_terms(INT8_ABS_MAX, W8_ABS_MAX)


def suggest_group(K: int, group: int) -> int:
    """A divisor of K to propose when `group` does not divide K: the divisor
    nearest to `group` among MixPE's supported group sizes, else any divisor."""
    lo, hi = MIXPE_GROUP_RANGE
    divs = [d for d in range(1, K + 1) if K % d == 0]
    pool = [d for d in divs if lo <= d <= hi] or divs
    # prefer powers of two (hardware-friendly), then closeness to the request
    return min(pool, key=lambda d: (d & (d - 1) != 0, abs(d - group)))


def check_reduction(K: int, group: int, max_k: int) -> None:
    """K (an int >= 1) is a whole number of groups and at most `max_k`, the
    longest reduction the int32 accumulator cannot overflow on."""
    # the K limit first: no group fixes it, so a group suggested for such a K would
    # only fail next
    if K > max_k:
        raise ValueError(f"K={K} exceeds {max_k}: the int32 accumulator could overflow; "
                         f"split the reduction")
    if K % group:
        lo, hi = MIXPE_GROUP_RANGE
        g = suggest_group(K, group)
        padded = -(-K // group) * group
        fixes = ([f"choose a group that divides K, e.g. group={g}"] if lo <= g <= hi else []) \
            + ([f"zero-pad K to {padded}"] if padded <= max_k else [])
        raise ValueError(f"K={K} is not a multiple of group={group}; "
                         f"{' or '.join(fixes) or 'split the reduction'}")


@dataclass(frozen=True, kw_only=True)
class MixPEConfig:
    """A MixPE array (DESIGN §3.3): `rows` activation rows x `cols` output
    channels, reduction length `K`, `bits`-bit unsigned weight codes with one
    integer scale `s2` and zero point `z` per `group` consecutive k.

    One tile computes acc[m, n] = sum_k a[m, k] * w8[n, k] for m < rows, n < cols.
    rows == 1 is the GEMV array; rows > 1 the GEMM array.

    Memory-word layouts (shared by quantflow's images, the RTL memories and the
    cosim drivers; element 0 sits in the least-significant bits of a word):
      * activation word: `rows` signed INT8 values a[m0 + 0 .. rows-1, k]
        -> `act_word_bits` = 8 * rows; words ordered by (tile_m, k).
      * code word: `cols` unsigned `bits`-bit codes q[n0 + 0 .. cols-1, k]
        -> `code_word_bits` = bits * cols; words ordered by (tile_n, k).
      * scale word: `cols` pairs (s2, z*s2), each pair s2 in bits [0, 8) and
        z*s2 in bits [8, 16) -> `scale_word_bits` = 16 * cols; words ordered by
        (tile_n, group).
      * result word: `cols` int32 acc[m, n0 + 0 .. cols-1] -> 32 * cols bits;
        one word per activation row m of a tile.
    """

    bits: int = 4
    group: int = 64
    rows: int = 1
    cols: int = 8
    K: int = 1024

    def __post_init__(self):
        check_choice("bits", self.bits, MIXPE_WEIGHT_BITS,
                     hint="pick the nearest supported width")
        lo, hi = MIXPE_GROUP_RANGE
        check_int("group", self.group, lo, hi,
                  hint="64 or 128 consecutive k are usual")
        check_counts(self, "rows", "cols", "K")
        check_reduction(self.K, self.group, MIXPE_MAX_K)

    # --- derived quantities (never re-derive these elsewhere) ---
    @property
    def levels(self) -> int:
        """Largest code value, 2**bits - 1."""
        return (1 << self.bits) - 1

    @property
    def groups(self) -> int:
        """Quantization groups along K."""
        return self.K // self.group

    @property
    def peak_macs_per_cycle(self) -> int:
        """MACs the rows x cols PE array does per cycle."""
        return self.rows * self.cols

    @property
    def dq_lanes(self) -> int:
        """Time-shared dequantization lanes of the MixPE array: ceil(rows*cols /
        group). A lane visits one PE per cycle, so with at most `group` PEs it
        finishes a group before the next group's sums arrive."""
        return -(-self.rows * self.cols // self.group)

    @property
    def act_word_bits(self) -> int:
        """Width of an activation-stream word: one INT8 per row."""
        return ACT_BITS * self.rows

    @property
    def code_word_bits(self) -> int:
        """Width of a code-stream word: one bits-wide code per column."""
        return self.bits * self.cols

    @property
    def scale_word_bits(self) -> int:
        """Width of a scale-stream word: one (s2, z) pair per column."""
        return SCALE_PAIR_BITS * self.cols

    @property
    def result_word_bits(self) -> int:
        """Width of a result word: one int32 accumulator per column."""
        return ACC_BITS * self.cols

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name that encodes every field, for generated files and build caches."""
        return f"mixpe_w{self.bits}_g{self.group}_r{self.rows}_c{self.cols}_k{self.K}"
