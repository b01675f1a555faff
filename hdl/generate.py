"""Verilog generation for hdl components (amaranth.back.verilog), written
atomically, and the one table of blocks that `python -m hdl` and the lint
runner read:

    BLOCKS[name] = BlockGen(config=<golden config class>, design=<(config, kind=, ...)
                            -> (module name, factory)>, kinds=(...), defaults=(...))

`design(block, config, kind=..., **options)` is the (module name, zero-argument
factory) of one design; `default_designs()` is every block's default set.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from amaranth.back import verilog as _verilog
from amaranth.lib import wiring

from golden.core_config import CoreConfig
from golden.kv4_attention_config import KV4Config
from golden.lut_config import LUTConfig
from golden.mixpe_config import MixPEConfig
from golden.pim_config import PIMConfig
from golden.sfu_config import SFUHWConfig
from golden.sparse_dsp_config import SparseDSPConfig
from golden.validate import check_choice, check_int
from quattro_fs import atomic_write_text

from .core import Core
from .kv4_attention import KV4Unit
from .lut import LUTBlock
from .mixpe import MixPE, MixPECell, MixPESystem
from .pim import pim_factory
from .sfu import SFU
from .sparse_dsp import SparseDSP, SparseDSPChain

__all__ = ["verilog", "write_verilog", "BlockGen", "BLOCKS", "design", "default_designs",
           "block_config", "block_designs", "config_of", "json_object",
           "design_name", "mixpe_factory", "lut_factory", "sparse_dsp_factory", "kv4_factory",
           "sfu_factory", "core_factory"]

Design = tuple[str, Callable]
#: A golden configuration of one of the blocks.
BlockConfig = (CoreConfig | KV4Config | LUTConfig | MixPEConfig | PIMConfig | SFUHWConfig
               | SparseDSPConfig)
_C = TypeVar("_C")


def verilog(component: wiring.Component, name: str) -> str:
    """Verilog text of `component` as a module called `name`. Ports follow the
    component's signature, flattened with `__` (act__payload, act__valid, ...),
    plus clk and rst."""
    if not name.isidentifier():
        raise ValueError(f"module name {name!r} is not a valid identifier; use letters, "
                         f"digits and underscores")
    return _verilog.convert(component, name=name, emit_src=False)


def write_verilog(component: wiring.Component, name: str, out_dir: Path | str) -> Path:
    """Write `<out_dir>/<name>.v` atomically."""
    target = Path(out_dir) / f"{name}.v"
    atomic_write_text(target, verilog(component, name))
    return target


# ---------------------------------------------------------------- per-block designs

def design_name(config: MixPEConfig, *, kind: str = "array",
                max_m_tiles: int | None = None, max_n_tiles: int | None = None) -> str:
    """Module/file name of a MixPE design: config.name() plus a kind suffix."""
    check_choice("kind", kind, BLOCKS["mixpe"].kinds)
    if kind == "array":
        return config.name()
    if kind == "cell":
        return f"{config.name()}_cell"
    return f"{config.name()}_sys_m{max_m_tiles}_n{max_n_tiles}"


def mixpe_factory(config: MixPEConfig, *, kind: str = "array",
                  max_m_tiles: int = 1, max_n_tiles: int = 1) -> Design:
    """A MixPE design: the array ("array"), one MixPECell ("cell"), or the
    MixPESystem with memories for up to max_m_tiles x max_n_tiles tiles ("system")."""
    name = design_name(config, kind=kind, max_m_tiles=max_m_tiles, max_n_tiles=max_n_tiles)
    if kind == "array":
        return name, lambda: MixPE(config)
    if kind == "cell":
        return name, lambda: MixPECell(config)
    check_int("max_m_tiles", max_m_tiles, 1)
    check_int("max_n_tiles", max_n_tiles, 1)
    return name, lambda: MixPESystem(config, max_m_tiles=max_m_tiles, max_n_tiles=max_n_tiles)


def lut_factory(config: LUTConfig, *, kind: str = "block") -> Design:
    """The LUT mpGEMM block (hdl.lut); the weight format is a run-time port."""
    check_choice("kind", kind, BLOCKS["lut"].kinds)
    return config.name(), lambda: LUTBlock(config)


def sparse_dsp_factory(config: SparseDSPConfig, *, kind: str = "stream") -> Design:
    """A sparse DSP chain design: the stream block ("stream") or the bare
    multiplexer + DSP chain ("chain")."""
    check_choice("kind", kind, BLOCKS["sparse_dsp"].kinds)
    if kind == "stream":
        return config.name(), lambda: SparseDSP(config)
    return f"{config.name()}_chain", lambda: SparseDSPChain(config)


def kv4_factory(config: KV4Config, *, kind: str = "unit") -> Design:
    """The KV4 attention unit (hdl.kv4_attention.KV4Unit: decode core + append
    quantizer)."""
    check_choice("kind", kind, BLOCKS["kv4_attention"].kinds)
    return config.name(), lambda: KV4Unit(config)


def core_factory(config: CoreConfig, *, kind: str = "core") -> Design:
    """The accelerator core (hdl.core.Core: sequencer, buffers, SFU, linear engine,
    AXI4 masters)."""
    check_choice("kind", kind, BLOCKS["core"].kinds)
    return config.name(), lambda: Core(config)


def sfu_factory(config: SFUHWConfig, *, kind: str = "unit") -> Design:
    """The special-function unit (hdl.sfu.SFU)."""
    check_choice("kind", kind, BLOCKS["sfu"].kinds)
    return config.name(), lambda: SFU(config)


# ---------------------------------------------------------------- the table

@dataclass(frozen=True, kw_only=True)
class BlockGen:
    """How to generate one block.

    config:   its golden configuration dataclass (`--config` JSON gives its fields)
    design:   (config, *, kind=..., **options) -> (module name, zero-argument factory)
    kinds:    the designs of the block, the first one the default
    defaults: the default design set, as (config, {kind and options}) pairs
    """
    config: type
    design: Callable[..., Design]
    kinds: tuple[str, ...]
    defaults: tuple[tuple[object, dict], ...]


_PIM_SMALL = {"max_mem": 64, "max_jobs": 8, "max_reads": 64, "max_results": 16}

BLOCKS: dict[str, BlockGen] = {
    "mixpe": BlockGen(
        config=MixPEConfig, design=mixpe_factory, kinds=("array", "cell", "system"),
        defaults=(
            # GEMV and GEMM arrays at several bit-widths
            (MixPEConfig(bits=4, group=64, rows=1, cols=8, K=1024), {}),
            (MixPEConfig(bits=4, group=128, rows=4, cols=8, K=1024), {}),
            (MixPEConfig(bits=2, group=32, rows=2, cols=16, K=512), {}),
            (MixPEConfig(bits=8, group=64, rows=2, cols=4, K=256), {}),
            # rows*cols > group: two time-shared dequantization lanes
            (MixPEConfig(bits=4, group=32, rows=4, cols=16, K=256), {}),
            (MixPEConfig(bits=4, group=64, rows=1, cols=1, K=64), {"kind": "cell"}),
            (MixPEConfig(bits=4, group=64, rows=2, cols=4, K=256),
             {"kind": "system", "max_m_tiles": 2, "max_n_tiles": 2}))),
    "lut": BlockGen(
        config=LUTConfig, design=lut_factory, kinds=("block",),
        defaults=(
            # the elongated GEMV tile and a two-row tile
            (LUTConfig(rows=1, cols=64, lanes=8, K=1024, group=64), {}),
            (LUTConfig(rows=2, cols=32, lanes=8, K=256, group=128), {}))),
    "sparse_dsp": BlockGen(
        config=SparseDSPConfig, design=sparse_dsp_factory, kinds=("stream", "chain"),
        defaults=(
            # the make-sim chain (8 DSPs, 2 groups) as stream block and bare chain,
            # and a 16-DSP chain in 4 groups
            (SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64), {}),
            (SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64), {"kind": "chain"}),
            (SparseDSPConfig(L=16, group_len=4, K=1024, qgroup=64), {}))),
    "pim": BlockGen(
        config=PIMConfig, design=pim_factory, kinds=("system", "bank"),
        defaults=(
            # the default bank, and small systems in both modes (make sim's
            # full-size systems differ only in memory depths)
            (PIMConfig(), {"kind": "bank"}),
            (PIMConfig(mode="dual", banks=3, rows=16, columns=64, max_job_rows=4),
             {"kind": "system", "sizes": _PIM_SMALL}),
            (PIMConfig(mode="blocked", banks=2, rows=24, columns=64, lanes=8, max_job_rows=4),
             {"kind": "system", "sizes": _PIM_SMALL}))),
    "kv4_attention": BlockGen(
        config=KV4Config, design=kv4_factory, kinds=("unit",),
        defaults=(
            # SmolLM2's GQA group (head_dim 64, 3 heads) and head_dim 128
            (KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3), {}),
            (KV4Config(head_dim=128, lanes=16, max_t=4096, heads=1), {}))),
    "sfu": BlockGen(
        config=SFUHWConfig, design=sfu_factory, kinds=("unit",),
        defaults=(
            # one lane with SmolLM2's intermediate size in the buffer, and four lanes
            (SFUHWConfig(max_k=2048, lanes=1), {}),
            (SFUHWConfig(max_k=4096, lanes=4), {}))),
    "core": BlockGen(
        config=CoreConfig, design=core_factory, kinds=("core",),
        defaults=(
            # the default core as this RTL takes it (one AXI read and one write
            # master), and the small core of the tests
            (CoreConfig(mem_ports=1), {}),
            (CoreConfig(rows=2, cols=64, max_k=256, buffers=4, max_tokens=4, buf_elems=256,
                        sfu=SFUHWConfig(lanes=16, max_k=256),
                        kv4=KV4Config(head_dim=32, lanes=16), mem_ports=1), {}))),
}


def design(block: str, config: BlockConfig, **options: object) -> Design:
    """(module name, zero-argument factory) of one design of `block`."""
    check_choice("block", block, BLOCKS)
    return BLOCKS[block].design(config, **options)


def default_designs() -> list[Design]:
    """Every block's default design set (`python -m hdl --all`, `make lint`)."""
    return [gen.design(cfg, **opts) for gen in BLOCKS.values() for cfg, opts in gen.defaults]


def block_config(block: str, fields: dict) -> BlockConfig:
    """`block`'s golden configuration with `fields` (a JSON object's worth: the
    rest keep their defaults); a nested configuration (the core's sfu and kv4)
    comes as a dict of its own fields. ValueError naming the known fields for
    an unknown one; the configuration's own ValueError for a bad value."""
    check_choice("block", block, BLOCKS)
    cls = BLOCKS[block].config
    nested = {k: v for k, v in fields.items() if isinstance(v, dict)}
    if nested:
        default = cls()
        for k, v in nested.items():
            sub = getattr(default, k, None)     # an unknown field: config_of names it
            if sub is None:
                continue
            if not dataclasses.is_dataclass(sub):
                raise ValueError(f"{cls.__name__}.{k} is not a configuration; give it a "
                                 f"value, not a JSON object")
            fields = {**fields, k: config_of(type(sub), v)}
    return config_of(cls, fields)


def config_of(cls: type, fields: dict) -> _C:
    """`cls(**fields)`, or a ValueError naming the fields `cls` has."""
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                         f"its fields are {', '.join(known)}")
    return cls(**fields)


def json_object(flag: str, text: str) -> dict:
    """The JSON object given to a command-line `flag` as text or as the path of a
    .json file; ValueError with a quoting example otherwise."""
    if text.strip().endswith(".json") and not text.lstrip().startswith("{"):
        try:
            text = Path(text.strip()).read_text()
        except OSError as e:
            raise ValueError(f"{flag} {text}: cannot read the file ({e.strerror})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON ({e.msg} at character {e.pos}); "
                         f"quote it in the shell, e.g. {flag} '{{\"rows\": 2}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object of fields, got {text!r}")
    return value


def block_designs(block: str, config: str | None = None, kind: str | None = None,
                  options: str | None = None) -> list[Design]:
    """The designs of one hdl.generate block: its default set, or with any of
    `config`, `kind`, `options` (JSON text, as `python -m hdl` takes them) the one
    design they name. ValueError (a user's mistake) with the fix."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
    if config is None and kind is None and options is None:
        return [BLOCKS[block].design(cfg, **opts) for cfg, opts in BLOCKS[block].defaults]
    opts = json_object("--options", options or "{}")
    if kind is not None:
        opts["kind"] = kind
    cfg = block_config(block, json_object("--config", config or "{}"))
    return [design(block, cfg, **opts)]
