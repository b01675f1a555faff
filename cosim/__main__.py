"""python -m cosim {sim,bench,lint,host,generate}

  sim    every block of cosim.blocks.BLOCKS (MixPE: every case of
         cosim.mixpe.default_plan()); `--block generate` (cosim.blocks.ON_REQUEST):
         SmolLM2 generating three tokens through the core. Quantize (quantflow) into build/sim/data/,
         generate Verilog, co-simulate under Verilator (stream testbench with
         idle cycles and back-pressure, ideal runs held to the cycle model, fast
         path where planned), print a table, write build/sim/report.json.
         Exit status 1 on any mismatch or failure.
  bench  simulation speed: cocotb fast path vs a plain Verilator C++ harness of
         the same MixPESystem; steady-state MACs/cycle; build/sim/bench.json.
  lint   verilator --lint-only on generated Verilog (cosim.lint).
  host   `python -m fpga_boards host` on the simulated kernel (cosim.xrt_sim):
         python -m cosim host <quantflow export dir> --config '<json>' [--wait irq]
  generate  greedy text generation through the co-simulated core, every token
         and instruction compared with the integer golden (cosim.generate):
         python -m cosim generate --model smollm2 --prompt "..." --max-new-tokens 8
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shlex
import sys
import time
import traceback
from pathlib import Path


def _prog() -> str:
    """How the user called us, for the rerun line of a failure."""
    return "quattro sim" if os.path.basename(sys.argv[0]) == "quattro" else "python -m cosim sim"


def _rerun(args, item) -> str:
    cmd = f"{_prog()} --block {item.block} --only {shlex.quote(item.name)}"
    if args.config is not None:
        cmd += f" --config {shlex.quote(args.config)}"
    if args.sim:
        cmd += f" --sim {args.sim}"
    return cmd


def _failure_lines(args, item, rec) -> list[str]:
    """What a person needs after a failed run: the seed, the command that reruns
    just this case, where its log and waveform are (or how to get one)."""
    lines = []
    if rec.get("seed") is not None:
        lines.append(f"seed: {rec['seed']}")
    lines.append(f"rerun: {_rerun(args, item)}")
    if rec.get("log"):
        lines.append(f"log: {rec['log']}")
    if rec.get("waves_file"):
        lines.append(f"waves: {rec['waves_file']}")
    else:
        lines.append(f"waves: WAVES=1 {_rerun(args, item)}  (writes a trace next to the run"
                     + (f", under {Path(rec['run_dir']).parent}" if rec.get("run_dir") else "")
                     + ")")
    return lines


def _positive_int(text: str) -> int:
    """argparse type of a count that must be >= 1 (argparse names the flag)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _sim(args) -> int:
    from cosim import blocks, report, runner
    from fpga_boards.progress import step

    try:
        sim = runner.select_simulator(args.sim)
    except runner.CosimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.config is not None:
            if args.block is None:
                raise ValueError("--config needs --block <name>: the block whose "
                                 "configuration it gives")
            from hdl.generate import json_object
            by_block = blocks.configured_items(args.block, json_object("--config", args.config),
                                               sim=sim, only=args.only)
        else:
            by_block = blocks.block_items(sim=sim, only=args.only, block=args.block)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not by_block:
        names = sorted({i.name for b in blocks.block_items(sim=sim, block=args.block).values()
                        for i in b}) if args.config is None else []
        print(f"nothing matches {args.only}; blocks: {list(blocks.BLOCKS)}"
              + (f"; cases: {names}" if names else ""), file=sys.stderr)
        return 2
    items = [i for b in by_block.values() for i in b]
    print(f"cosim sim: {len(items)} runs of {', '.join(by_block)} under {sim} "
          f"({args.jobs} in parallel), report -> {report.REPORT_PATH}", flush=True)
    t0 = time.perf_counter()
    failures = []

    def work(item):
        try:
            with runner.track_runs() as runs:
                rec = item.run()
            # the trace and log of the item's last run, for every block's record
            last = runs[-1] if runs else {}
            for k in ("waves_file", "log", "run_dir"):
                if last.get(k) and not rec.get(k):
                    rec[k] = last[k]
        except Exception as e:  # report the failure as a failing record
            tb = traceback.format_exc(limit=3)
            rec = report.make_record(
                block=item.block, test=f"{item.path} {item.name}", config=item.config,
                passed=False, mismatches=0, vectors=0, cycles=0, macs=item.macs,
                peak_macs_per_cycle=item.peak_macs_per_cycle, sim_seconds=0.0,
                path=item.path, errors=[f"{type(e).__name__}: {e}"[:4000], tb[-2000:]],
                **{k: v for k, v in (runs[-1] if runs else {}).items() if v})
        if rec.get("expected_cycles") is not None and rec["cycles"] != rec["expected_cycles"]:
            rec["passed"] = False
            rec.setdefault("errors", []).append(
                f"cycle model: RTL took {rec['cycles']} cycles, the analytic model "
                f"says {rec['expected_cycles']}")
        status = "PASS" if rec["passed"] else "FAIL"
        print(f"  [{status}] {item.block:6s} {item.path:12s} {item.name}: {rec['vectors']} words, "
              f"{rec['cycles']} cycles, {rec['macs_per_cycle']:.2f} MAC/cycle"
              + (f" (build {rec.get('build_seconds')} s)" if rec.get("build_seconds") else ""),
              flush=True)
        if not rec["passed"]:
            failures.append((item, rec))
        return rec

    def counted(item):
        rec = work(item)
        bar.advance()
        return rec

    # Threads suffice: every build and simulation is a subprocess. The longest
    # blocks start first; the table keeps the plan's order.
    order = sorted(range(len(items)), key=lambda i: items[i].block not in blocks.START_FIRST)
    with step(f"cosim sim: {len(items)} runs", total=len(items)) as bar, \
            cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        done = dict(zip(order, ex.map(counted, [items[i] for i in order])))
    records = [done[i] for i in range(len(items))]
    # A full run of a block's plan replaces its old records; a filtered one (or
    # another configuration's, or an on-request block's) merges.
    by_item: dict[str, list] = {}
    for item, rec in zip(items, records):
        by_item.setdefault(item.block, []).append(rec)
    for block, recs in by_item.items():
        partial = args.only or args.config or block in blocks.ON_REQUEST
        report.append_records(recs, replace_block=None if partial else block)
    print()
    print(report.format_table(records))
    failed = [r for r in records if not r["passed"]]
    for item, r in failures:
        print(f"\nFAILED {r['block']} {r['test']} {r['config']}:", file=sys.stderr)
        for e in r.get("errors", [])[:6]:
            print(f"  {e}", file=sys.stderr)
        for line in _failure_lines(args, item, r):
            print(f"  {line}", file=sys.stderr)
    print(f"\n{len(records) - len(failed)}/{len(records)} runs passed in "
          f"{time.perf_counter() - t0:.0f} s; report: {report.REPORT_PATH}")
    return 1 if failed else 0


def _bench(args) -> int:
    from cosim import bench
    return bench.main(args)


def _lint(args) -> int:
    from cosim import lint
    return lint.main(list(args.rest))


def _host(args) -> int:
    from cosim import xrt_sim
    return xrt_sim.main(list(args.rest))


def _generate(args) -> int:
    from cosim import generate
    return generate.main(list(args.rest))


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim`: run the subcommand argv names; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Commands with their own parser get every argument: argparse's REMAINDER
    # would refuse one that starts with "--" (python -m cosim lint --block lut).
    own = {"generate": _generate, "lint": _lint, "host": _host}
    if argv[:1] and argv[0] in own:
        return own[argv[0]](argparse.Namespace(rest=argv[1:]))
    p = argparse.ArgumentParser(prog="python -m cosim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sim", help="co-simulate the default plan, write build/sim/report.json")
    s.add_argument("--jobs", "-j", type=_positive_int, default=min(2, os.cpu_count() or 1),
                   help="parallel builds/simulations (default 2)")
    # "+": a bare --only (an empty shell variable) must not mean "every run"
    s.add_argument("--only", nargs="+", help="run only cases whose name contains one of these (or a block name)")
    s.add_argument("--block", help="run only this block's plan (cosim.blocks.BLOCKS)")
    s.add_argument("--config", help="with --block: co-simulate the plan on this configuration "
                   "(JSON object of fields, or a .json file; the rest default) instead")
    s.add_argument("--sim", default=None, help="verilator (default) or icarus; $SIM also works")
    s.set_defaults(func=_sim)
    b = sub.add_parser("bench", help="simulation speed: cocotb fast path vs Verilator C++")
    b.add_argument("--repeat", type=_positive_int, default=None,
                   help="runs per measurement (default 20)")
    b.set_defaults(func=_bench)
    lt = sub.add_parser("lint", help="verilator --lint-only on generated Verilog")
    lt.add_argument("rest", nargs=argparse.REMAINDER)
    lt.set_defaults(func=_lint)
    h = sub.add_parser("host", help="fpga_boards' host program on the simulated kernel",
                       add_help=False)
    h.add_argument("rest", nargs=argparse.REMAINDER)
    h.set_defaults(func=_host)
    g = sub.add_parser("generate", help="generate text through the co-simulated core, "
                       "checked against the integer golden", add_help=False)
    g.add_argument("rest", nargs=argparse.REMAINDER)
    g.set_defaults(func=_generate)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
