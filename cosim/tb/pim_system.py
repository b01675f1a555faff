"""Testbench of hdl.pim.PIMSystem: for each workload of the job, load the bank
contents and the two request streams (memory reads/writes; GEMV jobs and
their vectors) through the load port, pulse `start`, await `done` with the
clock in the GPI layer, then read every read response and GEMV result back.

Scoreboard: every read returns the last data written to its word (golden
functional memory) and every GEMV result equals golden.pim.gemv; the
checker's sticky error bits must stay zero (any timing violation or illegal
sequence fails the run). The loaded words are quantflow.pim's.

Job fields: config (PIMConfig fields), workloads (list of workload specs,
cosim.pim.workload_from_spec), images (per workload, cosim.pim.workload_words:
its bank/mem/job/vec words, expected reads and results, read_addrs, n_results;
computed by the caller, so that this Python never imports torch), system
(PIMSystem sizes), optional max_cycles.
Result: passed, runs (one dict per workload: cycles, cmd_count, comp_count,
bus_count, err_bits, read/result mismatches, sim_seconds, ...), errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cosim.runner import read_job, write_result
from cosim.tb.common import Stopwatch, inject_errors, start_clock
from cosim.tb.system import PreloadedSystemTB

if TYPE_CHECKING:
    from cocotb.handle import HierarchyObject

    from golden.pim_config import PIMConfig


class PIMSystemTB(PreloadedSystemTB):
    """Drives PIMSystem: load its request memories, run, read its response memories back."""
    def __init__(self, dut: HierarchyObject, config: PIMConfig):
        super().__init__(dut)
        self.cfg = config

    async def run(self, n_mem: int, n_job: int, n_vec: int, max_cycles: int) -> float:
        """Run with n_mem requests, n_job jobs and n_vec vector words loaded; returns the run's
        wall seconds."""
        return await self.start_and_await_done(max_cycles, n_mem=n_mem, n_job=n_job,
                                               n_vec=n_vec)

    async def read_out(self, sel: int, n: int) -> list[int]:
        """The first n words of the response memory selected by `sel`."""
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


def _run_errors(name, read_addrs, expected, got, counters
                ) -> tuple[list[str], list[int], list[int]]:
    """(errors, bad read indices, bad result indices) of one workload's run."""
    from golden.pim_config import RULES
    (reads, results), (got_reads, got_res) = expected, got
    rd_bad = [i for i, (g, e) in enumerate(zip(got_reads, reads)) if g != e]
    res_bad = [i for i, (g, e) in enumerate(zip(got_res, results)) if g != e]
    errors = []
    if rd_bad:
        i = rd_bad[0]
        bank, row, col = read_addrs[i]
        errors.append(f"{name}: {len(rd_bad)} reads wrong; first: read {i} "
                      f"(bank {bank} row {row} col {col}) got {got_reads[i]:#x} "
                      f"expected {reads[i]:#x}")
    if res_bad:
        i = res_bad[0]
        errors.append(f"{name}: {len(res_bad)} GEMV results wrong; first: "
                      f"result {i} got {got_res[i]} expected {results[i]}")
    if counters["n_rd"] != len(reads) or counters["n_res"] != len(results):
        errors.append(f"{name}: {counters['n_rd']} reads / {counters['n_res']} "
                      f"results delivered, expected {len(reads)} / {len(results)}")
    if counters["err_bits"]:
        names = [r for i, r in enumerate(RULES) if counters["err_bits"] >> i & 1]
        errors.append(f"{name}: checker flagged {names}")
    return errors, rd_bad, res_bad


async def _run_workload(tb, cfg, spec: dict, image: dict, job: dict) -> dict:
    """Load, run and check one workload (`image`: its words and expected outputs);
    its entry of the result's `runs`."""
    from hdl.pim import LOAD_BANK, LOAD_JOB, LOAD_MEM, LOAD_VEC, OUT_RD, OUT_RES

    dut = tb.dut
    mem, jobs, vec, results = image["mem"], image["job"], image["vec"], image["results"]
    reads = inject_errors(list(image["reads"]), spec.get("corrupt_expected"))
    # Reset per workload: rows left open by the previous one would change the
    # commands (the cycle model starts from closed banks); storage is reloaded.
    await tb.reset()
    sw = Stopwatch()
    await tb.load(LOAD_BANK, image["bank"])
    await tb.load(LOAD_MEM, mem)
    await tb.load(LOAD_JOB, jobs)
    await tb.load(LOAD_VEC, vec)
    load_seconds = sw.seconds()
    n_results = int(image["n_results"])
    max_cycles = int(job.get("max_cycles") or 40 * (len(mem) + len(vec)
                                                   + 80 * n_results) + 10_000)
    secs = await tb.run(len(mem), len(jobs), len(vec), max_cycles)
    cycles = int(dut.cycles.value)
    counters = {k: int(getattr(dut, k).value) for k in
                ("cmd_count", "comp_count", "bus_count", "err_bits", "n_rd", "n_res")}
    got_reads = await tb.read_out(OUT_RD, len(reads))
    got_res = await tb.read_out(OUT_RES, len(results))
    got_res = [v - (1 << 32) if v >= 1 << 31 else v for v in got_res]
    errors, rd_bad, res_bad = _run_errors(spec["name"], image["read_addrs"],
                                          (reads, results), (got_reads, got_res), counters)
    return {
        "name": spec["name"], "passed": not errors, "cycles": cycles,
        "reads": len(reads), "results": len(results),
        "read_mismatches": len(rd_bad), "result_mismatches": len(res_bad),
        "mem_requests": len(mem), "jobs": len(jobs),
        "macs": n_results * cfg.columns, "sim_seconds": secs,
        "load_seconds": load_seconds, "errors": errors, **counters,
    }


@cocotb.test()
async def pim_system(dut: HierarchyObject) -> None:
    """cocotb test: every workload of the job loaded, run and checked against golden (reads, GEMV
    results, no checker error)."""
    from golden.pim_config import PIMConfig

    job = read_job()
    cfg = PIMConfig(**job["config"])
    start_clock(dut.clk, impl="gpi")
    tb = PIMSystemTB(dut, cfg)
    runs, errors = [], []
    for spec, image in zip(job["workloads"], job["images"], strict=True):
        run = await _run_workload(tb, cfg, spec, image, job)
        runs.append(run)
        errors.extend(run["errors"])
        await RisingEdge(dut.clk)
    passed = not errors
    write_result({"test": "system", "passed": passed, "runs": runs, "errors": errors})
    assert passed, "; ".join(errors[:4])
