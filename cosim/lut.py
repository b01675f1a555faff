"""LUT mpGEMM co-simulation: the block's cases and plan, and the flow
quantflow images -> Verilog -> Verilator -> records (`block: "lut"`). One
Verilator build per LUTConfig serves every weight format (W1/W2/W4/ternary are
a run-time port), so the plan's 16 runs need 4 builds.

    data_dir = prepare_data(case)      # build/sim/data/<case.name>/
    stim = stimulus(case)              # the testbench's words and golden expectation
    res = run_stream(case)             # random idle cycles / back-pressure
    rec = to_record(case, res)         # a cosim.report record
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from golden.lut_config import LUTConfig, LUTMode, MODES

from golden.validate import expect_type

from cosim import runner
from cosim.cases import MIN_MACS, TiledCase
from cosim.flow import DATA_ROOT, build_design, cached_export, is_ideal, run_on, with_build
from cosim.report import make_record

__all__ = ["LUTCase", "default_plan", "prepare_data", "stimulus", "stream_build", "run_stream",
           "to_record", "sim_items", "config_items", "record_config"]

STREAM_TB = "cosim.tb.lut_stream"


@dataclass(frozen=True, kw_only=True)
class LUTCase(TiledCase):
    """A LUT mpGEMM stream case: configuration, weight format, and the tiled seeded workload."""
    config: LUTConfig
    mode: LUTMode

    def __post_init__(self):
        self._check_case(LUTConfig)
        expect_type("mode", self.mode, LUTMode)

    @property
    def workload(self) -> str:
        """The workload part of the case name: M, N and seed."""
        return f"M{self.M}_N{self.N}_s{self.seed}"

    @property
    def name(self) -> str:
        """The case's name: configuration, format and workload."""
        return f"{self.config.name()}_{self.mode.name}_{self.workload}"


def _plan_case(config: LUTConfig, mode: LUTMode, seed: int) -> LUTCase:
    per_tile = config.rows * config.cols * config.K
    tiles = -(-MIN_MACS // per_tile)
    m = 2 if tiles >= 4 else 1  # two activation tiles meet each weight tile
    return LUTCase(config=config, mode=mode, m_tiles=m, n_tiles=-(-tiles // m), seed=seed)


#: The plan's hardware: two tile shapes (elongated GEMV 1x64, GEMM 2x32) x two groups.
PLAN_CONFIGS = tuple(LUTConfig(rows=r, cols=c, lanes=8, K=256, group=g)
                     for r, c in ((1, 64), (2, 32)) for g in (64, 128))


def default_plan() -> list[LUTCase]:
    """W1, W2, W4, ternary x PLAN_CONFIGS, each >= MIN_MACS compared MACs."""
    return [_plan_case(cfg, MODES[name], seed=41 + 4 * i + j)
            for i, cfg in enumerate(PLAN_CONFIGS)
            for j, name in enumerate(("w1", "w2", "w4", "ternary"))]


def prepare_data(case: LUTCase, *, root: Path | None = None) -> Path:
    """Quantize seeded random weights/activations into root/<case.name> (reused
    when an earlier export verifies)."""
    from quantflow import random_activations, random_linear_weights
    from quantflow.lut import export_lut, load_lut
    cfg = case.config

    def export(outdir: Path) -> None:
        W = random_linear_weights(case.N, cfg.K, seed=case.seed,
                                  outlier_channels=min(2, case.N))
        X = random_activations(case.M, cfg.K, seed=case.seed + 1_000_003,
                               outlier_features=min(4, cfg.K))
        export_lut(outdir, cfg, case.mode, W, X)

    return cached_export(Path(root or DATA_ROOT) / case.name,
                         load=lambda d: load_lut(d, cfg, case.mode), export=export)


def stimulus(case: LUTCase, *, data_root: Path | None = None) -> dict:
    """The testbench's inputs as plain JSON job fields, computed here because the
    caller has torch loaded and the simulator's Python then need not import it
    (~1.7 s of CPU per run): the case's image directory (prepared first), the
    act/code/scale words in stream order (every weight tile meets each activation
    tile in turn), the result words golden.lut computes on the decoded operands,
    and the workload numbers (M, N, m_tiles, tiles, macs)."""
    from golden.lut import lut_acc
    from quantflow.lut import load_lut, pack_lut_result_words
    data_dir = prepare_data(case, root=data_root)
    img = load_lut(data_dir, case.config, case.mode)
    cfg, mode = img.config, img.mode
    per_tile, gs = cfg.beats_per_tile(mode), cfg.groups * cfg.slices
    order = [(tn, tm) for tn in range(img.n_tiles) for tm in range(img.m_tiles)]
    words = {
        "act": [w for tn, tm in order
                for w in img.act_words[tm * cfg.chunks:(tm + 1) * cfg.chunks]],
        "code": [w for tn, tm in order
                 for w in img.code_words[tn * per_tile:(tn + 1) * per_tile]],
        "scale": [w for tn, tm in order for w in img.scale_words[tn * gs:(tn + 1) * gs]],
    }
    expected = pack_lut_result_words(lut_acc(img.a, img.q, img.s2, img.z, cfg, mode), cfg)
    return {"data_dir": str(data_dir),
            "words": {k: [int(w) for w in v] for k, v in words.items()},
            "expected": [int(w) for w in expected],
            "M": img.M, "N": img.N, "m_tiles": img.m_tiles, "tiles": len(order),
            "macs": img.macs}


def stream_build(config: LUTConfig, *, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    """The Verilated LUT block of `config` (cached)."""
    from hdl.generate import lut_factory
    return build_design(lut_factory, config, sim=sim, waves=waves)


def run_stream(case: LUTCase, *, build: runner.Build | None = None,
               p_idle: float | None = None, p_stall: float | None = None,
               seed: int | None = None, corrupt_expected: Iterable[tuple[int, int]] = (),
               data_root: Path | None = None) -> dict:
    """One stream run of `case` (its data prepared and its stimulus computed first);
    `corrupt_expected`: (word index, XOR mask) pairs injected into the expected
    words, to test the checker. The result's load_seconds is stimulus()'s time."""
    t0 = time.perf_counter()
    job = {"config": case.config.as_dict(), "mode": case.mode.as_dict(),
           **stimulus(case, data_root=data_root),
           "seed": case.seed if seed is None else seed,
           "p_idle": case.p_idle if p_idle is None else p_idle,
           "p_stall": case.p_stall if p_stall is None else p_stall,
           "corrupt_expected": [list(c) for c in corrupt_expected]}
    load_seconds = time.perf_counter() - t0
    res = run_on(build or stream_build(case.config), STREAM_TB, job)
    res["p_idle"], res["p_stall"] = job["p_idle"], job["p_stall"]
    res["load_seconds"] = load_seconds
    return res


def record_config(case: LUTCase) -> dict:
    """The record's `config`: the hardware fields plus the run-time format."""
    return {**case.config.as_dict(), **case.mode.as_dict()}


def to_record(case: LUTCase, res: dict) -> dict:
    """The make-sim record of one LUT case: pass/fail, cycles against the cycle model."""
    from hdl.lut import cycle_model, precompute_share
    cfg, mode = case.config, case.mode
    ideal = is_ideal(res)
    label = "stream-ideal" if ideal else "stream"
    model = cycle_model(cfg, mode, case.tiles)
    extra = {
        "path": "stream", "case": case.name, "seed": res.get("seed"),
        "simulator": res.get("sim"), "format": mode.name,
        "workload": {"M": case.M, "N": case.N, "K": cfg.K, "tiles": case.tiles},
        "model_cycles_ideal": model,
        "precompute_share": round(precompute_share(cfg, mode, case.tiles), 6),
        "p_idle": res.get("p_idle"), "p_stall": res.get("p_stall"),
        "stall_cycles": res.get("stall_cycles"), "idle_cycles": res.get("idle_cycles"),
        "errors": res.get("errors", []),
    }
    if ideal:
        extra["expected_cycles"] = model
    return make_record(
        block="lut", test=f"{label} {case.workload}", config=record_config(case),
        passed=bool(res.get("passed")), mismatches=int(res.get("mismatches", 0)),
        vectors=int(res.get("vectors", 0)), cycles=int(res.get("cycles", 0)),
        macs=int(res.get("macs", case.macs)),
        peak_macs_per_cycle=cfg.peak_macs_per_cycle(mode),
        sim_seconds=float(res.get("sim_seconds", 0.0)),
        sim_cycles=int(res.get("sim_cycles", res.get("cycles", 0))), **extra)


def _run_item(case: LUTCase, ideal: bool, sim: str) -> dict:
    b = stream_build(case.config, sim=sim)
    res = (run_stream(case, build=b, p_idle=0.0, p_stall=0.0) if ideal
           else run_stream(case, build=b))
    return with_build(to_record(case, res), b)


def sim_items(*, sim: str) -> list:
    """`make sim`'s LUT runs: every plan case with back-pressure, then ideal
    (the cycle model held to the RTL's count)."""
    return _plan_items(default_plan(), sim)


def config_items(config: LUTConfig, *, sim: str) -> list:
    """`quattro sim --block lut --config ...`: W1, W2, W4 and ternary on `config`,
    with back-pressure and ideal."""
    cases = [_plan_case(config, MODES[name], seed=41 + j)
             for j, name in enumerate(("w1", "w2", "w4", "ternary"))]
    return _plan_items(cases, sim)


def _plan_items(cases: list[LUTCase], sim: str) -> list:
    from cosim.blocks import SimItem
    items = []
    for ideal in (False, True):
        for case in cases:
            items.append(SimItem(
                block="lut", name=case.name, path="stream-ideal" if ideal else "stream",
                config=record_config(case), macs=case.macs,
                peak_macs_per_cycle=case.config.peak_macs_per_cycle(case.mode),
                run=lambda case=case, ideal=ideal: _run_item(case, ideal, sim)))
    return items
