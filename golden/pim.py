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

Requests:
  MemReq(bank, row, col, write, data)    col = word index in the row,
                                         data = packed word (lanes INT8, element 0 in bits 0..7)
  GemvJob(bank, row, nrows, vector)      vector = `columns` INT8 values (the
                                         job's col_words GWR beats, packed the same way)

Scheduler policy (both paths in request order, open-page):
  memory path  head request: row hit -> RD/WR; other row open -> PRE; closed -> ACT.
               If the head issues nothing, PRE the lowest bank that must close
               (blocked mode: switching to PIM; dual mode: the PIM path waits
               for that row).
  PIM path     per job: GWR x col_words, then per row PACT, COMP x col_words,
               RDRES, PPRE. It sees the memory path's command of the same cycle
               (bus slots, tFAW, same-bank activation).
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
from typing import NamedTuple, Sequence

import torch

from golden.formats import ACT_BITS
from golden.pim_config import MCMD, PCMD, RULES, PIMConfig

__all__ = ["MemReq", "GemvJob", "Cmd", "Checker", "ScheduleResult", "schedule", "Workload",
           "mixed_workload", "subbatch_workload",
           "pack_word", "unpack_word", "pack_vector", "gemv", "expected_outputs",
           "check_requests", "rule_mask"]

_NEVER = -(1 << 40)
_B = {name: 1 << i for i, name in enumerate(RULES)}


def rule_mask(*names: str) -> int:
    return sum(_B[n] for n in names)


class MemReq(NamedTuple):
    bank: int
    row: int
    col: int
    write: bool
    data: int = 0


class GemvJob(NamedTuple):
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
        return (MCMD if self.path == "m" else PCMD)[self.kind]


# --------------------------------------------------------------------------- words
def pack_word(values: Sequence[int], lanes: int) -> int:
    """`lanes` INT8 values -> one word, element 0 in the least-significant byte."""
    if len(values) != lanes:
        raise ValueError(f"a word holds {lanes} values, got {len(values)}")
    w = 0
    for i, v in enumerate(values):
        v = int(v)
        if not -128 <= v <= 127:
            raise ValueError(f"value {v} at lane {i} is outside INT8 [-128, 127]")
        w |= (v & 0xFF) << (ACT_BITS * i)
    return w


def unpack_word(word: int, lanes: int) -> list[int]:
    out = []
    for i in range(lanes):
        b = (int(word) >> (ACT_BITS * i)) & 0xFF
        out.append(b - 256 if b >= 128 else b)
    return out


def pack_vector(vector: Sequence[int], config: PIMConfig) -> list[int]:
    """A job's vector as its col_words GWR words."""
    if len(vector) != config.columns:
        raise ValueError(f"a GEMV vector has columns={config.columns} values, got {len(vector)}")
    L = config.lanes
    return [pack_word(vector[i * L:(i + 1) * L], L) for i in range(config.col_words)]


# --------------------------------------------------------------------------- functional
def gemv(weights, x) -> torch.Tensor:
    """y = W x for INT8 W [n, columns], x [columns] -> int32 (wrapping)."""
    W = torch.as_tensor(weights).to(torch.int64)
    v = torch.as_tensor(x).to(torch.int64)
    if W.dim() != 2 or v.dim() != 1 or W.shape[1] != v.shape[0]:
        raise ValueError(f"gemv needs W [n, K] and x [K], got {tuple(W.shape)} and "
                         f"{tuple(v.shape)}")
    for name, t in (("weights", W), ("x", v)):
        if t.numel() and (int(t.min()) < -128 or int(t.max()) > 127):
            raise ValueError(f"{name} must be INT8 values in [-128, 127]")
    y = (W * v).sum(dim=1)
    return ((y + (1 << 31)) % (1 << 32) - (1 << 31)).to(torch.int32)


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


def expected_outputs(config: PIMConfig, storage, mem: Sequence[MemReq],
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
        self.banks = [_Bank() for _ in range(config.banks)]
        self.bus: set[int] = set()       # busy data-bus cycles (absolute)
        self.acts: deque[int] = deque()  # cycles of recent activations
        self.errors = 0

    def _pre_time(self, b: _Bank) -> int:
        if self.cfg.mode == "blocked":  # one row buffer: either precharge counts
            return max(b.m_pre, b.p_pre)
        return b.m_pre

    def _ppre_time(self, b: _Bank) -> int:
        if self.cfg.mode == "blocked":
            return max(b.m_pre, b.p_pre)
        return b.p_pre

    def _slots(self, t: int, c: Cmd) -> range | None:
        if c is None:
            return None
        if (c.path, c.kind) in (("m", "RD"), ("p", "RDRES")):
            s = t + self.cfg.tCL
        elif (c.path, c.kind) in (("m", "WR"), ("p", "GWR")):
            s = t
        else:
            return None
        return range(s, s + self.cfg.tCCD_S)

    def violations(self, t: int, m: Cmd | None, p: Cmd | None) -> int:
        cfg = self.cfg
        err = 0
        blocked = cfg.mode == "blocked"
        any_m = any(b.m_open for b in self.banks)
        any_p = any(b.p_open for b in self.banks)
        n_act = 0
        if m is not None:
            b = self.banks[m.bank]
            if m.kind == "ACT":
                n_act += 1
                if b.m_open:
                    err |= _B["act_open"]
                if t - self._pre_time(b) < cfg.tRP:
                    err |= _B["act_trp"]
                if b.p_open and (blocked or b.p_row == m.row):
                    err |= _B["act_conflict"]
                if m.row >= cfg.rows:
                    err |= _B["row_range"]
            elif m.kind in ("RD", "WR"):
                if not b.m_open:
                    err |= _B["col_closed"]
                if t - b.m_act < cfg.tRCD:
                    err |= _B["col_trcd"]
                if t - b.m_col < cfg.tCCD_L:
                    err |= _B["col_tccd"]
            elif m.kind == "PRE":
                if not b.m_open:
                    err |= _B["pre_closed"]
                if t - b.m_act < cfg.tRAS:
                    err |= _B["pre_tras"]
                if t - b.m_wr < cfg.tWR:
                    err |= _B["pre_twr"]
            if blocked and any_p:
                err |= _B["blocked_excl"]
        if p is not None:
            b = self.banks[p.bank]
            if p.kind == "PACT":
                n_act += 1
                if b.p_open:
                    err |= _B["pact_open"]
                if t - self._ppre_time(b) < cfg.tRP:
                    err |= _B["pact_trp"]
                if b.m_open and (blocked or b.m_row == p.row):
                    err |= _B["pact_conflict"]
                if p.row >= cfg.rows:
                    err |= _B["row_range"]
                if m is not None and m.kind == "ACT" and m.bank == p.bank:
                    err |= _B["dual_act"]
            elif p.kind in ("GWR", "COMP", "RDRES"):
                if t - b.p_col < cfg.tCCD_L:
                    err |= _B["pcol_tccd"]
                if p.kind == "COMP":
                    if not b.p_open:
                        err |= _B["comp_closed"]
                    if t - b.p_act < cfg.tRCD:
                        err |= _B["comp_trcd"]
            elif p.kind == "PPRE":
                if not b.p_open:
                    err |= _B["ppre_closed"]
                if t - b.p_act < cfg.tRAS:
                    err |= _B["ppre_tras"]
            if blocked and (any_m or m is not None):
                err |= _B["blocked_excl"]
        # data bus: each transfer holds tCCD_S consecutive cycles
        sm, sp = self._slots(t, m), self._slots(t, p)
        taken = set()
        for s in (sm, sp):
            if s is None:
                continue
            if any(x in self.bus or x in taken for x in s):
                err |= _B["bus_conflict"]
            taken.update(s)
        if n_act:
            recent = sum(1 for a in self.acts if t - a < cfg.tFAW)
            if recent + n_act > 4:
                err |= _B["tfaw"]
        return err

    def issue(self, t: int, m: Cmd | None, p: Cmd | None) -> int:
        err = self.violations(t, m, p)
        self.errors |= err
        for c in (m, p):
            s = self._slots(t, c)
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
    config: PIMConfig
    cycles: int                       # first cycle with nothing left to do (0 = empty run)
    trace: list[tuple[int, Cmd | None, Cmd | None]] = field(repr=False)
    read_times: list[int] = field(repr=False)    # delivery cycle of each read
    result_times: list[int] = field(repr=False)  # delivery cycle of each GEMV result
    errors: int = 0

    @property
    def commands(self) -> int:
        return sum((m is not None) + (p is not None) for _, m, p in self.trace)

    def count(self, kind: str) -> int:
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
        c = max(1, self.cycles)
        return {"pim_lanes": round(self.comp_cycles / (c * self.config.banks), 4),
                "data_bus": round(self.bus_cycles / c, 4)}


_IDLE, _GWR, _PACT, _COMP, _RDRES, _PPRE = range(6)


def schedule(config: PIMConfig, mem: Sequence[MemReq], jobs: Sequence[GemvJob],
             *, max_cycles: int | None = None) -> ScheduleResult:
    """Run the scheduler policy (module docstring) on the two request streams
    and return its command trace and cycle count. Every command it issues is
    checked; a violation would be a scheduler bug and raises."""
    check_requests(config, mem, jobs)
    cfg = config
    blocked = cfg.mode == "blocked"
    chk = Checker(cfg)
    nm, nj = len(mem), len(jobs)
    limit = max_cycles or (200 + 60 * (nm + nj * (cfg.max_job_rows + 1) * (cfg.col_words + 8)
                                       + nj * cfg.tRAS * cfg.max_job_rows))
    mi = ji = 0
    js, jbank, jrow, jleft, jcol = _IDLE, 0, 0, 0, 0
    bmode_pim, pending, served, pim_ran = False, False, 0, False
    trace, read_times, result_times = [], [], []
    last_event = -1
    t = 0
    while True:
        if mi == nm and ji == nj and js == _IDLE and t > last_event:
            break
        if t > limit:
            raise RuntimeError(f"scheduler made no progress within {limit} cycles")
        banks = chk.banks
        mhead = mem[mi] if mi < nm else None
        mem_allowed = not blocked or (not bmode_pim and not pending)
        # ---- memory path
        mc = None
        hit_bank = -1
        if mhead is not None and mem_allowed:
            b = banks[mhead.bank]
            if b.m_open and b.m_row == mhead.row:
                hit_bank = mhead.bank
                cand = Cmd("m", "WR" if mhead.write else "RD", mhead.bank, mhead.row, mhead.col)
            elif b.m_open:
                cand = Cmd("m", "PRE", mhead.bank)
            else:
                cand = Cmd("m", "ACT", mhead.bank, mhead.row)
            if chk.violations(t, cand, None) == 0:
                mc = cand
        if mc is None:
            for k, b in enumerate(banks):
                need = b.m_open and ((blocked and pending) or (
                    not blocked and js == _PACT and jbank == k and jrow == b.m_row))
                if need and k != hit_bank:
                    cand = Cmd("m", "PRE", k)
                    if chk.violations(t, cand, None) == 0:
                        mc = cand
                        break
        consumed_mem = mc is not None and mc.kind in ("RD", "WR")
        any_m_open = any(b.m_open for b in banks)  # state at t
        js_t = js
        # ---- PIM path
        pc = None
        pim_allowed = not blocked or bmode_pim
        if js != _IDLE and pim_allowed:
            cand = {_GWR: Cmd("p", "GWR", jbank, 0, jcol),
                    _PACT: Cmd("p", "PACT", jbank, jrow),
                    _COMP: Cmd("p", "COMP", jbank, jrow, jcol),
                    _RDRES: Cmd("p", "RDRES", jbank),
                    _PPRE: Cmd("p", "PPRE", jbank)}[js]
            if chk.violations(t, mc, cand) == 0:
                pc = cand
        err = chk.issue(t, mc, pc)
        if err:  # pragma: no cover - the policy only issues legal commands
            raise AssertionError(f"scheduler issued illegal commands at {t}: {mc} {pc} "
                                 f"({[r for i, r in enumerate(RULES) if err >> i & 1]})")
        if mc is not None or pc is not None:
            trace.append((t, mc, pc))
            last_event = max(last_event, t)
        for c in (mc, pc):  # a data transfer ends when its burst has left the bus
            slots = chk._slots(t, c)
            if slots is not None:
                last_event = max(last_event, slots[-1])
        if mc is not None and mc.kind == "RD":
            read_times.append(t + cfg.tCL)
        if pc is not None and pc.kind == "RDRES":
            result_times.append(t + cfg.tCL)
        # ---- next state: job engine
        latch = False
        if js_t == _IDLE:
            job_avail = ji < nj
            if not blocked:
                latch = job_avail
            elif bmode_pim:
                latch = job_avail and not (pim_ran and mhead is not None)
        if latch:
            j = jobs[ji]
            ji += 1
            js, jbank, jrow, jleft, jcol = _GWR, j.bank, j.row, j.nrows, 0
        elif pc is not None:
            if js in (_GWR, _COMP):
                if jcol == cfg.col_words - 1:
                    js, jcol = (_PACT if js == _GWR else _RDRES), 0
                else:
                    jcol += 1
            elif js == _PACT:
                js = _COMP
            elif js == _RDRES:
                js = _PPRE
            elif js == _PPRE:
                if jleft > 1:
                    js, jrow, jleft = _PACT, jrow + 1, jleft - 1
                else:
                    js = _IDLE
        # ---- next state: blocked-mode arbitration (state at t)
        if blocked:
            if not bmode_pim:
                if pending:
                    if not any_m_open:
                        bmode_pim, pending, pim_ran = True, False, False
                elif ji < nj and js_t == _IDLE and (mhead is None or served >= cfg.quantum):
                    pending = True
                if consumed_mem:
                    served += 1
            else:
                if latch:
                    pim_ran = True
                elif js_t == _IDLE and pim_ran and mhead is not None:
                    bmode_pim, served = False, 0
        if consumed_mem:
            mi += 1
        t += 1
    return ScheduleResult(config=cfg, cycles=t, trace=trace,
                          read_times=read_times, result_times=result_times,
                          errors=chk.errors)


# --------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """Bank contents before the run plus the two request streams."""
    storage: torch.Tensor          # [banks, rows, columns] int8 values (int64 tensor)
    mem: tuple                     # MemReq ...
    jobs: tuple                    # GemvJob ...

    @property
    def n_reads(self) -> int:
        return sum(1 for r in self.mem if not r.write)

    @property
    def n_results(self) -> int:
        return sum(j.nrows for j in self.jobs)


def _split_rows(config: PIMConfig) -> tuple[range, range]:
    """GEMV rows (lower half) and traffic rows (upper half) of every bank."""
    if config.rows < 2:
        raise ValueError("a mixed workload needs rows >= 2 (GEMV rows and traffic rows)")
    half = config.rows // 2
    return range(0, half), range(half, config.rows)


def _random_storage(config: PIMConfig, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-128, 128, (config.banks, config.rows, config.columns),
                         generator=gen, dtype=torch.int64)


def _random_job(config, gen, bank, gemv_rows, nrows) -> GemvJob:
    nrows = min(nrows, len(gemv_rows), config.max_job_rows)
    r0 = gemv_rows.start + int(torch.randint(0, len(gemv_rows) - nrows + 1, (1,), generator=gen))
    vec = tuple(int(v) for v in torch.randint(-128, 128, (config.columns,), generator=gen))
    return GemvJob(bank, r0, nrows, vec)


def _burst(config, gen, bank, row, length, write_frac) -> list[MemReq]:
    cw = config.col_words
    start = int(torch.randint(0, cw, (1,), generator=gen))
    out = []
    for i in range(length):
        w = bool(torch.rand((1,), generator=gen) < write_frac)
        data = 0
        if w:
            data = int.from_bytes(torch.randint(0, 256, (config.lanes,), generator=gen,
                                                dtype=torch.uint8).numpy().tobytes(), "little")
        out.append(MemReq(bank, row, (start + i) % cw, w, data))
    return out


def mixed_workload(config: PIMConfig, *, seed: int, n_mem: int, n_jobs: int,
                   job_rows: int = 2, max_burst: int = 8,
                   write_frac: float = 0.4) -> Workload:
    """Random mixed traffic: bursts of reads/writes to random traffic rows of
    random banks, and GEMV jobs on GEMV rows of random banks (the same banks
    serve both; GEMV rows are never written)."""
    gen = torch.Generator().manual_seed(seed)
    gemv_rows, traffic_rows = _split_rows(config)
    storage = _random_storage(config, gen)
    mem: list[MemReq] = []
    while len(mem) < n_mem:
        bank = int(torch.randint(0, config.banks, (1,), generator=gen))
        row = traffic_rows.start + int(torch.randint(0, len(traffic_rows), (1,), generator=gen))
        length = 1 + int(torch.randint(0, max_burst, (1,), generator=gen))
        mem.extend(_burst(config, gen, bank, row, length, write_frac))
    mem = mem[:n_mem]
    jobs = []
    for _ in range(n_jobs):
        bank = int(torch.randint(0, config.banks, (1,), generator=gen))
        n = 1 + int(torch.randint(0, job_rows, (1,), generator=gen))
        jobs.append(_random_job(config, gen, bank, gemv_rows, n))
    return Workload(storage=storage, mem=tuple(mem), jobs=tuple(jobs))


def subbatch_workload(config: PIMConfig, *, seed: int, rounds: int,
                      job_rows: int = 4, kv_writes: int = 2) -> Workload:
    """NeuPIMs' sub-batch interleaving on one channel: per round, sub-batch A's
    attention GEMV (one job of `job_rows` K-cache rows per bank) and sub-batch
    B's GEMM traffic (whole weight rows streamed from each bank, plus
    `kv_writes` K/V words appended) -- sized so that the two take about the
    same time alone. Dual mode overlaps them; blocked mode serialises them."""
    gen = torch.Generator().manual_seed(seed)
    gemv_rows, traffic_rows = _split_rows(config)
    storage = _random_storage(config, gen)
    mem: list[MemReq] = []
    jobs: list[GemvJob] = []
    cw = config.col_words
    for r in range(rounds):
        for bank in range(config.banks):
            jobs.append(_random_job(config, gen, bank, gemv_rows, job_rows))
        for bank in range(config.banks):
            for i in range(job_rows):
                row = traffic_rows.start + int(torch.randint(0, len(traffic_rows), (1,),
                                                             generator=gen))
                mem.extend(MemReq(bank, row, c, False) for c in range(cw))
            row = traffic_rows.start + (r % len(traffic_rows))
            mem.extend(_burst(config, gen, bank, row, kv_writes, 1.0))
    return Workload(storage=storage, mem=tuple(mem), jobs=tuple(jobs))
