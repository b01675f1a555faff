"""The blocks that `python -m cosim sim` (make sim) co-simulates.

Each entry names a module that provides

    sim_items(*, sim: str, only: list[str] | None) -> list[SimItem]

one item per run of the block's default plan, and where a configuration of the
block can be co-simulated (`python -m cosim sim --block B --config JSON`)

    config_items(config, *, sim: str) -> list[SimItem]

the plan's runs on that configuration. The driver runs the items in
parallel (START_FIRST's blocks first), checks each record (bit-exact, and `cycles == expected_cycles` where
the record carries an analytic expectation), and merges the records into
build/sim/report.json block by block. Adding a block = adding one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["BLOCKS", "ON_REQUEST", "START_FIRST", "CONFIG_BLOCKS", "SimItem", "block_items", "configured_items"]

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
    "kernel_core": "cosim.kernel_core",
}

#: Blocks run only when named (`python -m cosim sim --block NAME`): model-wide runs of
#: minutes each, kept out of make sim's time. "generate": SmolLM2 generates three tokens
#: through the Verilated core (`make generate` runs the longer generation).
ON_REQUEST: dict[str, str] = {
    "generate": "cosim.generate",
}

#: Blocks whose runs take longest (whole-core builds and simulations, minutes each):
#: make sim starts them first, so that none is left running alone at the end.
START_FIRST = ("kernel_core", "core")

#: block -> the hdl.generate block whose configuration `--config` fills, for the
#: blocks whose module has config_items. The core is not here: its co-simulation
#: takes its configuration from the model it runs (cosim.core).
CONFIG_BLOCKS: dict[str, str] = {
    "mixpe": "mixpe", "kernel_mixpe": "mixpe", "lut": "lut", "pim": "pim",
    "sparse_dsp": "sparse_dsp", "kv4_attention": "kv4_attention", "sfu": "sfu",
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


def block_items(*, sim: str, only: list[str] | None = None,
                block: str | None = None) -> dict[str, list[SimItem]]:
    """Every block's items (or only `block`'s), filtered by `only` (substrings of
    item names, or block names)."""
    if block is not None and block not in BLOCKS and block not in ON_REQUEST:
        raise ValueError(f"unknown block {block!r}; choose one of "
                         f"{', '.join([*BLOCKS, *ON_REQUEST])}")
    out = {}
    for name, module in (BLOCKS | ON_REQUEST).items():
        if block is None and name in ON_REQUEST:
            continue
        if block is not None and name != block:
            continue
        items = importlib.import_module(module).sim_items(sim=sim)
        if only:
            items = [i for i in items if any(s in i.name or s == name for s in only)]
        if items:
            out[name] = items
    return out


def configured_items(block: str, fields: dict, *, sim: str,
                     only: list[str] | None = None) -> dict[str, list[SimItem]]:
    """`block`'s plan on the configuration with `fields` (the rest default),
    filtered by `only`. ValueError naming the fix for a block without
    config_items, an unknown field or a bad value."""
    if block not in CONFIG_BLOCKS:
        why = ("its co-simulation takes the configuration from the model it runs; "
               "choose its cases with --only" if block == "core" else
               f"choose one of {', '.join(CONFIG_BLOCKS)}")
        raise ValueError(f"--config is not available for block {block!r}: {why}")
    from hdl.generate import block_config   # noqa: PLC0415 (only with --config)
    config = block_config(CONFIG_BLOCKS[block], fields)
    items = importlib.import_module(BLOCKS[block]).config_items(config, sim=sim)
    if only:
        items = [i for i in items if any(s in i.name for s in only)]
    return {block: items} if items else {}
