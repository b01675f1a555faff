"""python -m fpga_boards build ... | host ... (see fpga_boards.build / fpga_boards.host)."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("build", "host"):
        print("usage: python -m fpga_boards {build,host} ...  (-h after the command for help)",
              file=sys.stderr)
        return 2
    if argv[0] == "build":
        from .build import main as run
    else:
        from .host import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
