"""Design-space sweeps (dse): a tiny space on a local Ray (one session for the module:
Ray takes seconds to start), resuming an interrupted sweep, the Pareto fronts, and
the spaces a user can get wrong."""
from __future__ import annotations

import json

import pytest

from dse.point import accuracy, evaluate_point, scheme_of
from dse.space import DSEError, load_space, point_id
from dse.sweep import pareto, read_rows, sweep

ray = pytest.importorskip("ray")

TINY = """
name: tiny
board: u280
model: smollm2
accuracy_model: smollm2
fixed: {context: 128, group: 64, kv: plain, rows: 1, cols: 64}
grid:
  ports: [1, 4]
  packed: [false, true]
"""


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _space(tmp_path, text=TINY, name="space.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return load_space(p)


def test_tiny_sweep_and_resume(tmp_path, ray_session):
    space = _space(tmp_path)
    assert len(space.points()) == 4
    out = tmp_path / "out"
    first = sweep(space, out=out, limit=1, progress=False, log=lambda *_: None)
    assert first["evaluated"] == 1 and not first["complete"]
    log = out / "rows.jsonl"
    assert len(log.read_text().splitlines()) == 1
    done = next(iter(read_rows(log)))
    # a sweep killed while writing leaves a torn line: it is skipped, not fatal
    with open(log, "a") as f:
        f.write('{"id": "torn", "status": "o')
    second = sweep(space, out=out, progress=False, log=lambda *_: None)
    assert second["resumed"] == 1 and second["evaluated"] == 3 and second["complete"]
    rows = json.loads((out / "rows.json").read_text())["rows"]
    assert [r["id"] for r in rows] == [point_id(space, p) for p in space.points()]
    assert done in {r["id"] for r in rows}
    assert all(r["status"] == "ok" for r in rows)
    assert len(log.read_text().splitlines()) == 4          # the torn line is gone
    assert (out / "rows.csv").read_text().count("\n") == 5
    for name in ("pareto_lut.png", "pareto_ppl.png", "summary.json"):
        assert (out / name).is_file()
    # packed codes and more ports only add tokens/s: the 4-port packed point leads
    best = second["best"]
    assert best["p.ports"] == 4 and best["p.packed"] is True
    assert best["pareto_lut"] and best["resources_source"].startswith("analytic")
    # each of the four adds LUTs and tokens/s over the one before: all on the front
    by_lut = sorted(rows, key=lambda r: r["lut"])
    assert [r["decode_tokens_per_s"] for r in by_lut] == \
        sorted(r["decode_tokens_per_s"] for r in rows)
    assert all(r["pareto_lut"] for r in rows)
    # a third run finds everything done and evaluates nothing
    third = sweep(space, out=out, progress=False, log=lambda *_: None)
    assert third["evaluated"] == 0 and third["resumed"] == 4


def test_a_space_with_no_valid_point(tmp_path):
    space = _space(tmp_path, TINY.replace("ports: [1, 4]", "ports: [0, 99]"))
    with pytest.raises(DSEError, match="no point of space 'tiny' is valid and fits: 4 invalid"):
        sweep(space, out=tmp_path / "out", progress=False, log=lambda *_: None)
    rows = read_rows(tmp_path / "out" / "rows.jsonl")
    assert len(rows) == 4 and all("ports must be" in r["reason"] for r in rows.values())


def test_a_space_where_nothing_fits(tmp_path, ray_session):
    space = _space(tmp_path, TINY.replace("ports: [1, 4]", "instances: [400]")
                   .replace("  packed: [false, true]\n", ""))
    with pytest.raises(DSEError, match="1 does not fit"):
        sweep(space, out=tmp_path / "out", progress=False, log=lambda *_: None)


@pytest.mark.parametrize("text, match", [
    ("name: x\ngrid: {rowz: [1]}\n", "unknown key"),
    ("name: x\nfixed: {rows: 1}\ngrid: {rows: [1, 2]}\n", "both fixed and swept"),
    ("name: x\ngrid: {rows: []}\n", "has no values"),
    ("name: x\nobjective: speed\n", "objective must be one of"),
    ("name: x\nboard: [u280\n", "not valid YAML"),
    ("name: x\nspeed: 1\n", "unknown top-level key"),
])
def test_bad_space_files(tmp_path, text, match):
    with pytest.raises(DSEError, match=match):
        _space(tmp_path, text)


def test_points_the_model_refuses_are_rows_with_a_reason():
    settings = {"board": "u280", "model": "smollm2", "accuracy_model": "smollm2",
                "prefill": False}
    row = evaluate_point(settings, {"group": 128, "context": 64}, "x")
    assert row["status"] == "invalid" and "group=64" in row["reason"]
    row = evaluate_point(settings, {"group": 64, "context": 64, "beat_bytes": 64}, "y")
    assert row["status"] == "invalid" and "cannot generate" in row["reason"]
    bad = evaluate_point({**settings, "board": "u9"}, {"group": 64}, "z")
    assert bad["status"] == "invalid" and "unknown board" in bad["reason"]


def test_pareto_by_hand():
    rows = [{"id": i, "status": "ok", "tps": t, "lut": l}
            for i, t, l in (("a", 10, 100), ("b", 20, 200), ("c", 15, 300), ("d", 20, 150))]
    rows.append({"id": "e", "status": "invalid"})
    assert pareto(rows, {"tps": "max", "lut": "min"}) == {"a", "d"}


def test_accuracy_from_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("QUATTRO_BUILD", str(tmp_path))
    missing = accuracy("smollm2", "w4a8kv4-g64", "dense")
    assert missing["ppl"] is None
    assert missing["missing"] == "python -m quantflow eval --model smollm2 --scheme w4a8kv4-g64"
    d = tmp_path / "quant" / "smollm2" / "w4a8kv4-g64"
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({"scheme": "w4a8kv4-g64", "ppl": 48.8,
                                               "ppl_fp32": 40.4}))
    got = accuracy("smollm2", "w4a8kv4-g64", "dense")
    assert got["ppl"] == 48.8 and got["ppl_fp32"] == 40.4
    assert scheme_of({"w_bits": 2, "group": 64, "kv": "plain"}) == "w2a8kv4-g64-plain"
