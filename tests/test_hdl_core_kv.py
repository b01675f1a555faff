# amaranth: UnusedElaboratable=no
"""hdl.core_kv in the Amaranth simulator against golden.core.execute: a prefill
(KV_APPEND then ATTEND at pos 0, T = 3..5) and decode steps (T = 1 at later positions)
on one memory, every byte of the KV region and every y word equal to the executor's
(a program LOAD K, V, Q / KV_APPEND / SYNC / ATTEND / STORE / HALT on a bytearray holding
the same region), under random stalls of the reader, the writer, x and y (seeds
printed); small configs with and without the rotation and the 8-bit recent window, 1..3
heads; refused cmds (checks at the cmd, a corrupt cache, a logit shift golden refuses)
and recovery; the ideal-stream cycles against cycle_model; Verilator -Wall lint."""
from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
import torch
from amaranth.hdl import Value

from golden.core import ProgramError, execute
from golden.core_config import CoreConfig, Registers, encode, kv_layout, kv_region_bytes
from golden.kv4_attention_config import KV4Config
from golden.sfu_config import SFUHWConfig
from hdl.core_kv import KVUnit, cycle_model, pack_cmd, refusal
from tests.helpers.amaranth_streams import StreamSink, pack, unpack_signed


def _core(D, lanes, heads, max_t, recent, rotate, beat_bytes=32, max_tokens=8):
    kv4 = KV4Config(head_dim=D, lanes=lanes, max_t=max_t, heads=heads, recent=recent,
                    rotate=rotate)
    return CoreConfig(rows=2, cols=64, max_k=256, max_n=1024, buffers=4,
                      max_tokens=max_tokens, buf_elems=max(64, heads * D),
                      sfu=SFUHWConfig(lanes=lanes, max_k=256), kv4=kv4,
                      beat_bytes=beat_bytes, mem_ports=1)


CFG_A = _core(D=32, lanes=8, heads=2, max_t=16, recent=8, rotate=True)
CFG_B = _core(D=64, lanes=16, heads=3, max_t=24, recent=0, rotate=False)
CFG_C = _core(D=32, lanes=8, heads=1, max_t=48, recent=8, rotate=False, beat_bytes=16)

REGION = 0x400           # the KV head's region
IO = 0x4000              # K, V, Q rows in, the ATTEND output out


# --------------------------------------------------------------------------- golden
class Step:
    """One instruction pair of the bench: KV_APPEND of T tokens at pos, then ATTEND."""

    def __init__(self, config, rng, pos, T, ctx, heads, fr):
        D = config.kv4.head_dim
        self.pos, self.T, self.ctx, self.heads = pos, T, ctx, heads
        self.fr = fr
        self.K = self._rows(rng, T, D, fr["in_frac"])
        self.V = self._rows(rng, T, D, fr["in_frac2"])
        self.Q = self._rows(rng, T, heads * D, fr["q_frac"])

    @staticmethod
    def _rows(rng, T, n, frac):
        # realistic activations: a few units at `frac` fraction bits, some outliers
        g = torch.Generator().manual_seed(rng.getrandbits(31))
        x = torch.randn(T, n, generator=g) * (2.0 ** frac) * 3
        x[:, :2] *= 8
        return x.round().to(torch.int64)


def golden_run(config, mem, step, *, attend=True):
    """Run LOAD K, V, Q / KV_APPEND / SYNC / ATTEND / STORE / HALT on `mem` (in place);
    returns the ATTEND output rows [T, heads D]."""
    D = config.kv4.head_dim
    T, H, fr = step.T, step.heads, step.fr
    k_at, v_at, q_at = IO, IO + 4096, IO + 8192
    out_at = IO + 12288
    for at, rows in ((k_at, step.K), (v_at, step.V), (q_at, step.Q)):
        raw = rows.numpy().astype("<i4").tobytes()
        mem[at:at + len(raw)] = raw
    words = [encode("LOAD", dst=0, n=D, addr0=k_at), encode("LOAD", dst=1, n=D, addr0=v_at),
             encode("LOAD", dst=2, n=H * D, addr0=q_at),
             encode("KV_APPEND", src=0, src2=1, col=0, in_frac=fr["in_frac"],
                    in_frac2=fr["in_frac2"], frac_k=fr["frac_k"], frac_v=fr["frac_v"],
                    ctx=step.ctx, addr0=REGION),
             encode("SYNC")]
    if attend:
        words += [encode("ATTEND", dst=3, src=2, col=0, heads=H, in_frac=fr["q_frac"],
                         frac_k=fr["frac_k"], frac_v=fr["frac_v"], out_frac=fr["out_frac"],
                         ctx=step.ctx, addr0=REGION),
                  encode("STORE", src=3, n=H * D, addr0=out_at)]
    words.append(encode("HALT"))
    steps = execute(words, mem, config, Registers(pos=step.pos, tokens=T))
    if not attend:
        return None
    out = steps[6].outputs["out"]
    stored = np.frombuffer(bytes(mem[out_at:out_at + 4 * T * H * D]), "<i4").reshape(T, H * D)
    assert (torch.from_numpy(stored.astype(np.int64)) == out).all()
    return out


# --------------------------------------------------------------------------- bench
class Memory:
    """The core's AXI reader and writer as the unit sees them: read ranges queued, a
    range's first beat `latency` cycles after its transfer and never before the beats
    of the ranges before it, random idle beats; write ranges queued, beats applied with
    their strobes to `mem`."""

    def __init__(self, dut, mem, config, rng, *, latency, p_idle=0.0, p_stall=0.0):
        self.dut, self.mem, self.BB = dut, mem, config.beat_bytes
        self.rng, self.latency, self.p_idle, self.p_stall = rng, latency, p_idle, p_stall
        self.reads, self.writes = deque(), deque()
        self.read_ranges, self.write_ranges = [], []
        self.cycle = 0

    async def __call__(self, ctx):
        d, BB = self.dut, self.BB
        rdv = Value.cast(d.rd_data.payload)
        while True:
            ctx.set(d.rd_req.ready, self.rng.random() >= self.p_stall)
            ctx.set(d.wr_req.ready, self.rng.random() >= self.p_stall)
            ctx.set(d.wr_data.ready, self.rng.random() >= self.p_stall)
            beat = None
            if self.reads and self.reads[0][0] <= self.cycle and self.rng.random() >= self.p_idle:
                _, a, _ = self.reads[0]
                beat = int.from_bytes(self.mem[a:a + BB], "little")
            ctx.set(d.rd_data.valid, beat is not None)
            ctx.set(rdv, beat if beat is not None else self.rng.getrandbits(8 * BB))
            (_, _, rqv, rqr, rqa, rqb, rdr, wqv, wqr, wqa, wqb, wdv, wdr, wdd,
             wds) = await ctx.tick().sample(
                d.rd_req.valid, d.rd_req.ready, d.rd_req.payload.addr, d.rd_req.payload.beats,
                d.rd_data.ready, d.wr_req.valid, d.wr_req.ready, d.wr_req.payload.addr,
                d.wr_req.payload.beats, d.wr_data.valid, d.wr_data.ready,
                d.wr_data.payload.data, d.wr_data.payload.strb)
            if beat is not None and rdr:
                head = self.reads[0]
                head[1] += BB
                head[2] -= 1
                if head[2] == 0:
                    self.reads.popleft()
                    if self.reads:      # the next range streams on at once if it is due
                        self.reads[0][0] = max(self.reads[0][0], self.cycle + 1)
            if rqv and rqr:
                assert rqa % BB == 0 and rqb >= 1, (rqa, rqb)
                self.read_ranges.append((self.cycle, rqa, rqb))
                self.reads.append([self.cycle + self.latency, rqa, rqb])
            if wqv and wqr:
                assert wqa % BB == 0 and wqb >= 1, (wqa, wqb)
                self.write_ranges.append((self.cycle, wqa, wqb))
                self.writes.append([wqa, wqb])
            if wdv and wdr:
                assert self.writes, "a write beat without a range"
                head = self.writes[0]
                for i in range(BB):
                    if wds >> i & 1:
                        self.mem[head[0] + i] = (wdd >> (8 * i)) & 0xFF
                head[0] += BB
                head[1] -= 1
                if head[1] == 0:
                    self.writes.popleft()
            self.cycle += 1


class Trace:
    def __init__(self, dut):
        self.dut, self.rows = dut, []

    async def __call__(self, ctx):
        d = self.dut
        async for _, _, cv, cr, yv, yr, wv, wr, busy, err in ctx.tick().sample(
                d.cmd.valid, d.cmd.ready, d.y.valid, d.y.ready, d.wr_data.valid,
                d.wr_data.ready, d.busy, d.error):
            self.rows.append((cv and cr, yv and yr, wv and wr, busy, err))

    def cycles(self, i):
        return [c for c, row in enumerate(self.rows) if row[i]]


def words_of(config, rows):
    """x words (lanes int32 each) of int64 rows [T, n], row-major."""
    L = config.sfu.lanes
    flat = rows.flatten().tolist()
    return [pack(flat[i:i + L], 32) for i in range(0, len(flat), L)]


def run(config, cmds, mem, *, seed, latency=5, p_idle=0.0, p_stall=0.0, y_count):
    """Simulate `cmds` ((cmd fields, x words) in order) on `mem` (in place); returns
    (y words as int lists, error after each cmd, Trace, Memory)."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = KVUnit(config)
    L = config.sfu.lanes
    xs = [w for _, words in cmds for w in words]
    memory = Memory(dut, mem, config, random.Random(rng.random()), latency=latency,
                    p_idle=p_idle, p_stall=p_stall)
    errors = []
    x_rng, c_rng = random.Random(rng.random()), random.Random(rng.random())

    async def feed_x(ctx):
        for w in xs:
            while x_rng.random() < p_idle:
                ctx.set(dut.x.valid, 0)
                await ctx.tick()
            ctx.set(dut.x.valid, 1)
            ctx.set(Value.cast(dut.x.payload), w)
            await ctx.tick().until(dut.x.ready)
        ctx.set(dut.x.valid, 0)

    async def driver(ctx):
        for fields, _ in cmds:
            while c_rng.random() < p_idle:
                await ctx.tick()
            ctx.set(dut.cmd.valid, 1)
            ctx.set(Value.cast(dut.cmd.payload), pack_cmd(config, **fields))
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            await ctx.tick()
            # error once the instruction is over (a refused query raises it late)
            while ctx.get(dut.busy):
                await ctx.tick()
            errors.append(ctx.get(dut.error))
        # the last instruction ends with busy low and every write range complete
        for _ in range(20000):
            if not ctx.get(dut.busy) and not memory.writes and len(snk.got) == y_count:
                break
            await ctx.tick()
        else:
            raise AssertionError("the unit did not finish")
        await ctx.tick().repeat(2)

    snk = StreamSink(dut.y, random.Random(rng.random()), count=y_count, p_stall=p_stall,
                     limit=200000, decode=lambda w: unpack_signed(w, 32, L))
    trace = Trace(dut)
    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (memory.__call__, trace.__call__, feed_x):
        sim.add_testbench(tb, background=True)
    sim.add_testbench(driver)
    sim.add_testbench(snk.__call__)
    sim.run()
    return snk.got, errors, trace, memory


FR = {"in_frac": 10, "in_frac2": 9, "frac_k": 8, "frac_v": 7, "q_frac": 12, "out_frac": 9}


def _append_fields(step, attend=False):
    fr = step.fr
    out = dict(attend=int(attend), pos=step.pos, tokens=step.T, ctx=step.ctx, col=0,
               heads=step.heads if attend else 0, frac_k=fr["frac_k"], frac_v=fr["frac_v"],
               addr=REGION)
    if attend:
        out.update(in_frac=fr["q_frac"], out_frac=fr["out_frac"])
    else:
        out.update(in_frac=fr["in_frac"], in_frac2=fr["in_frac2"])
    return out


def _region(config, ctx):
    return kv_region_bytes(ctx, config.kv4.head_dim, config.kv4.recent)


def check_sequence(config, steps, *, seed, latency=5, p_idle=0.0, p_stall=0.0,
                   attend=True):
    """Every step's KV_APPEND (and ATTEND) on one memory, RTL against golden."""
    gold = bytearray(IO + 16384 + 4096)
    rtl = bytearray(len(gold))
    # stale bytes in the region: tokens not yet appended must never be read
    junk = random.Random(seed).randbytes(_region(config, steps[0].ctx))
    gold[REGION:REGION + len(junk)] = junk
    rtl[REGION:REGION + len(junk)] = junk
    cmds, want = [], []
    for st in steps:
        y = golden_run(config, gold, st, attend=attend)
        cmds.append((_append_fields(st), [w for t in range(st.T) for w in
                                          words_of(config, st.K[t:t + 1])
                                          + words_of(config, st.V[t:t + 1])]))
        if attend:
            cmds.append((_append_fields(st, True), words_of(config, st.Q)))
            want += [[int(v) for v in y.flatten()[i:i + config.sfu.lanes]]
                     for i in range(0, y.numel(), config.sfu.lanes)]
    got, errors, trace, memory = run(config, cmds, rtl, seed=seed, latency=latency,
                                     p_idle=p_idle, p_stall=p_stall, y_count=len(want))
    assert errors == [0] * len(cmds)
    n = _region(config, steps[0].ctx)
    lay = kv_layout(steps[0].ctx, config.kv4.head_dim, config.kv4.recent)
    if gold[REGION:REGION + n] != rtl[REGION:REGION + n]:
        bad = next(i for i in range(n) if gold[REGION + i] != rtl[REGION + i])
        plane = max((off, name) for name, (off, _, _) in lay.items() if off <= bad)[1]
        raise AssertionError(f"region byte {bad} (plane {plane}) differs: golden "
                             f"{gold[REGION + bad]}, rtl {rtl[REGION + bad]}")
    # the unit writes nothing outside the region (golden's I/O rows are its own)
    assert not any(rtl[:REGION]) and not any(rtl[REGION + n:])
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want) and not bad, f"{len(bad)} y words differ; first {bad[:2]}"
    return trace, memory


def _steps(config, rng, ctx, prefill, decodes, heads):
    out = [Step(config, rng, 0, prefill, ctx, heads, FR)]
    pos = prefill
    for T in decodes:
        out.append(Step(config, rng, pos, T, ctx, heads, FR))
        pos += T
    return out


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("config,prefill,decodes,heads,ctx,seed", [
    (CFG_A, 4, [1, 5, 1], 2, 12, 11),      # rotate + window; a 5-token chunk past recent
    (CFG_B, 3, [1, 1], 2, 24, 12),         # 2 of the unit's 3 heads; no window
    (CFG_C, 5, [8, 8, 8, 1], 1, 40, 13),   # 16-byte beats; the 8-bit rings wrap
], ids=("d32rot_r8_h2", "d64_r0_h2of3", "d32_r8_bb16_wrap"))
def test_prefill_and_decode_with_stalls(config, prefill, decodes, heads, ctx, seed):
    rng = random.Random(seed)
    steps = _steps(config, rng, ctx, prefill, decodes, heads)
    check_sequence(config, steps, seed=seed + 100, latency=rng.randint(1, 12), p_idle=0.3,
                   p_stall=0.3)


def test_append_only_leaves_the_rest():
    rng = random.Random(1)
    steps = _steps(CFG_A, rng, 12, 3, [1, 2], 2)
    check_sequence(CFG_A, steps, seed=2, attend=False, p_idle=0.3, p_stall=0.3)


def _measured(trace):
    """Per cmd: cycles from its transfer to its last y word or write beat, inclusive."""
    cmds, out = trace.cycles(0), []
    for i, c in enumerate(cmds):
        nxt = cmds[i + 1] if i + 1 < len(cmds) else len(trace.rows)
        ev = [x for x in trace.cycles(1) + trace.cycles(2) if c < x < nxt]
        end = max(ev)
        busy = [row[3] for row in trace.rows]
        assert all(busy[c + 1:end + 1]) and not busy[end + 1], "busy does not span the run"
        out.append(end - c + 1)
    return out


@pytest.mark.parametrize("config", (CFG_A, CFG_B, CFG_C), ids=("a", "b", "c"))
def test_cycle_model_ideal_streams(config):
    rng = random.Random(61)
    H = config.kv4.heads
    for latency in (2, 17):
        steps = _steps(config, rng, 12, 3, [1], H)
        trace, _ = check_sequence(config, steps, seed=62, latency=latency)
        model = [cycle_model(config, a, st.pos, st.T, H, latency)
                 for st in steps for a in (False, True)]
        assert _measured(trace) == model


def _attend_fields(pos, T, ctx, heads, addr=REGION, **fr):
    f = dict(attend=1, pos=pos, tokens=T, ctx=ctx, col=0, heads=heads, in_frac=FR["q_frac"],
             frac_k=FR["frac_k"], frac_v=FR["frac_v"], out_frac=FR["out_frac"], addr=addr)
    f.update(fr)
    return f


def test_refused_cmds_and_recovery():
    """Refused at the cmd: nothing taken from x, no memory traffic; refused on data
    (a cache golden refuses, a logit shift below min_lsh): the query's words taken,
    no y; each followed by a good instruction that clears error."""
    cfg = CFG_A
    rng = random.Random(71)
    st = Step(cfg, rng, 0, 2, 12, 2, FR)
    gold = bytearray(IO + 20480)
    y = golden_run(cfg, gold, st)
    app = (_append_fields(st), [w for t in range(2) for w in words_of(cfg, st.K[t:t + 1])
                                + words_of(cfg, st.V[t:t + 1])])
    att = (_append_fields(st, True), words_of(cfg, st.Q))
    bad_cmds = [dict(_append_fields(st), tokens=0),
                dict(_append_fields(st), pos=11),                 # pos + T > ctx
                dict(_append_fields(st), ctx=17, pos=0),          # ctx > max_t
                dict(_append_fields(st, True), heads=0),
                dict(_append_fields(st, True), heads=3),          # > kv4.heads
                dict(_append_fields(st), addr=REGION + 32)]       # not 64-byte aligned
    for f in bad_cmds:
        assert refusal(cfg, f["attend"], f["pos"], f["tokens"], f["ctx"], f["heads"],
                       f["addr"])
    # golden refuses them too (T = 0 is a Registers error there)
    for f in bad_cmds[1:]:
        mem = bytearray(IO + 20480)
        op = "ATTEND" if f["attend"] else "KV_APPEND"
        extra = dict(dst=3, heads=f["heads"]) if f["attend"] else dict(src2=1)
        words = [encode("LOAD", dst=0, n=2 * 32, addr0=IO), encode("LOAD", dst=1, n=32,
                                                                   addr0=IO),
                 encode(op, src=0, col=0, ctx=f["ctx"], addr0=f["addr"], **extra),
                 encode("HALT")]
        with pytest.raises(ProgramError):
            execute(words, mem, cfg, Registers(pos=f["pos"], tokens=f["tokens"]))
    # a corrupt region (kz of token 0 > 15) and a query whose logit shift is too small
    corrupt = 0x2000
    lay = kv_layout(12, 32, 8)
    junk = bytearray(_region(cfg, 12))
    junk[lay["kz"][0]] = 0x20
    q1 = st.Q[:1]
    for addr, fr, fill in ((corrupt, {}, junk), (REGION, {"in_frac": -40}, None)):
        mem = bytearray(gold)
        if fill is not None:
            mem[addr:addr + len(fill)] = fill
        raw = q1.numpy().astype("<i4").tobytes()
        mem[IO:IO + len(raw)] = raw
        words = [encode("LOAD", dst=2, n=64, addr0=IO),
                 encode("ATTEND", dst=3, src=2, col=0, heads=2, ctx=12, addr0=addr,
                        in_frac=fr.get("in_frac", FR["q_frac"]), frac_k=FR["frac_k"],
                        frac_v=FR["frac_v"], out_frac=FR["out_frac"]), encode("HALT")]
        with pytest.raises(ProgramError):
            execute(words, mem, cfg, Registers(pos=0, tokens=1))
    cmds = [(bad_cmds[0], []), (bad_cmds[1], []), (bad_cmds[2], []), app,
            (bad_cmds[3], []), (bad_cmds[4], []), (bad_cmds[5], []),
            (_attend_fields(0, 1, 12, 2, addr=corrupt), words_of(cfg, q1)),
            (_attend_fields(0, 1, 12, 2, in_frac=-40), words_of(cfg, q1)), att]
    rtl = bytearray(IO + 20480)
    rtl[corrupt:corrupt + len(junk)] = junk
    want = [[int(v) for v in y.flatten()[i:i + 8]] for i in range(0, y.numel(), 8)]
    got, errors, trace, memory = run(cfg, cmds, rtl, seed=72, p_idle=0.2, p_stall=0.2,
                                     y_count=len(want))
    assert errors == [1, 1, 1, 0, 1, 1, 1, 1, 1, 0]
    assert got == want
    n = _region(cfg, 12)
    assert rtl[REGION:REGION + n] == gold[REGION:REGION + n]
    # the refused cmds moved nothing: reads only by the three ATTENDs (10 planes
    # each), writes only by the append (2 tokens x 10 planes)
    assert len(memory.read_ranges) == 3 * 10 and len(memory.write_ranges) == 2 * 10


def test_logit_constant_is_golden():
    from golden.kv4_attention import logit_constant as golden_constant
    from hdl.core_kv import logit_constant
    for cfg in (CFG_A, CFG_B, CFG_C, CoreConfig()):
        assert logit_constant(cfg.kv4) == golden_constant(cfg.kv4, in_frac=0, frac_k=0)


def test_config_checks():
    with pytest.raises(ValueError, match="kv4.lanes"):
        KVUnit(_core(D=32, lanes=8, heads=1, max_t=16, recent=0, rotate=False).replace(
            sfu=SFUHWConfig(lanes=16, max_k=256)))
    with pytest.raises(ValueError, match="beat_bytes"):
        KVUnit(_core(D=64, lanes=16, heads=1, max_t=16, recent=0, rotate=False,
                     beat_bytes=8))
    with pytest.raises(TypeError):
        KVUnit({"kv4": None})


def test_verilog_lints_clean(tmp_path):
    from cosim import lint
    from hdl.generate import write_verilog
    # named after its KV4 config like the KV4 blocks: cosim/lint.vlt's kv4_d* waiver
    # (Yosys folding a zext, rtl.zext) covers the embedded decoder and quantizer
    path = write_verilog(KVUnit(CFG_A), "core_" + CFG_A.kv4.name(), tmp_path)
    result = lint.lint_file(path)
    assert result.clean, result.messages
