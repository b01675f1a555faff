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
into place at the end, so a failed export leaves nothing behind.
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

from golden.config import ACC_BITS, ACT_BITS, ACT_QMAX, QOQ_W8_QMAX, SCALE_BITS, MixPEConfig
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


def _write_dir_atomically(outdir: Path, fill) -> None:
    """Call fill(tmpdir), then rename tmpdir to outdir (replacing an earlier image
    directory). On any error the temp dir is removed and outdir is untouched."""
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    if outdir.exists() and not (outdir / MANIFEST).is_file() and (
            not outdir.is_dir() or any(outdir.iterdir())):
        raise QuantflowError(f"refusing to replace {outdir}: it exists and is not a quantflow "
                             f"image directory; choose another output path or remove it")
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


def write_image_dir(outdir, fill) -> dict:
    """Write an image directory atomically (every block's exporter uses this):
    `fill(tmp)` writes the data files into the temporary directory and returns
    the manifest without checksums; the sha256 of every file is added and
    manifest.json written last, then the directory is renamed into place."""
    holder: list[dict] = []

    def _fill(tmp: Path) -> None:
        manifest = fill(tmp)
        manifest["sha256"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        holder.append(manifest)

    _write_dir_atomically(Path(outdir), _fill)
    return holder[0]


def _check_config(config) -> MixPEConfig:
    if not isinstance(config, MixPEConfig):
        raise QuantflowError(f"config must be a MixPEConfig, got {type(config).__name__}")
    return config


def write_mixpe_images(outdir, config: MixPEConfig, *, weights: QoQWeights, a, s_a) -> dict:
    """Pack already-quantized operands (weights from quantize_qoq, a/s_a from
    quantize_act), compute golden's expected acc, and write the image directory.
    Returns the manifest dict."""
    c = _check_config(config)
    if not isinstance(weights, QoQWeights):
        raise QuantflowError("weights must be a QoQWeights (quantflow.quantize_qoq)")
    if (weights.bits, weights.group) != (c.bits, c.group):
        raise QuantflowError(f"weights were quantized with bits={weights.bits}, "
                             f"group={weights.group} but config has bits={c.bits}, "
                             f"group={c.group}; quantize with the config's values")
    a = torch.as_tensor(a)
    s_a = torch.as_tensor(s_a).to(torch.float32)
    N, K = weights.shape
    if a.dim() != 2 or a.shape[1] != K or K != c.K:
        raise QuantflowError(f"a {list(a.shape)} and weights {[N, K]} must share "
                             f"K = config.K = {c.K}")
    M = a.shape[0]
    if tuple(s_a.shape) != (M,):
        raise QuantflowError(f"s_a must have shape [{M}], got {list(s_a.shape)}")

    # packing first: it raises the tiling errors (M % rows, N % cols) before any I/O
    words = {
        "act": pack_act_words(a, c),
        "code": pack_code_words(weights.q, c),
        "scale": pack_scale_words(weights.s2, weights.z, c),
    }
    acc = mixpe_acc(a, weights.q, weights.s2, weights.z, c)
    words["result"] = pack_result_words(acc, c)
    s2 = weights.s2.numpy().astype(np.uint8)
    z = weights.z.numpy().astype(np.uint8)
    zs2 = (weights.z * weights.s2).numpy().astype(np.uint8)
    arrays = {
        "act": a.numpy().astype(np.int8),
        "code": weights.q.numpy().astype(np.uint8),
        "scale": np.stack([s2, zs2], axis=-1),
        "result": acc.numpy().astype(np.int32),
    }
    mt, nt = M // c.rows, N // c.cols
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
        sides = {}
        for name, (arr, meaning) in side.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
            sides[name] = dict(npy=f"{name}.npy", shape=list(arr.shape),
                               dtype=str(arr.dtype), meaning=meaning)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "block": "mixpe",
            "config": c.as_dict(),
            "config_name": c.name(),
            "dims": {"M": M, "N": N, "K": K, "groups": c.groups, "m_tiles": mt,
                     "n_tiles": nt},
            "quantization": {
                "weights": {"scheme": "qoq", "bits": c.bits, "group": c.group,
                            "w8_qmax": QOQ_W8_QMAX, "s1_dtype": "float16",
                            "scale_bits": SCALE_BITS, "rounding": "half-even"},
                "activations": {"scheme": "per-token-symmetric-int8", "qmax": ACT_QMAX,
                                "s_a_dtype": "float32", "rounding": "half-even"},
            },
            "tensors": tensors,
            "side": sides,
        }
        return manifest

    return write_image_dir(outdir, fill)


def export_mixpe(outdir, config: MixPEConfig, W, X) -> dict:
    """Quantize float weights W [N, K] (QoQ with config.bits/config.group) and float
    activations X [M, K] (per-token INT8), pack, and write the image directory.
    N must be a multiple of config.cols, M of config.rows. Returns the manifest."""
    c = _check_config(config)
    qw = quantize_qoq(W, bits=c.bits, group=c.group)
    if qw.shape[1] != c.K:
        raise QuantflowError(f"W has K={qw.shape[1]} but config.K={c.K}; build the config "
                             f"with K={qw.shape[1]}")
    a, s_a = quantize_act(X)
    return write_mixpe_images(outdir, c, weights=qw, a=a, s_a=s_a)


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True, kw_only=True)
class MixPEImages:
    """A verified image directory. Tensors as torch: a int8 [M,K]; q, s2, z int32;
    s1 fp16 [N]; s_a float32 [M]; acc int32 [M,N] (golden's expected result).
    *_words: the memory words (Python ints) exactly as in the .hex files."""

    path: Path
    config: MixPEConfig
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
    def weights(self) -> QoQWeights:
        return QoQWeights(q=self.q, s1=self.s1, s2=self.s2, z=self.z,
                          bits=self.config.bits, group=self.config.group)


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
    for name, digest in sorted(sums.items()):
        p = outdir / name
        if not p.is_file():
            raise QuantflowError(f"{p} is missing; {_FIX}")
        if _sha256(p) != digest:
            raise QuantflowError(f"{p} does not match its sha256 in {MANIFEST} (the file "
                                 f"changed after export); {_FIX}")
    return manifest


def load_mixpe(outdir, config: MixPEConfig) -> MixPEImages:
    """Read and verify an image directory written for `config`: checksums, config,
    hex widths/word counts, and that every .hex agrees with its .npy."""
    c = _check_config(config)
    outdir = Path(outdir)
    man = read_manifest(outdir)
    mpath = outdir / MANIFEST
    if man.get("config") != c.as_dict():
        raise QuantflowError(f"{mpath} was written for {man.get('config_name')} "
                             f"({man.get('config')}), expected {c.name()}; {_FIX} with "
                             f"this configuration")
    dims = man["dims"]
    M, N = int(dims["M"]), int(dims["N"])
    words, arrays = {}, {}
    for name, t in man["tensors"].items():
        words[name] = read_hex(outdir / t["hex"], int(t["word_bits"]), int(t["words"]))
        arrays[name] = np.load(outdir / t["npy"], allow_pickle=False)
    side = {k: np.load(outdir / t["npy"], allow_pickle=False) for k, t in man["side"].items()}

    def agree(fname: str, ok: bool) -> None:
        if not ok:
            raise QuantflowError(f"{outdir / fname} disagrees with the other image files; "
                                 f"{_FIX}")

    try:
        agree("act.hex", np.array_equal(unpack_act_words(words["act"], c), arrays["act"]))
        agree("code.hex", np.array_equal(unpack_code_words(words["code"], c), arrays["code"]))
        s2w, zs2w = unpack_scale_words(words["scale"], c)
        agree("scale.hex", np.array_equal(np.stack([s2w, zs2w], -1), arrays["scale"]))
        agree("s2.npy", np.array_equal(side["s2"], s2w))
        agree("z.npy", np.array_equal(side["z"].astype(np.int64) * s2w, zs2w))
        agree("result.hex", np.array_equal(
            unpack_result_words(words["result"], c, M=M, N=N), arrays["result"]))
        agree("s1.npy", side["s1"].shape == (N,) and side["s1"].dtype == np.float16)
        agree("s_a.npy", side["s_a"].shape == (M,))
    except QuantflowError as e:
        if _FIX in str(e):
            raise
        raise QuantflowError(f"{outdir}: {e}; {_FIX}") from None
    return MixPEImages(
        path=outdir, config=c, manifest=man, M=M, N=N,
        a=torch.from_numpy(arrays["act"].astype(np.int8)),
        q=torch.from_numpy(arrays["code"].astype(np.int32)),
        s2=torch.from_numpy(side["s2"].astype(np.int32)),
        z=torch.from_numpy(side["z"].astype(np.int32)),
        s1=torch.from_numpy(side["s1"]),
        s_a=torch.from_numpy(side["s_a"].astype(np.float32)),
        acc=torch.from_numpy(arrays["result"].astype(np.int32)),
        act_words=tuple(words["act"]), code_words=tuple(words["code"]),
        scale_words=tuple(words["scale"]), result_words=tuple(words["result"]))
