"""python -m hdl: write Verilog.

  python -m hdl mixpe --bits 4 --group 64 --rows 4 --cols 8 --K 1024 --out DIR
  python -m hdl mixpe ... --system --max-m-tiles 2 --max-n-tiles 2 --out DIR
  python -m hdl mixpe ... --cell --out DIR
  python -m hdl --all --out build/verilog
"""
from __future__ import annotations

import argparse
import sys

from golden.mixpe_config import MixPEConfig

from .generate import default_designs, mixpe_factory, write_verilog


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hdl", description="Generate Verilog.")
    p.add_argument("design", nargs="?", choices=["mixpe"], help="block to generate")
    p.add_argument("--all", action="store_true", help="generate the default design set")
    p.add_argument("--out", default="build/verilog", help="output directory")
    defaults = MixPEConfig()
    for field in ("bits", "group", "rows", "cols", "K"):
        p.add_argument(f"--{field}", type=int, default=getattr(defaults, field))
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--system", action="store_true", help="MixPESystem (memories + sequencer)")
    kind.add_argument("--cell", action="store_true", help="a single MixPECell")
    p.add_argument("--max-m-tiles", type=int, default=1)
    p.add_argument("--max-n-tiles", type=int, default=1)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.all == (args.design is not None):
            raise ValueError("give either a design name (mixpe) or --all")
        if args.all:
            designs = default_designs()
        else:
            config = MixPEConfig(bits=args.bits, group=args.group, rows=args.rows,
                                 cols=args.cols, K=args.K)
            kind = "system" if args.system else "cell" if args.cell else "array"
            if kind == "system":
                for flag, v in (("--max-m-tiles", args.max_m_tiles),
                                ("--max-n-tiles", args.max_n_tiles)):
                    if v < 1:
                        raise ValueError(f"{flag} must be >= 1, got {v}")
            designs = [mixpe_factory(config, kind=kind, max_m_tiles=args.max_m_tiles,
                                     max_n_tiles=args.max_n_tiles)]
        for name, factory in designs:
            path = write_verilog(factory(), name, args.out)
            print(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
