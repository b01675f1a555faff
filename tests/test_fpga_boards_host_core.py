"""The core's host loop (fpga_boards.host_core.generate) on the reference device
(golden.core.execute as a CoreDevice): greedy tokens equal to the integer model's
(quantflow.generate.integer_greedy), a prompt longer than max_tokens prefilled in
blocks, the stop at the image's context, the refusals, and a core error reported
with the instruction's label."""
from __future__ import annotations

import pytest
import torch

from fpga_boards.host_core import CoreDeviceError, ReferenceDevice, blocks, generate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from quantflow.program import build_memory, compile_program, sim_core_for
    from quantflow.synthetic import (compiled_image, random_llama_quantized,
                                     small_llama_config, token_ids)
    cfg = small_llama_config(heads=2, kv_heads=1, hidden=128, intermediate=192, vocab=300)
    ids = token_ids(cfg, 2, 48, seed=9)
    qm = random_llama_quantized(cfg, "w4a8kv4-g64-plain", ids, seed=9)
    img = compiled_image(qm, ids, tmp_path_factory.mktemp("host") / "image", context=24)
    core = sim_core_for(img.config)
    prog = compile_program(img, core)
    return img, core, prog, build_memory(img, prog), ids[0].tolist()


def _golden(img, ids, n):
    from golden.decoder import IntegerDecoder
    from quantflow.generate import integer_greedy
    return integer_greedy(IntegerDecoder(img.config, img.tensors), torch.tensor(ids), n,
                          lambda t: None, progress=False)


def _device(core, mem):
    dev = ReferenceDevice(core)
    dev.load(mem)
    return dev


def test_blocks():
    assert blocks(11, 8) == [(0, 8), (8, 3)]
    assert blocks(8, 8) == [(0, 8)]
    with pytest.raises(ValueError, match="no tokens"):
        blocks(0, 8)


def test_tokens_equal_the_integer_model(tiny):
    img, core, prog, mem, ids = tiny
    prompt = ids[:11]                                  # two prefill blocks (max_tokens 8)
    seen = []
    res = generate(_device(core, mem), prog, prompt, 3, on_token=seen.append)
    assert res.tokens == seen == _golden(img, prompt, 3)
    assert [(r.kind, r.pos, len(r.ids)) for r in res.runs] == [
        ("prefill", 0, 8), ("prefill", 8, 3), ("decode", 11, 1), ("decode", 12, 1)]


def test_stops_at_the_context(tiny):
    img, core, prog, mem, ids = tiny
    ctx = img.config.max_context
    prompt = ids[:ctx - 2]
    res = generate(_device(core, mem), prog, prompt, 5)
    assert len(res.tokens) == 3 and res.tokens == _golden(img, prompt, 5)


def test_refusals(tiny, tmp_path):
    img, core, prog, mem, ids = tiny
    dev = _device(core, mem)
    with pytest.raises(ValueError, match="no tokens"):
        generate(dev, prog, [], 2)
    with pytest.raises(ValueError, match="context"):
        generate(dev, prog, ids[:img.config.max_context + 1], 2)
    with pytest.raises(ValueError, match="token ids"):
        generate(dev, prog, [img.config.vocab], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(dev, prog, ids[:3], -1)
    from quantflow.program import compile_program
    with pytest.raises(ValueError, match="whole-model program"):
        generate(dev, compile_program(img, core, layer=0), ids[:3], 1)


def test_a_core_error_names_the_instruction(tiny):
    from golden.core_config import INSTR_BYTES
    img, core, prog, mem, ids = tiny
    bad = bytearray(mem)
    a = prog.memory_map.program.base + 3 * INSTR_BYTES
    bad[a:a + INSTR_BYTES] = b"\xff" * INSTR_BYTES         # no such opcode
    with pytest.raises(CoreDeviceError, match=rf"instruction 3 \({prog.labels[3]}\)"):
        generate(_device(core, bad), prog, ids[:3], 1)
