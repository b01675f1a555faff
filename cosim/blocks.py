"""The blocks that `python -m cosim sim` (make sim) co-simulates.

Each entry names a module that provides

    sim_items(*, sim: str, only: list[str] | None) -> list[SimItem]

one item per run of the block's default plan. The driver runs the items in
parallel, checks each record (bit-exact, and `cycles == expected_cycles` where
the record carries an analytic expectation), and merges the records into
build/sim/report.json block by block. Adding a block = adding one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["BLOCKS", "SimItem", "block_items"]

#: block name (the records' "block" field) -> module providing sim_items()
BLOCKS: dict[str, str] = {
    "mixpe": "cosim.mixpe",
    "kernel_mixpe": "cosim.kernel_mixpe",
    "lut": "cosim.lut",
    "pim": "cosim.pim",
    "sparse_dsp": "cosim.sparse_dsp",
    "kv4_attention": "cosim.kv4_attention",
    "sfu": "cosim.sfu",
    "core": "cosim.core",
}


@dataclass(frozen=True)
class SimItem:
    """One co-simulation run: `run()` returns a cosim.report record (it may
    raise; the driver turns an exception into a failing record)."""
    block: str
    name: str            # shown in the progress lines, matched by --only
    path: str            # "stream", "stream-ideal", "fast", ...
    config: dict         # the block configuration's fields
    macs: int
    peak_macs_per_cycle: int
    run: Callable[[], dict]


def block_items(*, sim: str, only: list[str] | None = None) -> dict[str, list[SimItem]]:
    """Every block's items, filtered by `only` (substrings of item names)."""
    out = {}
    for block, module in BLOCKS.items():
        items = importlib.import_module(module).sim_items(sim=sim)
        if only:
            items = [i for i in items if any(s in i.name or s == block for s in only)]
        if items:
            out[block] = items
    return out
