"""Formal proofs (cosim.formal, docs/verification.md "Formal proofs"): the
quick checks run here (well under a minute of CPU), the rest are marked slow
and run under `make slow` / `make formal`. Every check: a proof passes, a
fault demonstration fails with a counterexample trace. Skipped with the
reason when sby or the Yices solver is missing."""
from __future__ import annotations

import pytest

from cosim.formal import checks as fc
from cosim.formal.monitors import TAP_FAULTS
from cosim.formal.sby import solver_missing

_MISSING = solver_missing()
needs_solver = pytest.mark.skipif(_MISSING is not None, reason=f"formal: {_MISSING}")

_ALL = fc.all_checks()


def _id(c) -> str:
    return c.name


@needs_solver
@pytest.mark.parametrize("check", [c for c in _ALL if c.quick], ids=_id)
def test_quick_check(check, tmp_path):
    row = fc.run_check(check, tmp_path)
    assert row["ok"], (f"{check.name}: {row['status']} (expected {check.expected}) "
                       f"{row['failed']}\n{row['log_tail']}")
    if check.broken:
        assert row["failed"] and row["trace"], "a fault must fail with a counterexample"


@pytest.mark.slow
@needs_solver
@pytest.mark.parametrize("check", [c for c in _ALL if not c.quick], ids=_id)
def test_slow_check(check, tmp_path):
    row = fc.run_check(check, tmp_path)
    assert row["ok"], (f"{check.name}: {row['status']} (expected {check.expected}) "
                       f"{row['failed']}\n{row['log_tail']}")


def test_every_property_group_fails_on_a_broken_design():
    """Each group but `cover` (a reachability check, not a property) of each
    harness has a fault demonstration, and every fault of a harness is used."""
    by_harness: dict[type, list] = {}
    for c in _ALL:
        by_harness.setdefault(c.harness, []).append(c)
    for h, cs in by_harness.items():
        shown = {c.group for c in cs if c.broken}
        missing = set(h.groups) - {"cover"} - shown
        assert not missing, f"{h.block}: no fault demonstration for {sorted(missing)}"
        used = {c.broken for c in cs if c.broken}
        assert used == set(h.faults), f"{h.block}: faults never demonstrated: " \
                                      f"{sorted(set(h.faults) - used)}"
        proven = {c.group for c in cs if not c.broken}
        assert proven == set(h.groups), f"{h.block}: groups never checked: " \
                                        f"{sorted(set(h.groups) - proven)}"


@pytest.mark.slow
def test_every_harness_elaborates_and_names_its_properties():
    """Harness bugs show here without a solver: every check elaborates, and its
    assertions are registered under its groups."""
    from amaranth.hdl import Fragment
    for c in _ALL:
        if c.block == "core":
            continue        # the whole core takes a minute to elaborate; make formal runs it
        h = c.make()
        Fragment.get(h, "formal")
        groups = {g for g, _ in h.properties}
        assert c.group in groups, f"{c.name}: no property of group {c.group}"
        if c.broken:
            assert groups == {c.group}, f"{c.name}: a demonstration asserts its group only"


def test_port_faults_are_documented():
    for name, text in TAP_FAULTS.items():
        assert text, name


def test_the_cli_lists_and_refuses_nothing_matching(capsys):
    from cosim.formal.__main__ import main
    assert main(["--list", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "mixpe/stream" in out
    assert main(["--block", "nonesuch"]) == 1
