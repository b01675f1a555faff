"""Configuration of the NPU-PIM bank block (DESIGN §3.6, NeuPIMs arXiv 2403.00579).

Standard library only, so that `hdl` can read it without torch. Holds the
command encodings and checker rule names that hdl, golden and cosim share.

Storage and words: a bank has `rows` rows of `columns` INT8 elements. A column
word holds `lanes` elements (element 0 in the least-significant byte), so a
row is `col_words = columns // lanes` words, a RD/WR moves one word and one
COMP multiplies one word of the open PIM row with the matching word of the
bank's global buffer in `lanes` multipliers. `pack_word` / `unpack_word` are
that word format.

Requests (what the scheduler takes, in order, on two streams):
  MemReq(bank, row, col, write, data)    col = word index in the row,
                                         data = packed word (write only)
  GemvJob(bank, row, nrows, vector)      vector = `columns` INT8 values (the
                                         job's col_words GWR beats)
Their words in the RTL's request memories have the fields of
`PIMConfig.memreq_fields` / `job_fields`, LSB first.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from golden.formats import ACT_BITS, ACT_MAX, ACT_MIN, INT8_ABS_MAX, int32_safe_terms
from golden.validate import check_choice, check_counts, check_int

__all__ = ["PIMConfig", "PIM_MODES", "MCMD", "PCMD", "RULES", "rule_bit", "rule_mask",
           "TIMING_FIELDS", "PIM_MAX_COLUMNS", "JOB_STEPS", "MemReq", "GemvJob", "Cmd",
           "pack_word", "unpack_word"]

PIM_MODES = ("dual", "blocked")

#: Memory-path commands (NPU side, memory row buffer). 0 = no command.
MCMD = {"NOP": 0, "ACT": 1, "RD": 2, "WR": 3, "PRE": 4}
#: PIM-path commands (PIM row buffer, global buffer, MAC lanes). 0 = no command.
PCMD = {"NOP": 0, "PACT": 1, "GWR": 2, "COMP": 3, "RDRES": 4, "PPRE": 5}

#: Checker rules, one error bit each (bit i = RULES[i]). The hardware checker
#: and golden.pim's model evaluate the same rules; docs/pim.md explains each.
RULES = (
    "act_open",        # ACT while the memory row buffer is open
    "act_trp",         # ACT sooner than tRP after the bank's precharge
    "act_conflict",    # ACT of the row the PIM buffer holds (dual) / PIM row open (blocked)
    "col_closed",      # RD/WR with the memory row buffer closed
    "col_trcd",        # RD/WR sooner than tRCD after ACT
    "col_tccd",        # RD/WR sooner than tCCD_L after the bank's previous RD/WR
    "pre_closed",      # PRE with the memory row buffer closed
    "pre_tras",        # PRE sooner than tRAS after ACT
    "pre_twr",         # PRE sooner than tWR after the last WR
    "pact_open",       # PACT while the PIM row buffer is open
    "pact_trp",        # PACT sooner than tRP after the bank's precharge
    "pact_conflict",   # PACT of the row the memory buffer holds (dual) / memory row open (blocked)
    "comp_closed",     # COMP with no PIM row open
    "comp_trcd",       # COMP sooner than tRCD after PACT
    "pcol_tccd",       # GWR/COMP/RDRES sooner than tCCD_L after the previous one
    "ppre_closed",     # PPRE with the PIM row buffer closed
    "ppre_tras",       # PPRE sooner than tRAS after PACT
    "dual_act",        # ACT and PACT to the same bank in one cycle
    "row_range",       # row address >= rows
    "bus_conflict",    # two data-bus transfers overlap (burst = tCCD_S cycles)
    "tfaw",            # more than 4 activations (ACT + PACT) in a tFAW window
    "blocked_excl",    # blocked mode: memory and PIM commands while the other side has a row open
)


def rule_bit(name: str) -> int:
    """Error-flag bit of checker rule `name`."""
    try:
        return RULES.index(name)
    except ValueError:
        raise ValueError(f"unknown checker rule {name!r}; rules: {RULES}") from None


def rule_mask(*names: str) -> int:
    """Error flags of the named checker rules."""
    return sum(1 << rule_bit(n) for n in names)


#: Steps of the scheduler's GEMV job engine, in encoding order: per job GWR x
#: col_words, then per row PACT, COMP x col_words, RDRES, PPRE. Each step but
#: IDLE issues the PIM command of its name.
JOB_STEPS = ("IDLE", "GWR", "PACT", "COMP", "RDRES", "PPRE")


#: Timing parameters (cycles), all >= 1.
TIMING_FIELDS = ("tCL", "tRCD", "tRP", "tRAS", "tCCD_S", "tCCD_L", "tWR", "tFAW")
#: Largest row length for which a row's dot product fits int32 without wrapping
#: (|w|, |x| <= 128).
PIM_MAX_COLUMNS = int32_safe_terms(INT8_ABS_MAX, INT8_ABS_MAX)


class MemReq(NamedTuple):
    """One memory-path request: read or write one column word of a bank row."""
    bank: int
    row: int
    col: int
    write: bool
    data: int = 0


class GemvJob(NamedTuple):
    """One GEMV on the PIM path: nrows rows of a bank from `row` on, times an INT8
    vector of `columns` values."""
    bank: int
    row: int
    nrows: int
    vector: tuple  # `columns` INT8 values


class Cmd(NamedTuple):
    """A command on the memory path (path "m") or PIM path (path "p")."""
    path: str
    kind: str
    bank: int
    row: int = 0
    col: int = 0

    @property
    def code(self) -> int:
        """The command's opcode on its path (MCMD or PCMD)."""
        return (MCMD if self.path == "m" else PCMD)[self.kind]


def pack_word(values: Sequence[int], lanes: int) -> int:
    """`lanes` INT8 values -> one word, element 0 in the least-significant byte."""
    if len(values) != lanes:
        raise ValueError(f"a word holds {lanes} values, got {len(values)}")
    w = 0
    for i, v in enumerate(values):
        v = int(v)
        if not ACT_MIN <= v <= ACT_MAX:
            raise ValueError(f"value {v} at lane {i} is outside INT8 [{ACT_MIN}, {ACT_MAX}]")
        w |= (v & 0xFF) << (ACT_BITS * i)
    return w


def unpack_word(word: int, lanes: int) -> list[int]:
    """Inverse of pack_word."""
    out = []
    for i in range(lanes):
        b = (int(word) >> (ACT_BITS * i)) & 0xFF
        out.append(b - 256 if b >= 128 else b)
    return out


@dataclass(frozen=True, kw_only=True)
class PIMConfig:
    """One channel of NeuPIMs-style banks.

    mode     "dual": memory row buffer and PIM row buffer work at the same time;
             "blocked": one row buffer per bank and the channel is either in
             memory mode or in PIM mode (a conventional PIM).
    banks    banks behind the scheduler (shared command and data bus)
    rows, columns, lanes   storage geometry (see the module docstring)
    tCL .. tFAW            timing in cycles (DESIGN §3.6 defaults, HBM2-like);
             tCCD_S is the data-bus burst length (transfers from any banks are
             tCCD_S apart), tCCD_L the column-command spacing within a bank
             (RD/WR on the memory side; GWR/COMP/RDRES on the PIM side).
    quantum  blocked mode only: memory requests served before a waiting GEMV
             job takes the channel (a job then runs to its end).
    max_job_rows  most rows one GEMV job may cover (sizes the job field).
    """

    mode: str = "dual"
    banks: int = 4
    rows: int = 64
    columns: int = 256
    lanes: int = 16
    tCL: int = 14
    tRCD: int = 14
    tRP: int = 14
    tRAS: int = 34
    tCCD_S: int = 1
    tCCD_L: int = 2
    tWR: int = 16
    tFAW: int = 30
    quantum: int = 32
    max_job_rows: int = 16

    def __post_init__(self):
        check_choice("mode", self.mode, PIM_MODES)
        check_counts(self, "banks", "rows", "lanes", "columns")
        if self.columns % self.lanes:
            raise ValueError(
                f"columns={self.columns} is not a multiple of lanes={self.lanes}: a COMP "
                f"consumes one word of `lanes` elements; use columns="
                f"{-(-self.columns // self.lanes) * self.lanes} or a lanes value dividing it")
        if self.columns > PIM_MAX_COLUMNS:
            raise ValueError(f"columns={self.columns} exceeds {PIM_MAX_COLUMNS}: a row's "
                             f"int32 dot product could wrap; split the row")
        for name in TIMING_FIELDS:
            check_int(f"timing {name}", getattr(self, name), 1, hint="a time in cycles")
        check_counts(self, "quantum", "max_job_rows")
        if self.max_job_rows > self.rows:
            raise ValueError(f"max_job_rows={self.max_job_rows} exceeds rows={self.rows}; "
                             f"a job covers consecutive rows of one bank")

    # --- derived quantities (never re-derive these elsewhere) ---
    @property
    def col_words(self) -> int:
        """Column words per row: columns / lanes."""
        return self.columns // self.lanes

    @property
    def word_bits(self) -> int:
        """Width of a column word: lanes INT8 values."""
        return ACT_BITS * self.lanes

    @property
    def bank_words(self) -> int:
        """Column words in one bank."""
        return self.rows * self.col_words

    @property
    def peak_macs_per_cycle(self) -> int:
        """Every bank's lanes busy every cycle (COMPs come tCCD_L apart, so the
        reachable peak is this / tCCD_L)."""
        return self.banks * self.lanes

    @property
    def memreq_fields(self) -> tuple[tuple[str, int], ...]:
        """(field, bits) of a memory request word, LSB first."""
        return (("bank", _bits(self.banks - 1)), ("row", _bits(self.rows - 1)),
                ("col", _bits(self.col_words - 1)), ("write", 1), ("data", self.word_bits))

    @property
    def job_fields(self) -> tuple[tuple[str, int], ...]:
        """(field, bits) of a GEMV job word, LSB first."""
        return (("bank", _bits(self.banks - 1)), ("row", _bits(self.rows - 1)),
                ("nrows", _bits(self.max_job_rows)))

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def timing(self) -> dict:
        """The timing parameters (TIMING_FIELDS) by name."""
        return {k: getattr(self, k) for k in TIMING_FIELDS}

    def name(self) -> str:
        """Module/file name; non-default timing adds a short digest so that two
        configurations never share a name."""
        base = (f"pim_{self.mode}_b{self.banks}_r{self.rows}_c{self.columns}_l{self.lanes}"
                f"_q{self.quantum}_j{self.max_job_rows}")
        defaults = {f.name: f.default for f in dataclasses.fields(PIMConfig)}
        if any(getattr(self, k) != defaults[k] for k in TIMING_FIELDS):
            digest = hashlib.sha1(repr(self.timing()).encode()).hexdigest()[:6]
            base += f"_t{digest}"
        return base


def _bits(max_value: int) -> int:
    """Bits of an unsigned field holding 0..max_value (at least 1)."""
    return max(1, max_value.bit_length())
