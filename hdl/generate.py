"""Verilog generation for hdl components (amaranth.back.verilog), written
atomically, plus the default design set that `python -m hdl --all` and the lint
runner iterate over."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from amaranth.back import verilog as _verilog

from golden.mixpe_config import MixPEConfig

__all__ = ["verilog", "write_verilog", "default_designs", "design_name"]


def verilog(component, name: str) -> str:
    """Verilog text of `component` as a module called `name`. Ports follow the
    component's signature, flattened with `__` (act__payload, act__valid, ...),
    plus clk and rst."""
    if not name.isidentifier():
        raise ValueError(f"module name {name!r} is not a valid identifier; use letters, "
                         f"digits and underscores")
    return _verilog.convert(component, name=name, emit_src=False)


def write_verilog(component, name: str, out_dir) -> Path:
    """Write `<out_dir>/<name>.v` atomically (temp file then os.replace)."""
    text = verilog(component, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.v"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".v.tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def design_name(config: MixPEConfig, *, kind: str = "array",
                max_m_tiles: int | None = None, max_n_tiles: int | None = None) -> str:
    """Module/file name of a MixPE design: config.name() plus a kind suffix."""
    if kind == "array":
        return config.name()
    if kind == "cell":
        return f"{config.name()}_cell"
    if kind == "system":
        return f"{config.name()}_sys_m{max_m_tiles}_n{max_n_tiles}"
    raise ValueError(f"unknown design kind {kind!r}; use 'array', 'cell' or 'system'")


def mixpe_factory(config: MixPEConfig, *, kind: str = "array",
                  max_m_tiles: int = 1, max_n_tiles: int = 1) -> tuple[str, Callable]:
    """(name, zero-argument factory) for one MixPE design."""
    from .mixpe import MixPE, MixPECell, MixPESystem
    if kind == "array":
        factory = lambda: MixPE(config)  # noqa: E731
    elif kind == "cell":
        factory = lambda: MixPECell(config)  # noqa: E731
    elif kind == "system":
        factory = lambda: MixPESystem(config, max_m_tiles=max_m_tiles,  # noqa: E731
                                      max_n_tiles=max_n_tiles)
    else:
        raise ValueError(f"unknown design kind {kind!r}; use 'array', 'cell' or 'system'")
    return design_name(config, kind=kind, max_m_tiles=max_m_tiles,
                       max_n_tiles=max_n_tiles), factory


def lut_factory(config) -> tuple[str, Callable]:
    """(name, zero-argument factory) of the LUT mpGEMM block (hdl.lut) for a
    golden.lut_config.LUTConfig; the weight format is a run-time port."""
    from .lut import LUTBlock
    return config.name(), (lambda: LUTBlock(config))


def default_designs() -> list[tuple[str, Callable]]:
    """The default design set: GEMV and GEMM arrays at several bit-widths
    (one with several dequantization lanes), one MixPECell and one MixPESystem. Each entry is (module name, factory)."""
    return [
        mixpe_factory(MixPEConfig(bits=4, group=64, rows=1, cols=8, K=1024)),
        mixpe_factory(MixPEConfig(bits=4, group=128, rows=4, cols=8, K=1024)),
        mixpe_factory(MixPEConfig(bits=2, group=32, rows=2, cols=16, K=512)),
        mixpe_factory(MixPEConfig(bits=8, group=64, rows=2, cols=4, K=256)),
        # rows*cols > group: two time-shared dequantization lanes
        mixpe_factory(MixPEConfig(bits=4, group=32, rows=4, cols=16, K=256)),
        mixpe_factory(MixPEConfig(bits=4, group=64, rows=1, cols=1, K=64), kind="cell"),
        mixpe_factory(MixPEConfig(bits=4, group=64, rows=2, cols=4, K=256), kind="system",
                      max_m_tiles=2, max_n_tiles=2),
        *_lut_designs(),
        *_sparse_dsp_designs(),
        *_pim_designs(),
        *_kv4_designs(),
    ]


def kv4_factory(config) -> tuple[str, Callable]:
    """(name, zero-argument factory) of the KV4 attention unit (hdl.kv4_attention.KV4Unit:
    decode core + append quantizer) for a golden.kv4_attention_config.KV4Config."""
    from .kv4_attention import KV4Unit
    return config.name(), (lambda: KV4Unit(config))


def _kv4_designs() -> list[tuple[str, Callable]]:
    """KV4 attention units: SmolLM2's GQA group (head_dim 64, 3 heads) and head_dim 128."""
    from golden.kv4_attention_config import KV4Config
    return [kv4_factory(KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3)),
            kv4_factory(KV4Config(head_dim=128, lanes=16, max_t=4096, heads=1))]


def _pim_designs() -> list[tuple[str, Callable]]:
    """NeuPIMs PIM channel: the default bank, and small systems in both modes
    (the full-size systems of make sim differ only in memory depths)."""
    from golden.pim_config import PIMConfig
    from .pim import pim_factory
    small = {"max_mem": 64, "max_jobs": 8, "max_reads": 64, "max_results": 16}
    return [pim_factory(PIMConfig(), kind="bank"),
            pim_factory(PIMConfig(mode="dual", banks=3, rows=16, columns=64, max_job_rows=4),
                        kind="system", sizes=small),
            pim_factory(PIMConfig(mode="blocked", banks=2, rows=24, columns=64, lanes=8,
                                  max_job_rows=4), kind="system", sizes=small)]


def _lut_designs() -> list[tuple[str, Callable]]:
    """LUT mpGEMM blocks: the elongated GEMV tile and a two-row tile."""
    from golden.lut_config import LUTConfig
    return [lut_factory(LUTConfig(rows=1, cols=64, lanes=8, K=1024, group=64)),
            lut_factory(LUTConfig(rows=2, cols=32, lanes=8, K=256, group=128))]


def sparse_dsp_factory(config, *, kind: str = "stream") -> tuple[str, Callable]:
    """(name, zero-argument factory) of a sparse DSP chain design: the stream
    block ("stream") or the bare multiplexer + DSP chain ("chain")."""
    from .sparse_dsp import SparseDSP, SparseDSPChain
    if kind == "stream":
        return config.name(), lambda: SparseDSP(config)
    if kind == "chain":
        return f"{config.name()}_chain", lambda: SparseDSPChain(config)
    raise ValueError(f"unknown sparse_dsp design kind {kind!r}; use 'stream' or 'chain'")


def _sparse_dsp_designs() -> list[tuple[str, Callable]]:
    """Sparse DSP chains: the make-sim chain (8 DSPs, 2 groups) as stream block and
    bare chain, and a 16-DSP chain in 4 groups."""
    from golden.sparse_dsp_config import SparseDSPConfig
    cfg = SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64)
    return [sparse_dsp_factory(cfg), sparse_dsp_factory(cfg, kind="chain"),
            sparse_dsp_factory(SparseDSPConfig(L=16, group_len=4, K=1024, qgroup=64))]
