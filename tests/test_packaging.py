"""The built wheel holds every module of the source packages and the data files
the code reads at run time (pyproject.toml finds the packages by name)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("golden", "hdl", "quantflow", "cosim", "fpga_boards", "quattro_fs", "dse",
            "quattro_cli")
#: Files other than modules that the code opens next to itself.
DATA_FILES = ("cosim/lint.vlt",)


def _source_files() -> set[str]:
    return {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_wheel_holds_every_module(tmp_path):
    # Build from a copy of the sources so that setuptools' build/ and egg-info
    # stay out of the working tree (offline: no build isolation, no downloads).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel, = out.glob("quattro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted((_source_files() | set(DATA_FILES)) - names)
    assert not missing, f"the wheel lacks {missing}; fix [tool.setuptools] in pyproject.toml"
