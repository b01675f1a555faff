"""Stream testbench of hdl.kv4_attention.KV4Unit: one simulation runs a list of
cases against one build.

Job fields: config (KV4Config fields), seed (printed), cases: a list of
  {"kind": "decode", "data_dir": ..., "p_idle": .., "p_stall": ..,
   "overflow_check": bool, "busy_cmd": bool, "corrupt_expected": [[word, xor], ...],
   and the words cosim.kv4_attention.load_decode_case computed in the parent (the
   simulator's Python never imports torch): "T", "append", "extra_append",
   "cmd_word", "query", "k", "v", "expected", "expected_cache"}
     clear the cache, append the case's fixed-point K/V tokens through the
     hardware quantizer (cache words compared with golden's append path),
     optionally append one token too many, once right behind
     the last token and once after the append has drained (expects `overflow`, no
     cache beat, count unchanged; without it `overflow` must stay low), then
     decode: cmd, query, k, v from the image, out compared bit for bit with
     golden.kv4_attention; busy_cmd: the decode runs again, its cmd offered while
     the first decode is busy.
  {"kind": "bad_t", "t": int, "lsh": int, "cmd_word": int}: a cmd with T = 0,
     T > max_t or an lsh below min_lsh must raise `error` and produce no output.
Result: {"passed", "cases": [per-case dicts], "errors"}; a decode case reports
cycles (cmd transfer to last out transfer), append_cycles, mismatches, vectors
and the received out words (out_words; cosim.kv4_attention.run_cases unpacks
them into `out`).

Each phase of a case (append, overflow, decode, bad cmd) is one StreamRun over
that phase's streams; the unit keeps its state between phases and cases.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cosim.tb.common import inject_errors, open_job
from cosim.tb.streams import (Scoreboard, StreamRun, StreamSink, StreamSource, run_case_list,
                              run_phase, start_unit, step_cycle)

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

    from golden.kv4_attention_config import KV4Config

#: The unit's input streams (held idle through the reset).
INPUTS = ("cmd", "query", "k", "v", "append")


async def _pulse(dut, name: str) -> None:
    getattr(dut, name).value = 1
    await RisingEdge(dut.clk)
    getattr(dut, name).value = 0


async def _count_transfers(dut, name: str, box: list) -> None:
    """box[0] += 1 for every valid & ready cycle of stream `name` (until cancelled)."""
    valid, ready = getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready")
    while True:
        await RisingEdge(dut.clk)
        await ReadOnly()
        if str(valid.value) == "1" and str(ready.value) == "1":
            box[0] += 1


async def decode_case(dut: HierarchyObject, case: dict, cfg: KV4Config,
                      rng: random.Random) -> dict:
    """One decode case: append the tokens, stream the queries, compare the cache and
    output words with golden's."""
    from hdl.kv4_attention import append_cycles
    expected = inject_errors(list(case["expected"]), case.get("corrupt_expected"))
    T = int(case["T"])
    p_idle, p_stall = float(case.get("p_idle", 0.0)), float(case.get("p_stall", 0.0))
    # one generator per stream, drawn from the job's in case order
    rngs = [random.Random(rng.randrange(1 << 62)) for _ in range(8)]
    n_app = T * cfg.chunks

    # 1. append T tokens through the hardware quantizer; with a full cache the
    # source holds one token more, right behind the last: it waits while the
    # last token is quantized and must be dropped once that one is counted
    await _pulse(dut, "cache_clear")
    ovf = bool(case.get("overflow_check"))
    app_words = case["append"] + (case["extra_append"] if ovf else [])
    app = StreamSource(dut, "append", app_words, p_idle=p_idle, rng=rngs[0])
    csink = StreamSink(dut, "cache", p_stall=p_stall, rng=rngs[1])
    csb = Scoreboard(case["expected_cache"], describe=lambda i, g, e: (
        f"cache word {i} (token {i // cfg.chunks}, chunk {i % cfg.chunks}): "
        f"got {g:#x} expected {e:#x}"))
    limit = 40 * n_app + 1000
    if ovf:
        # one phase until the trailing token is taken too: a phase boundary would
        # leave the stream idle for the cycle in which the cache becomes full
        app_run = StreamRun(dut, [app], csink)
        while (len(csink.words) < n_app or not app.done) and app_run.cycle < limit:
            app_run.cycle += 1
            await step_cycle(dut.clk, [app, csink], app_run.cycle)
        await run_phase(dut, [app], csink, n_app, 0)   # the last edge, then idle
    else:
        app_run, _ = await run_phase(dut, [app], csink, n_app, limit)
    errors = []
    if ovf and int(dut.overflow.value) != 1:
        errors.append("a token right behind the one that fills the cache did not raise "
                      "`overflow`")
    # no cache word beyond the last (a wrongly taken trailing token would take a
    # whole token's quantization to show)
    await run_phase(dut, [], csink, n_app + 1, append_cycles(cfg, 1) + 8 if ovf else 2)
    errors += app_run.check(csb, limit)
    if int(dut.count.value) != T:
        errors.append(f"cache count {int(dut.count.value)} after {T} appends")

    # 2. one token too many (only when the cache is full): drained, nothing written
    if case.get("overflow_check"):
        extra = StreamSource(dut, "append", case["extra_append"], rng=rngs[2])
        # Count the beats on the wire, through an idle window after the phase: a
        # valid left high once the source stops being stepped makes the full cache
        # take bogus beats and misaligns the unit's beat counter for the next case
        # (seen only with >= 16 chunks per head, so counted for every size).
        beats = [0]
        monitor = cocotb.start_soon(_count_transfers(dut, "append", beats))
        await run_phase(dut, [extra], csink, n_app + 1, 104 * cfg.chunks + 8)
        await run_phase(dut, [], csink, n_app + 1, 4 * cfg.chunks + 8)
        monitor.cancel()
        if not extra.done:
            errors.append("the overflowing token's beats were not drained")
        if beats[0] != cfg.chunks:
            errors.append(f"the overflowing token is {cfg.chunks} append beats but "
                          f"{beats[0]} were transferred")
        if int(dut.overflow.value) != 1:
            errors.append("append beyond max_t did not raise `overflow`")
        if len(csink.words) != n_app or int(dut.count.value) != T:
            errors.append(f"append beyond max_t wrote the cache (words {len(csink.words)}, "
                          f"count {int(dut.count.value)})")

    # 3. decode; with busy_cmd the next decode's cmd is offered from the start
    # (legal: the unit holds it off until idle), then that decode runs too
    cmd_word = int(case["cmd_word"])
    busy_cmd = bool(case.get("busy_cmd"))
    cmd = StreamSource(dut, "cmd", [cmd_word] * (2 if busy_cmd else 1), p_idle=p_idle,
                       rng=rngs[3])
    qry = StreamSource(dut, "query", case["query"], p_idle=p_idle, rng=rngs[4])
    ks = StreamSource(dut, "k", case["k"], p_idle=p_idle, rng=rngs[5])
    vs = StreamSource(dut, "v", case["v"], p_idle=p_idle, rng=rngs[6])
    out = StreamSink(dut, "out", p_stall=p_stall, rng=rngs[7])
    sb = Scoreboard(expected, describe=lambda i, g, e: (
        f"out word {i} (head {i // cfg.chunks}, chunk {i % cfg.chunks}): "
        f"got {g:#x} expected {e:#x}"))
    n_out = cfg.heads * cfg.chunks
    limit = 60 * (len(case["k"]) + n_out) + 2000
    run, secs = await run_phase(dut, [cmd, qry, ks, vs], out, n_out, limit)
    if busy_cmd:
        if cmd.idx != 1:
            errors.append(f"{cmd.idx} cmds taken during one decode")
        cmd.words = cmd.words[:1]       # the second one is the next decode's
    errors += run.check(sb, limit)
    if int(dut.error.value):
        errors.append("`error` raised on a valid decode")
    if busy_cmd:
        srcs = [StreamSource(dut, "cmd", [cmd_word], rng=rngs[3]),
                StreamSource(dut, "query", case["query"], rng=rngs[4]),
                StreamSource(dut, "k", case["k"], rng=rngs[5]),
                StreamSource(dut, "v", case["v"], rng=rngs[6])]
        out2 = StreamSink(dut, "out", rng=rngs[7])
        sb2 = Scoreboard(expected, describe=lambda i, g, e: (
            f"second decode: out word {i}: got {g:#x} expected {e:#x}"))
        run2, _ = await run_phase(dut, srcs, out2, n_out, limit)
        errors += run2.check(sb2, limit)
    mm2, n2 = (sb2.mismatches, sb2.compared) if busy_cmd else (0, 0)
    if not ovf and int(dut.overflow.value):
        # a cache filled to max_t or less, with no token beyond, must not flag
        errors.append(f"`overflow` raised after {T} appends (max_t {cfg.max_t})")
    return {"kind": "decode", "T": T, "passed": sb.passed and csb.passed and not errors,
            "mismatches": sb.mismatches + csb.mismatches + mm2,
            "vectors": sb.compared + csb.compared + n2,
            "cycles": run.cycles, "append_cycles": app_run.cycles,
            "sim_cycles": run.cycle + 1,    # and the edge that transfers the last beat
            "sim_seconds": secs, "stall_cycles": out.stall_cycles,
            "out_words": [int(w) for w in out.words],
            "errors": errors}


async def bad_t_case(dut: HierarchyObject, case: dict, cfg: KV4Config) -> dict:
    """A cmd with T == 0, T > max_t or an lsh below min_lsh: consumed, `error`."""
    T, lsh = int(case["t"]), int(case["lsh"])
    cmd = StreamSource(dut, "cmd", [int(case["cmd_word"])])
    out = StreamSink(dut, "out")
    # any out word ends the phase early: it is an error
    await run_phase(dut, [cmd], out, 1, 50 + 10 * cfg.chunks)
    errors = []
    if not cmd.done:
        errors.append("the bad cmd was not consumed")
    if int(dut.error.value) != 1:
        errors.append(f"T={T} (max_t={cfg.max_t}), lsh={lsh} (min {cfg.min_lsh}) did not "
                      f"raise `error`")
    if out.words or int(dut.busy.value):
        errors.append(f"T={T} started a decode")
    return {"kind": "bad_t", "T": T, "passed": not errors, "errors": errors}


@cocotb.test()
async def kv4_attention_stream(dut: HierarchyObject) -> None:
    """cocotb test: every decode and bad-T case of the job on one KV4 unit build, in
    order."""
    from golden.kv4_attention_config import KV4Config
    job, seed = open_job(dut, "kv4_attention_stream")
    cfg = KV4Config(**job["config"])
    rng = random.Random(seed)
    await start_unit(dut, INPUTS, low=("cache__ready", "cache_clear"))

    async def run_case(case):
        if case["kind"] == "decode":
            return await decode_case(dut, case, cfg, rng)
        if case["kind"] == "bad_t":
            return await bad_t_case(dut, case, cfg)
        raise ValueError(f"unknown case kind {case['kind']!r}; use 'decode' or 'bad_t'")

    await run_case_list(dut, "kv4_attention_stream", seed, job["cases"], run_case)
