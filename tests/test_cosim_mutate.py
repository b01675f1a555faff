"""cosim.mutate: the mutant generator (deterministic, one recorded change per
mutant, every class present, the mutated Verilog still elaborates) and the
harness itself on the LUT block under Icarus: a known-bad mutant is killed, the
unmutated design passes the same runs."""
from __future__ import annotations

import shutil

import pytest

from cosim import mutate

BLOCK = "lut"


@pytest.fixture(scope="module")
def design():
    return mutate.design_text(BLOCK)


def test_mutants_are_deterministic_and_recorded(design):
    top, text = design
    ms = mutate.mutants(BLOCK, text, per_block=14, seed=7)
    assert len(ms) == 14
    assert {m.cls for m in ms} == set(mutate.CLASSES)           # two of each class
    assert ms == mutate.mutants(BLOCK, text, per_block=14, seed=7)
    assert ms != mutate.mutants(BLOCK, text, per_block=14, seed=8)
    lines = text.split("\n")
    for m in ms:
        new = mutate.apply(text, m).split("\n")
        changed = [i for i, (a, b) in enumerate(zip(lines, new)) if a != b]
        assert len(new) == len(lines) and changed == list(m.lines), m.id
        assert m.as_dict()["original"] != m.as_dict()["mutated"]
    with pytest.raises(ValueError, match="generate the mutants again"):
        mutate.apply(text.replace(ms[0].old[0], "// gone"), ms[0])


def test_mutated_verilog_still_elaborates(design):
    top, text = design
    ms = mutate.mutants(BLOCK, text, per_block=7, seed=3)       # one per class
    for m in ms:
        assert mutate.check_parses(mutate.apply(text, m), top) is None, m.id
    broken = text.replace("assign adv = ", "assign adv = = ", 1)
    assert mutate.check_parses(broken, top)


def test_operator_sites_swap_one_operator():
    text = "\n".join([
        "module top(a, b, y, z, v__valid);",
        "  output v__valid;",
        "  assign y = a + b;",
        "  assign z = $signed(a) < $signed(b);",
        "  assign w = | { a, b };",
        "  assign v__valid = a & b;",
        "  always @(posedge clk)",
        "    r <= \\$5 ;",
        "endmodule"])
    s = mutate.mutation_sites(text)
    assert [n for _, n, _ in s["arith"]] == [("  assign y = a - b;",)]
    assert [n for _, n, _ in s["compare"]] == [("  assign z = $signed(a) <= $signed(b);",)]
    assert [n for _, n, _ in s["logic"]] == [("  assign v__valid = a | b;",)]  # not the reduction
    assert {n for _, n, _ in s["stuck"]} == {("  assign v__valid = 1'h0;",),
                                           ("  assign v__valid = 1'h1;",)}
    assert s["register"] == [((6, 7), ("  always @*", "    r = \\$5 ;"), "register r bypassed")]


@pytest.mark.skipif(shutil.which("iverilog") is None,
                    reason="Icarus Verilog (iverilog) is not installed")
def test_bad_mutant_killed_and_original_passes(design, tmp_path):
    top, text = design
    ms = mutate.mutants(BLOCK, text, per_block=100_000, seed=1)   # every site
    bad = next(m for m in ms if m.what == "result__valid stuck at 1")
    killed = mutate.run_mutant(BLOCK, mutate.apply(text, bad), sim="icarus", timeout=600,
                               workdir=tmp_path / "bad", max_runs=1)
    assert killed["killed"] and killed["by"] != "timeout", killed
    assert any("mismatch" in r or "words" in r for r in killed["reason"]), killed
    base = mutate.run_mutant(BLOCK, None, sim="icarus", timeout=600,
                             workdir=tmp_path / "base", max_runs=1)
    assert base == {**base, "killed": False, "runs": 1}, base
