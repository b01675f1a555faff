"""cosim.lint: the default designs are Verilator -Wall clean with the committed
waivers, and the waivers do not hide real findings."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from cosim import lint
from hdl.generate import write_verilog


def test_default_designs_lint_clean(tmp_path):
    results = lint.lint_designs(out_dir=tmp_path)
    names = {r.name for r in results}
    assert len(results) >= 2 and "baseline_pe_w4" in names
    dirty = {r.name: r.messages for r in results if not r.clean}
    assert not dirty, dirty


class _HalfUsed(wiring.Component):
    """A named register whose upper half is never read: a real lint finding."""
    d: In(8)
    q: Out(4)

    def elaborate(self, platform):
        m = Module()
        r = Signal(8)
        m.d.sync += r.eq(self.d)
        m.d.comb += self.q.eq(r[:4])
        return m


def test_waivers_keep_real_findings(tmp_path):
    path = write_verilog(_HalfUsed(), "half_used", tmp_path)
    result = lint.lint_file(path)
    assert not result.clean
    assert any("UNUSEDSIGNAL" in m and "'r'" in m for m in result.messages), result.messages


def test_top_module_must_match_file_name(tmp_path):
    path = write_verilog(_HalfUsed(), "half_used", tmp_path)
    renamed = path.with_name("other_name.v")
    path.rename(renamed)
    result = lint.lint_file(renamed, "half_used")
    assert any("DECLFILENAME" in m for m in result.messages), result.messages


def test_unwaived_generated_verilog_warns(tmp_path):
    """Without cosim/lint.vlt the Amaranth output does warn (the waivers are used)."""
    path = write_verilog(_HalfUsed(), "half_used", tmp_path)
    with_waivers = lint.lint_file(path)
    without = lint.lint_file(path, waivers=None)
    assert len(without.messages) > len(with_waivers.messages)
    assert any("PROCASSINIT" in m for m in without.messages)


def test_main_rejects_unknown_design(capsys):
    assert lint.main(["--design", "no_such_design"]) == 2
    assert "unknown design" in capsys.readouterr().err


def test_legal_edge_configurations_lint_clean(tmp_path):
    """Sizes at the edge of each block's legal space (issue 17): one DSP group
    (a span comparison with 0 was constant: UNSIGNED), one column word per PIM row
    (a depth-1 memory's zero-width address: ASCRANGE [-1:0]), one walk row of the
    dequantization lane (a dead row register, hidden by the alias waiver)."""
    from golden.lut_config import LUTConfig
    from golden.pim_config import PIMConfig
    from golden.sparse_dsp_config import SparseDSPConfig
    from hdl.generate import _PIM_SMALL, design, verilog
    one_group = SparseDSPConfig(L=4, group_len=4, K=512, qgroup=64)
    one_word = dict(columns=16, lanes=16)
    designs = [design("sparse_dsp", one_group), design("sparse_dsp", one_group, kind="chain"),
               design("pim", PIMConfig(**one_word), kind="bank"),
               design("pim", PIMConfig(mode="blocked", banks=2, rows=16, max_job_rows=4,
                                       **one_word), kind="system", sizes=_PIM_SMALL),
               design("lut", LUTConfig(rows=1, cols=8, lanes=8, K=64, group=32))]
    results = lint.lint_designs(designs, out_dir=tmp_path, jobs=2)
    dirty = {r.name: r.messages for r in results if not r.clean}
    assert not dirty, dirty
    name, factory = designs[-1]
    assert "e1_lr" not in verilog(factory(), name)


class _UnusedInputDeadRegister(wiring.Component):
    """An input port no logic reads and a register nothing reads: both real
    findings that a blanket "Signal is not used: *" waiver used to hide."""
    d: In(8)
    spare: In(8)
    q: Out(8)

    def elaborate(self, platform):
        m = Module()
        dead = Signal(8, name="dead_reg")
        alias = Signal(8, name="kept_alias")     # named comb signal: waived
        m.d.sync += dead.eq(self.d)
        m.d.comb += [alias.eq(self.d + 1), self.q.eq(self.d)]
        return m


def test_unused_ports_and_dead_registers_are_findings(tmp_path):
    path = write_verilog(_UnusedInputDeadRegister(), "unused_bits", tmp_path)
    result = lint.lint_file(path)
    unused = {m.split("'")[1] for m in result.messages if "Signal is not used" in m}
    assert {"spare", "dead_reg"} <= unused, result.messages
    assert "kept_alias" not in unused
