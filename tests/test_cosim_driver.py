"""make sim's driver (python -m cosim sim): the longest blocks start first while the
table and the report keep the plan's order; on-request blocks are not in the default
plan and merge their records instead of replacing a block's."""
from __future__ import annotations

import pytest

from cosim import blocks, report
from cosim.__main__ import main as cosim_main


def _item(block: str, name: str, ran: list, record_block: str | None = None):
    def run():
        ran.append(name)
        return report.make_record(block=record_block or block, test=f"stream {name}",
                                  config={"n": 1}, passed=True, mismatches=0, vectors=1,
                                  cycles=1, macs=0, peak_macs_per_cycle=1, sim_seconds=0.0)
    return blocks.SimItem(block=block, name=name, path="stream", config={"n": 1}, macs=0,
                          peak_macs_per_cycle=1, run=run)


def test_longest_blocks_start_first_and_records_keep_the_plan_order(monkeypatch, capsys):
    ran, appended = [], []
    plan = {"lut": [_item("lut", "a", ran), _item("lut", "b", ran)],
            "core": [_item("core", "c", ran)]}
    assert "core" in blocks.START_FIRST and "lut" not in blocks.START_FIRST
    monkeypatch.setattr(blocks, "block_items", lambda **kw: plan)
    monkeypatch.setattr(report, "append_records",
                        lambda recs, replace_block=None: appended.append(
                            ([r["test"] for r in recs], replace_block)))
    assert cosim_main(["sim", "--jobs", "1"]) == 0
    assert ran == ["c", "a", "b"]
    assert appended == [(["stream a", "stream b"], "lut"), (["stream c"], "core")]
    out = capsys.readouterr().out
    assert out.index("stream a") < out.index("stream c")      # the table: plan order


def test_on_request_blocks_are_named_not_planned_and_merge(monkeypatch):
    assert set(blocks.ON_REQUEST).isdisjoint(blocks.BLOCKS)
    ran, appended = [], []
    # the generation's record is a core record: it must not replace the core's others
    plan = {"generate": [_item("generate", "g", ran, record_block="core")]}
    monkeypatch.setattr(blocks, "block_items", lambda **kw: plan)
    monkeypatch.setattr(report, "append_records",
                        lambda recs, replace_block=None: appended.append(
                            ([r["block"] for r in recs], replace_block)))
    assert cosim_main(["sim", "--block", "generate", "--jobs", "1"]) == 0
    assert ran == ["g"] and appended == [(["core"], None)]


def test_unknown_block_names_the_on_request_ones():
    with pytest.raises(ValueError, match="generate"):
        blocks.block_items(sim="verilator", block="no_such_block")


def test_plan_is_the_same_on_a_fresh_clone(tmp_path):
    """make sim's plan does not depend on what build/ holds: with an empty build root
    the real-model items (prepared on first use) are planned, and planning writes
    nothing. Run in a subprocess: the build root is read once per process."""
    import json
    import os
    import subprocess
    import sys
    code = ("import json; from cosim import blocks; "
            "print(json.dumps({b: [i.name for i in its] for b, its in "
            "blocks.block_items(sim='verilator').items()}))")
    env = dict(os.environ, QUATTRO_BUILD=str(tmp_path / "build"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    plan = json.loads(out.strip().splitlines()[-1])
    assert "core-smollm2-layer12" in plan["core"]
    assert any("real-smollm2" in n for n in plan["sfu"])
    assert not (tmp_path / "build" / "models").exists()
