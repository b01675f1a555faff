"""cosim.core_speed: the table from a recorded-shape result (no simulator), the
harness source; the real measurement (slow: SmolLM2 layer 12 under cocotb and the
plain C++ harness; wall times are recorded, never asserted)."""
import json

import pytest

from cosim import core_speed as CS


def _runs(cps, cycles=(100, 300)):
    return [{"name": f"r{i}", "cycles": c, "sim_cycles": c + 1, "sim_seconds": (c + 1) / cps,
             "cycles_per_second": cps} for i, c in enumerate(cycles)]


def _out():
    return {"cocotb": {"runs": _runs(1000), "cycles_per_second": 1000},
            "cpp": {"threads1": {"runs": _runs(4000), "cycles_per_second": 4000,
                                 "cocotb_ratio": 0.25}},
            "cocotb_variants": {"timer_poll512": {"runs": _runs(3000),
                                                  "cycles_per_second": 3000,
                                                  "cpp_ratio": 0.75}}}


def test_render():
    lines = CS.render(_out()).splitlines()
    assert len(lines) == 2 + 2 + 1
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["r0", "100", "1,000", "4,000", "25%", "3,000 (75%)"]
    tot = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert tot == ["all runs", "400", "1,000", "4,000", "25%", "3,000 (75%)"]


def test_cps_and_best():
    a, b = _runs(1000), _runs(2000)
    assert CS._cps(a) == pytest.approx(1000)
    assert CS._best([a, b]) is b
    assert CS._per_run(b)[1]["cycles_per_second"] == 2000


def test_harness_source_drives_the_wrapper_ports():
    for port in ("clk", "rst", "start", "prog", "pos", "tokens", "done", "error", "cycles"):
        assert f"top->{port}" in CS.MAIN_CPP
    assert "commandArgs" in CS.MAIN_CPP      # +mem_init / +trace / +mem_log reach the design


@pytest.mark.slow
def test_core_speed_writes_its_json(tmp_path):
    """`python -m cosim.core_speed` (one repeat): both paths bit-exact / cycle-equal, the
    JSON has every field (several minutes on 2 cores: two Verilator builds)."""
    pytest.importorskip("cocotb")
    from quantflow.models.loaders import models_dir
    if not (models_dir() / "smollm2").is_dir():
        pytest.skip("SmolLM2 is not prepared (make models)")
    out = tmp_path / "core_speed.json"
    assert CS.main(["--repeat", "1", "--threads", "1,2", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["bit_exact"] is True and d["poll"] > 0
    assert {"cpus", "platform", "load_average"} <= set(d["machine"])
    assert set(d["cpp"]) == {"threads1", "threads1_notrace", "threads2"}
    for v in [d["cocotb"], *d["cpp"].values(), *d["cocotb_variants"].values()]:
        assert v["cycles_per_second"] > 0 and v["sim_cycles"] > 0
        assert [r["name"] for r in v["runs"]] == [r["name"] for r in d["cocotb"]["runs"]]
    assert all(v["same_cycles_as_cocotb"] for v in d["cpp"].values())
    assert d["cpp"]["threads1"]["cocotb_ratio"] > 0
    assert set(d["cocotb_variants"]) == {f"timer_poll{d['poll']}", f"timer_poll{8 * d['poll']}"}
