"""Configuration of the LUT-based mpGEMM block (DESIGN §3.4): the single source
of truth shared by hdl.lut, golden.lut, quantflow.lut and cosim.lut.

Standard library only (hdl reads it without torch).

Two objects:
  * `LUTConfig`  - the hardware (fixed when the RTL is generated): activation
    rows per tile, weight columns per tile, lookup lanes, K and the group.
  * `LUTMode`    - the weight format, chosen at *run time* without new RTL:
    W1, W2, W4 (1, 2 or 4 bit planes) or ternary {-1, 0, 1} (2-bit codes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.formats import (ACC_BITS, ACT_BITS, INT8_ABS_MAX, SCALE_PAIR_BITS, W8_ABS_MAX,
                            int32_safe_terms)
from golden.mixpe_config import MIXPE_GROUP_RANGE, check_reduction
from golden.validate import check_bool, check_choice, check_counts, check_int, check_multiple

__all__ = ["LUT_K_CHUNK", "LUT_STORED_ENTRIES", "LUT_PLANE_BITS", "LUT_MAX_PLANES",
           "LUT_MAX_K", "LUTConfig", "LUTMode", "MODES"]

#: Activations per table: one table holds all sums +-a0 +-a1 +-a2 +-a3.
LUT_K_CHUNK = 4
#: Of the 2**4 = 16 sums only 8 are stored; T[~idx] = -T[idx] gives the rest.
LUT_STORED_ENTRIES = (1 << LUT_K_CHUNK) // 2
#: Weight bit-widths the hardware reads as bit planes (the run-time plane count).
LUT_PLANE_BITS = (1, 2, 4)
LUT_MAX_PLANES = max(LUT_PLANE_BITS)
#: Same int32 safety bound as MixPE: sum_k |a_k| * |w8_k| <= 128 * 255 * K.
LUT_MAX_K = int32_safe_terms(INT8_ABS_MAX, W8_ABS_MAX)


@dataclass(frozen=True, kw_only=True)
class LUTMode:
    """The run-time weight format. `bits` is the number of bit planes the
    hardware walks (1, 2 or 4). `ternary=True` means BitNet b1.58 weights
    w in {-1, 0, 1} stored as 2-bit codes q = w + 1 in {0, 1, 2} with zero
    point z = 1 (so w8 = (q - 1) * s2); it needs bits == 2."""

    bits: int
    ternary: bool = False

    def __post_init__(self):
        hint = "use W1, W2, W4 or ternary (LUTMode(bits=2, ternary=True))"
        check_choice("bits", self.bits, LUT_PLANE_BITS, hint=hint)
        check_bool("ternary", self.ternary)
        if self.ternary and self.bits != 2:
            raise ValueError(f"ternary weights are 2-bit codes; use LUTMode(bits=2, "
                             f"ternary=True), got bits={self.bits}")

    @classmethod
    def parse(cls, text: str) -> "LUTMode":
        """'w1', 'w2', 'w4' or 'ternary' (case-insensitive)."""
        key = str(text).strip().lower()
        if key in MODES:
            return MODES[key]
        raise ValueError(f"unknown LUT weight format {text!r}; use one of {sorted(MODES)}")

    @property
    def planes(self) -> int:
        """Bit planes the table path walks: one per weight bit."""
        return self.bits

    @property
    def levels(self) -> int:
        """Largest code, 2**bits - 1 (the L of the odd-code identity)."""
        return (1 << self.bits) - 1

    @property
    def max_code(self) -> int:
        """Largest code the format allows (2 for ternary, else levels)."""
        return 2 if self.ternary else self.levels

    @property
    def name(self) -> str:
        """"ternary" or "w<bits>", as used in file and case names."""
        return "ternary" if self.ternary else f"w{self.bits}"

    def as_dict(self) -> dict:
        """The mode as a plain dict of its fields."""
        return {"bits": self.bits, "ternary": self.ternary}


MODES = {"w1": LUTMode(bits=1), "w2": LUTMode(bits=2), "w4": LUTMode(bits=4),
         "ternary": LUTMode(bits=2, ternary=True)}


@dataclass(frozen=True, kw_only=True)
class LUTConfig:
    """A LUT mpGEMM block (DESIGN §3.4): one tile computes
    acc[m, n] = sum_k a[m, k] * w8[n, k] for m < rows, n < cols ("elongated":
    few rows, many columns), with `lanes` table lookups per row per cycle.
    The table of each row is built once per 4 activations and serves all
    `cols` columns: cols / lanes slices x planes cycles.

    Memory-word layouts (element 0 in the least-significant bits):
      * act word:   4*rows int8, element 4r + l = a[m0 + r, 4c + l]
        -> act_word_bits = 32*rows; words ordered (tile_m, chunk c).
      * code word (bit-plane layout): `lanes` 4-bit table indices, element l =
        plane i of q[n0 + s*lanes + l, 4c .. 4c+3] (bit t = bit i of the code
        at k = 4c + t) -> code_word_bits = 4*lanes; words ordered
        (tile_n, chunk c, slice s, plane i from planes-1 down to 0).
      * scale word: `lanes` pairs (s2, z*s2) as MixPE's (s2 bits [0, 8), z*s2
        bits [8, 16)) -> 16*lanes bits; words ordered (tile_n, group j, slice s).
      * result word: rows*lanes int32, element r*lanes + l = acc[m0 + r,
        n0 + s*lanes + l] -> 32*rows*lanes bits; words ordered (tile_n,
        tile_m, slice s).
    """

    rows: int = 1
    cols: int = 64
    lanes: int = 8
    K: int = 1024
    group: int = 64

    def __post_init__(self):
        check_counts(self, "rows", "cols", "lanes", "K")
        lo, hi = MIXPE_GROUP_RANGE
        check_int("group", self.group, lo, hi,
                  hint="as MixPE's, so the same quantized weights run on both")
        check_multiple("cols", self.cols, "lanes", self.lanes,
                       hint=f"choose lanes dividing cols (e.g. lanes="
                            f"{max(d for d in range(1, self.lanes + 1) if self.cols % d == 0)})")
        if self.group % LUT_K_CHUNK:
            raise ValueError(f"group={self.group} is not a multiple of {LUT_K_CHUNK} (one "
                             f"table covers {LUT_K_CHUNK} activations); use a multiple of 4")
        if self.K % LUT_K_CHUNK:
            raise ValueError(f"K={self.K} is not a multiple of {LUT_K_CHUNK}; pad K with "
                             f"zero activations/weights to a multiple of 4")
        check_reduction(self.K, self.group, LUT_MAX_K)
        # The RTL's time-shared dequantization walk (hdl.lut.dq_lanes_per_unit) must
        # finish within a group even with one lane per unit: checked here, not at
        # elaboration, so a config that validates always generates.
        max_rows = min(self.group // LUT_K_CHUNK - 1, self.group // self.slices)
        if self.rows > max_rows:
            need = max(LUT_K_CHUNK * (self.rows + 1), -(-self.slices * self.rows // 4) * 4)
            fixes = ([f"rows <= {max_rows}"] if max_rows >= 1 else []) + \
                ([f"group >= {need}"] if need <= hi else []) + ["more lanes (fewer slices)"]
            raise ValueError(f"rows={self.rows} is too many for group={self.group} with "
                             f"{self.slices} column slices (cols/lanes): the dequantization "
                             f"walk needs rows <= group/4 - 1 and slices*rows <= group; use "
                             f"{', '.join(fixes[:-1])} or {fixes[-1]}")

    # --- derived quantities (never re-derive these elsewhere) ---
    @property
    def chunks(self) -> int:
        """Tables per tile and row: K / 4."""
        return self.K // LUT_K_CHUNK

    @property
    def group_chunks(self) -> int:
        """4-element chunks per quantization group."""
        return self.group // LUT_K_CHUNK

    @property
    def groups(self) -> int:
        """Quantization groups along K."""
        return self.K // self.group

    @property
    def slices(self) -> int:
        """Column slices a table serves: ceil(cols / lanes) (= cols / lanes)."""
        return -(-self.cols // self.lanes)

    def beats_per_tile(self, mode: LUTMode) -> int:
        """Code beats (= cycles at full rate) per tile: planes * K/4 * slices."""
        return mode.planes * self.chunks * self.slices

    def peak_macs_per_cycle(self, mode: LUTMode) -> int:
        """rows * lanes lookups per cycle, each covering 4 k of one plane."""
        return self.rows * self.lanes * LUT_K_CHUNK // mode.planes

    @property
    def act_word_bits(self) -> int:
        """Width of an activation-stream word: 4 INT8 activations per row."""
        return ACT_BITS * LUT_K_CHUNK * self.rows

    @property
    def code_word_bits(self) -> int:
        """Width of a code-stream word: one 4-bit table index per lane."""
        return LUT_K_CHUNK * self.lanes

    @property
    def scale_word_bits(self) -> int:
        """Width of a scale-stream word: one (s2, z) pair per lane."""
        return SCALE_PAIR_BITS * self.lanes

    @property
    def result_word_bits(self) -> int:
        """Width of a result word: one int32 accumulator per row and lane."""
        return ACC_BITS * self.rows * self.lanes

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name that encodes every field, for generated files and build caches."""
        return (f"lut_r{self.rows}_c{self.cols}_l{self.lanes}_k{self.K}_g{self.group}")
