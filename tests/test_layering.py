"""The import rules of DESIGN §2, checked on the source (every import statement,
function-local ones included) and, for the torch-free layer, by importing it.

    quattro_fs   the standard library only
    golden       quattro_fs, torch, numpy; its configuration modules, formats.py and
                 validate.py the standard library and each other only
    hdl          golden's torch-free modules, quattro_fs, amaranth
    quantflow    golden, quattro_fs (never hdl)
    fpga_boards  golden, hdl, quantflow, quattro_fs (never cosim)
    cosim        everything (it sits on top; nothing imports it)
    dse          everything but cosim (it sits on top, beside cosim; nothing imports it)
    quattro_cli  everything (the `quattro` command, above all; nothing imports it)
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("quattro_fs", "golden", "hdl", "quantflow", "fpga_boards", "cosim", "dse",
            "quattro_cli")
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Rule:
    text: str                      # shown in the failure message
    ours: frozenset[str]           # packages of ours it may import
    third_party: frozenset[str] | None = None   # None: any third-party package
    torch_free: bool = False       # golden only through its torch-free modules


def _rule(module: str) -> Rule:
    pkg = module.split(".")[0]
    if pkg == "quattro_fs":
        return Rule("quattro_fs imports the standard library only", frozenset(), frozenset())
    if pkg == "golden" and _is_torch_free(module):
        return Rule("golden's configuration modules, formats.py and validate.py import the "
                    "standard library and each other only", frozenset({"golden"}), frozenset(),
                    torch_free=True)
    if pkg == "golden":
        return Rule("golden imports quattro_fs, torch and numpy only",
                    frozenset({"golden", "quattro_fs"}), frozenset({"torch", "numpy"}))
    if pkg == "hdl":
        return Rule("hdl imports amaranth, quattro_fs and golden's torch-free modules "
                    "(golden/*_config.py, formats.py, validate.py) only",
                    frozenset({"hdl", "golden", "quattro_fs"}), frozenset({"amaranth"}),
                    torch_free=True)
    if pkg == "quantflow":
        return Rule("quantflow imports golden and quattro_fs, never hdl, cosim or fpga_boards",
                    frozenset({"quantflow", "golden", "quattro_fs"}))
    if pkg == "fpga_boards":
        return Rule("fpga_boards imports golden, hdl, quantflow and quattro_fs, never cosim "
                    "(cosim imports fpga_boards)",
                    frozenset({"fpga_boards", "golden", "hdl", "quantflow", "quattro_fs"}))
    if pkg == "dse":
        return Rule("dse imports golden, hdl, quantflow, fpga_boards and quattro_fs, never "
                    "cosim (both sit on top; neither imports the other)",
                    frozenset(PACKAGES) - {"cosim", "quattro_cli"})
    if pkg == "quattro_cli":
        return Rule("quattro_cli may import every package", frozenset(PACKAGES))
    return Rule("cosim may import every package but dse and quattro_cli",
                frozenset(PACKAGES) - {"dse", "quattro_cli"})


def _is_torch_free(module: str) -> bool:
    parts = module.split(".")
    return parts == ["golden"] or (len(parts) == 2 and parts[0] == "golden" and (
        parts[1].endswith("_config") or parts[1] in ("formats", "validate")))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


SOURCES = _sources()


def _imports(module: str, path: Path):
    """(line, imported module) for every import in the file; `from X import a`
    names X.a when that is a module of ours, else X."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in SOURCES else base


def _violation(module: str, imported: str) -> str | None:
    rule = _rule(module)
    top = imported.split(".")[0]
    if top in PACKAGES:
        if imported not in SOURCES:
            return "the module does not exist"
        if top not in rule.ours:
            return rule.text
        if rule.torch_free and top == "golden" and not _is_torch_free(imported):
            return rule.text
        return None
    if top in STDLIB:
        return None
    if rule.third_party is not None and top not in rule.third_party:
        return rule.text
    return None


def _violations() -> list[str]:
    out = []
    for module, path in SOURCES.items():
        for line, imported in _imports(module, path):
            why = _violation(module, imported)
            if why:
                out.append(f"{path.relative_to(ROOT)}:{line}: imports {imported}: {why}")
    return out


def test_sources_found():
    assert {m.split(".")[0] for m in SOURCES} == set(PACKAGES)
    assert "cosim.tb.streams" in SOURCES and "hdl.generate" in SOURCES


def test_imports_follow_the_layering():
    bad = _violations()
    assert not bad, "imports against DESIGN §2:\n" + "\n".join(bad)


def test_the_rules_catch_an_edge_each_way():
    assert _violation("fpga_boards.host", "cosim.runner")
    assert _violation("hdl.mixpe", "golden.mixpe")          # torch-based model
    assert _violation("hdl.mixpe", "quantflow.pack")
    assert _violation("quantflow.pack", "hdl.rtl")
    assert _violation("golden.formats", "numpy")
    assert _violation("quattro_fs", "numpy")
    assert _violation("cosim.lint", "hdl.no_such_module")
    assert _violation("cosim.xrt_sim", "fpga_boards.host") is None
    assert _violation("dse.sweep", "cosim.runner")
    assert _violation("fpga_boards.perf", "dse.sweep")
    assert _violation("dse.point", "fpga_boards.perf") is None
    assert _violation("cosim.runner", "quattro_cli")
    assert _violation("quattro_cli", "dse") is None
    assert _violation("hdl.mixpe", "golden.mixpe_config") is None


def _torch_free_modules() -> list[str]:
    return sorted(m for m in SOURCES
                  if m.split(".")[0] in ("hdl", "quattro_fs") or _is_torch_free(m))


def test_torch_free_modules_do_not_load_torch():
    """Import every hdl and quattro_fs module and golden's torch-free modules in
    one fresh interpreter; name the first after which torch is loaded."""
    code = ("import sys, importlib\n"
            f"for m in {_torch_free_modules()!r}:\n"
            "    importlib.import_module(m)\n"
            "    if 'torch' in sys.modules:\n"
            "        sys.exit(f'importing {m} loads torch')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
