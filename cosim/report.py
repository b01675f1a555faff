"""build/sim/report.json: one record per co-simulation run, shared by all blocks.

A record is a flat JSON object. Required keys (every block):
  block, test, config (dict of the block's configuration fields), passed,
  mismatches, vectors, cycles, macs, macs_per_cycle, peak_macs_per_cycle,
  utilisation, sim_seconds, sim_cycles_per_second
Optional: seed, expected_cycles (analytic cycle model, ideal source/sink),
  stall_cycles, simulator, path ("stream"/"fast"), errors, waves_file, ...

Records are merged by key (block, test, config): appending a record whose key
is present replaces the old one, so each block adds its own records through
`append_records` without touching the others. The file is rewritten
atomically under a lock (several processes may append at once).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from quattro_fs import atomic_write_json, build_root, file_lock

__all__ = ["REPORT_PATH", "REQUIRED_KEYS", "make_record", "record_key",
           "append_records", "load_records", "format_table"]

REPORT_PATH = build_root() / "sim" / "report.json"

REQUIRED_KEYS = ("block", "test", "config", "passed", "mismatches", "vectors",
                 "cycles", "macs", "macs_per_cycle", "peak_macs_per_cycle",
                 "utilisation", "sim_seconds", "sim_cycles_per_second")


def make_record(*, block: str, test: str, config: dict, passed: bool,
                mismatches: int, vectors: int, cycles: int, macs: int,
                peak_macs_per_cycle: int, sim_seconds: float,
                sim_cycles: int | None = None, **extra: object) -> dict:
    """Build a record, deriving the rate fields so that no block computes them
    differently. `sim_cycles` (clock cycles simulated, default `cycles`) gives
    sim_cycles_per_second."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict of configuration fields (use "
                         f"config.as_dict()), got {type(config).__name__}")
    sim_cycles = cycles if sim_cycles is None else sim_cycles
    mpc = macs / cycles if cycles else 0.0
    rec = {
        "block": block, "test": test, "config": dict(config),
        "passed": bool(passed), "mismatches": int(mismatches),
        "vectors": int(vectors), "cycles": int(cycles), "macs": int(macs),
        "macs_per_cycle": round(mpc, 4),
        "peak_macs_per_cycle": int(peak_macs_per_cycle),
        "utilisation": round(mpc / peak_macs_per_cycle, 4) if peak_macs_per_cycle else 0.0,
        "sim_seconds": round(float(sim_seconds), 4),
        "sim_cycles": int(sim_cycles),
        "sim_cycles_per_second": round(sim_cycles / sim_seconds, 1) if sim_seconds > 0 else 0.0,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rec.update(extra)
    return rec


def record_key(rec: dict) -> tuple[str, str, str]:
    """The key a record is stored under: (block, test, config as canonical JSON)."""
    missing = [k for k in ("block", "test", "config") if k not in rec]
    if missing:
        raise ValueError(f"report record lacks {missing}; build it with make_record()")
    return (rec["block"], rec["test"], json.dumps(rec["config"], sort_keys=True))


def load_records(path: Path = REPORT_PATH) -> list[dict]:
    """The records of a report file ([] when it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a JSON list of records; delete it and rerun "
                         f"`make sim`")
    return data


def append_records(records: list[dict], path: Path = REPORT_PATH, *,
                   replace_block: str | None = None) -> list[dict]:
    """Merge `records` into the report at `path` and return the whole report.

    With `replace_block`, that block's old records are dropped first (a full
    `make sim` run of the block replaces its previous results)."""
    path = Path(path)
    for r in records:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"report record {r.get('test')!r} lacks {missing}; "
                             f"build it with cosim.report.make_record()")
    with file_lock(path.with_name(path.name + ".lock")):
        old = load_records(path)
        if replace_block is not None:
            old = [r for r in old if r.get("block") != replace_block]
        merged: dict[tuple, dict] = {record_key(r): r for r in old}
        for r in records:
            merged[record_key(r)] = r
        out = list(merged.values())
        atomic_write_json(path, out)
    return out


def format_table(records: list[dict]) -> str:
    """The report as a fixed-width text table, one line per record."""
    cols = [("block", 6), ("case", 42), ("test", 24), ("ok", 4), ("mism", 5), ("vectors", 8),
            ("MACs", 9), ("cycles", 8), ("exp.cyc", 8), ("MAC/cyc", 8), ("util", 6),
            ("sim cyc/s", 10)]
    lines = [" ".join(f"{h:>{w}}" if i > 1 else f"{h:<{w}}"
                      for i, (h, w) in enumerate(cols))]
    for r in records:
        vals = [r["block"], str(r.get("case", ""))[:42], r["test"][:24], "PASS" if r["passed"] else "FAIL",
                r["mismatches"], r["vectors"], r["macs"], r["cycles"],
                r.get("expected_cycles", "-"), f"{r['macs_per_cycle']:.2f}",
                f"{r['utilisation']:.1%}", f"{r['sim_cycles_per_second']:.0f}"]
        lines.append(" ".join(f"{str(v):>{w}}" if i > 1 else f"{str(v):<{w}}"
                              for i, (v, (_, w)) in enumerate(zip(vals, cols))))
    return "\n".join(lines)
