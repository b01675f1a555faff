"""NeuPIMs-style PIM channel (DESIGN §3.6, arXiv 2403.00579) in Amaranth 0.5.

Cycle-true at the command level:

  PIMBank     storage (`lib.memory`, rows x col_words words of `lanes` INT8),
              memory row buffer (ACT/RD/WR/PRE), PIM row buffer (PACT/COMP/PPRE),
              global buffer (GWR), `lanes` multipliers + adder tree + int32
              accumulator (RDRES reads and clears it), the bank's timing state
              and its checker (bank-local rules of golden.pim_config.RULES).
  PIMChannel  `banks` banks on one command/data bus, the channel rules (data
              bus, tFAW, blocked-mode exclusion), the read/result return path
              (tCL after RD/RDRES) and -- unless `raw=True` -- the scheduler
              that turns the request streams into commands (the policy of
              golden.pim's module docstring).
  PIMSystem   PIMChannel with request/response memories, for fast simulation
              (hdl.streams' preloaded-system pieces).

The rules are written once (`bank_rules`, `channel_rules`) and used both by
the checker (on the commands issued) and by the scheduler (on candidates), so
the scheduler can only issue what the checker accepts; golden.pim.Checker is
the independent second implementation the tests compare against.
"""
from __future__ import annotations

from typing import Callable

from amaranth.hdl import (Cat, Const, Module, Mux, Signal, Value, ValueLike, signed,
                          unsigned)
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.formats import ACC_BITS, ACT_BITS
from golden.pim_config import JOB_STEPS, MCMD, PCMD, RULES, TIMING_FIELDS, PIMConfig
from golden.validate import check_choice, check_int, expect_type

from .rtl import count_width, is_const, select, tree_sum, zext
from .streams import LoadPort, PreloadedMemory, RunControl

__all__ = ["PIMBank", "PIMChannel", "PIMSystem", "cmd_layout", "memreq_layout", "job_layout",
           "state_layout", "bank_rules", "channel_rules", "LOAD_BANK", "LOAD_MEM", "LOAD_JOB",
           "LOAD_VEC", "OUT_RD", "OUT_RES", "pim_factory", "DEFAULT_SYSTEM_SIZES"]

LOAD_BANK, LOAD_MEM, LOAD_JOB, LOAD_VEC = range(4)
OUT_RD, OUT_RES = range(2)

_N_RULES = len(RULES)
#: Encoding of the job engine's step register.
_STEP = {name: code for code, name in enumerate(JOB_STEPS)}


def _check_config(config) -> PIMConfig:
    return expect_type("config", config, PIMConfig)


def _w(cfg):
    """Field widths."""
    w = dict(cfg.memreq_fields)
    w["nrows"] = dict(cfg.job_fields)["nrows"]
    w["word"] = cfg.word_bits
    return w


def cmd_layout(cfg: PIMConfig) -> data.StructLayout:
    """Layout of a decoded command to a bank: opcode, bank, row, column, data word."""
    w = _w(cfg)
    return data.StructLayout({"cmd": 3, "bank": w["bank"], "row": w["row"], "col": w["col"],
                              "data": w["word"]})


def memreq_layout(cfg: PIMConfig) -> data.StructLayout:
    """Memory request word: PIMConfig.memreq_fields (bank, row, col, write, data)."""
    return data.StructLayout(dict(cfg.memreq_fields))


def job_layout(cfg: PIMConfig) -> data.StructLayout:
    """GEMV job word: PIMConfig.job_fields (bank, first row, number of rows)."""
    return data.StructLayout(dict(cfg.job_fields))


def state_layout(cfg: PIMConfig) -> data.StructLayout:
    """What a bank shows the scheduler: open rows and which timing constraints
    are already met (1 = the command kind may issue as far as that rule goes)."""
    rw = _w(cfg)["row"]
    return data.StructLayout({
        "m_open": 1, "m_row": rw, "p_open": 1, "p_row": rw,
        "m_trp": 1, "m_trcd": 1, "m_tras": 1, "m_tccd": 1, "m_twr": 1,
        "p_trp": 1, "p_trcd": 1, "p_tras": 1, "p_tccd": 1,
    })


def _is(v, code):
    if isinstance(v, int):  # a constant command (scheduler candidates)
        return Const(int(v == code), 1)
    return is_const(v, code)


def bank_rules(cfg: PIMConfig, st: Value, m_cmd: ValueLike, m_row: ValueLike, p_cmd: ValueLike,
               p_row: ValueLike) -> dict:
    """Bank-local rule violations of a memory command `m_cmd` (row `m_row`) and a
    PIM command `p_cmd` (row `p_row`) issued together to one bank in state `st`."""
    blocked = cfg.mode == "blocked"
    mACT, mRD, mWR, mPRE = (_is(m_cmd, MCMD[k]) for k in ("ACT", "RD", "WR", "PRE"))
    pACT, pGWR, pCOMP, pRDRES, pPRE = (_is(p_cmd, PCMD[k])
                                       for k in ("PACT", "GWR", "COMP", "RDRES", "PPRE"))
    mcol = mRD | mWR
    r = {
        "act_open": mACT & st.m_open,
        "act_trp": mACT & ~st.m_trp,
        "act_conflict": mACT & st.p_open & (1 if blocked else (st.p_row == m_row)),
        "col_closed": mcol & ~st.m_open,
        "col_trcd": mcol & ~st.m_trcd,
        "col_tccd": mcol & ~st.m_tccd,
        "pre_closed": mPRE & ~st.m_open,
        "pre_tras": mPRE & ~st.m_tras,
        "pre_twr": mPRE & ~st.m_twr,
        "pact_open": pACT & st.p_open,
        "pact_trp": pACT & ~st.p_trp,
        "pact_conflict": pACT & st.m_open & (1 if blocked else (st.m_row == p_row)),
        "comp_closed": pCOMP & ~st.p_open,
        "comp_trcd": pCOMP & ~st.p_trcd,
        "pcol_tccd": (pGWR | pCOMP | pRDRES) & ~st.p_tccd,
        "ppre_closed": pPRE & ~st.p_open,
        "ppre_tras": pPRE & ~st.p_tras,
        "dual_act": mACT & pACT,
    }
    if cfg.rows & (cfg.rows - 1):  # a row field that can hold rows >= cfg.rows
        r["row_range"] = (mACT & (m_row >= cfg.rows)) | (pACT & (p_row >= cfg.rows))
    return r


def _bus_mask(cfg: PIMConfig, offset: int) -> int:
    return ((1 << cfg.tCCD_S) - 1) << offset


def _m_bus(cfg, m_cmd):
    """(uses bus, reservation mask) of a memory command: WR now, RD tCL later."""
    rd, wr = _is(m_cmd, MCMD["RD"]), _is(m_cmd, MCMD["WR"])
    return rd | wr, Mux(rd, _bus_mask(cfg, cfg.tCL), Mux(wr, _bus_mask(cfg, 0), 0))


def _p_bus(cfg, p_cmd):
    rd, wr = _is(p_cmd, PCMD["RDRES"]), _is(p_cmd, PCMD["GWR"])
    return rd | wr, Mux(rd, _bus_mask(cfg, cfg.tCL), Mux(wr, _bus_mask(cfg, 0), 0))


def channel_rules(cfg: PIMConfig, busy: Value, faw: tuple[Value, Value], any_m_open: Value,
                  any_p_open: Value, m_cmd: ValueLike, p_cmd: ValueLike) -> dict:
    """Channel-wide rule violations of the commands of one cycle: data-bus
    overlap, tFAW and blocked-mode exclusion. `faw` = (one more activation
    would break tFAW, two more would)."""
    m_any = ~_is(m_cmd, MCMD["NOP"])
    p_any = ~_is(p_cmd, PCMD["NOP"])
    m_uses, m_mask = _m_bus(cfg, m_cmd)
    p_uses, p_mask = _p_bus(cfg, p_cmd)
    bus = ((m_uses & (busy & m_mask).any())
           | (p_uses & ((busy | Mux(m_uses, m_mask, 0)) & p_mask).any()))
    ma, pa = _is(m_cmd, MCMD["ACT"]), _is(p_cmd, PCMD["PACT"])
    r = {"bus_conflict": bus, "tfaw": ((ma & pa & faw[1]) | ((ma ^ pa) & faw[0]))}
    if cfg.mode == "blocked":
        r["blocked_excl"] = ((m_any & any_p_open) | (p_any & (any_m_open | m_any)))
    else:
        r["blocked_excl"] = Const(0, 1)
    return r


def _any(rules: dict):
    return Cat(*rules.values()).any()


def _bits(rules: dict) -> Signal:
    return Cat(*[rules.get(name, Const(0, 1)) for name in RULES])


class PIMBank(wiring.Component):
    """One bank. Commands arrive already decoded for this bank (cmd 0 = none).

      m_cmd/m_row/m_col/m_data   memory path (RD/WR use the open row; row on ACT)
      p_cmd/p_row/p_col/p_data   PIM path (PACT row; GWR col+data; COMP col)
      state     open rows and met timing constraints (state_layout)
      err       bank-local rule bits of this cycle's commands (RULES order)
      rd_data   storage word of the RD issued in the previous cycle
      res       accumulator captured (and cleared) by the RDRES of the previous cycle
      load_*    back-door write of the storage (test set-up; WR wins)
    """

    def __init__(self, config: PIMConfig):
        self.config = cfg = _check_config(config)
        w = _w(cfg)
        self.addr_width = max(1, ceil_log2(cfg.bank_words))
        super().__init__({
            "m_cmd": In(3), "m_row": In(w["row"]), "m_col": In(w["col"]),
            "m_data": In(w["word"]),
            "p_cmd": In(3), "p_row": In(w["row"]), "p_col": In(w["col"]),
            "p_data": In(w["word"]),
            "state": Out(state_layout(cfg)),
            "err": Out(_N_RULES),
            "rd_data": Out(w["word"]),
            "res": Out(signed(ACC_BITS)),
            "load_en": In(1), "load_addr": In(self.addr_width), "load_data": In(w["word"]),
        })

    def _addr(self, row, col):
        cfg = self.config
        if cfg.col_words & (cfg.col_words - 1) == 0:
            a = Cat(col[:ceil_log2(cfg.col_words)], row)
        else:
            a = row * cfg.col_words + zext(col, len(row) + ceil_log2(cfg.col_words))
        return a[:self.addr_width]

    def elaborate(self, platform: object) -> Module:
        """Build the bank: row buffers of both paths, timing counters, rule checks, PIM lanes."""
        m = Module()
        cfg = self.config
        m_row, p_row = self._timing_state(m)
        # the bank's checker
        m.d.comb += self.err.eq(_bits(bank_rules(cfg, self.state, self.m_cmd, self.m_row,
                                                 self.p_cmd, self.p_row)))
        w_word, x_word = self._storage(m, m_row, p_row)
        self._mac_lanes(m, w_word, x_word)
        return m

    def _timing_state(self, m):
        """Open rows and "cycles since" counters saturating at the largest
        timing; drives `state`. Returns the open (memory, PIM) row registers."""
        cfg = self.config
        blocked = cfg.mode == "blocked"
        st = self.state
        mACT, mRD, mWR, mPRE = (_is(self.m_cmd, MCMD[k]) for k in ("ACT", "RD", "WR", "PRE"))
        pACT, pGWR, pCOMP, pRDRES, pPRE = (_is(self.p_cmd, PCMD[k])
                                           for k in ("PACT", "GWR", "COMP", "RDRES", "PPRE"))
        sat = max(getattr(cfg, k) for k in TIMING_FIELDS)
        cw = count_width(sat)

        def since(name, event):
            c = Signal(cw, name=f"since_{name}", init=sat)
            with m.If(event):
                m.d.sync += c.eq(1)
            with m.Elif(c != sat):
                m.d.sync += c.eq(c + 1)
            return c

        m_pre_ev = mPRE | (pPRE if blocked else 0)   # blocked: one row buffer, one tRP
        p_pre_ev = pPRE | (mPRE if blocked else 0)
        c_mact, c_mpre = since("m_act", mACT), since("m_pre", m_pre_ev)
        c_mcol, c_mwr = since("m_col", mRD | mWR), since("m_wr", mWR)
        c_pact, c_ppre = since("p_act", pACT), since("p_pre", p_pre_ev)
        c_pcol = since("p_col", pGWR | pCOMP | pRDRES)
        m_open, p_open = Signal(), Signal()
        m_row, p_row = Signal.like(self.m_row), Signal.like(self.p_row)
        with m.If(mACT):
            m.d.sync += [m_open.eq(1), m_row.eq(self.m_row)]
        with m.Elif(mPRE):
            m.d.sync += m_open.eq(0)
        with m.If(pACT):
            m.d.sync += [p_open.eq(1), p_row.eq(self.p_row)]
        with m.Elif(pPRE):
            m.d.sync += p_open.eq(0)
        m.d.comb += [
            st.m_open.eq(m_open), st.m_row.eq(m_row), st.p_open.eq(p_open), st.p_row.eq(p_row),
            st.m_trp.eq(c_mpre >= cfg.tRP), st.m_trcd.eq(c_mact >= cfg.tRCD),
            st.m_tras.eq(c_mact >= cfg.tRAS), st.m_tccd.eq(c_mcol >= cfg.tCCD_L),
            st.m_twr.eq(c_mwr >= cfg.tWR),
            st.p_trp.eq(c_ppre >= cfg.tRP), st.p_trcd.eq(c_pact >= cfg.tRCD),
            st.p_tras.eq(c_pact >= cfg.tRAS), st.p_tccd.eq(c_pcol >= cfg.tCCD_L),
        ]
        return m_row, p_row

    def _storage(self, m, m_row, p_row):
        """Storage (memory-side read/write, PIM-side read) and the global buffer
        (the job's input vector). Returns the (weight, vector) words a COMP reads."""
        cfg = self.config
        mRD, mWR = _is(self.m_cmd, MCMD["RD"]), _is(self.m_cmd, MCMD["WR"])
        pGWR, pCOMP = _is(self.p_cmd, PCMD["GWR"]), _is(self.p_cmd, PCMD["COMP"])
        m.submodules.storage = mem = memory.Memory(shape=unsigned(cfg.word_bits),
                                                   depth=cfg.bank_words, init=[])
        wp = mem.write_port()
        rpa = mem.read_port()
        rpb = mem.read_port()
        m_addr = self._addr(m_row, self.m_col)
        m.d.comb += [
            wp.en.eq(mWR | self.load_en),
            wp.addr.eq(Mux(mWR, m_addr, self.load_addr)),
            wp.data.eq(Mux(mWR, self.m_data, self.load_data)),
            rpa.addr.eq(m_addr), rpa.en.eq(mRD),
            self.rd_data.eq(rpa.data),
            rpb.addr.eq(self._addr(p_row, self.p_col)), rpb.en.eq(pCOMP),
        ]
        if cfg.col_words == 1:
            # one word per row: a register, not a depth-1 memory (its zero-width
            # address becomes `wire [-1:0]` in Verilog); same timing as the port
            gword, gdata = Signal(cfg.word_bits), Signal(cfg.word_bits)
            with m.If(pGWR):
                m.d.sync += gword.eq(self.p_data)
            with m.If(pCOMP):
                m.d.sync += gdata.eq(gword)
            return rpb.data, gdata
        m.submodules.gbuf = gb = memory.Memory(shape=unsigned(cfg.word_bits),
                                               depth=cfg.col_words, init=[])
        gwp = gb.write_port()
        grp = gb.read_port()
        m.d.comb += [gwp.en.eq(pGWR), gwp.addr.eq(self.p_col), gwp.data.eq(self.p_data),
                     grp.addr.eq(self.p_col), grp.en.eq(pCOMP)]
        return rpb.data, grp.data

    def _mac_lanes(self, m, w_word, x_word):
        """MAC lanes: a COMP at t reads at t, multiplies/accumulates in t+1;
        RDRES captures the accumulator into `res` and clears it."""
        cfg = self.config
        lanes = data.ArrayLayout(signed(ACT_BITS), cfg.lanes)
        wv = data.View(lanes, w_word)
        xv = data.View(lanes, x_word)
        comp_d1 = Signal()
        m.d.sync += comp_d1.eq(_is(self.p_cmd, PCMD["COMP"]))
        dot = tree_sum([wv[i] * xv[i] for i in range(cfg.lanes)])
        acc = Signal(signed(ACC_BITS))
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(acc + Mux(comp_d1, dot, 0))  # wraps to int32
        with m.If(_is(self.p_cmd, PCMD["RDRES"])):
            m.d.sync += [self.res.eq(acc_next), acc.eq(0)]
        with m.Else():
            m.d.sync += acc.eq(acc_next)


class _ChannelView:
    """What the channel's stages share: the banks' states and the channel's
    bus / tFAW bookkeeping of this cycle."""

    def __init__(self, m, cfg: PIMConfig, banks):
        self.states = [b.state for b in banks]
        self.any_m_open = Signal()
        self.any_p_open = Signal()
        m.d.comb += [self.any_m_open.eq(Cat(*[s.m_open for s in self.states]).any()),
                     self.any_p_open.eq(Cat(*[s.p_open for s in self.states]).any())]
        # data bus reservations (bit i = cycle t+i)
        self.busy = Signal(cfg.tCL + cfg.tCCD_S)
        # ages (cycles since) of the 4 most recent activations, saturating at tFAW
        self.ages = [Signal(count_width(cfg.tFAW), init=cfg.tFAW, name=f"faw_age{i}")
                     for i in range(4)]
        self.faw = (self.ages[3] < cfg.tFAW, self.ages[2] < cfg.tFAW)

    def rules(self, cfg, m_cmd, p_cmd) -> dict:
        return channel_rules(cfg, self.busy, self.faw, self.any_m_open, self.any_p_open,
                             m_cmd, p_cmd)


class _JobEngine:
    """The scheduler's registers: the GEMV job engine (step, bank, row, rows
    left, column) and blocked mode's channel ownership."""

    def __init__(self, cfg: PIMConfig):
        w = _w(cfg)
        self.step = Signal(count_width(len(JOB_STEPS) - 1))
        self.bank = Signal(w["bank"])
        self.row = Signal(w["row"])
        self.left = Signal(w["nrows"])
        self.col = Signal(w["col"])
        self.bmode_pim = Signal()   # blocked: the channel is in PIM mode
        self.pending = Signal()     # blocked: switch to PIM once memory rows are closed
        self.served = Signal(count_width(cfg.quantum))
        self.pim_ran = Signal()     # blocked: this PIM turn has taken its job

    def at(self, name: str):
        return is_const(self.step, _STEP[name])


class PIMChannel(wiring.Component):
    """`banks` PIMBanks on one command and data bus.

    Scheduler mode (default):
      mem_req : In(stream of memreq_layout)   memory reads/writes, in order
      job     : In(stream of job_layout)      GEMV jobs, in order
      vec     : In(stream of word)            col_words vector words per job
      m_issue, p_issue : Out(cmd_layout)      the commands issued this cycle
    raw=True: m_issue, p_issue are inputs (the testbench issues commands).
    Both:
      rd  : Out(stream of word, always ready)     read data, tCL after its RD
      res : Out(stream of int32, always ready)    GEMV row result, tCL after RDRES
      err_bits : Out   sticky checker bits (RULES order); error = any of them
      cmd_count, comp_count, bus_count : Out(32)  commands, COMPs, bus transfers
      clear : In(1)    zero the sticky bits and counters
      idle  : Out(1)   no job in progress and nothing in flight on the bus
      load_en/load_bank/load_addr/load_data : back-door storage write
    """

    def __init__(self, config: PIMConfig, *, raw: bool = False):
        self.config = cfg = _check_config(config)
        self.raw = raw
        w = _w(cfg)
        self.bank_addr_width = max(1, ceil_log2(cfg.bank_words))
        issue_dir = In if raw else Out
        ports = {
            "m_issue": issue_dir(cmd_layout(cfg)),
            "p_issue": issue_dir(cmd_layout(cfg)),
            "rd": Out(stream.Signature(unsigned(w["word"]), always_ready=True)),
            "res": Out(stream.Signature(signed(ACC_BITS), always_ready=True)),
            "err_bits": Out(_N_RULES),
            "error": Out(1),
            "cmd_count": Out(32), "comp_count": Out(32), "bus_count": Out(32),
            "clear": In(1),
            "idle": Out(1),
            "load_en": In(1), "load_bank": In(w["bank"]),
            "load_addr": In(self.bank_addr_width), "load_data": In(w["word"]),
        }
        if not raw:
            ports.update({
                "mem_req": In(stream.Signature(memreq_layout(cfg))),
                "job": In(stream.Signature(job_layout(cfg))),
                "vec": In(stream.Signature(unsigned(w["word"]))),
            })
        super().__init__(ports)

    def elaborate(self, platform: object) -> Module:
        """Build the channel: its banks, the shared bus, and the scheduler or the
        direct command ports."""
        m = Module()
        banks = [PIMBank(self.config) for _ in range(self.config.banks)]
        for k, b in enumerate(banks):
            m.submodules[f"bank{k}"] = b
        view = _ChannelView(m, self.config, banks)
        if self.raw:
            m.d.comb += self.idle.eq(~view.busy.any())
        else:
            self._scheduler(m, view)
        self._bank_commands(m, banks)
        self._checker(m, banks, view)
        self._bus_and_faw(m, view)
        self._counters(m)
        self._return_path(m, banks)
        return m

    def _bank_commands(self, m, banks):
        """Each bank sees the commands addressed to it (others as NOP)."""
        mc, pc = self.m_issue, self.p_issue
        for k, b in enumerate(banks):
            m.d.comb += [
                b.m_cmd.eq(Mux(mc.bank == k, mc.cmd, 0)), b.m_row.eq(mc.row),
                b.m_col.eq(mc.col), b.m_data.eq(mc.data),
                b.p_cmd.eq(Mux(pc.bank == k, pc.cmd, 0)), b.p_row.eq(pc.row),
                b.p_col.eq(pc.col), b.p_data.eq(pc.data),
                b.load_en.eq(self.load_en & (self.load_bank == k)),
                b.load_addr.eq(self.load_addr), b.load_data.eq(self.load_data),
            ]

    def _checker(self, m, banks, view):
        """Channel rules + every bank's rules into the sticky error bits."""
        chan = view.rules(self.config, self.m_issue.cmd, self.p_issue.cmd)
        bank_err = Const(0, _N_RULES)
        for b in banks:
            bank_err = bank_err | b.err
        now = Signal(_N_RULES)
        m.d.comb += now.eq(bank_err | _bits(chan))
        with m.If(self.clear):
            m.d.sync += self.err_bits.eq(0)
        with m.Else():
            m.d.sync += self.err_bits.eq(self.err_bits | now)
        m.d.comb += self.error.eq(self.err_bits.any())

    def _bus_and_faw(self, m, view):
        """Reserve the bus slots of this cycle's transfers; age the activations."""
        cfg = self.config
        mc, pc = self.m_issue, self.p_issue
        _, m_mask = _m_bus(cfg, mc.cmd)
        _, p_mask = _p_bus(cfg, pc.cmd)
        m.d.sync += view.busy.eq((view.busy | m_mask | p_mask) >> 1)
        ages = view.ages
        ma, pa = _is(mc.cmd, MCMD["ACT"]), _is(pc.cmd, PCMD["PACT"])
        older = [Mux(a == cfg.tFAW, a, a + 1) for a in ages]
        with m.If(ma & pa):
            m.d.sync += [ages[0].eq(1), ages[1].eq(1), ages[2].eq(older[0]),
                         ages[3].eq(older[1])]
        with m.Elif(ma | pa):
            m.d.sync += [ages[0].eq(1)] + [ages[i].eq(older[i - 1]) for i in range(1, 4)]
        with m.Else():
            m.d.sync += [ages[i].eq(older[i]) for i in range(4)]

    def _counters(self, m):
        cfg = self.config
        mc, pc = self.m_issue, self.p_issue
        m_uses, _ = _m_bus(cfg, mc.cmd)
        p_uses, _ = _p_bus(cfg, pc.cmd)
        m_any = ~_is(mc.cmd, MCMD["NOP"])
        p_any = ~_is(pc.cmd, PCMD["NOP"])
        with m.If(self.clear):
            m.d.sync += [self.cmd_count.eq(0), self.comp_count.eq(0), self.bus_count.eq(0)]
        with m.Else():
            m.d.sync += [
                self.cmd_count.eq(self.cmd_count + m_any + p_any),
                self.comp_count.eq(self.comp_count + _is(pc.cmd, PCMD["COMP"])),
                self.bus_count.eq(self.bus_count + m_uses + p_uses),
            ]

    def _return_path(self, m, banks):
        """RD / RDRES at t -> bank data at t+1 -> out at t+tCL."""
        cfg = self.config
        mc, pc = self.m_issue, self.p_issue
        mRD = _is(mc.cmd, MCMD["RD"])
        pRES = _is(pc.cmd, PCMD["RDRES"])
        v1, r1 = Signal(), Signal()
        bk1 = Signal.like(mc.bank)
        m.d.sync += [v1.eq(mRD | pRES), r1.eq(~mRD & pRES), bk1.eq(Mux(mRD, mc.bank, pc.bank))]
        word = cfg.word_bits
        d1 = Signal(max(word, ACC_BITS))
        m.d.comb += d1.eq(Mux(r1, select(bk1, [b.res.as_unsigned() for b in banks]),
                              select(bk1, [b.rd_data for b in banks])))
        v, r, d = v1, r1, d1
        for i in range(2, cfg.tCL + 1):
            vn, rn = Signal(name=f"ret_v{i}"), Signal(name=f"ret_r{i}")
            dn = Signal(d1.shape(), name=f"ret_d{i}")
            m.d.sync += [vn.eq(v), rn.eq(r), dn.eq(d)]
            v, r, d = vn, rn, dn
        m.d.comb += [
            self.rd.valid.eq(v & ~r), self.rd.payload.eq(d[:word]),
            self.res.valid.eq(v & r), self.res.payload.eq(d[:ACC_BITS]),
        ]

    # ------------------------------------------------------------------ scheduler
    def _scheduler(self, m, view):
        """The policy of golden.pim: memory path first, then the PIM path
        checked together with it; the job engine and blocked mode's owner
        advance on what was issued."""
        eng = _JobEngine(self.config)
        consumed = self._memory_path(m, view, eng)
        p_go = self._pim_path(m, view, eng)
        latch = self._job_engine(m, eng, p_go)
        if self.config.mode == "blocked":
            self._blocked_owner(m, view, eng, latch, consumed)
        m.d.comb += self.idle.eq(eng.at("IDLE") & ~view.busy.any())

    def _memory_path(self, m, view, eng):
        """The head request's next command, else a precharge that the PIM
        path (dual) or the switch to PIM mode (blocked) waits for. Returns
        `consumed`: the head request issues its RD/WR this cycle."""
        cfg = self.config
        blocked = cfg.mode == "blocked"
        mc, rq = self.m_issue, self.mem_req.payload
        mem_allowed = Signal()
        m.d.comb += mem_allowed.eq(1 if not blocked else (~eng.bmode_pim & ~eng.pending))
        sth = data.View(state_layout(cfg), select(rq.bank, [Value.cast(x) for x in view.states]))
        hit = Signal()
        m.d.comb += hit.eq(sth.m_open & (sth.m_row == rq.row))
        cand_m = Signal(3)
        with m.If(hit):
            m.d.comb += cand_m.eq(Mux(rq.write, MCMD["WR"], MCMD["RD"]))
        with m.Elif(sth.m_open):
            m.d.comb += cand_m.eq(MCMD["PRE"])
        with m.Else():
            m.d.comb += cand_m.eq(MCMD["ACT"])
        head_ok = ~(_any(bank_rules(cfg, sth, cand_m, rq.row, 0, 0))
                    | _any(view.rules(cfg, cand_m, 0)))
        head_go = Signal()
        m.d.comb += head_go.eq(self.mem_req.valid & mem_allowed & head_ok)
        hit_live = self.mem_req.valid & mem_allowed & hit
        close = []
        for k, s in enumerate(view.states):
            if blocked:
                need = s.m_open & eng.pending
            else:
                need = s.m_open & eng.at("PACT") & (eng.bank == k) & (eng.row == s.m_row)
            ok = ~(_any(bank_rules(cfg, s, MCMD["PRE"], 0, 0, 0))
                   | _any(view.rules(cfg, MCMD["PRE"], 0)))
            c = Signal(name=f"close{k}")
            m.d.comb += c.eq(need & ~(hit_live & (rq.bank == k)) & ok)
            close.append(c)
        with m.If(head_go):
            m.d.comb += [mc.cmd.eq(cand_m), mc.bank.eq(rq.bank), mc.row.eq(rq.row),
                         mc.col.eq(rq.col), mc.data.eq(rq.data)]
        for k in range(cfg.banks):
            with m.Elif(close[k]):
                m.d.comb += [mc.cmd.eq(MCMD["PRE"]), mc.bank.eq(k)]
        consumed = Signal()
        m.d.comb += [consumed.eq(head_go & hit), self.mem_req.ready.eq(consumed)]
        return consumed

    def _pim_path(self, m, view, eng):
        """The job engine's command, after the memory path's. Returns `p_go`."""
        cfg = self.config
        mc, pc = self.m_issue, self.p_issue
        pst = data.View(state_layout(cfg),
                        select(eng.bank, [Value.cast(x) for x in view.states]))
        cand_p = Signal(3)
        m.d.comb += cand_p.eq(select(eng.step, [Const(PCMD["NOP" if s == "IDLE" else s], 3)
                                                for s in JOB_STEPS]))
        m_same = Mux(mc.bank == eng.bank, mc.cmd, 0)
        p_ok = ~(_any(bank_rules(cfg, pst, m_same, mc.row, cand_p, eng.row))
                 | _any(view.rules(cfg, mc.cmd, cand_p)))
        pim_allowed = 1 if cfg.mode != "blocked" else eng.bmode_pim
        p_go = Signal()
        m.d.comb += p_go.eq(~eng.at("IDLE") & pim_allowed & p_ok
                            & (~eng.at("GWR") | self.vec.valid))
        with m.If(p_go):
            m.d.comb += [pc.cmd.eq(cand_p), pc.bank.eq(eng.bank), pc.row.eq(eng.row),
                         pc.col.eq(eng.col), pc.data.eq(self.vec.payload)]
        m.d.comb += self.vec.ready.eq(p_go & eng.at("GWR"))
        return p_go

    def _job_engine(self, m, eng, p_go):
        """Next step: take a job when idle, else advance on an issued command
        (JOB_STEPS order). Returns `latch` (a job is taken this cycle)."""
        cfg = self.config
        latch = Signal()
        if cfg.mode == "blocked":
            m.d.comb += latch.eq(eng.at("IDLE") & self.job.valid & eng.bmode_pim
                                 & ~(eng.pim_ran & self.mem_req.valid))
        else:
            m.d.comb += latch.eq(eng.at("IDLE") & self.job.valid)
        m.d.comb += self.job.ready.eq(latch)
        last_col = eng.col == cfg.col_words - 1
        with m.If(latch):
            jp = self.job.payload
            m.d.sync += [eng.step.eq(_STEP["GWR"]), eng.bank.eq(jp.bank), eng.row.eq(jp.row),
                         eng.left.eq(jp.nrows), eng.col.eq(0)]
        with m.Elif(p_go & (eng.at("GWR") | eng.at("COMP"))):
            with m.If(last_col):
                m.d.sync += [eng.step.eq(Mux(eng.at("GWR"), _STEP["PACT"], _STEP["RDRES"])),
                             eng.col.eq(0)]
            with m.Else():
                m.d.sync += eng.col.eq(eng.col + 1)
        with m.Elif(p_go & eng.at("PACT")):
            m.d.sync += eng.step.eq(_STEP["COMP"])
        with m.Elif(p_go & eng.at("RDRES")):
            m.d.sync += eng.step.eq(_STEP["PPRE"])
        with m.Elif(p_go & eng.at("PPRE")):
            with m.If(eng.left > 1):
                m.d.sync += [eng.step.eq(_STEP["PACT"]), eng.row.eq(eng.row + 1),
                             eng.left.eq(eng.left - 1)]
            with m.Else():
                m.d.sync += eng.step.eq(_STEP["IDLE"])
        return latch

    def _blocked_owner(self, m, view, eng, latch, consumed):
        """Blocked mode: who owns the channel next cycle."""
        idle = eng.at("IDLE")
        with m.If(~eng.bmode_pim):
            with m.If(eng.pending):
                with m.If(~view.any_m_open):
                    m.d.sync += [eng.bmode_pim.eq(1), eng.pending.eq(0), eng.pim_ran.eq(0)]
            with m.Elif(self.job.valid & idle
                        & (~self.mem_req.valid | (eng.served >= self.config.quantum))):
                m.d.sync += eng.pending.eq(1)
            with m.If(consumed & (eng.served != self.config.quantum)):
                m.d.sync += eng.served.eq(eng.served + 1)
        with m.Else():
            with m.If(latch):
                m.d.sync += eng.pim_ran.eq(1)
            with m.Elif(idle & eng.pim_ran & self.mem_req.valid):
                m.d.sync += [eng.bmode_pim.eq(0), eng.served.eq(0)]


class PIMSystem(wiring.Component):
    """PIMChannel fed from on-chip request memories, results into response
    memories (Python loads, starts, awaits `done`, reads back). `cycles` is
    golden.pim.schedule's count + hdl.streams.SYSTEM_OVERHEAD.

      load_sel  : LOAD_BANK (addr = bank * bank_words + word) / LOAD_MEM / LOAD_JOB / LOAD_VEC
      load_addr, load_data, load_en : write one word (only while not running)
      n_mem, n_job, n_vec : request counts, sampled at start
      start (pulse) / done / cycles (start .. done)
      error, err_bits, cmd_count, comp_count, bus_count : from the channel (run totals)
      out_sel (OUT_RD / OUT_RES), out_addr -> out_data one cycle later
      n_rd, n_res : responses written
    """

    def __init__(self, config: PIMConfig, *, max_mem: int, max_jobs: int, max_reads: int,
                 max_results: int):
        self.config = cfg = _check_config(config)
        for name, v in (("max_mem", max_mem), ("max_jobs", max_jobs),
                        ("max_reads", max_reads), ("max_results", max_results)):
            check_int(name, v, 1)
        self.max_mem, self.max_jobs = max_mem, max_jobs
        self.max_vec = max_jobs * cfg.col_words
        self.max_reads, self.max_results = max_reads, max_results
        self.mem_bits = memreq_layout(cfg).size
        self.data_width = max(self.mem_bits, cfg.word_bits, job_layout(cfg).size)
        depth = max(cfg.banks * cfg.bank_words, max_mem, self.max_vec, max_jobs)
        self.load_addr_width = max(1, ceil_log2(depth))
        self._load = LoadPort(sel_width=2, addr_width=self.load_addr_width,
                              data_width=self.data_width)
        super().__init__({
            **self._load.members(),
            "n_mem": In(count_width(max_mem)), "n_job": In(count_width(max_jobs)),
            "n_vec": In(count_width(self.max_vec)),
            "start": In(1), "done": Out(1), "cycles": Out(32),
            "error": Out(1), "err_bits": Out(_N_RULES),
            "cmd_count": Out(32), "comp_count": Out(32), "bus_count": Out(32),
            "out_sel": In(1), "out_addr": In(max(1, ceil_log2(max(max_reads, max_results)))),
            "out_data": Out(max(cfg.word_bits, ACC_BITS)),
            "n_rd": Out(32), "n_res": Out(32),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the channel with its request and response memories and run control."""
        m = Module()
        m.submodules.channel = ch = PIMChannel(self.config)
        m.submodules.run = run = RunControl()
        self._bank_load(m, ch, run)
        sources_busy = self._request_sources(m, ch, run)
        self._response_memories(m, ch, run)
        m.d.comb += [ch.clear.eq(run.go), self.error.eq(ch.error), self.err_bits.eq(ch.err_bits),
                     self.cmd_count.eq(ch.cmd_count), self.comp_count.eq(ch.comp_count),
                     self.bus_count.eq(ch.bus_count)]
        # The run ends when every request has been taken and the channel is quiet.
        finished = Signal()
        m.d.comb += finished.eq(~sources_busy & ch.idle & is_const(ch.m_issue.cmd, 0)
                                & is_const(ch.p_issue.cmd, 0))
        run.connect_system(m, self, finished=finished)
        return m

    def _bank_load(self, m, ch, run):
        """LOAD_BANK writes the banks' storage through the channel's back door."""
        cfg = self.config
        bw = ch.bank_addr_width
        bank_of = self.load_addr // cfg.bank_words if cfg.banks > 1 else 0
        m.d.comb += [
            ch.load_en.eq(self.load_en & is_const(self.load_sel, LOAD_BANK) & ~run.running),
            ch.load_bank.eq(bank_of),
            ch.load_addr.eq((self.load_addr % cfg.bank_words)[:bw] if cfg.banks > 1
                            else self.load_addr[:bw]),
            ch.load_data.eq(self.load_data[:cfg.word_bits]),
        ]

    def _request_sources(self, m, ch, run):
        """Request memories streamed into the channel; returns "some request
        not yet taken"."""
        cfg = self.config
        sources = {
            "mem": (LOAD_MEM, memreq_layout(cfg), self.max_mem, self.n_mem, ch.mem_req),
            "job": (LOAD_JOB, job_layout(cfg), self.max_jobs, self.n_job, ch.job),
            "vec": (LOAD_VEC, unsigned(cfg.word_bits), self.max_vec, self.n_vec, ch.vec),
        }
        busy = []
        for name, (sel, layout, depth, count, sink) in sources.items():
            src = PreloadedMemory(load=self._load, sel=sel, shape=layout, depth=depth,
                                  max_outer=depth)
            m.submodules[f"{name}_src"] = src
            src.connect_run(m, self, run, n_outer=count)
            wiring.connect(m, src.data, sink)
            busy.append(src.busy)
        return Cat(*busy).any()

    def _response_memories(self, m, ch, run):
        """Read data and GEMV results written in arrival order; out_sel /
        out_addr read them back."""
        outs = []
        for name, src, depth, counter in (("rd", ch.rd, self.max_reads, self.n_rd),
                                          ("res", ch.res, self.max_results, self.n_res)):
            mem = memory.Memory(shape=unsigned(len(Value.cast(src.payload))), depth=depth,
                                init=[])
            m.submodules[f"{name}_out"] = mem
            aw = max(1, ceil_log2(depth))
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(counter[:aw]), wp.data.eq(src.payload),
                         wp.en.eq(src.valid & (counter < depth))]
            with m.If(run.go):
                m.d.sync += counter.eq(0)
            with m.Elif(src.valid):
                m.d.sync += counter.eq(counter + 1)
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(self.out_addr[:aw])
            outs.append(rp.data)
        m.d.comb += self.out_data.eq(Mux(self.out_sel, outs[1], outs[0]))


#: PIMSystem sizes of the default designs (and of cosim.pim's builds).
DEFAULT_SYSTEM_SIZES = {"max_mem": 8192, "max_jobs": 256, "max_reads": 8192, "max_results": 2048}


def pim_factory(config: PIMConfig, *, kind: str = "system",
                sizes: dict | None = None) -> tuple[str, Callable[[], PIMBank | PIMSystem]]:
    """(module name, zero-argument factory) of a PIM design: kind "bank"
    (PIMBank) or "system" (PIMSystem with `sizes`, default DEFAULT_SYSTEM_SIZES)."""
    _check_config(config)
    check_choice("kind", kind, ("bank", "system"))
    if kind == "bank":
        return f"{config.name()}_bank", lambda: PIMBank(config)
    s = dict(DEFAULT_SYSTEM_SIZES if sizes is None else sizes)
    suffix = "" if s == DEFAULT_SYSTEM_SIZES else (
        f"_m{s['max_mem']}_j{s['max_jobs']}_r{s['max_reads']}_s{s['max_results']}")
    return f"{config.name()}_sys{suffix}", lambda: PIMSystem(config, **s)
