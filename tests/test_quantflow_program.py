"""quantflow.program: the core's memory map, buffer allocation, the tiling report,
the I/O helpers, and every refusal of a model or core that cannot run (the programs'
bit-exactness against the integer model is tests/test_golden_core.py's)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from golden.core import execute, first_mismatch
from golden.core_config import (INSTR_BYTES, MEM_ALIGN, Registers, bytes_to_words, decode,
                                kv_region_bytes)
from quantflow.errors import QuantflowError
from quantflow.program import (REGION_ALIGN, build_memory, compile_program, core_for,
                               linear_tiling, read_hidden, read_next_tokens, write_hidden,
                               write_tokens)
from helpers.tiny_llama import tiny_config, tiny_image, tiny_quantized, token_ids

torch.set_num_threads(1)

CFG = tiny_config(heads=4, kv_heads=2)
IDS = token_ids(CFG, 2, 32, seed=3)
CONTEXT = 40


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    qm = tiny_quantized(CFG, "w4a8kv4-g64-plain", IDS, seed=2)
    return tiny_image(qm, IDS, tmp_path_factory.mktemp("img") / "tiny", context=CONTEXT)


def _run(img, core, prog, ids):
    mem = build_memory(img, prog)
    write_tokens(mem, prog, ids)
    return execute(prog.words, mem, core, Registers(pos=0, tokens=len(ids))), mem


def test_memory_map_regions_and_contents(img):
    core = core_for(img.config)
    prog = compile_program(img, core)
    mm, d = prog.memory_map, img.config
    regions = mm.regions()
    assert [r.name for r in regions] == ["image", "kv", "io", "program"]
    for a, b in zip(regions, regions[1:]):
        assert a.end <= b.base and b.base % REGION_ALIGN == 0
    assert mm.kv.size == d.layers * d.kv_heads * kv_region_bytes(CONTEXT, d.head_dim, 0)
    heads = [a for layer in mm.kv_heads for a in layer]
    assert heads == sorted(heads) and len(set(heads)) == d.layers * d.kv_heads
    assert all(b - a == mm.kv_head_bytes for a, b in zip(heads, heads[1:]))
    io = [mm.ids, mm.next, mm.x_in, mm.x_out, mm.logits]
    assert all(a % MEM_ALIGN == 0 and mm.io.base <= a < mm.io.end for a in io)
    assert mm.logits + 4 * core.max_tokens * d.vocab <= mm.io.end
    mem = build_memory(img, prog)
    assert len(mem) == mm.total and mm.program.size == len(prog.words) * INSTR_BYTES
    assert bytes_to_words(mem[mm.program.base:mm.program.end]) == list(prog.words)
    assert bytes(mem[mm.image.base:mm.image.end]) == img.raw
    # every address an instruction holds lies in its region
    for w in prog.words:
        ins = decode(w)
        for f in ("addr0", "addr1", "addr2", "addr3"):
            if f in ins.fields:
                assert any(r.base <= ins[f] < r.end for r in regions), (ins.op, f)


def test_image_base_moves_every_address(img):
    """An image placed at another base: every region and address moves, the results
    do not."""
    core = core_for(img.config)
    a = compile_program(img, core)
    b = compile_program(img, core, image_base=3 * REGION_ALIGN)
    assert b.memory_map.image.base == 3 * REGION_ALIGN
    assert b.memory_map.kv.base == a.memory_map.kv.base + 3 * REGION_ALIGN
    assert a.words != b.words
    ta, _ = _run(img, core, a, [5, 9, 2])
    tb, mem = _run(img, core, b, [5, 9, 2])
    assert first_mismatch(ta, tb) is None
    with pytest.raises(QuantflowError, match="multiple of 0x1000"):
        compile_program(img, core, image_base=64)
    with pytest.raises(QuantflowError, match="32-bit addresses"):
        compile_program(img, core.replace(addr_bits=32), image_base=1 << 32)


def test_buffer_allocation_by_linear_scan(img):
    """A layer keeps at most five values live (x, the A8 codes, q, k, v); fewer
    buffers are refused with the count needed; exactly five run the same numbers."""
    core = core_for(img.config)
    prog = compile_program(img, core)
    assert prog.buffers_used == 5 and max(prog.buffers.values()) == 4
    # the residual stays in one buffer; in-place ops keep their input's buffer
    assert len({b for v, b in prog.buffers.items() if v.startswith("x")}) == 1
    assert prog.buffers["rope_q1"] == prog.buffers["q_proj1"]
    # every head's ATTEND writes its columns of one buffer
    att = [decode(w) for w in prog.words if decode(w).op == "ATTEND"][:CFG.num_key_value_heads]
    assert len({i["dst"] for i in att}) == 1 and [i["col"] for i in att] == [0, 64]
    with pytest.raises(QuantflowError, match="needs 5 activation buffers.*has 4"):
        compile_program(img, core.replace(buffers=4))
    small = core.replace(buffers=5)
    ta, _ = _run(img, core, prog, [7, 3])
    tb, _ = _run(img, small, compile_program(img, small), [7, 3])
    assert first_mismatch(ta, tb) is None


def test_linear_tiling(img):
    core = core_for(img.config, rows=4, cols=48)
    t = linear_tiling(core, "up_proj", 192, 128, 64)
    assert (t.n_tiles, t.last_cols, t.k_groups) == (4, 48, 2)
    t = linear_tiling(core, "q_proj", 128, 128, 64)
    assert (t.n_tiles, t.last_cols) == (3, 32)
    assert [t.m_tiles(T) for T in (1, 4, 5, 9)] == [1, 1, 2, 3]
    assert t.utilisation(4) == pytest.approx(128 / 144) and t.utilisation(1) < 0.25
    prog = compile_program(img, core)
    names = [x.name for x in prog.tiling]
    assert names[-1] == "lm_head" and len(names) == 8
    tensors = img.tensors
    for x in prog.tiling:
        p = "lm_head" if x.name == "lm_head" else f"layers.0.{x.name}"
        assert x.weight_bytes == sum(tensors[f"{p}.{s}"].numel() for s in ("q", "s2", "z"))


def _kv4(img, **kw):
    return dataclasses.replace(img.config.kv4, **kw)


@pytest.mark.parametrize("kw, match", [
    (lambda i: dict(max_k=64), "K=128 > the engine's max_k=64"),
    (lambda i: dict(max_n=100), "N=128 > the engine's max_n=100"),
    (lambda i: dict(w_bits=4), "lm_head has 8-bit codes > the engine's w_bits=4"),
    (lambda i: dict(buf_elems=160), "intermediate=192 exceeds the buffers' buf_elems=160"),
    (lambda i: dict(sfu=dataclasses.replace(core_for(i.config).sfu, max_k=160)),
     "intermediate=192 exceeds the SFU's vector buffer"),
    (lambda i: dict(kv4=_kv4(i, max_t=32)), "context of 40 tokens exceeds.*max_t=32"),
    (lambda i: dict(kv4=_kv4(i, rotate=True)), r"KV4 scheme differs.*rotate \(False vs True\)"),
    (lambda i: dict(kv4=_kv4(i, heads=1)), "2 query heads per KV head exceed"),
    (lambda i: dict(sfu=dataclasses.replace(core_for(i.config).sfu, frac=13)), "SFU formats"),
])
def test_cores_that_cannot_run_the_model_are_refused(img, kw, match):
    with pytest.raises(QuantflowError, match=match):
        compile_program(img, core_for(img.config, **kw(img)))


def test_bad_images_and_arguments_are_refused(img, tmp_path):
    core = core_for(img.config)
    bad = dataclasses.replace(img, tensors={**img.tensors,
                                            "sfu.sigmoid": img.tensors["sfu.sigmoid"] + 1})
    with pytest.raises(QuantflowError, match="sigmoid table"):
        compile_program(bad, core)
    with pytest.raises(QuantflowError, match=r"layer must be an int in \[0, 2\)"):
        compile_program(img, core, layer=2)
    with pytest.raises(TypeError, match="CoreConfig"):
        compile_program(img, core.as_dict())
    with pytest.raises(TypeError, match="DecoderConfig"):
        core_for(core)
    with pytest.raises(QuantflowError, match="not a compiled model image"):
        compile_program(tmp_path / "nothing", core)
    prog = compile_program(img, core)
    with pytest.raises(QuantflowError, match="recompile the program"):
        build_memory(dataclasses.replace(img, raw=img.raw + b"\0"), prog)


def test_io_helpers(img):
    core = core_for(img.config, max_tokens=8)
    prog = compile_program(img, core, layer=0)
    mem = build_memory(img, prog)
    x = torch.randint(-(1 << 16), 1 << 16, (3, CFG.hidden_size))
    write_hidden(mem, prog, x)
    execute(prog.words, mem, core, Registers(tokens=3))
    assert read_hidden(mem, prog, 3).shape == (3, CFG.hidden_size)
    with pytest.raises(QuantflowError, match="1..8 tokens"):
        write_tokens(mem, prog, list(range(9)))
    with pytest.raises(QuantflowError, match=r"\[0, 61\)"):
        write_tokens(mem, prog, [61])
    with pytest.raises(QuantflowError, match=r"\[T, 128\]"):
        write_hidden(mem, prog, x[:, :64])
    with pytest.raises(QuantflowError, match="1..8 tokens"):
        read_next_tokens(mem, prog, 0)
