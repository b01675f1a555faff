"""Alveo boards (DESIGN §5): parts, reference clocks, memory banks, capacities
for fit checks, Vitis platforms, and Amaranth `XilinxPlatform`s for the
full-chip (shell-less) Vivado path.

Capacities are the whole device (Xilinx data sheets DS962/DS963); on a Vitis
platform the shell occupies part of it, so a design near 100 % will not link.
Reference-clock pins come from the boards' master XDC files; the U55C pin is
marked unverified (check it against the U55C XDC before a full-chip build).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amaranth.vendor import XilinxPlatform

__all__ = ["Capacity", "RefClock", "MemoryBanks", "Board", "BOARDS", "board", "platform"]


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """The programmable-logic resources of a device: LUTs, flip-flops, DSPs, BRAM36
    and URAM blocks."""
    lut: int
    ff: int
    dsp: int
    bram36: int
    uram: int

    def as_dict(self) -> dict:
        """The capacity as a plain dict."""
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram36": self.bram36,
                "uram": self.uram}


@dataclass(frozen=True, kw_only=True)
class RefClock:
    """A reference clock input of a board: frequency, differential pins and I/O standard."""
    name: str
    hz: float
    pin_p: str
    pin_n: str
    iostandard: str
    verified: bool = True   # pins checked against the board's master XDC


@dataclass(frozen=True, kw_only=True)
class MemoryBanks:
    """One kind of off-chip memory of a board (HBM or DDR): bank count, size and peak bandwidth."""
    kind: str               # "HBM" | "DDR"
    count: int              # pseudo-channels (HBM) or DIMMs/controllers (DDR)
    bytes_per_bank: int
    gbps_per_bank: float    # peak GB/s (1e9 bytes) of one bank

    @property
    def gbps(self) -> float:
        """Peak GB/s of all banks together."""
        return self.count * self.gbps_per_bank

    @property
    def bytes(self) -> int:
        """Bytes of all banks together."""
        return self.count * self.bytes_per_bank

    def bank(self, i: int) -> str:
        """Vitis connectivity name of bank i, e.g. HBM[3] / DDR[1]."""
        if not 0 <= i < self.count:
            raise ValueError(f"{self.kind} bank {i} does not exist (0..{self.count - 1})")
        return f"{self.kind}[{i}]"


@dataclass(frozen=True, kw_only=True)
class Board:
    """An Alveo card: part, Vitis platform, resources, memories and reference clocks."""
    name: str
    part: str               # device-package-speed, as Vivado spells it
    platform: str           # Vitis platform (XSA) name
    capacity: Capacity
    memory: tuple[MemoryBanks, ...]   # first entry: where kernel buffers go by default
    clocks: tuple[RefClock, ...]      # first entry: the full-chip design's clock
    kernel_clock_mhz: int = 300       # the platform's default kernel clock

    @property
    def banks(self) -> MemoryBanks:
        """The memory where kernel buffers go by default (the first entry)."""
        return self.memory[0]

    def as_dict(self) -> dict:
        """The board as a plain dict (capacity and memories included)."""
        return {"name": self.name, "part": self.part, "platform": self.platform,
                "capacity": self.capacity.as_dict(),
                "memory": [{"kind": m.kind, "count": m.count, "bytes_per_bank": m.bytes_per_bank,
                            "gbps_per_bank": m.gbps_per_bank} for m in self.memory],
                "clocks": [{"name": c.name, "hz": c.hz, "pins": [c.pin_p, c.pin_n],
                            "iostandard": c.iostandard, "verified": c.verified}
                           for c in self.clocks],
                "kernel_clock_mhz": self.kernel_clock_mhz}


_GiB = 1 << 30
# Peak bandwidths: HBM2 460 GB/s over 32 pseudo-channels on the U280 (DS963, UG1314)
# and U55C (DS978); DDR4-2400 x 64-bit data = 19.2 GB/s a channel (U280: 2 channels,
# UG1314; U250: 4 channels, 76.8 GB/s, DS962's "77 GB/s").
_HBM_PC_GBPS = 460 / 32
_DDR4_GBPS = 19.2
# VU37P-class die (U280) and VU55P-class die (U55C) share these totals.
_HBM_DIE = Capacity(lut=1_303_680, ff=2_607_360, dsp=9_024, bram36=2_016, uram=960)

BOARDS: dict[str, Board] = {
    "u280": Board(
        name="u280", part="xcu280-fsvh2892-2L-e",
        platform="xilinx_u280_gen3x16_xdma_1_202211_1", capacity=_HBM_DIE,
        memory=(MemoryBanks(kind="HBM", count=32, bytes_per_bank=256 << 20,
                            gbps_per_bank=_HBM_PC_GBPS),
                MemoryBanks(kind="DDR", count=2, bytes_per_bank=16 * _GiB,
                            gbps_per_bank=_DDR4_GBPS)),
        clocks=(RefClock(name="sysclk0", hz=100e6, pin_p="BJ43", pin_n="BJ44",
                         iostandard="LVDS"),)),
    "u250": Board(
        name="u250", part="xcu250-figd2104-2L-e",
        platform="xilinx_u250_gen3x16_xdma_4_1_202210_1",
        capacity=Capacity(lut=1_728_000, ff=3_456_000, dsp=12_288, bram36=2_688, uram=1_280),
        memory=(MemoryBanks(kind="DDR", count=4, bytes_per_bank=16 * _GiB,
                            gbps_per_bank=_DDR4_GBPS),),
        clocks=(RefClock(name="sysclk0_300", hz=300e6, pin_p="AY37", pin_n="AY38",
                         iostandard="DIFF_SSTL12"),)),
    "u55c": Board(
        name="u55c", part="xcu55c-fsvh2892-2L-e",
        platform="xilinx_u55c_gen3x16_xdma_3_202210_1", capacity=_HBM_DIE,
        memory=(MemoryBanks(kind="HBM", count=32, bytes_per_bank=512 << 20,
                            gbps_per_bank=_HBM_PC_GBPS),),
        clocks=(RefClock(name="sysclk2", hz=100e6, pin_p="BK10", pin_n="BL10",
                         iostandard="LVDS", verified=False),)),
}


def board(name: str) -> Board:
    """The Board called `name` (case and spaces ignored); ValueError naming the known ones."""
    key = name.strip().lower()
    if key not in BOARDS:
        raise ValueError(f"unknown board {name!r}; choose one of {', '.join(sorted(BOARDS))}")
    return BOARDS[key]


def platform(b: Board | str) -> XilinxPlatform:
    """An Amaranth `XilinxPlatform` (Vivado toolchain) for board `b`: device,
    package and speed split from the part, the reference clock as the default
    clock (a differential input, with its frequency constraint)."""
    from amaranth.build import Attrs, Clock, DiffPairs, Resource
    from amaranth.vendor import XilinxPlatform

    b = board(b) if isinstance(b, str) else b
    device, package, speed = b.part.split("-", 2)
    clk = b.clocks[0]

    # device/package/speed are abstract properties of XilinxPlatform: class
    # attributes defined in the body override them.
    body = {"device": device, "package": package, "speed": speed,
            "connectors": [], "default_clk": clk.name,
            "resources": [Resource(clk.name, 0, DiffPairs(clk.pin_p, clk.pin_n, dir="i"),
                                   Clock(clk.hz), Attrs(IOSTANDARD=clk.iostandard))]}
    cls = type(f"{b.name.upper()}Platform", (XilinxPlatform,), body)
    return cls()
