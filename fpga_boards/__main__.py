"""python -m fpga_boards build ... | host ... | resources --block BLOCK ... | perf ...
(see fpga_boards.build / fpga_boards.host / fpga_boards.resources_<block> /
fpga_boards.perf)."""
import sys

#: `resources --block NAME`: the per-block Yosys tables (fpga_boards.resources_NAME).
RESOURCE_BLOCKS = ("mixpe", "lut", "kv4_attention", "core")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("build", "host", "resources", "perf"):
        print("usage: python -m fpga_boards {build,host,resources,perf} ...  (-h after the "
              "command for help)", file=sys.stderr)
        return 2
    if argv[0] == "resources":
        rest = argv[1:]
        block = "mixpe"
        if "--block" in rest:
            i = rest.index("--block")
            if i + 1 >= len(rest) or rest[i + 1] not in RESOURCE_BLOCKS:
                print(f"usage: python -m fpga_boards resources --block "
                      f"{{{','.join(RESOURCE_BLOCKS)}}} ...", file=sys.stderr)
                return 2
            block = rest[i + 1]
            rest = rest[:i] + rest[i + 2:]
        import importlib
        run = importlib.import_module(f"fpga_boards.resources_{block}").main
        return run(rest)
    if argv[0] == "perf":
        from .perf import main as run
    elif argv[0] == "build":
        from .build import main as run
    else:
        from .host import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
