"""Python side of the AXI4 memory model cosim/axi_mem.v (`quattro_axi_mem`):
its Verilog text, the preload file it reads with $readmemh (`+mem_init=`), the
dump it writes with $writememh (`+mem_dump=`) and its write log (`+mem_log=`).

Files hold one hex word of `beat_bytes` bytes per line, most significant digit
first, little-endian in memory: byte 0 of memory is the lowest 8 bits of line 0.
Conversions are numpy-vectorised (a whole image at a time, no per-word Python),
so megabyte preloads cost milliseconds.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from golden.validate import check_int

from quattro_fs import atomic_write_bytes

__all__ = ["VERILOG_PATH", "TOPLEVEL", "verilog_text", "plusargs", "write_init", "read_dump",
           "read_log"]

VERILOG_PATH = Path(__file__).resolve().parent / "axi_mem.v"
TOPLEVEL = "quattro_axi_mem"


def verilog_text() -> str:
    """The model's Verilog, to concatenate with a design's generated text."""
    return VERILOG_PATH.read_text()


def plusargs(*, init: Path | str | None = None, log: Path | str | None = None,
             dump: Path | str | None = None, gap: int | None = None) -> list[str]:
    """The model's plusargs for the files given (None: that feature off) and the read
    beat gap of this run (None: the GAP parameter)."""
    out = [] if gap is None else [f"+mem_gap={check_int('gap', gap, 0)}"]
    for name, path in (("mem_init", init), ("mem_log", log), ("mem_dump", dump)):
        if path is not None:
            path = str(Path(path).resolve())
            if any(c.isspace() for c in path):
                raise ValueError(f"+{name} path {path!r} contains white space, which "
                                 f"$value$plusargs cuts off; use a path without spaces")
            out.append(f"+{name}={path}")
    return out


def _check_beat(beat_bytes: int) -> None:
    if not isinstance(beat_bytes, int) or beat_bytes < 1:
        raise ValueError(f"beat_bytes must be an int >= 1 (the model's DATA_BYTES), "
                         f"got {beat_bytes!r}")


def write_init(path: Path | str, data: bytes | bytearray | np.ndarray, beat_bytes: int, *,
               mem_bytes: int | None = None) -> Path:
    """Write `data` (bytes, bytearray or a numpy uint8 array) as the model's
    `+mem_init` file, the last word padded with zero bytes. `mem_bytes` (the
    model's MEM_BYTES), when given, is checked: $readmemh cannot load more."""
    _check_beat(beat_bytes)
    raw = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if mem_bytes is not None and raw.size > mem_bytes:
        raise ValueError(f"{raw.size} bytes do not fit a memory of MEM_BYTES={mem_bytes}; "
                         f"raise the model's MEM_BYTES or load less")
    words = -(-raw.size // beat_bytes)
    padded = np.zeros(words * beat_bytes, dtype=np.uint8)
    padded[:raw.size] = raw
    # Each word printed most significant byte first: reverse the bytes of every
    # word, hex the whole image at once, then cut it into lines.
    be = padded.reshape(words, beat_bytes)[:, ::-1]
    digits = np.frombuffer(be.tobytes().hex().encode("ascii"), dtype=np.uint8)
    lines = np.empty((words, 2 * beat_bytes + 1), dtype=np.uint8)
    lines[:, :-1] = digits.reshape(words, 2 * beat_bytes)
    lines[:, -1] = ord("\n")
    path = Path(path)
    atomic_write_bytes(path, lines.tobytes())
    return path


_COMMENT = re.compile(r"//[^\n]*")


def _hex_words(text: str, beat_bytes: int, what: str) -> np.ndarray:
    """Words of a $writememh file as a (words, beat_bytes) uint8 array, memory
    order. `//` comments and `@address` marks are allowed, as long as the words
    run contiguously from address 0 (what $writememh writes of a whole memory).
    Verilator and Icarus write every word at full width: then the conversion is
    one bytes.fromhex of the whole file."""
    tokens = _COMMENT.sub("", text).split()
    words = [t for t in tokens if not t.startswith("@")]
    marks = [t for t in tokens if t.startswith("@")]
    digits = 2 * beat_bytes
    if marks:
        # Contiguous from 0: every mark names the count of words before it.
        pos = 0
        for t in tokens:
            if t.startswith("@"):
                if int(t[1:], 16) != pos:
                    raise ValueError(f"{what}: {t} skips from word {pos}; expected a "
                                     f"contiguous dump from address 0")
            else:
                pos += 1
    joined = "".join(words)
    if len(joined) != digits * len(words):
        wide = [w for w in words if len(w) > digits]
        if wide:
            raise ValueError(f"{what}: word {wide[0]!r} is wider than {beat_bytes} bytes; "
                             f"pass the model's DATA_BYTES as beat_bytes")
        joined = "".join(w.rjust(digits, "0") for w in words)
    try:
        raw = np.frombuffer(bytes.fromhex(joined), dtype=np.uint8)
    except ValueError:
        raise ValueError(f"{what}: not a hex dump (x or z bits in the memory?)") from None
    return raw.reshape(len(words), beat_bytes)[:, ::-1]


def read_dump(path: Path | str, beat_bytes: int) -> bytearray:
    """The memory image a `+mem_dump` file holds (the inverse of write_init)."""
    _check_beat(beat_bytes)
    path = Path(path)
    words = _hex_words(path.read_text(), beat_bytes, str(path))
    return bytearray(words.tobytes())


def read_log(path: Path | str, beat_bytes: int) -> list[tuple[int, bytes, int]]:
    """The `+mem_log` lines as (byte address, beat_bytes data bytes in memory
    order, strb), one per accepted W beat, in order."""
    _check_beat(beat_bytes)
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines()):
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path} line {n + 1}: {line!r} is not '<addr> <data> <strb>'")
        addr, data, strb = (int(p, 16) for p in parts)
        out.append((addr, data.to_bytes(beat_bytes, "little"), strb))
    return out
