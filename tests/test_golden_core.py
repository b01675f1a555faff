"""golden.core_config (the accelerator core's ISA and configuration) and golden.core
(its reference executor and cycle model).

A tiny random Llama is quantized, compiled into a model image, and compiled into a
core program (quantflow.program); executing that program over the image's bytes
must equal golden.decoder.IntegerDecoder bit for bit: every instruction's output
against the integer model's trace, over a chunked prefill and decode steps run by
the same words with new registers. Bad programs are refused with the instruction
and field named; the cycle model is consistent, monotone, and no tighter than the
blocks' own RTL cycle models."""
from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from golden.core import (ISSUE_CYCLES, ProgramError, Step, cycle_model, execute,
                         first_mismatch, instruction_cycles, tokens_per_second)
from golden.core_config import (FIELDS, FLAG_RES, INSTR_BITS, INSTR_BYTES, MEM_ALIGN, OPCODES,
                                OPS, CoreConfig, ISAError, Registers, bytes_to_words, decode,
                                encode, kv_layout, kv_region_bytes, words_to_bytes)
from golden.decoder import IntegerDecoder
from golden.kv4_attention_config import KV4Config
from golden.sfu import residual_add, swiglu
from golden.sfu_config import SFUHWConfig, sqrt_k
from quantflow.program import (build_memory, compile_program, core_for,
                               read_hidden, read_logits, read_next_tokens, write_hidden,
                               write_tokens)
from helpers.tiny_llama import tiny_config, tiny_image, tiny_quantized, token_ids

torch.set_num_threads(1)

# two KV heads of two query heads each: per-head cache regions and GQA columns
CFG = tiny_config(heads=4, kv_heads=2)
IDS = token_ids(CFG, 3, 40, seed=5)
CONTEXT = 48


@pytest.fixture(scope="module", params=["w4a8kv4-g64", "w4a8kv4-g64-plain"])
def built(request, tmp_path_factory):
    """(image, core, program, decoder) of the tiny Llama under a scheme with the
    Hadamard rotation and the 8-bit recent window, and under the plain one."""
    qm = tiny_quantized(CFG, request.param, IDS, seed=0)
    img = tiny_image(qm, IDS, tmp_path_factory.mktemp("img") / "tiny", context=CONTEXT)
    core = core_for(img.config, max_tokens=16)
    return img, core, compile_program(img, core), IntegerDecoder(img.config, img.tensors)


def _golden_step(dec, ids, state):
    got = {}
    r = dec.step(torch.tensor(ids), state, trace=lambda n, t, f: got.__setitem__(n, t))
    got["next_tokens"] = r.next_tokens()
    return r, got


def _compare(prog, trace, got, T):
    """Every output the program maps to a golden.decoder trace name equals it."""
    checked = 0
    for s in trace:
        for out, (name, cols) in prog.golden[s.index].items():
            want = got[name].reshape(T, -1)
            if cols is not None:
                want = want[:, cols[0]:cols[1]]
            assert torch.equal(s.outputs[out].reshape(T, -1), want), \
                (prog.labels[s.index], out, name)
            checked += 1
    return checked


def _cache_from_memory(mem, prog, core, layer, head, T):
    base = prog.memory_map.kv_heads[layer][head]
    lay = kv_layout(prog.decoder.max_context, core.kv4.head_dim, core.kv4.recent)
    out = {}
    for name, (off, per, _) in lay.items():
        dt = "<u4" if name in ("ks", "vs") else np.uint8
        out[name] = torch.from_numpy(np.frombuffer(mem, dt, T * per // np.dtype(dt).itemsize,
                                                   base + off).astype(np.int64))
    return out


def test_prefill_chunks_then_decode_equal_integer_decoder(built):
    """One program: a prefill in two chunks (pos 0 and 7), then decode steps
    (tokens = 1, pos advancing), every output bit-exact with the integer model, the
    next tokens and logits in the I/O region, the KV cache in memory equal to the
    integer model's."""
    img, core, prog, dec = built
    mem = build_memory(img, prog)
    state = dec.new_state()
    seq = IDS[0, :12].tolist()
    blocks = [(0, 7), (7, 5)]
    pos = 0
    for step in range(6):
        start, T = blocks[step] if step < len(blocks) else (pos, 1)
        ids = seq[start:start + T]
        r, got = _golden_step(dec, ids, state)
        write_tokens(mem, prog, ids)
        trace = execute(prog.words, mem, core, Registers(pos=start, tokens=T))
        assert trace[-1].op == "HALT" and len(trace) == len(prog.words)
        assert _compare(prog, trace, got, T) > 20 * CFG.num_hidden_layers
        assert read_next_tokens(mem, prog, T) == r.next_tokens().tolist()
        assert torch.equal(read_logits(mem, prog, T), r.acc)
        pos = start + T
        if pos >= len(seq):
            seq.append(read_next_tokens(mem, prog, T)[-1])
    assert state.pos == pos == 16
    kv4 = core.kv4
    for layer in range(CFG.num_hidden_layers):
        for h in range(CFG.num_key_value_heads):
            want = state.caches[layer][h]
            m = _cache_from_memory(mem, prog, core, layer, h, pos)
            codes = torch.stack([m["k4"] & 15, m["k4"] >> 4], -1).view(pos, -1)
            assert torch.equal(codes, want.kcodes)
            assert torch.equal(m["vs"], want.vs) and torch.equal(m["kz"], want.kz)
            if kv4.recent:
                assert torch.equal(m["v8"].view(pos, -1), want.vcodes8)
                assert torch.equal(m["kz8"], want.kz8)


def test_one_layer_program_from_its_input(built):
    """A layer program (LOAD x_in, the layer, STORE x_out) on the integer model's
    residual before layer 1 gives its residual after it, every step bit-exact."""
    img, core, _, dec = built
    prog = compile_program(img, core, layer=1)
    assert [prog.labels[0], prog.labels[-2]] == ["input", "output"]
    _, got = _golden_step(dec, IDS[1, :9].tolist(), dec.new_state())
    mem = build_memory(img, prog)
    write_hidden(mem, prog, got["layers.0.residual"])
    trace = execute(prog.words, mem, core, Registers(pos=0, tokens=9))
    _compare(prog, trace, got, 9)
    assert torch.equal(read_hidden(mem, prog, 9), got["layers.1.residual"])


def test_first_mismatch_names_instruction_output_and_element(built):
    img, core, prog, _ = built
    mem = build_memory(img, prog)
    write_tokens(mem, prog, [3, 1, 4])
    a = execute(prog.words, mem, core, Registers(pos=0, tokens=3))
    assert first_mismatch(a, a) is None
    i = prog.index("layers.1.up_proj")
    bad = dict(a[i].outputs)
    bad["out"] = bad["out"].clone()
    bad["out"][2, 17] += 1
    b = a[:i] + [Step(i, a[i].instr, bad)] + a[i + 1:]
    m = first_mismatch(a, b)
    assert (m.index, m.op, m.tensor, m.element) == (i, "LINEAR", "out", (2, 17))
    assert m.got == m.expected + 1 and "instruction" in str(m)
    assert first_mismatch(a, a[:-1]).tensor == "steps"


# --------------------------------------------------------------------------- ISA
def _random_fields(op: str, rng: random.Random) -> dict:
    out = {}
    for name in OPS[op].fields:
        f = FIELDS[name]
        out[name] = rng.choice([f.min, f.max, rng.randint(f.min, f.max)])
    return out


@pytest.mark.parametrize("op", sorted(OPS))
def test_encode_decode_round_trip(op):
    rng = random.Random(op)
    for _ in range(50):
        fields = _random_fields(op, rng)
        w = encode(op, **fields)
        assert 0 <= w < 1 << INSTR_BITS
        ins = decode(w)
        assert ins.op == op and dict(ins.fields) == fields
        assert bytes_to_words(words_to_bytes([w])) == [w]
    assert OPS[op].unit in ("sequencer", "sfu", "linear", "kv4")


def test_field_map_is_disjoint_and_fits_the_word():
    bits = set()
    for name, f in FIELDS.items():
        span = set(range(f.lo, f.lo + f.width))
        assert not bits & span, name
        bits |= span
    assert max(bits) == INSTR_BITS - 1 and INSTR_BYTES * 8 == INSTR_BITS
    assert len(OPCODES) == len(OPS) and 0 not in OPCODES


@pytest.mark.parametrize("call, field, match", [
    (lambda: encode("JUMP"), "op", "unknown opcode"),
    (lambda: encode("QUANT", heads=1), "heads", "does not use field"),
    (lambda: encode("LINEAR", k=1 << 20), "k", "does not fit its 20-bit unsigned"),
    (lambda: encode("LINEAR", e=-2049), "e", "12-bit signed"),
    (lambda: encode("LINEAR", n=-1), "n", "range"),
    (lambda: encode("LINEAR", n=True), "n", "must be an int"),
    (lambda: encode("LOAD", addr0=1 << 64), "addr0", "64-bit"),
    (lambda: decode(0), "op", "unknown opcode 0x00"),
    (lambda: decode(0xEE), "op", "unknown opcode 0xee"),
    (lambda: decode(encode("QUANT", n=4) | 1 << FIELDS["heads"].lo), "heads", "does not use"),
    (lambda: decode(encode("HALT") | 1 << 28), "reserved", "reserved bits"),
    (lambda: decode(1 << INSTR_BITS), "op", "an instruction is an int"),
    (lambda: decode(-1), "op", "an instruction is an int"),
])
def test_isa_refusals(call, field, match):
    with pytest.raises(ISAError, match=match) as e:
        call()
    assert e.value.field == field


def test_program_bytes_are_whole_words():
    with pytest.raises(ValueError, match="whole number"):
        bytes_to_words(b"\0" * (INSTR_BYTES + 1))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(rows=0), ValueError, "rows"),
    (dict(cols=1.5), TypeError, "cols"),
    (dict(buffers=17), ValueError, "4 bits"),
    (dict(max_k=16), ValueError, "max_k"),
    (dict(max_n=1 << 20), ValueError, "20 bits"),
    (dict(w_bits=5), ValueError, "w_bits"),
    (dict(buf_elems=(1 << 16) + 1), ValueError, "col field"),
    (dict(beat_bytes=24), ValueError, "power of two"),
    (dict(mem_ports=33), ValueError, "mem_ports"),
    (dict(addr_bits=65), ValueError, "64 bits"),
    (dict(sfu=SFUHWConfig().numerics()), TypeError, "SFUHWConfig"),
    (dict(kv4=KV4Config(heads=16, max_t=4096).as_dict()), TypeError, "KV4Config"),
])
def test_core_config_refusals(kw, exc, match):
    with pytest.raises(exc, match=match):
        CoreConfig(**kw)


def test_core_config_derived():
    c = CoreConfig()
    assert c.mem_bytes_per_cycle == c.mem_ports * c.beat_bytes
    assert c.buffer_bytes == c.buffers * c.max_tokens * c.buf_elems * 4
    assert c.peak_macs_per_cycle == c.rows * c.cols and c.name().startswith("core_r4_c512")
    with pytest.raises(ValueError, match="tokens"):
        Registers(tokens=0)
    with pytest.raises(TypeError, match="pos"):
        Registers(pos=1.0)


def test_kv_layout_planes_are_aligned_and_disjoint():
    for recent in (0, 8):
        lay = kv_layout(100, 64, recent)
        assert set(lay) >= {"k4", "v4", "ks", "vs", "kz", "vz"}
        assert ("k8" in lay) == bool(recent)
        end = 0
        for off, per, size in lay.values():
            assert off % MEM_ALIGN == 0 and off >= end and size == 100 * per
            end = off + size
        assert kv_region_bytes(100, 64, recent) >= end
        assert kv_region_bytes(100, 64, recent) % MEM_ALIGN == 0
    assert lay["k4"][1] == 32 and lay["ks"][1] == 4 and lay["k8"][1] == 64


# --------------------------------------------------------------------------- bad programs
def _patch(words, label_or_index, prog, **fields):
    """The program with one instruction re-encoded with some fields changed."""
    i = prog.index(label_or_index) if isinstance(label_or_index, str) else label_or_index
    ins = decode(words[i])
    new = list(words)
    new[i] = encode(ins.op, **{**ins.fields, **fields})
    return new, i


def _bad_cases(prog, mem_size):
    w = list(prog.words)
    lin = "layers.0.q_proj"
    i_sync = prog.index("layers.0.kv_sync")
    i_lin = prog.index(lin)
    raw_unused = list(w)
    raw_unused[i_lin] |= 1 << FIELDS["heads"].lo
    return [
        ("unknown opcode", w[:3] + [0xEE] + w[4:], 3, {}, "op", "unknown opcode"),
        ("unused field", raw_unused, i_lin, {}, "heads", "does not use field"),
        ("address past memory", *_patch(w, lin, prog, addr0=mem_size), {}, "addr0",
         "past the end of memory"),
        ("unaligned address", *_patch(w, lin, prog, addr1=decode(w[i_lin])["addr1"] + 4),
         {}, "addr1", "aligned"),
        ("K beyond max_k", w, i_lin, dict(max_k=64), "k", "max_k"),
        ("N beyond max_n", w, i_lin, dict(max_n=100), "n", "max_n"),
        ("no such buffer", *_patch(w, lin, prog, dst=15), {}, "dst", "names no buffer"),
        ("columns beyond buffer", *_patch(w, "layers.0.attn.1", prog, col=2000), {}, "col",
         "buf_elems"),
        ("group not dividing k", *_patch(w, lin, prog, group=96), {}, "group", "divide"),
        ("heads beyond the unit", *_patch(w, "layers.0.attn.0", prog, heads=3), {}, "heads",
         "kv4.heads"),
        ("dst is src", *_patch(w, lin, prog, dst=decode(w[i_lin])["src"]), {}, "dst",
         "re-reads"),
        ("src2 without RES", *_patch(w, lin, prog, src2=1), {}, "src2", "FLAG_RES"),
        ("unknown flag", *_patch(w, lin, prog, flags=2), {}, "flags", "does not define"),
        ("reads an X32 buffer as A8", *_patch(w, lin, prog, src=0), {}, "src",
         "holds X32.*reads A8"),
        ("RMSNorm sqrt(K) wrong", *_patch(w, "layers.0.input_norm", prog, SK=12345), {}, "SK",
         "sqrt"),
        ("no SYNC before ATTEND", w[:i_sync] + w[i_sync + 1:], i_sync, {}, "addr0",
         "no SYNC"),
        ("no HALT", w[:-1], len(w) - 1, {}, "op", "without HALT"),
    ]


def test_bad_programs_are_refused_naming_instruction_and_field(built):
    img, core, prog, _ = built
    mem0 = build_memory(img, prog)
    write_tokens(mem0, prog, [1, 2, 3])
    for what, words, index, core_kw, field, match in _bad_cases(prog, len(mem0)):
        with pytest.raises(ProgramError, match=match) as e:
            execute(words, bytearray(mem0), core.replace(**core_kw),
                    Registers(pos=0, tokens=3))
        assert (e.value.index, e.value.field) == (index, field), (what, str(e.value))
        assert re.match(rf"instruction {index} \(", str(e.value)), what


def test_bad_registers_and_run_time_data(built):
    img, core, prog, _ = built
    mem = build_memory(img, prog)
    write_tokens(mem, prog, [1] * 16)
    with pytest.raises(ProgramError, match="max_tokens=16") as e:
        execute(prog.words, mem, core, Registers(pos=0, tokens=17))
    assert e.value.index is None and e.value.field == "tokens"
    # the context is full: the first table or cache with ctx rows refuses
    with pytest.raises(ProgramError, match=r"positions 47..48.*ctx") as e:
        execute(prog.words, mem, core, Registers(pos=CONTEXT - 1, tokens=2))
    assert e.value.field == "ctx" and e.value.op == "ROPE"
    # a token id outside the vocabulary, as the host wrote it
    mem[prog.memory_map.ids:prog.memory_map.ids + 4] = (CFG.vocab_size).to_bytes(4, "little")
    with pytest.raises(ProgramError, match="outside the vocabulary") as e:
        execute(prog.words, mem, core, Registers(pos=0, tokens=1))
    assert (e.value.index, e.value.op, e.value.field) == (0, "EMBED", "ctx")
    with pytest.raises(TypeError, match="read-only"):
        execute(prog.words, bytes(mem), core, Registers())
    with pytest.raises(TypeError, match="Registers"):
        execute(prog.words, mem, core, {"pos": 0})


def _hand_memory(size: int = 1 << 16) -> bytearray:
    return bytearray(size)


def test_hand_written_program_add_swiglu_and_buffer_checks():
    """Programs written by hand, not by the compiler: ADD and SWIGLU (with its output
    shift) over LOADed rows, STOREd back; a buffer read before any write."""
    core = CoreConfig(max_tokens=4, buf_elems=64, sfu=SFUHWConfig(lanes=16, max_k=64))
    mem = _hand_memory()
    g = torch.randint(-(1 << 18), 1 << 18, (3, 48), generator=torch.Generator().manual_seed(1))
    u = torch.randint(-(1 << 20), 1 << 20, (3, 48), generator=torch.Generator().manual_seed(2))
    mem[0:g.numel() * 4] = g.numpy().astype("<i4").tobytes()
    mem[1024:1024 + u.numel() * 4] = u.numpy().astype("<i4").tobytes()
    prog = [encode("LOAD", dst=0, n=48, addr0=0), encode("LOAD", dst=1, n=48, addr0=1024),
            encode("ADD", dst=2, src=0, src2=1, n=48),
            encode("SWIGLU", dst=0, src=0, src2=1, n=48, in_frac2=16, out_frac=12),
            encode("STORE", src=2, n=48, addr0=4096), encode("STORE", src=0, n=48, addr0=8192),
            encode("HALT")]
    trace = execute(prog, mem, core, Registers(tokens=3))
    assert [s.op for s in trace] == ["LOAD", "LOAD", "ADD", "SWIGLU", "STORE", "STORE", "HALT"]
    out = torch.from_numpy(np.frombuffer(mem, "<i4", 144, 4096).astype(np.int64)).view(3, 48)
    assert torch.equal(out, residual_add(g, u))
    out = torch.from_numpy(np.frombuffer(mem, "<i4", 144, 8192).astype(np.int64)).view(3, 48)
    assert torch.equal(out, swiglu(g, u, config=core.sfu, shift=core.sfu.frac + 16 - 12))
    with pytest.raises(ProgramError, match="nothing written in this run") as e:
        execute([encode("QUANT", dst=0, src=3, n=16), encode("HALT")], mem, core, Registers())
    assert (e.value.index, e.value.field) == (0, "src")
    with pytest.raises(ProgramError, match="no SYNC") as e:
        execute(prog[:5] + [encode("LOAD", dst=3, n=48, addr0=4096), encode("HALT")], mem,
                core, Registers(tokens=3))
    assert (e.value.index, e.value.field) == (5, "addr0")


def test_accumulator_overflow_is_refused():
    """Weights that break the INT8 reconstruction bound (s2 = 255, q - z = 255) over
    K = 320 push |acc| past 2**31: the engine flags it instead of wrapping."""
    core = CoreConfig(max_tokens=1, buf_elems=512)
    K, N, G = 320, 2, 320 // 64
    mem = _hand_memory()
    mem[0:K * 4] = np.full(K, 1 << 20, "<i4").tobytes()            # x: every code 127
    mem[4096:4096 + N * K] = bytes([255]) * (N * K)                  # q
    mem[8192:8192 + N * G] = bytes([255]) * (N * G)                  # s2 (z = 0)
    prog = [encode("LOAD", dst=0, n=K, addr0=0), encode("QUANT", dst=1, src=0, n=K),
            encode("LOGITS", src=1, n=N, k=K, group=64, addr0=4096, addr1=8192, addr2=12288,
                   addr3=16384), encode("HALT")]
    with pytest.raises(ProgramError, match="accumulator overflows") as e:
        execute(prog, mem, core, Registers())
    assert (e.value.index, e.value.op) == (2, "LOGITS")
    prog[2] = encode("LOGITS", src=1, n=N, k=256, group=64, addr0=4096, addr1=8192,
                     addr2=12288, addr3=16384)                     # 256 * 127 * 65025 < 2**31
    execute(prog, mem, core, Registers())


# --------------------------------------------------------------------------- cycle model
def test_cycle_model_is_consistent_and_monotone(built):
    img, core, prog, _ = built
    c = cycle_model(prog.words, core, Registers(pos=5, tokens=1))
    assert len(c.steps) == len(prog.words) and c.total == sum(s.cycles for s in c.steps)
    for s in c.steps:
        assert s.cycles == ISSUE_CYCLES + max(s.mem_cycles, s.compute_cycles)
        assert s.bound == ("memory" if s.mem_cycles > s.compute_cycles else "compute")
    assert sum(c.by_op().values()) == sum(c.by_bound().values()) == c.total
    decode_steps = [cycle_model(prog.words, core, Registers(pos=p, tokens=1)).total
                    for p in range(0, CONTEXT, 7)]
    assert decode_steps == sorted(decode_steps) and decode_steps[0] < decode_steps[-1]
    prefill = [cycle_model(prog.words, core, Registers(pos=0, tokens=t)).total
               for t in (1, 2, 4, 8, 16)]
    assert prefill == sorted(prefill) and prefill[0] < prefill[-1]
    # more memory bandwidth shortens memory-bound instructions only
    wide = core.replace(mem_ports=core.mem_ports * 2)
    regs = Registers(pos=5, tokens=1)
    for s in c.steps:
        w = instruction_cycles(decode(prog.words[s.index]), wide, regs, s.index)
        assert w.cycles <= s.cycles and w.compute_cycles == s.compute_cycles
        assert w.mem_bytes == s.mem_bytes
    # a LINEAR's bytes are its codes, s2 and z per group, S1
    i = prog.index("layers.0.gate_proj")
    N, K = img.config.linear_shape("gate_proj")
    assert c.steps[i].mem_bytes == N * K + 2 * N * K // img.config.group + 4 * N
    with pytest.raises(ValueError, match="positive"):
        tokens_per_second(0, 1, 3e8)


def test_cycle_targets_are_not_tighter_than_the_blocks_rtl_models():
    """The core's per-instruction targets cover the cycles the block RTL already
    takes (hdl.sfu, hdl.kv4_attention, hdl.mixpe cycle models), so the core RTL can
    meet them."""
    from golden.mixpe_config import MixPEConfig
    from hdl import kv4_attention as hkv, mixpe as hmix, sfu as hsfu
    core = CoreConfig(kv4=KV4Config(head_dim=64, heads=3, max_t=1024))
    regs = Registers(pos=0, tokens=1)
    K = 576
    SK, es = sqrt_k(K)
    for op, ins, ops in (
            ("QUANT", encode("QUANT", n=K), ["quant_a8"]),
            ("RMSNORM", encode("RMSNORM", n=K, SK=SK, es=es), ["rmsnorm"]),
            ("ROPE", encode("ROPE", heads=9, ctx=64), ["rope"]),
            ("SWIGLU", encode("SWIGLU", n=K), ["swiglu"]),
            ("ADD", encode("ADD", n=K), ["residual_add"]),
            ("ARGMAX", encode("ARGMAX", n=K), ["argmax"])):
        want = sum(hsfu.cycle_model(core.sfu, o, 9 * 64 if op == "ROPE" else K) for o in ops)
        assert instruction_cycles(decode(ins), core, regs).compute_cycles >= want, op
    for kv4 in (core.kv4, dataclasses.replace(core.kv4, rotate=False, recent=0),
                KV4Config(head_dim=128, heads=4, lanes=32, max_t=1024)):
        c = core.replace(kv4=kv4)
        for pos, T in ((0, 1), (99, 1), (1000, 1), (0, 16)):
            att = encode("ATTEND", heads=kv4.heads, ctx=1024)
            got = instruction_cycles(decode(att), c, Registers(pos=pos, tokens=T))
            assert got.compute_cycles >= sum(hkv.cycle_model(kv4, pos + t + 1) for t in range(T))
            app = instruction_cycles(decode(encode("KV_APPEND", ctx=1024)), c,
                                     Registers(pos=pos, tokens=T))
            assert app.compute_cycles >= hkv.append_cycles(kv4, T)
    for rows, cols, N, Kl, T in ((4, 512, 1536, 576, 1), (1, 64, 192, 576, 1),
                                 (4, 128, 576, 1536, 9)):
        c = core.replace(rows=rows, cols=cols)
        mc = MixPEConfig(bits=4, group=64, rows=rows, cols=cols, K=Kl)
        tiles = -(-T // rows) * -(-N // cols)
        lin = instruction_cycles(decode(encode("LOGITS", n=N, k=Kl, group=64)), c,
                                 Registers(tokens=T))
        assert lin.compute_cycles >= hmix.cycle_model(mc, tiles)


@pytest.fixture(scope="module")
def smollm2():
    """The compiled SmolLM2 image (compiled on first use), or a skip naming why it
    cannot be made."""
    from helpers.real_model import smollm2_plain_image
    return smollm2_plain_image()


def test_smollm2_decode_is_memory_bound_at_the_default_core(smollm2):
    """SmolLM2-135M decode on the default core (8 AXI masters of 32 bytes): the
    weight streams bound it. Prints cycles per token and tokens/s at 300 MHz."""
    img = smollm2
    core = core_for(img.config)
    prog = compile_program(img, core)
    for pos in (0, 255, 1023):
        c = cycle_model(prog.words, core, Registers(pos=pos, tokens=1))
        b = c.by_bound()
        lin = sum(s.cycles for s in c.steps if s.op in ("LINEAR", "LOGITS"))
        print(f"pos {pos}: {c.total} cycles/token, {tokens_per_second(c.total, 1, 300e6):.0f} "
              f"tok/s at 300 MHz, memory-bound {b['memory']}, linears {lin}")
        if pos == 0:
            assert b["memory"] > 2 * b["compute"]
            *layer, head = prog.tiling
            weights = img.config.layers * sum(t.weight_bytes for t in layer) + head.weight_bytes
            assert weights < c.mem_bytes < 1.1 * weights
    assert all(s.bound == "memory" for s in c.steps if s.op == "LOGITS")


@pytest.fixture(scope="module")
def smollm2_decoder(smollm2):
    return IntegerDecoder(smollm2.config, smollm2.tensors)


def test_smollm2_layer_12_equals_integer_decoder(smollm2, smollm2_decoder):
    """A real SmolLM2 layer (12: the first whose input carries the massive
    activation) as a layer program on 6 tokens: every output bit-exact."""
    img, dec = smollm2, smollm2_decoder
    core = core_for(img.config)
    ids = [1, 504, 3250, 282, 4910, 314]
    _, got = _golden_step(dec, ids, dec.new_state())
    prog = compile_program(img, core, layer=12)
    mem = build_memory(img, prog)
    write_hidden(mem, prog, got["layers.11.residual"])
    trace = execute(prog.words, mem, core, Registers(pos=0, tokens=len(ids)))
    assert _compare(prog, trace, got, len(ids)) >= 20
    assert torch.equal(read_hidden(mem, prog, len(ids)), got["layers.12.residual"])


@pytest.mark.slow
def test_smollm2_whole_model_prefill_and_decode(smollm2, smollm2_decoder):
    """The whole SmolLM2 program over its 160 MiB image: a 6-token prefill and two
    decode steps, every output and the next tokens bit-exact (about 6 s a run)."""
    img, dec = smollm2, smollm2_decoder
    core = core_for(img.config)
    prog = compile_program(img, core)
    mem = build_memory(img, prog)
    state = dec.new_state()
    seq, pos = [1, 504, 3250, 282, 4910, 314], 0
    for T in (6, 1, 1):
        ids = seq[pos:pos + T]
        r, got = _golden_step(dec, ids, state)
        write_tokens(mem, prog, ids)
        trace = execute(prog.words, mem, core, Registers(pos=pos, tokens=T))
        _compare(prog, trace, got, T)
        assert read_next_tokens(mem, prog, T) == r.next_tokens().tolist()
        pos += T
        seq.append(int(r.next_tokens()[-1]))
