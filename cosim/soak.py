"""`make soak`: a long random soak of every block against its golden model.

    python -m cosim.soak [--vectors N] [--blocks b,..] [--jobs J] [--seed S]
                         [--configs C] [--replay CONFIG_SEED:CASE_SEED:VECTORS]

Per block, batches of random work run through the block's existing testbenches
(cosim/tb/*, through the plan modules cosim/<block>.py) until at least N vectors
have been compared bit for bit with the golden model. A *vector* is one output
word the block's scoreboard compares (VECTOR_MEANING says what that is per
block). Every batch is reproducible from two seeds: the configuration seed
draws a legal hardware configuration (its golden/<block>_config.py dataclass
validates it; small sizes so that a Verilator build stays short, and C of them
per block so that builds, cached in build/cosim, are few), the case seed draws
the run-time work (formats, sparsity patterns, workloads, data seeds, idle and
back-pressure probabilities). Both derive from --seed; the report names them.

Writes build/soak/report.json, prints a table, exits 1 on any mismatch or
failed run and prints the command that reruns the failing batch alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from quattro_fs import atomic_write_json, build_root

if TYPE_CHECKING:
    from hdl.generate import BlockConfig

__all__ = ["BLOCKS", "VECTOR_MEANING", "DEFAULT_VECTORS", "DEFAULT_CONFIGS", "REPORT_PATH",
           "Batch", "draw_config", "run_batch", "soak", "main"]

DEFAULT_VECTORS = 10 ** 6
#: hardware configurations per block: each is one Verilator build (two for MixPE:
#: its stream array and its memory-preloaded system), 1-4 min cold on 2 cores
DEFAULT_CONFIGS = 2
SOAK_ROOT = build_root() / "soak"
REPORT_PATH = SOAK_ROOT / "report.json"
DATA_ROOT = SOAK_ROOT / "data"

#: What one vector is, per block: one output word the scoreboard compares.
VECTOR_MEANING = {
    "mixpe": "one result word: the cols int32 accumulators of one activation row "
             "against one weight tile (cols K-long dot products, dequantized per group)",
    "lut": "one result word: rows x lanes int32 outputs of one tile (its activation "
           "rows against lanes output columns, K-long dot products, any weight format)",
    "sparse_dsp": "one result beat: one weight row (N:M-sparse or dense) against one "
                  "activation row, as the tile's group split of dot products",
    "pim": "one checked read-data word of the memory traffic, or one GEMV job's "
           "result word computed in the PIM lanes",
    "kv4_attention": "one cache word written by the in-hardware append quantizer "
                     "(the K and V chunk of one token) or one attention output word "
                     "(a lanes-wide chunk of one head's output) of a decode step",
    "sfu": "one output word of an op call: lanes elements of dequant, RMSNorm, RoPE, "
           "SwiGLU or requant, or an argmax result",
}
BLOCKS = tuple(VECTOR_MEANING)

#: vectors one batch (one simulator run) aims at; small enough for a few seconds
#: to a minute of simulation, large enough to amortise the simulator start-up
BATCH_VECTORS = {"mixpe": 16_384, "lut": 20_000, "sparse_dsp": 20_000, "pim": 40_000,
                 "kv4_attention": 20_000, "sfu": 50_000}


class SoakError(ValueError):
    """A bad command-line value (the message names the fix)."""


def _seed(*parts) -> int:
    """A 32-bit seed derived from `parts` (stable across runs and machines)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


def _legal(rng: random.Random, make: Callable[[random.Random], object]):
    """The first configuration `make(rng)` returns without a ValueError (the
    config dataclass's own validation decides what is legal)."""
    for _ in range(1000):
        try:
            return make(rng)
        except ValueError:
            continue
    raise RuntimeError("no legal configuration drawn in 1000 tries")


def _pressure(rng: random.Random) -> tuple[float, float]:
    """Random source idle and sink back-pressure probabilities; one draw in five
    is ideal (always valid, always ready)."""
    if rng.random() < 0.2:
        return 0.0, 0.0
    return round(rng.uniform(0.0, 0.5), 3), round(rng.uniform(0.0, 0.6), 3)


class _FairSlots:
    """At most `n` holders, granted in arrival order: a block that finishes a batch
    and asks again queues behind the blocks already waiting (a plain semaphore
    lets it barge in, starving the others)."""

    def __init__(self, n: int):
        self._free = n
        self._queue: list[object] = []
        self._cond = threading.Condition()

    def __enter__(self):
        me = object()
        with self._cond:
            self._queue.append(me)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] is me)
            self._queue.pop(0)
            self._free -= 1
            self._cond.notify_all()

    def __exit__(self, *exc):
        with self._cond:
            self._free += 1
            self._cond.notify_all()


_builds: dict = {}
_builds_lock = threading.Lock()


def _build(make: Callable, cfg, **kw):
    """`make(cfg, **kw)` (a plan module's build function) once per process:
    generating the Verilog that keys the build cache costs up to a minute."""
    key = (make.__module__, make.__name__, json.dumps(cfg.as_dict(), sort_keys=True),
           tuple(sorted(kw.items())))
    with _builds_lock:
        lock = _builds.setdefault(("lock",) + key, threading.Lock())
    with lock:
        if key not in _builds:
            _builds[key] = make(cfg, **kw)
        return _builds[key]


def _sum_runs(runs: list[dict], **extra) -> dict:
    """One batch's result from its simulator runs' results."""
    out = {"vectors": 0, "mismatches": 0, "sim_cycles": 0, "sim_seconds": 0.0,
           "passed": bool(runs), "errors": []}
    for r in runs:
        out["vectors"] += int(r.get("vectors", 0))
        out["mismatches"] += int(r.get("mismatches", 0))
        out["sim_cycles"] += int(r.get("sim_cycles", r.get("cycles", 0)))
        out["sim_seconds"] += float(r.get("sim_seconds", 0.0))
        out["passed"] = out["passed"] and bool(r.get("passed"))
        out["errors"] += list(r.get("errors", []))[:4]
    out.update(extra)
    return out


# --------------------------------------------------------------------------- MixPE
def _mixpe_config(rng):
    from golden.mixpe_config import MIXPE_WEIGHT_BITS, MixPEConfig
    group = rng.choice((32, 64))
    return MixPEConfig(bits=rng.choice(MIXPE_WEIGHT_BITS), group=group,
                       rows=rng.choice((1, 2, 4)), cols=rng.choice((4, 8)),
                       K=group * rng.choice((1, 2)))


#: activation rows of a MixPE workload (M): result words = M x weight tiles
_MIXPE_M = 16


def _mixpe_tiles(cfg, vectors: int) -> tuple[int, int]:
    """(m_tiles, n_tiles) whose result words (one per activation row and weight
    tile) are about `vectors`, with M = _MIXPE_M activation rows."""
    m = _MIXPE_M // cfg.rows
    return m, max(1, -(-vectors // (m * cfg.rows)))


def _mixpe_run(cfg, rng, target, corrupt):
    """The memory-preloaded MixPESystem (fast path) on a random workload that
    fills its memories, plus a stream run (random idle and back-pressure) on an
    eighth of the vectors."""
    from cosim import mixpe
    mmax, nmax = _mixpe_tiles(cfg, BATCH_VECTORS["mixpe"])
    runs, cases = [], []
    fast_vec = target - target // 8
    m, n = _mixpe_tiles(cfg, fast_vec)
    m, n = min(m, mmax), min(n, nmax)
    fast = mixpe.MixPECase(config=cfg, m_tiles=m, n_tiles=n, seed=rng.randrange(1 << 30))
    b = _build(mixpe.system_build, cfg, max_m_tiles=mmax, max_n_tiles=nmax)
    runs.append(mixpe.run_fast(fast, build=b, data_root=DATA_ROOT))
    cases.append({"path": "fast", "M": fast.M, "N": fast.N, "seed": fast.seed})
    m, n = _mixpe_tiles(cfg, max(1, target // 8))
    p_idle, p_stall = _pressure(rng)
    st = mixpe.MixPECase(config=cfg, m_tiles=m, n_tiles=n, seed=rng.randrange(1 << 30),
                         p_idle=p_idle, p_stall=p_stall)
    runs.append(mixpe.run_stream(st, build=_build(mixpe.stream_build, cfg),
                                 corrupt_expected=[(0, 1)] if corrupt else (),
                                 data_root=DATA_ROOT))
    cases.append({"path": "stream", "M": st.M, "N": st.N, "seed": st.seed,
                  "p_idle": p_idle, "p_stall": p_stall})
    return _sum_runs(runs, cases=cases)


# --------------------------------------------------------------------------- LUT
def _lut_config(rng):
    from golden.lut_config import LUTConfig
    cols = rng.choice((8, 16))
    return LUTConfig(rows=rng.choice((1, 2, 4)), cols=cols, lanes=rng.choice((cols // 2, cols)),
                     K=rng.choice((32, 64)), group=32)


def _lut_run(cfg, rng, target, corrupt):
    from golden.lut_config import MODES
    from cosim import lut
    fmt = rng.choice(sorted(MODES))
    m = rng.choice((1, 2, 4))
    n = max(1, -(-target // (m * cfg.cols // cfg.lanes)))  # cols/lanes words per tile
    p_idle, p_stall = _pressure(rng)
    case = lut.LUTCase(config=cfg, mode=MODES[fmt], m_tiles=m, n_tiles=n,
                       seed=rng.randrange(1 << 30), p_idle=p_idle, p_stall=p_stall)
    res = lut.run_stream(case, build=_build(lut.stream_build, cfg),
                         corrupt_expected=[(0, 1)] if corrupt else (), data_root=DATA_ROOT)
    return _sum_runs([res], cases=[{"format": fmt, "M": case.M, "N": case.N,
                                    "seed": case.seed, "p_idle": p_idle,
                                    "p_stall": p_stall}])


# --------------------------------------------------------------------------- sparse DSP
def _sparse_config(rng):
    from golden.sparse_dsp_config import SparseDSPConfig
    L = rng.choice((4, 8))
    return SparseDSPConfig(L=L, group_len=rng.choice((2, 4, L)), K=rng.choice((64, 128)),
                           qgroup=rng.choice((32, 64)))


def _sparse_run(cfg, rng, target, corrupt):
    """Several cases back to back in one run (the chain reconfigured per tile):
    random pattern, precision, group split, pruning method and data."""
    from golden.sparse_dsp_config import MODES, PATTERN_NAMES, TileMode
    from cosim import sparse_dsp
    spans = [s for s in (1, 2, 4, 8) if s <= cfg.n_groups and cfg.n_groups % s == 0]
    cases, info, got = [], [], 0
    while got < target:
        mode = _legal(rng, lambda r: _checked_mode(
            TileMode(pattern=r.choice(PATTERN_NAMES), mode=r.choice(MODES),
                     span=r.choice(spans)), cfg))
        S = mode.segments(cfg)
        ma = rng.choice((1, 2, 4))
        rows = S * max(1, min(64, -(-(target - got) // (ma * S)) // 2 or 1))
        case = sparse_dsp.SparseDSPCase(config=cfg, mode=mode, rows=rows, ma=ma,
                                        seed=rng.randrange(1 << 30),
                                        method=rng.choice(("magnitude", "wanda")))
        cases.append(case)
        got += case.tiles
        info.append({"pattern": mode.pattern, "mode": mode.mode, "span": mode.span,
                     "rows": rows, "Ma": ma, "seed": case.seed, "method": case.method})
    p_idle, p_stall = _pressure(rng)
    seed = rng.randrange(1 << 30)
    res = sparse_dsp.run_cases(cases, build_=_build(sparse_dsp.build, cfg), p_idle=p_idle,
                               p_stall=p_stall, seed=seed,
                               corrupt_expected=[(0, 1)] if corrupt else (),
                               data_root=DATA_ROOT)
    return _sum_runs([res], cases=info, seed=seed, p_idle=p_idle, p_stall=p_stall)


def _checked_mode(mode, cfg):
    mode.check(cfg)
    return mode


# --------------------------------------------------------------------------- PIM
def _pim_config(rng):
    from golden.pim_config import PIM_MODES, PIMConfig
    rows = rng.choice((32, 64))
    return PIMConfig(mode=rng.choice(PIM_MODES), banks=rng.choice((2, 4)), rows=rows,
                     columns=rng.choice((64, 128, 256)), lanes=16,
                     max_job_rows=rng.choice((4, 8, 16)))


def _pim_run(cfg, rng, target, corrupt):
    """Random mixed traffic (read/write bursts and GEMV jobs on the same banks),
    several workloads per run (the bank storage reloaded before each)."""
    from cosim import pim
    sizes = pim.SYSTEM_SIZES
    specs, got = [], 0
    while got < target:
        n_mem = rng.randint(200, sizes["max_mem"] // 2)
        n_jobs = rng.randint(1, min(64, sizes["max_jobs"]))
        spec = {"name": f"soak{len(specs)}", "kind": "mixed", "seed": rng.randrange(1 << 30),
                "n_mem": n_mem, "n_jobs": n_jobs,
                "job_rows": rng.randint(1, min(4, cfg.max_job_rows)),
                "max_burst": rng.randint(1, 8), "write_frac": round(rng.uniform(0.1, 0.7), 3)}
        if corrupt and not specs:
            spec["corrupt_expected"] = [[0, 1]]
        try:
            pim._check_fits(cfg, pim.workload_from_spec(cfg, spec), sizes)
        except ValueError:
            continue
        specs.append(spec)
        got += n_mem  # about: reads are the non-written requests, plus job results
    res = pim.run_workloads(cfg, specs, build=_build(pim.system_build, cfg))
    runs = res.get("runs") or []
    out = _sum_runs([{**r, "vectors": r["reads"] + r["results"],
                      "mismatches": r["read_mismatches"] + r["result_mismatches"],
                      "sim_cycles": r["cycles"]} for r in runs],
                    cases=[dict(s, commands=r.get("cmd_count")) for s, r in zip(specs, runs)])
    if not res.get("passed") or len(runs) != len(specs):
        out["passed"] = False
        out["errors"] += list(res.get("errors", []))[:4] or ["the PIM run did not finish"]
    return out


# --------------------------------------------------------------------------- KV4
def _kv4_config(rng):
    from golden.kv4_attention_config import KV4Config
    hd = rng.choice((32, 64))
    max_t = rng.choice((16, 32, 64))
    return KV4Config(head_dim=hd, lanes=rng.choice((8, 16, 32)), max_t=max_t,
                     heads=rng.choice((1, 2, 3)), rotate=rng.random() < 0.75,
                     recent=rng.choice((0, 4, 8)))


def _kv4_run(cfg, rng, target, corrupt):
    """Decode steps back to back on one unit: each clears the cache, appends T
    random tokens through the hardware quantizer, then decodes one query."""
    from cosim import kv4_attention as kv4
    root = DATA_ROOT / "kv4"
    jobs, info, got = [], [], 0
    chunks = cfg.head_dim // cfg.lanes
    while got < target:
        T = rng.randint(1, cfg.max_t)
        p_idle, p_stall = _pressure(rng)
        case = kv4.KV4Case(config=cfg, T=T, seed=rng.randrange(1 << 30), p_idle=p_idle,
                           p_stall=p_stall, overflow_check=T == cfg.max_t)
        job = kv4.case_job(case, root=root)
        if corrupt and not jobs:
            job["corrupt_expected"] = [[0, 1]]
        jobs.append(job)
        got += T * chunks + cfg.heads * chunks
        info.append({"T": T, "seed": case.seed, "p_idle": p_idle, "p_stall": p_stall})
    seed = rng.randrange(1 << 30)
    res = kv4.run_cases(cfg, jobs, build=_build(kv4.unit_build, cfg), seed=seed)
    return _stream_batch(res, jobs, info, seed)


def _stream_batch(res: dict, jobs: list, info: list, seed: int) -> dict:
    """A stream plan's run_cases result as one batch: failed when the run failed or
    returned fewer case records than it was given jobs."""
    cases = res.get("cases") or []
    out = _sum_runs(cases, cases=info, seed=seed)
    if not res.get("passed") or len(cases) != len(jobs):
        out["passed"] = False
        out["errors"] += list(res.get("errors", []))[:4]
    return out


# --------------------------------------------------------------------------- SFU
def _sfu_config(rng):
    from golden.sfu_config import SFUHWConfig
    lanes = rng.choice((1, 2, 4))
    return SFUHWConfig(lanes=lanes, max_k=rng.choice((64, 128, 256)))


def _sfu_run(cfg, rng, target, corrupt):
    """Calls of every op at random widths (and the edge cases), several cases
    back to back, each with its own idle and back-pressure."""
    from cosim import sfu
    jobs, info, got = [], [], 0
    while got < target:
        p_idle, p_stall = _pressure(rng)
        source = "edge" if rng.random() < 0.1 else "random"
        case = sfu.SFUCase(config=cfg, source=source, seed=rng.randrange(1 << 30),
                           rounds=rng.randint(1, 8), p_idle=p_idle, p_stall=p_stall)
        job = sfu.case_job(case, corrupt_expected=[(0, 1)] if corrupt and not jobs else ())
        jobs.append(job)
        got += len(job["expected"])
        info.append({"source": source, "rounds": case.rounds, "seed": case.seed,
                     "p_idle": p_idle, "p_stall": p_stall, "calls": len(job["cmd"])})
    seed = rng.randrange(1 << 30)
    res = sfu.run_cases(cfg, jobs, build=_build(sfu.unit_build, cfg), seed=seed)
    return _stream_batch(res, jobs, info, seed)


_ADAPTERS = {
    "mixpe": (_mixpe_config, _mixpe_run),
    "lut": (_lut_config, _lut_run),
    "sparse_dsp": (_sparse_config, _sparse_run),
    "pim": (_pim_config, _pim_run),
    "kv4_attention": (_kv4_config, _kv4_run),
    "sfu": (_sfu_config, _sfu_run),
}


# --------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class Batch:
    """One simulator run's worth of random work: everything it does follows from
    (block, config_seed, case_seed, vectors)."""
    block: str
    config_seed: int
    case_seed: int
    vectors: int

    @property
    def replay(self) -> str:
        """The batch's --replay value: config seed, case seed and vectors."""
        return f"{self.config_seed}:{self.case_seed}:{self.vectors}"

    @property
    def command(self) -> str:
        """The command that reruns just this batch."""
        return f"python -m cosim.soak --blocks {self.block} --replay {self.replay}"


def draw_config(block: str, config_seed: int) -> BlockConfig:
    """The legal configuration of `block` that `config_seed` draws."""
    return _legal(random.Random(config_seed), _ADAPTERS[block][0])


def run_batch(batch: Batch, *, corrupt: bool = False, config: BlockConfig | None = None) -> dict:
    """Run one batch; its record (failed, with the exception, when it raised).
    `corrupt` flips one bit of the first expected word (the soak must see it);
    `config` pins the configuration instead of drawing it from the config seed."""
    cfg = config if config is not None else draw_config(batch.block, batch.config_seed)
    t0 = time.perf_counter()
    try:
        r = _ADAPTERS[batch.block][1](cfg, random.Random(batch.case_seed), batch.vectors,
                                      corrupt)
    except Exception as e:  # noqa: BLE001 - a crashed batch is a failed batch, reported
        r = _sum_runs([], errors=[f"{type(e).__name__}: {e}"])
    r.update(block=batch.block, config=cfg.as_dict(), config_seed=batch.config_seed,
             case_seed=batch.case_seed, target_vectors=batch.vectors,
             wall_seconds=round(time.perf_counter() - t0, 2),
             command=batch.command if config is None else None)
    r["passed"] = bool(r["passed"]) and r["mismatches"] == 0 and r["vectors"] > 0
    return r


def _block_summary(block: str, batches: list[dict], wall: float) -> dict:
    sim_cycles = sum(b["sim_cycles"] for b in batches)
    sim_seconds = sum(b["sim_seconds"] for b in batches)
    return {"block": block, "vector": VECTOR_MEANING[block],
            "vectors": sum(b["vectors"] for b in batches),
            "mismatches": sum(b["mismatches"] for b in batches),
            "failed_batches": sum(not b["passed"] for b in batches),
            "batches": len(batches),
            "configs": len({json.dumps(b["config"], sort_keys=True) for b in batches}),
            "sim_cycles": sim_cycles, "sim_seconds": round(sim_seconds, 2),
            "sim_cycles_per_second": round(sim_cycles / sim_seconds) if sim_seconds else 0,
            "wall_seconds": round(wall, 1)}


def soak(*, vectors: int = DEFAULT_VECTORS, blocks: Iterable[str] = BLOCKS, jobs: int = 2,
         seed: int = 1, configs: int = DEFAULT_CONFIGS, replay: str | None = None,
         corrupt: bool = False, report_path: Path | None = REPORT_PATH,
         progress: Callable[[str], None] | None = None, pinned: dict | None = None) -> dict:
    """Soak `blocks` until each has >= `vectors` compared vectors (or run the one
    batch `replay` names). Returns the report (also written to report_path).
    `pinned` ({block: config}) replaces a block's drawn configurations (a test
    then shares the Verilator build of the block's own tests)."""
    pinned = pinned or {}
    started = time.perf_counter()
    say = progress or (lambda s: None)
    sem = _FairSlots(max(1, jobs))
    lock = threading.Lock()
    results: dict[str, list[dict]] = {b: [] for b in blocks}
    walls: dict[str, float] = {}

    def block_loop(block: str) -> None:
        t0 = time.perf_counter()
        walls.pop(block, None)
        if replay is not None:
            cs, ks, n = (int(x) for x in replay.split(":"))
            todo = [Batch(block, cs, ks, n)]
        else:
            todo = None
        cfg_seeds = [_seed(seed, block, "config", i) for i in range(configs)]
        done, i = 0, 0
        while (todo is None and done < vectors) or todo:
            batch = todo.pop(0) if todo else Batch(
                block, cfg_seeds[i % configs], _seed(seed, block, "case", i),
                min(BATCH_VECTORS[block], vectors - done))
            with sem:
                r = run_batch(batch, corrupt=corrupt and i == 0, config=pinned.get(block))
            with lock:
                results[block].append(r)
                if report_path is not None:  # so that a stopped soak leaves its figures
                    _write(report_path, _report(False))
            done += r["vectors"]
            i += 1
            say(f"soak {block}: batch {i} {r['vectors']} vectors, {r['mismatches']} "
                f"mismatches{'' if r['passed'] else ' FAILED'} ({done}/{vectors})")
            if r["vectors"] == 0 and not r["passed"]:
                break  # a batch that compares nothing would loop forever
        walls[block] = time.perf_counter() - t0

    # imported here, once: two threads importing amaranth at the same time can
    # see a half-initialised module
    import importlib
    for m in ("hdl.generate", "quantflow", *(f"cosim.{b}" for b in blocks)):
        importlib.import_module(m)
    def _report(complete: bool) -> dict:
        now = time.perf_counter()
        rep = {
            "seed": seed, "vectors_per_block": vectors, "configs_per_block": configs,
            "jobs": jobs, "replay": replay, "complete": complete,
            "wall_seconds": round(now - started, 1), "load_average": _load(),
            "blocks": [_block_summary(b, results[b], walls.get(b, now - started))
                       for b in blocks],
            "batches": [r for b in blocks for r in results[b]],
        }
        rep["passed"] = complete and all(r["passed"] for r in rep["batches"]) and all(
            s["vectors"] >= (1 if replay else vectors) for s in rep["blocks"])
        return rep

    with ThreadPoolExecutor(max_workers=len(blocks)) as pool:
        for f in [pool.submit(block_loop, b) for b in blocks]:
            f.result()
    report = _report(True)
    if report_path is not None:
        _write(report_path, report)
    return report


def _write(path, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), report)


def _load() -> list[float] | None:
    try:
        import os
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def table(report: dict) -> str:
    """The report's per-block summary as a fixed-width text table."""
    head = ("block", "vectors", "mismatches", "configs", "batches", "sim cycles",
            "cycles/s", "wall s")
    rows = [head] + [(s["block"], f"{s['vectors']:,}", str(s["mismatches"]),
                      str(s["configs"]), str(s["batches"]), f"{s['sim_cycles']:,}",
                      f"{s['sim_cycles_per_second']:,}", f"{s['wall_seconds']:.0f}")
                     for s in report["blocks"]]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))
                     for r in rows)


def _positive(name: str, v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise SoakError(f"{name} must be a positive integer, got {v!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim.soak`: soak the blocks, print the table and each failed batch's replay
    command; returns 0 when all passed."""
    ap = argparse.ArgumentParser(prog="python -m cosim.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", default=str(DEFAULT_VECTORS),
                    help="compared vectors per block (default 10^6)")
    ap.add_argument("--blocks", default=",".join(BLOCKS), help="comma-separated blocks")
    ap.add_argument("--jobs", default="2", help="simulations at a time")
    ap.add_argument("--seed", default="1", help="master seed (every batch seed derives from it)")
    ap.add_argument("--configs", default=str(DEFAULT_CONFIGS),
                    help="random hardware configurations per block (one build each)")
    ap.add_argument("--replay", default=None, metavar="CONFIG_SEED:CASE_SEED:VECTORS",
                    help="rerun one batch of the report (needs one --blocks)")
    ap.add_argument("--inject-mismatch", action="store_true",
                    help="flip a bit of each block's first expected word (checks the checker)")
    ap.add_argument("--report", default=str(REPORT_PATH), help="report path")
    a = ap.parse_args(argv)
    try:
        blocks = [b for b in a.blocks.split(",") if b]
        bad = [b for b in blocks if b not in BLOCKS]
        if bad or not blocks:
            raise SoakError(f"unknown block(s) {bad or a.blocks!r}; "
                            f"choose from {', '.join(BLOCKS)}")
        if a.replay is not None:
            parts = a.replay.split(":")
            if len(blocks) != 1 or len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise SoakError("--replay takes CONFIG_SEED:CASE_SEED:VECTORS (as the report "
                                "prints it) with exactly one --blocks")
        kw = dict(vectors=_positive("--vectors", a.vectors), jobs=_positive("--jobs", a.jobs),
                  seed=_positive("--seed", a.seed), configs=_positive("--configs", a.configs))
    except SoakError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = soak(blocks=blocks, replay=a.replay, corrupt=a.inject_mismatch,
                  report_path=Path(a.report), progress=lambda s: print(s, flush=True), **kw)
    print(table(report))
    print(f"report: {a.report}  (seed {report['seed']}, wall {report['wall_seconds']:.0f} s, "
          f"load {report['load_average']})")
    for r in report["batches"]:
        if not r["passed"]:
            print(f"FAILED {r['block']} batch (config seed {r['config_seed']}, case seed "
                  f"{r['case_seed']}): {r['mismatches']} mismatches; "
                  f"{'; '.join(r['errors'][:3])}\n  rerun: {r['command']}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
