"""MixPE co-simulation: its cases and plan, and the flow quantflow data ->
Verilog -> Verilator -> records.

Used by `python -m cosim sim`, `python -m cosim bench` and tests/test_cosim_mixpe.py.

    data_dir = prepare_data(case)                 # build/sim/data/<case.name>/
    res = run_stream(case)                        # MixPE, random idle/back-pressure
    res = run_fast(case)                          # MixPESystem, await done only
    rec = to_record(case, res)                    # a cosim.report record

A case is one MixPE configuration plus a workload: M = m_tiles * rows activation
rows, N = n_tiles * cols output channels, K = config.K, quantized by quantflow
from seeded random weights (with a few outlier channels) and activations, or a
real model layer (RealLayer). Every plan case compares >= cosim.cases.MIN_MACS
multiply-accumulates bit for bit; the stream testbench drives it with random
idle cycles and back-pressure, the fast path (MixPESystem, memories +
sequencer) where `fast` is set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from golden.mixpe_config import MixPEConfig
from golden.validate import expect_type

from cosim import runner
from cosim.cases import RealLayer, TiledCase, tiles_for
from cosim.flow import DATA_ROOT, cached_export, design_verilog, is_ideal, run_on, with_build
from cosim.report import make_record

__all__ = ["MixPECase", "default_plan", "real_plan", "REAL_Q_PROJ", "REAL_DOWN_PROJ",
           "prepare_data", "prepare_real", "stimulus", "stream_build", "system_build",
           "run_stream", "run_fast", "to_record", "stream_job", "sim_items", "config_items"]

STREAM_TB = "cosim.tb.mixpe_stream"
SYSTEM_TB = "cosim.tb.mixpe_system"


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True, kw_only=True)
class MixPECase(TiledCase):
    """A MixPE stream case: configuration and the tiled workload, seeded random or a real layer."""
    config: MixPEConfig
    #: weight channels made outliers (x ~8) so that quantization sees real spread
    outlier_channels: int = 2
    #: also run the MixPESystem fast path on this case
    fast: bool = False
    #: a real model layer instead of seeded random data (seed then only drives
    #: the testbench's idle/back-pressure pattern)
    real: RealLayer | None = None

    def __post_init__(self):
        self._check_case(MixPEConfig)
        if self.real is not None:
            expect_type("real", self.real, RealLayer)

    @property
    def workload(self) -> str:
        """The workload part of the case name: real layer tag (if any), M, N and seed."""
        if self.real is not None:
            return f"{self.real.tag}_M{self.M}_N{self.N}_s{self.seed}"
        return f"M{self.M}_N{self.N}_s{self.seed}"

    @property
    def name(self) -> str:
        """Directory name of the case's quantflow data (build/sim/data/<name>)."""
        return f"{self.config.name()}_{self.workload}"


def _case(seed: int, fast: bool = False, **cfg) -> MixPECase:
    config = MixPEConfig(**cfg)
    m, n = tiles_for(config)
    return MixPECase(config=config, m_tiles=m, n_tiles=n, seed=seed, fast=fast)


def default_plan() -> list[MixPECase]:
    """Bits 2/3/4/8; groups 32/64/128; array shapes 1x8, 1x16, 2x4, 4x8;
    GEMV (rows = 1) and GEMM (rows > 1); each >= cosim.cases.MIN_MACS
    compared MACs (tiles_for)."""
    return [
        _case(11, bits=4, group=64, rows=1, cols=8, K=1024, fast=True),    # GEMV, W4 g64
        _case(12, bits=4, group=128, rows=4, cols=8, K=1024, fast=True),   # GEMM, W4 g128
        _case(13, bits=2, group=128, rows=4, cols=8, K=512),               # GEMM, W2
        _case(14, bits=8, group=32, rows=1, cols=16, K=256),               # GEMV, W8 g32
        _case(15, bits=3, group=64, rows=2, cols=4, K=384),                # GEMM, W3
        _case(16, bits=8, group=64, rows=2, cols=8, K=512, fast=True),     # GEMM, W8
        _case(17, bits=2, group=32, rows=1, cols=8, K=768),                # GEMV, W2 g32
    ]


#: MixPE configurations of the real-layer runs: K = the layer's in_features,
#: group 64 (divides 576 and 1536), cols = 8 divides every SmolLM2 out_features.
REAL_Q_PROJ = MixPEConfig(bits=4, group=64, rows=4, cols=8, K=576)
REAL_DOWN_PROJ = MixPEConfig(bits=4, group=64, rows=4, cols=8, K=1536)


def real_plan() -> list[MixPECase]:
    """`make sim`'s real SmolLM2 layers, whole (every output channel), on the
    first 8 tokens of the evaluation text: layer 0 q_proj (576 x 576, stream
    and fast path, 2.65 M MACs) and layer 0 down_proj (1536 -> 576, stream)."""
    return [
        MixPECase(config=REAL_Q_PROJ, m_tiles=2, n_tiles=576 // REAL_Q_PROJ.cols, seed=21,
                  fast=True, real=RealLayer(layer="layers.0.self_attn.q_proj")),
        MixPECase(config=REAL_DOWN_PROJ, m_tiles=2, n_tiles=576 // REAL_DOWN_PROJ.cols,
                  seed=22, real=RealLayer(layer="layers.0.mlp.down_proj")),
    ]


# --------------------------------------------------------------------------- flow
def prepare_data(case: MixPECase, *, root: Path | None = None) -> Path:
    """Quantize the case's seeded random weights/activations (or, for a real-layer
    case, its model layer: prepare_real) with quantflow into `root/<case.name>`
    (reused when an earlier export verifies)."""
    if case.real is not None:
        return prepare_real(case, root=root)
    from quantflow import export_mixpe, load_mixpe, random_activations, random_linear_weights
    cfg = case.config

    def export(outdir: Path) -> None:
        W = random_linear_weights(case.N, cfg.K, seed=case.seed,
                                  outlier_channels=min(case.outlier_channels, case.N))
        X = random_activations(case.M, cfg.K, seed=case.seed + 1_000_003,
                               outlier_features=min(4, cfg.K))
        export_mixpe(outdir, cfg, W, X)

    return cached_export(Path(root or DATA_ROOT) / case.name,
                         load=lambda d: load_mixpe(d, cfg), export=export)


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
    from quattro_fs import file_lock

    outdir = Path(root or DATA_ROOT) / case.name
    want = _real_source(case)

    def load(d: Path) -> None:
        load_mixpe(d, case.config)
        try:
            src = json.loads((d / "source.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            src = {}
        if not all(src.get(k) == v for k, v in want.items()):
            raise QuantflowError(f"{d} holds another layer's data")

    def export(d: Path) -> None:
        export_real_layer(d, case.config, model=case.real.model, layer=case.real.layer,
                          tokens=case.M, channels=case.N, scheme=case.real.scheme,
                          text=case.real.text)

    # one export per directory, also across threads and processes (make sim, xdist)
    with file_lock(outdir.parent / f".{case.name}.lock"):
        return cached_export(outdir, load=load, export=export)


def _verilog(kind: str, config: MixPEConfig, **kw) -> tuple[str, str]:
    from hdl.generate import mixpe_factory
    return design_verilog(mixpe_factory, config, kind=kind, **kw)


def stream_build(config: MixPEConfig, *, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    """The Verilated MixPE array of `config` (cached)."""
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


def stimulus(config: MixPEConfig, data_dir: Path) -> dict:
    """What the testbenches (cosim.tb.mixpe_stream, cosim.tb.mixpe_system) need of
    the quantflow images in `data_dir`, as plain JSON job fields: the act/code/scale
    memory words, M, N, m_tiles, n_tiles, macs, and `expected_words`, the result
    words golden.mixpe.mixpe_acc computes from the *decoded* a, q, s2, z (checksums
    verified by load_mixpe). Computed here, in the caller that has torch loaded
    already, so that the simulator's Python never imports torch (~1.7 s of CPU per run)."""
    from golden.mixpe import mixpe_acc
    from quantflow.mixpe import load_mixpe, pack_result_words

    images = load_mixpe(data_dir, config)
    acc = mixpe_acc(images.a, images.q, images.s2, images.z, config)
    return {
        "M": images.M, "N": images.N, "m_tiles": images.m_tiles, "n_tiles": images.n_tiles,
        "macs": images.macs, "act_words": list(images.act_words),
        "code_words": list(images.code_words), "scale_words": list(images.scale_words),
        "expected_words": pack_result_words(acc, config),
    }


def stream_job(case: MixPECase, data_dir: Path, *, p_idle: float | None = None,
               p_stall: float | None = None, seed: int | None = None,
               corrupt_expected: Iterable[tuple[int, int]] = ()) -> dict:
    """The testbench job of one stream run on prepared data in `data_dir`
    (its words and expected words: stimulus)."""
    return {
        "config": case.config.as_dict(), "data_dir": str(data_dir),
        "seed": case.seed if seed is None else seed,
        "p_idle": case.p_idle if p_idle is None else p_idle,
        "p_stall": case.p_stall if p_stall is None else p_stall,
        "corrupt_expected": [list(c) for c in corrupt_expected],
        **stimulus(case.config, data_dir),
    }


def run_stream(case: MixPECase, *, build: runner.Build | None = None,
               p_idle: float | None = None, p_stall: float | None = None,
               seed: int | None = None, corrupt_expected: Iterable[tuple[int, int]] = (),
               data_root: Path | None = None) -> dict:
    """Stream testbench on `case`. Overrides replace the case's probabilities."""
    data_dir = prepare_data(case, root=data_root)
    job = stream_job(case, data_dir, p_idle=p_idle, p_stall=p_stall, seed=seed,
                     corrupt_expected=corrupt_expected)
    res = run_on(build or stream_build(case.config), STREAM_TB, job)
    res["p_idle"], res["p_stall"] = job["p_idle"], job["p_stall"]
    res["data_dir"] = str(data_dir)
    return res


def run_fast(case: MixPECase, *, build: runner.Build | None = None, repeat: int = 1,
             clock_impl: str = "gpi", data_root: Path | None = None) -> dict:
    """MixPESystem fast path on `case` (memories sized to the case's tiles)."""
    data_dir = prepare_data(case, root=data_root)
    b = build or system_build(case.config, max_m_tiles=case.m_tiles,
                              max_n_tiles=case.n_tiles)
    job = {"config": case.config.as_dict(), "data_dir": str(data_dir),
           "seed": case.seed, "repeat": repeat, "clock_impl": clock_impl,
           **stimulus(case.config, data_dir)}
    res = run_on(b, SYSTEM_TB, job)
    res["data_dir"] = str(data_dir)
    return res


def to_record(case: MixPECase, res: dict) -> dict:
    """A cosim.report record of one run (stream or fast path)."""
    from hdl.mixpe import cycle_model, system_cycle_model
    cfg = case.config
    path = res.get("test", "stream")
    ideal = is_ideal(res)
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
    return with_build(to_record(case, res), b)


def _plan_items(cases: list[MixPECase], sim: str) -> list:
    """Every case with back-pressure, then ideal, then on the fast path where set."""
    from cosim.blocks import SimItem
    items = []
    for path in ("stream", "stream-ideal", "fast"):
        for case in cases:
            if path == "fast" and not case.fast:
                continue
            items.append(SimItem(
                block="mixpe", name=case.name, path=path, config=case.config.as_dict(),
                macs=case.macs, peak_macs_per_cycle=case.config.peak_macs_per_cycle,
                run=lambda case=case, path=path: _run_item(case, path, sim)))
    return items


def config_items(config: MixPEConfig, *, sim: str) -> list:
    """`quattro sim --block mixpe --config ...`: the plan's runs (back-pressure,
    ideal, fast path) of one seeded random workload on `config`."""
    m, n = tiles_for(config)
    return _plan_items([MixPECase(config=config, m_tiles=m, n_tiles=n, seed=11, fast=True)],
                       sim)


def sim_items(*, sim: str) -> list:
    """`make sim`'s MixPE runs (cosim.blocks registry): every plan case with
    back-pressure, ideal (cycle model held to the RTL), and the fast path
    where the plan says so; then the real SmolLM2 layers of real_plan() with
    back-pressure and on the fast path where planned (the model is prepared
    into build/models on first use)."""
    from cosim.blocks import SimItem

    items = _plan_items(default_plan(), sim)
    for case in real_plan():
        for path in ("stream", "fast") if case.fast else ("stream",):
            items.append(SimItem(
                block="mixpe", name=case.name, path=path, config=case.config.as_dict(),
                macs=case.macs, peak_macs_per_cycle=case.config.peak_macs_per_cycle,
                run=lambda case=case, path=path: _run_item(case, path, sim)))
    return items
