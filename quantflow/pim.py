"""Workloads of the NeuPIMs-style PIM channel and the words its RTL loads
(DESIGN §3.6; request and word formats in golden/pim_config.py, docs/pim.md).

A `Workload` is the bank contents before a run plus the two request streams.
`mixed_workload` and `subbatch_workload` make seeded synthetic ones;
`bank_words`, `memreq_words`, `job_words` and `vector_words` turn a workload
into the words of PIMSystem's memories (bank storage, memory requests, GEMV
jobs, GEMV vectors), in load order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from golden.pim_config import GemvJob, MemReq, PIMConfig, pack_word
from golden.validate import expect_type

__all__ = ["Workload", "mixed_workload", "subbatch_workload", "pack_fields", "pack_vector",
           "bank_words", "memreq_words", "job_words", "vector_words"]


# --------------------------------------------------------------------------- words
def pack_fields(fields: Sequence[tuple[str, int]], **values: int) -> int:
    """One word of `fields` ((name, bits) LSB first, as PIMConfig.memreq_fields)."""
    word, offset = 0, 0
    for name, bits in fields:
        word |= (int(values[name]) & ((1 << bits) - 1)) << offset
        offset += bits
    return word


def pack_vector(vector: Sequence[int], config: PIMConfig) -> list[int]:
    """A job's vector as its col_words GWR words."""
    if len(vector) != config.columns:
        raise ValueError(f"a GEMV vector has columns={config.columns} values, got {len(vector)}")
    L = config.lanes
    return [pack_word(vector[i * L:(i + 1) * L], L) for i in range(config.col_words)]


def bank_words(storage: torch.Tensor | Sequence, config: PIMConfig) -> list[int]:
    """Bank contents [banks, rows, columns] INT8 as words, address
    bank * bank_words + row * col_words + col."""
    S = torch.as_tensor(storage).tolist()
    L = config.lanes
    return [pack_word(S[b][r][c * L:(c + 1) * L], L) for b in range(config.banks)
            for r in range(config.rows) for c in range(config.col_words)]


def memreq_words(mem: Sequence[MemReq], config: PIMConfig) -> list[int]:
    """The memory-request stream's words: one per MemReq (PIMConfig.memreq_fields)."""
    return [pack_fields(config.memreq_fields, **q._asdict()) for q in mem]


def job_words(jobs: Sequence[GemvJob], config: PIMConfig) -> list[int]:
    """The job stream's words: one per GemvJob (PIMConfig.job_fields)."""
    return [pack_fields(config.job_fields, bank=j.bank, row=j.row, nrows=j.nrows)
            for j in jobs]


def vector_words(jobs: Sequence[GemvJob], config: PIMConfig) -> list[int]:
    """Every job's vector words, job after job (the GWR beats in order)."""
    return [x for j in jobs for x in pack_vector(j.vector, config)]


# --------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """Bank contents before the run plus the two request streams."""
    storage: torch.Tensor          # [banks, rows, columns] int8 values (int64 tensor)
    mem: tuple                     # MemReq ...
    jobs: tuple                    # GemvJob ...

    @property
    def n_reads(self) -> int:
        """Read requests in the memory stream."""
        return sum(1 for r in self.mem if not r.write)

    @property
    def n_results(self) -> int:
        """GEMV results the jobs produce: one per row."""
        return sum(j.nrows for j in self.jobs)


def _split_rows(config: PIMConfig) -> tuple[range, range]:
    """GEMV rows (lower half) and traffic rows (upper half) of every bank."""
    expect_type("config", config, PIMConfig)
    if config.rows < 2:
        raise ValueError("a mixed workload needs rows >= 2 (GEMV rows and traffic rows)")
    half = config.rows // 2
    return range(0, half), range(half, config.rows)


def _random_storage(config: PIMConfig, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-128, 128, (config.banks, config.rows, config.columns),
                         generator=gen, dtype=torch.int64)


def _random_job(config, gen, bank, gemv_rows, nrows) -> GemvJob:
    nrows = min(nrows, len(gemv_rows), config.max_job_rows)
    r0 = gemv_rows.start + int(torch.randint(0, len(gemv_rows) - nrows + 1, (1,), generator=gen))
    vec = tuple(int(v) for v in torch.randint(-128, 128, (config.columns,), generator=gen))
    return GemvJob(bank, r0, nrows, vec)


def _burst(config, gen, bank, row, length, write_frac) -> list[MemReq]:
    cw = config.col_words
    start = int(torch.randint(0, cw, (1,), generator=gen))
    out = []
    for i in range(length):
        w = bool(torch.rand((1,), generator=gen) < write_frac)
        data = 0
        if w:
            data = int.from_bytes(torch.randint(0, 256, (config.lanes,), generator=gen,
                                                dtype=torch.uint8).numpy().tobytes(), "little")
        out.append(MemReq(bank, row, (start + i) % cw, w, data))
    return out


def mixed_workload(config: PIMConfig, *, seed: int, n_mem: int, n_jobs: int,
                   job_rows: int = 2, max_burst: int = 8,
                   write_frac: float = 0.4) -> Workload:
    """Random mixed traffic: bursts of reads/writes to random traffic rows of
    random banks, and GEMV jobs on GEMV rows of random banks (the same banks
    serve both; GEMV rows are never written)."""
    gemv_rows, traffic_rows = _split_rows(config)
    gen = torch.Generator().manual_seed(seed)
    storage = _random_storage(config, gen)
    mem: list[MemReq] = []
    while len(mem) < n_mem:
        bank = int(torch.randint(0, config.banks, (1,), generator=gen))
        row = traffic_rows.start + int(torch.randint(0, len(traffic_rows), (1,), generator=gen))
        length = 1 + int(torch.randint(0, max_burst, (1,), generator=gen))
        mem.extend(_burst(config, gen, bank, row, length, write_frac))
    mem = mem[:n_mem]
    jobs = []
    for _ in range(n_jobs):
        bank = int(torch.randint(0, config.banks, (1,), generator=gen))
        n = 1 + int(torch.randint(0, job_rows, (1,), generator=gen))
        jobs.append(_random_job(config, gen, bank, gemv_rows, n))
    return Workload(storage=storage, mem=tuple(mem), jobs=tuple(jobs))


def subbatch_workload(config: PIMConfig, *, seed: int, rounds: int,
                      job_rows: int = 4, kv_writes: int = 2) -> Workload:
    """NeuPIMs' sub-batch interleaving on one channel: per round, sub-batch A's
    attention GEMV (one job of `job_rows` K-cache rows per bank) and sub-batch
    B's GEMM traffic (whole weight rows streamed from each bank, plus
    `kv_writes` K/V words appended) -- sized so that the two take about the
    same time alone. Dual mode overlaps them; blocked mode serialises them."""
    gemv_rows, traffic_rows = _split_rows(config)
    gen = torch.Generator().manual_seed(seed)
    storage = _random_storage(config, gen)
    mem: list[MemReq] = []
    jobs: list[GemvJob] = []
    cw = config.col_words
    for r in range(rounds):
        for bank in range(config.banks):
            jobs.append(_random_job(config, gen, bank, gemv_rows, job_rows))
        for bank in range(config.banks):
            for i in range(job_rows):
                row = traffic_rows.start + int(torch.randint(0, len(traffic_rows), (1,),
                                                             generator=gen))
                mem.extend(MemReq(bank, row, c, False) for c in range(cw))
            row = traffic_rows.start + (r % len(traffic_rows))
            mem.extend(_burst(config, gen, bank, row, kv_writes, 1.0))
    return Workload(storage=storage, mem=tuple(mem), jobs=tuple(jobs))
