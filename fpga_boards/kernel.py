"""Vitis RTL kernels: a reusable shell around any block with stream interfaces.

A block becomes a kernel by describing it as a `KernelSpec`: which stream of the
block each device-memory buffer feeds (or drains), where in the buffer its
words lie (a `RangeNest` driven by scalar arguments), and the block factory.
`RtlKernel(spec)` then builds the Vitis top:

    ap_clk, ap_rst_n                      (synchronous, active-low reset)
    s_axi_control_*                       AXI4-Lite, ap_ctrl_hs (fpga_boards.axi)
    m_axi_<buffer>_*                      one AXI4 master per buffer, 64-bit addresses
    interrupt

and runs: ap_start -> every DMA starts (arguments sampled) -> the block streams
-> the last write response -> ap_done/ap_ready (+ interrupt) -> idle.

Adding a block's kernel = a function returning its KernelSpec plus one line in
`KERNELS` (see `mixpe_kernel`).

The build flow (fpga_boards.build, fpga_boards.fit) needs less than a KernelSpec:
any object with the calls of `BoardKernel` -- its RTL top, register map, AXI
masters, memory connectivity, resource estimate -- becomes a build tree. A
KernelSpec is one; the accelerator core's kernel (fpga_boards.kernel_core), which
has its own AXI masters rather than streams fed by DMAs, is another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.core_config import CoreConfig
from golden.mixpe_config import MixPEConfig

from .axi import (MAX_DATA_BITS, AxiReadDMA, AxiWriteDMA, ControlSlave, KernelArg, RangeNest,
                  Register, arg_offsets, arg_registers, axi_read_members, axi_write_members,
                  axil_slave_members, beat_bits, control_registers, word_bytes)

if TYPE_CHECKING:
    from .boards import Board

__all__ = ["BoardKernel", "Link", "BufferSpec", "KernelSpec", "RtlKernel", "KERNELS",
           "kernel_spec", "mixpe_kernel", "words_to_bytes", "bytes_to_words", "RangeNest",
           "connect_flat"]


@dataclass(frozen=True, kw_only=True)
class Link:
    """One `sp=` line of the v++ link config: kernel argument `arg` (whose m_axi
    bundle is `bus`) -> memory resource `bank` (e.g. HBM[0], HBM[0:3], DDR[1]),
    with the reason written next to it."""
    arg: str
    bus: str
    bank: str
    why: str = ""


class BoardKernel(Protocol):
    """What the build flow needs of a kernel (a KernelSpec, the core's kernel)."""

    name: str               # Verilog top, .xo and compute-unit name
    block: str              # the cosim / report block name
    config: object          # the block configuration (has as_dict())
    min_resources: dict     # lower bounds known without synthesis (the fit precheck)

    def top(self) -> wiring.Component:
        """The RTL kernel (ap_clk, ap_rst_n, s_axi_control_*, m_axi_*, interrupt)."""

    def verilog(self) -> str:
        """The Verilog of top() as module `name`."""

    def registers(self) -> tuple[Register, ...]:
        """The whole s_axi_control map (fpga_boards.axi.Register)."""

    def masters(self) -> dict[str, dict]:
        """m_axi bundle name (without m_axi_) -> {"direction": "in" | "out" | "inout",
        "data_bits": int, ...} for the manifest."""

    def connectivity(self, board: Board) -> tuple[Link, ...]:
        """The memory bank of every pointer argument on `board`."""

    def resources(self) -> tuple[dict, str]:
        """(resource -> count, where the figures come from) for the fit check."""

    def fullchip_top(self) -> Elaboratable | None:
        """A shell-less self-test top for the full-chip Vivado path, or None."""

    def host_usage(self, rel: str) -> str:
        """RUN.md's command on the machine with the card (`rel`: the tree's path)."""


@dataclass(frozen=True, kw_only=True)
class BufferSpec:
    """A device-memory buffer: argument/master name, the block stream it feeds
    ("in") or drains ("out"), the word width, and where its words are."""
    name: str
    direction: str          # "in" | "out"
    stream: str             # attribute name of the block's stream
    word_bits: int
    nest: RangeNest
    outer_arg: str          # scalar argument giving the loop counts
    inner_arg: str

    def __post_init__(self):
        if self.direction not in ("in", "out"):
            raise ValueError(f"buffer {self.name!r}: direction must be 'in' or 'out'")

    @property
    def word_bytes(self) -> int:
        """Bytes one word takes in device memory (a power of two)."""
        return word_bytes(self.word_bits)

    @property
    def data_bits(self) -> int:
        """Width of the buffer's AXI master data bus."""
        return beat_bits(self.word_bits)

    def words(self, scalars: dict) -> int:
        """Words of the buffer touched by a run with these scalar arguments."""
        n_o, n_i = scalars[self.outer_arg], scalars[self.inner_arg]
        if self.nest.outer_stride is None:
            return n_o * n_i * self.nest.length
        if n_o == 0 or n_i == 0:
            return 0
        last = (n_o - 1) * self.nest.outer_stride + (n_i - 1) * self.nest.inner_stride
        return last + self.nest.length


@dataclass(frozen=True, kw_only=True)
class KernelSpec:
    """A block's Vitis RTL kernel: name, block configuration and factory, buffers and scalar
    arguments."""
    name: str                       # kernel (Verilog top) name
    block: str                      # the cosim/report block name
    config: object                  # the block configuration (has as_dict())
    factory: Callable               # () -> block component
    buffers: tuple[BufferSpec, ...]
    scalars: tuple[str, ...]
    #: Lower bounds on resources known without synthesis (for an instant fit refusal).
    min_resources: dict = field(default_factory=dict)

    @property
    def args(self) -> tuple[KernelArg, ...]:
        """Register-map order: buffers (64-bit pointers), then scalars (32-bit)."""
        return (tuple(KernelArg(name=b.name, bits=64) for b in self.buffers)
                + tuple(KernelArg(name=s, bits=32) for s in self.scalars))

    @property
    def offsets(self) -> dict[str, int]:
        """Byte offset of every argument in the control register map."""
        return arg_offsets(self.args)

    def buffer(self, name: str) -> BufferSpec:
        """The BufferSpec called `name` (KeyError if there is none)."""
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    # BoardKernel
    def top(self) -> "RtlKernel":
        """The RTL kernel of this spec."""
        return RtlKernel(self)

    def verilog(self) -> str:
        """The Verilog of top() as module `name`."""
        from hdl.generate import verilog
        return verilog(self.top(), self.name)

    def registers(self) -> tuple[Register, ...]:
        """The whole s_axi_control map: the control registers, then the arguments."""
        return control_registers() + arg_registers(
            self.args, buses={b.name: f"m_axi_{b.name}" for b in self.buffers})

    def masters(self) -> dict[str, dict]:
        """m_axi bundle name -> direction, data and word width, for the manifest."""
        return {b.name: {"direction": b.direction, "data_bits": b.data_bits,
                         "word_bits": b.word_bits} for b in self.buffers}

    def connectivity(self, board: Board) -> tuple[Link, ...]:
        """Each buffer on its own bank of the board's default memory (round robin):
        the streams run at once, so separate banks add their bandwidths."""
        n = board.banks.count
        return tuple(Link(arg=b.name, bus=f"m_axi_{b.name}", bank=board.banks.bank(i % n))
                     for i, b in enumerate(self.buffers))

    def resources(self) -> tuple[dict, str]:
        """Yosys estimate of the kernel (fpga_boards.fit.kernel_resources) and its source."""
        from .fit import kernel_resources
        return kernel_resources(self), "yosys synth_xilinx -family xcup"

    def fullchip_top(self) -> Elaboratable:
        """The shell-less full-chip self-test top (fpga_boards.build.FullChipTop)."""
        from .build import FullChipTop
        return FullChipTop(self)

    def host_usage(self, rel: str) -> str:
        """RUN.md's command on the machine with the card (`rel`: the tree's path)."""
        return (f"`python -m fpga_boards host <quantflow images> --xclbin {rel}/{self.name}.xclbin "
                f"--config '<json>'`\n   runs the kernel through pyxrt and compares every result "
                f"word with golden.")


class RtlKernel(wiring.Component):
    """The Vitis RTL kernel of `spec`, with flat port names (module docstring)."""

    def __init__(self, spec: KernelSpec):
        self.spec = spec
        for b in spec.buffers:
            if b.data_bits > MAX_DATA_BITS:  # refuse before any DMA is built
                raise ValueError(f"buffer {b.name!r}: a {b.word_bits}-bit memory word needs a "
                                 f"{b.data_bits}-bit AXI bus; Vitis links at most "
                                 f"{MAX_DATA_BITS} bits: use a narrower configuration "
                                 f"(fewer columns)")
        members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1)}
        for k, v in axil_slave_members().items():
            members[f"s_axi_control_{k}"] = v
        for b in spec.buffers:
            mem = (axi_read_members if b.direction == "in" else axi_write_members)(b.data_bits)
            for k, v in mem.items():
                members[f"m_axi_{b.name}_{k}"] = v
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """Build the kernel: control slave, one AXI DMA per buffer, the block, flat Vitis ports."""
        m = Module()
        spec = self.spec
        # The kernel's own clock domain, so that the ports are ap_clk/ap_rst_n
        # rather than Amaranth's default clk/rst.
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        m.submodules.control = ctl = ControlSlave(spec.args)
        connect_flat(m, self, "s_axi_control", ctl, axil_slave_members())
        m.d.comb += self.interrupt.eq(ctl.interrupt)

        m.submodules.block = block = spec.factory()
        idle = Signal(init=1)
        go = Signal()
        m.d.comb += go.eq(ctl.ap_start & idle)

        writers = []
        for b in spec.buffers:
            if b.direction == "in":
                dma = AxiReadDMA(word_bits=b.word_bits, nest=b.nest)
                members = axi_read_members(b.data_bits)
            else:
                dma = AxiWriteDMA(word_bits=b.word_bits, nest=b.nest)
                members = axi_write_members(b.data_bits)
                writers.append(dma)
            m.submodules[f"dma_{b.name}"] = dma
            m.d.comb += [dma.start.eq(go), dma.base.eq(getattr(ctl, f"arg_{b.name}")),
                         dma.n_outer.eq(getattr(ctl, f"arg_{b.outer_arg}")),
                         dma.n_inner.eq(getattr(ctl, f"arg_{b.inner_arg}"))]
            connect_flat(m, self, f"m_axi_{b.name}", dma.axi, members)
            s = getattr(block, b.stream)
            # Payload layouts equal the memory words (element 0 in the LSBs).
            if b.direction == "in":
                m.d.comb += [s.valid.eq(dma.data.valid), s.payload.eq(dma.data.payload),
                             dma.data.ready.eq(s.ready)]
            else:
                m.d.comb += [dma.data.valid.eq(s.valid), dma.data.payload.eq(s.payload),
                             s.ready.eq(dma.data.ready)]

        # Completion: every writer has seen its last response (each pulses once).
        seen = [Signal(name=f"done_{i}") for i in range(len(writers))]
        all_done = Signal()
        m.d.comb += all_done.eq(~idle & _all([s | w.done for s, w in zip(seen, writers)]))
        for s, w in zip(seen, writers):
            with m.If(go | all_done):
                m.d.sync += s.eq(0)
            with m.Elif(w.done):
                m.d.sync += s.eq(1)
        with m.If(go):
            m.d.sync += idle.eq(0)
        with m.Elif(all_done):
            m.d.sync += idle.eq(1)
        m.d.comb += [ctl.ap_idle.eq(idle), ctl.ap_done.eq(all_done), ctl.ap_ready.eq(all_done)]
        return m


def _is_input(flow) -> bool:
    return flow.flow == wiring.Flow.In


def connect_flat(m: Module, top: wiring.Component, prefix: str, sub: wiring.Component,
                 members: dict, *, skip: Iterable[str] = ()) -> None:
    """Wire `sub`'s bare AXI members (araddr, rdata, ...) to `top`'s flat ports
    `<prefix>_<member>`, each in its direction (`members`: the bare names' flows,
    as the sub-component's side sees them); members in `skip` are left to the
    caller."""
    for k, flow in members.items():
        if k in skip:
            continue
        port, inner = getattr(top, f"{prefix}_{k}"), getattr(sub, k)
        if _is_input(flow):
            m.d.comb += inner.eq(port)
        else:
            m.d.comb += port.eq(inner)


def _all(sigs):
    out = 1
    for s in sigs:
        out = out & s
    return out


# --------------------------------------------------------------------------- data

def words_to_bytes(words: Iterable[int], word_bits: int) -> bytes:
    """Memory words -> their device-memory bytes (little-endian, padded words)."""
    wb = word_bytes(word_bits)
    mask = (1 << word_bits) - 1
    return b"".join((int(w) & mask).to_bytes(wb, "little") for w in words)


def bytes_to_words(raw: bytes, word_bits: int) -> list[int]:
    """Device-memory bytes -> memory words (inverse of words_to_bytes)."""
    wb = word_bytes(word_bits)
    if len(raw) % wb:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {wb}-byte words")
    mask = (1 << word_bits) - 1
    return [int.from_bytes(raw[i:i + wb], "little") & mask for i in range(0, len(raw), wb)]


# --------------------------------------------------------------------------- kernels

#: DSP48E2 per MixPE dequantization lane (s2*Pg and zs2*Ag; docs/mixpe.md).
MIXPE_DSP_PER_DQ_LANE = 2


def mixpe_kernel(config: MixPEConfig | None = None) -> KernelSpec:
    """MixPE as a kernel: act/code/scale buffers in, result buffer out, scalars
    m_tiles and n_tiles; tiles run `for tn: for tm:` exactly as MixPESystem, so
    the buffers hold quantflow's images word for word (docs/formats.md)."""
    from hdl.mixpe import MixPE
    cfg = config or MixPEConfig()
    if not isinstance(cfg, MixPEConfig):
        raise TypeError(f"expected a MixPEConfig, got {type(cfg).__name__}")
    bufs = (
        BufferSpec(name="act", direction="in", stream="act", word_bits=cfg.act_word_bits,
                   nest=RangeNest(length=cfg.K, inner_stride=cfg.K, outer_stride=0),
                   outer_arg="n_tiles", inner_arg="m_tiles"),
        BufferSpec(name="code", direction="in", stream="code", word_bits=cfg.code_word_bits,
                   nest=RangeNest(length=cfg.K, inner_stride=0, outer_stride=cfg.K),
                   outer_arg="n_tiles", inner_arg="m_tiles"),
        BufferSpec(name="scale", direction="in", stream="scale",
                   word_bits=cfg.scale_word_bits,
                   nest=RangeNest(length=cfg.groups, inner_stride=0, outer_stride=cfg.groups),
                   outer_arg="n_tiles", inner_arg="m_tiles"),
        BufferSpec(name="result", direction="out", stream="result",
                   word_bits=cfg.result_word_bits,
                   nest=RangeNest(length=cfg.rows, inner_stride=cfg.rows, outer_stride=None),
                   outer_arg="n_tiles", inner_arg="m_tiles"),
    )
    return KernelSpec(name="mixpe", block="kernel_mixpe", config=cfg,
                      factory=lambda: MixPE(cfg), buffers=bufs,
                      scalars=("m_tiles", "n_tiles"),
                      min_resources={"dsp": MIXPE_DSP_PER_DQ_LANE * cfg.dq_lanes})


def _core_kernel(config):
    from .kernel_core import core_kernel     # it imports this module
    return core_kernel(config)


def _core_config(fields: dict):
    from .kernel_core import config_from_fields
    return config_from_fields(fields)


#: kernel name -> (configuration class, spec factory, configuration from JSON fields
#: or None for cls(**fields)). One line per block. The core's configuration starts
#: from its default kernel (SmolLM2's numerics, fpga_boards.kernel_core) because
#: CoreConfig's own defaults describe the architecture's 8-port target, not an RTL.
KERNELS: dict[str, tuple[type, Callable, Callable | None]] = {
    "mixpe": (MixPEConfig, mixpe_kernel, None),
    "core": (CoreConfig, _core_kernel, _core_config),
}


def kernel_spec(name: str, config: dict | None = None) -> BoardKernel:
    """The kernel `name` (a BoardKernel) with configuration fields `config`."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(sorted(KERNELS))}")
    cls, factory, configure = KERNELS[name]
    try:
        cfg = configure(config or {}) if configure else cls(**(config or {}))
    except TypeError as e:
        raise ValueError(f"bad {name} configuration {config!r}: {e}") from None
    return factory(cfg)
