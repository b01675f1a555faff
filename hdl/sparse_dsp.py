"""Configurable sparse DSP chain (FlightLLM, DESIGN §3.5) in Amaranth 0.5.

    window/lanes -> sparse mux -> x regs -> skew j -> [DSP stage j of group g]
                                                      AR/BR -> M=AR*BR -> P=PCIN+M
    group outputs P_g -> reduction nodes (pass or emit) -> per-qgroup sum
                      -> (W4A8: * s2) -> tile total -> result

* `DSPStage` is written for Yosys/Vivado DSP48E2 inference: registered A/B
  inputs (AREG/BREG), the product register (MREG), the 48-bit post-adder with
  its register (PREG) fed by the previous stage's P (the PCIN cascade), one
  clock enable for all of them (CEA/CEB/CEM/CEP) and no reset (datapath).
* `DSPGroup`: `group_len` stages in a cascade; stage j's operands are delayed j
  cycles (fabric shift registers) so that they meet the partial sum of stage j-1.
* `SparseDSPChain`: the sparse multiplexer (stage i of a segment selects
  window[(j >> log2 N) << log2 M | index]), W4A8's zero point subtracted from the
  code before the multiplier (the DSP48E2 pre-adder's job), and the groups.
* `SparseDSP`: stream interfaces, per-tile run-time mode (ctrl beat), reduction
  nodes at every group end (r_g = P_g + (pass ? r_(g-1) : 0); pass unless g
  starts a segment), per-quantization-group sums, W4A8's s2 once per group,
  int32 results.

Pipeline (cycle c = the cycle an input beat fires):
  c+1           x regs: a_sel, b = value or q - z; sideband (flags, s2)
  c+2+j         AR/BR of stage j (after j skew registers)
  c+3+j         M of stage j
  c+4+j         P of stage j;  P of a group's last stage at c+3+group_len
  c+4+group_len R   reduction-node registers
  c+5+group_len Q   per-quantization-group sums
  c+6+group_len     result register (tile total; W4A8: + s2 * Q at a group end)
The whole pipeline advances together on one enable that drops only when a
tile's result would overwrite an untaken one (back-pressure).
See docs/sparse_dsp.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from amaranth.hdl import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS
from golden.sparse_dsp_config import (DSP_ACC_BITS, INDEX_BITS, MAX_RATIO, PATTERN_BITS,
                                      PATTERNS, SPAN_LOG_BITS, W4_BITS, SparseDSPConfig,
                                      TileMode)
from golden.validate import expect_type

from .rtl import count_width, is_const

__all__ = ["DSPStage", "DSPGroup", "SparseDSPChain", "SparseDSP", "chain_latency",
           "pipeline_latency", "cycle_model", "ctrl_layout", "act_layout", "weight_layout",
           "scale_layout", "result_layout", "WEIGHT_LANE", "SCALE_LANE"]

#: B operand: int8 (W8A8) or q - z in [-15, 15] (W4A8): 8 signed bits either way.
B_BITS = 8
WEIGHT_LANE = data.StructLayout({"value": unsigned(ACT_BITS), "index": unsigned(INDEX_BITS)})
SCALE_LANE = data.StructLayout({"s2": unsigned(SCALE_BITS), "z": unsigned(W4_BITS)})
CTRL = data.StructLayout({"pattern": unsigned(PATTERN_BITS), "w4": unsigned(1),
                          "span_log": unsigned(SPAN_LOG_BITS)})


def _check_config(config) -> SparseDSPConfig:
    return expect_type("config", config, SparseDSPConfig)


def ctrl_layout(config: SparseDSPConfig) -> data.StructLayout:
    """Layout of a ctrl beat: pattern code, W4A8 flag, log2 span (the same for every config)."""
    return CTRL


def act_layout(config: SparseDSPConfig) -> data.ArrayLayout:
    """Layout of an act beat: window_max INT8 activations."""
    return data.ArrayLayout(signed(ACT_BITS), config.window_max)


def weight_layout(config: SparseDSPConfig) -> data.ArrayLayout:
    """Layout of a weight beat: one (value, index) lane per stage."""
    return data.ArrayLayout(WEIGHT_LANE, config.L)


def scale_layout(config: SparseDSPConfig) -> data.ArrayLayout:
    """Layout of a scale beat: one (s2, z) lane per DSP group."""
    return data.ArrayLayout(SCALE_LANE, config.n_groups)


def result_layout(config: SparseDSPConfig) -> data.ArrayLayout:
    """Layout of a result beat: one int32 accumulator per DSP group."""
    return data.ArrayLayout(signed(ACC_BITS), config.n_groups)


def _pattern_cases():
    """(code, (N, M)) with dense (code 0) last: it is the Default branch."""
    return [(c, p) for c, p in enumerate(PATTERNS) if c] + [(0, PATTERNS[0])]


def _span_cases(config: SparseDSPConfig):
    """(span_log, span), the largest span last: it is the Default branch."""
    return list(enumerate(config.spans))


def chain_latency(config: SparseDSPConfig) -> int:
    """Enabled cycles from an input beat to the P output of its DSP groups."""
    return _check_config(config).group_len + 3


def pipeline_latency(config: SparseDSPConfig) -> int:
    """Cycles from the cycle a tile's last beat fires to the cycle its result
    beat is valid (and, with a ready sink, transfers): chain + R + Q + result."""
    return chain_latency(config) + 3


def cycle_model(config: SparseDSPConfig, modes: Sequence[TileMode]) -> int:
    """Cycles from the first accepted beat to the last result transfer, both
    inclusive, with always-valid sources and an always-ready sink, for tiles run
    back to back with the given TileModes (one per tile). A tile takes
    `mode.beats(config)` = K / window cycles; nothing waits between tiles."""
    config = _check_config(config)
    modes = list(modes)
    if not modes or not all(isinstance(t, TileMode) for t in modes):
        raise ValueError("modes must be a non-empty list of TileMode (one per tile)")
    return sum(t.beats(config) for t in modes) + pipeline_latency(config)


class DSPStage(wiring.Component):
    """P = PCIN + A*B with AREG/BREG, MREG, PREG and a common enable: one
    DSP48E2. `first=True`: no PCIN (a group's first stage)."""

    def __init__(self, *, first: bool):
        self.first = first
        members = {"en": In(1), "a": In(signed(ACT_BITS)), "b": In(signed(B_BITS)),
                   "p": Out(signed(DSP_ACC_BITS))}
        if not first:
            members["pcin"] = In(signed(DSP_ACC_BITS))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """Build the stage: A/B, M and P registers under the common enable."""
        m = Module()
        # reset_less: DSP48E2 registers need no reset (the valid flags travel
        # beside them), which keeps them packable into the DSP.
        ar = Signal(signed(ACT_BITS), reset_less=True)
        br = Signal(signed(B_BITS), reset_less=True)
        mr = Signal(signed(ACT_BITS + B_BITS), reset_less=True)
        pr = Signal(signed(DSP_ACC_BITS), reset_less=True)
        with m.If(self.en):
            m.d.sync += [ar.eq(self.a), br.eq(self.b), mr.eq(ar * br)]
            m.d.sync += pr.eq(mr if self.first else self.pcin + mr)
        m.d.comb += self.p.eq(pr)
        return m


class DSPGroup(wiring.Component):
    """`length` cascaded DSPStages; operands of stage j delayed j cycles."""

    def __init__(self, length: int):
        self.length = length
        super().__init__({
            "en": In(1),
            "a": In(data.ArrayLayout(signed(ACT_BITS), length)),
            "b": In(data.ArrayLayout(signed(B_BITS), length)),
            "p": Out(signed(DSP_ACC_BITS)),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the cascade: stages chained through PCIN, operands delayed per stage."""
        m = Module()
        prev = None
        for j in range(self.length):
            a, b = self.a[j], self.b[j]
            for d in range(j):  # skew: line the operands up with P of stage j-1
                da = Signal(signed(ACT_BITS), reset_less=True, name=f"a{j}_d{d}")
                db = Signal(signed(B_BITS), reset_less=True, name=f"b{j}_d{d}")
                with m.If(self.en):
                    m.d.sync += [da.eq(a), db.eq(b)]
                a, b = da, db
            st = DSPStage(first=(j == 0))
            m.submodules[f"stage{j}"] = st
            m.d.comb += [st.en.eq(self.en), st.a.eq(a), st.b.eq(b)]
            if prev is not None:
                m.d.comb += st.pcin.eq(prev.p)
            prev = st
        m.d.comb += self.p.eq(prev.p)
        return m


class SparseDSPChain(wiring.Component):
    """Sparse multiplexer + L DSP stages in n_groups groups (no control).

      window   : In  act beat (window_max int8)
      lanes    : In  weight beat (L x {value, index})
      pattern, span_log, w4 : In  the beat's run-time mode (valid codes only:
                 SparseDSP maps other pattern codes to dense, spans to the largest)
      z        : In  zero point per segment (W4A8)
      p        : Out each group's cascade output, chain_latency(config) enabled
                 cycles after the beat
    """

    def __init__(self, config: SparseDSPConfig):
        self.config = _check_config(config)
        super().__init__({
            "en": In(1),
            "window": In(act_layout(config)),
            "lanes": In(weight_layout(config)),
            "pattern": In(PATTERN_BITS), "span_log": In(SPAN_LOG_BITS), "w4": In(1),
            "z": In(data.ArrayLayout(unsigned(W4_BITS), config.n_groups)),
            "p": Out(data.ArrayLayout(signed(DSP_ACC_BITS), config.n_groups)),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the chain: sparse multiplexer, DSP groups and reduction nodes."""
        m = Module()
        cfg = self.config
        # Every (pattern, span) fixes, per stage, the window position of its
        # block and its segment: constants, so the multiplexer is a case on
        # (mode, index) with constant window lanes (no shifters, no Array).
        xa = [Signal(signed(ACT_BITS), reset_less=True, name=f"xa{i}") for i in range(cfg.L)]
        xb = [Signal(signed(B_BITS), reset_less=True, name=f"xb{i}") for i in range(cfg.L)]
        for i in range(cfg.L):
            lane = self.lanes[i]
            a_sel = Signal(signed(ACT_BITS), name=f"a_sel{i}")
            z_sel = Signal(unsigned(W4_BITS), name=f"z_sel{i}")
            with m.Switch(self.span_log):
                for sl, span in _span_cases(cfg):
                    with m.Case(sl) if span != cfg.spans[-1] else m.Default():
                        seg_len = cfg.group_len * span
                        m.d.comb += z_sel.eq(self.z[i // seg_len])
                        with m.Switch(self.pattern):
                            for code, (n, mm) in _pattern_cases():
                                with m.Case(code) if code else m.Default():
                                    base = (i % seg_len) // n * mm
                                    with m.Switch(lane.index):
                                        for idx in range(mm - 1):
                                            with m.Case(idx):
                                                m.d.comb += a_sel.eq(self.window[base + idx])
                                        with m.Default():
                                            m.d.comb += a_sel.eq(self.window[base + mm - 1])
            w4b = Signal(signed(B_BITS), name=f"w4b{i}")
            m.d.comb += w4b.eq(lane.value[:W4_BITS] - z_sel)
            with m.If(self.en):
                m.d.sync += [xa[i].eq(a_sel),
                             xb[i].eq(Mux(self.w4, w4b, lane.value.as_signed()))]
        gl = cfg.group_len
        for g in range(cfg.n_groups):
            grp = DSPGroup(gl)
            m.submodules[f"group{g}"] = grp
            m.d.comb += [grp.en.eq(self.en), self.p[g].eq(grp.p)]
            m.d.comb += [grp.a[j].eq(xa[g * gl + j]) for j in range(gl)]
            m.d.comb += [grp.b[j].eq(xb[g * gl + j]) for j in range(gl)]
        return m


@dataclass(frozen=True, eq=False)
class _Beat:
    """What SparseDSP's tile control says about the beat of this cycle."""
    mode: Value        # CTRL: the beat's normalised run-time mode
    fire: Value        # the beat is taken
    qfirst: Value      # first / last beat of a quantization group (W8A8: of the tile)
    qlast: Value
    tfirst_grp: Value  # the beat's quantization group is the tile's first
    tlast: Value       # last beat of the tile
    z: Value           # per segment zero points / scales of the beat
    s2: Value


def _sideband(config: SparseDSPConfig) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1, "qfirst": 1, "qlast": 1, "tfirst_grp": 1, "tlast": 1, "w4": 1,
        "span_log": SPAN_LOG_BITS,
        "s2": data.ArrayLayout(unsigned(SCALE_BITS), config.n_groups),
    })


class SparseDSP(wiring.Component):
    """The chain with stream interfaces (layouts in golden/sparse_dsp_config.py):

      ctrl   : In(stream of {pattern, w4, span_log})  one beat per tile, consumed
               with the tile's first act/weight beat
      act    : In(stream of window_max x int8)        one beat per weight beat
      weight : In(stream of L x {value, index})       K / window beats per tile
      scale  : In(stream of n_groups x {s2, z})       W4A8 tiles: one beat per
               quantization group, consumed with the group's first beat
      result : Out(stream of n_groups x int32)        one beat per tile

    A beat fires when act, weight (ctrl at a tile start, scale at a W4A8 group
    start) are valid and the pipeline is enabled. Pattern codes outside
    PATTERNS run as dense; quantflow never emits them.
    """

    def __init__(self, config: SparseDSPConfig):
        self.config = _check_config(config)
        super().__init__({
            "ctrl": In(stream.Signature(ctrl_layout(config))),
            "act": In(stream.Signature(act_layout(config))),
            "weight": In(stream.Signature(weight_layout(config))),
            "scale": In(stream.Signature(scale_layout(config))),
            "result": Out(stream.Signature(result_layout(config))),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the block: the chain with tile control and stream handshakes."""
        m = Module()
        cfg = self.config
        en = Signal()   # the whole pipeline advances together
        beat = self._tile_control(m, en)
        m.submodules.chain = chain = SparseDSPChain(cfg)
        m.d.comb += [chain.en.eq(en), chain.window.eq(self.act.payload),
                     chain.lanes.eq(self.weight.payload), chain.pattern.eq(beat.mode.pattern),
                     chain.span_log.eq(beat.mode.span_log),
                     chain.w4.eq(beat.mode.w4), chain.z.eq(beat.z)]
        sb_p, sb_r, sb_q = self._sideband(m, en, beat)
        R = self._reduction_nodes(m, en, chain, sb_p)
        qsum = self._qgroup_sums(m, en, R, sb_r)
        self._result(m, en, qsum, sb_q)
        return m

    def _tile_mode(self, m, in_tile, cur):
        """The beat's run-time mode (the ctrl beat at a tile start, else the
        tile's), normalised: unknown pattern codes run dense, too large spans
        the largest. Returns (mode, last beat index, quantization-group mask)."""
        cfg = self.config
        mode = Signal(CTRL)
        raw = Signal(CTRL)
        m.d.comb += raw.eq(Mux(in_tile, cur, self.ctrl.payload))
        # one span (a single DSP group): span_log is 0, not a comparison with 0
        # that is constant false (lint UNSIGNED)
        span_log = (0 if len(cfg.spans) == 1 else
                    Mux(raw.span_log < len(cfg.spans) - 1, raw.span_log, len(cfg.spans) - 1))
        m.d.comb += [mode.w4.eq(raw.w4), mode.pattern.eq(Mux(raw.pattern < len(PATTERNS),
                                                             raw.pattern, 0)),
                     mode.span_log.eq(span_log)]
        # beats per tile and per quantization group: constants of (pattern, span)
        max_beats = cfg.K // (cfg.group_len * min(mm // nn for nn, mm in PATTERNS))
        last_idx = Signal(count_width(max_beats - 1))
        qmask = Signal.like(last_idx)
        with m.Switch(mode.span_log):
            for sl, span in _span_cases(cfg):
                with m.Case(sl) if span != cfg.spans[-1] else m.Default():
                    with m.Switch(mode.pattern):
                        for code, (n, mm) in _pattern_cases():
                            with m.Case(code) if code else m.Default():
                                w = cfg.group_len * span * mm // n
                                m.d.comb += [last_idx.eq(cfg.K // w - 1),
                                             qmask.eq(cfg.qgroup // w - 1)]
        return mode, last_idx, qmask

    def _tile_control(self, m, en):
        """Tile state, the beat handshake and the segment's (s2, z) of the beat."""
        cfg = self.config
        ng = cfg.n_groups
        in_tile = Signal()
        cur = Signal(CTRL)
        mode, last_idx, qmask = self._tile_mode(m, in_tile, cur)
        beat = Signal.like(last_idx)
        z_reg = Signal(data.ArrayLayout(unsigned(W4_BITS), ng))
        s2_reg = Signal(data.ArrayLayout(unsigned(SCALE_BITS), ng))
        tfirst = is_const(beat, 0)
        tlast = beat == last_idx
        qpos = beat & qmask
        qfirst = Mux(mode.w4, is_const(qpos, 0), tfirst)
        need_scale = Signal()
        m.d.comb += need_scale.eq(mode.w4 & qfirst)
        fire = Signal()
        m.d.comb += [
            fire.eq(en & self.act.valid & self.weight.valid
                    & (in_tile | self.ctrl.valid) & (~need_scale | self.scale.valid)),
            self.act.ready.eq(fire),
            self.weight.ready.eq(fire),
            self.ctrl.ready.eq(fire & ~in_tile),
            self.scale.ready.eq(fire & need_scale),
        ]
        z_eff = Signal.like(z_reg)
        s2_eff = Signal.like(s2_reg)
        for g in range(ng):
            m.d.comb += [z_eff[g].eq(Mux(need_scale, self.scale.payload[g].z, z_reg[g])),
                         s2_eff[g].eq(Mux(need_scale, self.scale.payload[g].s2, s2_reg[g]))]
        with m.If(fire):
            m.d.sync += [beat.eq(Mux(tlast, 0, beat + 1)), in_tile.eq(~tlast), cur.eq(mode),
                         z_reg.eq(z_eff), s2_reg.eq(s2_eff)]
        return _Beat(mode=mode, fire=fire, qfirst=qfirst, qlast=Mux(mode.w4, qpos == qmask, tlast),
                     tfirst_grp=Mux(mode.w4, is_const(beat & ~qmask, 0), 1), tlast=tlast,
                     z=z_eff, s2=s2_eff)

    def _sideband(self, m, en, beat):
        """The beat's flags and s2, delayed to line up with the group outputs
        (P stage), the reduction nodes (R) and the per-qgroup sums (Q)."""
        cfg = self.config
        sbl = _sideband(cfg)
        sb_in = Signal(sbl)
        m.d.comb += [sb_in.valid.eq(beat.fire), sb_in.qfirst.eq(beat.qfirst),
                     sb_in.qlast.eq(beat.qlast), sb_in.tfirst_grp.eq(beat.tfirst_grp),
                     sb_in.tlast.eq(beat.tlast), sb_in.w4.eq(beat.mode.w4),
                     sb_in.span_log.eq(beat.mode.span_log), sb_in.s2.eq(beat.s2)]
        stages = [sb_in]
        for d in range(chain_latency(cfg) + 2):   # ..., P stage, R stage, Q stage
            nxt = Signal(sbl, name=f"sb{d + 1}")
            with m.If(en):
                m.d.sync += nxt.eq(stages[-1])
            stages.append(nxt)
        return stages[-3], stages[-2], stages[-1]

    def _reduction_nodes(self, m, en, chain, sb_p):
        """R_g = P_g + (passes ? r_(g-1) : 0): pass the partial sum on unless
        group g starts a segment."""
        cfg = self.config
        ng = cfg.n_groups
        R = [Signal(signed(DSP_ACC_BITS), reset_less=True, name=f"R{g}") for g in range(ng)]
        r = [Signal(signed(DSP_ACC_BITS), name=f"r{g}") for g in range(ng)]
        with m.Switch(sb_p.span_log):
            for sl, span in _span_cases(cfg):
                with m.Case(sl) if span != cfg.spans[-1] else m.Default():
                    for g in range(ng):
                        passes = g % span != 0
                        m.d.comb += r[g].eq(chain.p[g] + r[g - 1] if passes else chain.p[g])
        with m.If(en):
            m.d.sync += [R[g].eq(r[g]) for g in range(ng)]
        return R

    def _qgroup_sums(self, m, en, R, sb_r):
        """Segment s is emitted by node (s+1)*span - 1; its beat sums add up per
        quantization group."""
        cfg = self.config
        ng = cfg.n_groups
        seg_sum = [Signal(signed(DSP_ACC_BITS), name=f"seg_sum{s}") for s in range(ng)]
        with m.Switch(sb_r.span_log):
            for sl, span in _span_cases(cfg):
                with m.Case(sl) if span != cfg.spans[-1] else m.Default():
                    m.d.comb += [seg_sum[s].eq(R[min(ng, (s + 1) * span) - 1])
                                 for s in range(ng)]
        qsum = [Signal(signed(DSP_ACC_BITS), name=f"qsum{s}") for s in range(ng)]
        for s in range(ng):
            with m.If(en & sb_r.valid):
                m.d.sync += qsum[s].eq(Mux(sb_r.qfirst, 0, qsum[s]) + seg_sum[s])
        return qsum

    def _result(self, m, en, qsum, sb_q):
        """Group end: tile total (+ s2 * qsum in W4A8); tile end: the result
        beat. Drives `en`: the pipeline stops only when a tile's result would
        overwrite an untaken one."""
        cfg = self.config
        ng = cfg.n_groups
        out_valid = Signal()
        out = Signal(result_layout(cfg))
        emit = Signal()
        m.d.comb += [emit.eq(sb_q.valid & sb_q.tlast),
                     en.eq(~(out_valid & ~self.result.ready & emit)),
                     self.result.valid.eq(out_valid), self.result.payload.eq(out)]
        with m.If(self.result.ready):
            m.d.sync += out_valid.eq(0)
        tot = [Signal(signed(DSP_ACC_BITS), name=f"tot{s}") for s in range(ng)]
        wbits = cfg.w4_group_sum_bits
        for s in range(ng):
            term = Mux(sb_q.w4, qsum[s][:wbits].as_signed() * sb_q.s2[s], qsum[s])
            tot_new = Signal(signed(DSP_ACC_BITS), name=f"tot_new{s}")
            m.d.comb += tot_new.eq(Mux(sb_q.tfirst_grp, 0, tot[s]) + term)
            live = Signal(name=f"live{s}")   # s < segments of the tile's split
            with m.Switch(sb_q.span_log):
                for sl, span in _span_cases(cfg):
                    with m.Case(sl) if span != cfg.spans[-1] else m.Default():
                        m.d.comb += live.eq(s < ng // span)
            with m.If(en & sb_q.valid & sb_q.qlast):
                m.d.sync += tot[s].eq(tot_new)
                with m.If(sb_q.tlast):
                    m.d.sync += out[s].eq(Mux(live, tot_new[:ACC_BITS], 0))
        with m.If(en & emit):
            m.d.sync += out_valid.eq(1)
