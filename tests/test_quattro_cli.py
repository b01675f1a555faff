"""The `quattro` command: every subcommand listed with one line and reachable,
--block/--config (JSON text, .json or .yaml file) for the per-block commands,
--build-dir, one clear line for a user's mistake; the package commands it runs
(python -m cosim sim/lint --block/--config, python -m fpga_boards --help and
resources of any block); a failed co-simulation names its seed, the command
that reruns it and its waveform; progress lines of long steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import quattro_cli
from cosim import blocks
from cosim.__main__ import main as cosim_main
from fpga_boards import progress
from fpga_boards.__main__ import main as boards_main

ROOT = Path(__file__).resolve().parent.parent
SMALL_LUT = {"rows": 1, "cols": 16, "lanes": 4, "K": 128, "group": 64}


def _run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "quattro_cli", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_help_lists_every_command_with_one_line(capsys):
    assert quattro_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("verilog", "sim", "lint", "resources", "models", "eval", "export",
                 "compile", "rotation-search", "generate", "bitstream"):
        line, = [ln for ln in out.splitlines() if ln.split()[:1] == [name]]
        assert len(line.split()) > 2, line          # a summary, on the same line
    assert set(quattro_cli.commands()) <= {c.name for c in quattro_cli.COMMANDS}


def test_no_command_is_a_usage_error(capsys):
    assert quattro_cli.main([]) == 2
    assert "usage: quattro" in capsys.readouterr().err


@pytest.mark.parametrize("name", [c.name for c in quattro_cli.COMMANDS])
def test_every_command_has_help(name, capsys):
    if name not in quattro_cli.commands():
        pytest.skip(f"{name}'s package is not in this tree")
    assert quattro_cli.main([name, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_verilog_block_config_json_and_yaml(tmp_path, capsys):
    out = tmp_path / "v"
    assert quattro_cli.main(["verilog", "--block", "lut", "--config", json.dumps(SMALL_LUT),
                             "--out", str(out)]) == 0
    assert (out / "lut_r1_c16_l4_k128_g64.v").is_file()
    (tmp_path / "c.yaml").write_text("rows: 1\ncols: 32\nlanes: 4\nK: 128\n")
    assert quattro_cli.main(["verilog", "--block", "lut", "--config",
                             str(tmp_path / "c.yaml"), "--out", str(out)]) == 0
    assert (out / "lut_r1_c32_l4_k128_g64.v").is_file()
    (tmp_path / "c.json").write_text(json.dumps({"max_k": 64, "lanes": 2}))
    assert quattro_cli.main(["verilog", "--block", "sfu", "--config",
                             str(tmp_path / "c.json"), "--out", str(out)]) == 0
    assert (out / "sfu_l2_k64.v").is_file()


def test_build_dir_and_env(tmp_path):
    r = _run("--build-dir", str(tmp_path / "b"), "verilog", "--block", "pim",
             "--kind", "bank", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "b" / "verilog").glob("*.v"))
    r = _run("verilog", "--block", "pim", "--kind", "bank", cwd=tmp_path,
             env={"QUATTRO_BUILD": str(tmp_path / "e")})
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "e" / "verilog").glob("*.v"))


@pytest.mark.parametrize("args, words", [
    (["frob"], "unknown command 'frob'"),
    (["verilog"], "give --block"),
    (["verilog", "--block", "lut", "--config", "missing.yaml"], "no such file"),
    (["verilog", "--block", "lut", "--config", '{"rows": 1, "bogus": 2}'], "no field 'bogus'"),
    (["verilog", "--block", "nope"], "unknown block 'nope'"),
    (["bitstream", "--block", "lut", "--board", "u280"], "has no Alveo kernel"),
    (["sim", "--block", "core", "--config", "{}"], "not available for block 'core'"),
    (["sim", "--config", "{}"], "--config needs --block"),
    (["lint", "--block", "lut", "--config", "[1]"], "must be a JSON object"),
    (["resources", "--block", "pim", "--config", '{"banks": 0}'], "banks"),
])
def test_user_errors_are_one_line(args, words, tmp_path):
    r = _run(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fpga_boards_help_exits_0(capsys):
    assert boards_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("build", "host", "resources", "perf"))
    assert boards_main([]) == 2


def test_resources_of_any_block_configuration(tmp_path, capsys):
    """A block without a comparison table, any configuration: one Yosys run."""
    assert quattro_cli.main(["resources", "--block", "lut", "--config", json.dumps(SMALL_LUT),
                             "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "lut_r1_c16_l4_k128_g64" in out and "| design |" in out
    rec, = json.loads((tmp_path / "r.json").read_text())
    assert rec["lut"] > 0 and rec["ff"] > 0


def test_lint_block_config(tmp_path, capsys):
    assert cosim_main(["lint", "--block", "lut", "--config", json.dumps(SMALL_LUT),
                       "--out", str(tmp_path)]) == 0
    assert "1 design(s) clean" in capsys.readouterr().out
    assert cosim_main(["lint", "--config", "{}"]) == 2


def test_sim_config_plans_every_configurable_block():
    """`--config` gives each block's plan on that configuration (no simulation)."""
    small = {"mixpe": {"bits": 4, "group": 32, "rows": 1, "cols": 2, "K": 64},
             "kernel_mixpe": {"bits": 4, "group": 32, "rows": 1, "cols": 2, "K": 64},
             "lut": SMALL_LUT, "pim": {"banks": 2, "mode": "dual"},
             "sparse_dsp": {"L": 8, "group_len": 4, "K": 128, "qgroup": 64},
             "kv4_attention": {"head_dim": 32, "lanes": 4, "max_t": 64},
             "sfu": {"max_k": 64, "lanes": 1}}
    assert set(small) == set(blocks.CONFIG_BLOCKS)
    for block, fields in small.items():
        items = blocks.configured_items(block, fields, sim="verilator")[block]
        assert items and all(i.block == block for i in items)
        for k, v in fields.items():
            assert all(i.config[k] == v for i in items), (block, k)


def test_failed_run_names_seed_rerun_and_waves(monkeypatch, capsys, tmp_path):
    from cosim import report

    def failing():
        return report.make_record(block="lut", test="stream x", config={"rows": 1},
                                  passed=False, mismatches=3, vectors=10, cycles=5, macs=0,
                                  peak_macs_per_cycle=1, sim_seconds=0.1, seed=77,
                                  run_dir=str(tmp_path / "runs" / "r1"), errors=["3 mismatches"])
    item = blocks.SimItem(block="lut", name="lut_case_s77", path="stream", config={"rows": 1},
                          macs=0, peak_macs_per_cycle=1, run=failing)
    monkeypatch.setattr(blocks, "block_items", lambda **kw: {"lut": [item]})
    monkeypatch.setattr(report, "append_records", lambda *a, **kw: None)
    assert cosim_main(["sim", "--block", "lut"]) == 1
    err = capsys.readouterr().err
    assert "seed: 77" in err
    assert "rerun: python -m cosim sim --block lut --only lut_case_s77" in err
    assert "waves: WAVES=1 python -m cosim sim --block lut --only lut_case_s77" in err
    assert str(tmp_path / "runs") in err


def test_progress_lines_without_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("QUATTRO_PROGRESS", "1")
    with progress.step("building thing") as s:
        s.advance()
    err = capsys.readouterr().err
    assert "building thing ..." in err and "building thing: done after" in err
    monkeypatch.setenv("QUATTRO_PROGRESS", "0")
    with progress.step("quiet"):
        pass
    assert capsys.readouterr().err == ""


def test_progress_live_display_shared_by_threads(monkeypatch):
    """Several threads' steps share one live display, stopped with the last."""
    import threading
    monkeypatch.setattr(progress, "_live", lambda: True)
    done = []

    def work(i):
        with progress.step(f"step {i}", total=2) as s:
            s.advance(2)
            done.append(i)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(done) == [0, 1, 2, 3]
    assert progress._progress is None and progress._open == 0
