"""UltraScale+ resource estimates of the KV4 decode-attention unit (Yosys
`synth_xilinx -family xcup`, through fpga_boards.resources.estimate; cached under
build/resources/).

CONFIGS: the make-sim configs (d64 x3 heads, d128 x1 head; rotate=True,
recent=8), and d64 with recent=0 (d64_rot_r0) and with rotate=False, recent=0
(d64_plain): what the Hadamard rotation costs. (The RTL builds the 8-bit path
at any `recent`: recent=0 gives the same quantizer netlist and an attention
differing in one constant, so d64_rot_r0 shows no saving.) Each is a row
"<config>" (the whole KV4Unit) or "<config>_quant" / "<config>_attn" (its
KV4Quantizer / KV4Attention alone: where the LUTs go). Where both halves and not
the unit are measured, the table adds their sum as the unit (`summed`): the
halves share no logic (d32 l8 plain: sum 15394 LUT / 3779 FF / 63 DSP against
15699 / 3792 / 63 synthesized whole), and ABC9's time grows faster than the
netlist, so two halves are much quicker than one whole d64 unit. "LUT / lane-MAC" divides LUT1-6 + LUTs as memory by
the config's peak_macs_per_cycle = 2*heads*lanes (for a half: its share).

CLI: `python -m fpga_boards.resources_kv4_attention [--configs d64_quant,d64_attn,...]`
runs the Yosys jobs one after another (never in parallel: each is large) and
prints the table with the seconds each took (~0 when it came from the cache).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from golden.kv4_attention_config import KV4Config
from golden.validate import check_choice

if TYPE_CHECKING:
    from amaranth.lib import wiring

from .resources import DEFAULT_CACHE, Resources, SynthOptions, estimate, markdown_table

__all__ = ["CONFIGS", "Design", "DESIGNS", "DEFAULT_KEYS", "Row", "build", "synth", "summed", "with_sums",
           "render", "main"]

#: KV4Unit / KV4Quantizer / KV4Attention, by the `part` a Design names.
PARTS = ("unit", "quantizer", "attention")
_PART_LABEL = {"unit": "KV4Unit", "quantizer": "KV4Quantizer", "attention": "KV4Attention",
               "sum": "KV4Unit = KV4Quantizer + KV4Attention"}


@dataclass(frozen=True)
class Design:
    """One measured design: a --configs name, the part of the KV4 unit, and its KV4Config."""
    key: str            # the --configs name
    part: str           # one of PARTS
    config: KV4Config

    @property
    def top(self) -> str:
        """Verilog top module (and cache file prefix): part + every config field
        that changes the netlist."""
        return f"{self.config.name()}_{self.part}"

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle of the configuration."""
        return self.config.peak_macs_per_cycle


#: The configurations, by --configs name: the make-sim ones (rotate=True, recent=8
#: by default) and d64 with recent=0, and with neither rotation nor recent window.
CONFIGS = {
    "d64": KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3),
    "d64_plain": KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3, rotate=False, recent=0),
    "d64_rot_r0": KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3, recent=0),
    "d128": KV4Config(head_dim=128, lanes=16, max_t=4096, heads=1),
}
_SUFFIX = {"unit": "", "quantizer": "_quant", "attention": "_attn"}

#: Every row: "<config>" the whole KV4Unit, "<config>_quant" / "<config>_attn" its halves.
DESIGNS = tuple(Design(k + _SUFFIX[p], p, c) for k, c in CONFIGS.items() for p in PARTS)
_BY_KEY = {d.key: d for d in DESIGNS}
#: What the CLI synthesizes by default: both halves of every config (the table sums
#: them into the unit), most wanted first.
DEFAULT_KEYS = tuple(d.key for d in DESIGNS if d.part != "unit")


@dataclass(frozen=True)
class Row:
    """One table row: the design, its estimate and the seconds it took."""
    design: Design
    res: Resources
    seconds: float      # wall time of this estimate (Verilog + Yosys; ~0 if cached)


def build(design: Design) -> wiring.Component:
    """The Amaranth component of `design` (hdl imported lazily: amaranth only)."""
    from hdl import kv4_attention as K
    cls = {"unit": K.KV4Unit, "quantizer": K.KV4Quantizer, "attention": K.KV4Attention}
    check_choice("part", design.part, PARTS)
    return cls[design.part](design.config)


def synth(design: Design, *, cache_dir: Path | str | None = DEFAULT_CACHE) -> Row:
    """Estimate one design with Yosys (DSP inference on), cached; the Row with its wall time."""
    t0 = time.monotonic()
    res = estimate(build(design), design.top, options=SynthOptions(dsp=True),
                   cache_dir=cache_dir)
    return Row(design, res, time.monotonic() - t0)


def summed(quant: Row, attn: Row) -> Row:
    """The unit as the sum of its halves (same config): KV4Unit adds only the fill
    counter and wiring and its halves share no logic, so this is within ~2 % of
    synthesizing the unit whole (module docstring) at much smaller ABC9 runs."""
    q, a = quant.res, attn.res
    if (quant.design.part, attn.design.part) != ("quantizer", "attention") or \
            quant.design.config != attn.design.config:
        raise ValueError("summed() takes the quantizer and the attention row of one config")
    ints = {f: getattr(q, f) + getattr(a, f) for f in (
        "lut", "lutram", "ff", "latch", "dsp", "carry4", "carry8", "ramb36", "ramb18", "uram")}
    cells = dict(q.cells)
    for t, n in a.cells:
        cells[t] = cells.get(t, 0) + n
    res = dataclasses.replace(q, name=f"{q.name}+{a.name}", cells=tuple(sorted(cells.items())),
                              verilog_sha256="", **ints)
    key = quant.design.key.removesuffix("_quant")
    return Row(Design(key, "sum", quant.design.config), res, quant.seconds + attn.seconds)


def with_sums(rows: list[Row]) -> list[Row]:
    """`rows` plus, after each config's attention row, the summed unit where both
    halves were measured and the unit itself was not."""
    have = {(r.design.config, r.design.part): r for r in rows}
    out = []
    for r in rows:
        out.append(r)
        c = r.design.config
        if r.design.part == "attention" and (c, "quantizer") in have and (c, "unit") not in have:
            out.append(summed(have[c, "quantizer"], r))
    return out


def _cfg_label(c: KV4Config) -> str:
    return (f"d{c.head_dim} l{c.lanes} T{c.max_t} h{c.heads}, "
            f"rotate={'on' if c.rotate else 'off'}, recent={c.recent}")


def render(rows: list[Row], *, seconds: bool = True) -> str:
    """Markdown table, one line per row; `seconds` adds the Yosys wall-time column."""
    head = ("design", "config", "LUT", "LUTRAM", "FF", "DSP48E2", "CARRY4", "BRAM36",
            "lane-MACs/cycle", "LUT / lane-MAC") + (("Yosys s",) if seconds else ())
    body = []
    for r in rows:
        res, n = r.res, r.design.macs_per_cycle
        body.append((_PART_LABEL[r.design.part], _cfg_label(r.design.config), res.lut,
                     res.lutram, res.ff, res.dsp, res.carry4, f"{res.bram36:g}", n,
                     f"{(res.lut + res.lutram) / n:.1f}")
                    + ((f"{r.seconds:.0f}",) if seconds else ()))
    return markdown_table(head, body)


def _keys(text: str) -> list[Design]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in _BY_KEY]
    if bad or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown config {', '.join(bad) or '(none)'}; choose from {', '.join(_BY_KEY)}")
    return [_BY_KEY[k] for k in keys]


def main(argv: list[str] | None = None) -> int:
    """`python -m fpga_boards.resources_kv4_attention`: estimate the designs and print the table;
    returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fpga_boards.resources_kv4_attention",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=_keys, default=[_BY_KEY[k] for k in DEFAULT_KEYS],
                    help=f"comma-separated rows to synthesize, from {','.join(_BY_KEY)} "
                         f"(default: {','.join(DEFAULT_KEYS)})")
    ap.add_argument("--no-cache", action="store_true", help="ignore build/resources/")
    args = ap.parse_args(argv)
    cache_dir = None if args.no_cache else DEFAULT_CACHE
    rows = []
    for d in args.configs:  # one Yosys at a time: each netlist is large
        rows.append(synth(d, cache_dir=cache_dir))
        print(f"{d.key}: {rows[-1].seconds:.0f} s", file=sys.stderr, flush=True)
    if rows:
        print(rows[0].res.yosys_version.split(" (")[0] + "; "
              + rows[0].res.synth_command.split(" -top ")[0])
    print(render(with_sums(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
