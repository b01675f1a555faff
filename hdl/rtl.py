"""Small combinational helpers every block uses, each written once so that
the generated Verilog is lint-clean (Verilator -Wall) everywhere.

No ports: functions of Amaranth values, and the one state register `FSM`.
`wire`, `tree`, `bit_length` and `rshift_round` take the Module so that reused
intermediate values become named signals.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Sequence

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, ValueLike, signed
from amaranth.utils import ceil_log2

__all__ = ["count_width", "is_const", "wire", "tree", "tree_sum", "select", "zext",
           "bit_length", "rshift_round", "FSM"]


def count_width(max_value: int) -> int:
    """Bits of an unsigned counter that must hold 0..max_value inclusive."""
    return max(1, ceil_log2(max_value + 1))


def is_const(value: Value, const: int) -> Value:
    """value == const. Comparisons with 0 are written as ~|value: Yosys prints
    `value == 0` as `!value`, which Verilator's lint flags (WIDTHTRUNC)."""
    if const == 0:
        return ~value.any()
    return value == const


def wire(m: Module, value: ValueLike, name: str) -> Signal:
    """A comb signal holding `value`: Amaranth does not share common
    subexpressions, so a value reused in a chain would grow exponentially."""
    sig = Signal(Value.cast(value).shape(), name=name)
    m.d.comb += sig.eq(value)
    return sig


def tree(m: Module, values: Sequence[ValueLike], op: Callable[[Value, Value], Value],
         name: str) -> Value:
    """Balanced reduction of `values` by `op` (log depth), every node a named
    comb signal `<name><k>`."""
    values = list(values)
    if not values:
        raise ValueError(f"tree {name!r} needs at least one value")
    k = 0
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values) - 1, 2):
            nxt.append(wire(m, op(values[i], values[i + 1]), f"{name}{k}"))
            k += 1
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def tree_sum(terms: Sequence[ValueLike]) -> Value:
    """Balanced adder tree as one expression (log depth instead of a ripple
    chain); for sums whose nodes need no names."""
    terms = list(terms)
    if not terms:
        raise ValueError("tree_sum needs at least one term")
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


def select(index: Value, values: Sequence[ValueLike]) -> Value:
    """values[index] as a chain of 2:1 muxes, the one run-time selector of the
    project. No case statement and no dynamic part-select: both lint clean for any
    len(values), where a Switch leaves incomplete cases and an Array index lowers
    to a double-width shift (Verilator WIDTH*). An index past the end gives
    values[0]; callers keep the index in range."""
    values = list(values)
    if not values:
        raise ValueError("select needs at least one value")
    out = Value.cast(values[0])
    for k in range(1, len(values)):
        out = Mux(index == k, values[k], out)
    return out


def zext(value: Value, width: int) -> Value:
    """`value` zero-extended to `width` bits (returned as is when already that
    wide): the add or compare it enters is computed at `width` bits. It does not
    by itself make the Verilog's operands equal in width: Yosys folds the zero
    concatenation into the operator, leaving the narrow operand for Verilog to
    zero-extend (the same value). A named signal of it (`wire`) mostly keeps the
    wide operand, but may be folded too; cosim/lint.vlt lists the WIDTHEXPAND
    waivers that remain."""
    value = Value.cast(value)
    n = len(value)
    return value if n >= width else Cat(value, Const(0, width - n))


def bit_length(m: Module, x: Value, name: str, bits: int | None = None) -> Signal:
    """The bit length of x's low `bits` bits (all of x by default; 0 for none set)
    in a named comb signal: the highest set bit wins."""
    bits = len(x) if bits is None else bits
    bl = Signal(count_width(bits), name=name)
    for b in range(bits):
        with m.If(x[b]):
            m.d.comb += bl.eq(b + 1)
    return bl


def rshift_round(m: Module, x: Value, s: Value, name: str) -> Value:
    """Round-half-up right shift by a variable s (golden.kv4_attention.rshift_round),
    both addends the same width. Signed x is first widened so that the half LSB
    2**(s-1) fits for every s; for unsigned x a half beyond x's width is 0,
    which gives the same result (x < 2**len(x) <= 2**(s-1))."""
    smax = (1 << len(s)) - 1
    if x.shape().signed:
        w = max(len(x), smax + 1) + 1
        half = Signal(signed(w), name=f"{name}_half")
        xs = Signal(signed(w), name=f"{name}_x")
        m.d.comb += [half.eq(((Const(1, w) << s) >> 1)[:w - 1]), xs.eq(x)]
        return (xs + half) >> s
    w = len(x)
    half = Signal(w, name=f"{name}_half")
    m.d.comb += half.eq(((Const(1, w + 1) << s) >> 1)[:w])
    return (x + half) >> s


class FSM:
    """A state register with one `If` per state: Amaranth's m.FSM emits a `casez`
    that Verilator's lint flags as incomplete (CASEINCOMPLETE). `states` in code
    order (the first is the reset state)."""

    def __init__(self, m: Module, states: Sequence[str], name: str):
        self.m = m
        self.codes = {n: i for i, n in enumerate(states)}
        self.reg = Signal(range(len(states)), name=name)

    def is_(self, name: str) -> Value:
        """reg == the code of state `name`."""
        return self.reg == self.codes[name]

    def state(self, name: str) -> AbstractContextManager:
        """`with fsm.state(name):` the logic of that state."""
        return self.m.If(self.is_(name))

    def next(self, name: str) -> None:
        """Go to state `name` on the next cycle."""
        self.m.d.sync += self.reg.eq(self.codes[name])
