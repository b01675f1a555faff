"""Co-simulation of the accelerator core (hdl.core) against golden.core.execute.

A case is a list of program runs on one memory image: each run starts the core
with its registers (pos, tokens) and program address, and every instruction's
result must equal the reference executor's bit for bit. The Verilated design is
the core wired to the AXI4 memory model (cosim/axi_mem.v: the read latency a
parameter, the beat gap a run's plusarg), preloaded with `$readmemh`; a Verilog wrapper writes the
core's trace port (every buffer word, token scale, acc beat and retired
instruction) to a file and the memory model logs every write, so Python touches
the simulation only at the start and end of each run.

The mismatch locator (`compare_runs`) rebuilds each instruction's outputs from
the trace and the write log and names the first instruction, output, element and
both values that differ (golden.core.first_mismatch).

Real layers: the layer program of quantflow.program (LOAD the layer input, the
layer's instructions, STORE, HALT) runs on the integer model's (golden.decoder)
input for a real prompt, then on the decode steps' inputs at their positions: the
KV cache the prefill wrote in memory is the one the decode steps attend over.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from golden.core import Step, execute, first_mismatch
from golden.core_config import (INSTR_BYTES, MEM_ALIGN, CoreConfig, Registers, decode, encode,
                                kv_layout, kv_region_bytes, words_to_bytes)

from quantflow.program import sim_core_for as sim_config

from . import runner

if TYPE_CHECKING:
    from quantflow.program import CompiledImage

__all__ = ["CoreRun", "CoreCase", "relocate", "build_case", "real_layer_runs", "real_image", "prompt_ids", "sim_config", "core_verilog",
           "core_build", "run_case", "parse_trace", "rtl_steps", "compare_runs",
           "TB_MODULE", "TOP"]

TB_MODULE = "cosim.tb.core_run"
TOP = "quattro_core_tb"
_AXI_MEM = Path(__file__).with_name("axi_mem.v")


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class CoreRun:
    """One start of the core: the program's words, its registers, and the int32 rows
    its LOAD reads (x_in [tokens, n], or None)."""
    words: tuple
    pos: int
    tokens: int
    x_in: object = None
    name: str = ""
    expect_error: str | None = None    # a refused program: the error status it must set
    expect_pc: int = 0                 # ... at this instruction


@dataclass
class CoreCase:
    """A memory image and the runs on it (laid out by `relocate`)."""
    config: CoreConfig
    memory: bytearray
    runs: list             # dicts: prog (address), pos, tokens, name, words
    expected: list         # per run: list[golden.core.Step]
    memory_after: bytearray
    name: str = ""


def _extents(ins, core: CoreConfig) -> list[tuple[str, int]]:
    """(address field, bytes) that an instruction reads or writes in memory."""
    op, f = ins.op, ins.fields
    D = core.kv4.head_dim
    if op in ("LOAD", "STORE"):
        return [("addr0", core.max_tokens * f["n"] * 4)]
    if op == "RMSNORM":
        return [("addr0", 2 * f["n"])]
    if op == "ROPE":
        return [("addr0", f["ctx"] * D), ("addr1", f["ctx"] * D)]
    if op in ("LINEAR", "LOGITS"):
        G = f["k"] // f["group"]
        return [("addr0", f["n"] * f["k"]), ("addr1", f["n"] * G), ("addr2", f["n"] * G),
                ("addr3", 4 * f["n"] * (core.max_tokens if op == "LOGITS" else 1))]
    if op == "EMBED":
        G = f["n"] // f["group"]
        return [("addr0", core.max_tokens * 4), ("addr1", f["ctx"] * f["n"]),
                ("addr2", f["ctx"] * G * 4)]
    if op == "ARGMAX":
        return [("addr0", core.max_tokens * f["n"] * 4), ("addr1", 4 * f["n"]),
                ("addr2", core.max_tokens * 4)]
    if op in ("KV_APPEND", "ATTEND"):
        return [("addr0", kv_region_bytes(f["ctx"], D, core.kv4.recent))]
    if op in ("HALT", "SYNC", "QUANT", "SWIGLU", "ADD"):
        return []
    raise ValueError(f"{op} is not run by hdl.core yet (hdl.core.IMPLEMENTED)")


#: (opcode, field) of the per-run I/O: inputs and outputs get a slot per run (the
#: same original address maps to the same slot within a run: LOGITS -> ARGMAX).
IO_FIELDS = {("LOAD", "addr0"), ("STORE", "addr0"), ("EMBED", "addr0"),
             ("LOGITS", "addr3"), ("ARGMAX", "addr0"), ("ARGMAX", "addr2")}


def _pad(x: int, a: int = MEM_ALIGN) -> int:
    return -(-x // a) * a


def relocate(runs: list[CoreRun], memory: bytes | bytearray, core: CoreConfig, *,
             slack: int = 256) -> tuple[bytearray, list[tuple[int, list[int]]]]:
    """A compact memory holding only what `runs` touch: a line of -1 words at 0 (what
    the refused programs read), every tensor range an
    instruction reads (merged where ranges overlap, each keeping its offset inside
    the merged range), then each run's program and its x_in rows. Returns
    (memory bytearray, [(program address, words)] per run). Address fields are
    rewritten; `slack` bytes after each range cover the engine's whole-beat reads."""
    src = np.frombuffer(memory, dtype=np.uint8)
    spans = []
    for r in runs:
        if r.expect_error:
            continue
        for w in r.words:
            ins = decode(w)
            for field, n in _extents(ins, core):
                if (ins.op, field) in IO_FIELDS:
                    continue                    # I/O rows get a slot per run below
                spans.append((ins[field], ins[field] + n))
    spans.sort()
    merged = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    # the first line holds -1 words: what the refused programs read (a token id out of
    # every vocabulary)
    new_base, out = {}, MEM_ALIGN
    for lo, hi in merged:
        new_base[lo] = out
        out = _pad(out + hi - lo + slack)
    progs = []
    for r in runs:
        words = []
        io = {}
        if r.expect_error:             # a refused program runs as written
            prog = out
            out = _pad(out + len(r.words) * INSTR_BYTES)
            progs.append((prog, list(r.words), io))
            continue
        for w in r.words:
            ins = decode(w)
            fields = dict(ins.fields)
            for field, n in _extents(ins, core):
                a = fields[field]
                if (ins.op, field) in IO_FIELDS:
                    if a not in io:
                        io[a] = out
                        out = _pad(out + n)
                    fields[field] = io[a]
                    continue
                lo = next(m for m in reversed(merged) if m[0] <= a)
                fields[field] = new_base[lo[0]] + a - lo[0]
            words.append(encode(ins.op, **fields))
        prog = out
        out = _pad(out + len(words) * INSTR_BYTES)
        progs.append((prog, words, io))
    mem = bytearray(_pad(out + slack, 4096))
    mem[:MEM_ALIGN] = b"\xff" * MEM_ALIGN
    for lo, hi in merged:
        b = new_base[lo]
        mem[b:b + hi - lo] = src[lo:hi].tobytes()
    for r, (prog, words, io) in zip(runs, progs):
        mem[prog:prog + len(words) * INSTR_BYTES] = words_to_bytes(words)
        if r.x_in is not None and not r.expect_error:
            load = next(decode(w) for w in words if decode(w).op in ("LOAD", "EMBED"))
            raw = torch.as_tensor(r.x_in).to(torch.int64).numpy().astype("<i4").tobytes()
            a = load["addr0"]
            mem[a:a + len(raw)] = raw
    return mem, [(p, w) for p, w, _ in progs]


def build_case(runs: list[CoreRun], memory: bytes | bytearray, core: CoreConfig, *,
               name: str = "") -> CoreCase:
    """Lay the runs out (relocate) and execute them with the reference executor in
    order on one memory (a STORE of one run is visible to the next)."""
    mem, progs = relocate(runs, memory, core)
    before = bytearray(mem)
    expected, rr = [], []
    for r, (prog, words) in zip(runs, progs):
        if r.expect_error:
            expected.append({"error": r.expect_error, "pc": r.expect_pc,
                             "golden": _golden_refusal(words, mem, core, r)})
        else:
            expected.append(execute(words, mem, core, Registers(pos=r.pos, tokens=r.tokens)))
        rr.append({"prog": prog, "pos": r.pos, "tokens": r.tokens, "name": r.name,
                   "words": [hex(w) for w in words]})
    return CoreCase(config=core, memory=before, runs=rr, expected=expected, memory_after=mem,
                    name=name)


def _golden_refusal(words, mem, core, r) -> str | None:
    """How the reference executor refuses the same program (None: it runs it --
    a limit of this RTL, not of the ISA)."""
    from golden.core import ProgramError
    try:
        execute(words, bytearray(mem), core,
                Registers(pos=r.pos, tokens=min(r.tokens, core.max_tokens)))
    except ProgramError as e:
        if r.tokens > core.max_tokens or r.tokens == 0:
            return "tokens"
        return f"instruction {e.index}: {e}"
    if r.tokens > core.max_tokens or r.tokens == 0:
        return "tokens"
    return None


# --------------------------------------------------------------------------- design
def core_verilog(config: CoreConfig, *, mem_bytes: int, latency: int, gap: int = 0) -> str:
    """The core, the memory model and the wrapper that logs the trace, one text."""
    from hdl.core import Core, trace_layout
    from hdl.generate import verilog
    core_v = verilog(Core(config), "quattro_core")
    lay = trace_layout(config)
    sl = {name: (f.offset, f.width) for name, f in lay}

    def part(name):
        lo, w = sl[name]
        return f"trace[{lo + w - 1}:{lo}]"

    bb = config.beat_bytes
    axi = [n for n in ("arid araddr arlen arsize arburst arvalid arready rid rdata rresp "
                       "rlast rvalid rready").split()]
    axw = [n for n in ("awid awaddr awlen awsize awburst awvalid awready wdata wstrb wlast "
                       "wvalid wready bid bresp bvalid bready").split()]
    wires = "\n".join(f"  wire [{_axi_width(n, bb)}-1:0] {n};" for n in axi + axw)
    core_conn = ",\n".join([f"    .rd__{n}({n})" for n in axi] + [f"    .wr__{n}({n})" for n in axw])
    mem_conn = ",\n".join(f"    .s_{n}({n})" for n in axi + axw)
    tw = lay.size
    wrapper = f"""
module {TOP} (
  input clk, input rst, input start, input [63:0] prog, input [19:0] pos,
  input [15:0] tokens, input dump,
  output busy, output idle, output done, output [7:0] error, output [19:0] err_pc,
  output [31:0] cycles, output [7:0] state
);
{wires}
  wire [{tw - 1}:0] trace;
  wire [7:0] err_w;
  wire done_w;
  // The inputs reach the design through flops: logic that reads a top-level input
  // is evaluated by Verilator on every eval (both clock edges), logic behind a flop
  // once per rising edge. The core sees a start one cycle after the testbench
  // pulses it; done / error read 0 in that cycle (the core still shows the last
  // run's), so a testbench that waits for them after the pulse sees this run's.
  reg rst_q = 1'b1, start_q = 1'b0;
  reg [63:0] prog_q = 64'd0;
  reg [19:0] pos_q = 20'd0;
  reg [15:0] tokens_q = 16'd0;
  always @(posedge clk) begin
    rst_q <= rst; start_q <= start; prog_q <= prog; pos_q <= pos; tokens_q <= tokens;
  end
  quattro_core core (
    .clk(clk), .rst(rst_q), .start(start_q), .prog(prog_q), .pos(pos_q), .tokens(tokens_q),
    .busy(busy), .idle(idle), .done(done_w), .error(err_w), .err_pc(err_pc), .cycles(cycles),
    .trace(trace), .state(state),
{core_conn}
  );
  assign done = done_w & ~start_q;
  assign error = start_q ? 8'd0 : err_w;
  quattro_axi_mem #(.ADDR_BITS(64), .DATA_BYTES({bb}), .MEM_BYTES({mem_bytes}),
                    .LATENCY({latency}), .GAP({gap})) mem (
    .clk(clk), .rst(rst_q), .dump(dump),
{mem_conn}
  );
  // the trace file: one line per record, the run (start pulses) first
  integer tf;
  reg [31:0] run;
  reg [8*256-1:0] tpath;
  initial begin
    run = 0;
    tf = 0;
    if ($value$plusargs("trace=%s", tpath)) tf = $fopen(tpath, "w");
  end
  always @(posedge clk) begin
    if (start_q & idle) run <= run + 1;
    if (tf != 0 && {part('valid')})
      $fwrite(tf, "%0d %0d %0d %0d %0d %0d %h %h %0d\\n", run, {part('kind')}, {part('pc')},
              {part('buf')}, {part('row')}, {part('word')}, {part('mask')}, {part('data')},
              {part('cycle')});
    if (tf != 0 && {part('valid')} && {part('kind')} == 3) $fflush(tf);
  end
endmodule
"""
    return core_v + "\n" + _AXI_MEM.read_text() + wrapper


def _axi_width(name: str, bb: int) -> int:
    return {"araddr": 64, "awaddr": 64, "arlen": 8, "awlen": 8, "arsize": 3, "awsize": 3,
            "arburst": 2, "awburst": 2, "rdata": 8 * bb, "wdata": 8 * bb, "wstrb": bb,
            "rresp": 2, "bresp": 2}.get(name, 1)


@functools.lru_cache(maxsize=8)
def _core_text(config: CoreConfig, mem_bytes: int, latency: int) -> str:
    return core_verilog(config, mem_bytes=mem_bytes, latency=latency)


def core_build(config: CoreConfig, *, mem_bytes: int, latency: int,
               sim: str | None = None) -> runner.Build:
    """The Verilator (or `sim`) build of the core test top: core_verilog with the AXI memory
    model (its GAP is a run's plusarg, so one build serves every bandwidth). The text
    is generated once per process (the whole core elaborates in seconds)."""
    return runner.build(_core_text(config, mem_bytes, latency), TOP, sim=sim)


# --------------------------------------------------------------------------- run
def run_case(case: CoreCase, *, latency: int = 20, gap: int = 0, sim: str | None = None,
             build: runner.Build | None = None, max_cycles: int = 50_000_000,
             peek: tuple = ()) -> dict:
    """Simulate every run of `case`; returns the testbench's result plus the parsed
    `steps` per run and the `mismatch` (None when bit-exact)."""
    from .axi_mem import plusargs, write_init
    mem_bytes = len(case.memory)
    b = build or core_build(case.config, mem_bytes=mem_bytes, latency=latency, sim=sim)
    t0 = time.perf_counter()
    run_dir = Path(b.directory).parent / "runs" / f"core-{time.time_ns()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    init = run_dir / "mem.hex"
    write_init(init, case.memory, case.config.beat_bytes)
    trace, log = run_dir / "trace.txt", run_dir / "mem_log.txt"
    job = {"runs": [{k: r[k] for k in ("prog", "pos", "tokens", "name")} for r in case.runs],
           "max_cycles": max_cycles, "peek": list(peek)}
    res = runner.run(b, test_module=TB_MODULE, job=job, run_dir=run_dir,
                     plusargs=[*plusargs(init=init, log=log, gap=gap), f"+trace={trace}"])
    res["sim_seconds_total"] = time.perf_counter() - t0
    records = parse_trace(trace)
    writes = parse_mem_log(log)
    res["steps"] = rtl_steps(case, records, writes)
    res["instr_cycles"] = [instruction_cycles(records, i + 1) for i in range(len(case.runs))]
    res["model_cycles"] = model_cycles(case, latency) if gap == 0 else None
    res["cycle_diffs"] = [] if res["model_cycles"] is None else [
        (i, pc, got, want) for i, (run_c, want_c) in
        enumerate(zip(res["instr_cycles"], res["model_cycles"]))
        for (pc, got), want in zip(run_c, want_c) if got != want]
    res["mismatch"] = compare_runs(case, res["steps"], res["runs"])
    return res


def model_cycles(case: CoreCase, latency: int) -> list[list[int]]:
    """hdl.core.cycle_model of every run's instructions (memory model at GAP 0)."""
    from hdl.core import cycle_model
    return [[] if isinstance(e, dict) else
            cycle_model([int(w, 16) for w in r["words"]], case.config,
                        Registers(pos=r["pos"], tokens=r["tokens"]), latency=latency)
            for r, e in zip(case.runs, case.expected)]


def parse_trace(path: Path | str) -> list[tuple]:
    """(run, kind, pc, buf, row, word, mask, data, cycle) per trace line."""
    p = Path(path)
    return parse_trace_text(p.read_text()) if p.is_file() else []


def parse_trace_text(text: str) -> list[tuple]:
    """parse_trace of the trace file's text: one int tuple per line."""
    out = []
    for line in text.splitlines():
        run, kind, pc, buf, row, word, mask, dat, cyc = line.split()
        out.append((int(run), int(kind), int(pc), int(buf), int(row), int(word),
                    int(mask, 16), int(dat, 16), int(cyc)))
    return out


def parse_mem_log(path: Path | str) -> list[tuple[int, int, int]]:
    """(address, data, strobes) per write beat of the memory model's log."""
    p = Path(path)
    return parse_mem_log_text(p.read_text()) if p.is_file() else []


def parse_mem_log_text(text: str) -> list[tuple[int, int, int]]:
    """parse_mem_log of the log's text: (address, data, strobes) per line."""
    out = []
    for line in text.splitlines():
        a, d, s = line.split()
        out.append((int(a, 16), int(d, 16), int(s, 16)))
    return out


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


#: The value of an output element no trace record wrote (outside int32: never a result).
UNWRITTEN = 1 << 40


def rtl_steps(case: CoreCase, records: list[tuple],
              writes: list[tuple[int, int, int]]) -> list[list[Step]]:
    """Each run's instructions as golden.core Steps rebuilt from the trace (buffer
    words -> the dst rows an instruction wrote; token scales -> QUANT's mn, L; acc
    beats -> LINEAR's acc) and the memory write log (STORE's rows)."""
    c = case.config
    L = c.sfu.lanes
    bb = c.beat_bytes
    mem = bytearray(case.memory)
    for a, d, s in writes:
        for i in range(bb):
            if s >> i & 1:
                mem[a + i] = d >> (8 * i) & 0xFF
    by_run: dict[int, list] = {}
    for r in records:
        by_run.setdefault(r[0], []).append(r)
    out = []
    for ri, (run, exp) in enumerate(zip(case.runs, case.expected)):
        recs = by_run.get(ri + 1, [])
        if isinstance(exp, dict):
            out.append([])
            continue
        T = run["tokens"]
        words = [int(w, 16) for w in run["words"]]
        retired = [r[2] for r in recs if r[1] == 3]
        steps = []
        for pc in retired:
            ins = decode(words[pc])
            mine = [r for r in recs if r[2] == pc]
            outs = {}
            if ins.op in ("LOAD", "RMSNORM", "QUANT", "ROPE", "SWIGLU", "ADD", "LINEAR",
                          "ATTEND", "EMBED"):
                n = (ins["heads"] * c.kv4.head_dim if ins.op in ("ROPE", "ATTEND")
                     else ins["n"])
                base = ins["col"] if ins.op == "ATTEND" else 0
                # an element the RTL never wrote keeps UNWRITTEN: a mismatch, not a 0
                y = torch.full((T, n), UNWRITTEN, dtype=torch.int64)
                for r in mine:
                    if r[1] != 0:
                        continue
                    _, _, _, _, row, word, mask, dat, _ = r
                    for j in range(L):
                        col = word * L + j - base
                        if mask >> j & 1 and row < T and 0 <= col < n:
                            y[row, col] = _s32(dat >> (32 * j))
                outs["out"] = y
                if ins.op == "QUANT":
                    mn = torch.full((T,), UNWRITTEN, dtype=torch.int64)
                    Ls = torch.zeros(T, dtype=torch.int64)
                    for r in mine:
                        if r[1] == 1 and r[4] < T:
                            v = r[7] & 0xFFFFFFFF
                            mn[r[4]] = v & 0xFFFF
                            Ls[r[4]] = _s32(v) >> 16
                    outs["mn"], outs["L"] = mn, Ls
                if ins.op == "LINEAR":
                    outs = {"acc": _acc_from(mine, T, ins["n"], c.rows), "out": outs["out"]}
            elif ins.op == "ARGMAX":
                outs["out"] = torch.from_numpy(np.frombuffer(
                    mem, "<i4", T, ins["addr2"]).astype(np.int64).copy())
            elif ins.op == "LOGITS":
                outs["acc"] = _acc_from(mine, T, ins["n"], c.rows)
            elif ins.op == "KV_APPEND":
                outs = _kv_planes(mem, ins, c, run["pos"], T)
            elif ins.op == "STORE":
                n = ins["n"]
                a = ins["addr0"]
                outs["out"] = torch.from_numpy(np.frombuffer(
                    mem, "<i4", T * n, a).astype(np.int64)).view(T, n)
            steps.append(Step(pc, ins, outs))
        out.append(steps)
    return out


def _acc_from(records, T: int, n: int, rows: int) -> torch.Tensor:
    """A LINEAR's or LOGITS' accumulators [T, n] from its traced acc beats."""
    acc = torch.full((T, n), UNWRITTEN, dtype=torch.int64)
    for r in records:
        if r[1] == 2:
            for t in range(rows):
                if r[6] >> t & 1 and r[4] + t < T:
                    acc[r[4] + t, r[5]] = _s32(r[7] >> (32 * t))
    return acc


def _kv_planes(mem, ins, c: CoreConfig, pos: int, T: int) -> dict:
    """Tokens pos..pos+T-1 of every cache plane of a KV_APPEND's region, shaped as
    golden.core's KV_APPEND step outputs."""
    out = {}
    for name, (off, per, _) in kv_layout(ins["ctx"], c.kv4.head_dim, c.kv4.recent).items():
        a = ins["addr0"] + off + pos * per
        if name in ("ks", "vs"):
            v = np.frombuffer(mem, "<u4", T, a).astype(np.int64)
        else:
            v = np.frombuffer(mem, np.uint8, T * per, a).astype(np.int64)
            if per > 1:
                v = v.reshape(T, per)
        out[name] = torch.from_numpy(v.copy())
    return out


#: Step outputs the RTL keeps inside a unit (ATTEND's INT8 queries): not compared.
INTERNAL = {"ATTEND": ("q8",)}


def _visible(steps: list[Step]) -> list[Step]:
    return [Step(st.index, st.instr, {k: v for k, v in st.outputs.items()
                                      if k not in INTERNAL.get(st.op, ())})
            for st in steps]


def compare_runs(case: CoreCase, got: list[list[Step]], runs_res: list[dict]) -> dict | None:
    """The first difference over the runs: run, instruction, op, output, element and
    both values (golden.core.first_mismatch), or a run that stopped with an error."""
    if len(runs_res) < len(case.runs):
        return {"run": len(runs_res), "name": case.runs[len(runs_res)]["name"],
                "tensor": "runs", "message": f"only {len(runs_res)} of {len(case.runs)} "
                                             f"runs finished (a run timed out)"}
    for i, (exp, mine, rr) in enumerate(zip(case.expected, got, runs_res)):
        if isinstance(exp, dict):
            if rr.get("error_name") != exp["error"] or rr.get("err_pc") != exp["pc"]:
                return {"run": i, "name": case.runs[i]["name"], "index": exp["pc"],
                        "op": None, "tensor": "error",
                        "message": f"run {i} ({case.runs[i]['name']}): expected error "
                                   f"{exp['error']} at instruction {exp['pc']}, got "
                                   f"{rr.get('error_name')} at {rr.get('err_pc')}"}
            continue
        if rr.get("error"):
            return {"run": i, "name": case.runs[i]["name"], "index": rr.get("err_pc"),
                    "op": None, "tensor": "error",
                    "message": f"the core stopped with error {rr.get('error_name')} at "
                               f"instruction {rr.get('err_pc')}"}
        mm = first_mismatch(_visible(exp), mine)
        if mm is not None:
            return {"run": i, "name": case.runs[i]["name"], "index": mm.index, "op": mm.op,
                    "tensor": mm.tensor, "element": list(mm.element), "expected": mm.expected,
                    "got": mm.got, "message": f"run {i} ({case.runs[i]['name']}): {mm}"}
    return None


def instruction_cycles(records: list[tuple], run: int) -> list[tuple[int, int]]:
    """(pc, cycles) of each retired instruction of run `run` (1-based as traced)."""
    out, prev = [], 0
    for r in records:
        if r[0] == run and r[1] == 3:
            out.append((r[2], r[8] - prev))
            prev = r[8]
    return out



# --------------------------------------------------------------------------- real layers
REAL_MODEL = "smollm2"
#: The plain scheme: the image the integer model and the core share (no rotation,
#: no recent window) -- the KV4 unit's scheme does not reach this RTL's ops.
REAL_SCHEME = "w4a8kv4-g64-plain"
#: Layer 12: the first whose input carries SmolLM2's massive activation.
REAL_LAYER = 12
REAL_PROMPT = "The capital of France is"
DECODE_STEPS = 2


def real_layer_runs(image: CompiledImage, core: CoreConfig, layer: int, ids: list[int], *,
                    decode_steps: int = DECODE_STEPS) -> tuple[list[CoreRun], bytearray]:
    """(runs, memory) of one real layer: the front and MLP parts of its program on
    the integer model's inputs for a prefill of `ids`, then `decode_steps` greedy
    decode steps (the model's own next tokens), each at its position."""
    from golden.decoder import IntegerDecoder
    from quantflow.program import build_memory, compile_program
    prog = compile_program(image, core, layer=layer)
    dec = IntegerDecoder(image.config, image.tensors)
    state = dec.new_state()
    x_in = f"layers.{layer - 1}.residual" if layer else "embed"
    runs, pos, step_ids = [], 0, list(ids)
    for s in range(decode_steps + 1):
        got = {}
        r = dec.step(torch.tensor(step_ids), state,
                     trace=lambda n, t, f: got.__setitem__(n, t))
        T = len(step_ids)
        tag = "prefill" if s == 0 else f"decode{s}"
        runs.append(CoreRun(tuple(prog.words), pos, T, got[x_in], f"layer-{tag}"))
        pos += T
        step_ids = [int(r.next_tokens()[-1])]
    return runs, build_memory(image, prog)


def real_image(model: str = REAL_MODEL, scheme: str = REAL_SCHEME, *,
               log: Callable[[str], object] = print) -> CompiledImage:
    """The compiled image of `model` (compiled once into build/compiled/)."""
    from quantflow.compile import compile_model, compiled_dir
    from quantflow.program import CompiledImage
    d = compiled_dir(model, scheme)
    if not (d / "manifest.json").is_file():
        log(f"no compiled image at {d}: compiling {model} {scheme} (once, ~1 min)")
        compile_model(model, scheme, out=d, progress=False, log=log)
    return CompiledImage.from_dir(d)


def prompt_ids(model: str, prompt: str) -> list[int]:
    """Token ids of `prompt` under `model`'s tokenizer."""
    from quantflow.models.loaders import load_model
    return load_model(model, progress=False).encode(prompt).tolist()


# --------------------------------------------------------------------------- refused programs
def bad_runs(core: CoreConfig) -> list[CoreRun]:
    """Programs the core must refuse, each with the error status and instruction it
    must report (hdl.core.ERRORS): they run after the good runs of a case, so the
    core is also shown to start cleanly after an error."""
    from golden.core_config import FIELDS, OPCODES
    halt = encode("HALT")
    lin = dict(dst=2, src=1, n=16, k=64, group=64, e=0, in_frac=14, out_frac=14)
    unknown = next(c for c in range(1, 256) if c not in OPCODES)

    def run(name, words, err, pc=0, *, pos=0, tokens=1):
        return CoreRun(tuple(words), pos, tokens, None, f"bad-{name}", err, pc)

    return [
        run("opcode", [unknown, halt], "opcode"),
        run("unused-field", [encode("QUANT", dst=1, src=0, n=16) | 1 << FIELDS["k"].lo, halt],
            "field"),
        run("buffer", [encode("QUANT", dst=FIELDS["dst"].max, src=0, n=16), halt], "buffer"),
        run("align", [encode("LOAD", dst=0, n=16, addr0=MEM_ALIGN // 2), halt], "align"),
        run("k", [encode("LINEAR", **{**lin, "k": core.max_k + 64}), halt], "k"),
        run("group", [encode("LINEAR", **{**lin, "group": 16}), halt], "group"),
        run("same-buffer", [encode("LINEAR", **{**lin, "dst": 1}), halt], "same_buffer"),
        run("tokens", [halt], "tokens", tokens=core.max_tokens + 1),
        run("ctx", [encode("ROPE", dst=1, src=0, heads=1, ctx=4), halt], "ctx", pos=4),
        run("memory", [encode("LOAD", dst=0, n=16, addr0=1 << 36), halt], "memory"),
        run("token-id", [encode("EMBED", dst=0, n=64, group=32, ctx=4, addr0=0), halt],
            "ctx"),
        run("lanes", [encode("LOAD", dst=0, n=16, addr0=0),
                      encode("QUANT", dst=1, src=0, n=20), halt], "lanes", 1),
    ]


# --------------------------------------------------------------------------- make sim
#: Random small Llamas co-simulated besides the real layer: (heads, kv_heads, hidden,
#: intermediate) and the scheme -- GQA groups of 2 and 4, head_dim 32 and 64, the default
#: scheme (a rotated residual stream folded into the weights, the KV4 unit with the
#: Hadamard rotation and the 8-bit recent window) and the plain one without either.
RANDOM_CASES = (((4, 2, 128, 192), "w4a8kv4-g64"), ((4, 1, 256, 320), REAL_SCHEME))
SIM_LATENCY = 20


def random_layer_runs(shape: tuple[int, int, int, int], *, seed: int, workdir: Path | str,
                      scheme: str = REAL_SCHEME, prefill: int = 6,
                      decode_steps: int = 1
                      ) -> tuple[CompiledImage, CoreConfig, list[CoreRun], bytearray]:
    """(image, core, runs, memory) of layer 1 of a seeded random Llama of `shape`
    quantized with `scheme`."""
    from quantflow.synthetic import (compiled_image, random_llama_quantized,
                                     small_llama_config, token_ids)
    heads, kv_heads, hidden, inter = shape
    cfg = small_llama_config(heads=heads, kv_heads=kv_heads, hidden=hidden,
                             intermediate=inter)
    ids = token_ids(cfg, 2, 32, seed=seed)
    qm = random_llama_quantized(cfg, scheme, ids, seed=seed)
    img = compiled_image(qm, ids, Path(workdir) / "image", context=48)
    core = sim_config(img.config)
    runs, mem = real_layer_runs(img, core, 1, ids[0, :prefill].tolist(),
                                decode_steps=decode_steps)
    return img, core, runs, mem


def model_runs(image: CompiledImage, core: CoreConfig, ids: list[int], *,
               decode_steps: int = DECODE_STEPS) -> tuple[list[CoreRun], bytearray]:
    """(runs, memory) of the whole-model program (EMBED .. LOGITS, ARGMAX): a prefill of
    `ids`, then greedy decode steps, each fed the integer model's own next token."""
    from golden.decoder import IntegerDecoder
    from quantflow.program import build_memory, compile_program
    prog = compile_program(image, core)
    dec = IntegerDecoder(image.config, image.tensors)
    state = dec.new_state()
    runs, pos, step_ids = [], 0, list(ids)
    for s in range(decode_steps + 1):
        r = dec.step(torch.tensor(step_ids), state)
        tag = "prefill" if s == 0 else f"decode{s}"
        runs.append(CoreRun(tuple(prog.words), pos, len(step_ids),
                            torch.tensor(step_ids).view(-1, 1), f"model-{tag}"))
        pos += len(step_ids)
        step_ids = [int(r.next_tokens()[-1])]
    return runs, build_memory(image, prog)


def random_model_image(shape: tuple[int, int, int, int], *, seed: int, workdir: Path | str,
                       scheme: str = REAL_SCHEME,
                       vocab: int = 400) -> tuple[CompiledImage, torch.Tensor]:
    """(CompiledImage, token ids [2, 32]) of a seeded random two-layer Llama of `shape`
    (heads, kv heads, hidden, intermediate) quantized with `scheme`, calibrated on the
    ids, compiled for a context of 48 into `workdir`/image."""
    from quantflow.synthetic import (compiled_image, random_llama_quantized,
                                     small_llama_config, token_ids)
    heads, kv_heads, hidden, inter = shape
    cfg = small_llama_config(heads=heads, kv_heads=kv_heads, hidden=hidden,
                             intermediate=inter, vocab=vocab)
    ids = token_ids(cfg, 2, 32, seed=seed)
    qm = random_llama_quantized(cfg, scheme, ids, seed=seed)
    return compiled_image(qm, ids, Path(workdir) / "image", context=48), ids


def random_model_runs(shape: tuple[int, int, int, int], *, seed: int, workdir: Path | str,
                      scheme: str = REAL_SCHEME, vocab: int = 400, prefill: int = 6,
                      decode_steps: int = 2
                      ) -> tuple[CompiledImage, CoreConfig, list[CoreRun], bytearray]:
    """(image, core, runs, memory) of the whole program of a seeded random Llama of
    `shape` (two layers; a vocabulary of more than one chunk of the core's buffers)."""
    img, ids = random_model_image(shape, seed=seed, workdir=workdir, scheme=scheme,
                                  vocab=vocab)
    core = sim_config(img.config)
    runs, mem = model_runs(img, core, ids[0, :prefill].tolist(), decode_steps=decode_steps)
    return img, core, runs, mem


def case_record(name: str, case: CoreCase, res: dict, *, layer: str, model: str,
                prompt: str | None = None, latency: int = SIM_LATENCY) -> dict:
    """The make-sim record of one case: bit-exact over every run, the refused
    programs with their status, cycles against hdl.core.cycle_model."""
    from .report import make_record
    good = [r for r, e in zip(case.runs, case.expected) if not isinstance(e, dict)]
    steps = sum(len(e) for e in case.expected if not isinstance(e, dict))
    elems = sum(int(t.numel()) for e in case.expected if not isinstance(e, dict)
                for st in e for t in st.outputs.values())
    runs = res["runs"]
    cycles = sum(r["cycles"] for r, e in zip(runs, case.expected) if not isinstance(e, dict))
    model_c = res.get("model_cycles")
    expected = (sum(sum(m) + 1 for m, e in zip(model_c, case.expected)
                    if not isinstance(e, dict)) if model_c is not None else None)
    macs = 0
    for r in good:
        for w in r["words"]:
            ins = decode(int(w, 16))
            if ins.op == "LINEAR":
                macs += r["tokens"] * ins["n"] * ins["k"]
    mm = res.get("mismatch")
    c = case.config
    return make_record(
        block="core", test=name, config=c.as_dict(), passed=mm is None and not res["cycle_diffs"],
        mismatches=0 if mm is None else 1, vectors=elems, cycles=cycles, macs=macs,
        peak_macs_per_cycle=c.rows * c.beat_bytes, sim_seconds=res.get("sim_seconds", 0.0),
        sim_cycles=res.get("sim_cycles"), expected_cycles=expected, path="memory-model",
        model=model, layer=layer, prompt=prompt, instructions=steps,
        mem_latency=latency, runs=[{k: r[k] for k in ("name", "cycles", "error_name",
                                                      "err_pc")} for r in runs],
        refused=[run["name"] for run, e in zip(case.runs, case.expected)
                 if isinstance(e, dict)],
        first_mismatch=mm, cycle_diffs=res["cycle_diffs"][:8], simulator=res.get("sim"))


#: The memory model's idle cycles between read beats in the stalled run (a third of
#: the port's bandwidth): every unit's valid / ready path under back-pressure.
STALL_GAP = 2


@functools.lru_cache(maxsize=4)
def _random_case(shape, scheme: str, seed: int) -> CoreCase:
    """The case of a seeded random model, made once per process: the full-bandwidth
    and the stalled run share it (the same memory image, so the same build: GAP is a
    plusarg), the refused programs included in both."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="quattro-core-") as tmp:
        img, core, runs, mem = random_model_runs(shape, seed=seed, workdir=tmp, scheme=scheme)
        return build_case(runs + bad_runs(core), mem, core, name="random")


def _random_item(shape, scheme: str, seed: int, sim: str, gap: int = 0) -> dict:
    case = _random_case(shape, scheme, seed)
    res = run_case(case, latency=SIM_LATENCY, gap=gap, sim=sim)
    h, kv, hid, inter = shape
    rec = case_record(f"random-model-h{h}kv{kv}-d{hid}-i{inter}-{scheme}"
                      + (f"-gap{gap}" if gap else ""), case, res,
                      layer="whole model (2 layers, vocabulary 400)",
                      model=f"random Llama seed {seed} {scheme}")
    if gap:
        # stalled: no exact cycle count, but more than at full bandwidth (a run that
        # reads memory at all waits for the gap: equal would mean it was not applied)
        ideal = sum(sum(m) + 1 for m in model_cycles(case, SIM_LATENCY))
        rec.update(memory_gap=gap, ideal_memory_cycles=ideal,
                   stall_ratio=round(rec["cycles"] / ideal, 4))
        rec["passed"] = rec["passed"] and rec["cycles"] > ideal
    return rec


def _real_item(sim: str) -> dict:
    img = real_image()
    core = sim_config(img.config)
    ids = prompt_ids(REAL_MODEL, REAL_PROMPT)
    runs, mem = real_layer_runs(img, core, REAL_LAYER, ids)
    case = build_case(runs, mem, core, name="real")
    res = run_case(case, latency=SIM_LATENCY, sim=sim)
    return case_record(f"{REAL_MODEL}-layer{REAL_LAYER}", case, res,
                       layer=f"layers.{REAL_LAYER}", model=f"{REAL_MODEL} {REAL_SCHEME}",
                       prompt=REAL_PROMPT)


def sim_items(*, sim: str) -> list:
    """make sim's items of the core: the random models (one with a stalled memory) and
    SmolLM2's real layer (the model and its image are prepared on first use, so a fresh
    clone runs the same plan); run on `sim`."""
    from .blocks import SimItem
    # SmolLM2's layer first: the longest chain (its image compiled, a build, the run)
    items = [SimItem(block="core", name=f"core-{REAL_MODEL}-layer{REAL_LAYER}",
                     path="memory-model", config={"model": REAL_MODEL}, macs=0,
                     peak_macs_per_cycle=0, run=lambda: _real_item(sim))]
    for i, (shape, scheme) in enumerate(RANDOM_CASES):
        h, kv, hid, inter = shape
        items.append(SimItem(block="core", name=f"core-random-h{h}kv{kv}-d{hid}",
                             path="memory-model", config={"shape": list(shape), "scheme": scheme},
                             macs=0, peak_macs_per_cycle=0,
                             run=lambda shape=shape, scheme=scheme, i=i:
                             _random_item(shape, scheme, 11 + i, sim)))
        if i == 0:   # right after its full-bandwidth run, whose case and build it reuses
            items.append(SimItem(block="core", name=f"core-random-stalled-gap{STALL_GAP}",
                                 path="memory-model-stalled",
                                 config={"shape": list(shape), "scheme": scheme,
                                         "gap": STALL_GAP},
                                 macs=0, peak_macs_per_cycle=0,
                                 run=lambda shape=shape, scheme=scheme:
                                 _random_item(shape, scheme, 11, sim, gap=STALL_GAP)))
    # SmolLM2 generating through the whole core (minutes) runs on request: cosim.blocks.ON_REQUEST
    return items
