"""Image directories (DESIGN §3.8), the part every block's images share.

A directory holds, per memory image NAME, NAME.hex ($readmemh style: one word
per line, `hex_digits(word_bits)` lowercase hex digits, no prefix or address
markers, word 0 first) and NAME.npy (the tensor the words pack), side tensors
as .npy only, and manifest.json (docs/formats.md) with the sha256 of every
file. Directories are written beside the target and renamed into place at
the end (quattro_fs.replace_dir), so a failed export leaves nothing behind.

Each block names its own manifest `format` and `format_version` (no default
here): quantflow.mixpe, .lut, .sparse_dsp, .kv4_attention.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from golden.lut_config import LUTConfig
from golden.mixpe_config import MixPEConfig
from golden.sparse_dsp_config import SparseDSPConfig

from quattro_fs import replace_dir, sha256_file

from .errors import QuantflowError
from .pack import words_uint64

__all__ = ["MANIFEST", "FIX", "hex_digits", "write_hex", "read_hex", "write_image_dir",
           "write_side", "verify_checksums", "read_manifest", "read_manifest_for",
           "read_words", "read_npy"]

MANIFEST = "manifest.json"
#: What an error about a damaged or stale image directory tells the user to do.
FIX = "re-run quantflow export"


def hex_digits(word_bits: int) -> int:
    """Hex digits of one word_bits-wide word in a .hex file."""
    return (word_bits + 3) // 4


_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)  # ASCII byte -> nibble, 255: not lowercase hex
_HEX_VALUE[_HEX_CHARS] = np.arange(16, dtype=np.uint8)
_NL = ord("\n")


def _hex_text(u: np.ndarray, d: int) -> bytes:
    """uint64 words -> d lowercase hex digits + newline each, as one bytes object
    (nibbles by shifts, ASCII by table lookup: no Python object per word)."""
    shifts = np.arange(4 * (d - 1), -1, -4, dtype=np.uint64)
    nib = ((u[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    out = np.empty((u.size, d + 1), dtype=np.uint8)
    out[:, :d] = _HEX_CHARS[nib]
    out[:, d] = _NL
    return out.tobytes()


def write_hex(path: Path, words: Iterable[int] | np.ndarray, word_bits: int) -> None:
    """One word per line, fixed width lowercase hex ($readmemh). `words`: Python
    ints or an integer numpy array (quantflow.pack.pack_words_array: fastest)."""
    d = hex_digits(word_bits)
    u = words_uint64(words, word_bits)
    if u is not None and d <= 16:
        text = _hex_text(u, d)
    else:  # words wider than 64 bits, or a word that does not fit: checked one by one
        lines = []
        for w in (words.tolist() if isinstance(words, np.ndarray) else words):
            if w < 0 or w >> word_bits:
                raise QuantflowError(f"word {w:#x} does not fit {word_bits} bits")
            lines.append(f"{w:0{d}x}\n")
        text = "".join(lines).encode("ascii")
    with open(path, "wb") as f:
        f.write(text)


def _read_hex_fast(path: Path, word_bits: int) -> list[int] | None:
    """A well-formed file of <= 64-bit words, decoded with numpy; None when any
    line is irregular (read_hex's line-by-line reader then names the problem)."""
    d = hex_digits(word_bits)
    if d > 16:
        return None
    data = Path(path).read_bytes()
    if not data or data[-1] != _NL or len(data) % (d + 1):
        return None
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, d + 1)
    if not bool((rows[:, d] == _NL).all()):
        return None
    nib = _HEX_VALUE[rows[:, :d]]
    if bool((nib == 255).any()):
        return None
    u = np.zeros(rows.shape[0], dtype=np.uint64)
    for i in range(d):
        u = (u << np.uint64(4)) | nib[:, i].astype(np.uint64)
    if word_bits < 64 and bool((u >> np.uint64(word_bits)).any()):
        return None
    return u.tolist()


def read_hex(path: Path, word_bits: int, words: int | None = None) -> list[int]:
    """The words of a .hex file in write_hex's format, checked line by line; `words`,
    when given, is the count the manifest says it holds."""
    d = hex_digits(word_bits)
    out = _read_hex_fast(path, word_bits)
    if out is not None:
        if words is not None and len(out) != words:
            raise QuantflowError(f"{path}: {len(out)} words, manifest says {words}; {FIX}")
        return out
    out = []
    with open(path, encoding="ascii") as f:
        for i, line in enumerate(f.read().splitlines()):
            if len(line) != d or line.lower() != line or any(
                    ch not in "0123456789abcdef" for ch in line):
                raise QuantflowError(f"{path}: line {i + 1} is not a {d}-digit lowercase "
                                     f"hex word; {FIX}")
            w = int(line, 16)
            if w >> word_bits:
                raise QuantflowError(f"{path}: line {i + 1} exceeds {word_bits} bits; {FIX}")
            out.append(w)
    if words is not None and len(out) != words:
        raise QuantflowError(f"{path}: {len(out)} words, manifest says {words}; {FIX}")
    return out


# --------------------------------------------------------------------------- writing
def write_image_dir(outdir: Path | str, fill: Callable[[Path], dict]) -> dict:
    """Write an image directory atomically (every block's exporter and the model
    export use this): `fill(tmp)` writes the data files into the temporary
    directory and returns the manifest without checksums; the sha256 of every
    file (keyed by its path below the directory) is added and manifest.json
    written last, then the directory is renamed into place. Refuses to replace
    anything but an image directory (or an empty one): a mistyped output path
    must not delete the user's files."""
    outdir = Path(outdir)
    if outdir.exists() and not (outdir / MANIFEST).is_file() and (
            not outdir.is_dir() or any(outdir.iterdir())):
        raise QuantflowError(f"refusing to replace {outdir}: it exists and is not a quantflow "
                             f"image directory; choose another output path or remove it")

    def _fill(tmp: Path) -> dict:
        manifest = fill(tmp)
        manifest["sha256"] = {p.relative_to(tmp).as_posix(): sha256_file(p)
                              for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        return manifest

    return replace_dir(outdir, _fill)


def write_side(tmp: Path, side: dict) -> dict:
    """Save each side tensor of {name: (array, meaning)} as name.npy; returns their
    manifest entries."""
    entries = {}
    for name, (arr, meaning) in side.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        entries[name] = dict(npy=f"{name}.npy", shape=list(arr.shape), dtype=str(arr.dtype),
                             meaning=meaning)
    return entries


# --------------------------------------------------------------------------- reading
def verify_checksums(outdir: Path, sums: dict, fix: str) -> None:
    """Every file of `sums` ({path below outdir: sha256}) exists and is unchanged;
    `fix`: what the error tells the user to do."""
    for name, digest in sorted(sums.items()):
        p = outdir / name
        if not p.is_file():
            raise QuantflowError(f"{p} is missing; {fix}")
        if sha256_file(p) != digest:
            raise QuantflowError(f"{p} does not match its sha256 in {MANIFEST} (the file "
                                 f"changed after export); {fix}")


def read_manifest(outdir: Path | str, *, fmt: str, version: int) -> dict:
    """Read manifest.json and verify the sha256 of every file it lists. `fmt` and
    `version`: the block's image format (its manifest's format, format_version)."""
    outdir = Path(outdir)
    mpath = outdir / MANIFEST
    if not mpath.is_file():
        raise QuantflowError(f"{mpath} is missing: {outdir} is not a quantflow image "
                             f"directory; {FIX}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise QuantflowError(f"{mpath} is not valid JSON ({e}); {FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise QuantflowError(f"{mpath} is not a {fmt} manifest; {FIX}")
    if manifest.get("format_version") != version:
        raise QuantflowError(f"{mpath} has format_version {manifest.get('format_version')}, "
                             f"this quantflow reads {version}; {FIX}")
    try:
        sums = manifest["sha256"]
        needed = {t[k] for t in manifest["tensors"].values() for k in ("hex", "npy")}
        needed |= {t["npy"] for t in manifest["side"].values()}
    except (KeyError, TypeError, AttributeError):
        raise QuantflowError(f"{mpath} lacks required fields; {FIX}") from None
    for name in sorted(needed - set(sums)):
        raise QuantflowError(f"{mpath} has no checksum for {name}; {FIX}")
    verify_checksums(outdir, sums, FIX)
    return manifest


def read_manifest_for(outdir: Path, config: MixPEConfig | LUTConfig | SparseDSPConfig, *, fmt: str,
                      version: int, fix: str = FIX) -> dict:
    """read_manifest, and the images must have been written for `config`."""
    man = read_manifest(outdir, fmt=fmt, version=version)
    if man.get("config") != config.as_dict():
        raise QuantflowError(f"{outdir / MANIFEST} was written for {man.get('config_name')} "
                             f"({man.get('config')}), expected {config.name()}; {fix} with "
                             f"this configuration")
    return man


def read_words(outdir: Path, manifest: dict) -> dict[str, list[int]]:
    """The words of every memory image of `manifest` (its .hex), held to the
    manifest's word width and count."""
    return {name: read_hex(outdir / t["hex"], int(t["word_bits"]), int(t["words"]))
            for name, t in manifest["tensors"].items()}


def read_npy(outdir: Path, entries: dict) -> dict[str, np.ndarray]:
    """The arrays of manifest entries ({name: {"npy": file, ...}})."""
    return {name: np.load(outdir / t["npy"], allow_pickle=False) for name, t in entries.items()}
