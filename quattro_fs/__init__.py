"""Crash-safe file operations shared by every package: atomic file and
directory writes, an inter-process file lock, sha256 of a file, and where
generated files go (`build_root`).

Standard library only, so that any layer (golden included) may import it
without pulling in anything heavy. A reader never sees a half-written file or
directory: everything is written beside its destination and renamed into place.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "replace_dir",
           "cached_dir", "file_lock", "sha256_file", "build_root", "BUILD_ENV", "umask"]

#: Environment variable naming the directory for generated files (`build_root`).
BUILD_ENV = "QUATTRO_BUILD"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """Where generated files go (Verilog, simulator builds, reports, models):
    $QUATTRO_BUILD when set; else `build/` of the source checkout when quattro
    runs from one (make, an editable install), so a run from any subdirectory
    shares one cache; else `./build` under the working directory (an installed
    quattro never writes into site-packages). Absolute, so that it survives the
    simulators' changes of directory."""
    env = os.environ.get(BUILD_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and (_SOURCE_ROOT / "quattro_fs").is_dir():
        return _SOURCE_ROOT / "build"
    return Path.cwd() / "build"


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting
    it to read it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and
    an os.replace: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the result the mode open() would have
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (atomic_write_bytes)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: object, *, indent: int | None = 1) -> None:
    """Write `obj` as JSON, newline-terminated, to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def replace_dir(outdir: Path | str, fill: Callable[[Path], object]) -> object:
    """Call `fill(tmpdir)` on a fresh directory beside `outdir`, then rename it to
    `outdir`, replacing an earlier one. On any error the temporary directory is
    removed and `outdir` is untouched. Returns what `fill` returned."""
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        # mkdtemp makes 0700 directories; give the result the mode mkdir() would have
        tmp.chmod(0o777 & ~umask())
        result = fill(tmp)
        if outdir.exists():
            # rename the old one away first: os.replace cannot overwrite a non-empty dir
            old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=outdir.parent))
            os.rmdir(old)
            os.replace(outdir, old)
            os.replace(tmp, outdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, outdir)
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if missing), held for the
    `with` body; serialises processes (pytest-xdist workers, parallel make sim
    items) and threads that each open the lock file themselves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: Marker written last into a directory made by cached_dir: its presence means complete.
COMPLETE_MARKER = ".quattro-complete"


def cached_dir(root: Path | str, name: str,
               fill: Callable[[Path], dict | None]) -> tuple[Path, bool, float]:
    """`root/name`, created by `fill(tmp_dir) -> metadata dict` unless present.

    Safe under concurrency: one process fills under a file lock, into a
    temporary directory renamed into place when complete; the others wait for
    the lock and reuse the result. Returns (directory, was_cached, seconds
    spent filling)."""
    import time  # noqa: PLC0415 (only here)

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if (final / COMPLETE_MARKER).is_file():
        return final, True, 0.0
    with file_lock(root / ".locks" / f"{name}.lock"):
        if (final / COMPLETE_MARKER).is_file():
            return final, True, 0.0
        t0 = time.perf_counter()

        def fill_complete(tmp: Path) -> None:
            meta = fill(tmp) or {}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(meta))

        replace_dir(final, fill_complete)  # also replaces a stale, incomplete directory
        return final, False, time.perf_counter() - t0


def read_cached_meta(directory: Path | str) -> dict:
    """The metadata `fill` returned for a directory made by cached_dir."""
    return json.loads((Path(directory) / COMPLETE_MARKER).read_text())


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
