"""MixPE co-simulation flow: quantflow data -> Verilog -> Verilator -> records.

Used by `python -m cosim sim`, `python -m cosim bench` and tests/test_cosim_mixpe.py.

    data_dir = prepare_data(case)                 # build/sim/data/<case.name>/
    res = run_stream(case)                        # MixPE, random idle/back-pressure
    res = run_fast(case)                          # MixPESystem, await done only
    rec = to_record(case, res)                    # a cosim.report record
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from golden.mixpe_config import MixPEConfig

from cosim import runner
from cosim.plan import MixPECase
from cosim.report import make_record

__all__ = ["DATA_ROOT", "prepare_data", "prepare_real", "stream_build", "system_build",
           "run_stream", "run_fast", "to_record", "stream_job", "sim_items"]

DATA_ROOT = runner.REPO_ROOT / "build" / "sim" / "data"
STREAM_TB = "cosim.tb.mixpe_stream"
SYSTEM_TB = "cosim.tb.mixpe_system"


def prepare_data(case: MixPECase, *, root: Path | None = None) -> Path:
    """Quantize the case's seeded random weights/activations (or, for a real-layer
    case, its model layer: prepare_real) with quantflow into `root/<case.name>`
    (reused when an earlier export verifies)."""
    if case.real is not None:
        return prepare_real(case, root=root)
    from quantflow import (QuantflowError, export_mixpe, load_mixpe,
                           random_activations, random_linear_weights)
    outdir = Path(root or DATA_ROOT) / case.name
    if (outdir / "manifest.json").is_file():
        try:
            load_mixpe(outdir, case.config)
            return outdir
        except QuantflowError:
            pass  # stale or damaged: export again (export replaces it atomically)
    cfg = case.config
    W = random_linear_weights(case.N, cfg.K, seed=case.seed,
                              outlier_channels=min(case.outlier_channels, case.N))
    X = random_activations(case.M, cfg.K, seed=case.seed + 1_000_003,
                           outlier_features=min(4, cfg.K))
    outdir.parent.mkdir(parents=True, exist_ok=True)
    export_mixpe(outdir, cfg, W, X)
    return outdir


_REAL_LOCK = threading.Lock()  # make sim runs a case's stream and fast items in threads


def _real_source(case: MixPECase) -> dict:
    """The source.json fields that identify a real-layer case's data."""
    r = case.real
    return {"model": r.model, "layer": r.layer, "scheme": r.scheme, "text": r.text,
            "tokens": case.M, "channels": case.N}


def prepare_real(case: MixPECase, *, root: Path | None = None) -> Path:
    """Export the real model layer of `case` (quantflow.export_model.export_real_layer:
    weights quantized by the scheme, activations captured from the model on the
    evaluation text) into `root/<case.name>`; reused when the images verify and
    their source.json names the same layer, scheme, text and size. Prepares the
    model (build/models, as `make models`) when it is missing."""
    from quantflow import QuantflowError, load_mixpe
    from quantflow.export_model import export_real_layer
    from quantflow.models.loaders import require

    outdir = Path(root or DATA_ROOT) / case.name
    outdir.parent.mkdir(parents=True, exist_ok=True)
    want = _real_source(case)
    # one export per directory, also across processes (pytest-xdist, make sim)
    with _REAL_LOCK, require("filelock").FileLock(str(outdir.parent / f".{case.name}.lock")):
        try:
            load_mixpe(outdir, case.config)
            src = json.loads((outdir / "source.json").read_text(encoding="utf-8"))
            if all(src.get(k) == v for k, v in want.items()):
                return outdir
        except (QuantflowError, OSError, ValueError):
            pass  # missing, stale or damaged: export again (atomically)
        export_real_layer(outdir, case.config, model=case.real.model, layer=case.real.layer,
                          tokens=case.M, channels=case.N, scheme=case.real.scheme,
                          text=case.real.text)
    return outdir


def _verilog(kind: str, config: MixPEConfig, **kw) -> tuple[str, str]:
    from hdl.generate import mixpe_factory, verilog
    name, factory = mixpe_factory(config, kind=kind, **kw)
    return name, verilog(factory(), name)


def stream_build(config: MixPEConfig, *, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    name, text = _verilog("array", config)
    return runner.build(text, name, sim=sim, waves=waves)


def system_build(config: MixPEConfig, *, max_m_tiles: int, max_n_tiles: int,
                 sim: str | None = None, waves: bool | None = None,
                 clock: str = "gpi") -> runner.Build:
    """clock="gpi": cocotb drives clk (run_fast(clock_impl="gpi")); "hdl": the
    model is wrapped in a self-clocking module (cosim.wrap; clock_impl="hdl")."""
    name, text = _verilog("system", config, max_m_tiles=max_m_tiles,
                          max_n_tiles=max_n_tiles)
    if clock == "hdl":
        from cosim.wrap import TIMING_ARGS, clocked_wrapper
        wname, wtext = clocked_wrapper(text, name)
        return runner.build(text + "\n" + wtext, wname, sim=sim, waves=waves,
                            extra_args=TIMING_ARGS)
    if clock != "gpi":
        raise ValueError(f"clock must be 'gpi' or 'hdl', got {clock!r}")
    return runner.build(text, name, sim=sim, waves=waves)


def stream_job(case: MixPECase, data_dir: Path, *, p_idle: float | None = None,
               p_stall: float | None = None, seed: int | None = None,
               corrupt_expected=()) -> dict:
    return {
        "config": case.config.as_dict(), "data_dir": str(data_dir),
        "seed": case.seed if seed is None else seed,
        "p_idle": case.p_idle if p_idle is None else p_idle,
        "p_stall": case.p_stall if p_stall is None else p_stall,
        "corrupt_expected": [list(c) for c in corrupt_expected],
    }


def run_stream(case: MixPECase, *, build: runner.Build | None = None,
               p_idle: float | None = None, p_stall: float | None = None,
               seed: int | None = None, corrupt_expected=(),
               data_root: Path | None = None) -> dict:
    """Stream testbench on `case`. Overrides replace the case's probabilities."""
    data_dir = prepare_data(case, root=data_root)
    b = build or stream_build(case.config)
    job = stream_job(case, data_dir, p_idle=p_idle, p_stall=p_stall, seed=seed,
                     corrupt_expected=corrupt_expected)
    res = runner.run(b, test_module=STREAM_TB, job=job)
    res["p_idle"], res["p_stall"] = job["p_idle"], job["p_stall"]
    res["data_dir"] = str(data_dir)
    res["build_cached"] = b.cached
    res["build_seconds"] = b.build_seconds
    return res


def run_fast(case: MixPECase, *, build: runner.Build | None = None, repeat: int = 1,
             clock_impl: str = "gpi", data_root: Path | None = None) -> dict:
    """MixPESystem fast path on `case` (memories sized to the case's tiles)."""
    data_dir = prepare_data(case, root=data_root)
    b = build or system_build(case.config, max_m_tiles=case.m_tiles,
                              max_n_tiles=case.n_tiles)
    job = {"config": case.config.as_dict(), "data_dir": str(data_dir),
           "seed": case.seed, "repeat": repeat, "clock_impl": clock_impl}
    res = runner.run(b, test_module=SYSTEM_TB, job=job)
    res["data_dir"] = str(data_dir)
    res["build_cached"] = b.cached
    res["build_seconds"] = b.build_seconds
    return res


def to_record(case: MixPECase, res: dict) -> dict:
    """A cosim.report record of one run (stream or fast path)."""
    from hdl.mixpe import cycle_model, system_cycle_model
    cfg = case.config
    path = res.get("test", "stream")
    ideal = res.get("p_idle", 0.0) == 0.0 and res.get("p_stall", 0.0) == 0.0
    label = "stream-ideal" if (path == "stream" and ideal) else path
    model = cycle_model(cfg, case.tiles)
    extra = {
        "path": path, "case": case.name, "seed": res.get("seed"), "simulator": res.get("sim"),
        "workload": {"M": case.M, "N": case.N, "K": cfg.K, "tiles": case.tiles},
        "model_cycles_ideal": model,
        "errors": res.get("errors", []),
    }
    if path == "stream":
        extra.update(p_idle=res.get("p_idle"), p_stall=res.get("p_stall"),
                     stall_cycles=res.get("stall_cycles"),
                     idle_cycles=res.get("idle_cycles"))
        if ideal:
            extra["expected_cycles"] = model
    else:
        extra.update(repeat=res.get("repeat"), load_seconds=res.get("load_seconds"),
                     expected_cycles=system_cycle_model(cfg, case.m_tiles, case.n_tiles))
    if res.get("waves_file"):
        extra["waves_file"] = res["waves_file"]
    if case.real is not None:
        extra.update(_real_fields(case, res.get("data_dir")))
    return make_record(
        block="mixpe", test=f"{label} {case.workload}", config=cfg.as_dict(),
        passed=bool(res.get("passed")), mismatches=int(res.get("mismatches", 0)),
        vectors=int(res.get("vectors", 0)), cycles=int(res.get("cycles", 0)),
        macs=int(res.get("macs", case.macs)), peak_macs_per_cycle=cfg.peak_macs_per_cycle,
        sim_seconds=float(res.get("sim_seconds", 0.0)),
        sim_cycles=int(res.get("sim_cycles", res.get("cycles", 0))), **extra)


def _real_fields(case: MixPECase, data_dir: str | None) -> dict:
    """What a real-layer record names: the model (its full name), the layer and
    its shape, the scheme, the text and its token ids (from the export's source.json)."""
    from quantflow.models.loaders import KNOWN_MODELS
    r = case.real
    known = KNOWN_MODELS.get(r.model)
    out = {"model": known.description.split(" (")[0] if known else r.model,
           "model_key": r.model, "layer": r.layer, "scheme": r.scheme, "text": r.text,
           "tokens": case.M, "channels": case.N}
    try:
        d = Path(data_dir) if data_dir else DATA_ROOT / case.name
        src = json.loads((d / "source.json").read_text(encoding="utf-8"))
        out.update(layer_shape=src.get("layer_shape"), token_ids=src.get("token_ids"))
    except (OSError, ValueError):
        pass
    return out


def replace_case(case: MixPECase, **changes) -> MixPECase:
    return dataclasses.replace(case, **changes)


def _run_item(case: MixPECase, path: str, sim: str) -> dict:
    if path == "stream":
        b = stream_build(case.config, sim=sim)
        res = run_stream(case, build=b)
    elif path == "stream-ideal":  # holds the cycle model to the RTL
        b = stream_build(case.config, sim=sim)
        res = run_stream(case, build=b, p_idle=0.0, p_stall=0.0)
    else:
        b = system_build(case.config, max_m_tiles=case.m_tiles,
                         max_n_tiles=case.n_tiles, sim=sim)
        res = run_fast(case, build=b)
    rec = to_record(case, res)
    rec["build_seconds"] = round(b.build_seconds, 1)
    rec["build_cached"] = b.cached
    return rec


def sim_items(*, sim: str) -> list:
    """`make sim`'s MixPE runs (cosim.blocks registry): every plan case with
    back-pressure, ideal (cycle model held to the RTL), and the fast path
    where the plan says so; then the real SmolLM2 layers of real_plan() with
    back-pressure and on the fast path where planned (the model is prepared
    into build/models on first use)."""
    from cosim.blocks import SimItem
    from cosim.plan import default_plan, real_plan

    cases = default_plan()
    items = []
    for paths in (["stream"], ["stream-ideal"], ["fast"]):
        for case in cases:
            for path in paths:
                if path == "fast" and not case.fast:
                    continue
                items.append(SimItem(
                    block="mixpe", name=case.name, path=path, config=case.config.as_dict(),
                    macs=case.macs, peak_macs_per_cycle=case.config.peak_macs_per_cycle,
                    run=lambda case=case, path=path: _run_item(case, path, sim)))
    for case in real_plan():
        for path in ("stream", "fast") if case.fast else ("stream",):
            items.append(SimItem(
                block="mixpe", name=case.name, path=path, config=case.config.as_dict(),
                macs=case.macs, peak_macs_per_cycle=case.config.peak_macs_per_cycle,
                run=lambda case=case, path=path: _run_item(case, path, sim)))
    return items
