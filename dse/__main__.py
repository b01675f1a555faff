"""python -m dse sweep SPACE.yaml [--address ADDR] [--num-cpus N] [--out DIR]
[--restart] [--limit N] [--no-progress] (dse.sweep)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """`python -m dse`: run the sweep subcommand; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m dse", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="evaluate a space's points on Ray (resumable)")
    s.add_argument("space", type=Path, help="the space's YAML file (dse/spaces/small.yaml)")
    s.add_argument("--address", help="a Ray cluster (ray://host:10001 or auto); default: "
                                     "a local Ray on this machine's cores")
    s.add_argument("--num-cpus", type=int, help="local Ray's CPUs (default: all cores)")
    s.add_argument("--out", type=Path, help="results folder (default build/dse/<name>)")
    s.add_argument("--restart", action="store_true", help="ignore earlier rows")
    s.add_argument("--limit", type=int, help="evaluate at most N new points, then stop")
    s.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    from .space import DSEError, load_space
    from .sweep import sweep
    try:
        summary = sweep(load_space(a.space), address=a.address, num_cpus=a.num_cpus,
                        out=a.out, restart=a.restart, limit=a.limit,
                        progress=not a.no_progress)
    except DSEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = summary.get("best")
    if best:
        print(f"best {summary['objective']}: {best[summary['objective']]:.2f} "
              f"({best.get('whatifs')}; {best['scheme']}; "
              f"{json.dumps({k[2:]: v for k, v in best.items() if k.startswith('p.')})})")
    for p in summary.get("plots", []):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
