"""The accelerator core (docs/core.md) in Amaranth 0.5: a sequencer that fetches
the ISA of golden.core_config from memory and runs it on on-chip activation
buffers, the SFU (hdl.sfu), the linear engine (hdl.core_linear) and two AXI4
masters (hdl.axi), bit-exact with golden.core.execute.

What this RTL runs today: HALT, SYNC, LOAD, STORE, RMSNORM, QUANT, ROPE, SWIGLU,
ADD and LINEAR (with FLAG_RES) -- every instruction of a decoder layer's MLP half
and of its attention half up to the KV4 unit. EMBED, ARGMAX, LOGITS, KV_APPEND and
ATTEND are decoded and refused with ERR_UNIMPLEMENTED (the error status names the
instruction), never run wrongly.

Structure (one instruction at a time; the phases of an instruction run in order):

  sequencer   FETCH (INSTR_BYTES from prog + 64 pc through the read master) ->
              DECODE (field checks -> error status, or dispatch) -> the op's
              phases -> RETIRE (pc + 1)
  buffers     `buffers` memories of max_tokens x buf_elems 32-bit elements, one
              word = sfu.lanes elements; two read ports (A: src, B: src2) and one
              lane-granular write port each; a token-scale memory (mn, L) per
              buffer row, written by QUANT's TS beat
  V memory    the vector operand of an SFU pass read from memory: RMSNorm's NW
              (int16), RoPE's cos (low halves) and sin (high halves) rows
              pos..pos+T-1, LINEAR's S1 (int32)
  acc RAM     rows x buf_elems int32: the engine's accumulators of one row tile,
              dequantized in place when the LINEAR adds a residual
  movers      VLOAD (read beats -> V or a buffer), STORE (buffer -> write beats),
              ACT (A8 rows -> the engine's activation file), SFU pass (per token:
              one cmd, x.a / x.b words read with the `adv` pattern, out words
              written back), ENGINE (cmd, the read ranges of each column tile,
              acc beats -> acc RAM)

Every buffer, token-scale and acc write and every retired instruction appears on
the `trace` port (one record a cycle at most), so a testbench reconstructs each
instruction's result without peeking inside: the mismatch locator.

`cycle_model` gives the RTL's cycles per instruction for the memory model of
cosim/axi_mem.v (read latency, beat gap); tests hold the RTL equal to it.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden.core_config import FIELDS, FLAG_RES, INSTR_BITS, INSTR_BYTES, MEM_ALIGN, OPS, \
    CoreConfig, Registers
from golden.mixpe_config import MIXPE_GROUP_RANGE
from golden.sfu_config import MANT_BITS, X_BITS
from golden.validate import expect_type

from . import sfu as sfu_mod
from .axi import AXI_ADDR_BITS, AxiReader, AxiWriter, axi_read_members, axi_write_members
from . import core_kv
from .core_kv import KVUnit
from .core_linear import LinearEngine
from .rtl import FSM, count_width, is_const, wire

__all__ = ["IMPLEMENTED", "ERRORS", "STATES", "ERROR_CODE", "TRACE_KINDS", "check_rtl_config",
           "trace_layout", "Core", "cycle_model"]

#: Opcodes this RTL executes; the others are refused with ERR_UNIMPLEMENTED.
IMPLEMENTED = ("HALT", "SYNC", "LOAD", "STORE", "RMSNORM", "QUANT", "ROPE", "SWIGLU",
               "ADD", "LINEAR", "LOGITS", "KV_APPEND", "ATTEND", "EMBED", "ARGMAX")
#: Error status codes (the `error` output; 0 = none), in the order the checks of
#: golden.core.ProgramError name them.
ERRORS = ("none", "opcode", "unimplemented", "field", "buffer", "extent", "lanes", "k",
          "group", "tokens", "align", "ctx", "flags", "same_buffer", "overflow", "memory",
          "sfu", "engine", "kv4")
ERROR_CODE = {name: i for i, name in enumerate(ERRORS)}
#: trace.kind: a buffer word write, a token-scale write (data lane 0 = mn | L << 16),
#: an engine acc beat (word = its output n, lane t = token t of the tile, row = the
#: tile's first row), an instruction retired (cycle = the cycle counter).
TRACE_KINDS = ("buf", "ts", "acc", "retire")
_K_BUF, _K_TS, _K_ACC, _K_RETIRE = range(4)

STATES = _ST = ("IDLE", "FETCH", "FETCH_WAIT", "DECODE", "VLOAD", "SFU_CMD", "SFU_RUN", "STORE",
       "ACT", "ENGINE", "FLUSH", "KV", "EMB_ID", "EMB_ID2", "EMB_CMD", "EMB_X", "EMB_END", "ARG_CMD",
       "ARG_X", "ARG_OUT", "DRAIN", "RETIRE", "DONE", "ERROR")

# SFU pass operand sources
_A_BUF, _A_ACC = 0, 1
_B_NONE, _B_BUF, _B_NW, _B_ROPE, _B_S1 = range(5)


def check_rtl_config(c: CoreConfig) -> CoreConfig:
    """The CoreConfig limits of this RTL besides CoreConfig's own: one read and one
    write master, elements of memory beats that fit whole into a buffer word,
    power-of-two shapes where the address arithmetic shifts."""
    expect_type("config", c, CoreConfig)
    L, BB = c.sfu.lanes, c.beat_bytes
    D = c.kv4.head_dim
    problems = []
    if c.mem_ports != 1:
        problems.append(f"mem_ports={c.mem_ports}: the RTL drives one AXI read and one "
                        f"write master (mem_ports=1); the cycle model's mem_ports is the "
                        f"system model's")
    if BB > INSTR_BYTES:
        problems.append(f"beat_bytes={BB} exceeds an instruction ({INSTR_BYTES} bytes)")
    if BB // 2 > L or L % max(1, BB // 2):
        problems.append(f"beat_bytes={BB} carries {BB // 2} int16 elements, more than "
                        f"sfu.lanes={L} (or not dividing it): use beat_bytes <= 2 x lanes")
    if BB < 4:
        problems.append(f"beat_bytes={BB}: an int32 element must fit one beat")
    if c.buf_elems % L:
        problems.append(f"buf_elems={c.buf_elems} is not a multiple of sfu.lanes={L}")
    if c.cols & (c.cols - 1) or c.cols % BB:
        problems.append(f"cols={c.cols} must be a power of two and a multiple of "
                        f"beat_bytes={BB}")
    if c.rows > L:
        problems.append(f"rows={c.rows} exceeds sfu.lanes={L} (the trace carries a tile's "
                        f"accumulators in one word)")
    if D % BB or (D // 2) % L:
        problems.append(f"kv4.head_dim={D}: a RoPE table row (D bytes) must be whole beats "
                        f"and D/2 a multiple of lanes")
    if problems:
        raise ValueError("hdl.core cannot generate this CoreConfig: " + "; ".join(problems))
    core_kv.check_config(c)
    return c


def trace_layout(c: CoreConfig) -> data.StructLayout:
    """Layout of a `trace` record: a buffer, token-scale or acc write or a retired
    instruction (TRACE_KINDS), at most one a cycle."""
    L = c.sfu.lanes
    return data.StructLayout({
        "valid": unsigned(1), "kind": unsigned(2), "pc": unsigned(20),
        "buf": unsigned(4), "row": unsigned(count_width(c.max_tokens)),
        "word": unsigned(20), "mask": unsigned(L), "data": unsigned(32 * L),
        "cycle": unsigned(32)})


def _field(ir, name: str):
    f = FIELDS[name]
    v = ir[f.lo:f.lo + f.width]
    return v.as_signed() if f.signed else v


def _unused_mask(op: str) -> int:
    """Bits of the word that `op` must leave zero."""
    used = set(OPS[op].fields) | {"op"}
    mask = (1 << INSTR_BITS) - 1
    for name in used:
        f = FIELDS[name]
        mask &= ~(((1 << f.width) - 1) << f.lo)
    return mask


class Core(wiring.Component):
    """The core (module docstring). Ports:

      start  In   pulse while idle: run the program at `prog` with `pos`, `tokens`
      prog, pos, tokens  In   the registers (sampled at start)
      busy, done  Out  done holds from the HALT until the next start
      idle   Out  a start is taken now (after an error: once both masters are quiet)
      error  Out  the status code (ERRORS; 0 none), err_pc the instruction
      cycles Out  cycles of the current / last run
      state  Out  the sequencer's state (STATES): where a stuck run waits
      rd, wr      AXI4 read / write masters (hdl.axi member names)
      trace  Out  trace_layout: every result as it is written (module docstring)
    """

    def __init__(self, config: CoreConfig):
        self.config = c = check_rtl_config(config)
        self.L = c.sfu.lanes
        self.W = c.buf_elems // self.L
        self.BB = c.beat_bytes
        mb = max(c.max_tokens * c.buf_elems * 4, c.cols * c.max_k,
                 max(c.buf_elems, c.sfu.max_k) * 4, c.max_tokens * c.kv4.head_dim) // self.BB
        self.max_beats = max(1, mb, core_kv.max_beats(c))
        super().__init__({
            "start": In(1), "prog": In(AXI_ADDR_BITS), "pos": In(FIELDS["ctx"].width),
            "tokens": In(count_width(c.max_tokens) + 1),
            "busy": Out(1), "idle": Out(1), "done": Out(1), "error": Out(count_width(len(ERRORS) - 1)),
            "err_pc": Out(20), "cycles": Out(32), "state": Out(count_width(len(_ST) - 1)),
            "rd": Out(wiring.Signature(axi_read_members(8 * self.BB))),
            "wr": Out(wiring.Signature(axi_write_members(8 * self.BB))),
            "trace": Out(trace_layout(c)),
        })

    # ------------------------------------------------------------------ top
    def elaborate(self, platform: object) -> Module:
        """Build the core: sequencer, activation buffers, SFU, linear engine, KV4 unit
        and AXI masters."""
        m = Module()
        s = SimpleNamespace()
        s.fsm = FSM(m, _ST, "state")
        self._units(m, s)               # AXI masters, SFU, engine
        self._storage(m, s)             # buffers, token scales, V, acc RAM
        self._registers(m, s)           # pc, ir and its fields, run registers
        self._declare(m, s)             # the movers' registers
        self._sequencer(m, s)           # fetch, decode and checks, dispatch, retire
        self._vload(m, s)               # read beats -> V or a buffer
        self._store(m, s)               # buffer -> write beats
        self._sfu_pass(m, s)            # per token: cmd, x words, out words
        self._act(m, s)                 # A8 rows -> the engine's activation file
        self._engine(m, s)              # ranges, mem beats, acc beats
        self._flush(m, s)               # LOGITS' accumulators -> memory
        self._embed(m, s)               # EMBED: ids, scale rows, code rows -> requant
        self._argmax(m, s)              # ARGMAX: acc rows x S1 chunks -> the index
        self._kv(m, s)                  # KV_APPEND / ATTEND through the KV4 unit
        self._ports(m, s)               # the shared ports' owners by state
        self._trace(m, s)
        # an error stops the run (last: it overrides every other transition)
        with m.If(s.raise_.any() & ~s.fsm.is_("ERROR")):
            m.d.sync += [s.err.eq(s.raise_), s.err_pc.eq(s.pc)]
            s.fsm.next("ERROR")
        return m

    # ------------------------------------------------------------------ units
    def _units(self, m, s):
        c = self.config
        m.submodules.rd = s.rd = AxiReader(beat_bytes=self.BB, max_beats=self.max_beats)
        m.submodules.wr = s.wr = AxiWriter(beat_bytes=self.BB, max_beats=self.max_beats)
        wiring.connect(m, wiring.flipped(self.rd), s.rd.axi)
        wiring.connect(m, wiring.flipped(self.wr), s.wr.axi)
        # the units restart clean after an error stopped them mid-op
        s.unit_rst = Signal(name="unit_rst")
        s.sfu = sfu_mod.SFU(c.sfu)
        s.eng = LinearEngine(c)
        s.kv = KVUnit(c, max_range_beats=self.max_beats)
        m.submodules.sfu = ResetInserter(s.unit_rst)(s.sfu)
        m.submodules.engine = ResetInserter(s.unit_rst)(s.eng)
        m.submodules.kv4 = ResetInserter(s.unit_rst)(s.kv)

    def _storage(self, m, s):
        c, L, W = self.config, self.L, self.W
        word = unsigned(32 * L)
        s.bufs = []
        s.pa = SimpleNamespace(addr=Signal(range(c.max_tokens * W), name="pa_addr"),
                               en=Signal(name="pa_en"), sel=Signal(4, name="pa_sel"))
        s.pb = SimpleNamespace(addr=Signal(range(c.max_tokens * W), name="pb_addr"),
                               en=Signal(name="pb_en"), sel=Signal(4, name="pb_sel"))
        s.bw = SimpleNamespace(row=Signal(range(c.max_tokens + 1), name="bw_row"),
                               word=Signal(range(W + 1), name="bw_word"),
                               addr=Signal(range(c.max_tokens * W), name="bw_addr"),
                               data=Signal(word, name="bw_data"), mask=Signal(L, name="bw_mask"),
                               sel=Signal(4, name="bw_sel"))
        s.pa.data = Signal(word, name="pa_data")
        s.pb.data = Signal(word, name="pb_data")
        for i in range(c.buffers):
            mem = memory.Memory(shape=word, depth=c.max_tokens * W, init=[])
            m.submodules[f"buf{i}"] = mem
            ra, rb = mem.read_port(), mem.read_port()
            wp = mem.write_port(granularity=32)
            m.d.comb += [ra.addr.eq(s.pa.addr), ra.en.eq(s.pa.en),
                         rb.addr.eq(s.pb.addr), rb.en.eq(s.pb.en),
                         wp.addr.eq(s.bw.addr), wp.data.eq(s.bw.data),
                         wp.en.eq(Mux(s.bw.sel == i, s.bw.mask, 0))]
            s.bufs.append((ra, rb))
        # the read data of the buffer each port selected (selects are stable for a pass)
        with m.Switch(s.pa.sel):
            for i, (ra, _) in enumerate(s.bufs):
                with m.Case(i):
                    m.d.comb += s.pa.data.eq(ra.data)
            with m.Default():          # decode refuses other indices
                m.d.comb += s.pa.data.eq(0)
        with m.Switch(s.pb.sel):
            for i, (_, rb) in enumerate(s.bufs):
                with m.Case(i):
                    m.d.comb += s.pb.data.eq(rb.data)
            with m.Default():
                m.d.comb += s.pb.data.eq(0)
        # token scales (mn, L) per buffer row: written by QUANT's TS beat, read by
        # LINEAR's dequant pass
        ts = memory.Memory(shape=unsigned(MANT_BITS + 8), depth=c.buffers * c.max_tokens,
                           init=[])
        m.submodules.ts = ts
        s.ts_r = ts.read_port(domain="comb")
        s.ts_w = ts.write_port()
        # V: the pass's vector operand from memory, 16-bit granularity (cos | sin)
        # ... and after them EMBED's token ids (whole words)
        id_words = -(-c.max_tokens // L)
        vdepth = max(-(-max(c.buf_elems, c.sfu.max_k) // L),
                     c.max_tokens * c.kv4.head_dim // 2 // L) + id_words
        s.id_base = (vdepth - id_words) * L
        vmem = memory.Memory(shape=word, depth=vdepth, init=[])
        m.submodules.vmem = vmem
        s.v_r = vmem.read_port()
        s.v_w = vmem.write_port(granularity=16)
        s.vdepth = vdepth
        # acc RAM: one memory per tile row (the engine's acc beat writes every row)
        s.acc = []
        for t in range(c.rows):
            am = memory.Memory(shape=word, depth=W, init=[])
            m.submodules[f"acc{t}"] = am
            s.acc.append((am.read_port(), am.write_port(granularity=32)))
        s.acc_r_addr = Signal(range(W), name="acc_r_addr")
        s.acc_r_en = Signal(name="acc_r_en")
        s.acc_r_row = Signal(range(c.rows), name="acc_r_row")
        s.acc_r_data = Signal(word, name="acc_r_data")
        for t, (rp, _) in enumerate(s.acc):
            m.d.comb += [rp.addr.eq(s.acc_r_addr), rp.en.eq(s.acc_r_en)]
        with m.Switch(s.acc_r_row):
            for t, (rp, _) in enumerate(s.acc):
                with m.Case(t):
                    m.d.comb += s.acc_r_data.eq(rp.data)

    # ------------------------------------------------------------------ registers
    def _registers(self, m, s):
        c = self.config
        s.pc = Signal(20, name="pc")
        s.ir = Signal(INSTR_BITS, name="ir")
        s.prog = Signal(AXI_ADDR_BITS, name="prog_base")
        s.pos = Signal(FIELDS["ctx"].width, name="pos_r")
        s.T = Signal(count_width(c.max_tokens) + 1, name="T_r")
        s.cyc = Signal(32, name="cyc")
        s.err = Signal(count_width(len(ERRORS) - 1), name="err")
        s.err_pc = Signal(20, name="err_pc_r")
        s.f = {name: wire(m, _field(s.ir, name), f"f_{name}") for name in FIELDS}
        s.is_op = {op: wire(m, s.f["op"] == OPS[op].code, f"is_{op.lower()}") for op in OPS}
        # per-instruction phase and the row tile of a LINEAR
        s.phase = Signal(3, name="phase")
        s.r0 = Signal(range(c.max_tokens + 1), name="r0")
        s.tt = Signal(range(c.rows + 1), name="tile_tokens")
        m.d.comb += self.state.eq(s.fsm.reg)
        m.d.comb += [self.busy.eq(~s.fsm.is_("IDLE") & ~s.fsm.is_("DONE")
                                  & ~s.fsm.is_("ERROR")),
                     self.done.eq(s.fsm.is_("DONE")), self.error.eq(s.err),
                     self.err_pc.eq(s.err_pc), self.cycles.eq(s.cyc)]
        with m.If(self.busy):
            m.d.sync += s.cyc.eq(s.cyc + 1)

    def _declare(self, m, s):
        """The movers' registers, declared before any logic uses them."""
        c, L, W, BB = self.config, self.L, self.W, self.BB
        sub = L * 4 // BB
        s.raise_ = Signal(count_width(len(ERRORS) - 1), name="raise_err")   # comb
        kvw = c.kv4.heads * c.kv4.head_dim // L + 1
        s.fl = SimpleNamespace(fill=Signal(range(c.buf_elems + 1), name="fl_fill"),
                               j0=Signal(20, name="fl_j0"), last=Signal(name="fl_last"),
                               t=Signal(range(c.rows + 1), name="fl_t"),
                               w=Signal(range(W + 1), name="fl_w"),
                               left=Signal(range(W + 1), name="fl_left"),
                               v=Signal(name="fl_v"), k=Signal(range(max(2, sub)), name="fl_k"),
                               req=Signal(name="fl_req"),
                               out=Signal(range(W * sub + 1), name="fl_out"))
        s.ax = SimpleNamespace(t=Signal(range(c.max_tokens + 1), name="ax_t"),
                               j0=Signal(21, name="ax_j0"), cnt=Signal(21, name="ax_cnt"),
                               w=Signal(range(W + 1), name="ax_w"),
                               nw=Signal(range(W + 1), name="ax_nw"),
                               k=Signal(range(max(2, sub)), name="ax_k"),
                               aw=Signal(32 * L, name="ax_aw"), xv=Signal(name="ax_xv"),
                               req=Signal(name="ax_req"), addr=Signal(AXI_ADDR_BITS,
                                                                      name="ax_addr"),
                               beats=Signal(32, name="ax_beats"),
                               idx=Signal(32, name="ax_idx"), wreq=Signal(name="ax_wreq"),
                               wv=Signal(name="ax_wv"), id=Signal(32, name="ax_id"),
                               soff=Signal(range(BB // 4 + 1), name="ax_soff"),
                               slot=Signal(range(max(2, BB // L)), name="ax_slot"),
                               codes=Signal(8 * L, name="ax_codes"),
                               sidx=Signal(21, name="ax_sidx"),
                               rem=Signal(21, name="ax_rem"),
                               got=Signal(32, name="ax_got"))
        s.kv_cmd = Signal(name="kv_cmd")
        s.kv_run = Signal(name="kv_run")
        s.kx = SimpleNamespace(t=Signal(range(c.max_tokens + 1), name="kx_t"),
                               h=Signal(name="kx_h"), w=Signal(range(kvw), name="kx_w"),
                               v=Signal(name="kx_v"), src2=Signal(name="kx_src2"),
                               left=Signal(name="kx_left"))
        s.ky = SimpleNamespace(t=Signal(range(c.max_tokens + 1), name="ky_t"),
                               w=Signal(range(kvw), name="ky_w"))
        s.ps_out_addr_acc = Signal(range(W), name="ps_out_addr_acc")
        s.vl = SimpleNamespace(
            to_buf=Signal(name="vl_to_buf"), e16=Signal(name="vl_e16"),
            hi=Signal(name="vl_hi"), count=Signal(32, name="vl_count"),
            beats=Signal(32, name="vl_beats"), e=Signal(32, name="vl_e"),
            got=Signal(32, name="vl_got"), addr=Signal(AXI_ADDR_BITS, name="vl_addr"),
            req=Signal(name="vl_req"), rowlen=Signal(21, name="vl_rowlen"),
            row=Signal(range(c.max_tokens + 1), name="vl_row"),
            col=Signal(21, name="vl_col"))
        s.st = SimpleNamespace(req=Signal(name="st_req"), row=Signal(range(c.max_tokens + 1),
                                    name="st_row"), w=Signal(range(W + 1), name="st_w"),
                                    left=Signal(32, name="st_left"),
                                    v=Signal(name="st_v"), k=Signal(range(sub), name="st_k"),
                                    out=Signal(32, name="st_out"))
        s.ps = SimpleNamespace(
            t=Signal(range(c.max_tokens + 1), name="ps_t"),
            row0=Signal(range(c.max_tokens + 1), name="ps_row0"),
            tokens=Signal(range(c.max_tokens + 1), name="ps_tokens"),
            w=Signal(range(W + 1), name="ps_w"), left=Signal(range(W + 1), name="ps_left"),
            v=Signal(name="ps_v"), ow=Signal(range(W + 1), name="ps_ow"),
            ts=Signal(name="ps_ts"))
        s.ac = SimpleNamespace(row=Signal(range(c.rows + 1), name="ac_row"),
                                    w=Signal(range(W + 1), name="ac_w"),
                                    left=Signal(32, name="ac_left"), v=Signal(name="ac_v"),
                                    orow=Signal(range(c.rows + 1), name="ac_orow"),
                                    ow=Signal(range(c.max_k // L + 1), name="ac_ow"))
        s.ac_nw = wire(m, s.f["k"] >> exact_log2(L), "ac_nw")
        s.en = SimpleNamespace(cmd=Signal(name="en_cmd"), issue=Signal(name="en_issue"),
                                    tile=Signal(21, name="en_tile"),
                                    which=Signal(2, name="en_which"),
                                    got=Signal(21, name="en_got"))

    # ------------------------------------------------------------------ sequencer
    def _sequencer(self, m, s):
        c, fsm, f = self.config, s.fsm, s.f
        ib = INSTR_BYTES // self.BB
        s.fetch_beat = Signal(range(ib + 1), name="fetch_beat")
        m.d.comb += self.idle.eq(fsm.is_("IDLE") | fsm.is_("DONE")
                                 | (fsm.is_("ERROR") & ~s.rd.busy & s.wr.idle))
        with fsm.state("IDLE"), m.If(self.start):
            self._begin(m, s)
        with fsm.state("DONE"), m.If(self.start):
            self._begin(m, s)
        # ERROR: the units held in reset, the read master drained (a range cut short
        # by the error still returns its beats); a start waits for both masters
        m.d.comb += s.unit_rst.eq(fsm.is_("ERROR"))
        with fsm.state("ERROR"), m.If(self.start & ~s.rd.busy & s.wr.idle):
            self._begin(m, s)

        # FETCH: one range of the instruction's beats; FETCH_WAIT shifts them in
        rq = s.rd.req
        s.fetch_req = wire(m, fsm.is_("FETCH"), "fetch_req")
        with fsm.state("FETCH"), m.If(rq.ready):
            m.d.sync += s.fetch_beat.eq(0)
            fsm.next("FETCH_WAIT")
        with fsm.state("FETCH_WAIT"):
            with m.If(s.rd.data.valid):
                m.d.sync += [s.ir.eq(Cat(s.ir[8 * self.BB:], s.rd.data.payload)),
                             s.fetch_beat.eq(s.fetch_beat + 1)]
                with m.If(s.fetch_beat == ib - 1):
                    fsm.next("DECODE")
        with fsm.state("DECODE"):
            self._decode(m, s)
        with fsm.state("RETIRE"):
            m.d.sync += [s.pc.eq(s.pc + 1), s.phase.eq(0)]
            fsm.next("FETCH")
        # SYNC / HALT: every write answered
        with fsm.state("DRAIN"), m.If(s.wr.idle):
            with m.If(s.is_op["HALT"]):
                fsm.next("DONE")
            with m.Else():
                fsm.next("RETIRE")
        # bus errors of either master stop the run
        with m.If(s.rd.error | s.wr.error):
            m.d.comb += s.raise_.eq(ERROR_CODE["memory"])
        m.d.comb += [s.rd.clear.eq(self.start & ~self.busy),
                     s.wr.clear.eq(self.start & ~self.busy)]

    def _begin(self, m, s):
        c = self.config
        m.d.sync += [s.pc.eq(0), s.prog.eq(self.prog), s.pos.eq(self.pos),
                     s.T.eq(self.tokens), s.cyc.eq(0), s.err.eq(0), s.err_pc.eq(0),
                     s.phase.eq(0)]
        with m.If((self.tokens == 0) | (self.tokens > c.max_tokens)):
            m.d.sync += s.err.eq(ERROR_CODE["tokens"])
            s.fsm.next("ERROR")
        with m.Else():
            s.fsm.next("FETCH")

    def _decode(self, m, s):
        """The checks of golden.core's executor that the hardware makes, in its order;
        the first failing one sets the error status, else the op's first phase."""
        c, f, L = self.config, s.f, self.L
        err = Signal.like(s.raise_, name="dec_err")
        known = Signal(name="known")
        impl = Signal(name="impl")
        bad_unused = Signal(name="bad_unused")
        m.d.comb += [known.eq(0), impl.eq(0), bad_unused.eq(0)]
        for op in OPS:
            with m.If(s.is_op[op]):
                m.d.comb += [known.eq(1), impl.eq(op in IMPLEMENTED),
                             bad_unused.eq((s.ir & _unused_mask(op)).any())]
        uses = {name: Signal(name=f"uses_{name}") for name in
                ("dst", "src", "src2", "n", "addr0", "addr1", "addr2", "addr3")}
        for name, sig in uses.items():
            m.d.comb += sig.eq(0)
            for op, spec in OPS.items():
                if name in spec.fields:
                    with m.If(s.is_op[op]):
                        m.d.comb += sig.eq(1)
        sfu_n = Signal(21, name="sfu_n")        # the SFU vector length of the op
        m.d.comb += sfu_n.eq(Mux(s.is_op["ROPE"], f["heads"] * c.kv4.head_dim, f["n"]))
        buffered = wire(m, s.is_op["RMSNORM"] | s.is_op["QUANT"] | s.is_op["ROPE"], "buffered")
        lin = s.is_op["LINEAR"]
        eng_op = wire(m, lin | s.is_op["LOGITS"], "eng_op")
        # LOGITS and ARGMAX stream their rows to / from memory: n up to max_n
        wide_n = wire(m, s.is_op["LOGITS"] | s.is_op["ARGMAX"], "wide_n")
        glo, ghi = MIXPE_GROUP_RANGE
        g = f["group"]
        pow2 = wire(m, ~(g & (g - 1)).any(), "group_pow2")
        kbeats_ok = wire(m, ~f["k"][:exact_log2(L)].any() if L > 1 else Const(1), "k_lanes")
        sw_shift = wire(m, c.sfu.frac + f["in_frac2"] - f["out_frac"], "swiglu_shift")
        kvop = wire(m, s.is_op["KV_APPEND"] | s.is_op["ATTEND"], "kvop")
        D = c.kv4.head_dim
        kv_width = wire(m, Mux(s.is_op["ATTEND"], f["heads"] * D, D), "kv_width")
        s.ctx21 = Signal(21, name="ctx21")
        m.d.comb += s.ctx21.eq(f["ctx"])
        addr_bad = Signal(name="addr_bad")
        m.d.comb += addr_bad.eq(0)
        for a in ("addr0", "addr1", "addr2", "addr3"):
            bad = f[a][:exact_log2(MEM_ALIGN)].any()
            if c.addr_bits < 64:
                bad = bad | f[a][c.addr_bits:].any()
            with m.If(uses[a] & bad):
                m.d.comb += addr_bad.eq(1)
        checks = [
            (~known, "opcode"), (bad_unused, "field"),
            ((uses["dst"] & (f["dst"] >= c.buffers)) | (uses["src"] & (f["src"] >= c.buffers))
             | (uses["src2"] & (f["src2"] >= c.buffers)), "buffer"),
            (addr_bad, "align"),
            (uses["n"] & is_const(f["n"], 0), "extent"),
            (~impl, "unimplemented"),
            ((uses["n"] & ~wide_n & (f["n"] > c.buf_elems)) | (wide_n & (f["n"] > c.max_n))
             | (buffered & (sfu_n > c.sfu.max_k))
             | (s.is_op["ROPE"] & (is_const(f["heads"], 0) | (sfu_n > c.buf_elems))),
             "extent"),
            ((uses["n"] | s.is_op["ROPE"]) & (sfu_n[:exact_log2(L)].any() if L > 1
                                              else Const(0)), "lanes"),
            (eng_op & (is_const(f["k"], 0) | (f["k"] > c.max_k) | ~kbeats_ok), "k"),
            (eng_op & ((g < glo) | (g > ghi) | ~pow2 | (f["k"] & (g - 1)).any()), "group"),
            (lin & (f["flags"] & ~FLAG_RES).any(), "flags"),
            (lin & ~f["flags"][0] & f["src2"].any(), "flags"),
            (lin & (f["dst"] == f["src"]), "same_buffer"),
            (kvop & ((f["col"] + kv_width > c.buf_elems)
                     | (s.is_op["ATTEND"] & (is_const(f["heads"], 0)
                                             | (f["heads"] > c.kv4.heads)))), "extent"),
            (kvop & (f["col"][:exact_log2(L)].any() if L > 1 else Const(0)), "lanes"),
            (s.is_op["ATTEND"] & (f["dst"] == f["src"]), "same_buffer"),
            ((s.is_op["ROPE"] | kvop) & (is_const(f["ctx"], 0) | (s.pos + s.T > s.ctx21)),
             "ctx"),
            (kvop & (f["ctx"] > c.kv4.max_t), "ctx"),
            (s.is_op["EMBED"] & ((g < glo) | (g > ghi) | ~pow2 | (f["n"] & (g - 1)).any()),
             "group"),
            (s.is_op["EMBED"] & is_const(f["ctx"], 0), "ctx"),
            (s.is_op["EMBED"] & ((f["e"] < -128) | (f["e"] > 127)), "field"),
            (s.is_op["RMSNORM"] & ((f["e"] < -256) | (f["e"] > 255)), "field"),
            (s.is_op["SWIGLU"] & ((sw_shift < -128) | (sw_shift > 127)), "field"),
        ]
        m.d.comb += err.eq(0)
        for cond, name in reversed(checks):
            with m.If(cond):
                m.d.comb += err.eq(ERROR_CODE[name])
        with m.If(err.any()):
            m.d.comb += s.raise_.eq(err)
        with m.Else():
            m.d.sync += [s.r0.eq(0), s.phase.eq(0)]
            with m.If(s.is_op["HALT"] | s.is_op["SYNC"]):
                s.fsm.next("DRAIN")
            with m.If(s.is_op["LOAD"] | s.is_op["RMSNORM"] | s.is_op["ROPE"] | lin):
                self._start_vload_for_op(m, s)
            with m.If(s.is_op["STORE"]):
                s.fsm.next("STORE")
            with m.If(s.is_op["QUANT"] | s.is_op["SWIGLU"] | s.is_op["ADD"]):
                self._start_pass(m, s, r0=0, tokens=s.T)
            with m.If(kvop):
                self._enter_kv(m, s)
            with m.If(s.is_op["LOGITS"]):
                m.d.sync += s.r0.eq(0)
                self._enter_act(m, s, 0)
            with m.If(s.is_op["EMBED"]):
                self._vload_setup(m, s, addr=f["addr0"], count=s.T, e16=0, base=s.id_base)
            with m.If(s.is_op["ARGMAX"]):
                m.d.sync += s.ax.t.eq(0)
                s.fsm.next("ARG_CMD")

    # ------------------------------------------------------------------ VLOAD
    def _vload(self, m, s):
        """Read beats of one range into V (int16 into the low or high halves, or
        int32) or into buffer rows (LOAD: int32 [T, n], rows of n elements)."""
        c, L, BB = self.config, self.L, self.BB
        vl = s.vl
        # one range per VLOAD: requested in its first cycle
        active = wire(m, s.fsm.is_("VLOAD"), "vl_active")
        beat = s.rd.data.payload
        epb16, epb32 = BB // 2, BB // 4
        take = wire(m, active & s.rd.data.valid, "vl_take")
        # V writes: element e .. e+epb-1 at word e // L, lanes (e % L) ..
        v_data = Signal(32 * L, name="vl_vdata")
        v_en = Signal(2 * L, name="vl_ven")
        off = wire(m, vl.e[:exact_log2(L)] if L > 1 else Const(0, 1), "vl_off")
        lanes16 = []
        lanes32 = []
        for j in range(L):
            e16 = beat[16 * (j % epb16):16 * (j % epb16) + 16]
            e32 = beat[32 * (j % epb32):32 * (j % epb32) + 32]
            lanes16.append(Cat(e16, e16))
            lanes32.append(e32)
        en16 = Signal(L, name="vl_en16")       # lanes this beat fills (int16 elements)
        en32 = Signal(L, name="vl_en32")
        for j in range(L):
            m.d.comb += [en16[j].eq((j // epb16 == (off >> exact_log2(epb16)) if epb16 > 1
                                     else (off == j)) & (vl.e + (j % epb16) < vl.count)),
                         en32[j].eq((j // epb32 == (off >> exact_log2(epb32)) if epb32 > 1
                                     else (off == j)) & (vl.e + (j % epb32) < vl.count))]
        m.d.comb += v_data.eq(Mux(vl.e16, Cat(*lanes16), Cat(*lanes32)))
        for j in range(L):
            m.d.comb += [v_en[2 * j].eq(Mux(vl.e16, en16[j] & ~vl.hi, en32[j])),
                         v_en[2 * j + 1].eq(Mux(vl.e16, en16[j] & vl.hi, en32[j]))]
        m.d.comb += [s.v_w.addr.eq(vl.e >> exact_log2(L)), s.v_w.data.eq(v_data),
                     s.v_w.en.eq(Mux(take & ~vl.to_buf, v_en, 0))]
        s.vl_buf_we = wire(m, take & vl.to_buf, "vl_buf_we")
        s.vl_buf_mask = wire(m, en32, "vl_buf_mask")
        s.vl_buf_data = wire(m, Cat(*lanes32), "vl_buf_data")
        with m.If(take):
            step = Mux(vl.e16, epb16, epb32)
            m.d.sync += [vl.e.eq(vl.e + step), vl.got.eq(vl.got + 1)]
            with m.If(vl.col + step >= vl.rowlen):
                m.d.sync += [vl.col.eq(0), vl.row.eq(vl.row + 1)]
            with m.Else():
                m.d.sync += vl.col.eq(vl.col + step)
        with m.If(active & vl.req & s.rd.req.ready):
            m.d.sync += vl.req.eq(0)
        s.vl_done = wire(m, active & ~vl.req & take & (vl.got + 1 == vl.beats), "vl_done")

    def _vload_setup(self, m, s, *, addr, count, e16, hi=0, to_buf=0, rowlen=0, base=0):
        """A VLOAD of `count` elements from the beat-aligned `addr` into V elements
        base .. base + count - 1 (or into buffer rows)."""
        vl, BB = s.vl, self.BB
        nbytes = count * (2 if e16 else 4)
        m.d.sync += [vl.addr.eq(addr), vl.count.eq(base + count), vl.e16.eq(e16), vl.hi.eq(hi),
                     vl.to_buf.eq(to_buf), vl.rowlen.eq(rowlen), vl.e.eq(base), vl.got.eq(0),
                     vl.row.eq(0), vl.col.eq(0), vl.req.eq(1),
                     vl.beats.eq((nbytes + BB - 1) >> exact_log2(BB))]
        s.fsm.next("VLOAD")

    def _start_vload_for_op(self, m, s):
        """The first VLOAD of LOAD, RMSNORM (NW), ROPE (cos) and LINEAR (S1)."""
        f, D = s.f, self.config.kv4.head_dim
        with m.If(s.is_op["LOAD"]):
            self._vload_setup(m, s, addr=f["addr0"], count=s.T * f["n"], e16=0, to_buf=1,
                              rowlen=f["n"])
        with m.If(s.is_op["RMSNORM"]):
            self._vload_setup(m, s, addr=f["addr0"], count=f["n"], e16=1)
        with m.If(s.is_op["ROPE"]):
            self._vload_setup(m, s, addr=f["addr0"] + s.pos * D, count=s.T * (D // 2), e16=1)
        with m.If(s.is_op["LINEAR"]):
            self._vload_setup(m, s, addr=f["addr3"], count=f["n"], e16=0)

    # ------------------------------------------------------------------ STORE
    def _store(self, m, s):
        """src rows -> int32 [T, n] at addr0: one write range, each buffer word
        split into lanes x 4 / beat_bytes beats."""
        c, L, BB, W = self.config, self.L, self.BB, self.W
        sub = L * 4 // BB
        st = s.st
        active = s.fsm.is_("STORE")
        nw = wire(m, s.f["n"] >> exact_log2(L), "st_nw")
        # the word register: v = a word sits in pa.data; it leaves with its last beat
        last_sub = wire(m, st.k == sub - 1, "st_last_sub")
        adv = wire(m, ~st.v | (s.wr.data.ready & last_sub), "st_adv")
        s.st_adv = adv
        s.st_raddr = wire(m, (st.row * W + st.w)[:len(s.pa.addr)], "st_raddr")
        with m.If(active & adv):
            m.d.sync += st.v.eq(st.left.any())
            with m.If(st.left.any()):
                m.d.sync += st.left.eq(st.left - 1)
                with m.If(st.w + 1 == nw):
                    m.d.sync += [st.w.eq(0), st.row.eq(st.row + 1)]
                with m.Else():
                    m.d.sync += st.w.eq(st.w + 1)
        pieces = [s.pa.data[8 * BB * i:8 * BB * (i + 1)] for i in range(sub)]
        with m.Switch(st.k):
            for i, p in enumerate(pieces):
                with m.Case(i):
                    m.d.comb += s.wr.data.payload.data.eq(p)
        m.d.comb += [s.wr.data.payload.strb.eq(-1),
                     s.wr.data.valid.eq(active & st.v)]
        with m.If(active & st.v & s.wr.data.ready):
            m.d.sync += st.k.eq(Mux(last_sub, 0, st.k + 1))
            with m.If(last_sub):
                m.d.sync += st.out.eq(st.out - 1)
                with m.If(st.out == 1):
                    s.fsm.next("RETIRE")
        with m.If(active & st.req & s.wr.req.ready):
            m.d.sync += st.req.eq(0)
        # entry (from DECODE)
        with m.If(s.fsm.is_("DECODE") & s.is_op["STORE"]):
            words = wire(m, s.T * nw, "st_words")
            m.d.sync += [st.req.eq(1), st.row.eq(0), st.w.eq(0), st.left.eq(words),
                         st.out.eq(words), st.v.eq(0), st.k.eq(0)]
        m.d.comb += [s.wr.req.valid.eq(active & st.req),
                     s.wr.req.payload.addr.eq(s.f["addr0"]),
                     s.wr.req.payload.beats.eq(s.T * nw * sub)]

    # ------------------------------------------------------------------ SFU pass
    def _start_pass(self, m, s, *, r0, tokens):
        """Enter an SFU pass over `tokens` rows from row r0 (registers set by the
        op's dispatch: _pass_kind derives everything from the op and phase)."""
        m.d.sync += [s.ps.t.eq(0), s.ps.row0.eq(r0), s.ps.tokens.eq(tokens)]
        s.fsm.next("SFU_CMD")

    def _sfu_pass(self, m, s):
        c, L, W, f = self.config, self.L, self.W, s.f
        D = c.kv4.head_dim
        sfu = s.sfu
        ps = s.ps
        # what the pass is, from the op and its phase (LINEAR: phase 1 dequant,
        # phase 2 the residual add)
        lin = s.is_op["LINEAR"]
        deq = wire(m, lin & (s.phase == 1), "ps_deq")
        res = wire(m, lin & (s.phase == 2), "ps_res")
        op = Signal(3, name="ps_op")
        b_src = Signal(3, name="ps_b_src")
        a_acc = wire(m, deq, "ps_a_acc")
        out_acc = wire(m, deq & f["flags"][0], "ps_out_acc")
        k = Signal(21, name="ps_k")
        m.d.comb += [op.eq(0), b_src.eq(_B_NONE), k.eq(f["n"])]
        table = {"RMSNORM": ("rmsnorm", _B_NW), "QUANT": ("quant_a8", _B_NONE),
                 "ROPE": ("rope", _B_ROPE), "SWIGLU": ("swiglu", _B_BUF),
                 "ADD": ("residual_add", _B_BUF)}
        for name, (sop, b) in table.items():
            with m.If(s.is_op[name]):
                m.d.comb += [op.eq(sfu_mod.OP_CODE[sop]), b_src.eq(b)]
        with m.If(s.is_op["ROPE"]):
            m.d.comb += k.eq(f["heads"] * D)
        with m.If(deq):
            m.d.comb += [op.eq(sfu_mod.OP_CODE["dequant"]), b_src.eq(_B_S1)]
        with m.If(res):
            m.d.comb += [op.eq(sfu_mod.OP_CODE["residual_add"]), b_src.eq(_B_BUF)]
        with m.If(s.is_op["EMBED"]):
            m.d.comb += op.eq(sfu_mod.OP_CODE["requant"])
        with m.If(s.is_op["ARGMAX"]):
            m.d.comb += op.eq(sfu_mod.OP_CODE["argmax"])
        nw = wire(m, k >> exact_log2(L), "ps_nw")
        row = wire(m, ps.row0 + ps.t, "ps_row")
        # token scales of the A8 source row (dequant)
        m.d.comb += s.ts_r.addr.eq(f["src"] * c.max_tokens + row)
        mn = s.ts_r.data[:MANT_BITS]
        Lsh = s.ts_r.data[MANT_BITS:].as_signed()
        # cmd
        cmd = sfu.cmd.payload
        p = cmd.p
        m.d.comb += [cmd.op.eq(op), cmd.k.eq(k)]
        with m.If(s.is_op["RMSNORM"]):
            m.d.comb += [p.rmsnorm.E.eq(f["E"]), p.rmsnorm.SK.eq(f["SK"]),
                         p.rmsnorm.es.eq(f["es"]), p.rmsnorm.e_w.eq(f["e"])]
        with m.If(s.is_op["ROPE"]):
            m.d.comb += p.rope.d.eq(D)
        with m.If(s.is_op["SWIGLU"]):
            m.d.comb += p.swiglu.shift.eq(c.sfu.frac + f["in_frac2"] - f["out_frac"])
        with m.If(deq):
            m.d.comb += [p.dequant.mn.eq(mn), p.dequant.L.eq(Lsh), p.dequant.e.eq(f["e"]),
                         p.dequant.in_frac.eq(f["in_frac"]),
                         p.dequant.out_frac.eq(f["out_frac"])]
        with m.If(s.is_op["EMBED"]):   # x.a = code x S: sat32(rshift_round(., e - out_frac))
            m.d.comb += [p.requant.from_frac.eq(f["e"]), p.requant.to_frac.eq(f["out_frac"]),
                         p.requant.bits.eq(X_BITS)]
        m.d.comb += sfu.cmd.valid.eq(s.fsm.is_("SFU_CMD") | s.fsm.is_("EMB_CMD")
                                     | s.fsm.is_("ARG_CMD"))
        with s.fsm.state("SFU_CMD"), m.If(sfu.cmd.ready):
            m.d.sync += [ps.w.eq(0), ps.left.eq(nw), ps.v.eq(0), ps.ow.eq(0),
                         ps.ts.eq(s.is_op["QUANT"])]
            s.fsm.next("SFU_RUN")
        running = wire(m, s.fsm.is_("SFU_RUN"), "ps_running")
        with m.If((running | s.fsm.is_("EMB_X") | s.fsm.is_("ARG_X") | s.fsm.is_("ARG_OUT"))
                  & sfu.error):
            m.d.comb += s.raise_.eq(ERROR_CODE["sfu"])
        # x: words w = 0 .. nw-1 of the row through the read ports (adv pattern)
        adv = wire(m, ~ps.v | sfu.x.ready, "ps_adv")
        s.ps_adv = wire(m, running & adv, "ps_adv_run")
        with m.If(s.ps_adv):
            m.d.sync += ps.v.eq(ps.left.any())
            with m.If(ps.left.any()):
                m.d.sync += [ps.w.eq(ps.w + 1), ps.left.eq(ps.left - 1)]
        s.ps_a_addr = wire(m, (row * W + ps.w)[:len(s.pa.addr)], "ps_a_addr")
        s.ps_a_acc = a_acc
        s.ps_acc_row = wire(m, ps.t, "ps_acc_row")
        # V address of word w: NW / S1 -> w; RoPE -> row t's cos/sin of the word's
        # position in its head (first half; the second half ignores x.b)
        dw = D // L
        hw = wire(m, ps.w[:exact_log2(dw)] if dw > 1 else Const(0, 1), "ps_head_word")
        v_addr = Mux(b_src == _B_ROPE, ps.t * (dw // 2) + (hw[:exact_log2(dw // 2)]
                                                           if dw > 2 else 0), ps.w)
        m.d.comb += [s.v_r.addr.eq(v_addr), s.v_r.en.eq(s.ps_adv)]
        xa = Mux(a_acc, s.acc_r_data, s.pa.data)
        xb = Signal(32 * L, name="ps_xb")
        with m.Switch(b_src):
            with m.Case(_B_BUF):
                m.d.comb += xb.eq(Mux(res, s.acc_r_data, s.pb.data))
            with m.Case(_B_NW):         # NW int16 in the low halves, sign-extended
                m.d.comb += xb.eq(Cat(*(Cat(s.v_r.data[32 * j:32 * j + 16],
                                            s.v_r.data[32 * j + 15].replicate(16))
                                        for j in range(L))))
            with m.Case(_B_ROPE, _B_S1):
                m.d.comb += xb.eq(s.v_r.data)
            with m.Default():              # ops with one operand: x.b unused
                m.d.comb += xb.eq(0)
        x = sfu.x.payload
        for j in range(L):
            m.d.comb += [x[j].a.eq(xa[32 * j:32 * j + 32]), x[j].b.eq(xb[32 * j:32 * j + 32])]
        m.d.comb += sfu.x.valid.eq(running & ps.v)
        # res: x.a = the residual (src2 via port A), x.b = the dequantized row (acc RAM)
        s.ps_res = res
        # out: the TS beat (QUANT), then words ow = 0 .. nw-1
        # EMBED's out words go the same way (dst row t)
        out_run = wire(m, running | s.fsm.is_("EMB_X"), "ps_out_run")
        m.d.comb += sfu.out.ready.eq(out_run)
        s.ps_out_take = wire(m, out_run & sfu.out.valid, "ps_out_take")
        s.ps_out_ts = wire(m, s.ps_out_take & ps.ts, "ps_out_ts")
        s.ps_out_word = wire(m, s.ps_out_take & ~ps.ts, "ps_out_word")
        s.ps_out_acc = out_acc
        s.ps_out_row = row
        s.ps_out_data = wire(m, sfu.out.payload.as_value(), "ps_out_data")
        with m.If(s.ps_out_ts):
            m.d.sync += ps.ts.eq(0)
        with m.If(s.ps_out_word):
            m.d.sync += ps.ow.eq(ps.ow + 1)
            with m.If(ps.ow + 1 == nw):
                with m.If(s.is_op["EMBED"]):
                    s.fsm.next("EMB_END")
                with m.Elif(ps.t + 1 == ps.tokens):
                    self._pass_done(m, s)
                with m.Else():
                    m.d.sync += ps.t.eq(ps.t + 1)
                    s.fsm.next("SFU_CMD")

    def _pass_done(self, m, s):
        """After a pass: the op's next phase or RETIRE."""
        f, c = s.f, self.config
        lin = s.is_op["LINEAR"]
        with m.If(lin & (s.phase == 1) & f["flags"][0]):
            m.d.sync += s.phase.eq(2)
            m.d.sync += [s.ps.t.eq(0)]
            s.fsm.next("SFU_CMD")
        with m.Elif(lin):
            self._next_tile(m, s)
        with m.Else():
            s.fsm.next("RETIRE")

    # ------------------------------------------------------------------ LINEAR
    def _next_tile(self, m, s):
        c = self.config
        nxt = s.r0 + c.rows
        with m.If(nxt >= s.T):
            s.fsm.next("RETIRE")
        with m.Else():
            m.d.sync += [s.r0.eq(nxt), s.phase.eq(0)]
            self._enter_act(m, s, nxt)

    def _enter_act(self, m, s, r0):
        c = self.config
        rem = s.T - r0
        m.d.sync += [s.tt.eq(Mux(rem > c.rows, c.rows, rem)), s.ac.row.eq(0), s.ac.w.eq(0),
                     s.ac.v.eq(0), s.ac.left.eq(Mux(rem > c.rows, c.rows, rem) * s.ac_nw)]
        s.fsm.next("ACT")

    def _act(self, m, s):
        """A8 rows r0 .. r0+tt-1 of src, k elements each -> engine.act."""
        c, L, W = self.config, self.L, self.W
        eng = s.eng
        ac = s.ac
        active = wire(m, s.fsm.is_("ACT"), "ac_active")
        adv = wire(m, ~ac.v | eng.act.ready, "ac_adv")
        s.ac_adv = wire(m, active & adv, "ac_adv_run")
        s.ac_raddr = wire(m, ((s.r0 + ac.row) * W + ac.w)[:len(s.pa.addr)], "ac_raddr")
        with m.If(s.ac_adv):
            m.d.sync += ac.v.eq(ac.left.any())
            with m.If(ac.left.any()):
                m.d.sync += ac.left.eq(ac.left - 1)
                with m.If(ac.w + 1 == s.ac_nw):
                    m.d.sync += [ac.w.eq(0), ac.row.eq(ac.row + 1)]
                with m.Else():
                    m.d.sync += ac.w.eq(ac.w + 1)
        pl = eng.act.payload
        m.d.comb += [eng.act.valid.eq(active & ac.v), pl.row.eq(ac.orow), pl.beat.eq(ac.ow)]
        for j in range(L):
            m.d.comb += pl.data[j].eq(s.pa.data[32 * j:32 * j + 8])
        with m.If(active & ac.v & eng.act.ready):
            with m.If(ac.ow + 1 == s.ac_nw):
                m.d.sync += [ac.ow.eq(0), ac.orow.eq(ac.orow + 1)]
                with m.If(ac.orow + 1 == s.tt):
                    self._enter_engine(m, s)
            with m.Else():
                m.d.sync += ac.ow.eq(ac.ow + 1)
        with m.If(~active):
            m.d.sync += [ac.orow.eq(0), ac.ow.eq(0)]

    def _enter_engine(self, m, s):
        en = s.en
        m.d.sync += [en.cmd.eq(1), en.tile.eq(0), en.which.eq(0), en.got.eq(0),
                     en.issue.eq(1), s.fl.fill.eq(0), s.fl.j0.eq(0)]
        s.fsm.next("ENGINE")

    def _engine(self, m, s):
        """The engine's cmd, the read ranges of every column tile (s2, z, codes),
        its mem beats and acc beats -> acc RAM."""
        c, L, BB, f = self.config, self.L, self.BB, s.f
        eng = s.eng
        lc = exact_log2(c.cols)
        lbb = exact_log2(BB)
        en = s.en
        active = wire(m, s.fsm.is_("ENGINE"), "en_active")
        n, k, g = f["n"], f["k"], f["group"]
        # G = k / group (group a power of two: a shift by its bit position)
        G = Signal(20, name="en_G")
        for b in range(exact_log2(MIXPE_GROUP_RANGE[0]), exact_log2(MIXPE_GROUP_RANGE[1]) + 1):
            with m.If(g == (1 << b)):
                m.d.comb += G.eq(k >> b)
        tiles = wire(m, (n + c.cols - 1) >> lc, "en_tiles")
        last = wire(m, en.tile + 1 == tiles, "en_last_tile")
        # the last tile holds n mod cols outputs (cols when that is 0)
        rem = wire(m, n[:lc], "en_rem")
        nt = wire(m, Mux(last & rem.any(), rem, c.cols), "en_nt")
        sbytes = wire(m, nt * G, "en_sbytes")
        bw = len(s.rd.req.payload.beats)
        sbeats = wire(m, ((sbytes + BB - 1) >> lbb)[:bw], "en_sbeats")
        cbeats = wire(m, (nt * (k >> lbb))[:bw], "en_cbeats")
        n0 = wire(m, en.tile << lc, "en_n0")
        addr = Signal(AXI_ADDR_BITS, name="en_addr")
        beats = Signal(len(s.rd.req.payload.beats), name="en_beats")
        with m.Switch(en.which):
            with m.Case(0):
                m.d.comb += [addr.eq(f["addr1"] + n0 * G), beats.eq(sbeats)]
            with m.Case(1):
                m.d.comb += [addr.eq(f["addr2"] + n0 * G), beats.eq(sbeats)]
            with m.Default():
                m.d.comb += [addr.eq(f["addr0"] + n0 * k), beats.eq(cbeats)]
        s.en_req_valid = wire(m, active & en.issue, "en_req_valid")
        s.en_req_addr, s.en_req_beats = addr, beats
        with m.If(s.en_req_valid & s.rd.req.ready):
            with m.If(en.which == 2):
                m.d.sync += [en.which.eq(0), en.tile.eq(en.tile + 1)]
                with m.If(last):
                    m.d.sync += en.issue.eq(0)
            with m.Else():
                m.d.sync += en.which.eq(en.which + 1)
        cmdp = eng.cmd.payload
        m.d.comb += [eng.cmd.valid.eq(active & en.cmd), cmdp.n.eq(n), cmdp.k.eq(k),
                     cmdp.group.eq(g), cmdp.tokens.eq(s.tt)]
        with m.If(active & en.cmd & eng.cmd.ready):
            m.d.sync += en.cmd.eq(0)
        with m.If(active & eng.error):
            m.d.comb += s.raise_.eq(ERROR_CODE["engine"])
        # mem beats straight from the read master
        m.d.comb += [eng.mem.valid.eq(active & s.rd.data.valid),
                     eng.mem.payload.eq(s.rd.data.payload)]
        # acc beats -> acc RAM, lane n % L of word n / L of every tile row
        a = eng.acc.payload
        m.d.comb += eng.acc.ready.eq(active)
        fl = s.fl
        s.en_acc_take = wire(m, active & eng.acc.valid, "en_acc_take")
        lg = s.is_op["LOGITS"]
        pos_n = wire(m, Mux(lg, s.fl.fill, a.n), "en_acc_pos")   # LOGITS: in its chunk
        word = wire(m, (pos_n >> exact_log2(L))[:len(s.acc_r_addr)], "en_acc_word")
        lane = wire(m, pos_n[:exact_log2(L)] if L > 1 else Const(0, 1), "en_acc_lane")
        for t, (_, wp) in enumerate(s.acc):
            m.d.comb += [wp.addr.eq(Mux(active, word, s.ps_out_addr_acc)),
                         wp.data.eq(Mux(active, a.acc[t].as_unsigned().replicate(L),
                                        s.ps_out_data)),
                         wp.en.eq(Mux(active, Mux(s.en_acc_take, (Const(1, L) << lane)[:L], 0),
                                      Mux(s.ps_out_word & s.ps_out_acc & (s.ps.t == t),
                                          (1 << L) - 1, 0)))]
        s.en_got_next = wire(m, (en.got + 1)[:20], "en_got_next")
        with m.If(s.en_acc_take):
            with m.If(a.overflow):
                m.d.comb += s.raise_.eq(ERROR_CODE["overflow"])
            m.d.sync += [en.got.eq(en.got + 1), fl.fill.eq(fl.fill + 1)]
            with m.If(lg):
                # a full chunk, or the last output: write the chunk's rows to memory
                with m.If((fl.fill + 1 == c.buf_elems) | (s.en_got_next == n)):
                    self._enter_flush(m, s, last=s.en_got_next == n)
            with m.Elif(s.en_got_next == n):
                m.d.sync += s.phase.eq(1)
                self._start_pass(m, s, r0=s.r0, tokens=s.tt)

    # ------------------------------------------------------------------ LOGITS' flush
    def _enter_flush(self, m, s, *, last):
        fl = s.fl
        m.d.sync += [fl.last.eq(last), fl.t.eq(0), fl.w.eq(0), fl.v.eq(0), fl.k.eq(0),
                     fl.req.eq(1), fl.left.eq((fl.fill + 1) >> exact_log2(self.L)),
                     fl.out.eq((fl.fill + 1) >> exact_log2(self.L))]
        s.fsm.next("FLUSH")

    def _flush(self, m, s):
        """LOGITS: a chunk of `fill` accumulators per tile row (acc RAM) -> int32 rows of
        [T, n] at addr3: per row one write range, each word split into beats. The
        engine waits (its acc beats and the read master's beats hold) meanwhile."""
        c, L, BB, f = self.config, self.L, self.BB, s.f
        fl, en = s.fl, s.en
        sub = L * 4 // BB
        active = wire(m, s.fsm.is_("FLUSH"), "fl_active")
        nwords = wire(m, fl.fill >> exact_log2(L), "fl_words")
        last_sub = wire(m, fl.k == sub - 1, "fl_last_sub")
        adv = wire(m, ~fl.v | (s.wr.data.ready & last_sub), "fl_adv")
        s.fl_adv = wire(m, active & adv & ~fl.req, "fl_adv_run")
        with m.If(s.fl_adv):
            m.d.sync += fl.v.eq(fl.left.any())
            with m.If(fl.left.any()):
                m.d.sync += [fl.left.eq(fl.left - 1), fl.w.eq(fl.w + 1)]
        pieces = [s.acc_r_data[8 * BB * i:8 * BB * (i + 1)] for i in range(sub)]
        s.fl_data = Signal(8 * BB, name="fl_data")
        with m.Switch(fl.k):
            for i, piece in enumerate(pieces):
                with m.Case(i):
                    m.d.comb += s.fl_data.eq(piece)
            with m.Default():
                m.d.comb += s.fl_data.eq(0)
        # the row's range: addr3 + ((r0 + t) n + j0) 4
        row = wire(m, (s.r0 + fl.t)[:len(s.r0)], "fl_row")
        s.fl_addr = wire(m, (f["addr3"] + ((row * f["n"] + fl.j0) << 2))[:AXI_ADDR_BITS],
                         "fl_addr")
        s.fl_beats = wire(m, (nwords * sub)[:len(s.wr.req.payload.beats)], "fl_beats")
        with m.If(active & fl.req & s.wr.req.ready):
            m.d.sync += fl.req.eq(0)
        with m.If(active & fl.v & s.wr.data.ready):
            m.d.sync += fl.k.eq(Mux(last_sub, 0, fl.k + 1))
            with m.If(last_sub):
                m.d.sync += fl.out.eq(fl.out - 1)
                with m.If(fl.out == 1):
                    # the row is out: the next row, or back to the engine, or the tile ends
                    with m.If(fl.t + 1 < s.tt):
                        m.d.sync += [fl.t.eq(fl.t + 1), fl.w.eq(0), fl.v.eq(0), fl.req.eq(1),
                                     fl.left.eq(nwords), fl.out.eq(nwords)]
                    with m.Elif(fl.last):
                        self._next_tile(m, s)
                    with m.Else():
                        m.d.sync += [fl.j0.eq(fl.j0 + fl.fill), fl.fill.eq(0)]
                        s.fsm.next("ENGINE")
        s.fl_active = active

    # ------------------------------------------------------------------ ARGMAX
    def _arg_chunk(self, m, s):
        """S1's chunk j0 .. j0+cnt is in V: stream acc row t's chunk to the SFU."""
        c, L, BB, f, ax = self.config, self.L, self.BB, s.f, s.ax
        m.d.sync += [ax.req.eq(1), ax.w.eq(0), ax.k.eq(0), ax.xv.eq(0),
                     ax.nw.eq(ax.cnt >> exact_log2(L)),
                     ax.addr.eq(f["addr0"] + ((ax.t * f["n"] + ax.j0) << 2)),
                     ax.beats.eq((ax.cnt << 2) >> exact_log2(BB))]
        s.fsm.next("ARG_X")

    def _arg_next(self, m, s, j0, left):
        """S1's chunk from j0 into V (a chunk is what V holds, buf_elems elements);
        `left` outputs from j0 on."""
        c, f, ax = self.config, s.f, s.ax
        cnt = Mux(left > c.buf_elems, c.buf_elems, left)
        m.d.sync += [ax.j0.eq(j0), ax.cnt.eq(cnt), ax.rem.eq(left)]
        self._vload_setup(m, s, addr=f["addr1"] + (j0 << 2), count=cnt, e16=0)

    def _argmax(self, m, s):
        """ARGMAX per token: the SFU's argmax cmd over n, then chunk by chunk S1 into V
        and the acc row's chunk from memory as x words (x.a the accumulators, x.b S1),
        then its index beat -> int32 at addr2 + 4 t (one beat, byte strobes)."""
        c, L, BB, f, ax, sfu = self.config, self.L, self.BB, s.f, s.ax, s.sfu
        sub = L * 4 // BB
        n21 = Signal(21, name="ax_n")          # n as a register-width operand
        m.d.comb += n21.eq(f["n"])
        with s.fsm.state("ARG_CMD"), m.If(sfu.cmd.ready):
            self._arg_next(m, s, Const(0, 21), n21)
        # ARG_X: beats -> words (sub beats each); V's S1 word read as a word completes
        active = wire(m, s.fsm.is_("ARG_X"), "ax_active")
        take = wire(m, active & ~ax.req & s.rd.data.valid & (~ax.xv | sfu.x.ready), "ax_take")
        done_word = wire(m, take & (ax.k == sub - 1), "ax_done_word")
        s.ax_take = take
        with m.If(take):
            for i in range(sub):
                with m.If(ax.k == i):
                    m.d.sync += ax.aw[8 * BB * i:8 * BB * (i + 1)].eq(s.rd.data.payload)
            m.d.sync += ax.k.eq(Mux(ax.k == sub - 1, 0, ax.k + 1))
        with m.If(done_word):
            m.d.sync += [ax.xv.eq(1), ax.w.eq(ax.w + 1)]
        with m.Elif(active & ax.xv & sfu.x.ready):
            m.d.sync += ax.xv.eq(0)
        s.ax_v_addr = wire(m, ax.w[:len(s.v_r.addr)], "ax_v_addr")
        s.ax_v_en = done_word
        with m.If(active):
            x = sfu.x.payload
            for j in range(L):
                m.d.comb += [x[j].a.eq(ax.aw[32 * j:32 * j + 32]),
                             x[j].b.eq(s.v_r.data[32 * j:32 * j + 32])]
            m.d.comb += sfu.x.valid.eq(ax.xv)
        with m.If(active & ax.req & s.rd.req.ready):
            m.d.sync += ax.req.eq(0)
        # the chunk's last word taken by the SFU: the next chunk, or the index
        with m.If(active & ax.xv & sfu.x.ready & ~done_word & (ax.w == ax.nw)):
            nxt = wire(m, (ax.j0 + ax.cnt)[:21], "ax_next_j0")
            with m.If(ax.rem != ax.cnt):
                self._arg_next(m, s, nxt, (ax.rem - ax.cnt)[:21])
            with m.Else():
                m.d.sync += [ax.wreq.eq(1), ax.wv.eq(0)]
                s.fsm.next("ARG_OUT")
        # ARG_OUT: the index beat, then its write
        out = wire(m, s.fsm.is_("ARG_OUT"), "ax_out")
        with m.If(out):
            m.d.comb += sfu.out.ready.eq(~ax.wv)
        with m.If(out & ~ax.wv & sfu.out.valid):
            m.d.sync += [ax.wv.eq(1), ax.idx.eq(sfu.out.payload[0])]
        # the int32 slot t of the output: its word address, the beat and the slot in it
        word = wire(m, (f["addr2"] + (ax.t << 2))[2:AXI_ADDR_BITS], "ax_waddr")
        lo = exact_log2(BB)
        s.ax_wr_addr = wire(m, Cat(Const(0, lo), word[lo - 2:]), "ax_wr_addr")
        s.ax_wr_strb = wire(m, (Const(0xF, BB) << Cat(Const(0, 2), word[:lo - 2]))[:BB]
                            if lo > 2 else Const(0xF, BB), "ax_wr_strb")
        s.ax_out = out
        with m.If(out & ax.wreq & s.wr.req.ready):
            m.d.sync += ax.wreq.eq(0)
        with m.If(out & ax.wv & ~ax.wreq & s.wr.data.ready):
            m.d.sync += ax.wv.eq(0)
            with m.If(ax.t + 1 == s.T):
                s.fsm.next("RETIRE")
            with m.Else():
                m.d.sync += ax.t.eq(ax.t + 1)
                s.fsm.next("ARG_CMD")

    # ------------------------------------------------------------------ EMBED
    def _embed(self, m, s):
        """EMBED per token: its id from V (the ids were loaded at V element id_base),
        its scale row into V (from the beat holding its first scale), the SFU's requant
        cmd, then its code row from memory as x words (x.a = code x S of the word's
        group, one S per word: group >= 32 >= lanes) -> dst row t."""
        c, L, BB, f, ax, sfu, ps = self.config, self.L, self.BB, s.f, s.ax, s.sfu, s.ps
        n, g = f["n"], f["group"]
        lo = exact_log2(BB)
        # EMB_ID: read the id's V word; EMB_ID2: take its lane, check it, load the scales
        idw = wire(m, (s.id_base + ps.t)[:21], "emb_id_elem")
        with s.fsm.state("EMB_ID"):
            m.d.comb += [s.v_r.addr.eq(idw >> exact_log2(L)), s.v_r.en.eq(1)]
            s.fsm.next("EMB_ID2")
        lanes = [s.v_r.data[32 * j:32 * j + 32] for j in range(L)]
        the_id = Signal(32, name="emb_id")
        with m.Switch(idw[:exact_log2(L)] if L > 1 else Const(0, 1)):
            for j in range(L):
                with m.Case(j):
                    m.d.comb += the_id.eq(lanes[j])
        G = Signal(20, name="emb_G")
        for b in range(exact_log2(MIXPE_GROUP_RANGE[0]), exact_log2(MIXPE_GROUP_RANGE[1]) + 1):
            with m.If(g == (1 << b)):
                m.d.comb += G.eq(n >> b)
        srow = wire(m, Cat(Const(0, 2), (f["addr2"] + ((the_id[:20] * G) << 2))
                               [2:AXI_ADDR_BITS]), "emb_srow")
        with s.fsm.state("EMB_ID2"):
            with m.If(the_id >= f["ctx"]):
                m.d.comb += s.raise_.eq(ERROR_CODE["ctx"])
            with m.Else():
                # whole beats from the one holding the first scale: always
                # ceil(4 G / BB) + 1 of them, so the cycles do not depend on the id
                m.d.sync += [ax.id.eq(the_id), ax.soff.eq(srow[2:lo])]
                self._vload_setup(m, s, addr=Cat(Const(0, lo), srow[lo:]),
                                  count=(((G << 2) + BB - 1) >> lo) * (BB // 4) + BB // 4,
                                  e16=0)
        # EMB_CMD -> EMB_X: the code row's range from the beat holding its first code
        lL = exact_log2(L)
        crow = wire(m, Cat(Const(0, lL), (f["addr1"] + ax.id[:20] * n)[lL:AXI_ADDR_BITS]),
                    "emb_crow")
        with s.fsm.state("EMB_CMD"), m.If(sfu.cmd.ready):
            # n / BB + 1 beats from the one holding the first code, whatever the id
            # (the beats past the row are drained)
            m.d.sync += [ax.req.eq(1), ax.addr.eq(Cat(Const(0, lo), crow[lo:])),
                         ax.beats.eq(((n + BB - 1) >> lo) + 1), ax.w.eq(0), ax.xv.eq(0),
                         ax.k.eq(0), ax.got.eq(0),
                         ax.nw.eq(n >> exact_log2(L)), ps.ow.eq(0), ps.ts.eq(0),
                         ax.slot.eq(crow[exact_log2(L):lo] if BB > L else 0)]
            s.fsm.next("EMB_X")
        active = wire(m, s.fsm.is_("EMB_X"), "emb_active")
        spb = BB // L                      # code words per beat
        adv = wire(m, active & ~ax.req & (~ax.xv | sfu.x.ready), "emb_adv")
        more = wire(m, ax.w != ax.nw, "emb_more")
        take = wire(m, adv & more & s.rd.data.valid, "emb_take")
        last_slot = wire(m, (ax.slot == spb - 1) | (ax.w + 1 == ax.nw), "emb_last_slot")
        # after the last word the range's remaining beats are drained
        ending = wire(m, active | s.fsm.is_("EMB_END"), "emb_ending")
        drain = wire(m, ending & ~ax.req & ~more & (ax.got != ax.beats) & s.rd.data.valid,
                     "emb_drain")
        # EMB_END: the row's out words are written; the range drained -> next token
        with s.fsm.state("EMB_END"), m.If(ax.got == ax.beats):
            with m.If(ps.t + 1 == s.T):
                s.fsm.next("RETIRE")
            with m.Else():
                m.d.sync += ps.t.eq(ps.t + 1)
                s.fsm.next("EMB_ID")
        s.emb_pop = wire(m, (take & last_slot) | drain, "emb_pop")
        with m.If(s.emb_pop):
            m.d.sync += ax.got.eq(ax.got + 1)
        slots = [s.rd.data.payload[8 * L * i:8 * L * (i + 1)] for i in range(spb)]
        with m.If(take):
            for i, sl in enumerate(slots):
                with m.If(ax.slot == i):
                    m.d.sync += ax.codes.eq(sl)
            m.d.sync += [ax.w.eq(ax.w + 1), ax.slot.eq(Mux(ax.slot == spb - 1, 0,
                                                              ax.slot + 1))]
        with m.If(adv):
            m.d.sync += ax.xv.eq(take)
        # the word's S: V element soff + w L / group
        widx = wire(m, ax.soff + ((ax.w * L) >> exact_log2(MIXPE_GROUP_RANGE[0])), "emb_widx")
        sel = Signal(21, name="emb_sidx")
        for b in range(exact_log2(MIXPE_GROUP_RANGE[0]), exact_log2(MIXPE_GROUP_RANGE[1]) + 1):
            with m.If(g == (1 << b)):
                m.d.comb += sel.eq(ax.soff + ((ax.w * L) >> b))
        del widx
        with m.If(take):
            m.d.sync += ax.sidx.eq(sel)
        s.emb_v_addr = wire(m, (sel >> exact_log2(L))[:len(s.v_r.addr)], "emb_v_addr")
        s.emb_v_en = take
        S = Signal(16, name="emb_S")           # S < 2**15 (golden.sfu.embed_rows)
        with m.Switch(ax.sidx[:exact_log2(L)] if L > 1 else Const(0, 1)):
            for j in range(L):
                with m.Case(j):
                    m.d.comb += S.eq(s.v_r.data[32 * j:32 * j + 16])
        with m.If(active):
            x = sfu.x.payload
            for j in range(L):
                code = ax.codes[8 * j:8 * j + 8].as_signed()
                m.d.comb += [x[j].a.eq(code * S.as_signed()), x[j].b.eq(0)]
            m.d.comb += sfu.x.valid.eq(ax.xv)
        with m.If(active & ax.req & s.rd.req.ready):
            m.d.sync += ax.req.eq(0)

    # ------------------------------------------------------------------ KV4 unit
    def _enter_kv(self, m, s):
        kx, ky = s.kx, s.ky
        m.d.sync += [s.kv_cmd.eq(1), s.kv_run.eq(0), kx.t.eq(0), kx.h.eq(0), kx.w.eq(0),
                     kx.v.eq(0), kx.src2.eq(0), kx.left.eq(1), ky.t.eq(0), ky.w.eq(0)]
        s.fsm.next("KV")

    def _kv(self, m, s):
        """KV_APPEND / ATTEND: the instruction to the unit, its x words from the
        buffers (hdl.core_kv: per token K then V words, or the queries), its y words
        into dst, its memory traffic through the masters (_ports)."""
        c, L, W, f = self.config, self.L, self.W, s.f
        kv, kx, ky = s.kv, s.kx, s.ky
        D = c.kv4.head_dim
        active = wire(m, s.fsm.is_("KV"), "kv_active")
        attend = s.is_op["ATTEND"]
        p = kv.cmd.payload
        m.d.comb += [kv.cmd.valid.eq(active & s.kv_cmd), p.attend.eq(attend), p.pos.eq(s.pos),
                     p.tokens.eq(s.T), p.ctx.eq(f["ctx"]), p.col.eq(f["col"]),
                     p.heads.eq(f["heads"]), p.in_frac.eq(f["in_frac"]),
                     p.in_frac2.eq(f["in_frac2"]), p.frac_k.eq(f["frac_k"]),
                     p.frac_v.eq(f["frac_v"]), p.out_frac.eq(f["out_frac"]),
                     p.addr.eq(f["addr0"])]
        with m.If(active & s.kv_cmd & kv.cmd.ready):
            m.d.sync += [s.kv_cmd.eq(0), s.kv_run.eq(1)]
        with m.If(active & kv.error):
            m.d.comb += s.raise_.eq(ERROR_CODE["kv4"])
        with m.If(active & s.kv_run & ~kv.busy & ~kv.error):
            s.fsm.next("RETIRE")
        # x: words w of half h (0: src, 1: src2) of token t, read at one address by
        # both ports; the half travels with the word
        col_w = wire(m, f["col"] >> exact_log2(L), "kv_col_w")
        nw = wire(m, Mux(attend, f["heads"] * (D // L), D // L), "kv_nw")
        last_w = wire(m, kx.w + 1 == nw, "kx_last_w")
        last_h = wire(m, attend | kx.h.bool(), "kx_last_h")
        adv = wire(m, ~kx.v | kv.x.ready, "kx_adv")
        s.kx_adv = wire(m, active & adv, "kx_adv_run")
        s.kx_raddr = wire(m, (kx.t * W + col_w + kx.w)[:len(s.pa.addr)], "kx_raddr")
        with m.If(s.kx_adv):
            m.d.sync += [kx.v.eq(kx.left), kx.src2.eq(kx.h)]
            with m.If(kx.left):
                with m.If(last_w):
                    m.d.sync += kx.w.eq(0)
                    with m.If(last_h):
                        m.d.sync += [kx.h.eq(0), kx.t.eq(kx.t + 1)]
                        with m.If(kx.t + 1 == s.T):
                            m.d.sync += kx.left.eq(0)
                    with m.Else():
                        m.d.sync += kx.h.eq(1)
                with m.Else():
                    m.d.sync += kx.w.eq(kx.w + 1)
        m.d.comb += [kv.x.valid.eq(active & kx.v),
                     kv.x.payload.eq(Mux(kx.src2, s.pb.data, s.pa.data))]
        # y: word w of token t -> dst row t, word col / L + w
        m.d.comb += kv.y.ready.eq(active)
        s.ky_take = wire(m, active & kv.y.valid, "ky_take")
        s.ky_word = wire(m, (col_w + ky.w)[:len(s.bw.word)], "ky_word")
        with m.If(s.ky_take):
            with m.If(ky.w + 1 == nw):
                m.d.sync += [ky.w.eq(0), ky.t.eq(ky.t + 1)]
            with m.Else():
                m.d.sync += ky.w.eq(ky.w + 1)

    # ------------------------------------------------------------------ port muxes
    def _ports(self, m, s):
        """The shared ports' owners by state."""
        c, L, W, f = self.config, self.L, self.W, s.f
        fsm = s.fsm
        rq = s.rd.req
        # read master requests: FETCH, VLOAD, ENGINE
        with m.If(fsm.is_("FETCH")):
            m.d.comb += [rq.valid.eq(1), rq.payload.addr.eq(s.prog + (s.pc << 6)),
                         rq.payload.beats.eq(INSTR_BYTES // self.BB)]
        with m.If(fsm.is_("VLOAD")):
            m.d.comb += [rq.valid.eq(s.vl.req), rq.payload.addr.eq(s.vl.addr),
                         rq.payload.beats.eq(s.vl.beats)]
        with m.If(fsm.is_("ENGINE")):
            m.d.comb += [rq.valid.eq(s.en_req_valid), rq.payload.addr.eq(s.en_req_addr),
                         rq.payload.beats.eq(s.en_req_beats)]
        kv = s.kv
        in_kv = fsm.is_("KV")
        with m.If(in_kv):
            m.d.comb += [rq.valid.eq(kv.rd_req.valid), rq.payload.addr.eq(kv.rd_req.payload.addr),
                         rq.payload.beats.eq(kv.rd_req.payload.beats)]
        m.d.comb += [kv.rd_req.ready.eq(in_kv & rq.ready),
                     kv.rd_data.valid.eq(in_kv & s.rd.data.valid),
                     kv.rd_data.payload.eq(s.rd.data.payload)]
        m.d.comb += s.rd.data.ready.eq(fsm.is_("FETCH_WAIT") | fsm.is_("VLOAD") | fsm.is_("ERROR")
                                       | (fsm.is_("ENGINE") & s.eng.mem.ready)
                                       | (in_kv & kv.rd_data.ready)
                                       | s.ax_take | s.emb_pop)
        # the write master: STORE's beats, or the KV4 unit's plane writes
        with m.If(in_kv):
            m.d.comb += [s.wr.req.valid.eq(kv.wr_req.valid),
                         s.wr.req.payload.addr.eq(kv.wr_req.payload.addr),
                         s.wr.req.payload.beats.eq(kv.wr_req.payload.beats),
                         s.wr.data.valid.eq(kv.wr_data.valid),
                         s.wr.data.payload.eq(kv.wr_data.payload)]
        m.d.comb += [kv.wr_req.ready.eq(in_kv & s.wr.req.ready),
                     kv.wr_data.ready.eq(in_kv & s.wr.data.ready)]
        with m.If(fsm.is_("ARG_X") | fsm.is_("EMB_X")):
            m.d.comb += [rq.valid.eq(s.ax.req), rq.payload.addr.eq(s.ax.addr),
                         rq.payload.beats.eq(s.ax.beats)]
        with m.If(fsm.is_("ARG_X")):
            m.d.comb += [s.v_r.addr.eq(s.ax_v_addr), s.v_r.en.eq(s.ax_v_en)]
        with m.If(fsm.is_("EMB_X")):
            m.d.comb += [s.v_r.addr.eq(s.emb_v_addr), s.v_r.en.eq(s.emb_v_en)]
        with m.If(s.ax_out):
            m.d.comb += [s.wr.req.valid.eq(s.ax.wreq), s.wr.req.payload.addr.eq(s.ax_wr_addr),
                         s.wr.req.payload.beats.eq(1),
                         s.wr.data.valid.eq(s.ax.wv & ~s.ax.wreq),
                         s.wr.data.payload.data.eq(s.ax.idx.replicate(self.BB // 4)),
                         s.wr.data.payload.strb.eq(s.ax_wr_strb)]
        with m.If(s.fl_active):
            m.d.comb += [s.wr.req.valid.eq(s.fl.req), s.wr.req.payload.addr.eq(s.fl_addr),
                         s.wr.req.payload.beats.eq(s.fl_beats),
                         s.wr.data.valid.eq(s.fl.v & ~s.fl.req),
                         s.wr.data.payload.data.eq(s.fl_data),
                         s.wr.data.payload.strb.eq(-1),
                         s.acc_r_addr.eq(s.fl.w), s.acc_r_en.eq(s.fl_adv),
                         s.acc_r_row.eq(s.fl.t)]
        # read port A: STORE, SFU x.a (or the residual), ACT; port B: SFU x.b
        with m.If(fsm.is_("STORE")):
            m.d.comb += [s.pa.addr.eq(s.st_raddr), s.pa.en.eq(s.st_adv), s.pa.sel.eq(f["src"])]
        with m.If(fsm.is_("ACT")):
            m.d.comb += [s.pa.addr.eq(s.ac_raddr), s.pa.en.eq(s.ac_adv), s.pa.sel.eq(f["src"])]
        with m.If(in_kv):               # K (src) and V (src2) words at one address
            m.d.comb += [s.pa.addr.eq(s.kx_raddr), s.pa.en.eq(s.kx_adv), s.pa.sel.eq(f["src"]),
                         s.pb.addr.eq(s.kx_raddr), s.pb.en.eq(s.kx_adv),
                         s.pb.sel.eq(f["src2"])]
        with m.If(fsm.is_("SFU_RUN") | fsm.is_("SFU_CMD")):
            m.d.comb += [s.pa.addr.eq(s.ps_a_addr), s.pa.en.eq(s.ps_adv),
                         s.pa.sel.eq(Mux(s.ps_res, f["src2"], f["src"])),
                         s.pb.addr.eq(s.ps_a_addr), s.pb.en.eq(s.ps_adv),
                         s.pb.sel.eq(f["src2"]),
                         s.acc_r_addr.eq(s.ps.w), s.acc_r_en.eq(s.ps_adv),
                         s.acc_r_row.eq(s.ps_acc_row)]
        # buffer writes: LOAD's beats or an SFU pass's out words
        m.d.comb += s.ps_out_addr_acc.eq(s.ps.ow)
        s.buf_we = buf_we = wire(m, s.vl_buf_we | (s.ps_out_word & ~s.ps_out_acc) | s.ky_take,
                                 "buf_we")
        with m.If(s.vl_buf_we):
            m.d.comb += [s.bw.row.eq(s.vl.row), s.bw.word.eq(s.vl.col >> exact_log2(L)),
                         s.bw.data.eq(s.vl_buf_data),
                         s.bw.mask.eq(s.vl_buf_mask), s.bw.sel.eq(f["dst"])]
        with m.Elif(s.ps_out_word & ~s.ps_out_acc):
            m.d.comb += [s.bw.row.eq(s.ps_out_row), s.bw.word.eq(s.ps.ow),
                         s.bw.data.eq(s.ps_out_data),
                         s.bw.mask.eq((1 << L) - 1), s.bw.sel.eq(f["dst"])]
        with m.Elif(s.ky_take):
            m.d.comb += [s.bw.row.eq(s.ky.t), s.bw.word.eq(s.ky_word),
                         s.bw.data.eq(s.kv.y.payload.as_value()),
                         s.bw.mask.eq((1 << L) - 1), s.bw.sel.eq(f["dst"])]
        with m.Else():
            m.d.comb += s.bw.sel.eq(15 if c.buffers <= 15 else 0)
        m.d.comb += s.bw.addr.eq(s.bw.row * W + s.bw.word)
        # QUANT's TS beat -> the token scales of dst's row
        s.ts_word = ts_word = s.ps_out_data[:32]
        m.d.comb += [s.ts_w.addr.eq(f["dst"] * c.max_tokens + s.ps_out_row),
                     s.ts_w.data.eq(Cat(ts_word[:MANT_BITS], ts_word[16:24])),
                     s.ts_w.en.eq(s.ps_out_ts)]
        with s.fsm.state("VLOAD"), m.If(s.vl_done):
            self._after_vload(m, s)

    def _trace(self, m, s):
        """One record per cycle: a buffer word, a token scale, an acc beat, a retire."""
        c, L, f, fsm = self.config, self.L, s.f, s.fsm
        tr = self.trace
        buf_we = s.buf_we
        m.d.comb += [tr.pc.eq(s.pc), tr.cycle.eq(s.cyc)]
        with m.If(buf_we):
            m.d.comb += [tr.valid.eq(1), tr.kind.eq(_K_BUF), tr.buf.eq(s.bw.sel),
                         tr.row.eq(s.bw.row), tr.word.eq(s.bw.word),
                         tr.mask.eq(s.bw.mask), tr.data.eq(s.bw.data)]
        with m.Elif(s.ps_out_ts):
            m.d.comb += [tr.valid.eq(1), tr.kind.eq(_K_TS), tr.buf.eq(f["dst"]),
                         tr.row.eq(s.ps_out_row), tr.data.eq(s.ts_word)]
        with m.Elif(s.en_acc_take):
            a = s.eng.acc.payload
            m.d.comb += [tr.valid.eq(1), tr.kind.eq(_K_ACC), tr.row.eq(s.r0),
                         tr.word.eq(a.n), tr.mask.eq(Cat(*((s.tt > t) if t < c.rows else Const(0)
                                                  for t in range(L)))),
                         tr.data.eq(Cat(*(a.acc[t] for t in range(c.rows))))]
        with m.Elif(fsm.is_("RETIRE") | (fsm.is_("DRAIN") & s.wr.idle & s.is_op["HALT"])):
            m.d.comb += [tr.valid.eq(1), tr.kind.eq(_K_RETIRE)]

    def _after_vload(self, m, s):
        f, D = s.f, self.config.kv4.head_dim
        with m.If(s.is_op["LOAD"]):
            s.fsm.next("RETIRE")
        with m.If(s.is_op["RMSNORM"]):
            self._start_pass(m, s, r0=0, tokens=s.T)
        with m.If(s.is_op["ROPE"]):
            with m.If(s.phase == 0):
                m.d.sync += s.phase.eq(1)
                self._vload_setup(m, s, addr=f["addr1"] + s.pos * D, count=s.T * (D // 2),
                                  e16=1, hi=1)
            with m.Else():
                m.d.sync += s.phase.eq(0)
                self._start_pass(m, s, r0=0, tokens=s.T)
        with m.If(s.is_op["LINEAR"]):
            m.d.sync += s.r0.eq(0)
            self._enter_act(m, s, 0)
        with m.If(s.is_op["EMBED"]):
            with m.If(s.phase == 0):          # the ids are in V: the first token's id
                m.d.sync += [s.phase.eq(1), s.ps.t.eq(0), s.ps.row0.eq(0)]
                s.fsm.next("EMB_ID")
            with m.Else():                    # its scales are in V
                s.fsm.next("EMB_CMD")
        with m.If(s.is_op["ARGMAX"]):         # S1's chunk is in V
            self._arg_chunk(m, s)


# --------------------------------------------------------------------------- cycle model
#: Cycles from a write range's transfer to its first W beat's through hdl.axi.AxiWriter
#: and the memory model (the range, the AW, the burst length into the W side).
KV_WRITE_SETUP = 3
#: LOGITS: cycles per flushed row besides its beats, and per flushed chunk.
FLUSH_ROW = 3
FLUSH_CHUNK = 0
#: ARGMAX: per chunk besides its S1 VLOAD and its acc beats; per token for the index.
ARG_CHUNK = 2
ARG_OUT = 5
#: EMBED: per token besides its id, scale VLOAD, cmd, code beats and the SFU's requant.
EMB_TOKEN = 1


def cycle_model(words: Sequence[int], config: CoreConfig, registers: Registers, *,
                latency: int) -> list[int]:
    """Cycles of each instruction of one run (up to its HALT) on this RTL with the
    memory model of cosim/axi_mem.v at read latency `latency` and one beat a cycle
    (GAP 0): from the cycle after the previous instruction retired to its own
    retirement, inclusive. The instructions run one after another; within one, its
    phases (hdl.core module docstring) run in order:

      fetch      latency + INSTR_BYTES / beat_bytes + 1, then decode 1, retire 1
      VLOAD      latency + beats + 1 (LOAD: latency + beats, it retires from it)
      SFU pass   per token 1 + hdl.sfu.cycle_model(op, k) (the cmd cycle)
      STORE      beats + 3 (the writes are answered during the next fetch)
      LINEAR     VLOAD of S1, then per row tile of `rows` tokens: ACT (tt k / lanes
                 words), the engine (its first beat max(latency + 2, accept_delay
                 + 2) cycles in: the ranges' latency and the engine's divider
                 overlap; then hdl.core_linear.cycle_model), the dequant pass (and
                 the residual pass)
    Each term is a phase of the RTL; tests hold the sum equal to the simulation.
    A run's `cycles` output is the sum plus one (the start cycle)."""
    from golden.core_config import decode

    from . import core_linear
    c = check_rtl_config(config)
    L, BB, D = c.sfu.lanes, c.beat_bytes, c.kv4.head_dim
    T = registers.tokens

    def beats(nbytes):
        return -(-nbytes // BB)

    def vload(nbytes):
        return latency + beats(nbytes) + 1

    def sfu_pass(op, k, tokens):
        return tokens * (1 + sfu_mod.cycle_model(c.sfu, op, k))

    out = []
    for w in words:
        ins = decode(w)
        op, f = ins.op, ins.fields
        cyc = latency + INSTR_BYTES // BB + 1 + 2
        if op == "LOAD":
            cyc += vload(T * f["n"] * 4) - 1
        elif op == "STORE":
            cyc += beats(T * f["n"] * 4) + 3
        elif op == "RMSNORM":
            cyc += vload(2 * f["n"]) + sfu_pass("rmsnorm", f["n"], T)
        elif op == "QUANT":
            cyc += sfu_pass("quant_a8", f["n"], T)
        elif op in ("SWIGLU", "ADD"):
            cyc += sfu_pass("swiglu" if op == "SWIGLU" else "residual_add", f["n"], T)
        elif op == "ROPE":
            cyc += 2 * vload(T * D) + sfu_pass("rope", f["heads"] * D, T)
        elif op == "LINEAR":
            n, k, g = f["n"], f["k"], f["group"]
            cyc += vload(4 * n)
            for r0 in range(0, T, c.rows):
                tt = min(c.rows, T - r0)
                eng = core_linear.cycle_model(c, n, k, g, tt)
                start = max(latency + 2, core_linear.accept_delay(c) + 2)
                cyc += tt * (k // L) + start + eng - 1
                cyc += sfu_pass("dequant", n, tt)
                if f["flags"] & FLAG_RES:
                    cyc += sfu_pass("residual_add", n, tt)
        elif op == "LOGITS":
            n, k, g = f["n"], f["k"], f["group"]
            for r0 in range(0, T, c.rows):
                tt = min(c.rows, T - r0)
                eng = core_linear.cycle_model(c, n, k, g, tt)
                start = max(latency + 2, core_linear.accept_delay(c) + 2)
                cyc += tt * (k // L) + start + eng - 1
                for j0 in range(0, n, c.buf_elems):       # the chunks' flushes
                    words = min(c.buf_elems, n - j0) // L
                    cyc += tt * (words * (L * 4 // BB) + FLUSH_ROW) + FLUSH_CHUNK
        elif op == "ARGMAX":
            n = f["n"]
            for _ in range(T):
                cyc += 1                                   # the SFU cmd
                for j0 in range(0, n, c.buf_elems):
                    cnt = min(c.buf_elems, n - j0)
                    cyc += vload(4 * cnt) + latency + beats(4 * cnt) + ARG_CHUNK
                cyc += ARG_OUT
        elif op == "EMBED":
            n, g = f["n"], f["group"]
            G = n // g
            cyc += vload(4 * T)
            # the code words leave one a cycle (a beat holds beat_bytes / lanes of them)
            per = (2 + vload(beats(4 * G) * BB + BB) + 1 + latency + n // L + 1
                   + sfu_mod.cycle_model(c.sfu, "requant", n) - n // L + EMB_TOKEN)
            cyc += T * per - 1
        elif op in ("KV_APPEND", "ATTEND"):
            # the unit's reader latency counts from its range's transfer, one cycle
            # before the AXI request leaves; a write range's first beat waits for its
            # AW to reach the memory model (KV_WRITE_SETUP)
            cyc += 1 + core_kv.cycle_model(c, op == "ATTEND", registers.pos, T,
                                           f.get("heads", 0), latency + 1,
                                           write_setup=KV_WRITE_SETUP)
        elif op not in ("HALT", "SYNC"):
            raise ValueError(f"{op} is not run by this RTL (IMPLEMENTED)")
        if op == "SYNC":
            cyc += 1
        out.append(cyc)
        if op == "HALT":
            break
    return out
