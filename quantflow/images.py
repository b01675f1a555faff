"""Memory images + manifest (DESIGN §3.8) for MixPE, and the high-level
export/load API used by cosim.

An image directory holds, per memory tensor NAME in (act, code, scale, result):
  NAME.hex  $readmemh style: one word per line, `hex_digits` lowercase hex digits
            (fixed width, no prefix, no address markers), word 0 first
  NAME.npy  the unpacked integer tensor (act [M,K] int8, code [N,K] uint8,
            scale [N,G,2] uint8 holding (s2, z*s2), result [M,N] int32 = golden acc)
and side data as .npy only: s1 [N] fp16, s_a [M] float32, s2 [N,G] uint8,
z [N,G] uint8; plus manifest.json (format in docs/formats.md) with the sha256 of
every file. Directories are written to a temp dir beside the target and renamed
into place at the end, so a failed export leaves nothing behind. The writers and
readers every block's images share (write_image_dir, read_manifest, read_words,
read_npy, the QoQ image set of MixPE and LUT) live here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golden.formats import ACC_BITS, ACT_BITS, ACT_QMAX, QOQ_W8_QMAX, SCALE_BITS

from golden.mixpe_config import MixPEConfig
from golden.mixpe import mixpe_acc

from .errors import QuantflowError
from .pack import (pack_act_words, pack_code_words, pack_result_words, pack_scale_words,
                   unpack_act_words, unpack_code_words, unpack_result_words,
                   unpack_scale_words)
from .qoq import QoQWeights, quantize_act, quantize_qoq

__all__ = ["FORMAT", "FORMAT_VERSION", "MixPEImages", "export_mixpe", "write_mixpe_images",
           "load_mixpe", "read_manifest", "write_hex", "read_hex", "hex_digits"]

FORMAT = "quattro-mixpe-images"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_FIX = "re-run quantflow export"


def hex_digits(word_bits: int) -> int:
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


def write_hex(path: Path, words, word_bits: int) -> None:
    """One word per line, fixed width lowercase hex ($readmemh). `words`: Python
    ints or an integer numpy array (quantflow.pack_words_array: fastest)."""
    from .pack import _words_uint64
    d = hex_digits(word_bits)
    u = _words_uint64(words, word_bits)
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
    d = hex_digits(word_bits)
    out = _read_hex_fast(path, word_bits)
    if out is not None:
        if words is not None and len(out) != words:
            raise QuantflowError(f"{path}: {len(out)} words, manifest says {words}; {_FIX}")
        return out
    out = []
    with open(path, encoding="ascii") as f:
        for i, line in enumerate(f.read().splitlines()):
            if len(line) != d or line.lower() != line or any(
                    ch not in "0123456789abcdef" for ch in line):
                raise QuantflowError(f"{path}: line {i + 1} is not a {d}-digit lowercase "
                                     f"hex word; {_FIX}")
            w = int(line, 16)
            if w >> word_bits:
                raise QuantflowError(f"{path}: line {i + 1} exceeds {word_bits} bits; {_FIX}")
            out.append(w)
    if words is not None and len(out) != words:
        raise QuantflowError(f"{path}: {len(out)} words, manifest says {words}; {_FIX}")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir_atomically(outdir: Path, fill) -> None:
    """Call fill(tmpdir) on a fresh directory beside outdir, then rename it to
    outdir (replacing an earlier one). On any error the temp dir is removed and
    outdir is untouched."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        fill(tmp)
        if outdir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=outdir.parent))
            os.rmdir(old)
            os.replace(outdir, old)
            os.replace(tmp, outdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_dir_atomically(outdir: Path, fill) -> None:
    """replace_dir_atomically, refusing to replace anything but an image directory
    (or an empty one): a mistyped output path must not delete the user's files."""
    outdir = Path(outdir)
    if outdir.exists() and not (outdir / MANIFEST).is_file() and (
            not outdir.is_dir() or any(outdir.iterdir())):
        raise QuantflowError(f"refusing to replace {outdir}: it exists and is not a quantflow "
                             f"image directory; choose another output path or remove it")
    replace_dir_atomically(outdir, fill)


def write_image_dir(outdir, fill) -> dict:
    """Write an image directory atomically (every block's exporter and the model
    export use this): `fill(tmp)` writes the data files into the temporary
    directory and returns the manifest without checksums; the sha256 of every
    file (keyed by its path below the directory) is added and manifest.json
    written last, then the directory is renamed into place."""
    holder: list[dict] = []

    def _fill(tmp: Path) -> None:
        manifest = fill(tmp)
        manifest["sha256"] = {p.relative_to(tmp).as_posix(): _sha256(p)
                              for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        holder.append(manifest)

    _write_dir_atomically(Path(outdir), _fill)
    return holder[0]


def check_config(config, cls):
    """`config` itself when it is a `cls` (the block's configuration class)."""
    if not isinstance(config, cls):
        raise QuantflowError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return config


# ------------------------------------------------------ the QoQ image set (MixPE, LUT)
# MixPE and the LUT block read the same operands (QoQ weights q/s1/s2/z, per-token
# INT8 activations) and write the same files; only the word layouts differ.
def qoq_operands(weights: QoQWeights, a, s_a, K: int):
    """(a, s_a as float32, M, N) once a [M, K] and s_a [M] fit weights [N, K] and
    the configuration's K."""
    a = torch.as_tensor(a)
    s_a = torch.as_tensor(s_a).to(torch.float32)
    N, Kw = weights.shape
    if a.dim() != 2 or a.shape[1] != Kw or Kw != K:
        raise QuantflowError(f"a {list(a.shape)} and weights {[N, Kw]} must share "
                             f"K = config.K = {K}")
    M = a.shape[0]
    if tuple(s_a.shape) != (M,):
        raise QuantflowError(f"s_a must have shape [{M}], got {list(s_a.shape)}")
    return a, s_a, M, N


def write_side(tmp: Path, side: dict) -> dict:
    """Save each side tensor of {name: (array, meaning)} as name.npy; returns their
    manifest entries."""
    entries = {}
    for name, (arr, meaning) in side.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        entries[name] = dict(npy=f"{name}.npy", shape=list(arr.shape), dtype=str(arr.dtype),
                             meaning=meaning)
    return entries


def write_qoq_images(outdir, *, weights: QoQWeights, a, s_a, acc, words: dict, desc: dict,
                     manifest: dict) -> dict:
    """Write a QoQ image set: the memory images act/code/scale/result (.hex of
    `words`, .npy of the tensors they pack; `desc`: each one's layout fields) and
    the side tensors s1, s_a, s2, z. `manifest`: the block's own fields, to which
    `tensors` and `side` are added. Returns the manifest."""
    s2 = weights.s2.numpy().astype(np.uint8)
    z = weights.z.numpy().astype(np.uint8)
    zs2 = (weights.z * weights.s2).numpy().astype(np.uint8)
    arrays = {
        "act": a.numpy().astype(np.int8),
        "code": weights.q.numpy().astype(np.uint8),
        "scale": np.stack([s2, zs2], axis=-1),
        "result": acc.numpy().astype(np.int32),
    }
    side = {
        "s1": (weights.s1.numpy().astype(np.float16), "per-channel fp16 scale [N]"),
        "s_a": (s_a.numpy().astype(np.float32), "per-token float32 scale [M]"),
        "s2": (s2, "integer group scale [N, G]"),
        "z": (z, "integer zero point [N, G]"),
    }

    def fill(tmp: Path) -> dict:
        tensors = {}
        for name, d in desc.items():
            write_hex(tmp / f"{name}.hex", words[name], d["word_bits"])
            np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
            tensors[name] = dict(hex=f"{name}.hex", npy=f"{name}.npy",
                                 shape=list(arrays[name].shape),
                                 dtype=str(arrays[name].dtype), words=len(words[name]),
                                 hex_digits=hex_digits(d["word_bits"]), packing="lsb-first",
                                 **d)
        return {**manifest, "tensors": tensors, "side": write_side(tmp, side)}

    return write_image_dir(outdir, fill)


def write_mixpe_images(outdir, config: MixPEConfig, *, weights: QoQWeights, a, s_a) -> dict:
    """Pack already-quantized operands (weights from quantize_qoq, a/s_a from
    quantize_act), compute golden's expected acc, and write the image directory.
    Returns the manifest dict."""
    c = check_config(config, MixPEConfig)
    if not isinstance(weights, QoQWeights):
        raise QuantflowError("weights must be a QoQWeights (quantflow.quantize_qoq)")
    if (weights.bits, weights.group) != (c.bits, c.group):
        raise QuantflowError(f"weights were quantized with bits={weights.bits}, "
                             f"group={weights.group} but config has bits={c.bits}, "
                             f"group={c.group}; quantize with the config's values")
    a, s_a, M, N = qoq_operands(weights, a, s_a, c.K)

    # packing first: it raises the tiling errors (M % rows, N % cols) before any I/O
    words = {
        "act": pack_act_words(a, c),
        "code": pack_code_words(weights.q, c),
        "scale": pack_scale_words(weights.s2, weights.z, c),
    }
    acc = mixpe_acc(a, weights.q, weights.s2, weights.z, c)
    words["result"] = pack_result_words(acc, c)
    desc = {
        "act": dict(elem_bits=ACT_BITS, signed=True, elems_per_word=c.rows,
                    word_bits=c.act_word_bits, layout="mixpe_act",
                    order=f"word[tm*K + k] holds a[tm*rows + r, k] in bits [8r, 8r+8)"),
        "code": dict(elem_bits=c.bits, signed=False, elems_per_word=c.cols,
                     word_bits=c.code_word_bits, layout="mixpe_code",
                     order=f"word[tn*K + k] holds q[tn*cols + c, k] in bits "
                           f"[{c.bits}c, {c.bits}c+{c.bits})"),
        "scale": dict(elem_bits=2 * SCALE_BITS, signed=False, elems_per_word=c.cols,
                      word_bits=c.scale_word_bits, layout="mixpe_scale",
                      fields={"s2": [0, SCALE_BITS], "zs2": [SCALE_BITS, 2 * SCALE_BITS]},
                      order="word[tn*G + j] holds (s2 | zs2 << 8)[tn*cols + c, j] in bits "
                            "[16c, 16c+16); npy is [N, G, 2] = (s2, zs2)"),
        "result": dict(elem_bits=ACC_BITS, signed=True, elems_per_word=c.cols,
                       word_bits=c.result_word_bits, layout="mixpe_result",
                       order="word[(tn*m_tiles + tm)*rows + m] holds acc[tm*rows + m, "
                             "tn*cols + c] in bits [32c, 32c+32); golden expected values"),
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "block": "mixpe",
        "config": c.as_dict(),
        "config_name": c.name(),
        "dims": {"M": M, "N": N, "K": c.K, "groups": c.groups, "m_tiles": M // c.rows,
                 "n_tiles": N // c.cols},
        "quantization": {
            "weights": {"scheme": "qoq", "bits": c.bits, "group": c.group,
                        "w8_qmax": QOQ_W8_QMAX, "s1_dtype": "float16",
                        "scale_bits": SCALE_BITS, "rounding": "half-even"},
            "activations": {"scheme": "per-token-symmetric-int8", "qmax": ACT_QMAX,
                            "s_a_dtype": "float32", "rounding": "half-even"},
        },
    }
    return write_qoq_images(outdir, weights=weights, a=a, s_a=s_a, acc=acc, words=words,
                            desc=desc, manifest=manifest)


def export_mixpe(outdir, config: MixPEConfig, W, X) -> dict:
    """Quantize float weights W [N, K] (QoQ with config.bits/config.group) and float
    activations X [M, K] (per-token INT8), pack, and write the image directory.
    N must be a multiple of config.cols, M of config.rows. Returns the manifest."""
    c = check_config(config, MixPEConfig)
    qw = quantize_qoq(W, bits=c.bits, group=c.group)
    if qw.shape[1] != c.K:
        raise QuantflowError(f"W has K={qw.shape[1]} but config.K={c.K}; build the config "
                             f"with K={qw.shape[1]}")
    a, s_a = quantize_act(X)
    return write_mixpe_images(outdir, c, weights=qw, a=a, s_a=s_a)


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True, kw_only=True)
class QoQImages:
    """A verified QoQ image set (MixPEImages, quantflow.lut.LUTImages). Tensors as
    torch: a int8 [M,K]; q, s2, z int32; s1 fp16 [N]; s_a float32 [M]; acc int32
    [M,N] (golden's expected result). *_words: the memory words (Python ints)
    exactly as in the .hex files."""

    path: Path
    config: object
    manifest: dict
    M: int
    N: int
    a: torch.Tensor
    q: torch.Tensor
    s2: torch.Tensor
    z: torch.Tensor
    s1: torch.Tensor
    s_a: torch.Tensor
    acc: torch.Tensor
    act_words: tuple[int, ...]
    code_words: tuple[int, ...]
    scale_words: tuple[int, ...]
    result_words: tuple[int, ...]

    @property
    def m_tiles(self) -> int:
        return self.M // self.config.rows

    @property
    def n_tiles(self) -> int:
        return self.N // self.config.cols

    @property
    def macs(self) -> int:
        return self.M * self.N * self.config.K


@dataclass(frozen=True, kw_only=True)
class MixPEImages(QoQImages):
    """A verified MixPE image directory (fields: QoQImages)."""

    config: MixPEConfig

    @property
    def weights(self) -> QoQWeights:
        return QoQWeights(q=self.q, s1=self.s1, s2=self.s2, z=self.z,
                          bits=self.config.bits, group=self.config.group)


def verify_checksums(outdir: Path, sums: dict, fix: str) -> None:
    """Every file of `sums` ({path below outdir: sha256}) exists and is unchanged;
    `fix`: what the error tells the user to do."""
    for name, digest in sorted(sums.items()):
        p = outdir / name
        if not p.is_file():
            raise QuantflowError(f"{p} is missing; {fix}")
        if _sha256(p) != digest:
            raise QuantflowError(f"{p} does not match its sha256 in {MANIFEST} (the file "
                                 f"changed after export); {fix}")


def read_manifest(outdir, *, fmt: str = FORMAT, version: int = FORMAT_VERSION) -> dict:
    """Read manifest.json and verify the sha256 of every file it lists. `fmt` and
    `version`: the image format expected (other blocks' images name their own)."""
    outdir = Path(outdir)
    mpath = outdir / MANIFEST
    if not mpath.is_file():
        raise QuantflowError(f"{mpath} is missing: {outdir} is not a quantflow image "
                             f"directory; {_FIX}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise QuantflowError(f"{mpath} is not valid JSON ({e}); {_FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise QuantflowError(f"{mpath} is not a {fmt} manifest; {_FIX}")
    if manifest.get("format_version") != version:
        raise QuantflowError(f"{mpath} has format_version {manifest.get('format_version')}, "
                             f"this quantflow reads {version}; {_FIX}")
    try:
        sums = manifest["sha256"]
        needed = {t[k] for t in manifest["tensors"].values() for k in ("hex", "npy")}
        needed |= {t["npy"] for t in manifest["side"].values()}
    except (KeyError, TypeError, AttributeError):
        raise QuantflowError(f"{mpath} lacks required fields; {_FIX}") from None
    for name in sorted(needed - set(sums)):
        raise QuantflowError(f"{mpath} has no checksum for {name}; {_FIX}")
    verify_checksums(outdir, sums, _FIX)
    return manifest


def read_manifest_for(outdir: Path, config, *, fmt: str = FORMAT, version: int = FORMAT_VERSION,
                      fix: str = _FIX) -> dict:
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


def _agree(outdir: Path, fname: str, ok: bool) -> None:
    if not ok:
        raise QuantflowError(f"{outdir / fname} disagrees with the other image files; {_FIX}")


def check_qoq_images(outdir: Path, words: dict, arrays: dict, side: dict, *, act, code,
                     scale, result) -> None:
    """Every memory image's words, decoded by the block's unpacker (act, code,
    result: words -> array; scale: words -> (s2, zs2)), equal its .npy, and the
    side s2 and z agree with the scale words; the first file that disagrees is
    named."""
    _agree(outdir, "act.hex", np.array_equal(act(words["act"]), arrays["act"]))
    _agree(outdir, "code.hex", np.array_equal(code(words["code"]), arrays["code"]))
    s2w, zs2w = scale(words["scale"])
    _agree(outdir, "scale.hex", np.array_equal(np.stack([s2w, zs2w], -1), arrays["scale"]))
    _agree(outdir, "s2.npy", np.array_equal(side["s2"], s2w))
    _agree(outdir, "z.npy", np.array_equal(side["z"].astype(np.int64) * s2w, zs2w))
    _agree(outdir, "result.hex", np.array_equal(result(words["result"]), arrays["result"]))


def qoq_fields(words: dict, arrays: dict, side: dict) -> dict:
    """QoQImages' tensor and word fields from checked files."""
    return dict(
        a=torch.from_numpy(arrays["act"].astype(np.int8)),
        q=torch.from_numpy(arrays["code"].astype(np.int32)),
        s2=torch.from_numpy(side["s2"].astype(np.int32)),
        z=torch.from_numpy(side["z"].astype(np.int32)),
        s1=torch.from_numpy(side["s1"]),
        s_a=torch.from_numpy(side["s_a"].astype(np.float32)),
        acc=torch.from_numpy(arrays["result"].astype(np.int32)),
        act_words=tuple(words["act"]), code_words=tuple(words["code"]),
        scale_words=tuple(words["scale"]), result_words=tuple(words["result"]))


def load_mixpe(outdir, config: MixPEConfig) -> MixPEImages:
    """Read and verify an image directory written for `config`: checksums, config,
    hex widths/word counts, and that every .hex agrees with its .npy."""
    c = check_config(config, MixPEConfig)
    outdir = Path(outdir)
    man = read_manifest_for(outdir, c)
    dims = man["dims"]
    M, N = int(dims["M"]), int(dims["N"])
    words = read_words(outdir, man)
    arrays = read_npy(outdir, man["tensors"])
    side = read_npy(outdir, man["side"])
    try:
        check_qoq_images(outdir, words, arrays, side,
                         act=lambda w: unpack_act_words(w, c),
                         code=lambda w: unpack_code_words(w, c),
                         scale=lambda w: unpack_scale_words(w, c),
                         result=lambda w: unpack_result_words(w, c, M=M, N=N))
        _agree(outdir, "s1.npy", side["s1"].shape == (N,) and side["s1"].dtype == np.float16)
        _agree(outdir, "s_a.npy", side["s_a"].shape == (M,))
    except QuantflowError as e:
        if _FIX in str(e):
            raise
        raise QuantflowError(f"{outdir}: {e}; {_FIX}") from None
    return MixPEImages(path=outdir, config=c, manifest=man, M=M, N=N,
                       **qoq_fields(words, arrays, side))
