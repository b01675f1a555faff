"""Configuration of the FlightLLM-style sparse DSP chain (DESIGN §3.5).

Standard library only, so that `hdl` can read it without torch.

Two kinds of settings:
  * `SparseDSPConfig` is the hardware (fixed when the Verilog is generated):
    `L` multiply-accumulate stages in `L / group_len` DSP groups, the dense
    reduction length `K` of one tile and the quantization group `qgroup` of the
    W4A8 mode.
  * `TileMode` is chosen per weight tile at run time (one `ctrl` beat): the N:M
    pattern, W8A8 or W4A8, and `span`, how many DSP groups pass their partial sum
    on before a reduction node emits it (span = L/group_len: one long dot product;
    span = 1: L/group_len short ones).

Word layouts of the streams (element 0 in the least-significant bits):
  ctrl   : {pattern: 3 bits (index into PATTERNS), w4: 1 bit, span_log: SPAN_LOG_BITS}
  act    : `window_max` = MAX_RATIO * L signed INT8 activations; lanes >= window unused
  weight : `L` lanes of {value: 8 bits, index: INDEX_BITS}; W8A8: value is the int8
           weight, W4A8: value[0:4] is the unsigned code q; index = position of the
           kept weight inside its block of M (0 for dense)
  scale  : `L/group_len` lanes of {s2: 8 bits, z: 4 bits}, lane s = segment s;
           one beat per quantization group, W4A8 tiles only
  result : `L/group_len` lanes of int32; lane s = segment s (lanes >= segments are 0)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.formats import ACC_BITS, ACT_BITS, INT8_ABS_MAX, SCALE_BITS, int32_safe_terms

from golden.mixpe_config import MIXPE_GROUP_RANGE
from golden.validate import check_choice, check_counts, check_int, check_pow2, expect_type

__all__ = [
    "PATTERNS", "PATTERN_NAMES", "MAX_RATIO", "MAX_N", "MAX_M", "INDEX_BITS",
    "W4_BITS", "W8_QMAX", "DSP_ACC_BITS", "MODES", "SPAN_LOG_BITS",
    "SparseDSPConfig", "TileMode", "parse_pattern", "pattern_name",
]

#: Supported N:M patterns (N kept out of each block of M consecutive k), in the
#: order of their run-time code. Dense is 1:1 (one weight per block, index 0).
PATTERNS: tuple[tuple[int, int], ...] = ((1, 1), (2, 4), (1, 4), (2, 8), (4, 8))
PATTERN_NAMES: tuple[str, ...] = tuple("dense" if n == m else f"{n}:{m}" for n, m in PATTERNS)
#: Largest M/N: the activation window of a beat is at most MAX_RATIO * L wide.
MAX_RATIO = max(m // n for n, m in PATTERNS)
MAX_N = max(n for n, _ in PATTERNS)
MAX_M = max(m for _, m in PATTERNS)
#: Width of the index field in a weight lane (log2 of the largest M).
INDEX_BITS = (MAX_M - 1).bit_length()
#: Width of the pattern code in the ctrl word.
PATTERN_BITS = (len(PATTERNS) - 1).bit_length()
#: W4A8 codes are 4-bit unsigned (DESIGN §3.2); W8A8 weights per-channel symmetric int8.
W4_BITS = 4
W8_QMAX = 127
#: Width of the DSP48E2 P register: the chain accumulates in 48 bits.
DSP_ACC_BITS = 48
MODES = ("w8a8", "w4a8")
#: Bits of span_log in the ctrl word (span up to 2**7 DSP groups).
SPAN_LOG_BITS = 3

#: Largest K whose int8 x int8 sums cannot leave int32.
_MAX_K = int32_safe_terms(INT8_ABS_MAX, INT8_ABS_MAX)


def parse_pattern(pattern: str | tuple[int, int]) -> tuple[int, int]:
    """'dense', '2:4', (2, 4) -> (N, M); refuses unsupported patterns."""
    expect_type("pattern", pattern, (str, tuple))
    if isinstance(pattern, str):
        p = pattern.strip().lower()
        if p == "dense":
            return (1, 1)
        try:
            n, m = (int(x) for x in p.split(":"))
        except ValueError:
            raise ValueError(f"pattern {pattern!r} is not 'dense' or 'N:M'; use one of "
                             f"{list(PATTERN_NAMES)}") from None
        pattern = (n, m)
    if (isinstance(pattern, tuple) and len(pattern) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pattern)):
        if pattern[0] == pattern[1]:
            pattern = (1, 1)
        if pattern in PATTERNS:
            return pattern
    raise ValueError(f"unsupported sparsity pattern {pattern!r}; use one of "
                     f"{list(PATTERN_NAMES)}")


def pattern_name(pattern: str | tuple[int, int]) -> str:
    """The canonical name ('dense', '2:4', ...) of a pattern given as a name or an (N, M) pair."""
    return PATTERN_NAMES[PATTERNS.index(parse_pattern(pattern))]


@dataclass(frozen=True, kw_only=True)
class SparseDSPConfig:
    """A chain of `L` DSP stages in groups of `group_len`, tiles of `K` dense k
    positions, W4A8 quantization groups of `qgroup` k (DESIGN §3.3, §3.5)."""

    L: int = 8
    group_len: int = 4
    K: int = 512
    qgroup: int = 64

    def __post_init__(self):
        check_counts(self, "L", "group_len", "K")
        lo, hi = MIXPE_GROUP_RANGE
        check_int("qgroup", self.qgroup, lo, hi)
        check_pow2("L", self.L, hint=f"the run-time window arithmetic is shifts; use "
                                     f"L={1 << (self.L.bit_length() - 1)}")
        if self.L % self.group_len:
            raise ValueError(f"group_len={self.group_len} does not divide L={self.L}; choose a "
                             f"DSP group length that divides the chain, e.g. "
                             f"{[d for d in range(1, self.L + 1) if self.L % d == 0]}")
        # MAX_N is a power of two, so a power of two >= MAX_N is a multiple of it.
        check_pow2("group_len", self.group_len, MAX_N,
                   hint=f"a power of two and a multiple of {MAX_N} so a DSP group holds "
                        f"whole N:M blocks of every pattern; use "
                        f"group_len={max(MAX_N, 1 << (self.group_len.bit_length() - 1))}")
        if (self.L // self.group_len) > (1 << ((1 << SPAN_LOG_BITS) - 1)):
            raise ValueError(f"L/group_len={self.L // self.group_len} groups exceed the "
                             f"ctrl word's span field; use longer DSP groups")
        if self.K % self.window_max:
            raise ValueError(f"K={self.K} must be a multiple of the widest activation window "
                             f"{self.window_max} (= {MAX_RATIO} x L) so that every pattern "
                             f"and group split divides it; use "
                             f"K={-(-self.K // self.window_max) * self.window_max}")
        if self.K > _MAX_K:
            raise ValueError(f"K={self.K} exceeds {_MAX_K}: int8 x int8 sums could leave "
                             f"int32; split the reduction")
        if self.qgroup % self.window_max or self.K % self.qgroup:
            raise ValueError(f"qgroup={self.qgroup} must be a multiple of the widest window "
                             f"{self.window_max} and divide K={self.K}; use qgroup="
                             f"{max(self.window_max, lo)} or another such divisor of K")

    # --- derived quantities (never re-derive these elsewhere) ---
    @property
    def n_groups(self) -> int:
        """DSP groups = reduction nodes = result / scale lanes."""
        return self.L // self.group_len

    @property
    def window_max(self) -> int:
        """Activation lanes of one act beat (widest window, 1:4 with span = all)."""
        return MAX_RATIO * self.L

    @property
    def spans(self) -> tuple[int, ...]:
        """Admissible run-time spans: powers of two dividing n_groups."""
        return tuple(1 << i for i in range(self.n_groups.bit_length()) if
                     self.n_groups % (1 << i) == 0)

    @property
    def w4_group_sum_bits(self) -> int:
        """Signed width that holds one W4A8 quantization group's sum of
        a * (q - z): |a| <= 128, |q - z| <= 15, at most qgroup terms."""
        return (128 * ((1 << W4_BITS) - 1) * self.qgroup).bit_length() + 1

    @property
    def weight_lane_bits(self) -> int:
        """Width of one stage's weight lane: an INT8 value and its N:M index."""
        return ACT_BITS + INDEX_BITS

    @property
    def act_word_bits(self) -> int:
        """Width of an activation word: window_max INT8 activations."""
        return ACT_BITS * self.window_max

    @property
    def weight_word_bits(self) -> int:
        """Width of a weight word: one weight lane per stage."""
        return self.weight_lane_bits * self.L

    @property
    def scale_lane_bits(self) -> int:
        """Width of one group's scale lane: the W4A8 scale s2 and zero point z."""
        return SCALE_BITS + W4_BITS

    @property
    def scale_word_bits(self) -> int:
        """Width of a scale word: one scale lane per DSP group."""
        return self.scale_lane_bits * self.n_groups

    @property
    def ctrl_word_bits(self) -> int:
        """Width of a tile's control word: pattern code, W4A8 flag and log2 span."""
        return PATTERN_BITS + 1 + SPAN_LOG_BITS

    @property
    def result_word_bits(self) -> int:
        """Width of a result word: one int32 accumulator per DSP group."""
        return ACC_BITS * self.n_groups

    def peak_macs_per_cycle(self, pattern: str | tuple[int, int] = "dense") -> int:
        """Dense-equivalent MACs per cycle: L x M/N."""
        n, m = parse_pattern(pattern)
        return self.L * m // n

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name that encodes every field, for generated files and build caches."""
        return f"sparse_dsp_l{self.L}_g{self.group_len}_k{self.K}_q{self.qgroup}"


@dataclass(frozen=True, kw_only=True)
class TileMode:
    """Run-time setting of one weight tile: pattern ('dense' or 'N:M'), mode
    ('w8a8' / 'w4a8') and span (DSP groups per dot product)."""

    pattern: str = "dense"
    mode: str = "w8a8"
    span: int = 1

    def __post_init__(self):
        object.__setattr__(self, "pattern", pattern_name(self.pattern))
        check_choice("mode", self.mode, MODES)
        check_pow2("span", self.span, hint="span counts DSP groups per dot product")

    @property
    def nm(self) -> tuple[int, int]:
        """The pattern as (N, M)."""
        return parse_pattern(self.pattern)

    @property
    def pattern_code(self) -> int:
        """The pattern's index in PATTERNS, as the control word carries it."""
        return PATTERNS.index(self.nm)

    @property
    def w4(self) -> bool:
        """Whether the tile is W4A8 (otherwise W8A8)."""
        return self.mode == "w4a8"

    def check(self, config: SparseDSPConfig) -> "TileMode":
        """Refuse a span the configuration cannot split into (group length not
        dividing L is already refused by the config)."""
        if self.span not in config.spans:
            raise ValueError(f"span={self.span} does not divide the {config.n_groups} DSP "
                             f"groups of {config.name()}; use one of {list(config.spans)}")
        return self

    # derived per configuration
    def segments(self, config: SparseDSPConfig) -> int:
        """Dot products the chain computes at once: DSP groups / span."""
        return config.n_groups // self.check(config).span

    def seg_len(self, config: SparseDSPConfig) -> int:
        """Stages in one dot product: group_len * span."""
        return config.group_len * self.check(config).span

    def window(self, config: SparseDSPConfig) -> int:
        """Dense k one beat covers per dot product: seg_len * M / N."""
        n, m = self.nm
        return self.seg_len(config) * m // n

    def beats(self, config: SparseDSPConfig) -> int:
        """Weight beats per output: K / window."""
        return config.K // self.window(config)

    def qgroup_beats(self, config: SparseDSPConfig) -> int:
        """Beats per W4A8 quantization group (W8A8: the whole tile)."""
        return config.qgroup // self.window(config) if self.w4 else self.beats(config)

    def ctrl_word(self, config: SparseDSPConfig) -> int:
        """The control word the chain reads for this tile (ctrl_word_bits wide)."""
        self.check(config)
        return (self.pattern_code | (int(self.w4) << PATTERN_BITS)
                | ((self.span.bit_length() - 1) << (PATTERN_BITS + 1)))

    def as_dict(self) -> dict:
        """The mode as a plain dict of its fields."""
        return {"pattern": self.pattern, "mode": self.mode, "span": self.span}
