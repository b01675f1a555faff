"""The docs site builds with `mkdocs build --strict` (no broken link or anchor, the
API reference rendered from the docstrings), and every block's page has a
`quattro verilog --block ...` example that works as written."""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import quattro_cli

ROOT = Path(__file__).resolve().parent.parent
BLOCK_PAGES = ("mixpe", "lut", "sparse_dsp", "pim", "kv4_attention", "sfu", "core")


def _verilog_example(page: str) -> list[str]:
    """The `quattro verilog` line of a page's sh blocks, as argv."""
    text = (ROOT / "docs" / f"{page}.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [ln for b in blocks for ln in b.splitlines()
             if ln.startswith("quattro verilog --block")]
    assert len(lines) == 1, f"docs/{page}.md needs one `quattro verilog --block` example"
    return shlex.split(lines[0])[1:]


@pytest.mark.parametrize("page", BLOCK_PAGES)
def test_block_page_cli_example_runs(page, tmp_path, capsys):
    argv = _verilog_example(page)
    assert argv[argv.index("--block") + 1] == page
    assert quattro_cli.main(["--build-dir", str(tmp_path), *argv]) == 0
    written = list((tmp_path / "verilog").glob("*.v"))
    assert len(written) == 1 and str(written[0]) in capsys.readouterr().out


def test_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed; `make docs` installs requirements-docs.lock")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                        "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True,
                       env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = tmp_path / "site"
    assert "MixPE" in (site / "index.html").read_text()
    for page in BLOCK_PAGES:
        assert (site / page / "index.html").is_file()
    api = (site / "api" / "hdl" / "index.html").read_text()
    assert "block_config" in api          # rendered from hdl.generate's docstrings
