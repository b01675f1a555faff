"""A compiler cache for Verilator's own runtime objects (verilated.o,
verilated_vpi.o, verilated_threads.o, ...), standard library only.

Every Verilator model compiles the same runtime sources from
`$VERILATOR_ROOT/include` again: for a small design that is most of its build
time. Verilator's generated makefiles put `$(OBJCACHE)` before every compiler
call; cosim.runner sets OBJCACHE to a wrapper that runs

    python objcache.py <cache dir> <include dir> <compiler> <args...>

A compile of a source inside <include dir> is looked up by a key over the whole
command line, the compiler binary, the source's text and the size and time of
every file in <include dir> (a reinstalled Verilator is a miss); a hit copies
the object (and its .d file) into place, a miss compiles and stores them. Any
other compile (the design's own classes, cocotb's main, which includes the
design's header) runs unchanged.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _key(argv: list[str], source: Path, include_dir: Path) -> str:
    h = hashlib.sha256()
    h.update("\0".join(argv).encode())
    exe = shutil.which(argv[0])
    if exe:
        st = os.stat(os.path.realpath(exe))
        h.update(f"\0{os.path.realpath(exe)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    h.update(source.read_bytes())
    for root, dirs, files in os.walk(include_dir):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            h.update(f"\0{f}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cacheable(argv: list[str], include_dir: Path) -> tuple[Path, Path] | None:
    """(source, object) of a runtime compile `... -c -o OBJ SRC`, else None."""
    if "-c" not in argv or "-o" not in argv[:-1]:
        return None
    obj, src = Path(argv[argv.index("-o") + 1]), Path(argv[-1])
    if src.suffix != ".cpp" or not src.is_file():
        return None
    try:
        src.resolve().relative_to(include_dir.resolve())
    except ValueError:
        return None
    return src, obj


def _store(entry: Path, files: dict[str, Path]) -> None:
    """Copy `files` into `entry` atomically (a concurrent build storing the same
    key leaves one complete entry)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    for name, path in files.items():
        shutil.copyfile(path, tmp / name)
    try:
        tmp.rename(entry)
    except OSError:                  # another build stored it first
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`objcache.py <cache dir> <include dir> <compiler> <args...>`: run the compile, from the
    cache for a Verilator runtime source; returns the compiler's exit status (0 on a hit)."""
    cache_dir, include_dir, cmd = Path(argv[0]), Path(argv[1]), argv[2:]
    hit = _cacheable(cmd, include_dir)
    if hit is None:
        return subprocess.call(cmd)
    src, obj = hit
    dep = obj.with_suffix(".d")
    entry = cache_dir / _key(cmd, src, include_dir)
    if (entry / "obj").is_file():
        shutil.copyfile(entry / "obj", obj)
        if (entry / "dep").is_file():
            shutil.copyfile(entry / "dep", dep)
        return 0
    rc = subprocess.call(cmd)
    if rc == 0 and obj.is_file():
        _store(entry, {"obj": obj, **({"dep": dep} if dep.is_file() else {})})
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
