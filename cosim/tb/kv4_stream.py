"""Stream testbench of hdl.kv4_attention.KV4Unit: one simulation runs a list of
cases against one build.

Job fields: config (KV4Config fields), seed (printed), cases: a list of
  {"kind": "decode", "data_dir": ..., "p_idle": .., "p_stall": ..,
   "overflow_check": bool, "corrupt_expected": [[word, xor], ...]}
     clear the cache, append the case's fixed-point K/V tokens through the
     hardware quantizer (cache words compared with the quantflow cache image,
     which golden wrote), optionally append one token too many (expects
     `overflow`, no cache beat, count unchanged), then decode: cmd, query, k, v
     from the image, out compared bit for bit with golden.kv4_attention.
  {"kind": "bad_t", "t": int}: a cmd with T = 0 or T > max_t must raise
     `error` and produce no output.
Result: {"passed", "cases": [per-case dicts], "errors"}; a decode case reports
cycles (cmd transfer to last out transfer), append_cycles, mismatches, vectors
and the received out values.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from cosim.runner import read_job, write_result
from cosim.tb.common import Stopwatch, job_seed
from cosim.tb.streams import Scoreboard, StreamSink, StreamSource, step_cycle

RESET_CYCLES = 3


class _Clock:
    def __init__(self, dut):
        self.dut = dut
        self.cycle = 0

    async def step(self, parts):
        self.cycle += 1
        await step_cycle(self.dut.clk, parts, self.cycle)

    async def settle(self, parts) -> None:
        """Let the edge that transfers the last sampled beats pass, then idle the
        finished phase's streams (outside ReadOnly, so new drivers can be made)."""
        await RisingEdge(self.dut.clk)
        self.cycle += 1
        for p in parts:
            if isinstance(p, StreamSource):
                p.valid.value = 0
                p.offering = False
            else:
                p.ready.value = 0
                p.ready_now = False

    async def run(self, parts, done, limit: int) -> bool:
        end = self.cycle + limit
        while not done():
            if self.cycle >= end:
                return False
            await self.step(parts)
        return True


def load_decode_case(data_dir: str, config):
    """(image, case arrays, expected out words, expected append-path cache words)
    for one decode case: the cache words come from golden's append path on the
    case's fixed-point K/V (4- and 8-bit codes of every token)."""
    import numpy as np
    import torch

    from golden.kv4_attention import append_fixed, kv4_decode
    from quantflow.kv4_attention import load_kv4_cache, pack_cache_words
    from quantflow.pack import pack_words
    img = load_kv4_cache(data_dir, config)
    arr = np.load(f"{data_dir}/case.npz", allow_pickle=False)
    T = int(arr["T"])
    res = kv4_decode(torch.from_numpy(arr["q8"]), arr["C"].tolist(), arr["lsh"].tolist(),
                     img.cache, T, config)
    exp = pack_words(res.out.numpy().reshape(-1), config.out_bits, config.lanes, signed=True)
    full = append_fixed(torch.from_numpy(arr["Xk"][:T]), torch.from_numpy(arr["Xv"][:T]),
                        config, frac_k=img.cache.frac_k, frac_v=img.cache.frac_v)
    return img, arr, exp, pack_cache_words(full, config)


async def _pulse(dut, clk, name):
    getattr(dut, name).value = 1
    await RisingEdge(dut.clk)
    clk.cycle += 1
    getattr(dut, name).value = 0


async def decode_case(dut, clk, case, cfg, rng) -> dict:
    from quantflow.kv4_attention import pack_append_words, pack_cmd_word, pack_query_words
    img, arr, expected, exp_cache = load_decode_case(case["data_dir"], cfg)
    for word_idx, xor_mask in case.get("corrupt_expected", []):
        expected[word_idx] ^= int(xor_mask)
    T = int(arr["T"])
    p_idle, p_stall = float(case.get("p_idle", 0.0)), float(case.get("p_stall", 0.0))
    errors = []
    sub = [random.Random(rng.randrange(1 << 62)) for _ in range(6)]
    n_app = T * cfg.chunks

    # 1. append T tokens through the hardware quantizer
    await _pulse(dut, clk, "cache_clear")
    app = StreamSource(dut, "append", pack_append_words(arr["Xk"][:T], arr["Xv"][:T], cfg),
                       p_idle=p_idle, rng=sub[0])
    csink = StreamSink(dut, "cache", p_stall=p_stall, rng=sub[1])
    ok = await clk.run([app, csink], lambda: len(csink.words) >= n_app,
                       limit=40 * n_app + 1000)
    if not ok:
        errors.append(f"append timed out with {len(csink.words)}/{n_app} cache words")
    app_cycles = (csink.cycles[-1] - app.first_cycle + 1) if csink.cycles else 0
    csb = Scoreboard(exp_cache, describe=lambda i, g, e: (
        f"cache word {i} (token {i // cfg.chunks}, chunk {i % cfg.chunks}): "
        f"got {g:#x} expected {e:#x}"))
    csb.check(csink.words)
    errors += csb.report
    await clk.run([csink], lambda: False, limit=2)
    await clk.settle([app, csink])
    if int(dut.count.value) != T:
        errors.append(f"cache count {int(dut.count.value)} after {T} appends")

    # 2. one token too many (only when the cache is full)
    if case.get("overflow_check"):
        extra = StreamSource(dut, "append", pack_append_words(arr["Xk"][:1], arr["Xv"][:1], cfg),
                             rng=sub[2])
        await clk.run([extra, csink], lambda: extra.done, limit=100 * cfg.chunks)
        await clk.run([csink], lambda: False, limit=4 * cfg.chunks + 8)
        await clk.settle([extra, csink])
        if not extra.done:
            errors.append("the overflowing token's beats were not drained")
        if int(dut.overflow.value) != 1:
            errors.append("append beyond max_t did not raise `overflow`")
        if len(csink.words) != n_app or int(dut.count.value) != T:
            errors.append(f"append beyond max_t wrote the cache (words {len(csink.words)}, "
                          f"count {int(dut.count.value)})")

    # 3. decode
    cmd = StreamSource(dut, "cmd", [pack_cmd_word(T, arr["C"].tolist(), arr["lsh"].tolist(),
                                                  cfg)], p_idle=p_idle, rng=sub[3])
    qry = StreamSource(dut, "query", pack_query_words(arr["q8"], cfg), p_idle=p_idle, rng=sub[4])
    ks = StreamSource(dut, "k", list(img.k_words), p_idle=p_idle, rng=sub[5])
    vs = StreamSource(dut, "v", list(img.v_words), p_idle=p_idle,
                      rng=random.Random(rng.randrange(1 << 62)))
    out = StreamSink(dut, "out", p_stall=p_stall, rng=random.Random(rng.randrange(1 << 62)))
    n_out = cfg.heads * cfg.chunks
    sw = Stopwatch()
    c0 = clk.cycle
    ok = await clk.run([cmd, qry, ks, vs, out], lambda: len(out.words) >= n_out,
                       limit=60 * (len(img.k_words) + n_out) + 2000)
    secs = sw.seconds()
    await clk.settle([cmd, qry, ks, vs, out])
    if not ok:
        errors.append(f"decode timed out with {len(out.words)}/{n_out} out words")
    if int(dut.error.value):
        errors.append("`error` raised on a valid decode")
    sb = Scoreboard(expected, describe=lambda i, g, e: (
        f"out word {i} (head {i // cfg.chunks}, chunk {i % cfg.chunks}): "
        f"got {g:#x} expected {e:#x}"))
    sb.check(out.words)
    errors += sb.report
    cycles = (out.cycles[-1] - cmd.first_cycle + 1) if out.cycles and cmd.first_cycle else 0
    from quantflow.kv4_attention import unpack_out_words
    return {"kind": "decode", "T": T, "passed": sb.passed and csb.passed and not errors,
            "mismatches": sb.mismatches + csb.mismatches, "vectors": sb.compared + csb.compared,
            "cycles": cycles, "append_cycles": app_cycles, "sim_cycles": clk.cycle - c0,
            "sim_seconds": secs, "stall_cycles": out.stall_cycles,
            "out": unpack_out_words(out.words, cfg).tolist() if out.words else [],
            "errors": errors}


async def bad_t_case(dut, clk, case, cfg) -> dict:
    """A cmd with T == 0, T > max_t or an lsh below min_lsh: consumed, `error`."""
    from quantflow.kv4_attention import pack_cmd_word
    T = int(case["t"])
    lsh = int(case.get("lsh", max(8, cfg.min_lsh)))
    cmd = StreamSource(dut, "cmd", [pack_cmd_word(T, [1] * cfg.heads, [lsh] * cfg.heads, cfg)])
    out = StreamSink(dut, "out")
    await clk.run([cmd, out], lambda: cmd.done, limit=50)
    await clk.run([out], lambda: False, limit=10 * cfg.chunks)
    await clk.settle([cmd, out])
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
async def kv4_stream(dut):
    from golden.kv4_attention_config import KV4Config
    job = read_job()
    seed = job_seed(job)
    dut._log.info(f"kv4_stream seed={seed} (rerun with job seed={seed})")
    cfg = KV4Config(**job["config"])
    rng = random.Random(seed)
    Clock(dut.clk, 2, unit="ns").start()
    for n in ("cmd", "query", "k", "v", "append"):
        getattr(dut, f"{n}__valid").value = 0
    dut.out__ready.value = 0
    dut.cache__ready.value = 0
    dut.cache_clear.value = 0
    dut.rst.value = 1
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    clk = _Clock(dut)
    results, errors = [], []
    for i, case in enumerate(job["cases"]):
        try:
            if case["kind"] == "decode":
                r = await decode_case(dut, clk, case, cfg, rng)
            elif case["kind"] == "bad_t":
                r = await bad_t_case(dut, clk, case, cfg)
            else:
                raise ValueError(f"unknown case kind {case['kind']!r}")
        except Exception as e:  # noqa: BLE001 - reported per case, the run continues
            r = {"kind": case.get("kind"), "passed": False, "errors": [f"{type(e).__name__}: {e}"]}
            await RisingEdge(dut.clk)
        results.append(r)
        errors += [f"case {i}: {e}" for e in r["errors"]]
    passed = all(r["passed"] for r in results) and bool(results)
    write_result({"test": "kv4_stream", "passed": passed, "seed": seed, "cases": results,
                  "errors": errors})
    assert passed, "; ".join(errors[:6]) or "no cases"
