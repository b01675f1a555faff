"""python -m hdl: every block of hdl.generate.BLOCKS writes Verilog from a JSON
configuration; a user's mistake gives one line on stderr and exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hdl.__main__ import main
from hdl.generate import BLOCKS

ROOT = Path(__file__).resolve().parent.parent

#: (block, small configuration, kind, options) -> the module written
CASES = [
    ("mixpe", {"bits": 2, "group": 32, "rows": 1, "cols": 2, "K": 64}, "array", {},
     "mixpe_w2_g32_r1_c2_k64"),
    ("mixpe", {"bits": 4, "group": 32, "K": 64}, "cell", {}, "mixpe_w4_g32_r1_c8_k64_cell"),
    ("lut", {"rows": 1, "cols": 8, "lanes": 4, "K": 64, "group": 32}, None, {},
     "lut_r1_c8_l4_k64_g32"),
    ("sparse_dsp", {"L": 8, "group_len": 4, "K": 512}, "chain", {},
     "sparse_dsp_l8_g4_k512_q64_chain"),
    ("sparse_dsp", {"L": 8, "group_len": 4, "K": 512}, None, {}, "sparse_dsp_l8_g4_k512_q64"),
    ("pim", {"banks": 2, "rows": 16, "columns": 64}, "bank", {},
     "pim_dual_b2_r16_c64_l16_q32_j16_bank"),
    ("pim", {"banks": 2, "rows": 16, "columns": 64, "max_job_rows": 4}, "system",
     {"sizes": {"max_mem": 64, "max_jobs": 8, "max_reads": 64, "max_results": 16}},
     "pim_dual_b2_r16_c64_l16_q32_j4_sys_m64_j8_r64_s16"),
    ("kv4_attention", {"head_dim": 32, "lanes": 4, "max_t": 64, "heads": 1}, None, {},
     "kv4_d32_l4_t64_h1_x16_rot_r8"),
    ("sfu", {"max_k": 64, "lanes": 2}, None, {}, "sfu_l2_k64"),
    ("core", {"rows": 2, "cols": 64, "max_k": 128, "buffers": 2, "max_tokens": 2,
              "buf_elems": 128, "mem_ports": 1, "sfu": {"lanes": 16, "max_k": 128},
              "kv4": {"head_dim": 32, "lanes": 16, "max_t": 64}}, None, {},
     "core_r2_c64_k128_b2x2x128_sfu_l16_k128_kv4_d32_l16_t64_h1_x16_rot_r8_m1x32"),
]


def test_every_block_is_covered():
    assert {c[0] for c in CASES} == set(BLOCKS)
    for name, gen in BLOCKS.items():
        assert gen.kinds and gen.defaults, name


@pytest.mark.parametrize("block, config, kind, options, top", CASES,
                         ids=[f"{c[0]}-{c[2] or 'default'}" for c in CASES])
def test_block_writes_verilog(tmp_path, capsys, block, config, kind, options, top):
    argv = [block, "--config", json.dumps(config), "--out", str(tmp_path)]
    argv += ["--kind", kind] if kind else []
    argv += ["--options", json.dumps(options)] if options else []
    assert main(argv) == 0
    path = tmp_path / f"{top}.v"
    assert capsys.readouterr().out.strip() == str(path)
    assert f"module {top}(" in path.read_text()


def test_mixpe_flags(tmp_path, capsys):
    """README's command line: MixPE's own flags, --system with its tile counts."""
    assert main(["mixpe", "--bits", "2", "--group", "32", "--rows", "1", "--cols", "2",
                 "--K", "64", "--system", "--max-m-tiles", "2", "--max-n-tiles", "3",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "mixpe_w2_g32_r1_c2_k64_sys_m2_n3.v").is_file()


@pytest.mark.parametrize("args, words", [
    (["nope"], "unknown block 'nope'"),
    ([], "--all"),
    (["lut", "--config", "{rows: 1}"], "--config is not valid JSON"),
    (["lut", "--config", "[1]"], "must be a JSON object"),
    (["lut", "--config", '{"depth": 1}'], "LUTConfig has no field 'depth'"),
    (["lut", "--config", '{"rows": "2"}'], "rows must be an int"),
    (["sparse_dsp", "--config", '{"L": 6}'], "power of two"),
    (["pim", "--kind", "tile"], "kind must be one of"),
    (["kv4_attention", "--options", "{"], "--options is not valid JSON"),
    (["lut", "--bits", "4"], "are MixPE flags"),
    (["mixpe", "--system", "--max-m-tiles", "0"], "--max-m-tiles must be >= 1"),
])
def test_user_errors_are_one_line(tmp_path, capsys, args, words):
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not list(tmp_path.iterdir())


def test_cli_process_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hdl", "pim", "--config", '{"mode": "fast"}',
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "mode" in r.stderr
