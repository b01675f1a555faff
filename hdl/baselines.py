"""Baseline hardware the project's blocks are compared with (docs/results.md):

  BaselinePE, BaselineArray  conventional dequantize-then-multiply PE and array
                             (against hdl.mixpe's MixPECell and MixPE)
  ProductKernel              the per-element product a * q alone, by shift-and-add
                             or by `*` (the shift-add question without the rest of a PE)
  DenseChain                 a dense DSP48 cascade (against hdl.sparse_dsp's chain)

BaselinePE reconstructs the INT8 weight per element with a multiplier,
`w8 = (q - z) * s2` (DESIGN §3.2 step 3), multiplies it with the activation,
`a * w8`, and accumulates in int32 (two's complement wrap). It takes one
element per cycle, i.e. one MAC per cycle: the same throughput and the same
per-cycle inputs as one MixPE cell, so a resource comparison is like for like.
The only difference is where the dequantization happens (per element here,
once per group in MixPE) and that both products use `*`, which synthesis maps
to DSP48E2 blocks (or LUT multipliers when DSP inference is off).

Pipeline (registers between stages, so each `*` can absorb them into a DSP):
  stage 1: w8 = (q - z) * s2
  stage 2: p  = a * w8
  stage 3: acc = p (on `first`) or acc + p; after `last` the sum goes to `out`.
`out` is an output register with an optional shift chain (`shift` loads
`shift_in`) for draining a column of PEs; BaselineArray leaves it unused and
reads rows through a multiplexer, as hdl.mixpe.MixPE reads its output bank.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS
from golden.mixpe_config import MixPEConfig
from golden.sparse_dsp_config import DSP_ACC_BITS, SparseDSPConfig
from golden.validate import check_bool, expect_type

from .mixpe import element_ports, product_shape, shift_add_product
from .rtl import count_width
from .sparse_dsp import B_BITS, DSPGroup

__all__ = ["BaselinePE", "BaselineArray", "BASELINE_LATENCY", "ProductKernel", "DenseChain"]

def _config(component, config, cls):
    """`config` checked to be a `cls`. A component whose constructor fails is
    never elaborated, so Amaranth's "created but never used" warning is silenced."""
    if not isinstance(config, cls):
        component._MustUse__silence = True
    return expect_type("config", config, cls)


#: Cycles from an element on the inputs to its contribution being in `acc`.
BASELINE_LATENCY = 3


class BaselinePE(wiring.Component):
    """One conventional PE for `config.bits`-bit codes.

    Ports (all sampled when `valid` is high):
      valid : an element is present this cycle
      a     : signed INT8 activation
      q     : unsigned `bits`-bit weight code
      s2    : unsigned 8-bit integer group scale
      z     : unsigned `bits`-bit zero point (the baseline needs z itself, not z*s2,
              because it dequantizes each element before the multiply)
      first : first element of a dot product (accumulator restarts)
      last  : last element of a dot product
      shift, shift_in : drain a chain of output registers (out <= shift_in)
      out       : output-bank register: the int32 dot product once loaded
      out_load  : high in the cycle `out` holds a freshly finished dot product
                  (BASELINE_LATENCY cycles after `last`)
    """

    def __init__(self, config: MixPEConfig):
        self.config = _config(self, config, MixPEConfig)
        super().__init__({
            "valid": In(1),
            **element_ports(config),
            "s2": In(unsigned(SCALE_BITS)),
            "z": In(unsigned(config.bits)),
            "first": In(1),
            "last": In(1),
            "shift": In(1),
            "shift_in": In(signed(ACC_BITS)),
            "out": Out(signed(ACC_BITS)),
            "out_load": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the PE: multiply, dequantize per element, accumulate."""
        m = Module()
        bits = self.config.bits

        # Stage 1: per-element dequantization (q - z) * s2.
        # |q - z| <= 2**bits - 1 and s2 < 2**8, so w8 fits in bits + 1 + 8 bits signed.
        diff = Signal(signed(bits + 1))
        m.d.comb += diff.eq(self.q - self.z)
        w8 = Signal(signed(bits + 1 + SCALE_BITS))
        a1 = Signal(signed(ACT_BITS))
        v1, f1, l1 = Signal(), Signal(), Signal()
        m.d.sync += [
            w8.eq(diff * self.s2),
            a1.eq(self.a),
            v1.eq(self.valid), f1.eq(self.valid & self.first), l1.eq(self.valid & self.last),
        ]

        # Stage 2: the INT8 x dequantized-weight product.
        prod = Signal(signed(ACT_BITS + len(w8)))
        v2, f2, l2 = Signal(), Signal(), Signal()
        m.d.sync += [prod.eq(a1 * w8), v2.eq(v1), f2.eq(f1), l2.eq(l1)]

        # Stage 3: int32 accumulation; truncation to ACC_BITS is the two's complement wrap.
        acc = Signal(signed(ACC_BITS))
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(f2, 0, acc) + prod)
        with m.If(v2):
            m.d.sync += acc.eq(acc_next)
        # Output register: a finished sum has priority over a shift (a user
        # drains the chain before the next dot product finishes).
        m.d.sync += self.out_load.eq(v2 & l2)
        with m.If(v2 & l2):
            m.d.sync += self.out.eq(acc_next)
        with m.Elif(self.shift):
            m.d.sync += self.out.eq(self.shift_in)
        return m


class BaselineArray(wiring.Component):
    """`rows x cols` BaselinePEs: the reference hdl.mixpe.MixPE is compared with
    at equal throughput (rows*cols MACs per cycle). Inputs are shared as in the
    MixPE array (a per row, q/s2/z per column) and given per cycle, without
    streams; results are read one row at a time through a row multiplexer, as
    MixPE reads its output bank, so the PEs' shift chains are unused.

    Ports:
      valid, first, last : as BaselinePE (one k of all rows and columns)
      a   : In(ArrayLayout(signed(8), rows))
      q, z: In(ArrayLayout(unsigned(bits), cols))
      s2  : In(ArrayLayout(unsigned(8), cols))
      row : In  row of the output registers shown on `result`
      result   : Out(ArrayLayout(signed(32), cols))
      out_load : Out(1)  the output registers hold a freshly finished tile
    """

    def __init__(self, config: MixPEConfig):
        self.config = _config(self, config, MixPEConfig)
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "a": In(data.ArrayLayout(signed(ACT_BITS), config.rows)),
            "q": In(data.ArrayLayout(unsigned(config.bits), config.cols)),
            "s2": In(data.ArrayLayout(unsigned(SCALE_BITS), config.cols)),
            "z": In(data.ArrayLayout(unsigned(config.bits), config.cols)),
            "row": In(count_width(config.rows - 1)),
            "result": Out(data.ArrayLayout(signed(ACC_BITS), config.cols)),
            "out_load": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the rows x cols grid of BaselinePEs with shared row and column inputs."""
        m = Module()
        cfg = self.config
        pes = [[BaselinePE(cfg) for _ in range(cfg.cols)] for _ in range(cfg.rows)]
        for r in range(cfg.rows):
            for c in range(cfg.cols):
                pe = pes[r][c]
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.valid.eq(self.valid), pe.first.eq(self.first),
                             pe.last.eq(self.last), pe.a.eq(self.a[r]), pe.q.eq(self.q[c]),
                             pe.s2.eq(self.s2[c]), pe.z.eq(self.z[c]), pe.shift.eq(0),
                             pe.shift_in.eq(0)]
        m.d.comb += self.out_load.eq(pes[0][0].out_load)
        for c in range(cfg.cols):
            if cfg.rows == 1:
                m.d.comb += self.result[c].eq(pes[0][c].out)
                continue
            with m.Switch(self.row):
                for r in range(cfg.rows - 1):
                    with m.Case(r):
                        m.d.comb += self.result[c].eq(pes[r][c].out)
                with m.Default():
                    m.d.comb += self.result[c].eq(pes[cfg.rows - 1][c].out)
        return m


class ProductKernel(wiring.Component):
    """The per-element product `p = a * q`, registered, for `config.bits`-bit codes:
    by shift-and-add over the code bits as MixPE's S2 stage computes it
    (`shift_add=True`), or with `*`.

    Ports: a: In(signed(8)), q: In(unsigned(bits)), p: Out(hdl.mixpe.product_shape)
    (p is a and q of the previous cycle)."""

    def __init__(self, config: MixPEConfig, *, shift_add: bool):
        self.config = _config(self, config, MixPEConfig)
        if not isinstance(shift_add, bool):
            self._MustUse__silence = True
        self.shift_add = check_bool("shift_add", shift_add)
        super().__init__({**element_ports(config), "p": Out(product_shape(config))})

    def elaborate(self, platform: object) -> Module:
        """Build the registered product, by shift-and-add or by `*`."""
        m = Module()
        if self.shift_add:
            m.d.sync += self.p.eq(shift_add_product(self.a, self.q, self.config.bits))
        else:
            m.d.sync += self.p.eq(self.a * self.q)
        return m


class DenseChain(wiring.Component):
    """The DSP groups of hdl.sparse_dsp.SparseDSPChain fed directly: no sparse
    multiplexer and no W4A8 zero point, i.e. a plain dense DSP48 cascade of
    `config.L` stages in groups of `config.group_len`.

    Ports: en: In(1) (advances the pipeline), a: In(ArrayLayout(signed(8), L)),
    b: In(ArrayLayout(signed(8), L)), p: Out(ArrayLayout(signed(DSP_ACC_BITS), n_groups))
    (group g's sum of a[j] * b[j] over its stages, after the chain latency)."""

    def __init__(self, config: SparseDSPConfig):
        self.config = _config(self, config, SparseDSPConfig)
        super().__init__({
            "en": In(1),
            "a": In(data.ArrayLayout(signed(ACT_BITS), config.L)),
            "b": In(data.ArrayLayout(signed(B_BITS), config.L)),
            "p": Out(data.ArrayLayout(signed(DSP_ACC_BITS), config.n_groups))})

    def elaborate(self, platform: object) -> Module:
        """Build the dense DSP cascade: the groups of DSPStages fed straight from the ports."""
        m = Module()
        gl = self.config.group_len
        for g in range(self.config.n_groups):
            grp = DSPGroup(gl)
            m.submodules[f"group{g}"] = grp
            m.d.comb += [grp.en.eq(self.en), self.p[g].eq(grp.p)]
            m.d.comb += [grp.a[j].eq(self.a[g * gl + j]) for j in range(gl)]
            m.d.comb += [grp.b[j].eq(self.b[g * gl + j]) for j in range(gl)]
        return m
