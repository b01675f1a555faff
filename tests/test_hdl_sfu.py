# amaranth: UnusedElaboratable=no
"""hdl.sfu in the Amaranth simulator: every op bit-exact with golden.sfu on random
vectors and edge cases (zeros, int32 extremes, saturation, k = lanes and k = max_k)
with random idle cycles and back-pressure, at one and at two lanes; the analytic
cycle model equal to the simulated cycles on ideal streams, op by op and for a
back-to-back sequence; refused cmds; the word formats; Verilog generation."""
from __future__ import annotations

import random

import pytest

from cosim.sfu import SFUCall, call_words, edge_calls, random_call
from golden.sfu_config import SFUHWConfig
from hdl.sfu import (BUFFERED, CMD_K_BITS, OPS, SFU, cmd_layout, cycle_model, gain_cycles,
                     in_layout, out_layout, pack_cmd, pack_elems, pack_out, unpack_out)
from tests.helpers.amaranth_streams import StreamSink, StreamSource, simulate

#: Small buffers keep the Python simulation fast; two lanes exercise the lane trees.
ONE = SFUHWConfig(max_k=32, lanes=1)
TWO = SFUHWConfig(max_k=32, lanes=2)


class _Times:
    """Background testbench: the cycles of the cmd and out transfers and the `error`
    flag of every cycle (counted from the simulation's first tick)."""

    def __init__(self, dut):
        self.dut = dut
        self.cmd, self.out, self.error = [], [], []

    async def __call__(self, ctx):
        d = self.dut
        async for _, _, cv, cr, ov, orr, err in ctx.tick().sample(
                d.cmd.valid, d.cmd.ready, d.out.valid, d.out.ready, d.error):
            cycle = len(self.error)
            if cv and cr:
                self.cmd.append(cycle)
            if ov and orr:
                self.out.append(cycle)
            self.error.append(err)


def run_calls(config, calls, *, seed=1, p_idle=0.0, p_stall=0.0):
    """Simulate `calls` (SFUCall, or (cmd word, x words, out words)) back to back;
    returns (got words, expected words, _Times)."""
    dut = SFU(config)
    cmds, xs, exp = [], [], []
    for call in calls:
        cmd, x, o = call_words(config, call) if isinstance(call, SFUCall) else call
        cmds.append(cmd)
        xs += x
        exp += o
    rng = random.Random(seed)
    srcs = [StreamSource(dut.cmd, cmds, random.Random(rng.random()), p_idle=p_idle),
            StreamSource(dut.x, xs, random.Random(rng.random()), p_idle=p_idle)]
    snk = StreamSink(dut.out, random.Random(rng.random()), count=len(exp), p_stall=p_stall,
                     limit=40 * (len(xs) + 60 * len(cmds)) + 500)
    times = _Times(dut)
    simulate(dut, snk, background=[*srcs, times])
    return snk.got, exp, times


def assert_same(config, got, exp, calls):
    g, e = unpack_out(config, got), unpack_out(config, exp)
    bad = [(i, a, b) for i, (a, b) in enumerate(zip(g, e)) if a != b]
    assert len(got) == len(exp) and not bad, (
        f"{len(bad)} mismatches, first {bad[:5]}; ops {[(c.op, c.k) for c in calls]}")


@pytest.mark.parametrize("config", (ONE, TWO), ids=("l1", "l2"))
def test_random_ops_with_stalls(config):
    rng = random.Random(7 + config.lanes)
    calls = []
    for op in OPS:
        top = config.max_k if op in BUFFERED else 2 * config.max_k
        calls.append(random_call(config, op, config.lanes * rng.randint(1, top // config.lanes),
                                 rng))
    got, exp, _ = run_calls(config, calls, seed=3, p_idle=0.3, p_stall=0.4)
    assert_same(config, got, exp, calls)


@pytest.mark.parametrize("config", (ONE, TWO), ids=("l1", "l2"))
def test_edge_cases(config):
    calls = edge_calls(config, random.Random(5))
    got, exp, _ = run_calls(config, calls, seed=4, p_idle=0.2, p_stall=0.3)
    assert_same(config, got, exp, calls)


def test_dequant_serves_embed_rows():
    """golden.sfu.embed_rows (codes times a per-group S, one shift) is dequant with
    acc = codes, S1 = S per element, mn = 2**15, L = -15, in_frac = 0."""
    import torch

    from golden.sfu import embed_rows
    c = ONE
    rng = random.Random(9)
    codes = [rng.randint(-127, 127) for _ in range(16)]
    S = [rng.randrange(1 << 15) for _ in range(4)]
    calls, want = [], []
    for e in (30, 14, 4, -20):                   # right shifts, exact, left, saturating
        calls.append(SFUCall(op="dequant", a=tuple(codes), b=tuple(s for s in S for _ in range(4)),
                             params=dict(mn=1 << 15, L=-15, e=e, in_frac=0, out_frac=14)))
        want += embed_rows(torch.tensor([codes]), torch.tensor([S]), e, out_frac=14)[0].tolist()
    got, exp, _ = run_calls(c, calls)
    assert unpack_out(c, got) == want and got == exp


def test_cycle_model_per_op_and_sequence():
    """Ideal streams: every op's cmd-to-last-out span is cycle_model, and back-to-back
    cmds follow each other without a gap."""
    c = TWO
    rng = random.Random(11)
    calls = [random_call(c, op, k, rng) for op in OPS for k in (c.lanes, c.max_k)]
    got, exp, t = run_calls(c, calls)
    assert_same(c, got, exp, calls)
    ends, n = [], 0
    for call in calls:                              # the last out beat of each call
        n += len(call_words(c, call)[2])
        ends.append(t.out[n - 1])
    for i, call in enumerate(calls):
        assert ends[i] - t.cmd[i] + 1 == cycle_model(c, call.op, call.k), (i, call.op, call.k)
        if i:
            assert t.cmd[i] == ends[i - 1] + 1
    assert ends[-1] - t.cmd[0] + 1 == sum(cycle_model(c, x.op, x.k) for x in calls)


def test_refused_cmds_and_recovery():
    """k = 0, k not a multiple of lanes, a buffered k > max_k, a bad rope d and a
    requant width outside 2..32 are consumed with `error` and nothing else; a rope k
    that is not whole heads consumes its elements, then is refused; the next good cmd
    clears `error` and runs normally."""
    c = TWO
    bad = [pack_cmd("swiglu", 0, shift=14), pack_cmd("residual_add", 3),
           pack_cmd("quant_a8", c.max_k + 2), pack_cmd("rope", 8, d=6),
           pack_cmd("rope", 8, d=16), pack_cmd("requant", 4, from_frac=0, to_frac=0, bits=33),
           pack_cmd("requant", 4, from_frac=0, to_frac=0, bits=1)]
    items = [(w, [], []) for w in bad]
    items.append((pack_cmd("rope", 12, d=8), pack_elems(c, range(12)), []))
    good = SFUCall(op="residual_add", a=(1, 2), b=(3, -4))
    got, exp, t = run_calls(c, items + [good], p_idle=0.2)
    assert unpack_out(c, got) == [4, -2] and exp == got
    for i in range(len(bad)):
        assert t.error[t.cmd[i] + 1] == 1, i
    assert t.error[t.cmd[-1]] == 1 and t.error[t.cmd[-1] + 1] == 0
    assert t.cmd[-1] - t.cmd[-2] >= 7            # the six rope beats were consumed


def test_word_formats():
    c = SFUHWConfig(max_k=64, lanes=4)
    assert in_layout(c).size == 4 * 64 and out_layout(c).size == 4 * 32
    lay = cmd_layout()
    assert lay["op"].width == 3 and lay["k"].width == CMD_K_BITS
    assert lay.size == 3 + CMD_K_BITS + 52 + 24 + 8 + 9
    w = pack_cmd("dequant", 8, mn=40000, L=-3, e=20, in_frac=14, out_frac=14)
    assert w & 7 == OPS.index("dequant") and (w >> 3) & ((1 << 20) - 1) == 8
    assert (w >> 23) & 0xFFFF == 40000 and ((w >> 39) & 0xFF) == 256 - 3
    vals = [1, -1, 1 << 31 - 1, -(1 << 31)] * 2
    assert unpack_out(c, pack_out(c, vals)) == vals
    words = pack_elems(c, [1, 2, 3, 4], [-1, -2, -3, -4])
    assert words[0] & 0xFFFFFFFF == 1 and (words[0] >> 32) & 0xFFFFFFFF == (1 << 32) - 1
    with pytest.raises(ValueError):
        pack_cmd("requant", 4, from_frac=0, to_frac=0, bits=64)
    with pytest.raises(ValueError):
        pack_cmd("swiglu", 4, d=8)
    with pytest.raises(ValueError):
        pack_cmd("swiglu", 4)                    # every parameter of the op is given
    with pytest.raises(ValueError):
        pack_elems(c, [1, 2, 3])


def test_cycle_model_formula():
    c = SFUHWConfig(max_k=2048, lanes=4)
    assert gain_cycles(c) == 18
    assert cycle_model(c, "swiglu", 4096) == 1024 + 7
    assert cycle_model(c, "quant_a8", 2048) == 2 * 512 + 2 + 17 + 6
    assert cycle_model(c, "rmsnorm", 576) == 3 * 144 + 5 + 18 + 6
    assert cycle_model(c, "argmax", 49152) == 12288 + 5
    with pytest.raises(ValueError):
        cycle_model(c, "rope", 4096)             # beyond the buffer
    with pytest.raises(ValueError):
        cycle_model(c, "dequant", 6)             # not whole beats


def test_verilog_and_config_checks():
    from hdl.generate import design, verilog
    name, factory = design("sfu", SFUHWConfig(max_k=16, lanes=2))
    assert name == "sfu_l2_k16" and "module sfu_l2_k16" in verilog(factory(), name)
    with pytest.raises(TypeError):
        SFU({"lanes": 1})
    with pytest.raises(ValueError):
        SFUHWConfig(lanes=3)
    with pytest.raises(ValueError):
        SFUHWConfig(max_k=30, lanes=4)
