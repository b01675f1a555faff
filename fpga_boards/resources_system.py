"""Analytic resource estimate of one accelerator core instance as the system model
(fpga_boards.perf) and the design-space sweep (dse) deploy it, what-ifs included:
each unit's last Yosys measurement (UNIT_MEASURED: the configuration it was measured
at and where the figure is reported) scaled by the one size that unit grows with,
plus the analytic block RAM of the core's own memories (resources_core.buffer_bram).

A whole-core Yosys run takes longer than a sweep can wait (docs/results.md, "Core":
not finished in 30 min on 2 cores), so every figure here is labelled "analytic": a
lower bound, since the sequencer, its decoder and the kernel's control slave are not
counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from golden.core_config import CoreConfig
from golden.sparse_dsp_config import SparseDSPConfig
from golden.system_config import SystemConfig

from .kernel_core import MEASURED_DEFAULT

__all__ = ["UnitFigure", "UNIT_MEASURED", "KEYS", "SOURCE_NOTE", "core_estimate",
           "sparse_stage_config"]

#: What the "analytic lower bound" of core_estimate is, for reports.
SOURCE_NOTE = ("units scaled from their last Yosys 0.70 figures (resources_system."
               "UNIT_MEASURED), the core's memories from resources_core.buffer_bram; not "
               "counted: the sequencer, its decoder and the kernel shell")

KEYS = ("lut", "ff", "dsp", "bram36", "uram")


@dataclass(frozen=True)
class UnitFigure:
    """One unit's Yosys figure (LUT incl. LUT RAM, FF, DSP48E2, BRAM36, URAM288) at
    `size` of the quantity the unit scales with (`per`)."""
    counts: dict
    size: float
    per: str
    source: str

    def scaled(self, size: float) -> dict:
        """The unit's counts scaled linearly to `size` of its quantity (measured at
        self.size)."""
        f = size / self.size
        return {k: self.counts[k] * f for k in KEYS}


_SFU_L1 = {"lut": 4347, "ff": 1430, "dsp": 18, "bram36": 5, "uram": 0}
_SFU_L4 = {"lut": 10687, "ff": 3065, "dsp": 60, "bram36": 10, "uram": 0}
#: The units' last Yosys 0.70 (synth_xilinx -family xcup) figures (the default core's
#: engine and masters as fpga_boards.kernel_core records them).
UNIT_MEASURED = {
    "engine": UnitFigure(
        MEASURED_DEFAULT["engine"], CoreConfig().rows * CoreConfig().beat_bytes,
        "multiplier-free PE (rows x codes a beat; measured at rows 4 x 32, w_bits 8, "
        "cols 512)", "docs/results.md, Core"),
    "sparse_engine": UnitFigure(
        {"lut": 3986, "ff": 1661, "dsp": 20, "bram36": 0, "uram": 0}, 16,
        "sparse DSP stage (the SparseDSP stream block at L = 16)",
        "docs/results.md, Sparse DSP chain"),
    "axi": UnitFigure(
        MEASURED_DEFAULT["axi"], 1,
        "AXI read + write master pair", "docs/results.md, Core"),
    # per SFU lane: the step from 1 to 4 lanes (the rest is the lane-independent base)
    "sfu_lane": UnitFigure(
        {k: (_SFU_L4[k] - _SFU_L1[k]) / 3 for k in KEYS}, 1,
        "SFU lane (sfu_l4_k4096 - sfu_l1_k2048, over 3 lanes)", "docs/results.md, SFU"),
    "sfu_base": UnitFigure(
        {k: _SFU_L1[k] - (_SFU_L4[k] - _SFU_L1[k]) / 3 for k in KEYS}, 1,
        "SFU without lanes", "docs/results.md, SFU"),
    "kv4_rotate": UnitFigure(
        {"lut": 73855, "ff": 17987, "dsp": 232, "bram36": 0, "uram": 0}, 2 * 3 * 16,
        "lane-MAC (2 heads lanes; measured d64, 16 lanes, 3 heads, rotate + recent 8)",
        "docs/kv4_attention.md, Resources"),
    "kv4_plain": UnitFigure(
        {"lut": 56740, "ff": 16054, "dsp": 229, "bram36": 0, "uram": 0}, 2 * 3 * 16,
        "lane-MAC (plain KV4, d64, 16 lanes, 3 heads)", "docs/kv4_attention.md, Resources"),
}


def _add(total: dict, part: dict, n: float = 1) -> None:
    for k in KEYS:
        total[k] += part[k] * n


def core_estimate(core: CoreConfig, system: SystemConfig,
                  codes_per_beat: int) -> tuple[dict, str, dict]:
    """(counts, source, per unit) of one core instance with `system`'s what-ifs:
    engine slices (ports) of `codes_per_beat` x rows PEs (or sparse DSP stages: the
    kept codes of a beat, fpga_boards.perf.Format), one
    AXI pair per port, the SFU at its lanes, kv_units KV4 units, and the analytic
    BRAM36 of the buffers, V memory and acc RAM."""
    from .resources_core import buffer_bram
    units = {}
    per_beat = codes_per_beat
    if system.engine_kind == "mixpe":
        pe = core.rows * per_beat
        eng = UNIT_MEASURED["engine"].scaled(pe)
        # the engine's block RAM is its column tile's scales and partials: by cols
        eng["bram36"] = UNIT_MEASURED["engine"].counts["bram36"] * core.cols / 512
        eng["dsp"] = core.rows + 1
    else:
        # one DSP stage per kept code of a beat and token row
        eng = UNIT_MEASURED["sparse_engine"].scaled(core.rows * per_beat)
    units["engine"] = {k: eng[k] * system.ports for k in KEYS}
    units["axi"] = UNIT_MEASURED["axi"].scaled(system.ports)
    sfu = UNIT_MEASURED["sfu_base"].scaled(1)
    _add(sfu, UNIT_MEASURED["sfu_lane"].scaled(core.sfu.lanes))
    units["sfu"] = sfu
    kv = core.kv4
    fig = UNIT_MEASURED["kv4_rotate" if (kv.rotate or kv.recent) else "kv4_plain"]
    units["kv4"] = {k: v * system.kv_units
                    for k, v in fig.scaled(2 * kv.heads * kv.lanes).items()}
    # the slices write their column tiles into the one acc RAM (banked by tile)
    units["memories"] = {"lut": 0, "ff": 0, "dsp": 0, "uram": 0,
                         "bram36": buffer_bram(core)["total"]}
    total = {k: 0.0 for k in KEYS}
    for u in units.values():
        _add(total, u)
    counts = {k: int(math.ceil(v)) for k, v in total.items()}
    src = "analytic lower bound, fpga_boards.resources_system"
    return counts, src, units


def sparse_stage_config() -> SparseDSPConfig:
    """The sparse DSP chain UNIT_MEASURED["sparse_engine"] was measured at."""
    return SparseDSPConfig(L=16, group_len=4, K=512, qgroup=64)
