"""Yosys estimate of any block's designs (fpga_boards.resources.estimate): the
block's default set from hdl.generate, or the one design that --config, --kind
and --options name, as `python -m hdl <block>` takes them.

    python -m fpga_boards resources --block pim
    python -m fpga_boards resources --block lut --config '{"rows": 1, "cols": 16, "K": 256}'

The per-block comparison tables (resources_mixpe, _lut, _kv4_attention, _core)
remain what `resources --block <block>` runs without a configuration where a
block has one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

from hdl.generate import BLOCKS, Design, block_designs

from .resources import (DEFAULT_CACHE, ResourceEstimateError, Resources, SynthOptions,
                        estimate, markdown_table)

__all__ = ["estimate_designs", "render", "main"]


def estimate_designs(designs: Iterable[Design], *, options: SynthOptions = SynthOptions(),
                     cache_dir: Path | str | None = DEFAULT_CACHE) -> list[Resources]:
    """One Yosys run per design (each reported while it runs), in order."""
    return [estimate(factory(), name, options=options, cache_dir=cache_dir)
            for name, factory in designs]


def render(results: list[Resources]) -> str:
    """A Markdown table of the estimates: one row per design."""
    head = ["design", "synthesis", "LUT", "LUTRAM", "FF", "DSP", "BRAM36", "URAM", "CARRY4"]
    rows = [[r.name, "DSP on" if r.dsp_inference else "-nodsp", r.lut, r.lutram, r.ff, r.dsp,
             f"{r.bram36:g}", r.uram, r.carry4] for r in results]
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m fpga_boards resources`: estimate a block's designs with Yosys and print the
    table; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fpga_boards resources",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--block", required=True, help=f"one of {', '.join(BLOCKS)}")
    ap.add_argument("--config", help="configuration fields (JSON object or a .json file)")
    ap.add_argument("--kind", help="which design of the block")
    ap.add_argument("--options", help="the design's options (JSON object)")
    ap.add_argument("--nodsp", action="store_true", help="synthesize with -nodsp (LUTs only)")
    ap.add_argument("--no-cache", action="store_true", help="ignore build/resources/")
    ap.add_argument("--json", type=Path, help="also write every result to this JSON file")
    args = ap.parse_args(argv)
    try:
        designs = block_designs(args.block, args.config, args.kind, args.options)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        results = estimate_designs(designs, options=SynthOptions(dsp=not args.nodsp),
                                   cache_dir=None if args.no_cache else DEFAULT_CACHE)
    except ResourceEstimateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(results[0].yosys_version.split(" (")[0] + "; "
          + results[0].synth_command.split(" -top ")[0])
    print(render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
