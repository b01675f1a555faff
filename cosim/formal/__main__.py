"""`python -m cosim.formal`: the formal proofs. Options (all optional):
--block B, --group G (repeatable), --proofs or --faults, --quick, --jobs N,
--timeout S, --list.

Runs the proofs and fault demonstrations of cosim.formal.checks (all by
default) with yowasp-sby and Yices, each in its own directory under
quattro_fs.build_root()/formal, prints a table (property group, block,
config, mode, result, solver time) and writes build/formal/report.json (a run
of some checks updates their rows of the last report). Exit status 1 when a
proof does not pass or a fault demonstration does not fail with a
counterexample; 2 when sby or the solver is missing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time

from .checks import formal_root, run_check, select, write_report
from .sby import solver_missing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cosim.formal",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--block", action="append", help="only this block (repeatable)")
    p.add_argument("--group", action="append", help="only this property group (repeatable)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--proofs", action="store_true", help="proofs and covers only")
    kind.add_argument("--faults", action="store_true", help="fault demonstrations only")
    p.add_argument("--quick", action="store_true", help="only the checks `make test` runs")
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="sby tasks at once (default: min(4, CPUs))")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per sby task (default: none)")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    return p


def _table(rows: list[dict]) -> str:
    configs: dict[tuple[str, str], str] = {}
    for r in rows:
        n = 1 + sum(b == r["block"] for b, _ in configs)
        configs.setdefault((r["block"], r["config"]), f"{r['block']}#{n}")
    head = ("group", "block", "config", "fault", "mode", "result", "solver s", "sby s", "")
    lines = []
    for r in rows:
        res = r["status"] + ("" if r["ok"] else "  <-- expected " + r["expected"])
        lines.append((r["group"], r["block"], configs[r["block"], r["config"]],
                      r["broken"] or "-", r["mode_text"], res, f"{r['solver_s']:.2f}",
                      f"{r['wall_s']:.1f}", ""))
    widths = [max(len(h), *(len(str(l[i])) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    out += [fmt.format(*l).rstrip() for l in lines]
    out.append("")
    out += [f"  {tag}: {cfg}" for (_, cfg), tag in configs.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (None: sys.argv[1:]; the module docstring
    gives the options) and return the exit status."""
    args = _parser().parse_args(argv)
    faults = True if args.faults else (False if args.proofs else None)
    checks = [c for c in select(faults=faults, quick=True if args.quick else None)
              if (not args.block or c.block in args.block)
              and (not args.group or c.group in args.group)]
    if args.list:
        for c in checks:
            print(f"{c.name:40s} {c.mode_text:16s} {'quick' if c.quick else ''}")
        return 0
    if not checks:
        print("no check matches", file=sys.stderr)
        return 1
    why = solver_missing()
    if why:
        print(f"cannot run the proofs: {why}", file=sys.stderr)
        return 2
    root = formal_root()
    print(f"{len(checks)} checks in {root} ({args.jobs} at once)", flush=True)
    t0 = time.monotonic()
    rows: dict[int, dict] = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        futs = {ex.submit(run_check, c, root, timeout=args.timeout): i
                for i, c in enumerate(checks)}
        for f in cf.as_completed(futs):
            i = futs[f]
            r = rows[i] = f.result()
            mark = "ok " if r["ok"] else "BAD"
            print(f"  {mark} {r['name']:40s} {r['mode_text']:16s} {r['status']:8s} "
                  f"{r['solver_s']:7.2f} s solver", flush=True)
    ordered = [rows[i] for i in range(len(checks))]
    print()
    print(_table(ordered))
    report = root / "report.json"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for r in ordered:
        r["run_at"] = stamp
    merged = ordered
    if len(checks) < len(select()) and report.is_file():
        # a partial run updates its rows of the last report and keeps the others
        try:
            old = {r["name"]: r for r in json.loads(report.read_text())["checks"]}
        except (ValueError, KeyError):
            old = {}
        old.update({r["name"]: r for r in ordered})
        order = [c.name for c in select()]
        merged = [old[n] for n in order if n in old]
    write_report(merged, report)
    bad = [r for r in ordered if not r["ok"]]
    print(f"\n{len(ordered) - len(bad)}/{len(ordered)} as expected in "
          f"{time.monotonic() - t0:.0f} s; report: {report}")
    for r in bad:
        print(f"\n{r['name']}: {r['status']} (expected {r['expected']}) {r['failed']}\n"
              f"  {r['workdir']}\n{r['log_tail']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
