"""Golden model of the NeuPIMs-style PIM channel (DESIGN §3.6).

Two parts:

1. Functional (PyTorch, integer-exact): the memory seen by the request stream
   (every read returns the last data written) and the GEMV of a job
   (y[i] = sum_k w[row0 + i, k] * x[k], int32 two's complement).
2. The command-level cycle model (`schedule`): the timing rules of the checker
   (`Checker.violations`, one error bit per rule of golden.pim_config.RULES)
   and the scheduler's policy, cycle by cycle. hdl.pim implements the same
   rules and the same policy; tests hold the two to the same command trace
   and cycle count.

The requests (MemReq, GemvJob), commands (Cmd) and the word format live in
golden.pim_config; workloads and the words the RTL loads in quantflow.pim.

Scheduler policy (both paths in request order, open-page):
  memory path  head request: row hit -> RD/WR; other row open -> PRE; closed -> ACT.
               If the head issues nothing, PRE the lowest bank that must close
               (blocked mode: switching to PIM; dual mode: the PIM path waits
               for that row).
  PIM path     per job: GWR x col_words, then per row PACT, COMP x col_words,
               RDRES, PPRE (golden.pim_config.JOB_STEPS). It sees the memory
               path's command of the same cycle (bus slots, tFAW, same-bank
               activation).
  blocked      channel in MEM or PIM mode. MEM -> PIM when a job waits and the
               memory stream is empty or `quantum` requests were served since
               the last switch (memory rows are closed first); PIM runs one
               job, then returns to MEM if memory requests wait.
Time 0 is the first cycle all request streams present their head; a command
at t with data (RD, RDRES) delivers it in cycle t + tCL.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch

from golden.formats import ACT_MAX, ACT_MIN
from golden.pim_config import RULES, Cmd, GemvJob, MemReq, PIMConfig, pack_word, rule_mask
from golden.tensors import check_range, wrap_int32

__all__ = ["Checker", "ScheduleResult", "schedule", "gemv", "expected_outputs",
           "check_requests"]

_NEVER = -(1 << 40)
_B = {name: rule_mask(name) for name in RULES}


def _flags(rules) -> int:
    """Error bits of the (rule name, broken) pairs."""
    err = 0
    for name, broken in rules:
        if broken:
            err |= _B[name]
    return err


# --------------------------------------------------------------------------- functional
def gemv(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y = W x for INT8 W [n, columns], x [columns] -> int32 (wrapping)."""
    W = torch.as_tensor(weights).to(torch.int64)
    v = torch.as_tensor(x).to(torch.int64)
    if W.dim() != 2 or v.dim() != 1 or W.shape[1] != v.shape[0]:
        raise ValueError(f"gemv needs W [n, K] and x [K], got {tuple(W.shape)} and "
                         f"{tuple(v.shape)}")
    for name, t in (("weights", W), ("x", v)):
        check_range(name, t, ACT_MIN, ACT_MAX, "the bank holds INT8 values")
    return wrap_int32((W * v).sum(dim=1))


def check_requests(config: PIMConfig, mem: Sequence[MemReq], jobs: Sequence[GemvJob]) -> None:
    """Clear errors for requests the hardware cannot take."""
    for i, r in enumerate(mem):
        if not (0 <= r.bank < config.banks and 0 <= r.row < config.rows
                and 0 <= r.col < config.col_words):
            raise ValueError(f"memory request {i} {r[:3]} is outside banks={config.banks} "
                             f"rows={config.rows} col_words={config.col_words}")
        if not 0 <= r.data < (1 << config.word_bits):
            raise ValueError(f"memory request {i}: data is not a {config.word_bits}-bit word")
    for i, j in enumerate(jobs):
        if not 0 <= j.bank < config.banks:
            raise ValueError(f"GEMV job {i}: bank {j.bank} outside 0..{config.banks - 1}")
        if not 1 <= j.nrows <= config.max_job_rows or not 0 <= j.row <= config.rows - j.nrows:
            raise ValueError(f"GEMV job {i}: rows {j.row}..{j.row + j.nrows - 1} must be 1.."
                             f"{config.max_job_rows} consecutive rows inside 0..{config.rows - 1}")
        if len(j.vector) != config.columns:
            raise ValueError(f"GEMV job {i}: vector has {len(j.vector)} values, needs "
                             f"columns={config.columns}")


def expected_outputs(config: PIMConfig, storage: torch.Tensor, mem: Sequence[MemReq],
                     jobs: Sequence[GemvJob]) -> tuple[list[int], list[int]]:
    """(read words in request order, GEMV results in job/row order) for bank
    contents `storage` [banks, rows, columns] INT8 before the run.

    GEMV rows must not be written by the memory stream of the same run (their
    value would depend on timing): ValueError otherwise."""
    check_requests(config, mem, jobs)
    S = torch.as_tensor(storage).to(torch.int64)
    if tuple(S.shape) != (config.banks, config.rows, config.columns):
        raise ValueError(f"storage must be [banks, rows, columns] = "
                         f"{(config.banks, config.rows, config.columns)}, got {tuple(S.shape)}")
    written = {(r.bank, r.row) for r in mem if r.write}
    for i, j in enumerate(jobs):
        for row in range(j.row, j.row + j.nrows):
            if (j.bank, row) in written:
                raise ValueError(f"GEMV job {i} reads bank {j.bank} row {row}, which the "
                                 f"memory stream writes; keep GEMV rows and written rows apart")
    L = config.lanes
    words = {}
    reads = []
    for r in mem:
        key = (r.bank, r.row, r.col)
        if r.write:
            words[key] = r.data
        else:
            if key not in words:
                words[key] = pack_word(S[r.bank, r.row, r.col * L:(r.col + 1) * L].tolist(), L)
            reads.append(words[key])
    results = []
    for j in jobs:
        y = gemv(S[j.bank, j.row:j.row + j.nrows], torch.tensor(list(j.vector)))
        results.extend(int(v) for v in y)
    return reads, results


# --------------------------------------------------------------------------- checker
@dataclass
class _Bank:
    m_open: bool = False
    m_row: int = 0
    m_act: int = _NEVER
    m_pre: int = _NEVER
    m_col: int = _NEVER
    m_wr: int = _NEVER
    p_open: bool = False
    p_row: int = 0
    p_act: int = _NEVER
    p_pre: int = _NEVER
    p_col: int = _NEVER


class Checker:
    """The timing and sequence rules, evaluated on the commands of one cycle.

    `violations(t, m, p)` returns the error bits the pair (memory command m,
    PIM command p; either None) would raise at cycle t; `issue(t, m, p)`
    applies them (and returns the bits). Cycles must be passed in increasing
    order; cycles without a call are idle cycles."""

    def __init__(self, config: PIMConfig):
        self.cfg = config
        self.blocked = config.mode == "blocked"
        self.banks = [_Bank() for _ in range(config.banks)]
        self.bus: set[int] = set()       # busy data-bus cycles (absolute)
        self.acts: deque[int] = deque()  # cycles of recent activations
        self.errors = 0

    def _pre_time(self, b: _Bank) -> int:
        if self.blocked:  # one row buffer: either precharge counts
            return max(b.m_pre, b.p_pre)
        return b.m_pre

    def _ppre_time(self, b: _Bank) -> int:
        if self.blocked:
            return max(b.m_pre, b.p_pre)
        return b.p_pre

    def slots(self, t: int, c: Cmd | None) -> range | None:
        """Data-bus cycles the command `c` issued at t occupies (None: no transfer)."""
        if c is None:
            return None
        if (c.path, c.kind) in (("m", "RD"), ("p", "RDRES")):
            s = t + self.cfg.tCL
        elif (c.path, c.kind) in (("m", "WR"), ("p", "GWR")):
            s = t
        else:
            return None
        return range(s, s + self.cfg.tCCD_S)

    def _mem_violations(self, t: int, m: Cmd) -> int:
        cfg, b = self.cfg, self.banks[m.bank]
        if m.kind == "ACT":
            rules = (("act_open", b.m_open),
                     ("act_trp", t - self._pre_time(b) < cfg.tRP),
                     ("act_conflict", b.p_open and (self.blocked or b.p_row == m.row)),
                     ("row_range", m.row >= cfg.rows))
        elif m.kind in ("RD", "WR"):
            rules = (("col_closed", not b.m_open), ("col_trcd", t - b.m_act < cfg.tRCD),
                     ("col_tccd", t - b.m_col < cfg.tCCD_L))
        elif m.kind == "PRE":
            rules = (("pre_closed", not b.m_open), ("pre_tras", t - b.m_act < cfg.tRAS),
                     ("pre_twr", t - b.m_wr < cfg.tWR))
        else:
            rules = ()
        excl = self.blocked and any(x.p_open for x in self.banks)
        return _flags(rules + (("blocked_excl", excl),))

    def _pim_violations(self, t: int, m: Cmd | None, p: Cmd) -> int:
        cfg, b = self.cfg, self.banks[p.bank]
        if p.kind == "PACT":
            rules = (("pact_open", b.p_open),
                     ("pact_trp", t - self._ppre_time(b) < cfg.tRP),
                     ("pact_conflict", b.m_open and (self.blocked or b.m_row == p.row)),
                     ("row_range", p.row >= cfg.rows),
                     ("dual_act", m is not None and m.kind == "ACT" and m.bank == p.bank))
        elif p.kind in ("GWR", "COMP", "RDRES"):
            rules = (("pcol_tccd", t - b.p_col < cfg.tCCD_L),)
            if p.kind == "COMP":
                rules += (("comp_closed", not b.p_open), ("comp_trcd", t - b.p_act < cfg.tRCD))
        elif p.kind == "PPRE":
            rules = (("ppre_closed", not b.p_open), ("ppre_tras", t - b.p_act < cfg.tRAS))
        else:
            rules = ()
        excl = self.blocked and (m is not None or any(x.m_open for x in self.banks))
        return _flags(rules + (("blocked_excl", excl),))

    def _channel_violations(self, t: int, m: Cmd | None, p: Cmd | None) -> int:
        """Data bus (each transfer holds tCCD_S consecutive cycles) and tFAW."""
        err = 0
        taken = set()
        for s in (self.slots(t, m), self.slots(t, p)):
            if s is None:
                continue
            if any(x in self.bus or x in taken for x in s):
                err |= _B["bus_conflict"]
            taken.update(s)
        n_act = ((m is not None and m.kind == "ACT") + (p is not None and p.kind == "PACT"))
        if n_act:
            recent = sum(1 for a in self.acts if t - a < self.cfg.tFAW)
            if recent + n_act > 4:
                err |= _B["tfaw"]
        return err

    def violations(self, t: int, m: Cmd | None, p: Cmd | None) -> int:
        """Bit mask (golden.pim_config.RULES) of the timing rules that issuing the
        commands m, p at cycle t would break."""
        err = self._channel_violations(t, m, p)
        if m is not None:
            err |= self._mem_violations(t, m)
        if p is not None:
            err |= self._pim_violations(t, m, p)
        return err

    def issue(self, t: int, m: Cmd | None, p: Cmd | None) -> int:
        """Issue m and p at cycle t: record their violations, update the bank and bus
        state; returns the violation mask."""
        err = self.violations(t, m, p)
        self.errors |= err
        for c in (m, p):
            s = self.slots(t, c)
            if s is not None:
                self.bus.update(s)
        while self.acts and t - self.acts[0] >= self.cfg.tFAW:
            self.acts.popleft()
        if m is not None:
            b = self.banks[m.bank]
            if m.kind == "ACT":
                b.m_open, b.m_row, b.m_act = True, m.row, t
                self.acts.append(t)
            elif m.kind in ("RD", "WR"):
                b.m_col = t
                if m.kind == "WR":
                    b.m_wr = t
            elif m.kind == "PRE":
                b.m_open, b.m_pre = False, t
        if p is not None:
            b = self.banks[p.bank]
            if p.kind == "PACT":
                b.p_open, b.p_row, b.p_act = True, p.row, t
                self.acts.append(t)
            elif p.kind in ("GWR", "COMP", "RDRES"):
                b.p_col = t
            elif p.kind == "PPRE":
                b.p_open, b.p_pre = False, t
        return err


# --------------------------------------------------------------------------- scheduler
@dataclass
class ScheduleResult:
    """A scheduled run: its cycles, the command trace, the delivery cycles of reads
    and GEMV results, and any timing violations."""
    config: PIMConfig
    cycles: int                       # first cycle with nothing left to do (0 = empty run)
    trace: list[tuple[int, Cmd | None, Cmd | None]] = field(repr=False)
    read_times: list[int] = field(repr=False)    # delivery cycle of each read
    result_times: list[int] = field(repr=False)  # delivery cycle of each GEMV result
    errors: int = 0

    @property
    def commands(self) -> int:
        """Commands issued on both paths."""
        return sum((m is not None) + (p is not None) for _, m, p in self.trace)

    def count(self, kind: str) -> int:
        """Commands of one kind (e.g. "ACT", "COMP") issued on either path."""
        return sum((m is not None and m.kind == kind) + (p is not None and p.kind == kind)
                   for _, m, p in self.trace)

    @property
    def comp_cycles(self) -> int:
        """Cycles in which some bank's PIM lanes multiply (one per COMP)."""
        return self.count("COMP")

    @property
    def bus_cycles(self) -> int:
        """Busy data-bus cycles (RD, WR, GWR, RDRES; tCCD_S each)."""
        return sum(self.count(k) for k in ("RD", "WR", "GWR", "RDRES")) * self.config.tCCD_S

    def utilisation(self) -> dict:
        """Busy fractions of the run: PIM lanes (COMP cycles per bank) and the data bus."""
        c = max(1, self.cycles)
        return {"pim_lanes": round(self.comp_cycles / (c * self.config.banks), 4),
                "data_bus": round(self.bus_cycles / c, 4)}


class _Scheduler:
    """The policy's state between cycles (module docstring). The job engine's
    step is a name of golden.pim_config.JOB_STEPS."""

    def __init__(self, config: PIMConfig, mem: Sequence[MemReq], jobs: Sequence[GemvJob]):
        self.cfg, self.mem, self.jobs = config, mem, jobs
        self.blocked = config.mode == "blocked"
        self.chk = Checker(config)
        self.mi = self.ji = 0                      # next memory request / job
        self.step, self.jbank, self.jrow, self.jleft, self.jcol = "IDLE", 0, 0, 0, 0
        # blocked mode: channel owned by PIM, switch requested, requests served
        # since the last switch, the PIM turn has run its job
        self.bmode_pim, self.pending, self.served, self.pim_ran = False, False, 0, False
        self.trace, self.read_times, self.result_times = [], [], []
        self.last_event = -1

    def finished(self, t: int) -> bool:
        return (self.mi == len(self.mem) and self.ji == len(self.jobs)
                and self.step == "IDLE" and t > self.last_event)

    def memory_command(self, t: int, mhead: MemReq | None) -> Cmd | None:
        """The head request's next command, else a precharge someone waits for."""
        banks = self.chk.banks
        hit_bank = -1
        if mhead is not None and (not self.blocked or not (self.bmode_pim or self.pending)):
            b = banks[mhead.bank]
            if b.m_open and b.m_row == mhead.row:
                hit_bank = mhead.bank
                cand = Cmd("m", "WR" if mhead.write else "RD", mhead.bank, mhead.row, mhead.col)
            elif b.m_open:
                cand = Cmd("m", "PRE", mhead.bank)
            else:
                cand = Cmd("m", "ACT", mhead.bank, mhead.row)
            if self.chk.violations(t, cand, None) == 0:
                return cand
        for k, b in enumerate(banks):
            need = b.m_open and ((self.blocked and self.pending) or (
                not self.blocked and self.step == "PACT" and self.jbank == k
                and self.jrow == b.m_row))
            if need and k != hit_bank:
                cand = Cmd("m", "PRE", k)
                if self.chk.violations(t, cand, None) == 0:
                    return cand
        return None

    def pim_command(self, t: int, mc: Cmd | None) -> Cmd | None:
        """The job engine's command, checked together with the memory path's."""
        if self.step == "IDLE" or (self.blocked and not self.bmode_pim):
            return None
        bank, row, col = self.jbank, self.jrow, self.jcol
        cand = {"GWR": Cmd("p", "GWR", bank, 0, col), "PACT": Cmd("p", "PACT", bank, row),
                "COMP": Cmd("p", "COMP", bank, row, col), "RDRES": Cmd("p", "RDRES", bank),
                "PPRE": Cmd("p", "PPRE", bank)}[self.step]
        return cand if self.chk.violations(t, mc, cand) == 0 else None

    def issue(self, t: int, mc: Cmd | None, pc: Cmd | None) -> None:
        err = self.chk.issue(t, mc, pc)
        if err:  # pragma: no cover - the policy only issues legal commands
            raise AssertionError(f"scheduler issued illegal commands at {t}: {mc} {pc} "
                                 f"({[r for i, r in enumerate(RULES) if err >> i & 1]})")
        if mc is not None or pc is not None:
            self.trace.append((t, mc, pc))
            self.last_event = max(self.last_event, t)
        for c in (mc, pc):  # a data transfer ends when its burst has left the bus
            slots = self.chk.slots(t, c)
            if slots is not None:
                self.last_event = max(self.last_event, slots[-1])
        if mc is not None and mc.kind == "RD":
            self.read_times.append(t + self.cfg.tCL)
        if pc is not None and pc.kind == "RDRES":
            self.result_times.append(t + self.cfg.tCL)

    def advance_job(self, step_t: str, pc: Cmd | None, mhead: MemReq | None) -> bool:
        """The job engine's next step; returns whether it took a new job."""
        latch = False
        if step_t == "IDLE":
            job_avail = self.ji < len(self.jobs)
            if not self.blocked:
                latch = job_avail
            elif self.bmode_pim:
                latch = job_avail and not (self.pim_ran and mhead is not None)
        if latch:
            j = self.jobs[self.ji]
            self.ji += 1
            self.step, self.jcol = "GWR", 0
            self.jbank, self.jrow, self.jleft = j.bank, j.row, j.nrows
        elif pc is not None:
            if self.step in ("GWR", "COMP"):
                if self.jcol == self.cfg.col_words - 1:
                    self.step, self.jcol = ("PACT" if self.step == "GWR" else "RDRES"), 0
                else:
                    self.jcol += 1
            elif self.step == "PACT":
                self.step = "COMP"
            elif self.step == "RDRES":
                self.step = "PPRE"
            elif self.step == "PPRE":
                if self.jleft > 1:
                    self.step, self.jrow, self.jleft = "PACT", self.jrow + 1, self.jleft - 1
                else:
                    self.step = "IDLE"
        return latch

    def arbitrate(self, step_t: str, latch: bool, any_m_open: bool, mhead: MemReq | None,
                  consumed_mem: bool) -> None:
        """Blocked mode: who owns the channel next cycle (from the state at t)."""
        if not self.bmode_pim:
            if self.pending:
                if not any_m_open:
                    self.bmode_pim, self.pending, self.pim_ran = True, False, False
            elif (self.ji < len(self.jobs) and step_t == "IDLE"
                  and (mhead is None or self.served >= self.cfg.quantum)):
                self.pending = True
            if consumed_mem:
                self.served += 1
        elif latch:
            self.pim_ran = True
        elif step_t == "IDLE" and self.pim_ran and mhead is not None:
            self.bmode_pim, self.served = False, 0

    def cycle(self, t: int) -> None:
        mhead = self.mem[self.mi] if self.mi < len(self.mem) else None
        mc = self.memory_command(t, mhead)
        consumed_mem = mc is not None and mc.kind in ("RD", "WR")
        any_m_open = any(b.m_open for b in self.chk.banks)  # state at t
        step_t = self.step
        pc = self.pim_command(t, mc)
        self.issue(t, mc, pc)
        latch = self.advance_job(step_t, pc, mhead)
        if self.blocked:
            self.arbitrate(step_t, latch, any_m_open, mhead, consumed_mem)
        if consumed_mem:
            self.mi += 1


def schedule(config: PIMConfig, mem: Sequence[MemReq], jobs: Sequence[GemvJob],
             *, max_cycles: int | None = None) -> ScheduleResult:
    """Run the scheduler policy (module docstring) on the two request streams
    and return its command trace and cycle count. Every command it issues is
    checked; a violation would be a scheduler bug and raises."""
    check_requests(config, mem, jobs)
    cfg = config
    nm, nj = len(mem), len(jobs)
    limit = max_cycles or (200 + 60 * (nm + nj * (cfg.max_job_rows + 1) * (cfg.col_words + 8)
                                       + nj * cfg.tRAS * cfg.max_job_rows))
    sch = _Scheduler(cfg, mem, jobs)
    t = 0
    while not sch.finished(t):
        if t > limit:
            raise RuntimeError(f"scheduler made no progress within {limit} cycles")
        sch.cycle(t)
        t += 1
    return ScheduleResult(config=cfg, cycles=t, trace=sch.trace, read_times=sch.read_times,
                          result_times=sch.result_times, errors=sch.chk.errors)
