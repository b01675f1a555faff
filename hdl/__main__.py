"""python -m hdl: write Verilog of any block (hdl.generate.BLOCKS).

  python -m hdl <block> [--config JSON] [--kind KIND] [--options JSON] --out DIR
      block: mixpe, lut, sparse_dsp, pim, kv4_attention, sfu, core; --config gives
      fields of the block's golden configuration as a JSON object or a .json file
      (the rest keep their defaults; nested ones, the core's sfu and kv4, as
      objects of their own fields); --kind
      picks one of the block's designs; --options its keyword arguments, e.g.
      python -m hdl pim --kind system --options '{"sizes": {"max_mem": 64, ...}}'
  python -m hdl mixpe --bits 4 --group 64 --rows 4 --cols 8 --K 1024 --out DIR
  python -m hdl mixpe ... --system --max-m-tiles 2 --max-n-tiles 2 --out DIR
  python -m hdl mixpe ... --cell --out DIR
  python -m hdl --all --out build/verilog
"""
from __future__ import annotations

import argparse
import os
import sys

from quattro_fs import build_root

from .generate import BLOCKS, block_config, default_designs, design, json_object, write_verilog

#: MixPE's own flags: configuration fields, and the kind and tile options.
_MIXPE_FIELDS = ("bits", "group", "rows", "cols", "K")
_MIXPE_TILES = ("max_m_tiles", "max_n_tiles")


class UsageError(ValueError):
    """A mistake on the command line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hdl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("block", nargs="?", help=f"block to generate: {', '.join(BLOCKS)}")
    p.add_argument("--all", action="store_true", help="generate every block's default designs")
    p.add_argument("--out", default=str(build_root() / "verilog"),
                   help="output directory (default: build/verilog, see quattro_fs.build_root)")
    p.add_argument("--config", default="{}", help="configuration fields as a JSON object "
                   "(or a .json file)")
    p.add_argument("--kind", default=None, help="which design of the block (default: the first)")
    p.add_argument("--options", default="{}", help="the design's options as a JSON object")
    mix = p.add_argument_group("mixpe only")
    for field in _MIXPE_FIELDS:
        mix.add_argument(f"--{field}", type=int, default=None)
    kind = mix.add_mutually_exclusive_group()
    kind.add_argument("--system", action="store_true", help="MixPESystem (memories + sequencer)")
    kind.add_argument("--cell", action="store_true", help="a single MixPECell")
    for opt in _MIXPE_TILES:
        mix.add_argument(f"--{opt.replace('_', '-')}", dest=opt, type=int, default=None)
    return p


def _mixpe_flags(args) -> tuple[dict, dict]:
    """(config fields, design options) given by MixPE's own flags."""
    fields = {f: getattr(args, f) for f in _MIXPE_FIELDS if getattr(args, f) is not None}
    opts = {o: getattr(args, o) for o in _MIXPE_TILES if getattr(args, o) is not None}
    if args.system or args.cell:
        opts["kind"] = "system" if args.system else "cell"
    if args.block != "mixpe" and (fields or opts):
        raise UsageError(f"--bits/--group/--rows/--cols/--K/--system/--cell/--max-*-tiles "
                         f"are MixPE flags; for {args.block} use --config and --kind")
    for o, v in opts.items():
        if o in _MIXPE_TILES and v < 1:
            raise UsageError(f"--{o.replace('_', '-')} must be >= 1, got {v}")
    return fields, opts


def _selected(args) -> list:
    if args.all == (args.block is not None):
        raise UsageError(f"give either a block name ({', '.join(BLOCKS)}) or --all")
    if args.all:
        return default_designs()
    if args.block not in BLOCKS:
        raise UsageError(f"unknown block {args.block!r}; choose one of {', '.join(BLOCKS)}")
    flag_fields, opts = _mixpe_flags(args)
    fields = {**json_object("--config", args.config), **flag_fields}
    opts = {**json_object("--options", args.options), **opts}
    if args.kind is not None:
        opts["kind"] = args.kind
    return [design(args.block, block_config(args.block, fields), **opts)]


def main(argv: list[str] | None = None) -> int:
    """`python -m hdl`: write the Verilog of the designs the options name; returns
    the exit status."""
    args = _parser().parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"error: --out {args.out} is a file; --out names a folder for the .v files "
              f"(created if missing)", file=sys.stderr)
        return 2
    try:
        for name, factory in _selected(args):
            print(write_verilog(factory(), name, args.out))
    except (ValueError, TypeError) as e:
        # a bad field value or option: the configuration's own message names the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # files are written atomically, so nothing half-written is left behind
        print(f"error: cannot write Verilog into --out {args.out} ({e.strerror or e}: "
              f"{e.filename or args.out}); give a writable folder (it is created if "
              f"missing)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
