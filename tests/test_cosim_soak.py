"""The soak driver (cosim.soak, `make soak`) on a tiny vector count: random
legal configurations, the report's fields, reproducibility from the printed
seeds, and a corrupted expected word reported as a mismatch (a soak that
compares nothing, or ignores a difference, cannot pass).

The co-simulated blocks are pinned to the small configurations their own tests
build (tests/test_cosim_sfu.py, tests/test_cosim_lut.py), so the Verilator
builds are shared through build/cosim."""
from __future__ import annotations

import json

import pytest

from golden.lut_config import LUTConfig
from golden.sfu_config import SFUHWConfig

from cosim import soak
from cosim.runner import SimulatorUnavailable, find_verilator

PINNED = {"sfu": SFUHWConfig(max_k=64, lanes=1),
          "lut": LUTConfig(rows=2, cols=16, lanes=4, K=64, group=32)}


@pytest.fixture(scope="module", autouse=True)
def _verilator():
    try:
        find_verilator()
    except SimulatorUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("block", soak.BLOCKS)
def test_drawn_configurations_are_legal_and_reproducible(block):
    seeds = [soak._seed(1, block, "config", i) for i in range(20)]
    cfgs = [soak.draw_config(block, s) for s in seeds]
    # the dataclass validated each on construction; the same seed draws the same one
    assert cfgs == [soak.draw_config(block, s) for s in seeds]
    assert len({json.dumps(c.as_dict(), sort_keys=True) for c in cfgs}) > 1


def test_tiny_soak_reports_every_field(tmp_path):
    path = tmp_path / "report.json"
    rep = soak.soak(vectors=150, blocks=("sfu", "lut"), jobs=2, seed=7, configs=1,
                    report_path=path, pinned=PINNED)
    assert rep["passed"], [b["errors"] for b in rep["batches"]]
    assert json.loads(path.read_text()) == rep
    for s in rep["blocks"]:
        assert s["vectors"] >= 150 and s["mismatches"] == 0 and s["failed_batches"] == 0
        assert s["sim_cycles"] > 0 and s["sim_cycles_per_second"] > 0
        assert s["configs"] == 1 and s["vector"] == soak.VECTOR_MEANING[s["block"]]
    for b in rep["batches"]:
        assert b["cases"] and all("seed" in c for c in b["cases"])
        assert b["config"] == PINNED[b["block"]].as_dict()
    # the batch's seeds rerun it exactly: the same cases, vectors and cycles
    first = next(b for b in rep["batches"] if b["block"] == "sfu")
    again = soak.soak(blocks=("sfu",), replay=f"{first['config_seed']}:{first['case_seed']}:"
                      f"{first['target_vectors']}", report_path=None, pinned=PINNED)
    (b2,) = again["batches"]
    assert again["passed"] and again["complete"]
    assert (b2["vectors"], b2["sim_cycles"], b2["cases"]) == (
        first["vectors"], first["sim_cycles"], first["cases"])


def test_corrupted_expected_word_is_a_mismatch(tmp_path):
    rep = soak.soak(vectors=60, blocks=("sfu",), jobs=1, seed=3, configs=1,
                    report_path=tmp_path / "r.json", pinned=PINNED, corrupt=True)
    assert not rep["passed"]
    s = rep["blocks"][0]
    assert s["mismatches"] == 1 and s["failed_batches"] == 1 and s["vectors"] >= 60
    # the table still prints, and main's exit status follows `passed`
    assert "sfu" in soak.table(rep)


def test_bad_arguments_name_the_fix(capsys):
    assert soak.main(["--blocks", "nope"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert soak.main(["--vectors", "0"]) == 2
    assert "--vectors must be a positive integer" in capsys.readouterr().err
    assert soak.main(["--blocks", "sfu,lut", "--replay", "1:2:3"]) == 2
    assert "exactly one --blocks" in capsys.readouterr().err
