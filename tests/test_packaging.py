"""The built wheel holds every module of the source packages and every data file
in them (pyproject.toml finds the packages by name); installed outside the
checkout, `quattro` runs from any folder and writes into ./build there, never
into site-packages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("golden", "hdl", "quantflow", "cosim", "fpga_boards", "quattro_fs", "dse",
            "quattro_cli")
#: Files other than modules that the code opens next to itself (at least these).
DATA_FILES = ("cosim/lint.vlt", "cosim/axi_mem.v", "cosim/data/kv4_smollm2_layer10.npz")


def _package_files() -> set[str]:
    """Every file of the packages: modules and data (caches and hidden files aside)."""
    return {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and not p.name.startswith(".") and p.suffix != ".pyc"}


def _build_wheel(tmp: Path) -> Path:
    # Build from a copy of the sources so that setuptools' build/ and egg-info
    # stay out of the working tree (offline: no build isolation, no downloads).
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel, = out.glob("quattro-*.whl")
    return wheel


def test_wheel_holds_every_module_and_data_file(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= _package_files()
    missing = sorted(_package_files() - names)
    assert not missing, (f"the wheel lacks {missing}; list data files under "
                         f"[tool.setuptools.package-data] in pyproject.toml")
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "quattro = quattro_cli:main" in text


# ------------------------------------------------------------------ installed

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel in a fresh venv whose dependencies come from this interpreter's
    site-packages through a .pth file (offline: nothing is downloaded; the
    checkout's editable install is not seen, since .pth files of an added
    directory are not run). Returns (bin dir, a work folder outside the checkout,
    site-packages, its files)."""
    tmp = tmp_path_factory.mktemp("install")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    # the venv's own pip (ensurepip: bundled, offline) installs the wheel before the
    # shared site-packages are linked in: a pip that saw the checkout's editable
    # quattro there would uninstall it from the shared venv first
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                        "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    return venv / "bin", work, site, _files(site)


def _quattro(installed, *args, timeout=900):
    bindir, work = installed[:2]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "QUATTRO_BUILD", "VIRTUAL_ENV")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bindir / "quattro"), *args], cwd=work, capture_output=True,
                          text=True, env=env, timeout=timeout)


def _files(site: Path) -> set[Path]:
    return {p for p in site.rglob("*") if "__pycache__" not in p.parts}


def _nothing_written_into(site: Path, before: set[Path]) -> None:
    stray = sorted(_files(site) - before)
    assert not stray, f"written into site-packages: {stray[:5]}"


def test_installed_quattro_runs_outside_the_checkout(installed):
    bindir, work, site, before = installed
    r = _quattro(installed, "--help")
    assert r.returncode == 0 and "verilog" in r.stdout, r.stderr
    where = subprocess.run([str(bindir / "python"), "-c", "import cosim, quattro_cli; "
                            "print(cosim.__file__, quattro_cli.__file__)"],
                           capture_output=True, text=True, cwd=work)
    assert str(ROOT) not in where.stdout and str(site) in where.stdout, where.stdout
    r = _quattro(installed, "verilog", "--block", "mixpe")
    assert r.returncode == 0, r.stderr
    assert list((work / "build" / "verilog").glob("mixpe_*.v")), r.stdout
    r = _quattro(installed, "verilog", "--block", "lut", "--config",
                 json.dumps({"rows": 1, "cols": 16, "lanes": 4, "K": 128, "group": 64}))
    assert r.returncode == 0, r.stderr
    assert (work / "build" / "verilog" / "lut_r1_c16_l4_k128_g64.v").is_file()
    _nothing_written_into(site, before)


@pytest.mark.slow
def test_installed_quattro_simulates(installed):
    """One small co-simulation from the installed package (~2 min on 2 cores:
    a Verilator build of a small KV4 unit); the testbenches, the shipped
    fixture and the build cache all resolve outside the checkout."""
    _, work, site, before = installed
    r = _quattro(installed, "sim", "--block", "kv4_attention", "--config",
                 json.dumps({"head_dim": 32, "lanes": 4, "max_t": 64}), "--only", "T1_ideal")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1/1 runs passed" in r.stdout
    rec, = json.loads((work / "build" / "sim" / "report.json").read_text())
    assert rec["passed"] and rec["block"] == "kv4_attention"
    assert list((work / "build" / "cosim").iterdir())
    _nothing_written_into(site, before)
