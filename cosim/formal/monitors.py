"""The pieces every harness is built from: the previous cycle's values, free
stream sources whose protocol is assumed, stream sinks whose protocol is
asserted, beat counters, and reading a block's internal signals by name.

Stream protocol (amaranth.lib.stream): a beat transfers in a cycle where
`valid & ready`; once `valid` is high it stays high, with the same payload,
until the beat transfers. A source the harness drives is assumed to follow it
(legal input protocol); a stream the block drives is asserted to. A reset
(the harness's `rst`, free in every proof) may drop a beat: the rule restarts
the cycle after it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amaranth.asserts import AnySeq
from amaranth.hdl import Assume, Cat, Fragment, Module, Signal, Value
from amaranth.utils import ceil_log2

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from amaranth.hdl import Elaboratable, ValueLike
    from amaranth.lib.stream import Interface as StreamInterface
    from amaranth.lib.wiring import FlippedInterface

__all__ = ["Past", "Internals", "free", "source", "sink", "tap", "TAP_FAULTS", "port_faults", "counter_width"]


def counter_width(max_value: int) -> int:
    """Bits of an unsigned counter holding 0..max_value."""
    return max(1, ceil_log2(max_value + 1))


class Past:
    """`past(x)`: x one cycle ago, in a register; `past.ok`: there was such a
    cycle since the last reset (low in the first cycle and after a reset)."""

    def __init__(self, m: Module):
        # the registers live in their own module, so that past() called under
        # an `m.If` still samples every cycle
        self._m = Module()
        m.submodules.past = self._m
        self.ok = Signal(name="past_ok")
        self._m.d.sync += self.ok.eq(1)
        self._regs = {}

    def __call__(self, value, name: str | None = None) -> Signal:
        value = Value.cast(value)
        key = id(value)
        if key not in self._regs:
            reg = Signal(value.shape(), name=f"past_{name or 'v'}")
            self._m.d.sync += reg.eq(value)
            self._regs[key] = (value, reg)   # keep `value` alive: ids stay unique
        return self._regs[key][1]


def free(m: Module, target: ValueLike, name: str = "free") -> Signal:
    """Drive `target` (a signal, View or port) from a free input (AnySeq):
    any value in any cycle, unless an assumption narrows it."""
    v = Value.cast(target)
    sig = Signal(v.shape(), name=name)
    m.d.comb += [sig.eq(AnySeq(len(v))), v.eq(sig)]
    return sig


def source(m: Module, past: Past, stream: StreamInterface | FlippedInterface, name: str, *,
           payload: ValueLike | None = None, fault: bool = False) -> Value:
    """Drive the block's input `stream` from a free source that keeps the stream
    protocol (assumed). `payload`, when given, is the harness's own value for
    it. Returns the transfer strobe as the source sees it: `valid & ready`, or
    with `fault` (port-level fault `lose_input`) also one cycle, at a free moment,
    where the source takes its beat as sent though the block did not take it."""
    free(m, stream.valid, f"{name}_valid")
    pay = Value.cast(stream.payload)
    if payload is None:
        free(m, stream.payload, f"{name}_payload")
    else:
        m.d.comb += pay.eq(payload)
    seen_ready = Signal(name=f"{name}_seen_ready")
    m.d.comb += seen_ready.eq(stream.ready)
    if fault:
        used = Signal(name=f"{name}_fault_used")
        g = Signal(name=f"{name}_fault_now")
        m.d.comb += g.eq(AnySeq(1))
        with m.If(stream.valid & ~stream.ready & g & ~used):
            m.d.comb += seen_ready.eq(1)
            m.d.sync += used.eq(1)
    stalled = past(stream.valid & ~seen_ready, f"{name}_stalled")
    ppay = past(pay, f"{name}_payload")
    with m.If(past.ok & stalled):
        m.d.comb += [Assume(stream.valid, f"{name}: valid held until ready"),
                     Assume(pay == ppay, f"{name}: payload stable while stalled")]
    return stream.valid & seen_ready


def sink(m: Module, past: Past, stream: StreamInterface | _Observed, name: str, *,
         ready: ValueLike | None = None,
         check: Callable[[Module, ValueLike, str], None] | None = None,
         sources: Sequence[ValueLike] | None = None) -> Value:
    """Take the block's output `stream` with a free (or the given) `ready` and
    assert its protocol through `check(m, cond, message)` (Harness.checker;
    None: not asserted): valid held until ready, payload stable while stalled.
    With `sources` (registers), the payload's stability is asserted as theirs
    instead: the payload is a combinational function of them, and comparing
    two copies of a wide multiplier or divider is more than the solver can do.
    Returns the transfer strobe."""
    if not getattr(stream.signature, "always_ready", False):
        if ready is None:
            free(m, stream.ready, f"{name}_ready")
        else:
            m.d.comb += stream.ready.eq(ready)
    stalled = past(stream.valid & ~stream.ready, f"{name}_stalled")
    pay = Value.cast(stream.payload)
    ppay = past(pay, f"{name}_payload")
    if check is not None:
        srcs = [] if sources is None else [Value.cast(s) for s in sources]
        prev = [past(s, f"{name}_src") for s in srcs]
        with m.If(past.ok & stalled):
            check(m, stream.valid, f"{name}: valid held until ready")
            if sources is None:
                check(m, pay == ppay, f"{name}: payload stable while stalled")
            else:
                check(m, Cat(*srcs) == Cat(*prev),
                      f"{name}: the registers the payload is computed from stable while "
                      f"stalled")
    return stream.valid & stream.ready


class Internals:
    """A block's internal signals by name, read from its elaborated fragment
    (the block itself is unchanged: the harness elaborates it once with
    `Fragment.get` and adds that fragment as its submodule).

    `self[name]` is the one signal of that name assigned anywhere in the
    hierarchy; `self[path, name]` the one under submodule path `path`
    ("dq_0" or "core/tfifo")."""

    def __init__(self, block: Elaboratable, platform: Any = None):
        self.fragment = Fragment.get(block, platform)
        self._by_name: dict[str, list[tuple[str, Signal]]] = {}
        self._read: dict[str, set[int]] = {}     # path -> ids of the signals it reads
        self._collect(self.fragment, "")

    def _collect(self, frag, path: str) -> None:
        read = self._read.setdefault(path, set())
        for stmts in frag.statements.values():
            for st in stmts:
                read.update(id(s) for s in st._rhs_signals())
                for s in st._lhs_signals():
                    lst = self._by_name.setdefault(s.name, [])
                    if all(s is not t for _, t in lst):
                        lst.append((path, s))
        for sub, name, _ in frag.subfragments:
            self._collect(sub, f"{path}/{name}" if path else str(name))

    def __getitem__(self, key) -> Signal:
        return self.get(*key) if isinstance(key, tuple) else self.get(None, key)

    def read_by(self, name: str, path: str) -> Signal:
        """The one signal `name` that its parent drives and submodule `path`
        reads: the submodule's input port (the parent drives every submodule's
        port of that name, so `self[name]` finds several)."""
        parent = path.rpartition("/")[0]
        hits = [s for p, s in self._by_name.get(name, [])
                if p == parent and id(s) in self._read.get(path, ())]
        if len(hits) != 1:
            raise KeyError(f"internal signal {name!r} read under {path!r}: {len(hits)} "
                           f"matches; the block's RTL changed, update the harness")
        return hits[0]

    def matching(self, path: str, pattern: str) -> list[Signal]:
        """Every signal assigned under submodule `path` whose name matches the
        regular expression `pattern` (whole name), in name order."""
        import re
        rx = re.compile(pattern)
        return [s for name in sorted(self._by_name) if rx.fullmatch(name)
                for p, s in self._by_name[name] if p == path]

    def get(self, path: str | None, name: str, width: int | None = None) -> Signal:
        """The one signal `name` (of `width` bits, when given) assigned under
        submodule `path` (None: anywhere). Unnamed signals of the RTL (a
        SimpleNamespace member) are called "$signal": `width` tells them apart."""
        hits = [(p, s) for p, s in self._by_name.get(name, [])
                if (path is None or p == path) and (width is None or len(s) == width)]
        if len(hits) != 1:
            where = sorted(p or "." for p, _ in self._by_name.get(name, []))
            raise KeyError(f"internal signal {name!r}"
                           + (f" under {path!r}" if path is not None else "")
                           + f": {len(hits)} matches (found under {where}); the block's "
                           f"RTL changed, update the harness")
        return hits[0][1]


class _Observed:
    """A stream as the harness sees it after a tap (`tap`)."""

    def __init__(self, stream, name):
        v = Value.cast(stream.payload)
        self.signature = stream.signature
        self.valid = Signal(name=f"{name}_obs_valid")
        self.ready = Signal(name=f"{name}_obs_ready")
        self.payload = Signal(v.shape(), name=f"{name}_obs_payload")


#: Port-level faults (the `broken=` knob of a harness): a tap injects one into
#: a stream the block drives, `source(fault=True)` the last into one it takes.
TAP_FAULTS = {
    "drop_valid": "valid drops for a cycle while the beat waits (the beat is kept)",
    "glitch_payload": "the payload's bit 0 flips in some cycle while the beat waits",
    "dup_beat": "a beat is presented a second time after it transferred",
    "lose_beat": "a beat is taken from the block but never presented",
    "lose_input": "an input beat counts as sent though the block never took it",
    "valid_after_reset": "valid shows high in the cycle after a reset",
}


def port_faults(out: str, inp: str | None = None, *, taker: str = "the block",
                names: tuple[str, ...] = ("glitch_payload", "dup_beat", "lose_beat",
                                          "lose_input", "valid_after_reset")
                ) -> dict[str, str]:
    """A harness's descriptions of the TAP_FAULTS in `names`, injected on its output
    stream `out` (and, for lose_input, its input stream `inp`, taken by `taker`);
    both given with their article ("a result", "an x")."""
    bare = out.split()[-1]
    text = {
        "glitch_payload": f"{bare} payload bit 0 flips while stalled (port)",
        "dup_beat": f"{out} beat is presented twice (port)",
        "lose_beat": f"{out} beat is taken and dropped (port)",
        "lose_input": f"{inp} beat counts as sent though {taker} did not take it (port)",
        "valid_after_reset": f"{bare} valid shows high in the cycle after a reset (port)",
    }
    return {n: text[n] for n in names}


def tap(m: Module, past: Past, stream: StreamInterface, name: str,
        fault: str | None = None) -> _Observed:
    """Pass the block's output `stream` to the harness unchanged, or with one of
    TAP_FAULTS injected (at a free moment). Returns the observed stream."""
    obs = _Observed(stream, name)
    pay = Value.cast(stream.payload)
    always = getattr(stream.signature, "always_ready", False)
    dut_ready = Signal(name=f"{name}_dut_ready")
    m.d.comb += [obs.valid.eq(stream.valid), obs.payload.eq(pay), dut_ready.eq(obs.ready)]
    if fault is not None and fault not in TAP_FAULTS:
        raise ValueError(f"unknown tap fault {fault!r}; faults: {sorted(TAP_FAULTS)}")
    g = Signal(name=f"{name}_fault_now")
    if fault is not None:
        m.d.comb += g.eq(AnySeq(1))
    if fault == "valid_after_reset":
        m.d.comb += obs.valid.eq(stream.valid | ~past.ok)
    elif fault == "drop_valid":
        m.d.comb += [obs.valid.eq(stream.valid & ~g), dut_ready.eq(obs.ready & ~g)]
    elif fault == "glitch_payload":
        m.d.comb += obs.payload.eq(pay ^ g)
    elif fault in ("dup_beat", "lose_beat"):
        used = Signal(name=f"{name}_fault_used")     # one fault per trace suffices
        if fault == "dup_beat":
            rep = Signal(name=f"{name}_repeat")
            held = Signal(pay.shape(), name=f"{name}_held")
            with m.If(rep):
                m.d.comb += [obs.valid.eq(1), obs.payload.eq(held), dut_ready.eq(0)]
                with m.If(obs.ready):
                    m.d.sync += rep.eq(0)
            with m.Elif(stream.valid & obs.ready & g & ~used):
                m.d.sync += [rep.eq(1), held.eq(pay), used.eq(1)]
        else:
            drop = g & ~used & stream.valid
            with m.If(drop):
                m.d.comb += [obs.valid.eq(0), dut_ready.eq(1)]
                m.d.sync += used.eq(1)
    if always:
        m.d.comb += obs.ready.eq(1)
    else:
        m.d.comb += stream.ready.eq(dut_ready)
    return obs
