"""fpga_boards.kernel_core: the core as a Vitis RTL kernel -- registry and
configuration, register map, build trees for U280 / U250 / U55C (package Tcl,
connectivity, fit, manifest, RUN.md), the fit refusal, Verilator lint of the
kernel top, the XRT host's refusals without pyxrt (the kernel's behaviour on its
AXI interfaces is tests/test_cosim_kernel_core.py)."""
from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from fpga_boards import build as fb_build
from fpga_boards.boards import BOARDS
from fpga_boards.kernel import kernel_spec
from fpga_boards.kernel_core import (MEASURED_DEFAULT, OFFSETS, CoreKernelSpec, config_from_dict,
                                     core_resources, default_config, parse_status, register_map,
                                     register_writes)
from fpga_boards.resources_core import buffer_bram

#: A small core (the generated Verilog takes seconds, not a minute): fields over the
#: default kernel's (SmolLM2 numerics).
SMALL = {"rows": 2, "cols": 64, "max_k": 256, "buffers": 4, "max_tokens": 4, "buf_elems": 256,
         "sfu": {"max_k": 256}, "kv4": {"head_dim": 32, "max_t": 64, "heads": 2}}


def test_registry_and_configuration():
    spec = kernel_spec("core", SMALL)
    assert isinstance(spec, CoreKernelSpec) and spec.name == "core"
    c = spec.config
    assert (c.rows, c.cols, c.buffers, c.sfu.max_k, c.kv4.head_dim, c.mem_ports) == \
        (2, 64, 4, 256, 32, 1)
    assert c.sfu.frac == default_config().sfu.frac          # the rest stays the default's
    assert kernel_spec("core").config == default_config()
    assert default_config().mem_ports == 1
    with pytest.raises(ValueError, match="CoreConfig has no field 'colz'"):
        kernel_spec("core", {"colz": 3})
    with pytest.raises(ValueError, match="SFUHWConfig has no field 'lane'"):
        kernel_spec("core", {"sfu": {"lane": 8}})
    with pytest.raises(ValueError, match="mem_ports=2"):
        kernel_spec("core", {"mem_ports": 2})
    assert fb_build.main(["--board", "u280", "--kernel", "core", "--config",
                          '{"mem_ports": 2}']) == fb_build.EXIT_USAGE


def test_register_map_and_writes():
    regs = {r.name: r for r in register_map()}
    assert [(r.name, r.offset, r.bits, r.access) for r in register_map()][:4] == [
        ("CTRL", 0, 32, "control"), ("GIER", 4, 32, "control"), ("IP_IER", 8, 32, "control"),
        ("IP_ISR", 12, 32, "control")]
    assert {n: (r.offset, r.bits, r.access) for n, r in regs.items() if r.access != "control"} \
        == {"mem": (0x10, 64, "rw"), "prog": (0x18, 32, "rw"), "pos": (0x1C, 32, "rw"),
            "tokens": (0x20, 32, "rw"), "status": (0x28, 64, "rw"), "error": (0x30, 32, "ro"),
            "err_pc": (0x34, 32, "ro"), "cycles": (0x38, 32, "ro"), "runs": (0x3C, 32, "ro"),
            "state": (0x40, 32, "ro")}
    assert regs["mem"].bus == regs["status"].bus == "m_axi_gmem" and regs["prog"].bus is None
    assert OFFSETS["status"] % 8 == 0
    w = register_writes(mem=0x1_2345_6000, prog=0x4000, pos=3, tokens=2, status=0x8_0000_0040)
    assert w == [(0x10, 0x2345_6000), (0x14, 0x1), (0x18, 0x100), (0x1C, 3), (0x20, 2),
                 (0x28, 0x40), (0x2C, 0x8)]
    with pytest.raises(ValueError, match="not a multiple of 64"):
        register_writes(mem=0, prog=0x4010, pos=0, tokens=1)
    with pytest.raises(ValueError, match="does not fit its 32-bit register"):
        register_writes(mem=0, prog=64 << 32, pos=0, tokens=1)
    raw = (3).to_bytes(4, "little") + (17).to_bytes(4, "little") + (900).to_bytes(4, "little") \
        + (2).to_bytes(4, "little")
    assert parse_status(raw) == {"error": 3, "err_pc": 17, "cycles": 900, "runs": 2}


def test_trees_for_every_board(tmp_path, capsys):
    tclsh = shutil.which("tclsh")
    cfg = json.dumps(SMALL)
    for name in sorted(BOARDS):
        rc = fb_build.main(["--board", name, "--kernel", "core", "--generate-only", "--config",
                            cfg, "--out", str(tmp_path)])
        assert rc == fb_build.EXIT_OK
        out = tmp_path / name / "core"
        for f in ("rtl/core.v", "package_kernel.tcl", "link.cfg", "build_xclbin.sh", "fit.json",
                  "fit.md", "manifest.json", "RUN.md"):
            assert (out / f).is_file(), f
        assert not (out / "fullchip").exists()      # the core needs the shell's memory
        b = BOARDS[name]
        bank = "HBM[0:3]" if b.banks.kind == "HBM" else "DDR[0]"
        link = (out / "link.cfg").read_text()
        assert f"platform={b.platform}" in link and "nk=core:1:core_1" in link
        assert re.findall(r"^sp=core_1\.(\w+):(\S+)$", link, re.M) == [("mem", bank),
                                                                       ("status", bank)]
        assert "9.6 GB/s" in link                    # why: one 256-bit master at 300 MHz
        tcl = (out / "package_kernel.tcl").read_text()
        assert f"set part {b.part}" in tcl and "package_xo" in tcl
        assert "foreach busif {s_axi_control m_axi_gmem}" in tcl
        for reg in (r"\{mem\} 0x010 64", r"\{prog\} 0x018 32", r"\{pos\} 0x01C 32",
                    r"\{tokens\} 0x020 32", r"\{status\} 0x028 64"):
            assert re.search(reg, tcl), reg
        assert not re.search(r"\{error\} 0x030", tcl)  # status registers: not arguments
        assert "read_register: error 0x030, err_pc 0x034, cycles 0x038" in tcl
        assert re.search(r"^\s+mem m_axi_gmem$", tcl, re.M)
        assert re.search(r"^\s+status m_axi_gmem$", tcl, re.M)
        man = json.loads((out / "manifest.json").read_text())
        assert (man["kernel"], man["block"]) == ("core", "kernel_core")
        assert man["masters"] == {"gmem": {"direction": "inout", "data_bits": 256,
                                           "args": ["mem", "status"]}}
        assert {r["name"]: r["access"] for r in man["registers"]}["cycles"] == "ro"
        assert man["banks"] == {"mem": bank, "status": bank}
        assert config_from_dict(man["config"]) == kernel_spec("core", SMALL).config
        fit = json.loads((out / "fit.json").read_text())
        assert fit["fits"] and fit["source"].startswith("lower bound")
        assert fit["used"]["bram36"] == buffer_bram(kernel_spec("core", SMALL).config)["total"]
        run = (out / "RUN.md").read_text()
        assert "python -m fpga_boards.host_core_xrt --xclbin" in run and "fullchip" not in run
        v = (out / "rtl" / "core.v").read_text()
        assert re.search(r"output \[63:0\] m_axi_gmem_araddr;", v)
        assert re.search(r"output \[63:0\] m_axi_gmem_awaddr;", v)
        assert re.search(r"input \[255:0\] m_axi_gmem_rdata;", v)
        assert re.search(r"output \[255:0\] m_axi_gmem_wdata;", v)
        assert "output interrupt;" in v and "input ap_rst_n;" in v
        if tclsh:
            assert fb_build.tcl_check(out / "package_kernel.tcl") is None
    assert "ok   package_kernel.tcl" in capsys.readouterr().out or not tclsh


def test_fit_refuses_oversized_buffers_and_counts_what_is_known(tmp_path, capsys):
    big = {"buffers": 16, "max_tokens": 256, "buf_elems": 4096, "sfu": {"max_k": 4096}}
    rc = fb_build.main(["--board", "u55c", "--kernel", "core", "--generate-only", "--config",
                        json.dumps(big), "--out", str(tmp_path)])
    assert rc == fb_build.EXIT_NO_FIT
    err = capsys.readouterr().err
    assert "BRAM36" in err and "U55C" in err and "lower bound" in err
    assert not (tmp_path / "u55c" / "core").exists()      # refused before writing
    used, source = core_resources(default_config())
    assert "engine (Yosys" in source and "axi (Yosys" in source and "not counted" in source
    known = sum(MEASURED_DEFAULT[u]["lut"] for u in ("engine", "axi"))
    assert used["lut"] >= known and used["dsp"] >= MEASURED_DEFAULT["engine"]["dsp"]
    assert used["bram36"] >= buffer_bram(default_config())["total"]


def test_fullchip_is_refused_for_the_core(tmp_path, capsys):
    rc = fb_build.main(["--board", "u280", "--kernel", "core", "--fullchip", "--config",
                        json.dumps(SMALL), "--out", str(tmp_path)])
    assert rc == fb_build.EXIT_USAGE
    assert "no full-chip" in capsys.readouterr().err


def test_kernel_top_lint_clean(tmp_path):
    from cosim import lint
    from cosim.runner import SimulatorUnavailable
    path = tmp_path / "core.v"
    path.write_text(kernel_spec("core", SMALL).verilog())
    try:
        res = lint.lint_file(path, "core")
    except SimulatorUnavailable as e:
        pytest.skip(str(e))
    assert res.clean, res.messages[:10]


def test_xrt_host_refusals(monkeypatch, tmp_path):
    from fpga_boards.host import XrtUnavailable
    from fpga_boards.host_core_xrt import ARG_INDEX, XrtCoreDevice, find_xclbin
    assert ARG_INDEX == {"mem": 0, "prog": 1, "pos": 2, "tokens": 3, "status": 4}
    cfg = kernel_spec("core", SMALL).config
    monkeypatch.setitem(sys.modules, "pyxrt", None)       # import pyxrt -> ImportError
    with pytest.raises(XrtUnavailable, match="SimCoreDevice"):
        XrtCoreDevice(tmp_path / "core.xclbin", cfg, mem_bytes=4096)
    with pytest.raises(FileNotFoundError, match="--kernel core"):
        find_xclbin(cfg, root=tmp_path)
    tree = tmp_path / "u280" / "core"
    tree.mkdir(parents=True)
    (tree / "manifest.json").write_text(json.dumps({"config": cfg.as_dict()}))
    (tree / "core.xclbin").write_bytes(b"")
    assert find_xclbin(cfg, root=tmp_path) == tree / "core.xclbin"
    with pytest.raises(FileNotFoundError):
        find_xclbin(default_config(), root=tmp_path)      # another core's tree only
