"""Formal harness of hdl.pim.PIMChannel in scheduler mode (mem_req, job, vec ->
rd, res and the issued commands), with an independent timing monitor: the
rules of golden.pim.Checker (golden/pim.py) written again as assertions on
the commands the scheduler issues."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from amaranth.hdl import Assume, Cat, Const, Module, Mux, Signal
from amaranth.lib import data

from golden.pim_config import JOB_STEPS, MCMD, PCMD, RULES, TIMING_FIELDS, PIMConfig
from hdl import pim as rtl

from .harness import Harness
from .monitors import counter_width, free, source, tap

if TYPE_CHECKING:
    from .checks import Check
    from .monitors import Internals, Past

__all__ = ["PIMHarness", "SMALL_DUAL", "SMALL_BLOCKED", "checks"]

_T = dict(tCL=2, tRCD=3, tRP=2, tRAS=3, tCCD_S=1, tCCD_L=2, tWR=2, tFAW=4)
#: Two banks of two rows of two one-lane words, short timings (tRCD = 3, so
#: that the broken scheduler of fault `trcd` can be one shorter), two-row jobs.
SMALL_DUAL = PIMConfig(mode="dual", banks=2, rows=2, columns=2, lanes=1, quantum=2,
                       max_job_rows=2, **_T)
SMALL_BLOCKED = dataclasses.replace(SMALL_DUAL, mode="blocked")


class _Monitor:
    """golden.pim.Checker as hardware: per bank the open rows and the cycles
    since each command kind (saturating), the data-bus reservations, the
    activations of the last tFAW cycles; `rules` are the violations of the
    commands of this cycle (RULES names)."""

    def __init__(self, m: Module, cfg: PIMConfig, mi, pi):
        self.cfg = cfg
        blocked = cfg.mode == "blocked"
        self.sat = sat = max(getattr(cfg, k) for k in TIMING_FIELDS)
        self.banks = []
        for b in range(cfg.banks):
            st = {n: Signal(range(sat + 1), init=sat, name=f"mon{b}_since_{n}")
                  for n in ("m_act", "m_pre", "m_col", "m_wr", "p_act", "p_pre", "p_col")}
            st.update(m_open=Signal(name=f"mon{b}_m_open"), p_open=Signal(name=f"mon{b}_p_open"),
                      m_row=Signal(len(mi.row), name=f"mon{b}_m_row"),
                      p_row=Signal(len(pi.row), name=f"mon{b}_p_row"))
            self.banks.append(st)
        mk = {k: (mi.cmd == v) for k, v in MCMD.items()}
        pk = {k: (pi.cmd == v) for k, v in PCMD.items()}
        any_m_open = Cat(*[b["m_open"] for b in self.banks]).any()
        any_p_open = Cat(*[b["p_open"] for b in self.banks]).any()
        r = {name: Const(0, 1) for name in RULES}

        def orr(name, v):
            r[name] = r[name] | v

        for b, st in enumerate(self.banks):
            mb = mi.bank == b
            pb = pi.bank == b
            m_here = {k: v & mb for k, v in mk.items()}
            p_here = {k: v & pb for k, v in pk.items()}
            pre = st["m_pre"] if not blocked else Mux(st["m_pre"] < st["p_pre"],
                                                       st["m_pre"], st["p_pre"])
            ppre = st["p_pre"] if not blocked else pre
            orr("act_open", m_here["ACT"] & st["m_open"])
            orr("act_trp", m_here["ACT"] & (pre < cfg.tRP))
            orr("act_conflict", m_here["ACT"] & st["p_open"]
                & (1 if blocked else (st["p_row"] == mi.row)))
            col = m_here["RD"] | m_here["WR"]
            orr("col_closed", col & ~st["m_open"])
            orr("col_trcd", col & (st["m_act"] < cfg.tRCD))
            orr("col_tccd", col & (st["m_col"] < cfg.tCCD_L))
            orr("pre_closed", m_here["PRE"] & ~st["m_open"])
            orr("pre_tras", m_here["PRE"] & (st["m_act"] < cfg.tRAS))
            orr("pre_twr", m_here["PRE"] & (st["m_wr"] < cfg.tWR))
            orr("pact_open", p_here["PACT"] & st["p_open"])
            orr("pact_trp", p_here["PACT"] & (ppre < cfg.tRP))
            orr("pact_conflict", p_here["PACT"] & st["m_open"]
                & (1 if blocked else (st["m_row"] == pi.row)))
            orr("dual_act", p_here["PACT"] & m_here["ACT"])
            pcol = p_here["GWR"] | p_here["COMP"] | p_here["RDRES"]
            orr("pcol_tccd", pcol & (st["p_col"] < cfg.tCCD_L))
            orr("comp_closed", p_here["COMP"] & ~st["p_open"])
            orr("comp_trcd", p_here["COMP"] & (st["p_act"] < cfg.tRCD))
            orr("ppre_closed", p_here["PPRE"] & ~st["p_open"])
            orr("ppre_tras", p_here["PPRE"] & (st["p_act"] < cfg.tRAS))
            if cfg.rows & (cfg.rows - 1):
                orr("row_range", (m_here["ACT"] & (mi.row >= cfg.rows))
                    | (p_here["PACT"] & (pi.row >= cfg.rows)))
            # updates (golden.pim.Checker.issue)
            events = {"m_act": m_here["ACT"], "m_pre": m_here["PRE"], "m_col": col,
                      "m_wr": m_here["WR"], "p_act": p_here["PACT"], "p_pre": p_here["PPRE"],
                      "p_col": pcol}
            for n, ev in events.items():
                with m.If(ev):
                    m.d.sync += st[n].eq(1)
                with m.Elif(st[n] != sat):
                    m.d.sync += st[n].eq(st[n] + 1)
            with m.If(m_here["ACT"]):
                m.d.sync += [st["m_open"].eq(1), st["m_row"].eq(mi.row)]
            with m.Elif(m_here["PRE"]):
                m.d.sync += st["m_open"].eq(0)
            with m.If(p_here["PACT"]):
                m.d.sync += [st["p_open"].eq(1), st["p_row"].eq(pi.row)]
            with m.Elif(p_here["PPRE"]):
                m.d.sync += st["p_open"].eq(0)
        if blocked:
            orr("blocked_excl", (~mk["NOP"] & any_p_open)
                | (~pk["NOP"] & (any_m_open | ~mk["NOP"])))
        # data bus: bit d = cycle t + d reserved
        span = cfg.tCL + cfg.tCCD_S
        burst = (1 << cfg.tCCD_S) - 1
        self.bus = bus = Signal(span, name="mon_bus")
        m_slots = Mux(mk["RD"], burst << cfg.tCL, Mux(mk["WR"], burst, 0))
        p_slots = Mux(pk["RDRES"], burst << cfg.tCL, Mux(pk["GWR"], burst, 0))
        orr("bus_conflict", (m_slots & bus).any() | (p_slots & (bus | m_slots)).any())
        m.d.sync += bus.eq((bus | m_slots | p_slots) >> 1)
        # activations of the last tFAW - 1 cycles (entry d-1: d cycles ago)
        self.acts = acts = [Signal(2, name=f"mon_acts{d}") for d in range(1, cfg.tFAW)]
        n_act = mk["ACT"] + pk["PACT"]
        recent = sum(acts) if acts else Const(0)
        orr("tfaw", (n_act != 0) & (recent + n_act > 4))
        if acts:
            m.d.sync += [acts[0].eq(n_act)] + [acts[d].eq(acts[d - 1])
                                               for d in range(1, len(acts))]
        self.rules = r


class PIMHarness(Harness):
    """Formal harness of hdl.pim.PIMChannel in scheduler mode: free mem_req, job
    and vec sources under the stream protocol (addressing the channel), rd and
    res always taken, and the issued commands checked by an independent timing
    monitor (property groups and faults: the tables below)."""

    block = "pim"
    groups = {
        "timing": "no command the scheduler issues breaks a rule of golden.pim.Checker "
                  "(bank timing tRCD/tRP/tRAS/tCCD_L/tWR, open/closed rows, conflicts, data "
                  "bus, tFAW, blocked-mode exclusion), checked by an independent monitor; "
                  "the channel's own checker stays clear",
        "beats": "each memory request is consumed with its RD/WR command, each read's word "
                 "arrives exactly tCL later, each RDRES's result tCL later; per job col_words "
                 "vec beats, one GWR each, and nrows results: none lost or duplicated; idle "
                 "only with nothing owed",
        "state": "the monitor's view (open rows, cycles since each command, bus "
                 "reservations, tFAW window) equals the channel's; the job engine's counters "
                 "match the job",
        "reset": "the cycle after reset: rows closed, nothing on the bus, engine idle, no "
                 "error, no rd/res beat",
        "cover": "reachable: a read's word, a GEMV job's last result; dual: a PIM and a "
                 "memory command in one cycle; blocked: a job taken after a read",
    }
    helpers = {"timing": ("state",), "beats": ("state",)}
    faults = {
        "trcd": "the scheduler (and its own checker) is built with tRCD one "
                "cycle shorter than the monitor's",
        "lose_beat": "a read's word is dropped on the rd stream (port)",
        "dup_beat": "a result beat is presented twice on the res stream (port)",
        "issue_bank": "the monitor sees each memory command on the other bank (port)",
        "valid_after_reset": "rd valid shows high in the cycle after a reset (port)",
    }

    def make_block(self) -> rtl.PIMChannel:
        """A PIMChannel of `config`; with fault `trcd` one built with tRCD one
        cycle shorter."""
        cfg = self.config
        if self.broken == "trcd":
            cfg = dataclasses.replace(cfg, tRCD=cfg.tRCD - 1)
        return rtl.PIMChannel(cfg)

    def build(self, m: Module, past: Past, dut: rtl.PIMChannel, peek: Internals) -> None:
        """Drive mem_req, job and vec from free sources, the load and clear ports
        free, tap rd and res (the port faults) with ready always high, check the
        issued commands with a timing monitor (seeing them on the other bank with
        fault `issue_bank`), and assert each active group's properties."""
        cfg = self.config
        blocked = cfg.mode == "blocked"
        W = cfg.col_words
        mem = source(m, past, dut.mem_req, "mem_req")
        job = source(m, past, dut.job, "job")
        vec = source(m, past, dut.vec, "vec")
        rq, jp = dut.mem_req.payload, dut.job.payload
        with m.If(dut.mem_req.valid):
            m.d.comb += Assume((rq.bank < cfg.banks) & (rq.row < cfg.rows) & (rq.col < W),
                               "mem_req addresses a word of the channel")
        with m.If(dut.job.valid):
            m.d.comb += Assume((jp.bank < cfg.banks) & (jp.nrows >= 1)
                               & (jp.nrows <= cfg.max_job_rows)
                               & (jp.row + jp.nrows <= cfg.rows), "job covers rows of a bank")
        for name in ("clear", "load_en", "load_bank", "load_addr", "load_data"):
            free(m, getattr(dut, name), name)
        rd = tap(m, past, dut.rd, "rd", self.broken if self.broken in
                 ("lose_beat", "valid_after_reset") else None)
        res = tap(m, past, dut.res, "res", "dup_beat" if self.broken == "dup_beat" else None)
        m.d.comb += [rd.ready.eq(1), res.ready.eq(1)]

        mi = data.View(rtl.cmd_layout(cfg), dut.m_issue)
        if self.broken == "issue_bank":
            # the monitor sees the memory commands on the other bank
            seen = Signal.like(dut.m_issue, name="m_issue_seen")
            mv = data.View(rtl.cmd_layout(cfg), seen)
            m.d.comb += [seen.eq(dut.m_issue), mv.bank.eq(mi.bank ^ 1)]
            mi = mv
        pi = data.View(rtl.cmd_layout(cfg), dut.p_issue)
        mon = _Monitor(m, cfg, mi, pi)
        for name in RULES:
            self.check(m, "timing", ~mon.rules[name], f"rule {name}")
        self.check(m, "timing", ~dut.error, "the channel's own checker stays clear")

        # state: the monitor and the channel agree
        for b, st in enumerate(mon.banks):
            bs = data.View(rtl.state_layout(cfg), peek[f"bank{b}", "state"])
            self.check(m, "state", (bs.m_open == st["m_open"]) & (bs.p_open == st["p_open"]),
                       f"bank {b}: open rows")
            with m.If(st["m_open"]):
                self.check(m, "state", bs.m_row == st["m_row"], f"bank {b}: memory row")
            with m.If(st["p_open"]):
                self.check(m, "state", bs.p_row == st["p_row"], f"bank {b}: PIM row")
            for n in ("m_act", "m_col", "m_wr", "p_act", "p_col"):
                self.check(m, "state", peek[f"bank{b}", f"since_{n}"] == st[n],
                           f"bank {b}: cycles since {n}")
            for n, mine in (("m_pre", ("m_pre", "p_pre") if blocked else ("m_pre",)),
                            ("p_pre", ("m_pre", "p_pre") if blocked else ("p_pre",))):
                v = st[mine[0]] if len(mine) == 1 else Mux(st["m_pre"] < st["p_pre"],
                                                           st["m_pre"], st["p_pre"])
                self.check(m, "state", peek[f"bank{b}", f"since_{n}"] == v,
                           f"bank {b}: cycles since {n}")
        self.check(m, "state", peek["busy"] == mon.bus, "data-bus reservations")
        ages = [peek[f"faw_age{i}"] for i in range(4)]
        for i in range(3):
            self.check(m, "state", ages[i] <= ages[i + 1], "activation ages in order")
        for d, a in enumerate(mon.acts, start=1):
            self.check(m, "state", a == sum(age == d for age in ages),
                       f"activations {d} cycles ago")
        self.check(m, "state", sum(mon.acts) <= 4, "at most 4 activations in a tFAW window")

        # beats: requests, reads, jobs, results
        step, ebank, erow, left, ecol = (peek[n] for n in ("step", "bank", "row", "left", "col"))
        S = {n: i for i, n in enumerate(JOB_STEPS)}
        m_rw = (mi.cmd == MCMD["RD"]) | (mi.cmd == MCMD["WR"])
        mst = mon.banks
        open_row = mst[0]["m_row"]
        for b in range(1, cfg.banks):
            open_row = Mux(rq.bank == b, mst[b]["m_row"], open_row)
        self.check(m, "beats", mem == (m_rw & dut.mem_req.valid & (mi.bank == rq.bank)
                                       & (mi.col == rq.col)
                                       & (mi.cmd == Mux(rq.write, MCMD["WR"], MCMD["RD"]))),
                   "a request is consumed exactly with its own RD/WR")
        with m.If(mem):
            self.check(m, "beats", open_row == rq.row, "... on the request's row")
        self.check(m, "beats", vec == (pi.cmd == PCMD["GWR"]),
                   "a vec beat is consumed exactly with a GWR")
        # exact delivery: tCL cycles after the RD / RDRES (rd_hist[d-1]: an RD d cycles ago)
        rd_hist, res_hist = [], []
        rd_due, res_due = mi.cmd == MCMD["RD"], pi.cmd == PCMD["RDRES"]
        for d in range(1, cfg.tCL + 1):
            rd_due, res_due = past(rd_due, f"rd_due{d}"), past(res_due, f"res_due{d}")
            rd_hist.append(rd_due)
            res_hist.append(res_due)
        self.check(m, "beats", rd.valid == rd_hist[-1], "a read's word arrives tCL after its RD")
        self.check(m, "beats", res.valid == res_hist[-1],
                   "a result arrives tCL after its RDRES")
        # per job: vec beats and results owed
        vec_owed = Signal(range(W + 1), name="vec_owed")
        res_owed = Signal(range(2 * cfg.max_job_rows + cfg.tCL + 1), name="res_owed")
        m.d.sync += [vec_owed.eq(vec_owed + Mux(job, W, 0) - vec),
                     res_owed.eq(res_owed + Mux(job, jp.nrows, 0) - res.valid)]
        rd_owed = Signal(range(cfg.tCL + 2), name="rd_owed")
        m.d.sync += rd_owed.eq(rd_owed + (mem & ~rq.write) - rd.valid)
        self.check(m, "beats", ~vec | (vec_owed != 0), "no vec beat beyond col_words per job")
        self.check(m, "beats", ~res.valid | (res_owed != 0), "no result beyond nrows per job")
        self.check(m, "beats", ~rd.valid | (rd_owed != 0), "no read word without its request")
        with m.If(dut.idle):
            self.check(m, "beats", (vec_owed == 0) & (res_owed == 0) & (rd_owed == 0),
                       "idle only when nothing is owed")
        # the job engine against the job: what is owed is what the engine and
        # the return path still hold
        rows_left = Signal.like(left, name="rows_left")
        m.d.comb += rows_left.eq(Mux(step == S["IDLE"], 0,
                                     Mux(step == S["PPRE"], left - 1, left)))
        self.check(m, "beats", res_owed == rows_left + sum(res_hist),
                   "results owed = rows not yet read out + results on the return path")
        self.check(m, "beats", rd_owed == sum(rd_hist),
                   "read words owed = reads on the return path")
        with m.If(step == S["GWR"]):
            self.check(m, "state", vec_owed == W - ecol, "GWR: the vec beats left")
        with m.Else():
            self.check(m, "state", vec_owed == 0, "outside GWR: no vec beat owed")
        self.check(m, "state", step < len(JOB_STEPS), "engine step in range")
        with m.If(step != S["IDLE"]):
            self.check(m, "state", (ebank < cfg.banks) & (erow < cfg.rows) & (ecol < W)
                       & (left >= 1) & (left <= cfg.max_job_rows) & (erow + left <= cfg.rows),
                       "engine registers in range")
        with m.If((step == S["PACT"]) | (step == S["RDRES"]) | (step == S["PPRE"])):
            self.check(m, "state", ecol == 0, "PACT, RDRES, PPRE: at column 0")

        # reset
        with m.If(~past.ok):
            self.check(m, "reset", ~rd.valid & ~res.valid, "no rd/res beat after reset")
            self.check(m, "reset", (step == S["IDLE"]) & ~dut.error & (peek["busy"] == 0),
                       "engine idle, bus free, no error after reset")
            for b in range(cfg.banks):
                bs = data.View(rtl.state_layout(cfg), peek[f"bank{b}", "state"])
                self.check(m, "reset", ~bs.m_open & ~bs.p_open, f"bank {b}: rows closed")

        self.cover(m, "cover", rd.valid, "a read's word arrives")
        self.cover(m, "cover", res.valid & (res_owed == 1), "a job's last result arrives")
        if blocked:   # one side at a time: the channel hands over to the PIM side
            read_seen = Signal(name="read_seen")
            with m.If(mi.cmd == MCMD["RD"]):
                m.d.sync += read_seen.eq(1)
            self.cover(m, "cover", read_seen & job, "a job taken after a read (memory to PIM "
                                                    "mode)")
        else:
            self.cover(m, "cover", (mi.cmd != MCMD["NOP"]) & (pi.cmd != PCMD["NOP"]),
                       "a memory and a PIM command in one cycle")


def _name(c: PIMConfig) -> str:
    t = " ".join(f"{k}={getattr(c, k)}" for k in TIMING_FIELDS)
    return (f"{c.mode} banks={c.banks} rows={c.rows} columns={c.columns} lanes={c.lanes} "
            f"quantum={c.quantum} max_job_rows={c.max_job_rows} {t}")


def checks() -> list[Check]:
    """PIMChannel's checks: proofs and the cover in dual and in blocked mode,
    the fault demonstrations in dual mode."""
    from .checks import Check
    H = PIMHarness
    out = []
    for cfg in (SMALL_DUAL, SMALL_BLOCKED):
        n = _name(cfg)
        t = cfg.mode
        out += [Check(H, cfg, n, "timing", "prove", 8, quick=cfg.mode == "dual", tag=t),
                Check(H, cfg, n, "beats", "prove", 8, tag=t),
                Check(H, cfg, n, "state", "prove", 8, tag=t),
                Check(H, cfg, n, "reset", "prove", 3, tag=t),
                Check(H, cfg, n, "cover", "cover", 30, tag=t)]
    n = _name(SMALL_DUAL)
    out += [Check(H, SMALL_DUAL, n, "timing", "bmc", 12, broken="trcd", tag="dual", quick=True),
            Check(H, SMALL_DUAL, n, "beats", "bmc", 12, broken="lose_beat", tag="dual"),
            Check(H, SMALL_DUAL, n, "beats", "bmc", 30, broken="dup_beat", tag="dual"),
            Check(H, SMALL_DUAL, n, "state", "bmc", 12, broken="issue_bank", tag="dual"),
            Check(H, SMALL_DUAL, n, "reset", "bmc", 3, broken="valid_after_reset", tag="dual")]
    return out
