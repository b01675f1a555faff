"""Mutation testing of the co-simulation testbenches (`make mutate`).

The generated Verilog of each block is mutated one site at a time, and the
block's fast co-simulation plan (the checks of its make-sim plan: bit-exact
against golden, ideal runs' cycles equal to the cycle model, plus a wall-clock
timeout for hangs) is rerun on every mutant. A mutant the plan fails on is
*killed*; one it passes *survived*: either an equivalent mutant (listed in
EQUIVALENT with the reason) or a gap in the testbench.

Mutation classes (sites drawn deterministically from `--seed`, the same number
per class, a class with fewer sites leaving its share to the others):

    arith      `+` <-> `-`
    logic      `&` <-> `|`
    compare    `==` <-> `!=`, `<` <-> `<=`, `>` <-> `>=`
    const      a literal one off (+1 or -1 modulo its width)
    stuck      an output valid/ready of the top module tied to 0 or to 1
    register   a register bypassed: its next value used combinationally
    cond       an `if` condition or a `?:` select inverted

    python -m cosim.mutate [--blocks mixpe,lut] [--per-block 28] [--seed 1] [--jobs 2]
                           [--sim icarus] [--list]

Writes build/mutate/report.json and prints a table. Each mutant is simulated in
its own process (the design's build is replaced inside it, see `_worker`), so a
hang is ended by killing that process group.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quattro_fs import atomic_write_json, build_root

__all__ = ["Mutant", "CLASSES", "PLANS", "EQUIVALENT", "GAPS", "mutation_sites", "mutants",
           "apply", "design_text", "check_parses", "run_mutant", "run_block", "main"]

MUTATE_ROOT = build_root() / "mutate"
REPORT_PATH = MUTATE_ROOT / "report.json"

CLASSES = ("arith", "logic", "compare", "const", "stuck", "register", "cond")

#: binary operator -> its mutation (a class per pair)
_SWAPS = {"+": ("-", "arith"), "-": ("+", "arith"),
          "&": ("|", "logic"), "|": ("&", "logic"),
          "==": ("!=", "compare"), "!=": ("==", "compare"),
          "<": ("<=", "compare"), "<=": ("<", "compare"),
          ">": (">=", "compare"), ">=": (">", "compare")}
_BINOP = re.compile(r"(?<= )(==|!=|<=|>=|<|>|\+|-|&|\|)(?= )")
_ASSIGN = re.compile(r"^(\s*assign\s+)(\S+(?: \[[^\]]*\])?\s*)= (.*);\s*$")
_LITERAL = re.compile(r"(\d+)'([hdb])([0-9a-fA-F_]+)")
_REG_CLOCK = re.compile(r"^(\s*)always @\(posedge (\S+)\)\s*$")
_REG_NEXT = re.compile(r"^(\s*)(\S+(?: \[[^\]]*\])?)\s*<= (.*);\s*$")
_IF = re.compile(r"^(\s*)if \((.*)\) begin\s*$")
_TERNARY = re.compile(r"^(.*?) \? (\S+(?: \[[^\]]*\])?) : (\S+(?: \[[^\]]*\])?)$")
_OUTPUT = re.compile(r"^\s*output\s+(?:\[[^\]]*\]\s*)?(\S+);")
_MODULE = re.compile(r"^module\s+(\S+)\(")


@dataclass(frozen=True)
class Mutant:
    """One mutation: `lines` (0-based) of the Verilog text replaced by `new`."""
    block: str
    index: int
    cls: str
    lines: tuple[int, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    what: str

    @property
    def id(self) -> str:
        """`<block>-<index>-<class>`: the name --only and the report use."""
        return f"{self.block}-{self.index:03d}-{self.cls}"

    def as_dict(self) -> dict:
        """The report's record of this mutant (id, class, line, original and mutated text)."""
        return {"id": self.id, "class": self.cls, "line": self.lines[-1] + 1,
                "original": "\n".join(s.strip() for s in self.old),
                "mutated": "\n".join(s.strip() for s in self.new), "what": self.what}


def _depth0(text: str, pos: int) -> bool:
    depth = 0
    for ch in text[:pos]:
        depth += ch in "([{"
        depth -= ch in ")]}"
    return depth == 0


def _off_by_one(m: re.Match, delta: int) -> str | None:
    width, base, digits = int(m.group(1)), m.group(2), m.group(3).replace("_", "")
    if any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    value = int(digits, {"h": 16, "d": 10, "b": 2}[base])
    return f"{width}'h{(value + delta) % (1 << width):x}"


def mutation_sites(text: str) -> dict[str, list[tuple[tuple[int, ...], tuple[str, ...], str]]]:
    """Every mutation site of a generated Verilog text, by class: (lines, new
    lines, description). Only constructs Amaranth's Yosys backend emits one per
    line are touched (one operator per `assign`, one register per clocked
    `always`), so each mutant changes exactly one operation."""
    lines = text.split("\n")
    sites: dict[str, list] = {c: [] for c in CLASSES}
    outputs: set[str] = set()
    top = None
    module = None
    for i, line in enumerate(lines):
        m = _MODULE.match(line)
        if m:
            module = m.group(1)
            top = top or module     # the top module comes first (Yosys writes it so)
            continue
        if module == top:
            m = _OUTPUT.match(line)
            if m:
                outputs.add(m.group(1))
        if "$auto$" in line:        # the backend's time-zero trigger, not design logic
            continue
        a = _ASSIGN.match(line)
        if a:
            head, lhs, rhs = a.groups()
            lname = lhs.strip()
            ops = [o for o in _BINOP.finditer(rhs) if _depth0(rhs, o.start())]
            if len(ops) == 1:
                o = ops[0]
                swap, cls = _SWAPS[o.group(1)]
                new = f"{head}{lhs}= {rhs[:o.start()]}{swap}{rhs[o.end():]};"
                sites[cls].append(((i,), (new,), f"{lname}: {o.group(1)} -> {swap}"))
            t = _TERNARY.match(rhs)
            if t and not ops:
                new = f"{head}{lhs}= {t.group(1)} ? {t.group(3)} : {t.group(2)};"
                sites["cond"].append(((i,), (new,), f"{lname}: ?: arms swapped"))
            if ops or t:
                for lit in _LITERAL.finditer(rhs):
                    delta = 1 if (i + lit.start()) % 2 else -1
                    rep = _off_by_one(lit, delta)
                    if rep is not None:
                        new = f"{head}{lhs}= {rhs[:lit.start()]}{rep}{rhs[lit.end():]};"
                        sites["const"].append(((i,), (new,), f"{lname}: {lit.group(0)} -> {rep}"))
            if module == top and lname in outputs and lname.endswith(("__valid", "__ready")):
                for v in (0, 1):
                    sites["stuck"].append(((i,), (f"{head}{lhs}= 1'h{v};",),
                                           f"{lname} stuck at {v}"))
            continue
        c = _REG_CLOCK.match(line)
        if c and i + 1 < len(lines):
            n = _REG_NEXT.match(lines[i + 1])
            if n:
                ind, lhs, rhs = n.groups()
                if module == top and lhs in outputs and lhs.endswith(("__valid", "__ready")):
                    for v in (0, 1):
                        sites["stuck"].append(((i + 1,), (f"{ind}{lhs} <= 1'h{v};",),
                                               f"{lhs} stuck at {v}"))
                bypass = (f"{c.group(1)}always @*", f"{ind}{lhs} = {rhs};")
                sites["register"].append(((i, i + 1), bypass, f"register {lhs} bypassed"))
            continue
        f = _IF.match(line)
        if f and f.group(2).strip() != "rst":
            ind, cond = f.groups()
            sites["cond"].append(((i,), (f"{ind}if (!({cond})) begin",),
                                  f"if ({cond.strip()}) inverted"))
            continue
        # reset and default values of a register's next value (`\$12 = 4'h0;`);
        # not memory initialisers (`mem[3] = ...`): a RAM's are overwritten before
        # use, and a ROM's hundreds of entries would crowd out every other site
        s = re.match(r"^(\s*)(\\\$\d+|[A-Za-z_][\w$]*) = (\d+'[hdb][0-9a-fA-F_]+);\s*$", line)
        if s:
            lit = _LITERAL.match(s.group(3))
            rep = _off_by_one(lit, 1) if lit else None
            if rep is not None:
                sites["const"].append(((i,), (f"{s.group(1)}{s.group(2)} = {rep};",),
                                       f"{s.group(2).strip()}: {s.group(3)} -> {rep}"))
    return sites


def mutants(block: str, text: str, *, per_block: int, seed: int) -> list[Mutant]:
    """`per_block` mutants of `text` (fewer if it has fewer sites), an equal
    share per class, sites drawn by a seeded RNG: the same text, seed and count
    give the same mutants."""
    sites = mutation_sites(text)
    lines = text.split("\n")
    rng = {c: random.Random(f"{seed}:{block}:{c}") for c in CLASSES}
    pools = {c: rng[c].sample(sites[c], len(sites[c])) for c in CLASSES}
    chosen: dict[str, list] = {c: [] for c in CLASSES}
    left = per_block
    while left > 0 and any(pools.values()):
        open_ = [c for c in CLASSES if pools[c]]
        share = max(1, left // len(open_))
        for c in open_:
            take = pools[c][:min(share, left)]
            pools[c] = pools[c][len(take):]
            chosen[c] += take
            left -= len(take)
            if left <= 0:
                break
    out = []
    for c in CLASSES:
        for idx, new, what in chosen[c]:
            out.append(Mutant(block=block, index=len(out), cls=c, lines=idx,
                              old=tuple(lines[j] for j in idx), new=new, what=what))
    return out


def apply(text: str, m: Mutant) -> str:
    """`text` with mutant `m` applied (its lines must still read as recorded)."""
    lines = text.split("\n")
    for j, old, new in zip(m.lines, m.old, m.new):
        if lines[j] != old:
            raise ValueError(f"{m.id}: line {j + 1} is not the recorded original; the "
                             f"design changed, so generate the mutants again")
        lines[j] = new
    return "\n".join(lines)


def check_parses(text: str, toplevel: str) -> str | None:
    """None when `text` elaborates under Verilator's linter (errors only), else
    the first error lines."""
    from cosim import runner
    runner.verilator_env()
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / f"{toplevel}.v"
        src.write_text(text)
        p = subprocess.run([str(runner.find_verilator().executable), "--lint-only",
                            "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module",
                            toplevel, str(src)], capture_output=True, text=True, check=False)
    if p.returncode == 0:
        return None
    return "\n".join(ln for ln in p.stderr.splitlines() if "%Error" in ln)[:2000] or p.stderr[-2000:]


# ------------------------------------------------------------------ per-block plans
@dataclass(frozen=True)
class Plan:
    """A block's mutation target and its fast co-simulation checks.

    design: () -> (module name, factory) of the mutated design (hdl.generate)
    runs:   (sim) -> list of (name, () -> list of cosim.report records); each
            call builds the design through cosim.runner.build, which the
            worker redirects to the mutant"""
    block: str
    design: Callable[[], tuple[str, Callable]]
    runs: Callable[[str], list[tuple[str, Callable[[], list[dict]]]]]


def _mixpe_plan() -> Plan:
    from golden.mixpe_config import MixPEConfig
    cfg = MixPEConfig(bits=4, group=32, rows=2, cols=4, K=128)

    def runs(sim):
        from cosim import mixpe
        cases = [mixpe.MixPECase(config=cfg, m_tiles=2, n_tiles=2, seed=11),
                 mixpe.MixPECase(config=cfg, m_tiles=2, n_tiles=3, seed=12)]

        def one(case, ideal):
            b = mixpe.stream_build(cfg, sim=sim)
            res = (mixpe.run_stream(case, build=b, p_idle=0.0, p_stall=0.0) if ideal
                   else mixpe.run_stream(case, build=b))
            return [mixpe.to_record(case, res)]
        return [("ideal", lambda: one(cases[0], True)), ("stream", lambda: one(cases[1], False))]

    def design():
        from hdl.generate import mixpe_factory
        return mixpe_factory(cfg)
    return Plan("mixpe", design, runs)


def _lut_plan() -> Plan:
    from golden.lut_config import LUTConfig, MODES
    cfg = LUTConfig(rows=2, cols=16, lanes=4, K=64, group=32)

    def runs(sim):
        from cosim import lut
        out = []
        # every format once, ideal and back-pressured runs alternating
        for j, name in enumerate(("w1", "w2", "w4", "ternary")):
            ideal = j % 2 == 0
            case = lut.LUTCase(config=cfg, mode=MODES[name], m_tiles=2, n_tiles=2, seed=41 + j)

            def one(case=case, ideal=ideal):
                b = lut.stream_build(cfg, sim=sim)
                res = (lut.run_stream(case, build=b, p_idle=0.0, p_stall=0.0) if ideal
                       else lut.run_stream(case, build=b))
                return [lut.to_record(case, res)]
            out.append((f"{name} {'ideal' if ideal else 'stream'}", one))
        return out

    def design():
        from hdl.generate import lut_factory
        return lut_factory(cfg)
    return Plan("lut", design, runs)


def _sparse_dsp_plan() -> Plan:
    from golden.sparse_dsp_config import SparseDSPConfig
    cfg = SparseDSPConfig(L=8, group_len=4, K=128, qgroup=64)

    def runs(sim):
        from golden.sparse_dsp_config import MODES, PATTERN_NAMES, TileMode
        from cosim import sparse_dsp as sd
        out, seed = [], 100
        # every pattern with both group splits, the modes alternating between them
        for i, p in enumerate(PATTERN_NAMES):
            for j, span in enumerate((1, cfg.n_groups)):
                md = MODES[(i + j) % len(MODES)]
                seed += 1
                mode = TileMode(pattern=p, mode=md, span=span)
                ideal = span == cfg.n_groups
                case = sd.SparseDSPCase(config=cfg, mode=mode, rows=2 * mode.segments(cfg),
                                        ma=2, seed=seed,
                                        method="wanda" if md == "w4a8" else "magnitude")

                def one(case=case, ideal=ideal):
                    b = sd.build(cfg, sim=sim)
                    res = sd.run_cases([case], build_=b, p_idle=0.0 if ideal else None,
                                       p_stall=0.0 if ideal else None)
                    return [sd.to_record(case, res)]
                out.append((f"{p} {md} span{span}", one))
        return out

    def design():
        from hdl.generate import sparse_dsp_factory
        return sparse_dsp_factory(cfg)
    return Plan("sparse_dsp", design, runs)


_PIM_SIZES = {"max_mem": 512, "max_jobs": 32, "max_reads": 512, "max_results": 128}


def _pim_plan() -> Plan:
    from golden.pim_config import PIMConfig
    cfg = PIMConfig(mode="dual", banks=2, rows=16, columns=64, lanes=16, max_job_rows=4)
    specs = [{"name": "mixed_mut", "kind": "mixed", "seed": 31, "n_mem": 200, "n_jobs": 8,
              "job_rows": 3},
             {"name": "subbatch_mut", "kind": "subbatch", "seed": 32, "rounds": 2}]

    def runs(sim):
        from cosim import pim

        def one():
            b = pim.system_build(cfg, sizes=_PIM_SIZES, sim=sim)
            res = pim.run_workloads(cfg, specs, build=b, sizes=_PIM_SIZES)
            recs = [pim.to_record(cfg, s, r, pim.model_for(cfg, s))
                    for s, r in zip(specs, res.get("runs", []))]
            if len(recs) < len(specs) or not res.get("passed"):
                recs.append(_failed("pim", res.get("errors") or ["a workload did not run"]))
            return recs
        return [("mixed+subbatch", one)]

    def design():
        from hdl.generate import design as gen_design
        return gen_design("pim", cfg, kind="system", sizes=_PIM_SIZES)
    return Plan("pim", design, runs)


def _kv4_plan() -> Plan:
    from golden.kv4_attention_config import KV4Config
    cfg = KV4Config(head_dim=32, lanes=16, max_t=24, heads=2)

    def runs(sim):
        from cosim import kv4_attention as kv
        from cosim.flow import first_case

        def one(case, extra=()):
            b = kv.unit_build(cfg, sim=sim)
            res = kv.run_cases(cfg, [kv.case_job(case), *extra], build=b, seed=case.seed)
            return [kv.to_record(case, first_case(res), simulator=res.get("sim"))]
        bad = [{"kind": "bad_t", "t": cfg.max_t + 1}, {"kind": "bad_t", "t": 0}]
        if cfg.min_lsh:
            bad.append({"kind": "bad_t", "t": 1, "lsh": cfg.min_lsh - 1})
        return [("T9 ideal", lambda: one(kv.KV4Case(config=cfg, T=9, seed=11))),
                ("T1 + bad T", lambda: one(kv.KV4Case(config=cfg, T=1, seed=12), bad)),
                ("T13 stream crafted + busy cmd",
                 lambda: one(kv.KV4Case(config=cfg, T=13, seed=13, p_idle=0.2, p_stall=0.3,
                                        crafted=True, busy_cmd=True))),
                # the full cache with tokens beyond, then filled exactly (no token
                # beyond: `overflow` must stay low), then a short decode: one simulation
                ("full + overflow, full, T2",
                 lambda: one(kv.KV4Case(config=cfg, T=cfg.max_t, seed=14, overflow_check=True),
                             [kv.case_job(kv.KV4Case(config=cfg, T=cfg.max_t, seed=15)),
                              kv.case_job(kv.after_overflow(cfg))]))]

    def design():
        from hdl.generate import kv4_factory
        return kv4_factory(cfg)
    return Plan("kv4_attention", design, runs)


def _sfu_plan() -> Plan:
    from golden.sfu_config import SFUHWConfig
    cfg = SFUHWConfig(max_k=64, lanes=2)

    def runs(sim):
        from cosim import sfu
        from cosim.flow import first_case

        def one(case, extra=()):
            b = sfu.unit_build(cfg, sim=sim)
            res = sfu.run_cases(cfg, [sfu.case_job(case), *extra], build=b, seed=case.seed)
            return [sfu.to_record(case, first_case(res), simulator=res.get("sim"))]
        return [("random ideal", lambda: one(sfu.SFUCase(config=cfg, source="random", seed=3))),
                ("edge ideal + refused cmds",
                 lambda: one(sfu.SFUCase(config=cfg, source="edge", seed=5), sfu.bad_jobs(cfg))),
                ("random stream", lambda: one(sfu.SFUCase(config=cfg, source="random", seed=4,
                                                          p_idle=0.2, p_stall=0.3)))]

    def design():
        from hdl.generate import sfu_factory
        return sfu_factory(cfg)
    return Plan("sfu", design, runs)


#: block -> its mutation plan (small configurations: every mutant is rebuilt)
PLANS: dict[str, Callable[[], Plan]] = {
    "mixpe": _mixpe_plan, "lut": _lut_plan, "sparse_dsp": _sparse_dsp_plan,
    "pim": _pim_plan, "kv4_attention": _kv4_plan, "sfu": _sfu_plan,
}

#: Survivors judged equivalent: (block, line, the mutant's `what`) -> why no legal
#: input can observe the change on the plan's configuration.
#: Keyed by the generated names of PLANS' configurations: a change of the HDL that
#: renames them turns the entry back into a survivor to be judged again.
EQUIVALENT: dict[tuple[str, int, str], str] = {
    ("lut", 1115, "\\$172: 2'h3 -> 2'h0"):
        "selects the S3 sum for bits == 3, mutated bits == 0: neither is a weight format "
        "the block accepts (bits_ok: 1, 2, 4; an illegal `bits` raises `error` and no "
        "beat enters), so no valid beat ever carries either value",
    ("lut", 1270, "\\$329: & -> |"):
        "the write enable of the result slot of the last cell of each slice "
        "(r = 1, l = 1) is ORed with `adv` instead of ANDed: extra writes land only "
        "while no result is held (`adv` = ~valid | ready), and the slot's real write "
        "comes last, in the cycle `result.valid` rises; observable only with one cell "
        "per slice (rows * lanes per DQ unit = 1), not a configuration of this plan",
    ("sfu", 2259, "\\$221: + -> -"):
        "one of three copies Yosys makes of rmsnorm's rounded eps term; this one feeds "
        "only the upper clamp test T > 2**53 - 1, unreachable on this configuration with "
        "either rounding: Q < 2**47 (q_bits) and the rounded E < 2**52 (its field), so "
        "T < 2**53 - 1 (the copy that forms T is another site)",
    ("kv4_attention", 4567, "\\$1300: + -> -"):
        "qh is one bit and only bit 0 of qh + 1 is kept: qh + 1 and qh - 1 are equal "
        "modulo 2",
    ("kv4_attention", 6544, "qmax8: 14'h0000 -> 14'h1"):
        "the default of a node of the query's max tree outside the query-shift state "
        "(state 3); its only reader, qe_cur, is written only in that state, where the "
        "node takes the compared magnitude",
    ("kv4_attention", 7194, "q8s15: 15'h0000 -> 15'h1"):
        "the default of a saturated query element outside the query-load state (state 4); "
        "its readers (the query buffer and sumq) are written only in that state, where "
        "it takes the rounded element",
    ("kv4_attention", 11945, "if (\\$1304) inverted"):
        "loads the divider's start remainder in every state but 6 (normalise) instead of "
        "in 6: state 6 is entered from another state, which has already loaded the same "
        "constant, and holds it into the division (state 7)",
    ("kv4_attention", 7792, "bl1: 5'h09 -> 5'ha"):
        "bit length 9 of 240 * d (head 1) needs d < 3, but the running maximum's own "
        "term adds 2**p_frac = 4096 to d, so 240 * d >= 983,040 (bit length >= 20)",
    ("sparse_dsp", 538, "\\$3: < -> <="):
        "the ctrl field clamp f < 1 ? f : 1 made f <= 1 ? f : 1: at the only value where "
        "the two comparisons differ, f = 1, both arms are 1",
    ("pim", 6255, "register last_i bypassed"):
        "the address generator's last inner index is written only in the `start` cycle "
        "and read only in later ones (the advance branch excludes `start`): made a "
        "transparent latch, it holds the same value whenever it is read",
    ("kv4_attention", 16293, "register kcb85 bypassed"):
        "the quantizer's held 8-bit K code of lane 5 (cbuf8): written only in OUT at "
        "qsub == 1 and read only as the cache beat's payload at qsub == qsteps - 1 = 3, "
        "where the beat waits on back-pressure; qsub stays off 1 in between, so the "
        "transparent latch holds the registered value whenever it is read",
    ("kv4_attention", 16317, "register kcb87 bypassed"):
        "as kcb85 (the 8-bit K code of lane 7, written at qsub == 1, read at qsub == 3)",
    ("kv4_attention", 16225, "register vbuf1_4 bypassed"):
        "the quantizer's V input buffer (chunk 1, lane 4): written only in IN with "
        "x.valid at j == 1, where x.ready is 1 (every write is a transfer), and read only "
        "in the later states (MINMAX, OUT); made a transparent latch it holds the same "
        "value whenever it is read",
    ("pim", 2214, "\\$522: | -> &"):
        "a term of the checker's bus-conflict flag on the issued pair (the memory "
        "transfer's own slot in the PIM transfer's test); the mutation can only clear "
        "the flag, and in the system build the flag is always 0: the scheduler issues "
        "only pairs the same channel rules pass (its PIM path checks its candidate "
        "together with the memory path's issued command against the same busy mask); "
        "only the raw channel (commands from outside) could raise it, another design",
    ("pim", 2220, "\\$528: | -> &"):
        "as pim 2214: the PIM transfer's test against (busy | memory slot) made "
        "(busy & memory slot), a subset, so again the always-0 checker flag can only "
        "be cleared",
    ("pim", 2050, "\\$350: ?: arms swapped"):
        "the PIM path's col_trcd term for the job's bank: the memory RD seen as "
        "addressing the job's bank when it addresses the other one; the term is "
        "(that RD) & ~m_trcd(job bank), and at any cycle a memory RD issues every "
        "bank's last memory ACT is >= tRCD old: the memory path is in order and issues "
        "only the head request's command (or a PRE), so after an ACT for the head no "
        "RD issues until the head's own, >= tRCD later (PACTs have their own timer)",
    ("pim", 2295, "\\$601: + -> -"):
        "the copy of older(age2) that a single activation shifts into age3 gives "
        "age2 - 1 for age2 + 1 (age2's own count is another copy); saturated age2 = "
        "tFAW takes the other arm, so it differs only if age2 < tFAW at an activation, "
        "i.e. four activations within tFAW = 30 cycles, which this 2-bank channel never "
        "issues: three consecutive memory ACTs span >= tRAS + tRP = 48 (two share a "
        "bank), PACTs come one job at a time >= tRAS + 1 + the next job's GWRs apart "
        "(> 30), so at most 2 + 1 activations fall in any 30 cycles (measured too: at "
        "most 3 over 152 golden schedules, PACTs >= 44 apart)",
    ("sfu", 2396, "register SK bypassed"):
        "SK (rmsnorm's sqrt(k) from the cmd) is written only in the cycle a cmd is "
        "taken and read only in later states: made a transparent latch, it holds the "
        "same value whenever it is read",
}


#: Survivors that are test gaps still open: (block, line, `what`) -> what input
#: would observe the change, and why the plan has none.
GAPS: dict[tuple[str, int, str], str] = {
    ("sfu", 2284, "\\$248: + -> -"):
        "the first Newton step's rounding (+2**30 before >> 31) made -2**30: the iterate "
        "moves by one unit, which the next Newton step largely corrects (quadratic "
        "convergence); visible only where the final gain sits on a rounding boundary, "
        "and no vector of the plan (random, edge, a large-input rmsnorm) is one",
    ("kv4_attention", 3653, "\\$229: + -> -"):
        "the V accumulator's rescale on a new running maximum (head 1, lane 2): the "
        "round-half-up (acc + 2**(sh-1)) >> sh made (acc - 2**(sh-1)) >> sh, one unit "
        "lower whenever sh > 0; the 48-bit accumulator carries far more fraction bits "
        "than the 21-bit out word, so one unit most likely reaches the output only on a "
        "rounding boundary of the final normalisation, which no vector of this plan "
        "hits (as sfu's Newton-step rounding); not confirmed by a directed vector",
    ("mixpe", 1237, "\\$51: & -> |"):
        "the DQ lane's write enable of cell 5 asserted also for an earlier group's (or a "
        "stale) E3 stage: the extra writes are overwritten by the last group's before "
        "`result.valid` rises unless one lands while a result is held; not analysed "
        "further",
    ("mixpe", 1955, "register Pg bypassed"):
        "the finished group sum is visible one cycle early (in the group's last k): only a "
        "DQ walk still reading the previous group's Pg in that cycle sees it, which needs "
        "a walk as long as the group (e.g. 4 x 16 at group 32, two time-shared lanes); "
        "this plan's 2 x 4 at group 32 leaves 24 cycles of slack (not rerun on such a "
        "configuration)",
}


def _failed(block: str, errors: list[str]) -> dict:
    return {"block": block, "test": "run", "passed": False, "errors": list(errors)}


def verdict(rec: dict) -> list[str]:
    """make sim's verdict on a record: [] when it passes (bit-exact, and the RTL's
    cycles equal the analytic model where the record carries one)."""
    errs = []
    if not rec.get("passed") or rec.get("mismatches", 0):
        errs += [str(e) for e in rec.get("errors", [])][:3] or ["failed"]
        if rec.get("mismatches"):
            errs.insert(0, f"{rec['mismatches']} mismatching words")
    exp = rec.get("expected_cycles")
    if exp is not None and rec.get("cycles") != exp:
        errs.append(f"cycle model: RTL took {rec.get('cycles')} cycles, the model says {exp}")
    return errs


def design_text(block: str) -> tuple[str, str]:
    """(module name, Verilog text) of the block's mutation target."""
    from hdl.generate import verilog
    name, factory = PLANS[block]().design()
    return name, verilog(factory(), name)


# ------------------------------------------------------------------ running mutants
def _worker(job_path: Path) -> int:
    """Run one block plan on one design (the original when `mutant` is null) in
    this process; writes {killed, by, reason, seconds} to the job's result."""
    job = json.loads(job_path.read_text())
    from cosim import runner
    block, sim = job["block"], job["sim"]
    toplevel, original = design_text(block)
    text = original
    if job.get("mutant"):
        text = Path(job["mutant"]).read_text()
    real_build = runner.build
    builds = Path(job["build_root"])

    def build(verilog, top, **kw):
        if top == toplevel:
            if verilog != original:
                raise runner.CosimError(f"the plan built another {top} than the mutated one")
            kw["root"] = builds
            return real_build(text, top, **kw)
        return real_build(verilog, top, **kw)

    # every block module reaches the simulator through runner.build at call time
    runner.build = build
    t0 = time.perf_counter()
    result = {"killed": False, "by": None, "reason": [], "runs": 0}
    try:
        real_build(text, toplevel, sim=sim, root=builds)
    except runner.CosimError as e:
        # a mutant the simulator cannot compile is no test of the testbench
        result.update(invalid=True, reason=[str(e)[:600]])
        Path(job["result"]).write_text(json.dumps(result))
        return 0
    for name, run in PLANS[block]().runs(sim)[:job.get("max_runs")]:
        result["runs"] += 1
        try:
            recs = run()
            errs = [e for r in recs for e in verdict(r)]
            # what the run measured: the same figures under either simulator
            result.setdefault("measured", {})[name] = [
                {k: r.get(k) for k in ("test", "vectors", "cycles", "expected_cycles")}
                for r in recs]
        except Exception as e:     # noqa: BLE001 (a mutant may break the build or the TB)
            errs = [f"{type(e).__name__}: {str(e)[:600]}"]
        if errs:
            result.update(killed=True, by=name, reason=errs[:3])
            break
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def run_mutant(block: str, text: str | None, *, sim: str, timeout: float,
               workdir: Path, max_runs: int | None = None) -> dict:
    """The plan of `block` (its first `max_runs` runs when given) on Verilog
    `text` (None: the unmutated design) in a worker process; {killed, by,
    reason, seconds}, killed by "timeout" when the worker outlives `timeout`
    seconds, {invalid: True} when the simulator cannot compile `text`."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = {"block": block, "sim": sim, "result": str(workdir / "result.json"),
           "build_root": str(workdir / "builds"), "mutant": None, "max_runs": max_runs}
    if text is not None:
        (workdir / "mutant.v").write_text(text)
        job["mutant"] = str(workdir / "mutant.v")
    (workdir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "QUATTRO_PROGRESS": "0"}
    t0 = time.perf_counter()
    with open(workdir / "worker.log", "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "cosim.mutate", "--worker",
                              str(workdir / "job.json")], stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return {"killed": True, "by": "timeout", "seconds": round(time.perf_counter() - t0, 1),
                    "reason": [f"no verdict within {timeout:.0f} s (a hang)"]}
    res_path = workdir / "result.json"
    if not res_path.is_file():
        tail = (workdir / "worker.log").read_text(errors="replace")[-1500:]
        return {"killed": True, "by": "crash", "seconds": round(time.perf_counter() - t0, 1),
                "reason": [f"the worker wrote no result (exit {p.returncode}): {tail}"]}
    return json.loads(res_path.read_text())


def run_block(block: str, *, per_block: int, seed: int, jobs: int, sim: str,
              only: list[str] | None = None,
              log: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict:
    """Baseline, then every mutant of `block` (those of `only`, mutant ids, when
    given); the block's report entry."""
    toplevel, text = design_text(block)
    ms = mutants(block, text, per_block=per_block, seed=seed)
    if only:
        ms = [m for m in ms if m.id in only]
    root = MUTATE_ROOT / "runs" / block
    for d in ([root / m.id for m in ms] + [root / "baseline"]) if only else [root]:
        shutil.rmtree(d, ignore_errors=True)
    base = run_mutant(block, None, sim=sim, timeout=1800, workdir=root / "baseline")
    entry = {"block": block, "toplevel": toplevel, "sim": sim, "seed": seed,
             "design_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
             "sites": {c: len(v) for c, v in mutation_sites(text).items()},
             "baseline": base, "mutants": []}
    if base.get("killed"):
        log(f"{block}: the unmutated design FAILS its plan ({base.get('by')}: "
            f"{base.get('reason')}); mutants not run")
        entry["error"] = "baseline failed"
        return entry
    timeout = max(60.0, 4 * base["seconds"] + 30)
    log(f"{block}: baseline passes in {base['seconds']} s; {len(ms)} mutants, "
        f"timeout {timeout:.0f} s each")

    def one(m: Mutant) -> dict:
        mtext = apply(text, m)
        r = run_mutant(block, mtext, sim=sim, timeout=timeout, workdir=root / m.id)
        shutil.rmtree(root / m.id / "builds", ignore_errors=True)
        rec = {**m.as_dict(), **{k: r.get(k) for k in ("killed", "by", "reason", "seconds")}}
        if r.get("invalid"):
            rec.update(status="invalid", why="does not compile")
        else:
            rec["status"] = "killed" if r.get("killed") else "survived"
        _judge(block, rec)
        log(f"  {m.id:28s} {rec['status']:10s} {m.what}"
            + (f"  [{r.get('by')}]" if r.get("killed") else ""))
        return rec

    with cf.ThreadPoolExecutor(max_workers=jobs) as ex:
        entry["mutants"] = list(ex.map(one, ms))
    return _score(entry)


def _judge(block: str, rec: dict) -> None:
    """A surviving mutant's status and reason from EQUIVALENT (else a test gap)."""
    if rec["status"] in ("survived", "equivalent"):
        why = EQUIVALENT.get((block, rec["line"], rec["what"]))
        rec["status"] = "equivalent" if why else "survived"
        gap = GAPS.get((block, rec["line"], rec["what"]))
        rec["why"] = why or (f"test gap: {gap}" if gap else "test gap")


def rejudge() -> list[dict]:
    """The stored report with its survivors judged again against EQUIVALENT
    (no simulation: the verdicts stand, only their classification changes)."""
    entries = json.loads(REPORT_PATH.read_text())["blocks"]
    for e in entries:
        for m in e.get("mutants", []):
            _judge(e["block"], m)
        if "mutants" in e and "error" not in e:
            _score(e)
    atomic_write_json(REPORT_PATH, {"blocks": entries})
    return entries


def _score(entry: dict) -> dict:
    ms = entry["mutants"]
    killed = sum(m["status"] == "killed" for m in ms)
    equiv = sum(m["status"] == "equivalent" for m in ms)
    survived = sum(m["status"] == "survived" for m in ms)
    invalid = sum(m["status"] == "invalid" for m in ms)
    # equivalent mutants cannot be caught and invalid ones test nothing: neither counts
    entry.update(total=len(ms), killed=killed, equivalent=equiv, survived=survived,
                 invalid=invalid, score=round(killed / max(1, killed + survived), 4))
    return entry


def format_table(entries: list[dict]) -> str:
    """The per-block score table (mutants, killed, survived, equivalent, score) as text."""
    out = [f"{'block':14s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'equiv':>5s} "
           f"{'score':>6s}"]
    for e in entries:
        if "total" not in e:
            out.append(f"{e['block']:14s} {e.get('error', 'not run')}")
            continue
        out.append(f"{e['block']:14s} {e['total']:7d} {e['killed']:6d} {e['survived']:8d} "
                   f"{e['equivalent']:5d} {100 * e['score']:5.1f}%")
    for e in entries:
        for m in e.get("mutants", []):
            if m["status"] != "killed":
                out.append(f"  {m['id']}: {m['what']} (line {m['line']}) -- "
                           f"{m['status']}: {m['why']}")
    return "\n".join(out)


def _stored() -> list[dict]:
    if REPORT_PATH.is_file():
        try:
            return json.loads(REPORT_PATH.read_text())["blocks"]
        except (ValueError, KeyError):
            pass
    return []


def _rerun_into(entry: dict) -> dict:
    """The stored entry of entry's block with entry's (rerun) mutants replacing
    theirs; each keeps its first verdict as `first_status`."""
    old = next((e for e in _stored() if e["block"] == entry["block"]), None)
    if old is None or old.get("seed") != entry["seed"] or "error" in entry:
        return entry
    new = {m["id"]: m for m in entry["mutants"]}
    merged = []
    for m in old["mutants"]:
        if m["id"] in new:
            r = new[m["id"]]
            r["first_status"] = m.get("first_status", m["status"])
            merged.append(r)
        else:
            merged.append(m)
    return _score({**old, "mutants": merged, "baseline": entry["baseline"],
                   "design_sha256": entry["design_sha256"]})


def _merge_report(entries: list[dict]) -> None:
    old = _stored()
    done = {e["block"] for e in entries}
    blocks = [e for e in old if e.get("block") not in done] + entries
    atomic_write_json(REPORT_PATH, {"blocks": blocks})


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim.mutate`: run the selected blocks' mutants, print the table and
    write the report (scores are reported, not enforced); status 2 on a bad argument or
    a missing simulator."""
    ap = argparse.ArgumentParser(prog="python -m cosim.mutate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default=",".join(PLANS),
                    help=f"comma-separated blocks (default: all of {', '.join(PLANS)})")
    ap.add_argument("--per-block", type=int, default=28, help="mutants per block (default 28)")
    ap.add_argument("--seed", type=int, default=1, help="site-drawing seed (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants simulated at once (default 2)")
    ap.add_argument("--sim", default="icarus", help="icarus (default: builds in seconds) "
                    "or verilator")
    ap.add_argument("--only", help="comma-separated mutant ids to run again (their verdicts "
                    "replace the stored ones, the first kept as first_status)")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--rejudge", action="store_true",
                    help="judge the stored report's survivors again (EQUIVALENT), run nothing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(Path(args.worker))
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    unknown = [b for b in blocks if b not in PLANS]
    if unknown:
        print(f"unknown block(s) {unknown}; choose from {', '.join(PLANS)}", file=sys.stderr)
        return 2
    if args.per_block < 1 or args.jobs < 1:
        print("--per-block and --jobs must be >= 1", file=sys.stderr)
        return 2
    if args.rejudge:
        if not REPORT_PATH.is_file():
            print(f"no report at {REPORT_PATH}: run `make mutate` first", file=sys.stderr)
            return 2
        print(format_table(rejudge()))
        return 0
    if args.list:
        for b in blocks:
            _, text = design_text(b)
            for m in mutants(b, text, per_block=args.per_block, seed=args.seed):
                d = m.as_dict()
                print(f"{d['id']:28s} line {d['line']:5d}  {d['what']}")
        return 0
    from cosim import runner
    try:
        sim = runner.select_simulator(args.sim)
    except runner.CosimError as e:
        print(f"cosim.mutate: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    entries = []
    for b in blocks:
        only = [m for m in args.only.split(",") if m.startswith(b + "-")] if args.only else None
        if args.only and not only:
            continue
        e = run_block(b, per_block=args.per_block, seed=args.seed, jobs=args.jobs, sim=sim,
                      only=only)
        entries.append(_rerun_into(e) if only else e)
        _merge_report(entries)
    print()
    print(format_table(entries))
    print(f"\n{time.perf_counter() - t0:.0f} s; report: {REPORT_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
