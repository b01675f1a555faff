"""cosim.objcache: Verilator's runtime objects reused across model builds, and only
those; a changed runtime install is a miss."""
from __future__ import annotations

import shutil

import pytest

from cosim import objcache

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")


def _compile(cache, inc, src, obj):
    return objcache.main([str(cache), str(inc), "c++", "-c", "-o", str(obj), str(src)])


def test_runtime_objects_are_reused_and_design_objects_are_not(tmp_path):
    inc, cache = tmp_path / "include", tmp_path / "cache"
    inc.mkdir()
    src = inc / "verilated.cpp"
    src.write_text("int vl_runtime() { return 1; }\n")
    obj = tmp_path / "verilated.o"
    assert _compile(cache, inc, src, obj) == 0 and obj.is_file()
    entries = list(cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "obj").read_bytes() == obj.read_bytes()

    # a hit copies the stored object: mark it to tell it from a fresh compile
    (entries[0] / "obj").write_bytes(b"stored")
    obj.unlink()
    assert _compile(cache, inc, src, obj) == 0 and obj.read_bytes() == b"stored"

    # another runtime install (a header changed) misses and compiles
    (inc / "verilated.h").write_text("// another version\n")
    assert _compile(cache, inc, src, obj) == 0 and obj.read_bytes() != b"stored"
    assert len(list(cache.iterdir())) == 2

    # a design's own source (outside the runtime's include dir) is never cached
    design = tmp_path / "Vtop__ALL.cpp"
    design.write_text("int design() { return 2; }\n")
    assert _compile(cache, inc, design, tmp_path / "Vtop__ALL.o") == 0
    assert (tmp_path / "Vtop__ALL.o").is_file() and len(list(cache.iterdir())) == 2


def test_a_failed_compile_is_not_stored(tmp_path):
    inc, cache = tmp_path / "include", tmp_path / "cache"
    inc.mkdir()
    src = inc / "verilated.cpp"
    src.write_text("this is not C++\n")
    assert _compile(cache, inc, src, tmp_path / "verilated.o") != 0
    assert not cache.exists() or not list(cache.iterdir())
