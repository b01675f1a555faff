"""python -m cosim {sim,bench,lint}

  sim    every MixPE case of cosim.plan.default_plan(): quantize (quantflow) into
         build/sim/data/<case>/, generate Verilog, co-simulate under Verilator
         (stream testbench with idle cycles and back-pressure; fast path where
         the plan says so), print a table, write build/sim/report.json.
         Exit status 1 on any mismatch or failure.
  bench  simulation speed: cocotb fast path vs a plain Verilator C++ harness of
         the same MixPESystem; steady-state MACs/cycle; build/sim/bench.json.
  lint   verilator --lint-only on generated Verilog (cosim.lint).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time
import traceback


def _sim(args) -> int:
    from cosim import mixpe, plan, report, runner

    cases = plan.default_plan()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
        if not cases:
            print(f"no plan case matches {args.only}; names: "
                  f"{[c.name for c in plan.default_plan()]}", file=sys.stderr)
            return 2
    try:
        sim = runner.select_simulator(args.sim)
    except runner.CosimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cosim sim: {len(cases)} MixPE cases under {sim} "
          f"({args.jobs} in parallel), report -> {report.REPORT_PATH}", flush=True)
    t0 = time.perf_counter()

    # A work item = one (case, path). Data and builds are prepared inside the
    # items; the runner's locks make concurrent preparation of one build safe.
    items = ([(c, "stream") for c in cases] + [(c, "stream-ideal") for c in cases]
             + [(c, "fast") for c in cases if c.fast])

    def work(item):
        case, path = item
        try:
            if path == "stream":
                b = mixpe.stream_build(case.config, sim=sim)
                res = mixpe.run_stream(case, build=b)
            elif path == "stream-ideal":  # holds the cycle model to the RTL
                b = mixpe.stream_build(case.config, sim=sim)
                res = mixpe.run_stream(case, build=b, p_idle=0.0, p_stall=0.0)
            else:
                b = mixpe.system_build(case.config, max_m_tiles=case.m_tiles,
                                       max_n_tiles=case.n_tiles, sim=sim)
                res = mixpe.run_fast(case, build=b)
            rec = mixpe.to_record(case, res)
            rec["build_seconds"] = round(b.build_seconds, 1)
            rec["build_cached"] = b.cached
        except Exception as e:  # report the failure as a failing record
            tb = traceback.format_exc(limit=3)
            rec = report.make_record(
                block="mixpe", test=f"{path} {case.workload}", config=case.config.as_dict(),
                passed=False, mismatches=0, vectors=0, cycles=0, macs=case.macs,
                peak_macs_per_cycle=case.config.peak_macs_per_cycle, sim_seconds=0.0,
                path=path, errors=[f"{type(e).__name__}: {e}"[:4000], tb[-2000:]])
        status = "PASS" if rec["passed"] else "FAIL"
        if rec.get("expected_cycles") is not None and rec["cycles"] != rec["expected_cycles"]:
            rec["passed"] = False
            rec.setdefault("errors", []).append(
                f"cycle model: RTL took {rec['cycles']} cycles, hdl.mixpe.cycle_model "
                f"says {rec['expected_cycles']}")
            status = "FAIL"
        print(f"  [{status}] {path:12s} {case.name}: {rec['vectors']} words, "
              f"{rec['cycles']} cycles, {rec['macs_per_cycle']:.2f} MAC/cycle"
              + (f" (build {rec.get('build_seconds')} s)" if rec.get("build_seconds") else ""),
              flush=True)
        return rec

    # Threads suffice: every build and simulation is a subprocess.
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        records = list(ex.map(work, items))
    report.append_records(records, replace_block="mixpe")
    print()
    print(report.format_table(records))
    failed = [r for r in records if not r["passed"]]
    for r in failed:
        print(f"\nFAILED {r['test']} {r['config']}:", file=sys.stderr)
        for e in r.get("errors", [])[:6]:
            print(f"  {e}", file=sys.stderr)
    print(f"\n{len(records) - len(failed)}/{len(records)} runs passed in "
          f"{time.perf_counter() - t0:.0f} s; report: {report.REPORT_PATH}")
    return 1 if failed else 0


def _bench(args) -> int:
    from cosim import bench
    return bench.main(args)


def _lint(args) -> int:
    try:
        from cosim import lint
    except ImportError:
        print("cosim.lint is not available in this checkout", file=sys.stderr)
        return 2
    main = getattr(lint, "main", None)
    if main is None:
        print("cosim.lint has no main()", file=sys.stderr)
        return 2
    return main(list(args.rest))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cosim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sim", help="co-simulate the default plan, write build/sim/report.json")
    s.add_argument("--jobs", "-j", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel builds/simulations (default 2)")
    s.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    s.add_argument("--sim", default=None, help="verilator (default) or icarus; $SIM also works")
    s.set_defaults(func=_sim)
    b = sub.add_parser("bench", help="simulation speed: cocotb fast path vs Verilator C++")
    b.add_argument("--repeat", type=int, default=None, help="runs per measurement")
    b.set_defaults(func=_bench)
    lt = sub.add_parser("lint", help="verilator --lint-only on generated Verilog")
    lt.add_argument("rest", nargs=argparse.REMAINDER)
    lt.set_defaults(func=_lint)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
