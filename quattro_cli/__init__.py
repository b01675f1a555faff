"""`quattro`: one command for what a user does, each subcommand running the
package command that does the work (the same code as `python -m <package>` and
the Makefile), so nothing here parses their options twice.

    quattro verilog --block lut --config '{"rows": 1, "cols": 16}'
    quattro sim --block kv4_attention --only T1_ideal
    quattro --build-dir /tmp/qb resources --block pim

The per-block commands (verilog, sim, lint, resources, bitstream) take
`--block <name>` and `--config` as a JSON object or the path of a .json/.yaml
file; quattro turns a file into JSON text and `--block` into the form the
package command takes. `--build-dir DIR` (or $QUATTRO_BUILD) says where
generated files go (default: ./build, see quattro_fs.build_root).

Import rules (tests/test_layering.py): quattro_cli sits on top of every package
and nothing imports it; it imports a command's package only when that command
runs, so `quattro --help` stays instant and torch-free.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["Command", "COMMANDS", "commands", "config_text", "main"]

PROG = "quattro"


class UsageError(ValueError):
    """A mistake on quattro's own options (--block, --config, --build-dir)."""


@dataclass(frozen=True)
class Command:
    """A subcommand: `summary` is its line in `quattro --help`; `target` the
    package command it runs; `per_block` whether it takes --block/--config;
    `needs` a module that must be importable for it to exist (commands of
    packages that are optional or still to land)."""
    name: str
    summary: str
    target: str
    run: Callable[[list[str]], int]
    per_block: bool = False
    needs: str | None = None


# ------------------------------------------------------------------ --config

def config_text(value: str) -> str:
    """`--config` as JSON text: a JSON object as given, or the contents of a
    .json/.yaml/.yml file (YAML converted to JSON)."""
    path = Path(value)
    suffix = path.suffix.lower()
    looks_like_file = not value.lstrip().startswith("{") and suffix in (".json", ".yaml", ".yml")
    if not looks_like_file:
        return value
    if not path.is_file():
        raise UsageError(f"--config {value}: no such file; give a JSON object, e.g. "
                         f"--config '{{\"rows\": 2}}', or the path of a .json/.yaml file")
    text = path.read_text()
    if suffix == ".json":
        return text
    try:
        import yaml  # noqa: PLC0415 (only for YAML files)
    except ImportError:
        raise UsageError(f"--config {value}: reading YAML needs PyYAML; "
                         f"`pip install PyYAML` or give the configuration as JSON") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"--config {value} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {value} must hold a mapping of configuration fields")
    return json.dumps(data)


def _block_args(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(--block, --config as JSON text, the rest for the package command)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--block")
    p.add_argument("--config")
    known, rest = p.parse_known_args(argv)
    config = config_text(known.config) if known.config is not None else None
    return known.block, config, rest


def _help_asked(argv: list[str], command: str | None = None, target: str = "") -> bool:
    """True when -h/--help is among `argv`; for a per-block `command`, first say how
    --block/--config map onto the package command whose help follows."""
    asked = any(a in ("-h", "--help") for a in argv)
    if asked and command is not None:
        as_what = {"verilog": "block argument", "bitstream": "--kernel"}.get(command, "--block")
        print(f"quattro {command} --block NAME --config JSON|FILE.json|FILE.yaml [options]\n"
              f"runs `{target}` with the block as its {as_what} and the configuration as "
              f"JSON text; its options:\n")
    return asked


# ------------------------------------------------------------------ the commands

def _verilog(argv: list[str]) -> int:
    from hdl.__main__ import main as hdl_main
    if _help_asked(argv, "verilog", "python -m hdl"):
        return hdl_main(["--help"])
    block, config, rest = _block_args(argv)
    if block is None and "--all" not in rest:
        raise UsageError("give --block <name> (one of mixpe, lut, sparse_dsp, pim, "
                         "kv4_attention, sfu, core) or --all")
    args = ([block] if block is not None else []) + (
        ["--config", config] if config is not None else [])
    return hdl_main(args + rest)


def _cosim(command: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from cosim.__main__ import main as cosim_main
        if _help_asked(argv, command, f"python -m cosim {command}"):
            return cosim_main([command, "--help"])
        block, config, rest = _block_args(argv)
        args = ([] if block is None else ["--block", block]) + (
            [] if config is None else ["--config", config])
        return cosim_main([command, *args, *rest])
    return run


def _resources(argv: list[str]) -> int:
    from fpga_boards.__main__ import main as boards_main
    if _help_asked(argv, "resources", "python -m fpga_boards resources"):
        from fpga_boards.resources_block import main as block_main
        return block_main(["--help"])
    block, config, rest = _block_args(argv)
    args = ([] if block is None else ["--block", block]) + (
        [] if config is None else ["--config", config])
    return boards_main(["resources", *args, *rest])


def _bitstream(argv: list[str]) -> int:
    from fpga_boards.__main__ import main as boards_main
    if _help_asked(argv, "bitstream", "python -m fpga_boards build"):
        return boards_main(["build", "--help"])
    from fpga_boards.kernel import KERNELS
    block, config, rest = _block_args(argv)
    if block is None and "--kernel" not in rest:
        raise UsageError(f"give --block <kernel> ({', '.join(KERNELS)}: the blocks with an "
                         f"Alveo kernel) and --board (u280, u250, u55c)")
    if block is not None and block not in KERNELS:
        raise UsageError(f"block {block!r} has no Alveo kernel; bitstream builds "
                         f"{', '.join(KERNELS)} (`quattro resources --block {block}` "
                         f"estimates its resources)")
    args = ([] if block is None else ["--kernel", block]) + (
        [] if config is None else ["--config", config])
    return boards_main(["build", *args, *rest])


def _passthrough(module: str, *head: str) -> Callable[[list[str]], int]:
    """Run `module`'s main with `head` + the user's arguments unchanged."""
    def run(argv: list[str]) -> int:
        main_ = importlib.import_module(module).main
        return main_([*head, *argv])
    return run


COMMANDS: tuple[Command, ...] = (
    Command("verilog", "write Verilog of a block's configuration (or --all defaults)",
            "python -m hdl", _verilog, per_block=True),
    Command("sim", "co-simulate blocks under Verilator, bit-exact against golden "
            "(build/sim/report.json)", "python -m cosim sim", _cosim("sim"), per_block=True),
    Command("lint", "verilator --lint-only -Wall on generated Verilog",
            "python -m cosim lint", _cosim("lint"), per_block=True),
    Command("resources", "Yosys synth_xilinx resource estimates of a block's designs",
            "python -m fpga_boards resources", _resources, per_block=True),
    Command("bitstream", "Alveo build tree of a kernel (runs Vitis/Vivado when on PATH)",
            "python -m fpga_boards build", _bitstream, per_block=True),
    Command("models", "prepare the real models (SmolLM2, MiniLM) into build/models",
            "python -m quantflow models", _passthrough("quantflow.cli", "models")),
    Command("eval", "perplexity and per-layer SQNR of a quantization scheme on a model",
            "python -m quantflow eval", _passthrough("quantflow.cli", "eval")),
    Command("export", "quantize weights or a whole model into memory images",
            "python -m quantflow export", _passthrough("quantflow.cli", "export")),
    Command("compile", "compile a model into the integer model's image (memory map + "
            "manifest)", "python -m quantflow compile", _passthrough("quantflow.cli", "compile")),
    Command("rotation-search", "choose a residual rotation's random draw on calibration text",
            "python -m quantflow rotation-search",
            _passthrough("quantflow.cli", "rotation-search")),
    Command("generate", "generate text through the co-simulated core, checked against golden",
            "python -m cosim generate", _passthrough("cosim.__main__", "generate")),
    Command("perf", "system performance model: tokens/s per board and what-ifs",
            "python -m fpga_boards perf", _passthrough("fpga_boards.__main__", "perf"),
            needs="fpga_boards.perf"),
    Command("sweep", "design-space sweep of a space file (resumable)",
            "python -m dse sweep", _passthrough("dse.__main__", "sweep"), needs="dse"),
)


def _available(c: Command) -> bool:
    if c.needs is None:
        return True
    try:
        return importlib.util.find_spec(c.needs) is not None
    except ModuleNotFoundError:
        return False


def commands() -> dict[str, Command]:
    """The subcommands this installation has, by name."""
    return {c.name: c for c in COMMANDS if _available(c)}


def _usage(cmds: dict[str, Command]) -> str:
    width = max(map(len, cmds))
    lines = [f"usage: {PROG} [--build-dir DIR] <command> [options]", "",
             "RTL generator and HW/SW co-design framework for low-bit LLM inference "
             "accelerators.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in cmds.values()]
    lines += ["",
              "verilog, sim, lint, resources and bitstream take --block <name> and --config",
              "(a JSON object, or a .json/.yaml file of configuration fields).",
              f"`{PROG} <command> --help` gives the command's options; each runs the same code",
              "as `python -m <package> <command>`.",
              "",
              "options:",
              "  --build-dir DIR  where generated files go (default ./build; env QUATTRO_BUILD)",
              "  --version        print the version"]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("quattro")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _pop_build_dir(argv: list[str]) -> tuple[str | None, list[str]]:
    """--build-dir DIR (or =DIR) anywhere before a `--` separator, removed."""
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--build-dir":
            if i + 1 >= len(argv):
                raise UsageError("--build-dir needs a folder")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--build-dir="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    """The `quattro` command: run the subcommand argv names; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cmds = commands()
    try:
        build_dir, argv = _pop_build_dir(argv)
        if build_dir is not None:
            # set before any package is imported: they read it for their defaults
            os.environ["QUATTRO_BUILD"] = str(Path(build_dir).expanduser().absolute())
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(cmds), file=sys.stdout if argv else sys.stderr)
            return 0 if argv else 2
        if argv[0] == "--version":
            print(f"{PROG} {_version()}")
            return 0
        name, rest = argv[0], argv[1:]
        if name not in cmds:
            raise UsageError(f"unknown command {name!r}; the commands are "
                             f"{', '.join(cmds)} (`{PROG} --help`)")
        code = cmds[name].run(rest)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help (0) and usage errors (2) in a command
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return int(code or 0)
