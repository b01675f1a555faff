"""One point of a design space evaluated: resources, performance, accuracy. A plain
function of plain data (dicts in, a dict out), so a Ray worker anywhere runs it.

  resources    fpga_boards.resources_system: an analytic lower bound scaled from the
               units' last Yosys figures (a whole-core Yosys run takes longer than a
               sweep can wait); every row says so in `resources_source`
  performance  fpga_boards.perf: the system model on the core's cycle model
  accuracy     the perplexity `python -m quantflow eval` measured for the point's
               scheme on `accuracy_model` (build/quant/<model>/<scheme>/report.json),
               with N:M sparsity `python -m quantflow.sparse_eval`'s
               (sparse-<N>of<M>-wanda); never run here: a point without a report says
               which command would measure it
"""
from __future__ import annotations

import functools
import json

__all__ = ["split_point", "scheme_of", "evaluate_point", "accuracy", "add_accuracy"]


def scheme_of(point: dict) -> str:
    """The scheme name fpga_boards.perf.parse_scheme reads for a point."""
    return (f"w{point.get('w_bits', 4)}a8kv4-g{point.get('group', 128)}"
            + ("-plain" if point.get("kv", "hadamard") == "plain" else ""))


def split_point(point: dict) -> tuple[dict, dict]:
    """(SystemConfig fields, --core-config fields) of a point."""
    from .space import CORE_KEYS, SYSTEM_KEYS, KV_FLAVOURS, DSEError
    kv = point.get("kv", "hadamard")
    if kv not in KV_FLAVOURS:
        raise DSEError(f"kv={kv!r}: use one of {KV_FLAVOURS}")
    system = {k: point[k] for k in SYSTEM_KEYS if k in point}
    core = {k: point[k] for k in CORE_KEYS if k in point and k != "lanes"}
    if "lanes" in point:       # the RTL ties the KV4 unit's lanes to the SFU's
        core["sfu"] = {"lanes": point["lanes"]}
        core["kv4"] = {"lanes": point["lanes"]}
    return system, core


def accuracy(model: str, scheme: str, sparsity: str) -> dict:
    """The perplexity of `scheme` (and N:M `sparsity`) on `model` from the reports on
    disk: {"ppl", "ppl_fp32", "source"} or {"ppl": None, "missing": the command}."""
    from quantflow.evaluate import quant_dir
    if sparsity == "dense":
        path = quant_dir(model, scheme) / "report.json"
        cmd = f"python -m quantflow eval --model {model} --scheme {scheme}"
        key = lambda r: (r.get("ppl"), r.get("ppl_fp32"), r.get("scheme") == scheme)
    else:
        path = quant_dir(model, f"sparse-{sparsity.replace(':', 'of')}-wanda") / "report.json"
        cmd = (f"python -m quantflow.sparse_eval --model {model} --pattern {sparsity} "
               f"--scheme {scheme}")
        key = lambda r: (r.get("ppl", {}).get("sparse_quant"), r.get("ppl", {}).get("fp32"),
                         r.get("scheme") == scheme)
    try:
        rep = json.loads(path.read_text())
        ppl, fp32, same = key(rep)
    except (OSError, json.JSONDecodeError, AttributeError):
        return {"ppl": None, "missing": _missing(cmd, scheme)}
    if not same or ppl is None:
        return {"ppl": None, "missing": _missing(cmd, scheme)}
    return {"ppl": float(ppl), "ppl_fp32": fp32, "source": str(path)}


def _missing(cmd: str, scheme: str) -> str:
    from quantflow.schemes import SCHEMES
    if scheme in SCHEMES:
        return cmd
    return (f"{cmd} (register {scheme} in quantflow.schemes.SCHEMES first: quantflow eval "
            f"runs registered schemes)")


@functools.lru_cache(maxsize=16)
def _lowered(decoder, core):
    from fpga_boards.perf import lower
    return lower(decoder, core)


def evaluate_point(settings: dict, point: dict, pid: str) -> dict:
    """The row of one point (`settings`: Space.settings()). status: "ok", "does not
    fit" (the part or the memory; `reason` says which) or "invalid" (a setting the
    model, the core or the RTL refuses; `reason`)."""
    import time
    t0 = time.perf_counter()
    row = {"id": pid, **{f"p.{k}": v for k, v in sorted(point.items())},
           "scheme": scheme_of(point), "status": "invalid", "reason": ""}
    try:
        from fpga_boards.boards import board as get_board
        from fpga_boards.fit import FitError
        from fpga_boards.model_shapes import load_shape
        from fpga_boards.perf import (PerfError, core_from_json, decoder_for,
                                      evaluate_system, parse_scheme, rtl_core)
        from golden.system_config import SystemConfig
        from .space import DSEError
    except ImportError as e:   # a worker without the project: say so, do not crash the sweep
        row["reason"] = f"the worker cannot import the project ({e})"
        return row
    try:
        sys_fields, core_fields = split_point(point)
        sch = parse_scheme(row["scheme"])
        system = SystemConfig(**{**sys_fields, "w_bits": sch.weight.bits,
                                 "group": sch.weight.group})
        b = get_board(settings["board"])
        d = decoder_for(load_shape(settings["model"]), sch, system.context)
        core = core_from_json(d, core_fields).replace(mem_ports=1)
        sc = evaluate_system(d, core, system, b, lowered=_lowered(d, rtl_core(core)),
                             prefill=settings["prefill"], strict=False)
    except (DSEError, PerfError, FitError, ValueError, TypeError) as e:
        row["reason"] = str(e)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row
    n = max(sc.instances, 1)
    row.update({
        "status": "ok" if sc.instances >= 1 else "does not fit",
        "reason": "" if sc.instances >= 1 else sc.limited_by,
        "whatifs": "; ".join(system.whatifs) or "RTL",
        "decode_tokens_per_s": sc.decode_tps,
        "aggregate_tokens_per_s": sc.aggregate_tps if sc.instances >= 1 else 0.0,
        "pct_of_bound": sc.pct_of_bound, "bytes_per_token": sc.bytes_per_token,
        "bound_tokens_per_s": sc.bound_tps, "instances": sc.instances,
        "instances_limited_by": sc.limited_by,
        "prefill_tokens_per_s": sc.prefill_tps if settings["prefill"] else None,
        **{k: v for k, v in sc.resources.items()},
        **{f"{k}_total": v * n for k, v in sc.resources.items()},
        "lut_pct": sc.fit.utilisation["lut"] if sc.fit else None,
        "resources_source": "analytic: " + sc.resources_source,
        **{f"ms.{k}": v * 1e3 / sc.batch for k, v in sc.decode.by_bound.items()},
    })
    add_accuracy(row, settings["accuracy_model"])
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def add_accuracy(row: dict, model: str) -> dict:
    """A row's perplexity fields from the reports on disk now (a resumed sweep calls it
    again: an eval finished since fills its points in)."""
    acc = accuracy(model, row["scheme"], row.get("p.sparsity", "dense"))
    row["ppl"] = acc.get("ppl")
    row["ppl_fp32"] = acc.get("ppl_fp32")
    row["ppl_model"] = model
    row["ppl_source"] = acc.get("source") or f"not measured: {acc['missing']}"
    return row

