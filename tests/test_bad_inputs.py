"""Bad inputs a user can give the command lines (issue 17, Build item 6): each one
clear error naming the fix (exit 2, no traceback), nothing written half-way, and
no flag silently ignored or misread; and configurations that validate are ones
the RTL accepts. The CLIs' main(argv) run in-process."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from quantflow.cli import main as qf_main

torch.set_num_threads(1)


def _one_line_error(capsys, prefix: str = "quantflow: error:") -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ quantflow export
def _npy(tmp_path, name, array):
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


@pytest.mark.parametrize("make,match", [
    (lambda p: (p / "w.npy").write_bytes(b"") or str(p / "w.npy"), "not a readable .npy"),
    (lambda p: _npy(p, "w.npy", np.array([["a", "b"]])), "not numbers"),
    (lambda p: _npy(p, "w.npy", np.zeros((0, 64), np.float32)), "holds no values"),
], ids=["zero-byte", "strings", "empty-array"])
def test_export_weights_unusable_npy(tmp_path, capsys, make, match):
    w = make(tmp_path)
    assert qf_main(["export", "--weights", w, "--out", str(tmp_path / "o")]) == 2
    assert match in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,match", [
    (["--model", "smollm2", "--bits", "2"], "--bits apply to --weights"),
    (["--model", "smollm2", "--group", "32"], "--group apply to --weights"),
    (["--random-weights", "8", "64", "--scheme", "w4a8kv4-g64"], "--scheme applies to --model"),
    (["--random-weights", "8", "64", "--random-acts", "0"], "--random-acts must be >= 1"),
    (["--random-weights", "8", "64", "--threads", "0"], "--threads must be >= 1"),
    (["--random-weights", "8", "64", "--threads", "-2"], "--threads must be >= 1"),
], ids=["bits+model", "group+model", "scheme-no-model", "random-acts-0", "threads-0",
        "threads-negative"])
def test_export_flags_ignored_or_misread_are_refused(tmp_path, capsys, argv, match):
    assert qf_main(["export", *argv, "--out", str(tmp_path / "o")]) == 2
    assert match in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_export_out_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    assert qf_main(["export", "--random-weights", "8", "64", "--out",
                    str(tmp_path / "f" / "img")]) == 2
    assert "check the path" in _one_line_error(capsys)
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("context", ["0", "5000"])
def test_compile_context_checked_before_quantizing(capsys, context):
    assert qf_main(["compile", "--context", context]) == 2
    assert "--context must be 1..4096" in _one_line_error(capsys)


def test_verify_accepts_whole_model_export(tmp_path, capsys):
    from helpers.tiny_llama import tiny_llama
    from quantflow.export_model import export_quantized
    from quantflow.fakequant import quantize_model
    from quantflow.models import LlamaConfig
    cfg = LlamaConfig(vocab_size=31, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    qm = quantize_model(tiny_llama(cfg, seed=0), "w4a8kv4-g64", calib_ids=ids, progress=False)
    export_quantized(tmp_path / "exp", qm, model_name="tiny", progress=False)
    assert qf_main(["verify", str(tmp_path / "exp")]) == 0
    assert "ok (tiny w4a8kv4-g64, 7 linear layers)" in capsys.readouterr().out
    # and a damaged one is still refused with the fix
    victim = next((tmp_path / "exp").rglob("code.hex"))
    victim.write_text(victim.read_text()[:-2])
    assert qf_main(["verify", str(tmp_path / "exp")]) == 2
    _one_line_error(capsys)


def test_models_cache_with_truncated_safetensors_is_not_ready(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    from quantflow.models.loaders import CACHE_VERSION, _cache_ok, safetensors_complete
    d = tmp_path / "m"
    d.mkdir()
    st.save_file({"a": torch.zeros(64, 64)}, str(d / "model.safetensors"))
    (d / "config.json").write_text("{}")
    (d / "source.json").write_text(json.dumps({"sha256": "x", "cache_version": CACHE_VERSION}))
    assert safetensors_complete(d / "model.safetensors") and _cache_ok(d, "x")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-100])
    assert not safetensors_complete(d / "model.safetensors") and not _cache_ok(d, "x")
    (d / "model.safetensors").write_bytes(b"")
    assert not _cache_ok(d, "x")



# ------------------------------------------------------------------ fpga_boards host
@pytest.fixture(scope="module")
def mixpe_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "img"
    assert qf_main(["export", "--random-weights", "8", "64", "--group", "32", "--cols", "4",
                    "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("images,config,match", [
    ("img", "{bits: 4}", "--config is not valid JSON"),
    ("img", "[4]", "must be a JSON object"),
    ("img", '{"bits": 5}', "bits must be one of"),
    ("img", '{"bit": 4}', "has no field 'bit'"),
    ("img", '{"bits": 2, "group": 32, "cols": 4, "K": 64}', "was written for"),
    ("missing", None, "not a quantflow export directory"),
    ("missing", '{"bits": 4}', "missing"),
], ids=["json", "not-object", "bad-bits", "unknown-field", "config-mismatch",
        "missing-dir", "missing-dir-with-config"])
def test_fpga_boards_host_errors(tmp_path, capsys, mixpe_images, images, config, match):
    from fpga_boards.host import main as host_main
    d = mixpe_images if images == "img" else tmp_path / "nowhere"
    argv = [str(d), "--xclbin", str(tmp_path / "k.xclbin")]
    if config is not None:
        argv += ["--config", config]
    assert host_main(argv) == 2
    assert match in _one_line_error(capsys, "error:")


# ------------------------------------------------------------------ fpga_boards build
WIDE = '{"bits": 8, "cols": 64, "rows": 8, "group": 64, "K": 1024}'


@pytest.mark.parametrize("config,out,match", [
    (WIDE, "out", "Vitis links at most 512 bits"),
    ('{"bits": 4, "group": 32, "rows": 2, "cols": 4, "K": 64}', "file/sub",
     "cannot write the build tree"),
], ids=["axi-word-too-wide", "unwritable-out"])
def test_fpga_boards_build_errors_exit_2(tmp_path, capsys, config, out, match):
    from fpga_boards import build as fb_build
    (tmp_path / "file").write_text("keep")
    assert fb_build.main(["--board", "u280", "--kernel", "mixpe", "--config", config,
                          "--generate-only", "--no-fit", "--out", str(tmp_path / out)]) == 2
    assert match in _one_line_error(capsys, "error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------ configs that validate generate
def test_lut_config_refuses_rows_the_rtl_cannot_walk():
    from golden.lut_config import LUTConfig
    with pytest.raises(ValueError, match=r"rows=8 is too many for group=32.*rows <= 4, "
                                         r"group >= 64"):
        LUTConfig(rows=8, group=32)
    LUTConfig(rows=4, group=32)
    LUTConfig(rows=8, group=64)


def test_lut_configs_that_validate_elaborate_their_dequantization():
    from golden.lut_config import LUTConfig
    from hdl.lut import dq_lanes_per_unit
    for rows in range(1, 20):
        for group in (32, 64, 128):
            for cols, lanes in ((64, 8), (64, 16), (32, 1), (128, 8)):
                try:
                    cfg = LUTConfig(rows=rows, cols=cols, lanes=lanes, group=group, K=512)
                except ValueError:
                    continue
                assert dq_lanes_per_unit(cfg) >= 1, cfg


def test_kv4_head_dim_256_names_the_x_bits_that_fit():
    from golden.kv4_attention_config import KV4_HEAD_DIMS, KV4Config
    with pytest.raises(ValueError, match="head_dim=256 with x_bits=16 .*set x_bits=15"):
        KV4Config(head_dim=256)
    for d in KV4_HEAD_DIMS:          # the x_bits each message names is legal
        try:
            KV4Config(head_dim=d, x_bits=20)
        except ValueError as e:
            x = int(str(e).split("set x_bits=")[1].split()[0])
            assert KV4Config(head_dim=d, x_bits=x).x_bits == x


def test_mixpe_k_limit_before_a_group_suggestion():
    from golden.mixpe_config import MIXPE_GROUP_RANGE, MixPEConfig
    with pytest.raises(ValueError, match="K=70000 exceeds") as e:
        MixPEConfig(K=70000, group=64)
    assert "group=70" not in str(e.value)
    with pytest.raises(ValueError, match="zero-pad K to 1024") as e:   # prime K: no divisor
        MixPEConfig(K=1021, group=64)
    assert "group=" not in str(e.value).split(";")[1]
    lo, hi = MIXPE_GROUP_RANGE
    for K in range(lo, 4096, 37):    # every suggested group then validates
        try:
            MixPEConfig(K=K, group=64)
        except ValueError as err:
            if "e.g. group=" in str(err):
                g = int(str(err).split("e.g. group=")[1].split()[0])
                MixPEConfig(K=K, group=g)


def test_export_k_over_the_limit_names_the_limit(tmp_path, capsys):
    assert qf_main(["export", "--random-weights", "8", "70000", "--out",
                    str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "exceeds" in err and "--group 70" not in err


# ------------------------------------------------------------------ python -m cosim
def _argparse_refuses(capsys, call, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


@pytest.mark.parametrize("argv,match", [
    (["sim", "--jobs", "0"], "--jobs/-j: must be >= 1, got 0"),
    (["sim", "--jobs", "-3"], "must be >= 1, got -3"),
    (["sim", "--only"], "--only: expected at least one argument"),
    (["bench", "--repeat", "0"], "--repeat: must be >= 1"),
], ids=["jobs-0", "jobs-negative", "only-without-value", "bench-repeat-0"])
def test_cosim_counts_and_empty_filters_refused(capsys, argv, match):
    from cosim.__main__ import main as cosim_main
    _argparse_refuses(capsys, lambda: cosim_main(argv), match)


def test_cosim_bench_module_help_does_not_start_the_benchmark(monkeypatch, capsys):
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["python -m cosim.bench", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("cosim.bench", run_name="__main__")
    assert e.value.code == 0
    assert "usage: python -m cosim.bench" in capsys.readouterr().out


def test_cosim_lint_takes_its_own_options(capsys):
    # `python -m cosim lint --design X` reached argparse's REMAINDER, which refused it
    from cosim.__main__ import main as cosim_main
    assert cosim_main(["lint", "--design", "no_such_design"]) == 2
    assert "unknown design" in capsys.readouterr().err


# ------------------------------------------------------------------ python -m hdl --out
def _unwritable_dir(tmp_path):
    """A folder this process cannot write into (root ignores mode bits: use /sys)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro / "verilog"
    if os.path.isdir("/sys/kernel"):  # sysfs refuses new folders even to root
        return Path("/sys/kernel/quattro_no_such_dir")
    pytest.skip("no unwritable folder on this machine")


@pytest.mark.parametrize("where", ["existing-file", "under-a-file", "read-only"])
def test_hdl_out_unwritable(tmp_path, capsys, where):
    from hdl.__main__ import main as hdl_main
    (tmp_path / "f").write_text("keep")
    out = {"existing-file": tmp_path / "f", "under-a-file": tmp_path / "f" / "v",
           "read-only": None}[where] or _unwritable_dir(tmp_path)
    assert hdl_main(["mixpe", "--rows", "1", "--cols", "2", "--K", "64", "--group", "32",
                     "--out", str(out)]) == 2
    err = _one_line_error(capsys, "error:")
    assert "--out" in err and "folder" in err
    assert (tmp_path / "f").read_text() == "keep"



def test_fpga_boards_build_missing_config_file(tmp_path, capsys):
    from fpga_boards import build as fb_build
    assert fb_build.main(["--board", "u280", "--kernel", "mixpe", "--config",
                          str(tmp_path / "nofile.json"), "--generate-only",
                          "--out", str(tmp_path / "out")]) == 2
    assert "nofile.json: no such file" in _one_line_error(capsys, "error:")
    assert not (tmp_path / "out").exists()
