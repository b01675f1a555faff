"""Testbench of hdl.pim.PIMSystem: for each workload of the job, load the bank
contents and the two request streams (memory reads/writes; GEMV jobs and
their vectors) through the load port, pulse `start`, await `done` with the
clock in the GPI layer, then read every read response and GEMV result back.

Scoreboard: every read returns the last data written to its word (golden
functional memory) and every GEMV result equals golden.pim.gemv; the
checker's sticky error bits must stay zero (any timing violation or illegal
sequence fails the run).

Job fields: config (PIMConfig fields), workloads (list of workload specs,
cosim.pim.workload_from_spec), system (PIMSystem sizes), optional max_cycles.
Result: passed, runs (one dict per workload: cycles, cmd_count, comp_count,
bus_count, err_bits, read/result mismatches, sim_seconds, ...), errors.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from cosim.runner import read_job, write_result
from cosim.tb.common import Stopwatch
from cosim.tb.system import CLK_PERIOD_NS, PreloadedSystemTB



def _pack(layout, **fields) -> int:
    word = 0
    for name, fld in layout:
        word |= (int(fields[name]) & ((1 << fld.width) - 1)) << fld.offset
    return word


class PIMSystemTB(PreloadedSystemTB):
    def __init__(self, dut, config):
        super().__init__(dut)
        self.cfg = config

    async def run(self, n_mem, n_job, n_vec, max_cycles):
        return await self.start_and_await_done(max_cycles, n_mem=n_mem, n_job=n_job,
                                               n_vec=n_vec)

    async def read_out(self, sel: int, n: int) -> list[int]:
        d = self.dut
        got = []
        for addr in range(n + 1):
            await RisingEdge(d.clk)
            if addr < n:
                d.out_sel.value = sel
                d.out_addr.value = addr
            if addr >= 1:
                await ReadOnly()
                got.append(d.out_data.value.to_unsigned())
        return got


@cocotb.test()
async def pim_system(dut):
    from golden.pim import expected_outputs, pack_vector, pack_word
    from golden.pim_config import RULES, PIMConfig
    from hdl.pim import (LOAD_BANK, LOAD_JOB, LOAD_MEM, LOAD_VEC, OUT_RD, OUT_RES,
                         job_layout, memreq_layout)
    from cosim.pim import workload_from_spec

    job = read_job()
    cfg = PIMConfig(**job["config"])
    Clock(dut.clk, CLK_PERIOD_NS, unit="ns", impl="gpi").start()
    tb = PIMSystemTB(dut, cfg)
    ml, jl = memreq_layout(cfg), job_layout(cfg)
    L = cfg.lanes
    runs, errors = [], []
    for spec in job["workloads"]:
        w = workload_from_spec(cfg, spec)
        reads, results = expected_outputs(cfg, w.storage, w.mem, w.jobs)
        for word_idx, mask in spec.get("corrupt_expected", []):  # error injection
            reads[word_idx] ^= int(mask)
        # Reset per workload: rows left open by the previous one would change the
        # commands (the cycle model starts from closed banks); storage is reloaded.
        await tb.reset()
        sw = Stopwatch()
        S = w.storage.tolist()
        bank_words = [pack_word(S[b][r][c * L:(c + 1) * L], L)
                      for b in range(cfg.banks) for r in range(cfg.rows)
                      for c in range(cfg.col_words)]
        await tb.load(LOAD_BANK, bank_words)
        await tb.load(LOAD_MEM, [_pack(ml, bank=q.bank, row=q.row, col=q.col, write=q.write,
                                       data=q.data) for q in w.mem])
        await tb.load(LOAD_JOB, [_pack(jl, bank=j.bank, row=j.row, nrows=j.nrows)
                                 for j in w.jobs])
        vec = [x for j in w.jobs for x in pack_vector(j.vector, cfg)]
        await tb.load(LOAD_VEC, vec)
        load_seconds = sw.seconds()
        max_cycles = int(job.get("max_cycles") or 40 * (len(w.mem) + len(vec)
                                                       + 80 * w.n_results) + 10_000)
        secs = await tb.run(len(w.mem), len(w.jobs), len(vec), max_cycles)
        cycles = int(dut.cycles.value)
        counters = {k: int(getattr(dut, k).value) for k in
                    ("cmd_count", "comp_count", "bus_count", "err_bits", "n_rd", "n_res")}
        got_reads = await tb.read_out(OUT_RD, len(reads))
        got_res = await tb.read_out(OUT_RES, len(results))
        got_res = [v - (1 << 32) if v >= 1 << 31 else v for v in got_res]
        rd_bad = [i for i, (g, e) in enumerate(zip(got_reads, reads)) if g != e]
        res_bad = [i for i, (g, e) in enumerate(zip(got_res, results)) if g != e]
        run_errors = []
        if rd_bad:
            i = rd_bad[0]
            q = [r for r in w.mem if not r.write][i]
            run_errors.append(f"{spec['name']}: {len(rd_bad)} reads wrong; first: read {i} "
                              f"(bank {q.bank} row {q.row} col {q.col}) got {got_reads[i]:#x} "
                              f"expected {reads[i]:#x}")
        if res_bad:
            i = res_bad[0]
            run_errors.append(f"{spec['name']}: {len(res_bad)} GEMV results wrong; first: "
                              f"result {i} got {got_res[i]} expected {results[i]}")
        if counters["n_rd"] != len(reads) or counters["n_res"] != len(results):
            run_errors.append(f"{spec['name']}: {counters['n_rd']} reads / {counters['n_res']} "
                              f"results delivered, expected {len(reads)} / {len(results)}")
        if counters["err_bits"]:
            names = [r for i, r in enumerate(RULES) if counters["err_bits"] >> i & 1]
            run_errors.append(f"{spec['name']}: checker flagged {names}")
        errors.extend(run_errors)
        runs.append({
            "name": spec["name"], "passed": not run_errors, "cycles": cycles,
            "reads": len(reads), "results": len(results),
            "read_mismatches": len(rd_bad), "result_mismatches": len(res_bad),
            "mem_requests": len(w.mem), "jobs": len(w.jobs),
            "macs": w.n_results * cfg.columns, "sim_seconds": secs,
            "load_seconds": load_seconds, "errors": run_errors, **counters,
        })
        await RisingEdge(dut.clk)
    passed = not errors
    write_result({"test": "system", "passed": passed, "runs": runs, "errors": errors})
    assert passed, "; ".join(errors[:4])
