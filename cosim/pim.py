"""PIM channel co-simulation flow (NeuPIMs bank, DESIGN §3.6): workloads ->
Verilog (hdl.pim.PIMSystem) -> Verilator -> records of block "pim".

    b = system_build(config)                       # one build per mode, shared
    res = run_workloads(config, [spec, ...], build=b)
    rec = to_record(config, spec, run, model)      # a cosim.report record

A workload spec is a dict {"name", "kind": "mixed" | "subbatch", "seed", ...}
(the keyword arguments of quantflow.pim.mixed_workload / subbatch_workload),
so a run is reproducible from its record; run_workloads builds the workload
from it and hands the testbench its words and golden's expected outputs
(workload_words).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from golden.pim_config import RULES, PIMConfig

from hdl.pim import DEFAULT_SYSTEM_SIZES, pim_factory
from hdl.streams import SYSTEM_OVERHEAD

from cosim import runner
from cosim.flow import build_design, run_on, with_build
from cosim.report import make_record

if TYPE_CHECKING:
    from golden.pim import ScheduleResult
    from quantflow.pim import Workload

__all__ = ["SYSTEM_SIZES", "TB_MODULE", "workload_from_spec", "workload_words", "system_build",
           "run_workloads", "model_for", "system_cycles", "to_record", "default_plan", "PIMCase",
           "sim_items", "config_items", "run_case"]

TB_MODULE = "cosim.tb.pim_system"
#: One build per mode serves every workload.
SYSTEM_SIZES = DEFAULT_SYSTEM_SIZES


def workload_from_spec(config: PIMConfig, spec: dict) -> Workload:
    """The Workload a plan spec describes: "mixed" or "subbatch" with its parameters."""
    from quantflow.pim import mixed_workload, subbatch_workload
    params = {k: v for k, v in spec.items() if k not in ("name", "kind", "corrupt_expected")}
    kind = spec.get("kind")
    if kind == "mixed":
        return mixed_workload(config, **params)
    if kind == "subbatch":
        return subbatch_workload(config, **params)
    raise ValueError(f"unknown workload kind {kind!r}; use 'mixed' or 'subbatch'")


def workload_words(config: PIMConfig, w: Workload) -> dict:
    """What the testbench loads and expects for workload `w`, as plain ints, computed
    here so that the simulator's Python never imports torch: the bank contents and
    the memory-request, GEMV-job and vector words (quantflow.pim; one word per
    request and per job), golden.pim's expected read data and GEMV results, and the
    workload's result count; read_addrs [bank, row, col] of each read, in order,
    name a wrong read."""
    from golden.pim import expected_outputs
    from quantflow.pim import bank_words, job_words, memreq_words, vector_words
    reads, results = expected_outputs(config, w.storage, w.mem, w.jobs)
    words = {"bank": bank_words(w.storage, config), "mem": memreq_words(w.mem, config),
             "job": job_words(w.jobs, config), "vec": vector_words(w.jobs, config),
             "reads": reads, "results": results}
    return {**{k: [int(x) for x in v] for k, v in words.items()},
            "read_addrs": [[int(q.bank), int(q.row), int(q.col)] for q in w.mem if not q.write],
            "n_results": int(w.n_results)}


def _check_fits(config: PIMConfig, w, sizes: dict) -> None:
    need = {"max_mem": len(w.mem), "max_jobs": len(w.jobs), "max_reads": w.n_reads,
            "max_results": w.n_results}
    over = {k: v for k, v in need.items() if v > sizes[k]}
    if over:
        raise ValueError(f"workload needs {over}, more than the PIMSystem build holds "
                         f"({sizes}); make the workload smaller or the build larger")


def system_build(config: PIMConfig, *, sizes: dict | None = None, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    """The Verilated PIMSystem of `config` with memory `sizes` (cached)."""
    # sizes as (key, value) pairs: the generated text is memoised on hashable arguments
    pairs = None if sizes is None else tuple(sorted(sizes.items()))
    return build_design(_system_factory, config, sizes=pairs, sim=sim, waves=waves)


def _system_factory(config: PIMConfig, *, sizes: tuple | None):
    return pim_factory(config, kind="system", sizes=None if sizes is None else dict(sizes))


def run_workloads(config: PIMConfig, specs: list[dict], *, build: runner.Build | None = None,
                  sizes: dict | None = None, sim: str | None = None) -> dict:
    """One simulator run over several workloads (the bank storage is reloaded
    before each) on a PIMSystem of `sizes` (default SYSTEM_SIZES). Returns the
    testbench's result (result["runs"][i] per spec)."""
    sizes = dict(sizes or SYSTEM_SIZES)
    images = []
    for s in specs:
        w = workload_from_spec(config, s)
        _check_fits(config, w, sizes)
        images.append(workload_words(config, w))
    b = build or system_build(config, sizes=sizes, sim=sim)
    job = {"config": config.as_dict(), "workloads": list(specs), "images": images,
           "system": sizes}
    return run_on(b, TB_MODULE, job)


def model_for(config: PIMConfig, spec: dict) -> ScheduleResult:
    """golden.pim.schedule on the spec's workload (the command-level cycle model)."""
    from golden.pim import schedule
    w = workload_from_spec(config, spec)
    return schedule(config, w.mem, w.jobs)


def system_cycles(model: ScheduleResult) -> int:
    """PIMSystem's `cycles` for a cycle model (golden.pim.schedule's result):
    the schedule plus the preloaded memories' start and first read."""
    return model.cycles + SYSTEM_OVERHEAD


def model_checks(config: PIMConfig, run: dict, model: ScheduleResult) -> list[str]:
    """RTL counters vs the cycle model (cycles are checked by make sim through
    expected_cycles; these are the command, COMP and bus counts)."""
    errs = []
    bus = model.count("RD") + model.count("WR") + model.count("GWR") + model.count("RDRES")
    for what, rtl, exp in (("commands", run.get("cmd_count"), model.commands),
                           ("COMPs", run.get("comp_count"), model.comp_cycles),
                           ("bus transfers", run.get("bus_count"), bus)):
        if rtl != exp:
            errs.append(f"{run.get('name')}: RTL issued {rtl} {what}, the cycle model {exp}")
    return errs


def to_record(config: PIMConfig, spec: dict, run: dict, model: ScheduleResult, *,
              extra: dict | None = None) -> dict:
    """The make-sim record of one PIM run: pass/fail, cycles, utilisation, counter checks against
    the model."""
    cyc = max(1, run["cycles"])
    errors = list(run.get("errors", [])) + model_checks(config, run, model)
    viol = [r for i, r in enumerate(RULES) if run.get("err_bits", 0) >> i & 1]
    rec = make_record(
        block="pim", test=f"{spec['kind']} {spec['name']}", config=config.as_dict(),
        passed=bool(run.get("passed")) and not errors,
        mismatches=run["read_mismatches"] + run["result_mismatches"],
        vectors=run["reads"] + run["results"], cycles=run["cycles"], macs=run["macs"],
        peak_macs_per_cycle=config.peak_macs_per_cycle,
        sim_seconds=run["sim_seconds"], path="system", case=spec["name"],
        mode=config.mode, workload=dict(spec), expected_cycles=system_cycles(model),
        model_cycles_ideal=system_cycles(model),
        commands=run["cmd_count"], mem_requests=run["mem_requests"], gemv_jobs=run["jobs"],
        reads=run["reads"], gemv_results=run["results"],
        timing_violations=len(viol), violated_rules=viol,
        bank_utilisation={
            "pim_lanes": round(run["comp_count"] / (cyc * config.banks), 4),
            "data_bus": round(run["bus_count"] * config.tCCD_S / cyc, 4),
        },
        errors=errors, load_seconds=run.get("load_seconds"))
    if extra:
        rec.update(extra)
    return rec


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True, kw_only=True)
class PIMCase:
    """A PIM case: the workload spec (name, kind and its parameters)."""
    spec: dict

    @property
    def name(self) -> str:
        """The spec's name."""
        return self.spec["name"]


def default_plan() -> list[PIMCase]:
    """make sim's workloads, each run in both modes (>= 10,000 commands each)."""
    return [
        PIMCase(spec={"name": "mixed_m5000_j96_s11", "kind": "mixed", "seed": 11,
                      "n_mem": 5000, "n_jobs": 96}),
        PIMCase(spec={"name": "subbatch_r16_s12", "kind": "subbatch", "seed": 12,
                      "rounds": 16}),
    ]


def default_config(mode: str) -> PIMConfig:
    """The default PIMConfig in `mode` ("dual" or "blocked")."""
    return PIMConfig(mode=mode)


_cache: dict = {}
_cache_lock = threading.Lock()


def run_case(config: PIMConfig, spec: dict, *, sim: str | None = None) -> tuple[dict, dict]:
    """(testbench run dict, build info) of one workload, memoised per process so
    the speedup of the dual sub-batch record reuses the blocked run."""
    import json
    key = (json.dumps(config.as_dict(), sort_keys=True), json.dumps(spec, sort_keys=True), sim)
    with _cache_lock:
        lock = _cache.setdefault(("lock",) + key, threading.Lock())
    with lock:
        if key not in _cache:
            b = system_build(config, sim=sim)
            res = run_workloads(config, [spec], build=b)
            run = res["runs"][0] if res.get("runs") else {
                "name": spec["name"], "passed": False, "cycles": 0, "reads": 0, "results": 0,
                "read_mismatches": 0, "result_mismatches": 0, "macs": 0, "sim_seconds": 0.0,
                "cmd_count": 0, "comp_count": 0, "bus_count": 0, "mem_requests": 0, "jobs": 0}
            run.setdefault("errors", []).extend(e for e in res.get("errors", [])
                                                if e not in run.get("errors", []))
            if not res.get("passed"):
                run["passed"] = False
            _cache[key] = (run, with_build({"simulator": res.get("sim")}, b))
        return _cache[key]


def _item_record(cfg: PIMConfig, case: PIMCase, sim: str) -> dict:
    mode = cfg.mode
    run, info = run_case(cfg, case.spec, sim=sim)
    model = model_for(cfg, case.spec)
    extra = dict(info)
    if case.spec["kind"] == "subbatch":
        other = dataclasses.replace(cfg, mode="blocked" if mode == "dual" else "dual")
        orun, _ = run_case(other, case.spec, sim=sim)
        dual_c, blocked_c = ((run["cycles"], orun["cycles"]) if mode == "dual"
                             else (orun["cycles"], run["cycles"]))
        omodel = model_for(other, case.spec)
        dm, bm = (model, omodel) if mode == "dual" else (omodel, model)
        extra.update(dual_cycles=dual_c, blocked_cycles=blocked_c,
                     speedup=round(blocked_c / max(1, dual_c), 4),
                     model_speedup=round(bm.cycles / max(1, dm.cycles), 4))
    return to_record(cfg, case.spec, run, model, extra=extra)


def sim_items(*, sim: str) -> list:
    """make sim's pim runs (cosim.blocks registry): every plan workload in both
    modes; the sub-batch records carry the dual-over-blocked speedup."""
    return _plan_items([default_config(mode) for mode in ("blocked", "dual")], sim)


def config_items(config: PIMConfig, *, sim: str) -> list:
    """`quattro sim --block pim --config ...`: the plan's workloads on `config`
    (its mode; the sub-batch record also runs the other mode for the speedup)."""
    return _plan_items([config], sim)


def _plan_items(configs: list[PIMConfig], sim: str) -> list:
    from cosim.blocks import SimItem
    items = []
    for cfg in configs:
        for case in default_plan():
            items.append(SimItem(
                block="pim", name=f"{cfg.mode}_{case.name}", path="system",
                config=cfg.as_dict(), macs=0, peak_macs_per_cycle=cfg.peak_macs_per_cycle,
                run=lambda cfg=cfg, case=case: _item_record(cfg, case, sim)))
    return items
