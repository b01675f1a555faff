"""The sparse DSP chain under Yosys (DESIGN §3.5, §7): its DSP mapping and its
resource table against the dense baseline (hdl.baselines.DenseChain).

`dsp_mapping(config, family="xcup")` synthesizes the bare multiplexer + DSP
chain (hdl.sparse_dsp.SparseDSPChain) with `synth_xilinx -family <family>` and
returns, besides the primitive counts, the number of `$mul` cells before
techmapping and every DSP cell's register/cascade settings, so that a test can
assert "one DSP per stage, no multiplier in LUTs, registers and cascade packed".

Yosys 0.70 maps each `*` of the chain to one DSP48E2 for xcup but packs the
pipeline registers and the post-adder into the DSP only for the 7-series
DSP48E1 (`-family xc7`); that run shows the RTL is written in the inferable
form (AREG/BREG, MREG, PREG, PCIN cascade, CE), which Vivado packs for DSP48E2.
Cached under build/resources/ by a hash of Verilog and script.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

from golden.sparse_dsp_config import PATTERN_NAMES, SparseDSPConfig
from hdl.baselines import DenseChain
from hdl.generate import sparse_dsp_factory, verilog
from hdl.sparse_dsp import SparseDSP, SparseDSPChain
from quattro_fs import atomic_write_json

from .resources import DEFAULT_CACHE, ResourceEstimateError, estimate, yosys_argv, yosys_version

__all__ = ["dsp_mapping", "resource_table"]

_VERSION = 1


def _params(p: dict) -> dict:
    out = {}
    for k, v in p.items():
        out[k] = int(v, 2) if isinstance(v, str) and v and set(v) <= {"0", "1"} else v
    return out


def dsp_mapping(config: SparseDSPConfig, *, family: str = "xcup",
                cache_dir: Path | str | None = DEFAULT_CACHE) -> dict:
    """{"cells": {type: count}, "muls_before": int, "dsps": [{"name", "type",
    "params" (AREG, BREG, MREG, PREG, USE_MULT, ...), "pcin": bool, "c": bool}]}"""
    name, factory = sparse_dsp_factory(config, kind="chain")
    text = verilog(factory(), name)
    script = "\n".join([
        "read_verilog -sv design.v",
        f"hierarchy -top {name}", "proc", "flatten", "opt -fast",
        "tee -q -o pre.json stat -json",
        f"synth_xilinx -family {family} -flatten -noiopad -top {name}",
        "tee -q -o stat.json stat -json",
        "write_json net.json", ""])
    key = hashlib.sha256(f"{_VERSION}\0{yosys_version()}\0{script}\0{text}".encode()) \
        .hexdigest()[:20]
    cache = Path(cache_dir) / f"{name}-{family}-dsp-{key}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    with tempfile.TemporaryDirectory(prefix="quattro-yosys-dsp-") as tmp:
        t = Path(tmp)
        (t / "design.v").write_text(text)
        (t / "s.ys").write_text(script)
        proc = subprocess.run(yosys_argv() + ["-q", "-l", "log.txt", "-s", "s.ys"], cwd=t,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not (t / "net.json").is_file():
            raise ResourceEstimateError(f"Yosys failed on {name} ({family}):\n"
                                        + (proc.stdout + proc.stderr)[-3000:])
        pre = json.loads((t / "pre.json").read_text())
        net = json.loads((t / "net.json").read_text())
    pre_cells = pre.get("design", next(iter(pre["modules"].values())))["num_cells_by_type"]
    mod = net["modules"][name]
    dsps = []
    for cname, c in mod["cells"].items():
        if c["type"].startswith("DSP48"):
            conn = c["connections"]
            used = lambda port: any(isinstance(b, int) for b in conn.get(port, []))  # noqa: E731
            dsps.append({"name": cname, "type": c["type"], "params": _params(c["parameters"]),
                         "pcin": used("PCIN"), "c": used("C")})
    out = {"design": name, "family": family,
           "cells": dict(Counter(c["type"] for c in mod["cells"].values())),
           "muls_before": int(pre_cells.get("$mul", 0)), "dsps": dsps}
    if cache is not None:
        atomic_write_json(cache, out)
    return out


def resource_table(configs: Sequence[SparseDSPConfig] = (
        SparseDSPConfig(L=8, group_len=4, K=512, qgroup=64),
        SparseDSPConfig(L=16, group_len=4, K=1024, qgroup=64))) -> str:
    """Markdown table: dense DSP chain vs sparse chain (mux + DSPs) vs the whole
    stream block, Yosys xcup counts, dense-equivalent MACs/cycle per DSP."""
    lines = ["| design | L | LUT | LUTRAM | FF | DSP48E2 | dense-eq. MACs/cycle "
             "(dense / 2:4 / 1:4 / 2:8 / 4:8) | MACs/cycle per DSP |",
             "|---|---|---|---|---|---|---|---|"]
    for cfg in configs:
        peaks = [cfg.peak_macs_per_cycle(p) for p in PATTERN_NAMES]
        rows = [("dense DSP chain (baseline)", DenseChain(cfg), f"dense_chain_l{cfg.L}",
                 [cfg.L]),
                ("sparse chain (mux + DSPs)", SparseDSPChain(cfg), f"{cfg.name()}_chain", peaks),
                ("SparseDSP stream block", SparseDSP(cfg), cfg.name(), peaks)]
        for label, comp, top, pk in rows:
            r = estimate(comp, top)
            per = " / ".join(f"{p / r.dsp:.2f}" for p in pk)
            lines.append(f"| {label} | {cfg.L} | {r.lut} | {r.lutram} | {r.ff} | {r.dsp} | "
                         f"{' / '.join(str(p) for p in pk)} | {per} |")
    return "\n".join(lines)
