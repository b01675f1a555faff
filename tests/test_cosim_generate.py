"""Greedy generation through the Verilated core (cosim.generate on the C++ device
harness cosim.core_device, host loop fpga_boards.host_core): a small random Llama
generates tokens equal to the integer model's, every instruction of every run
bit-exact with golden.core, cycles equal to hdl.core.cycle_model; a prompt longer
than the core's max_tokens prefills in blocks; a corrupted weight in device memory
is named by the comparison; a refused start reports its error. One Verilator build
(about 1.5 minutes cold) serves the module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosim import generate as cg
from cosim.runner import SimulatorUnavailable

torch.set_num_threads(1)

SHAPE = (4, 2, 128, 192)          # heads, kv heads, hidden, intermediate
PROMPT = 11                       # > max_tokens (8): two prefill blocks
NEW = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cosim.core import random_model_image
    img, ids = random_model_image(SHAPE, seed=5, workdir=tmp_path_factory.mktemp("gen"),
                                  scheme="w4a8kv4-g64-plain")
    return img, ids[0, :PROMPT].tolist()


@pytest.fixture(scope="module")
def generated(tiny, tmp_path_factory):
    img, ids = tiny
    try:
        return cg.generate_image(img, ids, NEW, run_dir=tmp_path_factory.mktemp("run"),
                                 log=lambda m: None)
    except SimulatorUnavailable as e:
        pytest.skip(str(e))


def test_tokens_equal_the_integer_model(generated):
    g = generated
    assert g["tokens_rtl"] == g["tokens_golden"] and len(g["tokens_rtl"]) == NEW
    assert g["equal"] and g["checked"] and g["mismatch"] is None


def test_every_run_checked_and_cycles_equal_the_model(generated):
    g = generated
    kinds = [r["kind"] for r in g["runs"]]
    assert kinds == ["prefill", "prefill"] + ["decode"] * (NEW - 1)
    assert [r["tokens"] for r in g["runs"][:2]] == [8, PROMPT - 8]
    assert [r["pos"] for r in g["runs"]] == [0, 8] + list(range(PROMPT, PROMPT + NEW - 1))
    n_instr = g["instructions"]
    assert g["instructions_checked"] == n_instr * len(g["runs"])
    assert g["cycles_equal_model"], (g["runs"], g["cycles_model"])
    assert g["cycles_per_token"] == round(np.mean(g["cycles_decode"]))


def test_a_corrupted_weight_is_named(tiny, generated, tmp_path):
    from quantflow.program import compile_program, sim_core_for
    img, ids = tiny
    prog = compile_program(img, sim_core_for(img.config))
    # the first code byte of layer 0's v_proj, flipped in device memory only
    a = prog.memory_map.image.base + img.offsets["layers.0.v_proj.q"]
    g = cg.generate_image(img, ids[:3], 1, run_dir=tmp_path, log=lambda m: None,
                          poke=[(a, bytes([img.raw[img.offsets["layers.0.v_proj.q"]] ^ 0x7]))])
    mm = g["mismatch"]
    assert not g["equal"] and mm is not None
    assert mm["op"] == "LINEAR" and "v_proj" in mm["label"], mm


def test_a_refused_start_reports_its_error(tiny, generated, tmp_path):
    from cosim.core_device import VerilatedCore
    from quantflow.program import build_memory, compile_program, sim_core_for
    img, _ = tiny
    core = sim_core_for(img.config)
    prog = compile_program(img, core)
    mem = build_memory(img, prog)
    with VerilatedCore(core, mem_bytes=len(mem), run_dir=tmp_path, trace=False) as dev:
        dev.load(mem)
        rep = dev.run(prog.memory_map.program.base, 0, core.max_tokens + 1)
        assert rep["error_name"] == "tokens" and not rep["done"]
        assert dev.read(0, 16) == bytes(mem[:16])
        dev.write(prog.memory_map.ids, b"\x01\x00\x00\x00")
        assert dev.read(prog.memory_map.ids, 4) == b"\x01\x00\x00\x00"
        rep = dev.run(prog.memory_map.program.base, 0, 1)      # runs after the error
        assert rep["error"] == 0 and rep["done"]
