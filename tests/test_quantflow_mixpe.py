"""quantflow.mixpe: MixPE's word layouts, image export/load + manifest, and the
quantflow CLI that writes and verifies them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import quantflow as qf
from golden.mixpe import dequant_w8, reference_acc
from golden.mixpe_config import MixPEConfig
from quantflow.cli import main as cli_main
from quattro_fs import sha256_file

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- layouts
def test_mixpe_layouts():
    cfg = MixPEConfig(bits=3, group=32, rows=2, cols=4, K=64)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (6, 64))
    q = rng.integers(0, 8, (8, 64))
    s2 = rng.integers(1, 32, (8, 2))
    z = rng.integers(0, 8, (8, 2))
    acc = rng.integers(-2**31, 2**31, (6, 8))
    aw = qf.pack_act_words(a, cfg)
    cw = qf.pack_code_words(q, cfg)
    sw = qf.pack_scale_words(s2, z, cfg)
    rw = qf.pack_result_words(acc, cfg)
    assert (len(aw), len(cw), len(sw), len(rw)) == (3 * 64, 2 * 64, 2 * 2, 2 * 3 * 2)
    # spot checks straight from the layout definitions in golden/mixpe_config.py
    tm, k, r = 2, 5, 1
    assert (aw[tm * 64 + k] >> (8 * r)) & 0xFF == a[tm * 2 + r, k] & 0xFF
    tn, c = 1, 3
    assert (cw[tn * 64 + k] >> (3 * c)) & 7 == q[tn * 4 + c, k]
    j = 1
    pair = (sw[tn * 2 + j] >> (16 * c)) & 0xFFFF
    assert pair == s2[tn * 4 + c, j] | (z[tn * 4 + c, j] * s2[tn * 4 + c, j]) << 8
    m = 1
    assert (rw[(tn * 3 + tm) * 2 + m] >> (32 * c)) & 0xFFFFFFFF == \
        acc[tm * 2 + m, tn * 4 + c] & 0xFFFFFFFF
    assert np.array_equal(qf.unpack_act_words(aw, cfg), a)
    assert np.array_equal(qf.unpack_code_words(cw, cfg), q)
    s2b, zs2b = qf.unpack_scale_words(sw, cfg)
    assert np.array_equal(s2b, s2) and np.array_equal(zs2b, z * s2)
    assert np.array_equal(qf.unpack_result_words(rw, cfg, M=6, N=8), acc)


def test_tiling_errors_name_the_fix():
    cfg = MixPEConfig(bits=4, group=32, rows=4, cols=8, K=32)
    with pytest.raises(qf.QuantflowError, match=r"M=5 .*rows=4.*pad_to_multiple"):
        qf.pack_act_words(np.zeros((5, 32), dtype=np.int64), cfg)
    with pytest.raises(qf.QuantflowError, match=r"N=9 .*cols=8"):
        qf.pack_code_words(np.zeros((9, 32), dtype=np.int64), cfg)
    assert qf.pad_to_multiple(torch.ones(5, 3), 4).shape == (8, 3)


def test_wrong_types_are_type_errors(tmp_path):
    """A config or operand of the wrong type is a TypeError naming it."""
    with pytest.raises(TypeError, match="config must be a MixPEConfig"):
        qf.pack_act_words(np.zeros((4, 32), dtype=np.int64), {"bits": 4})
    with pytest.raises(TypeError, match="config must be a MixPEConfig"):
        qf.load_mixpe(tmp_path, None)
    cfg = MixPEConfig(bits=4, group=32, rows=1, cols=8, K=32)
    a, s_a = qf.quantize_act(torch.randn(1, 32))
    with pytest.raises(TypeError, match="weights must be a QoQWeights"):
        qf.write_mixpe_images(tmp_path / "img", cfg, weights=torch.zeros(8, 32), a=a, s_a=s_a)
    assert not (tmp_path / "img").exists()


# ------------------------------------------------------------------- images
CFG = MixPEConfig(bits=4, group=64, rows=2, cols=8, K=128)


def _export(path, *, seed=0, M=4, N=16):
    W = qf.random_linear_weights(N, CFG.K, seed=seed)
    X = qf.random_activations(M, CFG.K, seed=seed + 100)
    return W, X, qf.export_mixpe(path, CFG, W, X)


def test_export_load_round_trip(tmp_path):
    out = tmp_path / "img"
    W, X, man = _export(out)
    im = qf.load_mixpe(out, CFG)
    qw = qf.quantize_qoq(W, bits=4, group=64)
    a, s_a = qf.quantize_act(X)
    assert torch.equal(im.a, a) and torch.equal(im.q, qw.q)
    assert torch.equal(im.s2, qw.s2) and torch.equal(im.z, qw.z)
    assert torch.equal(im.s1, qw.s1) and torch.equal(im.s_a, s_a)
    assert torch.equal(im.acc, reference_acc(a, dequant_w8(qw.q, qw.s2, qw.z, 64)))
    assert (im.M, im.N, im.m_tiles, im.n_tiles) == (4, 16, 2, 2)
    assert list(im.code_words) == qf.pack_code_words(qw.q, CFG)
    # hex: fixed-width lowercase, one word per line, width as in the manifest
    t = man["tensors"]["scale"]
    lines = (out / "scale.hex").read_text().splitlines()
    assert len(lines) == t["words"] == 2 * CFG.groups
    assert t["word_bits"] == CFG.scale_word_bits and t["hex_digits"] == CFG.scale_word_bits // 4
    assert all(len(ln) == t["hex_digits"] and ln == ln.lower() for ln in lines)
    assert [int(ln, 16) for ln in lines] == list(im.scale_words)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == man and on_disk["config"] == CFG.as_dict()
    assert set(on_disk["sha256"]) == {p.name for p in out.iterdir()} - {"manifest.json"}


@pytest.mark.parametrize("victim", ["code.hex", "s1.npy", "result.npy"])
def test_checksum_failure_names_file(tmp_path, victim):
    out = tmp_path / "img"
    _export(out)
    p = out / victim
    data = bytearray(p.read_bytes())
    data[-2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(qf.QuantflowError, match=rf"{victim}.*sha256.*re-run quantflow export"):
        qf.load_mixpe(out, CFG)


def test_consistent_but_wrong_hex_is_caught(tmp_path):
    """Edited hex *and* checksum: the hex/npy cross-check still fails."""
    out = tmp_path / "img"
    _export(out)
    p = out / "act.hex"
    lines = p.read_text().splitlines()
    lines[0] = f"{int(lines[0], 16) ^ 1:0{len(lines[0])}x}"
    p.write_text("\n".join(lines) + "\n")
    man = json.loads((out / "manifest.json").read_text())
    man["sha256"]["act.hex"] = sha256_file(p)
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(qf.QuantflowError, match=r"act\.hex.*re-run quantflow export"):
        qf.load_mixpe(out, CFG)


def test_load_wrong_config_and_missing(tmp_path):
    out = tmp_path / "img"
    _export(out)
    other = MixPEConfig(bits=4, group=64, rows=2, cols=4, K=128)
    with pytest.raises(qf.QuantflowError, match=r"manifest.json was written for .*_c8_.*c4"):
        qf.load_mixpe(out, other)
    with pytest.raises(qf.QuantflowError, match=r"manifest.json is missing"):
        qf.load_mixpe(tmp_path / "nothing", CFG)


def test_atomic_export_leaves_nothing_on_error(tmp_path, monkeypatch):
    out = tmp_path / "img"
    real_save = np.save
    calls = []

    def flaky_save(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kw)

    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(OSError, match="simulated"):
        _export(out)
    assert len(calls) == 3  # it failed mid-way, after writing some files
    assert list(tmp_path.iterdir()) == []
    # an earlier good export survives a failed re-export untouched
    monkeypatch.setattr(np, "save", real_save)
    _export(out, seed=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(OSError):
        _export(out, seed=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["img"]
    # and a successful re-export replaces it
    monkeypatch.setattr(np, "save", real_save)
    _export(out, seed=2)
    assert (out / "code.hex").read_bytes() != before["code.hex"]
    assert [p.name for p in tmp_path.iterdir()] == ["img"]


def test_export_refuses_foreign_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(qf.QuantflowError, match="not a quantflow image directory"):
        _export(out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_export_tiling_error_writes_nothing(tmp_path):
    with pytest.raises(qf.QuantflowError, match="M=3"):
        _export(tmp_path / "img", M=3)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- CLI
def test_cli_export_state_dict_and_npy(tmp_path, capsys):
    lin = torch.nn.Linear(64, 16, bias=True)
    torch.save(lin.state_dict(), tmp_path / "lin.pt")
    np.save(tmp_path / "x.npy", qf.random_activations(2, 64, seed=1).numpy())
    rc = cli_main(["export", "--weights", str(tmp_path / "lin.pt"), "--acts",
                   str(tmp_path / "x.npy"), "--bits", "4", "--group", "32", "--rows", "2",
                   "--cols", "8", "--out", str(tmp_path / "img")])
    assert rc == 0, capsys.readouterr().err
    im = qf.load_mixpe(tmp_path / "img", MixPEConfig(bits=4, group=32, rows=2, cols=8, K=64))
    assert torch.equal(im.q, qf.quantize_qoq(lin.weight.detach(), bits=4, group=32).q)
    assert cli_main(["verify", str(tmp_path / "img")]) == 0


@pytest.mark.parametrize("argv,match", [
    (["export", "--weights", "missing.pt", "--out", "o"], "does not exist"),
    (["export", "--random-weights", "16", "100", "--group", "64", "--out", "o"],
     "--group 50"),
    (["export", "--random-weights", "12", "64", "--group", "32", "--out", "o"], "N=12"),
    (["export", "--random-weights", "16", "64", "--group", "32", "--bits", "5", "--out", "o"],
     "bits"),
    (["verify", "nowhere"], "missing"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantflow: error:") and err.count("\n") == 1
    assert match in err
    assert not (tmp_path / "o").exists()


def test_cli_module_entry_point(tmp_path):
    bad = tmp_path / "w.npy"
    np.save(bad, np.full((8, 64), np.nan, dtype=np.float32))
    r = subprocess.run([sys.executable, "-m", "quantflow", "export", "--weights", str(bad),
                        "--group", "32", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "non-finite" in r.stderr
    assert r.stderr.count("\n") == 1
