"""python -m fpga_boards <command> ...

  build      Alveo build tree of a kernel: fit check, RTL, Tcl, v++ link config;
             runs Vitis/Vivado when on PATH (fpga_boards.build)
  host       the MixPE kernel's host program on a card through pyxrt (fpga_boards.host)
  resources  Yosys resource estimates: --block mixpe|lut|kv4_attention|core runs the
             block's comparison table (fpga_boards.resources_<block>); any block with
             --config/--kind/--options, or pim, sparse_dsp, sfu, estimates its designs
             (fpga_boards.resources_block)
  perf       system performance model: tokens/s per board and what-if (fpga_boards.perf)

`python -m fpga_boards <command> -h` gives the command's options.
"""
import sys

#: `resources --block NAME`: the per-block Yosys tables (fpga_boards.resources_NAME).
RESOURCE_BLOCKS = ("mixpe", "lut", "kv4_attention", "core")
COMMANDS = ("build", "host", "resources", "perf")


def _flag_value(rest: list[str], flag: str) -> tuple[str | None, list[str]]:
    """(value of `flag`, the other arguments); `flag VALUE` and `flag=VALUE` both."""
    for i, a in enumerate(rest):
        if a == flag and i + 1 < len(rest):
            return rest[i + 1], rest[:i] + rest[i + 2:]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1], rest[:i] + rest[i + 1:]
    return None, rest


def _resources(rest: list[str]) -> int:
    import importlib
    block, table_args = _flag_value(rest, "--block")
    per_design = any(a.split("=")[0] in ("--config", "--kind", "--options") for a in rest)
    if per_design or (block is not None and block not in RESOURCE_BLOCKS):
        # one estimate per design: any block, any configuration
        from .resources_block import main as run
        return run(rest)
    run = importlib.import_module(f"fpga_boards.resources_{block or 'mixpe'}").main
    return run(table_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m fpga_boards`: run the subcommand argv names; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m fpga_boards {{{','.join(COMMANDS)}}} ...  (-h for the "
              f"commands, -h after one for its options)", file=sys.stderr)
        return 2
    if argv[0] == "resources":
        return _resources(argv[1:])
    if argv[0] == "perf":
        from .perf import main as run
    elif argv[0] == "build":
        from .build import main as run
    else:
        from .host import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
