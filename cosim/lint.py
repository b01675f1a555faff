"""Verilator lint of every generated design (`make lint`).

Writes the Verilog of hdl.generate.default_designs() (plus the baselines and the
MixPE Vitis kernel) into build/verilog and runs `verilator --lint-only -Wall` on each file with the
waivers in cosim/lint.vlt (each one justified there). Exits non-zero and prints
the warnings if any remain.

Run as `python -m cosim.lint`; `main(argv)` is the entry point that the
`python -m cosim lint` subcommand delegates to.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from fpga_boards.kernel import RtlKernel, mixpe_kernel
from fpga_boards.progress import step
from golden.mixpe_config import MixPEConfig
from golden.sparse_dsp_config import SparseDSPConfig
from hdl.baselines import BaselinePE, DenseChain, ProductKernel
from hdl.generate import BLOCKS, block_designs, default_designs, write_verilog
from quattro_fs import build_root

from cosim import runner

__all__ = ["LintResult", "WAIVERS", "verilator_command", "lint_file", "lint_designs",
           "designs_to_lint", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIVERS = Path(__file__).resolve().parent / "lint.vlt"
DEFAULT_OUT = build_root() / "verilog"

_WARNING_RE = re.compile(r"^%(Warning|Error)(-[A-Z0-9_]+)?:", re.M)


@dataclass(frozen=True, kw_only=True)
class LintResult:
    """One design's lint: its name and Verilog file, Verilator's exit status, messages and
    output."""
    name: str
    path: Path
    returncode: int
    messages: tuple[str, ...]   # the %Warning/%Error lines (first line of each)
    output: str                 # everything Verilator printed

    @property
    def clean(self) -> bool:
        """Whether Verilator exited 0 with no warning or error."""
        return self.returncode == 0 and not self.messages


def verilator_command(path: Path, top: str, *, waivers: Path | None = WAIVERS) -> list[str]:
    """The `verilator --lint-only -Wall` command for `path` with top `top` (and the waiver file)."""
    cmd = [str(runner.find_verilator().executable), "--lint-only", "-Wall", "--top-module", top]
    if waivers is not None:
        cmd.append(str(waivers))
    cmd.append(str(path))
    return cmd


def lint_file(path: Path | str, top: str | None = None, *,
              waivers: Path | None = WAIVERS, timeout_s: float = 300) -> LintResult:
    """`verilator --lint-only -Wall` on one Verilog file whose top module is `top`
    (default: the file's stem)."""
    path = Path(path)
    top = top or path.stem
    runner.verilator_env()
    proc = subprocess.run(verilator_command(path, top, waivers=waivers),
                          capture_output=True, text=True, timeout=timeout_s)
    output = proc.stdout + proc.stderr
    messages = tuple(line for line in output.splitlines()
                     if _WARNING_RE.match(line) and not line.startswith("%Error: Exiting"))
    returncode = proc.returncode
    if waivers is not None and any("UNUSEDSIGNAL" in m for m in messages):
        lines = path.read_text().splitlines()
        kept = tuple(m for m in messages if not _unread_alias(m, path, lines))
        if not kept and all(m.startswith("%Warning") for m in messages):
            returncode = 0      # Verilator failed on the waived aliases only
        messages = kept
    if returncode != 0 and not messages:
        messages = (f"%Error: verilator exited with {returncode}",)
    return LintResult(name=top, path=path, returncode=returncode,
                      messages=messages, output=output)


_UNUSED_RE = re.compile(r"^%Warning-UNUSEDSIGNAL: (.+?):(\d+):\d+: Signal is not used: '(.+)'$")


def _unread_alias(message: str, path: Path, lines: list[str]) -> bool:
    """Whether an UNUSEDSIGNAL message (on `path`, whose `lines` are given) is
    waived: one of Amaranth's named aliases (a wire, or a reg assigned
    combinationally, that keeps a Signal's name for waveforms while the logic
    reads the net it is assigned from) or a submodule's input. What a Verilator
    rule could not tell apart is kept as a finding: an unused input of the top
    module (e.g. an `rst` no register uses) and a dead register (assigned with
    `<=`, i.e. in a clocked block)."""
    m = _UNUSED_RE.match(message)
    if m is None or Path(m[1]).name != path.name or int(m[2]) > len(lines):
        return False
    at = int(m[2]) - 1
    start = next((i for i in range(at, -1, -1) if lines[i].startswith("module ")), 0)
    if re.match(r"\s*input\b", lines[at]):
        # A submodule's input is hierarchy plumbing: Amaranth wires `rst` into every
        # module of the sync domain (DSP48-style stages keep no reset) and passes
        # fields a configuration does not use. The top module's inputs must be read.
        return lines[start].startswith("module \\")
    if not re.match(r"\s*(wire|reg)\b", lines[at]):
        return False            # an output, or anything unexpected
    end = next((i for i in range(at, len(lines)) if lines[i].startswith("endmodule")),
               len(lines))
    name = m[3]
    # Yosys writes other names as escaped identifiers: a backslash, then a space
    ident = re.escape(name) + r"\b" if re.fullmatch(r"\w+", name) else \
        re.escape("\\" + name + " ")
    assigned = re.compile(r"\s*" + ident + r"\s*<=")
    return not any(assigned.match(ln) for ln in lines[start:end])


def designs_to_lint() -> list[tuple[str, Callable]]:
    """hdl.generate.default_designs() plus the baselines (synthesized for the
    resource comparisons, so they must be clean too) and the MixPE Vitis kernel."""
    cfg = MixPEConfig(bits=4)
    return [*default_designs(),
            ("baseline_pe_w4", lambda: BaselinePE(cfg)),
            ("product_shiftadd_w4", lambda: ProductKernel(cfg, shift_add=True)),
            ("product_mul_w4", lambda: ProductKernel(cfg, shift_add=False)),
            ("dense_chain_l8", lambda: DenseChain(SparseDSPConfig(L=8, group_len=4, K=512))),
            ("mixpe", lambda: RtlKernel(mixpe_kernel(cfg)))]


def lint_designs(designs: Iterable[tuple[str, Callable]] | None = None, *,
                 out_dir: Path | str = DEFAULT_OUT, waivers: Path | None = WAIVERS,
                 jobs: int | None = None) -> list[LintResult]:
    """Generate each (name, factory) design into `out_dir` and lint it."""
    designs = designs_to_lint() if designs is None else list(designs)
    with step(f"generating {len(designs)} design(s)", total=len(designs)) as s:
        paths = []
        for name, factory in designs:
            paths.append((name, write_verilog(factory(), name, out_dir)))
            s.advance()
    jobs = jobs or min(len(paths), os.cpu_count() or 1) or 1
    with step(f"verilator --lint-only of {len(paths)} design(s)", total=len(paths)) as s:
        def lint_one(np):
            r = lint_file(np[1], np[0], waivers=waivers)
            s.advance()
            return r
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(lint_one, paths))


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim.lint`: lint the generated designs and print each result;
    returns 0 when all are clean, 1 otherwise, 2 on a usage error."""
    ap = argparse.ArgumentParser(prog="python -m cosim.lint",
                                 description="verilator --lint-only -Wall on every "
                                             "generated design")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="where the Verilog is written (default: build/verilog)")
    ap.add_argument("--no-waivers", action="store_true",
                    help=f"lint without {WAIVERS.name} (shows what the waivers hide)")
    ap.add_argument("--design", action="append", default=[],
                    help="lint only this design name (repeatable)")
    ap.add_argument("--block", help=f"lint only this block's designs ({', '.join(BLOCKS)}): "
                    f"its default set, or the one design --config/--kind/--options name")
    ap.add_argument("--config", help="with --block: configuration fields (JSON object or a "
                    ".json file), as `python -m hdl <block> --config`")
    ap.add_argument("--kind", help="with --block: which design of the block")
    ap.add_argument("--options", help="with --block: the design's options (JSON object)")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    if argv is None:
        argv = sys.argv[1:]
        if argv[:1] == ["lint"]:  # called as `python -m cosim lint` via main() without argv
            argv = argv[1:]
    args = ap.parse_args(argv)

    if args.block is None and (args.config or args.kind or args.options):
        print("error: --config, --kind and --options need --block <name>", file=sys.stderr)
        return 2
    try:
        designs = (designs_to_lint() if args.block is None else
                   block_designs(args.block, args.config, args.kind, args.options))
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.design:
        known = {n for n, _ in designs}
        unknown = sorted(set(args.design) - known)
        if unknown:
            print(f"error: unknown design(s) {', '.join(unknown)}; choose from "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
        designs = [(n, f) for n, f in designs if n in args.design]
    try:
        results = lint_designs(designs, out_dir=args.out,
                               waivers=None if args.no_waivers else WAIVERS, jobs=args.jobs)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    dirty = [r for r in results if not r.clean]
    for r in results:
        print(f"{'ok  ' if r.clean else 'FAIL'} {r.path}"
              + ("" if r.clean else f"  ({len(r.messages)} warning(s))"))
    for r in dirty:
        print(f"\n==== {r.path}")
        print(r.output.rstrip())
    if dirty:
        print(f"\nlint: {len(dirty)} of {len(results)} design(s) have Verilator warnings",
              file=sys.stderr)
        return 1
    print(f"lint: {len(results)} design(s) clean (verilator -Wall, waivers: "
          f"{'none' if args.no_waivers else WAIVERS.relative_to(REPO_ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
