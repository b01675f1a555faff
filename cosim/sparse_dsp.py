"""Sparse DSP chain co-simulation: quantflow images -> Verilog -> Verilator -> records.

One Verilator build of SparseDSP(config) serves every pattern, mode and group
split (all run-time settings). A run streams one or more image directories back
to back (cosim/tb/sparse_dsp_stream.py).

    case = SparseDSPCase(config=cfg, mode=TileMode(pattern="2:4", mode="w4a8", span=1))
    res = run_cases([case], p_idle=0.2, p_stall=0.3)
    rec = to_record(case, res)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from golden.sparse_dsp_config import PATTERN_NAMES, MODES, SparseDSPConfig, TileMode

from cosim import runner
from cosim.cases import MIN_MACS
from cosim.flow import DATA_ROOT, build_design, cached_export, is_ideal, run_on, with_build
from cosim.report import make_record

__all__ = ["DEFAULT_CONFIG", "SparseDSPCase", "prepare_data", "build", "stimulus",
           "run_dirs", "run_cases", "to_record", "default_plan", "sim_items", "config_items"]

STREAM_TB = "cosim.tb.sparse_dsp_stream"
#: The chain `make sim` and the tests build: 8 DSPs in two groups of 4.
DEFAULT_CONFIG = SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64)


@dataclass(frozen=True, kw_only=True)
class SparseDSPCase:
    """One image directory: `rows` weight rows (multiple of the mode's segments)
    against `ma` activation rows, seeded synthetic data, pruned by `method`."""
    config: SparseDSPConfig
    mode: TileMode
    rows: int = 0          # 0: enough for MIN_MACS kept MACs
    ma: int = 4
    seed: int = 1
    method: str = "magnitude"
    p_idle: float = 0.2
    p_stall: float = 0.3

    def __post_init__(self):
        self.mode.check(self.config)
        if self.rows == 0:
            S = self.mode.segments(self.config)
            kept_per_tile = self.mode.beats(self.config) * self.config.L
            tiles = -(-MIN_MACS // kept_per_tile)
            object.__setattr__(self, "rows", -(-tiles // self.ma) * S)
        if self.rows % self.mode.segments(self.config):
            raise ValueError(f"rows={self.rows} must be a multiple of the mode's "
                             f"{self.mode.segments(self.config)} segments")

    @property
    def tiles(self) -> int:
        """Tiles the case runs: row tiles (rows / segments) times activation rows."""
        return self.rows // self.mode.segments(self.config) * self.ma

    @property
    def modes(self) -> list[TileMode]:
        """The tile mode of every tile (the same for all)."""
        return [self.mode] * self.tiles

    @property
    def macs(self) -> int:
        """Dense-equivalent MACs."""
        return self.rows * self.ma * self.config.K

    @property
    def kept_macs(self) -> int:
        """MACs the chain does on kept weights: tiles * beats * L."""
        return self.tiles * self.mode.beats(self.config) * self.config.L

    @property
    def split(self) -> str:
        """The group split: segments x stages per dot product."""
        S = self.mode.segments(self.config)
        return f"{S}x{self.mode.seg_len(self.config)}"

    @property
    def name(self) -> str:
        """The case's name: configuration, pattern, mode, span and workload."""
        p = self.mode.pattern.replace(":", "of")
        return (f"{self.config.name()}_{p}_{self.mode.mode}_span{self.mode.span}_"
                f"{self.method}_r{self.rows}_m{self.ma}_s{self.seed}")

    def record_config(self) -> dict:
        """The record's `config`: hardware fields, tile mode and split."""
        return {**self.config.as_dict(), **self.mode.as_dict(), "split": self.split}


def prepare_data(case: SparseDSPCase, *, root: Path | None = None) -> Path:
    """Seeded random layer (a few outlier channels) and activations, pruned and
    quantized by quantflow into root/<case.name> (reused when it verifies)."""
    from quantflow import random_activations, random_linear_weights
    from quantflow.sparse_dsp import export_sparse_dsp, load_sparse_dsp
    K = case.config.K

    def export(outdir: Path) -> None:
        W = random_linear_weights(case.rows, K, seed=case.seed,
                                  outlier_channels=min(2, case.rows))
        X = random_activations(case.ma, K, seed=case.seed + 1_000_003)
        calib = random_activations(64, K, seed=case.seed + 2_000_003)
        export_sparse_dsp(outdir, case.config, W, X, mode=case.mode, method=case.method,
                          calib=calib, provenance={"source": "synthetic", "seed": case.seed})

    return cached_export(Path(root or DATA_ROOT) / case.name,
                         load=lambda d: load_sparse_dsp(d, case.config), export=export)


def build(config: SparseDSPConfig = DEFAULT_CONFIG, *, sim: str | None = None,
          waves: bool | None = None) -> runner.Build:
    """The Verilated sparse DSP block of `config` (cached)."""
    from hdl.generate import sparse_dsp_factory
    return build_design(sparse_dsp_factory, config, sim=sim, waves=waves)


def stimulus(config: SparseDSPConfig, data_dirs: Iterable[Path | str]) -> dict:
    """The testbench's inputs as plain JSON job fields, computed here because the
    caller has torch loaded and the simulator's Python then need not import it
    (~1.7 s of CPU per run): the image directories (data_dirs), each source
    port's words of every directory concatenated (words), the expected result
    words golden.sparse_dsp gives (quantflow re-derives them when it loads a
    directory), and the tile count, dense-equivalent and kept MACs."""
    from quantflow.sparse_dsp import load_sparse_dsp
    dirs = [str(d) for d in data_dirs]
    words: dict[str, list[int]] = {}
    tiles = macs = kept = 0
    for d in dirs:
        img = load_sparse_dsp(d, config)
        for k, ws in img.words.items():
            words.setdefault(k, []).extend(int(w) for w in ws)
        tiles += img.tiles
        macs += img.dense_macs
        kept += img.kept_macs
    expected = words.pop("result")
    return {"data_dirs": dirs, "words": words, "expected": expected, "tiles": tiles,
            "macs": macs, "kept_macs": kept}


def run_dirs(config: SparseDSPConfig, data_dirs: Iterable[Path | str], *,
             build_: runner.Build | None = None, p_idle: float = 0.0, p_stall: float = 0.0,
             seed: int = 1, corrupt_expected: Iterable[tuple[int, int]] = ()) -> dict:
    """One stream run of the image directories, back to back, on `build_`
    (default: a build of `config`). The result's load_seconds is stimulus()'s time."""
    t0 = time.perf_counter()
    job = {"config": config.as_dict(), **stimulus(config, data_dirs),
           "seed": seed, "p_idle": p_idle, "p_stall": p_stall,
           "corrupt_expected": [list(c) for c in corrupt_expected]}
    load_seconds = time.perf_counter() - t0
    res = run_on(build_ or build(config), STREAM_TB, job)
    res.update(p_idle=p_idle, p_stall=p_stall, load_seconds=load_seconds)
    return res


def run_cases(cases: Iterable[SparseDSPCase], *, build_: runner.Build | None = None,
              p_idle: float | None = None, p_stall: float | None = None, seed: int | None = None,
              corrupt_expected: Iterable[tuple[int, int]] = (),
              data_root: Path | None = None) -> dict:
    """Run the cases back to back in one simulation (they share one config)."""
    cases = list(cases)
    cfg = cases[0].config
    if any(c.config != cfg for c in cases):
        raise ValueError("cases run together must share one SparseDSPConfig")
    dirs = [prepare_data(c, root=data_root) for c in cases]
    return run_dirs(cfg, dirs, build_=build_,
                    p_idle=cases[0].p_idle if p_idle is None else p_idle,
                    p_stall=cases[0].p_stall if p_stall is None else p_stall,
                    seed=cases[0].seed if seed is None else seed,
                    corrupt_expected=corrupt_expected)


def to_record(case: SparseDSPCase, res: dict, *, label: str | None = None) -> dict:
    """A cosim.report record: config holds the pattern as 'dense' or 'N:M'."""
    from hdl.sparse_dsp import cycle_model
    cfg = case.config
    ideal = is_ideal(res)
    model = cycle_model(cfg, case.modes)
    extra = {"path": "stream", "case": case.name, "seed": res.get("seed"),
             "simulator": res.get("sim"), "method": case.method,
             "workload": {"rows": case.rows, "Ma": case.ma, "K": cfg.K, "tiles": case.tiles},
             "kept_macs": res.get("kept_macs"), "model_cycles_ideal": model,
             "p_idle": res.get("p_idle"), "p_stall": res.get("p_stall"),
             "stall_cycles": res.get("stall_cycles"), "idle_cycles": res.get("idle_cycles"),
             "errors": res.get("errors", [])}
    if ideal:
        extra["expected_cycles"] = model
    kind = label or ("stream-ideal" if ideal else "stream")
    return make_record(
        block="sparse_dsp", test=f"{kind} {case.mode.pattern} {case.mode.mode} {case.split}",
        config=case.record_config(), passed=bool(res.get("passed")),
        mismatches=int(res.get("mismatches", 0)), vectors=int(res.get("vectors", 0)),
        cycles=int(res.get("cycles", 0)), macs=int(res.get("macs", case.macs)),
        peak_macs_per_cycle=cfg.peak_macs_per_cycle(case.mode.pattern),
        sim_seconds=float(res.get("sim_seconds", 0.0)),
        sim_cycles=int(res.get("sim_cycles", res.get("cycles", 0))), **extra)


def default_plan(config: SparseDSPConfig = DEFAULT_CONFIG) -> list[SparseDSPCase]:
    """Every pattern x both group splits (span 1: n_groups short dot products;
    span n_groups: one long one) x both modes, with back-pressure; W4A8 cases
    pruned by Wanda, W8A8 by magnitude. >= MIN_MACS kept MACs each."""
    spans = (1, config.n_groups)
    cases = []
    seed = 100
    for p in PATTERN_NAMES:
        for span in spans:
            for md in MODES:
                seed += 1
                cases.append(SparseDSPCase(
                    config=config, mode=TileMode(pattern=p, mode=md, span=span), seed=seed,
                    method="wanda" if md == "w4a8" else "magnitude"))
    return cases


def _run_item(case: SparseDSPCase, sim: str, ideal: bool) -> dict:
    b = build(case.config, sim=sim)
    res = run_cases([case], build_=b, p_idle=0.0 if ideal else None,
                    p_stall=0.0 if ideal else None)
    return with_build(to_record(case, res), b)


def sim_items(*, sim: str) -> list:
    """make sim: every plan case under back-pressure, plus each pattern once with
    ideal source/sink (cycle model held to the RTL: expected_cycles)."""
    from cosim.sparse_dsp_real import real_items
    return _plan_items(default_plan(), sim) + real_items(sim=sim)


def config_items(config: SparseDSPConfig, *, sim: str) -> list:
    """`quattro sim --block sparse_dsp --config ...`: default_plan(config)."""
    return _plan_items(default_plan(config), sim)


def _plan_items(cases: list[SparseDSPCase], sim: str) -> list:
    from cosim.blocks import SimItem
    items = []
    for case in cases:
        items.append(SimItem(
            block="sparse_dsp", name=case.name, path="stream", config=case.record_config(),
            macs=case.macs, peak_macs_per_cycle=case.config.peak_macs_per_cycle(case.mode.pattern),
            run=lambda case=case: _run_item(case, sim, False)))
    for case in cases:
        if case.mode.span == case.config.n_groups and case.mode.mode == "w8a8":
            items.append(SimItem(
                block="sparse_dsp", name=case.name, path="stream-ideal",
                config=case.record_config(), macs=case.macs,
                peak_macs_per_cycle=case.config.peak_macs_per_cycle(case.mode.pattern),
                run=lambda case=case: _run_item(case, sim, True)))
    return items
