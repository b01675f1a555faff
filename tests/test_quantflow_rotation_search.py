"""The rotation search: one quantization per draw, measured on calibration text only."""
from __future__ import annotations

import json

import pytest

from quantflow.cli import main
from quantflow.errors import QuantflowError
from quantflow.models.loaders import LoadedModel
from quantflow.rotation_search import search_rotation, with_rotation_seed
from quantflow.schemes import QuantScheme, RotationScheme, get_scheme
from quantflow.synthetic import random_llama, small_llama_config

from helpers.real_model import smollm2


@pytest.fixture(scope="module")
def tiny_lm():
    """A random Llama over SmolLM2's vocabulary (so its tokenizer encodes the text),
    hidden 64: one W4 group per row, a Sylvester Hadamard of order 64."""
    tok = smollm2().tokenizer
    cfg = small_llama_config(hidden=64, intermediate=128, vocab=tok.get_vocab_size())
    return LoadedModel(name="tiny", arch="llama", model=random_llama(cfg, seed=3),
                       tokenizer=tok)


def test_search_measures_every_draw_and_picks_the_lowest(tiny_lm, tmp_path):
    rep = search_rotation(tiny_lm, "w4-qoq-g64-rot", seeds=3, windows=2, length=32,
                          calib_samples=2, calib_length=32, out=tmp_path, progress=False,
                          log=lambda _: None)
    assert [r["seed"] for r in rep["runs"]] == [None, 0, 1, 2]
    ppl = {r["seed"]: r["ppl"] for r in rep["runs"]}
    # each draw is a different rotation, so the W4 rounding and the perplexity differ
    assert len(set(ppl.values())) == 4
    assert rep["best_seed"] == min((s for s in ppl if s is not None), key=ppl.get)
    assert rep["text"]["name"] == "plays-calib" and rep["rotation"]["kind"] == "random-hadamard"
    on_disk = json.loads((tmp_path / "rotation-search.json").read_text())
    assert on_disk["best_seed"] == rep["best_seed"] and on_disk["runs"] == rep["runs"]


def test_with_rotation_seed():
    s = get_scheme("w4a8kv4-g64")
    assert with_rotation_seed(s, 5).rotation.seed == 5
    assert with_rotation_seed(s, None).rotation is None
    plain = get_scheme("w4-qoq-g64")           # no rotation: a randomised Hadamard is drawn
    assert with_rotation_seed(plain, 2).rotation.kind == "random-hadamard"


@pytest.mark.parametrize("kw, msg", [
    ({"text": "hamlet"}, "reserved for eval"),
    ({"seeds": 0}, "seeds must be a positive number"),
    ({"text": "no-such-text"}, "unknown text"),
    ({"scheme": QuantScheme(name="h", rotation=RotationScheme(kind="hadamard"))},
     "no random draw"),
])
def test_bad_search_requests(tiny_lm, tmp_path, kw, msg):
    kw = {"scheme": "w4-qoq-g64-rot", **kw}
    with pytest.raises(QuantflowError, match=msg):
        search_rotation(tiny_lm, kw.pop("scheme"), out=tmp_path, progress=False,
                        log=lambda _: None, **kw)
    assert not (tmp_path / "rotation-search.json").exists()


def test_cli_refuses_the_evaluation_text(capsys):
    """The draw is never chosen on the evaluation text: refused before the model loads."""
    assert main(["rotation-search", "--text", "hamlet"]) == 2
    assert "reserved for eval" in capsys.readouterr().err
