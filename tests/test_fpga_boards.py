"""fpga_boards: boards, register map, kernel ports, fit check, build tree, host code
(everything that needs no simulator; the kernel cosim is in test_cosim_kernel_mixpe.py)."""
from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from golden.mixpe_config import MixPEConfig
from fpga_boards import build as fb_build
from fpga_boards.axi import arg_offsets, KernelArg, word_bytes, beat_bits
from fpga_boards.boards import BOARDS, board, platform
from fpga_boards.fit import FitError, check, fit_of, fit_table, kernel_fit, precheck
from fpga_boards.host import XrtDevice, XrtUnavailable, register_writes
from fpga_boards.kernel import (RtlKernel, bytes_to_words, kernel_spec, mixpe_kernel,
                                words_to_bytes)

SMALL = {"bits": 4, "group": 32, "rows": 2, "cols": 4, "K": 64}


# ----------------------------------------------------------------- boards

def test_boards_match_design():
    # DESIGN §5: parts, platforms and the U280 capacities.
    assert board("u280").part == "xcu280-fsvh2892-2L-e"
    assert board("U250").part == "xcu250-figd2104-2L-e"
    assert board("u55c").part == "xcu55c-fsvh2892-2L-e"
    assert board("u280").platform == "xilinx_u280_gen3x16_xdma_1_202211_1"
    assert board("u250").platform == "xilinx_u250_gen3x16_xdma_4_1_202210_1"
    assert board("u55c").platform == "xilinx_u55c_gen3x16_xdma_3_202210_1"
    cap = board("u280").capacity
    assert (round(cap.lut, -3), round(cap.ff, -3), cap.dsp, cap.bram36, cap.uram) == \
        (1_304_000, 2_607_000, 9_024, 2_016, 960)
    hbm = board("u280").banks
    assert (hbm.kind, hbm.count, hbm.count * hbm.bytes_per_bank) == ("HBM", 32, 8 << 30)
    assert board("u250").banks.kind == "DDR"
    with pytest.raises(ValueError, match="unknown board"):
        board("u999")
    with pytest.raises(ValueError, match="does not exist"):
        board("u250").banks.bank(4)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_xilinx_platform(name):
    p = platform(name)
    assert p.family == "ultrascaleplus"
    assert p._part == BOARDS[name].part
    assert p.toolchain == "Vivado"
    assert p.default_clk == BOARDS[name].clocks[0].name


# ----------------------------------------------------------------- register map / data

def test_arg_offsets_and_register_writes():
    args = [KernelArg(name="a", bits=64), KernelArg(name="n", bits=32),
            KernelArg(name="b", bits=64)]
    assert arg_offsets(args) == {"a": 0x10, "n": 0x18, "b": 0x20}  # b realigned to 8
    spec = mixpe_kernel(MixPEConfig(**SMALL))
    assert spec.offsets == {"act": 0x10, "code": 0x18, "scale": 0x20, "result": 0x28,
                            "m_tiles": 0x30, "n_tiles": 0x34}
    writes = register_writes(spec, {"act": 0x1_2345_6780, "code": 0, "scale": 0,
                                    "result": 0xFFFF_0000_0000_1000, "m_tiles": 3,
                                    "n_tiles": 5})
    d = dict(writes)
    assert d[0x10] == 0x2345_6780 and d[0x14] == 0x1        # low word first
    assert d[0x28] == 0x1000 and d[0x2C] == 0xFFFF_0000
    assert d[0x30] == 3 and d[0x34] == 5
    with pytest.raises(ValueError, match="32 or 64"):
        KernelArg(name="x", bits=16)


def test_word_packing_roundtrip():
    assert [word_bytes(b) for b in (1, 8, 9, 16, 24, 32, 96, 256)] == [1, 1, 2, 2, 4, 4, 16, 32]
    assert beat_bits(8) == 32 and beat_bits(256) == 256
    words = [0, 1, 0x7F, 0x80, 0xFF]
    raw = words_to_bytes(words, 8)
    assert raw == bytes(words)
    assert bytes_to_words(raw, 8) == words
    w24 = [0xABCDEF, 0x123456]
    assert words_to_bytes(w24, 24) == bytes.fromhex("efcdab00" "56341200")
    assert bytes_to_words(words_to_bytes(w24, 24), 24) == w24
    with pytest.raises(ValueError, match="whole number"):
        bytes_to_words(b"\x00" * 3, 16)


def test_kernel_ports_are_vitis_names():
    from cosim.runner import top_ports
    from hdl.generate import verilog
    spec = mixpe_kernel(MixPEConfig(**SMALL))
    v = verilog(RtlKernel(spec), spec.name)
    ports = set(top_ports(v, spec.name))
    axil = {"awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp",
            "bvalid", "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid",
            "rready"}
    expected = {"ap_clk", "ap_rst_n", "interrupt"} | {f"s_axi_control_{s}" for s in axil}
    rd = {"arid", "araddr", "arlen", "arsize", "arburst", "arvalid", "arready", "rid", "rdata",
          "rresp", "rlast", "rvalid", "rready"}
    wr = {"awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready", "wdata", "wstrb",
          "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready"}
    for m in ("act", "code", "scale"):
        expected |= {f"m_axi_{m}_{s}" for s in rd}
    expected |= {f"m_axi_result_{s}" for s in wr}
    assert ports == expected
    # 64-bit addresses on every master
    for m in ("act", "code", "scale"):
        assert re.search(rf"output \[63:0\] m_axi_{m}_araddr;", v)
    assert re.search(r"output \[63:0\] m_axi_result_awaddr;", v)


def test_kernel_registry_errors():
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_spec("nope")
    with pytest.raises(ValueError, match="bad mixpe configuration"):
        kernel_spec("mixpe", {"colz": 3})
    with pytest.raises(ValueError, match="Vitis links at most 512"):
        from hdl.generate import verilog
        verilog(RtlKernel(mixpe_kernel(MixPEConfig(bits=4, group=32, rows=1, cols=32, K=64))),
                "k")


# ----------------------------------------------------------------- fit

def test_precheck_refuses_oversized_without_synthesis():
    # 512x512 PEs at group 32: ceil(262144/32) = 8192 DQ lanes x 2 DSP = 16384 DSPs;
    # the U280 has 9024 -> 7360 over.
    spec = kernel_spec("mixpe", {"bits": 4, "group": 32, "rows": 512, "cols": 512, "K": 64})
    with pytest.raises(FitError) as e:
        precheck(spec, board("u280"))
    msg = str(e.value)
    assert "DSP48E2" in msg and "16,384" in msg and "7,360 over" in msg and "U280" in msg
    # the U250 (12288 DSPs) refuses it too, by less
    with pytest.raises(FitError, match="4,096 over"):
        precheck(spec, board("u250"))


def test_check_names_resource_and_amount():
    b = board("u55c")
    used = {"lut": b.capacity.lut + 1000, "ff": 10, "dsp": 2, "bram36": 0, "uram": 0}
    f = fit_of("mixpe", used, b)
    assert not f.fits and f.over == {"lut": 1000}
    with pytest.raises(FitError, match=r"LUT needs 1,304,680 but U55C has 1,303,680 \(1,000 over"):
        check(f)
    ok = fit_of("mixpe", {"lut": 13_036, "ff": 0, "dsp": 0, "bram36": 0, "uram": 0}, b)
    assert check(ok) is ok
    assert ok.utilisation["lut"] == pytest.approx(0.01, rel=1e-3)
    assert "1.00%" in fit_table([ok])
    d = json.loads(json.dumps(ok.as_dict()))
    assert d["fits"] and d["capacity"]["dsp"] == 9024


def test_kernel_fit_estimate_per_board():
    """Yosys estimate of the default kernel (cached under build/resources)."""
    spec = kernel_spec("mixpe", {})
    fits = [kernel_fit(spec, board(n)) for n in sorted(BOARDS)]
    for f in fits:
        assert f.fits
        assert f.used["dsp"] >= spec.min_resources["dsp"]
        assert 0 < f.used["lut"] < 0.05 * f.capacity["lut"]
    table = fit_table(fits)
    assert all(n in table for n in BOARDS)


# ----------------------------------------------------------------- build tree

def test_generate_only_all_boards(tmp_path, capsys):
    tclsh = shutil.which("tclsh")
    for name in sorted(BOARDS):
        rc = fb_build.main(["--board", name, "--kernel", "mixpe", "--generate-only",
                            "--out", str(tmp_path)])
        assert rc == fb_build.EXIT_OK
        out = tmp_path / name / "mixpe"
        for f in ("rtl/mixpe.v", "package_kernel.tcl", "link.cfg", "build_xclbin.sh",
                  "fullchip/top.tcl", "fullchip/top.xdc", "fullchip/build_top.sh",
                  "fit.json", "manifest.json", "RUN.md"):
            assert (out / f).is_file(), f
        b = BOARDS[name]
        cfg = (out / "link.cfg").read_text()
        assert f"platform={b.platform}" in cfg
        sps = re.findall(r"^sp=mixpe_1\.(\w+):(\w+\[\d+\])$", cfg, re.M)
        assert sps == [(buf, f"{b.banks.kind}[{i}]")
                       for i, buf in enumerate(("act", "code", "scale", "result"))]
        xdc = (out / "fullchip" / "top.xdc").read_text()
        assert b.clocks[0].pin_p in xdc
        tcl = (out / "package_kernel.tcl").read_text()
        assert f"set part {b.part}" in tcl and "package_xo" in tcl
        assert re.search(r"\{result\} 0x028 64", tcl) and re.search(r"\{n_tiles\} 0x034 32", tcl)
        man = json.loads((out / "manifest.json").read_text())
        assert man["fit"]["fits"] and man["board"]["part"] == b.part
        if tclsh:
            assert fb_build.tcl_check(out / "package_kernel.tcl") is None
            assert fb_build.tcl_check(out / "fullchip" / "top.tcl") is None
    assert "ok   package_kernel.tcl" in capsys.readouterr().out or not tclsh


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not installed")
def test_tcl_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.tcl"
    bad.write_text("set x {\nputs $x\n")
    assert "unbalanced" in fb_build.tcl_check(bad)
    bad.write_text("set n [expr {1 +}]\n")
    assert "error" in fb_build.tcl_check(bad)
    good = tmp_path / "good.tcl"
    good.write_text("create_project foo\nforeach c [get_cells] { set_property X 1 $c }\n")
    assert fb_build.tcl_check(good) is None


def test_without_vendor_tools_prints_commands_and_exits_5(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fb_build, "vendor_tools", lambda: {"vivado": None, "v++": None})
    rc = fb_build.main(["--board", "u250", "--kernel", "mixpe", "--no-fit",
                        "--config", json.dumps(SMALL), "--out", str(tmp_path)])
    assert rc == fb_build.EXIT_NO_TOOLS == 5
    out = capsys.readouterr().out
    assert "not on PATH" in out and "build_xclbin.sh" in out and "xilinx_u250" in out


def test_with_vendor_tools_runs_the_flow(tmp_path, monkeypatch):
    """Fake vivado / v++ on PATH: the generated script calls them in order."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("vivado", "v++"):
        p = bindir / tool
        p.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\n")
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    rc = fb_build.main(["--board", "u55c", "--kernel", "mixpe", "--no-fit",
                        "--config", json.dumps(SMALL), "--out", str(tmp_path / "o")])
    assert rc == fb_build.EXIT_OK
    calls = log.read_text().splitlines()
    assert calls[0].startswith("vivado -mode batch") and "package_kernel.tcl" in calls[0]
    assert calls[1].startswith("v++ -l -t hw --config link.cfg -o mixpe.xclbin mixpe.xo")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    (bindir / "v++").write_text("#!/bin/sh\nexit 1\n")
    assert fb_build.main(["--board", "u55c", "--kernel", "mixpe", "--no-fit", "--config",
                          json.dumps(SMALL), "--out", str(tmp_path / "o")]) == 6


def test_cli_refusals(tmp_path, capsys):
    big = {"bits": 4, "group": 32, "rows": 512, "cols": 512, "K": 64}
    rc = fb_build.main(["--board", "u280", "--kernel", "mixpe", "--generate-only",
                        "--config", json.dumps(big), "--out", str(tmp_path)])
    assert rc == fb_build.EXIT_NO_FIT
    assert "DSP48E2" in capsys.readouterr().err
    assert not (tmp_path / "u280" / "mixpe").exists()   # refused before writing
    rc = fb_build.main(["--board", "u280", "--kernel", "mixpe", "--generate-only",
                        "--config", '{"K": 100}', "--out", str(tmp_path)])
    assert rc == fb_build.EXIT_USAGE
    assert "group" in capsys.readouterr().err
    rc = fb_build.main(["--board", "u280", "--kernel", "mixpe", "--config", "[1]"])
    assert rc == fb_build.EXIT_USAGE


# ----------------------------------------------------------------- host

def test_xrt_absent_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyxrt", None)   # import pyxrt -> ImportError
    with pytest.raises(XrtUnavailable, match="XRT"):
        XrtDevice(tmp_path / "x.xclbin", mixpe_kernel(MixPEConfig(**SMALL)))


def test_host_cli_without_xrt_points_to_the_simulation(monkeypatch, tmp_path, capsys):
    from fpga_boards import host
    from quantflow.cli import main as qf_main
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    # the images are checked first: a valid export, so the missing XRT is the error
    assert qf_main(["export", "--random-weights", "8", "64", "--group", "32", "--cols", "4",
                    "--out", str(tmp_path / "img")]) == 0
    assert host.main([str(tmp_path / "img"), "--xclbin", str(tmp_path / "x.xclbin")]) == 3
    assert "python -m cosim host" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # a card run needs its xclbin
        host.main([str(tmp_path)])


def test_fullchip_top_keeps_the_datapath(tmp_path):
    out = fb_build.generate("u280", mixpe_kernel(MixPEConfig(**SMALL)), out_root=tmp_path,
                            fit=False)
    top = (out.out / "fullchip" / "top.v").read_text()
    assert 'DONT_TOUCH = "TRUE"' in top and "IBUFDS" in top
