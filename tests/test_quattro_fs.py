"""quattro_fs: atomic writes and directory replacement leave nothing half done,
cached_dir fills once under concurrency, file_lock serialises, sha256_file;
outputs follow the umask; build_root."""
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import quattro_fs
from quattro_fs import (BUILD_ENV, atomic_write_bytes, atomic_write_json, atomic_write_text,
                        build_root, cached_dir, file_lock, read_cached_meta, replace_dir,
                        sha256_file, umask)

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_writes(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "t.txt", "héllo")
    atomic_write_json(tmp_path / "j.json", {"a": [1, 2]})
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2]}
    atomic_write_text(tmp_path / "t.txt", "new")
    assert (tmp_path / "t.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "sub", "t.txt"]


def test_atomic_write_error_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails inside the write
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_replace_dir(tmp_path):
    out = tmp_path / "out"

    def fill(d, name):
        (d / name).write_text(name)
        return name

    assert replace_dir(out, lambda d: fill(d, "one")) == "one"
    assert replace_dir(out, lambda d: fill(d, "two")) == "two"
    assert [p.name for p in out.iterdir()] == ["two"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_dir_keeps_the_old_dir_when_fill_raises(tmp_path):
    out = tmp_path / "out"
    replace_dir(out, lambda d: (d / "old").write_text("old"))

    def bad(d):
        (d / "new").write_text("half")
        raise RuntimeError("fill failed")

    with pytest.raises(RuntimeError, match="fill failed"):
        replace_dir(out, bad)
    assert [p.name for p in out.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cached_dir_fills_once_and_keeps_metadata(tmp_path):
    calls = []

    def fill(d):
        calls.append(d)
        (d / "data").write_text("x")
        return {"rows": 3}

    d1, cached1, _ = cached_dir(tmp_path, "item", fill)
    d2, cached2, secs = cached_dir(tmp_path, "item", fill)
    assert (d1, cached1, cached2, secs) == (tmp_path / "item", False, True, 0.0)
    assert d1 == d2 and len(calls) == 1 and (d1 / "data").read_text() == "x"
    assert read_cached_meta(d1) == {"rows": 3}


def test_cached_dir_replaces_an_incomplete_dir(tmp_path):
    (tmp_path / "item").mkdir()
    (tmp_path / "item" / "stale").write_text("left by a killed run")

    def fill(d):
        (d / "data").write_text("x")

    d, cached, _ = cached_dir(tmp_path, "item", fill)
    assert not cached and sorted(p.name for p in d.iterdir() if p.name[0] != ".") == ["data"]


def test_cached_dir_threads_fill_once(tmp_path):
    calls, results = [], []

    def fill(d):
        calls.append(1)
        time.sleep(0.2)  # long enough that the other thread arrives mid-fill
        (d / "data").write_text("x")

    def work():
        results.append(cached_dir(tmp_path, "item", fill)[1])

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(results) == [False, True]


_CHILD = """
import sys, time
from pathlib import Path
from quattro_fs import cached_dir
root = Path(sys.argv[1])
def fill(d):
    with open(root / "calls.log", "a") as f:
        f.write("fill\\n")
    time.sleep(0.3)
    (d / "data").write_text("x")
print(cached_dir(root, "item", fill)[1])
"""


def test_cached_dir_processes_fill_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["False", "True"]
    assert (tmp_path / "calls.log").read_text() == "fill\n"


def test_file_lock_serialises(tmp_path):
    events = []

    def work(i):
        with file_lock(tmp_path / "locks" / "x.lock"):
            events.append(("in", i))
            time.sleep(0.1)
            events.append(("out", i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(events) == 6
    for k in range(0, 6, 2):  # every "in" is followed by the same holder's "out"
        assert events[k][0] == "in" and events[k + 1] == ("out", events[k][1])


def test_sha256_file(tmp_path):
    data = os.urandom((1 << 20) + 123)  # crosses the 1 MiB read size
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "e")) == hashlib.sha256(b"").hexdigest()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        replace_dir(tmp_path / "d", lambda d: (d / "a").write_text("a"))
        assert umask() == 0o027
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_build_root(tmp_path, monkeypatch):
    monkeypatch.setenv(BUILD_ENV, str(tmp_path / "out"))
    assert build_root() == tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BUILD_ENV, "rel")
    assert build_root() == tmp_path / "rel"          # absolute: simulators change directory
    monkeypatch.delenv(BUILD_ENV)
    # from the source checkout: its build/, wherever the command runs
    assert build_root() == Path(quattro_fs.__file__).resolve().parent.parent / "build"
