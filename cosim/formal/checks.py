"""The table of proofs and fault demonstrations that `python -m cosim.formal`
runs (`all_checks`), and running one (`run_check`).

A `Check` is one sby task: one property group of one block's harness, on one
small legal configuration, proven by k-induction (mode "prove", `depth` = k)
or checked to a bounded depth from reset (mode "bmc"); the group "cover" of
every harness is reached instead (mode "cover": each cover statement within
`depth` cycles of reset, so the assumptions leave the interesting behaviour
possible and the proofs are not vacuous). With `broken` set it is a fault
demonstration: the harness injects that fault and the check passes when sby
reports FAIL with a counterexample trace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quattro_fs import atomic_write_json, build_root

from .sby import run_sby

if TYPE_CHECKING:
    from .harness import Harness

__all__ = ["Check", "all_checks", "run_check", "formal_root", "select", "write_report"]


def formal_root() -> Path:
    """Where proofs run and report: build/formal (quattro_fs.build_root())."""
    return build_root() / "formal"


@dataclass(frozen=True)
class Check:
    """One sby task (module docstring). `quick`: cheap enough for `make test`
    (tests/test_formal.py); the others run under `make formal` (and the
    slow-marked tests)."""
    harness: type[Harness]
    config: object
    config_name: str
    group: str
    mode: str
    depth: int
    broken: str | None = None
    quick: bool = False
    note: str = ""
    tag: str = ""           # tells apart checks of one block on several configurations

    @property
    def block(self) -> str:
        """The harness's block name (Harness.block)."""
        return self.harness.block

    @property
    def name(self) -> str:
        """`block[tag]/group`, with `!fault` for a fault demonstration."""
        base = f"{self.block}{f'[{self.tag}]' if self.tag else ''}/{self.group}"
        return f"{base}!{self.broken}" if self.broken else base

    @property
    def mode_text(self) -> str:
        """The mode and depth for the table: "prove (k=4)", "BMC depth 12",
        "cover depth 30"."""
        return {"prove": f"prove (k={self.depth})", "bmc": f"BMC depth {self.depth}",
                "cover": f"cover depth {self.depth}"}[self.mode]

    @property
    def expected(self) -> str:
        """The sby status this check passes with: FAIL for a fault demonstration,
        else PASS."""
        return "FAIL" if self.broken else "PASS"

    def make(self) -> Harness:
        """A new harness of this check (its config, group and fault)."""
        return self.harness(self.config, self.group, broken=self.broken)


def _checks() -> list[Check]:
    from . import core, kv4_attention, lut, mixpe, pim, sfu, sparse_dsp
    out = []
    for mod in (mixpe, lut, sparse_dsp, pim, kv4_attention, sfu, core):
        out += mod.checks()
    return out


class _Lazy:
    def __init__(self):
        self._v = None

    def get(self) -> list[Check]:
        if self._v is None:
            self._v = _checks()
        return self._v


_ALL = _Lazy()


def all_checks() -> list[Check]:
    """Every check, block by block (each block's proofs, then its fault
    demonstrations); the table is built on first use."""
    return list(_ALL.get())


def select(*, block: str | None = None, group: str | None = None,
           faults: bool | None = None, quick: bool | None = None) -> list[Check]:
    """The checks matching every given filter (faults: fault demonstrations
    only / proofs only)."""
    out = []
    for c in all_checks():
        if block is not None and c.block != block:
            continue
        if group is not None and c.group != group:
            continue
        if faults is not None and bool(c.broken) != faults:
            continue
        if quick is not None and c.quick != quick:
            continue
        out.append(c)
    return out


def run_check(check: Check, root: Path | None = None, *, timeout: int | None = None) -> dict:
    """Run `check` in `root/<name>` (Check.name) and return its report row."""
    root = formal_root() if root is None else Path(root)
    workdir = root / check.name
    t0 = time.monotonic()
    harness = check.make()
    error = None
    try:
        r = run_sby(harness, workdir, mode=check.mode, depth=check.depth, timeout=timeout)
    except Exception as e:   # elaboration or conversion: a harness bug, reported as ERROR
        error = f"{type(e).__name__}: {e}"
        r = None
    row = {
        "name": check.name, "block": check.block, "tag": check.tag, "group": check.group,
        "description": check.harness.groups[check.group],
        "config": check.config_name, "mode": check.mode, "depth": check.depth,
        "mode_text": check.mode_text, "broken": check.broken,
        "fault": check.harness.faults[check.broken] if check.broken else None,
        "expected": check.expected, "note": check.note,
        "helpers": list(check.harness.helpers.get(check.group, ())),
        "workdir": str(workdir),
    }
    if r is None:
        row.update(status="ERROR", solver_s=0.0, cpu_s=0.0,
                   wall_s=round(time.monotonic() - t0, 3), failed=[], trace=None,
                   log_tail=error, ok=False)
        return row
    row.update(status=r.status, solver_s=round(r.solver_s, 3), cpu_s=round(r.cpu_s, 3),
               wall_s=round(r.wall_s, 3), failed=harness.describe(r.failed),
               reached={d: s for d, s in zip(harness.describe(list(r.reached)),
                                             r.reached.values())},
               trace=(str(workdir / "task" / r.trace) if r.trace else None),
               log_tail=r.log_tail if r.status not in ("PASS",) else "")
    row["ok"] = (r.status == check.expected
                 and (not check.broken or bool(r.trace)))
    return row


def write_report(rows: list[dict], path: Path) -> None:
    """Write the report rows (run_check's) to `path` as JSON, atomically, with
    the count of checks as expected (`passed`) and in all (`total`)."""
    atomic_write_json(path, {"checks": rows,
                             "passed": sum(r["ok"] for r in rows), "total": len(rows)})
