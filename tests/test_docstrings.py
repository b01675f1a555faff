"""Every public function and class of the packages has a docstring and type hints.

The rule, checked by an AST walk over the sources (nothing is imported):

- public means a name not starting with ``_``: module-level functions and classes,
  and the methods of public classes (nested classes of a public class included);
  functions nested in functions are implementation detail and not checked;
- a public function or method needs a docstring, an annotation on every parameter
  (``self``/``cls`` of methods excepted) and a return annotation; an overridden
  framework method such as ``elaborate(self, platform)`` follows the same rule;
- a public class needs a docstring;
- dunder methods are not public API, except that ``__init__`` parameters need
  annotations (no docstring, no return annotation: the class docstring covers it);
- cocotb tests in ``cosim/tb/`` are module-level functions and count like any other;
- private modules (``_name.py``) are skipped, ``__init__.py`` and ``__main__.py`` are not.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("golden", "hdl", "cosim", "quantflow", "fpga_boards", "dse", "quattro_cli",
            "quattro_fs")

# Files (or folders, ending in "/") whose offenders are known and being finished:
# the test prints them instead of failing on them. Empty it as they are done.
PENDING: set[str] = set()


def _sources() -> list[Path]:
    # A private module (``_name.py``, or one under a ``_name/`` folder) is not public API.
    def public(p: Path) -> bool:
        parts = p.relative_to(ROOT).parts
        return not any(part.startswith("_") and not part.startswith("__") for part in parts)
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if public(p))


def _func_offences(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    out = []
    is_init = fn.name == "__init__"
    if not is_init and ast.get_docstring(fn) is None:
        out.append("no docstring")
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if is_method and not is_static and params:
        params = params[1:]                 # self / cls
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params if a.annotation is None]
    if missing:
        out.append("unannotated parameter(s) " + ", ".join(missing))
    if not is_init and fn.returns is None:
        out.append("no return annotation")
    return out


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def _walk_class(cls: ast.ClassDef, rel: str, found: list[str]) -> None:
    if ast.get_docstring(cls) is None:
        found.append(f"{rel}:{cls.lineno}: class {cls.name}: no docstring")
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _is_public(node.name) or node.name == "__init__":
                for o in _func_offences(node, is_method=True):
                    found.append(f"{rel}:{node.lineno}: {cls.name}.{node.name}: {o}")
        elif isinstance(node, ast.ClassDef) and _is_public(node.name):
            _walk_class(node, rel, found)


def offences(path: Path, root: Path = ROOT) -> list[str]:
    """Every breach of the rule in one source file, as ``file:line: name: what``."""
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            for o in _func_offences(node, is_method=False):
                found.append(f"{rel}:{node.lineno}: {node.name}: {o}")
        elif isinstance(node, ast.ClassDef) and _is_public(node.name):
            _walk_class(node, rel, found)
    return found


def test_rule_catches_a_bare_function(tmp_path: Path) -> None:
    # The walk itself must see what it is meant to see, and skip what it must skip.
    p = tmp_path / "golden" / "probe.py"
    p.parent.mkdir()
    p.write_text(
        "def f(x, y: int):\n    return x\n"
        "class C:\n    def __init__(self, a):\n        pass\n"
        "    def m(self) -> int:\n        'Doc.'\n        return 1\n"
        "    def _p(self):\n        pass\n"
        "def g(a: int) -> int:\n    'Doc.'\n"
        "    def inner(z):\n        return z\n    return inner(a)\n"
    )
    assert offences(p, tmp_path) == [
        "golden/probe.py:1: f: no docstring",
        "golden/probe.py:1: f: unannotated parameter(s) x",
        "golden/probe.py:1: f: no return annotation",
        "golden/probe.py:3: class C: no docstring",
        "golden/probe.py:4: C.__init__: unannotated parameter(s) a",
    ]


def _pending(rel: str) -> bool:
    return rel in PENDING or any(p.endswith("/") and rel.startswith(p) for p in PENDING)


def test_public_api_has_docstrings_and_type_hints() -> None:
    failing, pending = [], []
    for path in _sources():
        found = offences(path)
        rel = path.relative_to(ROOT).as_posix()
        (pending if _pending(rel) else failing).extend(found)
    if pending:
        print(f"\nPENDING ({len(pending)} offences in {len(PENDING)} entries, not failing):")
        print("\n".join(pending))
    stale = sorted(p for p in PENDING if (ROOT / p).exists()
                   and not any(o.startswith(p if p.endswith("/") else p + ":") for o in pending))
    assert not stale, f"PENDING lists files that now pass; remove them: {stale}"
    assert not failing, f"{len(failing)} offences:\n" + "\n".join(failing)
