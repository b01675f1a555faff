"""A design-space sweep on Ray: every point of a Space (dse.space) evaluated as a Ray
task (dse.point.evaluate_point), one row per point, resumable, the Pareto fronts
marked and plotted.

    python -m dse sweep dse/spaces/small.yaml [--address ray://host:10001] [--num-cpus N]

Ray is the scheduler (a local Ray with the machine's cores by default, a cluster with
--address); nothing here schedules. Results go to build/dse/<space name>/:

  rows.jsonl      one JSON line per evaluated point, appended (and flushed to disk) as
                  each task returns: the resume log. A killed sweep leaves whole lines;
                  the next run keeps the rows of the space's current points (their ids
                  hash the point and the space's settings), drops the rest and
                  evaluates only what is missing. --restart starts over.
  rows.json, rows.csv   every row of the space, in point order, with the Pareto marks
  pareto_lut.png  the objective (tokens/s) against LUTs, the front marked
  pareto_ppl.png  the objective against perplexity (points with an eval report)
  summary.json    counts by status, the best point, timings

The perplexities are re-read from the eval reports at every run (cheap), so a report
written after a point was evaluated fills it in on the next run.

Pareto fronts (rows with status "ok"): `pareto_lut` maximises the objective and
minimises LUTs, `pareto_ppl` maximises the objective and minimises perplexity,
`pareto` all three at once. LUTs are one core's for the single-sequence objective,
all instances' for the aggregate one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from quattro_fs import atomic_write_json, atomic_write_text, build_root

from .point import add_accuracy, evaluate_point, split_point
from .space import DSEError, Space, point_id

__all__ = ["results_dir", "read_rows", "pareto", "sweep", "finalize", "prevalidate"]


def results_dir(space: Space) -> Path:
    """Where the sweep of `space` writes its results: build/dse/<name>."""
    return build_root() / "dse" / space.name


def read_rows(path: Path) -> dict:
    """id -> row of a rows.jsonl; a torn last line (a killed write) is skipped."""
    out = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            out[row["id"]] = row
    return out


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def prevalidate(point: dict) -> str:
    """Why a point is invalid before any model is built ("" if it may be valid): the
    cheap checks (the point's keys, SystemConfig), so a space with no valid point
    fails without starting Ray."""
    from golden.system_config import SystemConfig
    try:
        system, _ = split_point(point)
        SystemConfig(**system)
    except (DSEError, ValueError, TypeError) as e:
        return str(e)
    return ""


def pareto(rows: list[dict], objectives: dict) -> set:
    """Ids of the rows no other row beats: `objectives` maps a key to "max" or "min";
    rows without a value for one of them are left out."""
    pts = []
    for r in rows:
        vals = [r.get(k) for k in objectives]
        if r.get("status") == "ok" and all(v is not None and math.isfinite(v) for v in vals):
            pts.append((r["id"], [v if objectives[k] == "max" else -v
                                  for k, v in zip(objectives, vals)]))
    front = set()
    for i, a in pts:
        beaten = any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a))
                     for j, b in pts if j != i)
        if not beaten:
            front.add(i)
    return front


def _lut_key(space: Space) -> str:
    return "lut" if space.objective == "decode_tokens_per_s" else "lut_total"


def finalize(space: Space, rows: list[dict], out: Path, *, extra: dict | None = None) -> dict:
    """Mark the fronts, write rows.json / rows.csv / summary.json and the plots."""
    obj, lut = space.objective, _lut_key(space)
    fronts = {"pareto_lut": pareto(rows, {obj: "max", lut: "min"}),
              "pareto_ppl": pareto(rows, {obj: "max", "ppl": "min"}),
              "pareto": pareto(rows, {obj: "max", lut: "min", "ppl": "min"})}
    if not fronts["pareto"]:        # no perplexity anywhere: the front of the other two
        fronts["pareto"] = fronts["pareto_lut"]
    for r in rows:
        for k, ids in fronts.items():
            r[k] = r["id"] in ids
    atomic_write_json(out / "rows.json", {"space": space.as_dict(), "rows": rows}, indent=1)
    cols = list(dict.fromkeys(["id", "status", *(k for r in rows for k in r if k.startswith("p.")),
                               "scheme", "whatifs", "decode_tokens_per_s",
                               "aggregate_tokens_per_s", "pct_of_bound", "instances",
                               "lut", "lut_total", "ppl", "pareto", "pareto_lut",
                               "pareto_ppl", *(k for r in rows for k in r), "reason"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "rows.csv", buf.getvalue())
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    ok = [r for r in rows if r["status"] == "ok"]
    best = max(ok, key=lambda r: r[obj]) if ok else None
    summary = {"space": space.as_dict(), "points": len(rows), "status": status,
               "objective": obj, "best": best,
               "front_lut": [r["id"] for r in rows if r["pareto_lut"]],
               "front_ppl": [r["id"] for r in rows if r["pareto_ppl"]], **(extra or {})}
    atomic_write_json(out / "summary.json", summary, indent=1)
    plots = _plots(space, rows, out)
    summary["plots"] = [str(p) for p in plots]
    return summary


def _label(r: dict, keys) -> str:
    """A point by the settings the grid sweeps (the fixed ones are in the title)."""
    return " ".join(f"{k}={r[f'p.{k}']}" for k in keys if f"p.{k}" in r)


def _plots(space: Space, rows: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    obj, lut = space.objective, _lut_key(space)
    ok = [r for r in rows if r["status"] == "ok"]
    paths = []
    for name, xkey, xlabel, mark in (
            ("pareto_lut", lut, "LUTs (analytic lower bound" + (", one core)" if lut == "lut"
                                                              else ", all instances)"),
             "pareto_lut"),
            ("pareto_ppl", "ppl", f"perplexity ({space.accuracy_model}, quantflow eval)",
             "pareto_ppl")):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        have = [r for r in ok if r.get(xkey) is not None]
        front = sorted((r for r in have if r[mark]), key=lambda r: r[xkey])
        ax.scatter([r[xkey] for r in have], [r[obj] for r in have], color="0.6", s=18,
                   label=f"points ({len(have)} of {len(rows)})")
        if front:
            ax.plot([r[xkey] for r in front], [r[obj] for r in front], "o-", color="C3",
                    label="Pareto front")
            for r in front:
                ax.annotate(_label(r, [k for k, _ in space.grid]), (r[xkey], r[obj]),
                            fontsize=5, xytext=(3, -8), textcoords="offset points")
        if not have:
            ax.text(0.5, 0.5, "no point has this figure yet" + (
                "\n(no quantflow eval report for the schemes: see rows.csv, ppl_source)"
                if xkey == "ppl" else ""), ha="center", va="center", transform=ax.transAxes)
        xs = [r[xkey] for r in have if r[xkey] > 0]
        if xs and max(xs) > 10 * min(xs):      # perplexities of W2 next to W4
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(obj.replace("_", " "))
        fixed = " ".join(f"{k}={v}" for k, v in space.fixed)
        ax.set_title(f"{space.name}: {space.model} on {space.board.upper()}\n{fixed}",
                     fontsize=8)
        ax.grid(True, lw=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"{name}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def sweep(space: Space, *, address: str | None = None, num_cpus: int | None = None,
          out: Path | None = None, restart: bool = False, limit: int | None = None,
          progress: bool = True, log: Callable[[str], object] = print) -> dict:
    """Evaluate every point of `space` not already in its rows.jsonl (module doc) on
    Ray, then write the results. `limit`: evaluate at most that many new points and
    stop (as a killed sweep would; the next call continues). DSEError when no point
    of the space is valid or fits (after writing the rows)."""
    t0 = time.perf_counter()
    out = Path(out) if out is not None else results_dir(space)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "rows.jsonl"
    points = space.points()
    ids = [point_id(space, p) for p in points]
    have = {} if restart else read_rows(log_path)
    keep = {i: have[i] for i in ids if i in have}
    # the log holds exactly the current space's whole rows before anything is appended
    atomic_write_text(log_path, "".join(json.dumps(keep[i], sort_keys=True) + "\n"
                                        for i in ids if i in keep))
    todo = []
    for p, i in zip(points, ids):
        if i in keep:
            continue
        why = prevalidate(p)
        if why:
            row = {"id": i, **{f"p.{k}": v for k, v in sorted(p.items())},
                   "status": "invalid", "reason": why}
            _append(log_path, row)
            keep[i] = row
        else:
            todo.append((p, i))
    resumed = sum(1 for i in ids if i in have)
    if limit is not None:
        todo = todo[:limit]
    settings = space.settings()
    started, where = False, None
    if todo:
        import ray
        from tqdm import tqdm
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False, runtime_env={
                    "working_dir": str(Path(__file__).resolve().parent.parent),
                    "excludes": ["build/", ".venv/", ".git/", "*.png"]})
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False)
            started = True
        where = address or "local"
        task = ray.remote(num_cpus=1)(evaluate_point)
        refs = [task.remote(settings, p, i) for p, i in todo]
        with tqdm(total=len(points), initial=len(keep), desc=f"dse {space.name}",
                  unit="point", disable=not progress) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                row = ray.get(ready[0])
                _append(log_path, row)
                keep[row["id"]] = row
                bar.update(1)
        if started:
            ray.shutdown()
    rows = [keep[i] for i in ids if i in keep]
    for r in rows:           # reports may have appeared since a row was first written
        if r["status"] == "ok":
            add_accuracy(r, space.accuracy_model)
    extra = {"evaluated": len(todo), "resumed": resumed, "complete": len(rows) == len(ids),
             "ray": where, "seconds": round(time.perf_counter() - t0, 1)}
    summary = finalize(space, rows, out, extra=extra)
    log(f"{space.name}: {len(rows)} of {len(ids)} points ({resumed} from an earlier run, "
        f"{len(todo)} evaluated now); {summary['status']}; results in {out}")
    if len(rows) == len(ids) and not any(r["status"] == "ok" for r in rows):
        first = {}
        for r in rows:
            first.setdefault(r["status"], r.get("reason", ""))
        raise DSEError(f"no point of space {space.name!r} is valid and fits: "
                       + "; ".join(f"{sum(r['status'] == s for r in rows)} {s} (e.g. {why})"
                                   for s, why in first.items())
                       + f". Widen the space (see {space.path or 'the space file'})")
    return summary
