"""quantflow.pim: the words PIMSystem loads (bank storage, requests, jobs,
vectors) and the seeded synthetic workloads."""
from __future__ import annotations

import pytest
import torch

from golden.pim import check_requests
from golden.pim_config import GemvJob, MemReq, PIMConfig, pack_word, unpack_word
from quantflow.pim import (bank_words, job_words, memreq_words, mixed_workload, pack_fields,
                           pack_vector, subbatch_workload, vector_words)

CFG = PIMConfig(banks=3, rows=8, columns=32, lanes=8, max_job_rows=4)


def _field(word: int, fields, name: str) -> int:
    offset = 0
    for n, bits in fields:
        if n == name:
            return (word >> offset) & ((1 << bits) - 1)
        offset += bits
    raise KeyError(name)


def test_pack_fields_lsb_first():
    assert pack_fields((("a", 2), ("b", 3)), a=3, b=5) == 3 | 5 << 2
    assert pack_fields((("a", 2),), a=7) == 3  # cut to the field


def test_vector_words():
    vec = tuple(range(-16, 16))
    words = pack_vector(vec, CFG)
    assert len(words) == CFG.col_words
    assert [x for w in words for x in unpack_word(w, CFG.lanes)] == list(vec)
    jobs = [GemvJob(0, 0, 1, vec), GemvJob(1, 2, 2, tuple(reversed(vec)))]
    assert vector_words(jobs, CFG) == words + pack_vector(jobs[1].vector, CFG)
    with pytest.raises(ValueError, match="vector"):
        pack_vector([0] * 31, CFG)


def test_bank_words_address_order():
    g = torch.Generator().manual_seed(1)
    S = torch.randint(-128, 128, (CFG.banks, CFG.rows, CFG.columns), generator=g)
    words = bank_words(S, CFG)
    assert len(words) == CFG.banks * CFG.bank_words
    L = CFG.lanes
    for b, r, c in ((0, 0, 0), (1, 3, 2), (2, 7, CFG.col_words - 1)):
        addr = b * CFG.bank_words + r * CFG.col_words + c
        assert words[addr] == pack_word(S[b, r, c * L:(c + 1) * L].tolist(), L)


def test_request_words():
    mem = [MemReq(2, 7, 3, True, 0xDEADBEEF), MemReq(1, 0, 0, False)]
    f = CFG.memreq_fields
    for word, q in zip(memreq_words(mem, CFG), mem):
        assert [_field(word, f, n) for n in ("bank", "row", "col", "write", "data")] == [
            q.bank, q.row, q.col, int(q.write), q.data]
    jobs = [GemvJob(2, 4, 4, (0,) * 32)]
    word = job_words(jobs, CFG)[0]
    assert [_field(word, CFG.job_fields, n) for n in ("bank", "row", "nrows")] == [2, 4, 4]


@pytest.mark.parametrize("make, kw", [(mixed_workload, dict(n_mem=120, n_jobs=5)),
                                      (subbatch_workload, dict(rounds=2))])
def test_workloads_are_seeded_and_valid(make, kw):
    w = make(CFG, seed=3, **kw)
    again = make(CFG, seed=3, **kw)
    assert w.mem == again.mem and w.jobs == again.jobs
    assert torch.equal(w.storage, again.storage)
    check_requests(CFG, w.mem, w.jobs)
    written = {(r.bank, r.row) for r in w.mem if r.write}
    assert not any((j.bank, row) in written for j in w.jobs
                   for row in range(j.row, j.row + j.nrows))
    assert w.n_reads == sum(not r.write for r in w.mem)
    assert w.n_results == sum(j.nrows for j in w.jobs)


def test_subbatch_shape():
    w = subbatch_workload(CFG, seed=1, rounds=2, job_rows=3, kv_writes=2)
    assert len(w.jobs) == 2 * CFG.banks
    assert len(w.mem) == 2 * CFG.banks * (3 * CFG.col_words + 2)


def test_workload_needs_two_rows():
    with pytest.raises(ValueError, match="rows >= 2"):
        mixed_workload(PIMConfig(rows=1, max_job_rows=1), seed=0, n_mem=1, n_jobs=1)
