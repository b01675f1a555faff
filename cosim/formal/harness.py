"""The harness base class: a top-level Elaboratable with no ports that
instantiates one unmodified block, drives its inputs from free values under
the assumptions of legal input protocol, and asserts properties of its outputs
and internal counters. Each block's harness (cosim.formal.mixpe, ...) says
which property groups it has and which faults its `broken=` knob injects.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amaranth.hdl import Assert, Cover, Elaboratable, Module

from .monitors import Internals, Past

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from amaranth.hdl import ValueLike

__all__ = ["Harness"]


class Harness(Elaboratable):
    """Subclasses set `block` (its name in the tables), `groups` (property
    group -> one-line description), `faults` (fault name -> (the group whose
    properties it breaks, what it does)) and implement `make_block()` and
    `build(m, past, dut, peek)`; `build` asserts a group's properties under
    `with self.group(m, name):` and reads `self.broken` to inject its faults.

    group: the property group proven (its assertions; every harness's
    assumptions always apply). Groups whose proof needs another group's
    invariants name them in `helpers`: those are asserted (so proven) too.
    """

    block = "?"
    groups: dict[str, str] = {}
    faults: dict[str, str] = {}
    helpers: dict[str, tuple[str, ...]] = {}
    #: Submodules of the block (paths as Internals names them) that Yosys'
    #: `cutpoint` replaces by free outputs before the proof: an over-approximation
    #: (every behaviour of the cut unit is allowed), so a property proven with
    #: the cut holds for the real unit too.
    cut: tuple[str, ...] = ()

    def __init__(self, config: Any, group: str, *, broken: str | None = None):
        if group not in self.groups:
            raise ValueError(f"{self.block}: unknown property group {group!r}; "
                             f"groups: {sorted(self.groups)}")
        if broken is not None and broken not in self.faults:
            raise ValueError(f"{self.block}: unknown fault {broken!r}; "
                             f"faults: {sorted(self.faults)}")
        self.config = config
        self.group_name = group
        self.broken = broken
        # a fault demonstration asserts its group alone: the first assertion to
        # fail is then one of the group's (helpers only serve the induction)
        self.active = {group} if broken else {group, *self.helpers.get(group, ())}
        self.properties: list[tuple[str, str]] = []

    # -- for subclasses
    def make_block(self) -> Elaboratable:
        """A new instance of the block under proof, built from `config` (with the
        fault in `broken`, when it is one of the block itself)."""
        raise NotImplementedError

    def build(self, m: Module, past: Past, dut: Any, peek: Internals) -> None:
        """Add the harness to `m`: drive the inputs of `dut` (the block from
        make_block()) under the assumptions, and assert the active groups'
        properties; `past` gives last cycle's values, `peek` the block's
        internal signals."""
        raise NotImplementedError

    def on(self, group: str) -> bool:
        """Whether the properties of `group` are asserted in this run."""
        if group not in self.groups:
            raise ValueError(f"{self.block}: no group {group!r}")
        return group in self.active

    def check(self, m: Module, group: str, cond: ValueLike, message: str) -> None:
        """Assert `cond` (in every cycle; under the enclosing `m.If`s) when
        `group` is active. Its source location becomes `property:<i>`, which
        sby prints for a failing assertion: `self.properties[i]` names it."""
        if not self.on(group):
            return
        prop = Assert(cond, f"{self.block}/{group}: {message}")
        prop.src_loc = ("property", len(self.properties))
        self.properties.append((group, message))
        m.d.comb += prop

    def cover(self, m: Module, group: str, cond: ValueLike, message: str) -> None:
        """Cover `cond` when `group` is active (mode "cover": some trace from
        reset reaches it, so the assumptions do not rule it out)."""
        if not self.on(group):
            return
        prop = Cover(cond, f"{self.block}/{group}: {message}")
        prop.src_loc = ("property", len(self.properties))
        self.properties.append((group, message))
        m.d.comb += prop

    def checker(self, group: str) -> Callable[[Module, ValueLike, str], None] | None:
        """`check(m, cond, message)` bound to `group` (for monitors.sink), or
        None when the group is not asserted in this run."""
        if not self.on(group):
            return None
        return lambda m, cond, message: self.check(m, group, cond, message)

    def describe(self, locations: Iterable[str]) -> list[str]:
        """'group: message' of the failing assertions sby reported."""
        out = []
        for loc in locations:
            head, _, idx = loc.rpartition(":")
            if head == "property" and idx.isdigit() and int(idx) < len(self.properties):
                group, message = self.properties[int(idx)]
                out.append(f"{group}: {message}")
            else:
                out.append(loc)
        return out

    def elaborate(self, platform: Any) -> Module:
        """The harness: the block elaborated once (`Internals`) as submodule
        `dut`, with what `build` adds around it."""
        m = Module()
        past = Past(m)
        dut = self.make_block()
        peek = Internals(dut, platform)
        m.submodules.dut = peek.fragment
        self.build(m, past, dut, peek)
        return m
