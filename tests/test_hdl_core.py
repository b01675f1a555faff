"""hdl.core without a simulator: the configurations the RTL refuses, its elaboration,
the cycle model's phases, and the co-simulation's relocated memory images (the same
program results as on the whole image)."""
from __future__ import annotations

import pytest
import torch

from cosim import core as cc
from golden.core import execute
from golden.core_config import CoreConfig, Registers, encode
from hdl import core_linear, sfu
from hdl.core import ERRORS, IMPLEMENTED, Core, check_rtl_config, cycle_model

torch.set_num_threads(1)


def small_core(**kw) -> CoreConfig:
    from golden.kv4_attention_config import KV4Config
    from golden.sfu_config import SFUHWConfig
    base = dict(rows=2, cols=64, max_k=256, buffers=4, max_tokens=4, buf_elems=256,
                sfu=SFUHWConfig(lanes=16, max_k=256), kv4=KV4Config(head_dim=32, lanes=16),
                beat_bytes=32, mem_ports=1)
    return CoreConfig(**{**base, **kw})


@pytest.mark.parametrize("kw, words", [
    (dict(mem_ports=8), "mem_ports=8"),
    (dict(cols=96), "cols=96"),
    (dict(beat_bytes=128), "beat_bytes=128"),
    (dict(rows=32), "rows=32"),
])
def test_configs_the_rtl_cannot_generate_are_refused_by_name(kw, words):
    with pytest.raises(ValueError, match=words):
        check_rtl_config(small_core(**kw))


def test_the_core_elaborates_with_every_port():
    from hdl.generate import verilog
    v = verilog(Core(small_core()), "quattro_core")
    for port in ("rd__araddr", "wr__wstrb", "trace", "err_pc", "idle", "cycles"):
        assert port in v
    assert ERRORS[0] == "none" and len(set(ERRORS)) == len(ERRORS)
    from golden.core_config import OPS
    assert set(IMPLEMENTED) == set(OPS)


def test_cycle_model_phases():
    c = small_core()
    lat = 9
    fetch = lat + 64 // c.beat_bytes + 1 + 2
    regs = Registers(pos=0, tokens=3)
    halt, = cycle_model([encode("HALT")], c, regs, latency=lat)
    assert halt == fetch
    q = cycle_model([encode("QUANT", dst=1, src=0, n=64), encode("HALT")], c, regs,
                    latency=lat)
    assert q == [fetch + 3 * (1 + sfu.cycle_model(c.sfu, "quant_a8", 64)), fetch]
    # a LINEAR over 3 tokens on 2 rows: two row tiles, each streaming every weight
    lin = dict(dst=2, src=1, n=64, k=128, group=64, e=0, in_frac=14, out_frac=14)
    one = cycle_model([encode("LINEAR", **lin)], c, Registers(pos=0, tokens=2),
                      latency=lat)[0]
    two = cycle_model([encode("LINEAR", **lin)], c, Registers(pos=0, tokens=3),
                      latency=lat)[0]
    assert two - one > core_linear.cycle_model(c, 64, 128, 64, 1)
    # LOGITS flushes its accumulators to memory: one more chunk costs its rows' beats
    lg = dict(src=1, k=64, group=64)
    small, big = (cycle_model([encode("LOGITS", n=n, **lg)], c, regs, latency=lat)[0]
                  for n in (c.buf_elems, 2 * c.buf_elems))
    assert big - small > 3 * c.buf_elems * 4 // c.beat_bytes


def test_relocated_memory_runs_the_same_program(tmp_path):
    """The compact image of cosim.core.relocate gives every instruction the same
    results as the whole image (addresses rewritten, tensors copied whole)."""
    img, core, runs, mem = cc.random_layer_runs(cc.RANDOM_CASES[0][0], seed=2,
                                                workdir=tmp_path, prefill=3, decode_steps=1)
    case = cc.build_case(runs, mem, core)
    assert len(case.memory) < len(mem)
    whole = bytearray(mem)             # one memory: the decode step reads the prefill's cache
    for run, exp in zip(runs, case.expected):
        load = next(w for w in run.words if (w & 0xFF) == 0x03)
        from golden.core_config import decode
        a = decode(load)["addr0"]
        raw = run.x_in.to(torch.int64).numpy().astype("<i4").tobytes()
        whole[a:a + len(raw)] = raw
        ref = execute(run.words, whole, core, Registers(pos=run.pos, tokens=run.tokens))
        assert len(ref) == len(exp)
        for r, e in zip(ref, exp):
            assert r.op == e.op
            for k, t in r.outputs.items():
                assert torch.equal(t, e.outputs[k]), (r.index, r.op, k)
