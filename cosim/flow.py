"""The per-block co-simulation flow, written once: where case data lives, the
cached export (reuse a verified image directory, else export it again), the
build of an hdl.generate design, one testbench run on a build (or one run of a
unit's list of cases), the record's build fields and make sim's item of a case.

A block module (cosim/<block>.py) supplies what is its own: how to export and
load its images, the job its testbench reads, and its record.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from quattro_fs import build_root

from cosim import runner

if TYPE_CHECKING:
    from cosim.blocks import SimItem
    from cosim.cases import StreamCase
    from hdl.generate import BlockConfig

__all__ = ["DATA_ROOT", "cached_export", "design_verilog", "build_design", "run_on", "run_case_list",
           "first_case", "is_ideal", "with_build", "case_item"]

#: Exported case data of `make sim` and the cosim tests: build/sim/data/<case>.
DATA_ROOT = build_root() / "sim" / "data"


def cached_export(outdir: Path, *, load: Callable[[Path], object],
                  export: Callable[[Path], object]) -> Path:
    """`outdir` holding a verified image directory: reused when `load(outdir)`
    accepts it, else written again by `export(outdir)` (quantflow's writers
    replace it atomically, so a damaged or stale directory is never half-read)."""
    from quantflow import QuantflowError  # noqa: PLC0415 (torch: only when data is made)
    outdir = Path(outdir)
    if (outdir / "manifest.json").is_file():
        try:
            load(outdir)
            return outdir
        except QuantflowError:
            pass  # stale or damaged: export again
    outdir.parent.mkdir(parents=True, exist_ok=True)
    export(outdir)
    return outdir


@functools.lru_cache(maxsize=256)
def design_verilog(factory: Callable[..., tuple[str, Callable[[], object]]], config: object,
                   /, **kw: object) -> tuple[str, str]:
    """(module name, Verilog text) of the hdl.generate design `factory(config, **kw)`,
    generated once per process: elaborating and converting a block takes ~1 s of
    Python, and every run of a plan on one configuration needs the text again (the
    build cache's key). `config` and `kw` must be hashable (frozen dataclasses)."""
    from hdl.generate import verilog
    name, make = factory(config, **kw)
    return name, verilog(make(), name)


def build_design(factory: Callable[..., tuple[str, Callable[[], object]]], config: object,
                 /, *, sim: str | None = None, waves: bool | None = None,
                 **kw: object) -> runner.Build:
    """The simulator build of the hdl.generate design `factory(config, **kw)`."""
    name, text = design_verilog(factory, config, **kw)
    return runner.build(text, name, sim=sim, waves=waves)


def run_on(b: runner.Build, test_module: str, job: dict) -> dict:
    """One testbench run of `job` on build `b`; the result carries the build's
    cache fields (build_cached, build_seconds)."""
    res = runner.run(b, test_module=test_module, job=job)
    res["build_cached"], res["build_seconds"] = b.cached, b.build_seconds
    return res


def run_case_list(b: runner.Build, test_module: str, config: BlockConfig, jobs: list[dict],
                  seed: int) -> dict:
    """One simulation of a unit's list of case `jobs` on build `b` (the testbench's
    job: the unit's `config` fields, `seed` and the cases; cosim.tb.streams.
    run_case_list runs them)."""
    return run_on(b, test_module, {"config": config.as_dict(), "seed": seed, "cases": jobs})


def first_case(res: dict) -> dict:
    """The first case's result of a run_case_list run, failed with the run's
    errors when the run as a whole failed (a crash, a case that raised)."""
    r = res["cases"][0]
    if not res.get("passed"):
        r = {**r, "passed": False, "errors": res.get("errors", [])}
    return r


def is_ideal(res: dict) -> bool:
    """A run without idle cycles or back-pressure: its cycles must equal the
    block's analytic cycle model."""
    return res.get("p_idle", 0.0) == 0.0 and res.get("p_stall", 0.0) == 0.0


def with_build(rec: dict, b: runner.Build) -> dict:
    """`rec` with the build's time and cache hit recorded (make sim's table)."""
    rec["build_seconds"] = round(b.build_seconds, 1)
    rec["build_cached"] = b.cached
    return rec


def case_item(block: str, case: StreamCase, run: Callable[[], dict], *, macs: int,
              peak: int) -> SimItem:
    """make sim's cosim.blocks.SimItem of a stream case (cosim.cases.StreamCase
    with a config and a name) that `run()` records."""
    from cosim.blocks import SimItem
    return SimItem(block=block, name=case.name, path=case.path, config=case.config.as_dict(),
                   macs=macs, peak_macs_per_cycle=peak, run=run)
