"""Reference executor of the accelerator core's ISA (golden.core_config, docs/core.md)
and the core's analytic cycle model: the executable specification hdl.core is held to.

`execute(words, memory, config, registers)` decodes each instruction and runs it on
the flat memory image with the golden ops (golden.sfu; the exact linear of
golden.decoder, equal to golden.mixpe; golden.kv4_attention), reading weights,
scales, tables and the KV cache from the memory bytes at the instruction's
addresses, keeping the activation buffers on chip as the hardware does, and
returns every instruction's result (a `Step`). `first_mismatch` names the first
instruction, output, element and values where two traces differ: the RTL's
mismatch locator.

A bad program raises ProgramError naming the instruction index, its opcode and the
field (or register) at fault; the hardware sets its error status there instead of
wrapping or reading past a region. Checks the RTL makes: opcode, unused fields,
buffer indices and extents, K/N/heads/T against the configuration, address
alignment and range, positions against ctx, token ids against the vocabulary, the
int32 accumulator. Checks only this executor makes (a compiler bug, not a
hardware condition): a buffer read with the wrong kind (X32 vs A8, as its last
writer left it) or before any write in the run, and a memory read of bytes an
earlier instruction wrote with no SYNC between them.

`cycle_model(words, config, registers)`: per instruction, the cycles of its units
(linear engine, SFU lanes, KV4 lanes) against the cycles of its memory streams
(bytes / mem_bytes_per_cycle + latency), whichever bounds, plus issue.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np
import torch

from golden.core_config import (FLAG_RES, MEM_ALIGN, CoreConfig, Instr, ISAError,
                                Registers, decode, kv_layout, kv_region_bytes)
from golden.decoder import _chunk_k, linear_acc
from golden.kv4_attention import (KV4Cache, append_fixed, kv4_decode_many,
                                  logit_multiplier_fixed)
from golden.mixpe import dequant_w8
from golden.mixpe_config import MIXPE_GROUP_RANGE
from golden.sfu import (argmax, dequant, embed_rows, quant_a8, requant, residual_add, rmsnorm,
                        rope, swiglu)
from golden.sfu_config import X_BITS, rms_eps, sqrt_k
from golden.validate import expect_type

__all__ = ["ProgramError", "Step", "Mismatch", "execute", "first_mismatch", "InstrCycles",
           "ProgramCycles", "instruction_cycles", "cycle_model", "tokens_per_second",
           "ISSUE_CYCLES", "SFU_TOKEN_CYCLES", "SFU_PASSES", "KV4_QUERY_CYCLES",
           "KV4_APPEND_CYCLES", "ENGINE_FILL"]

_I32 = np.dtype("<i4")
_U32 = np.dtype("<u4")
_I16 = np.dtype("<i2")


class ProgramError(ValueError):
    """A program the core refuses: `index` (None for the registers), `op` and `field`
    name the instruction and what is wrong with it."""

    def __init__(self, index: int | None, op: str, field: str, message: str):
        where = "registers" if index is None else f"instruction {index} ({op})"
        super().__init__(f"{where}: {message}")
        self.index, self.op, self.field = index, op, field


@dataclass(frozen=True)
class Step:
    """One executed instruction and what it produced: outputs name -> int64 tensor
    (`out` is what it wrote to its buffer or memory; LINEAR and LOGITS add their
    int32 accumulator `acc`, ATTEND its INT8 queries `q8`, KV_APPEND the cache planes
    of its tokens)."""
    index: int
    instr: Instr
    outputs: Mapping[str, torch.Tensor]

    @property
    def op(self) -> str:
        """The instruction's mnemonic."""
        return self.instr.op


@dataclass(frozen=True)
class Mismatch:
    """Where two execution traces first differ: instruction index and op, output tensor name, element index, and the two values (None when the op or the tensor itself differs)."""
    index: int
    op: str
    tensor: str
    element: tuple
    expected: int | None
    got: int | None

    def __str__(self) -> str:
        return (f"instruction {self.index} ({self.op}) output {self.tensor!r} element "
                f"{list(self.element)}: expected {self.expected}, got {self.got}")


def first_mismatch(expected: Sequence[Step], got: Sequence[Step]) -> Mismatch | None:
    """The first instruction, output tensor and element (row-major) where two traces
    differ; None if they agree. A different opcode, a missing output or a shape
    difference is reported at element () with values None."""
    for a, b in zip(expected, got):
        if a.op != b.op:
            return Mismatch(a.index, a.op, "op", (), None, None)
        for name, ta in a.outputs.items():
            tb = b.outputs.get(name)
            if tb is None or tuple(tb.shape) != tuple(ta.shape):
                return Mismatch(a.index, a.op, name, (), None, None)
            diff = (ta != tb).nonzero()
            if diff.numel():
                el = tuple(int(i) for i in diff[0])
                return Mismatch(a.index, a.op, name, el, int(ta[el]), int(tb[el]))
    if len(expected) != len(got):
        i = min(len(expected), len(got))
        op = (expected if len(expected) > i else got)[i].op
        return Mismatch(i, op, "steps", (), len(expected), len(got))
    return None


# --------------------------------------------------------------------------- machine
@dataclass
class _Buffer:
    data: torch.Tensor          # [max_tokens, buf_elems] int64
    mn: torch.Tensor            # [max_tokens] token scales of an A8 buffer
    L: torch.Tensor
    kind: str | None = None     # "x32", "a8", or None before its first write
    writer: int = -1


class _Machine:
    def __init__(self, config: CoreConfig, memory, registers: Registers):
        self.c = config
        try:
            mem = np.frombuffer(memory, dtype=np.uint8)
        except TypeError:
            raise TypeError(f"memory must be a writable bytes-like object (bytearray, "
                            f"memoryview, numpy uint8 array), got "
                            f"{type(memory).__name__}") from None
        if not mem.flags.writeable:
            raise TypeError("memory is read-only; pass a bytearray (the core writes the KV "
                            "cache and the I/O region)")
        self.mem = mem
        self.regs = registers
        self.T = registers.tokens
        if self.T > config.max_tokens:
            raise ProgramError(None, "-", "tokens", f"tokens={self.T} exceeds the core's "
                               f"max_tokens={config.max_tokens}; run the block in chunks")
        shape = (config.max_tokens, config.buf_elems)
        self.bufs = [_Buffer(torch.zeros(shape, dtype=torch.int64),
                             torch.zeros(config.max_tokens, dtype=torch.int64),
                             torch.zeros(config.max_tokens, dtype=torch.int64))
                     for _ in range(config.buffers)]
        self.pending: list[tuple[int, int, int, str]] = []   # (lo, hi, writer, op)
        self.i, self.op = 0, "-"

    # ----------------------------------------------------------------- errors
    def err(self, field: str, message: str):
        raise ProgramError(self.i, self.op, field, message)

    # ----------------------------------------------------------------- memory
    def span(self, field: str, addr: int, nbytes: int, *, read: bool = True) -> None:
        """[addr, addr + nbytes) lies in memory (and, for a read, holds no write that
        a SYNC has not completed)."""
        if addr + nbytes > self.mem.size:
            self.err(field, f"{field}=0x{addr:x} + {nbytes} bytes runs past the end of "
                            f"memory (0x{self.mem.size:x} bytes)")
        if read:
            for lo, hi, j, op in self.pending:
                if lo < addr + nbytes and addr < hi:
                    self.err(field, f"reads bytes [0x{max(lo, addr):x}, "
                                    f"0x{min(hi, addr + nbytes):x}) that instruction {j} "
                                    f"({op}) wrote with no SYNC between them; insert a SYNC")

    def read(self, field: str, addr: int, dtype: np.dtype, count: int) -> np.ndarray:
        self.span(field, addr, count * dtype.itemsize)
        return np.frombuffer(self.mem, dtype=dtype, count=count, offset=addr).astype(np.int64)

    def write(self, field: str, addr: int, dtype: np.dtype, values: torch.Tensor) -> None:
        raw = values.numpy().astype(dtype).tobytes()
        self.span(field, addr, len(raw), read=False)
        self.mem[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self.pending.append((addr, addr + len(raw), self.i, self.op))

    # ----------------------------------------------------------------- buffers
    def buf(self, field: str, b: int) -> _Buffer:
        if b >= self.c.buffers:
            self.err(field, f"{field}={b} names no buffer; the core has "
                            f"{self.c.buffers} (0..{self.c.buffers - 1})")
        return self.bufs[b]

    def cols(self, field: str, col: int, n: int) -> None:
        if col + n > self.c.buf_elems:
            self.err(field, f"columns [{col}, {col + n}) exceed the buffers' "
                            f"buf_elems={self.c.buf_elems}")

    def get(self, field: str, b: int, col: int, n: int, kind: str) -> _Buffer:
        buf = self.buf(field, b)
        self.cols("n" if col == 0 else "col", col, n)
        if buf.kind != kind:
            held = "nothing written in this run" if buf.kind is None else \
                f"{buf.kind.upper()} (written by instruction {buf.writer})"
            self.err(field, f"{field}={b} holds {held}, this op reads {kind.upper()}")
        return buf

    def x32(self, field: str, b: int, col: int, n: int) -> torch.Tensor:
        return self.get(field, b, col, n, "x32").data[:self.T, col:col + n].clone()

    def put(self, b: int, col: int, y: torch.Tensor, kind: str = "x32",
            mn: torch.Tensor | None = None, L: torch.Tensor | None = None) -> None:
        buf = self.buf("dst", b)
        self.cols("n" if col == 0 else "col", col, y.shape[1])
        buf.data[:self.T, col:col + y.shape[1]] = y
        if mn is not None:
            buf.mn[:self.T], buf.L[:self.T] = mn, L
        buf.kind, buf.writer = kind, self.i

    # ----------------------------------------------------------------- checks
    def limit(self, field: str, value: int, hi: int, why: str) -> None:
        if value > hi:
            self.err(field, f"{field}={value} exceeds {hi} ({why})")

    def positive(self, field: str, value: int) -> None:
        if value < 1:
            self.err(field, f"{field}={value} must be >= 1")

    def positions(self, ctx: int, what: str) -> None:
        end = self.regs.pos + self.T
        if end > ctx:
            self.err("ctx", f"positions {self.regs.pos}..{end - 1} (registers pos="
                            f"{self.regs.pos}, tokens={self.T}) exceed the {ctx} rows of "
                            f"{what} (ctx); the context is full")

    def check_common(self, ins: Instr) -> None:
        for name in ("addr0", "addr1", "addr2", "addr3"):
            if name in ins.fields:
                a = ins[name]
                if a % MEM_ALIGN:
                    self.err(name, f"{name}=0x{a:x} is not {MEM_ALIGN}-byte aligned")
                if a >> self.c.addr_bits:
                    self.err(name, f"{name}=0x{a:x} exceeds the {self.c.addr_bits}-bit "
                                   f"address space")
        for name in ("dst", "src", "src2"):
            if name in ins.fields:
                self.buf(name, ins[name])
        if "n" in ins.fields:
            self.positive("n", ins["n"])

    def linear_shape(self, ins: Instr) -> tuple[int, int, int]:
        n, k, g = ins["n"], ins["k"], ins["group"]
        self.positive("k", k)
        self.limit("k", k, self.c.max_k, "the engine's max_k")
        self.limit("n", n, self.c.max_n, "the engine's max_n")
        lo, hi = MIXPE_GROUP_RANGE
        if not lo <= g <= hi or k % g:
            self.err("group", f"group={g} must lie in [{lo}, {hi}] and divide k={k}")
        return n, k, g

    def kv_region(self, ins: Instr) -> tuple[int, dict]:
        ctx, kv4 = ins["ctx"], self.c.kv4
        self.positive("ctx", ctx)
        self.limit("ctx", ctx, kv4.max_t, "the KV4 unit's max_t")
        self.positions(ctx, "the KV cache region")
        self.span("addr0", ins["addr0"], kv_region_bytes(ctx, kv4.head_dim, kv4.recent),
                  read=False)
        return ctx, kv_layout(ctx, kv4.head_dim, kv4.recent)

    # ----------------------------------------------------------------- run
    def run(self, words: Sequence[int]) -> list[Step]:
        steps: list[Step] = []
        for i, w in enumerate(words):
            self.i, self.op = i, "-"
            try:
                ins = decode(w)
            except ISAError as e:
                raise ProgramError(i, "-", e.field, str(e)) from None
            self.op = ins.op
            self.check_common(ins)
            try:
                out = getattr(self, f"op_{ins.op.lower()}")(ins)
            except (ProgramError, TypeError):
                raise
            except ValueError as e:           # a golden op refused its operands
                raise ProgramError(i, ins.op, "data", str(e)) from None
            steps.append(Step(i, ins, out))
            if ins.op == "HALT":
                return steps
        self.i, self.op = len(words), "-"
        self.err("op", f"the program ends after {len(words)} words without HALT; the "
                       f"sequencer would fetch whatever follows it")

    # ----------------------------------------------------------------- sequencer
    def op_halt(self, ins):
        self.pending.clear()
        return {}

    def op_sync(self, ins):
        self.pending.clear()
        return {}

    def op_load(self, ins):
        n = ins["n"]
        x = torch.from_numpy(self.read("addr0", ins["addr0"], _I32, self.T * n)).view(self.T, n)
        self.put(ins["dst"], 0, x)
        return {"out": x}

    def op_store(self, ins):
        x = self.x32("src", ins["src"], 0, ins["n"])
        self.write("addr0", ins["addr0"], _I32, x)
        return {"out": x}

    # ----------------------------------------------------------------- SFU
    def op_embed(self, ins):
        n, g, vocab = ins["n"], ins["group"], ins["ctx"]
        self.positive("group", g)
        if n % g:
            self.err("group", f"group={g} does not divide n={n}")
        self.positive("ctx", vocab)
        ids = self.read("addr0", ins["addr0"], _I32, self.T)
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            t = int(bad.nonzero()[0][0])
            self.err("ctx", f"token id {int(ids[t])} (token {t} at addr0) is outside the "
                            f"vocabulary [0, {vocab}) (ctx)")
        G = n // g
        self.span("addr1", ins["addr1"], vocab * n)
        self.span("addr2", ins["addr2"], vocab * G * 4)
        codes = np.frombuffer(self.mem, np.int8, vocab * n, ins["addr1"]).reshape(vocab, n)
        S = np.frombuffer(self.mem, _I32, vocab * G, ins["addr2"]).reshape(vocab, G)
        x = embed_rows(torch.from_numpy(codes[ids].astype(np.int64)),
                       torch.from_numpy(S[ids].astype(np.int64)), ins["e"],
                       out_frac=ins["out_frac"])
        self.put(ins["dst"], 0, x)
        return {"out": x}

    def op_rmsnorm(self, ins):
        n, F = ins["n"], self.c.sfu.frac
        self.limit("n", n, self.c.sfu.max_k, "the SFU's vector buffer, sfu.max_k")
        SK, es = sqrt_k(n)
        if (ins["SK"], ins["es"]) != (SK, es):
            field = "SK" if ins["SK"] != SK else "es"
            self.err(field, f"(SK, es) = ({ins['SK']}, {ins['es']}) is not sqrt({n}) = "
                            f"({SK}, {es}) (golden.sfu_config.sqrt_k(n))")
        # golden.sfu.rmsnorm takes eps as a float and rounds eps * n * 4**F to the
        # integer E; this float gives back E exactly (E < 2**52: the float's relative
        # error 2**-53 moves it by less than half a unit)
        eps = float(Fraction(ins["E"], n << (2 * F)))
        if rms_eps(eps, n, F) != ins["E"]:
            self.err("E", f"E={ins['E']} is not an eps the SFU represents")
        x = self.x32("src", ins["src"], 0, n)
        NW = torch.from_numpy(self.read("addr0", ins["addr0"], _I16, n))
        y = rmsnorm(x, NW, ins["e"], eps=eps, config=self.c.sfu)
        self.put(ins["dst"], 0, y)
        return {"out": y}

    def op_quant(self, ins):
        n = ins["n"]
        self.limit("n", n, self.c.sfu.max_k, "the SFU's vector buffer, sfu.max_k")
        a, mn, L = quant_a8(self.x32("src", ins["src"], 0, n))
        self.put(ins["dst"], 0, a, "a8", mn, L)
        return {"out": a, "mn": mn, "L": L}

    def op_rope(self, ins):
        H, ctx, D = ins["heads"], ins["ctx"], self.c.kv4.head_dim
        self.positive("heads", H)
        self.positive("ctx", ctx)
        self.positions(ctx, "the RoPE tables")
        half = D // 2
        tabs = []
        for f in ("addr0", "addr1"):
            self.span(f, ins[f], ctx * half * 2)
            tabs.append(torch.from_numpy(self.read(
                f, ins[f] + self.regs.pos * half * 2, _I16, self.T * half)).view(self.T, half))
        x = self.x32("src", ins["src"], 0, H * D).view(self.T, H, D).transpose(0, 1)
        y = rope(x, tabs[0], tabs[1], torch.arange(self.T)).transpose(0, 1).reshape(self.T, H * D)
        self.put(ins["dst"], 0, y)
        return {"out": y}

    def op_swiglu(self, ins):
        n = ins["n"]
        y = swiglu(self.x32("src", ins["src"], 0, n), self.x32("src2", ins["src2"], 0, n),
                   config=self.c.sfu, shift=self.c.sfu.frac + ins["in_frac2"] - ins["out_frac"])
        self.put(ins["dst"], 0, y)
        return {"out": y}

    def op_add(self, ins):
        n = ins["n"]
        y = residual_add(self.x32("src", ins["src"], 0, n), self.x32("src2", ins["src2"], 0, n))
        self.put(ins["dst"], 0, y)
        return {"out": y}

    def op_argmax(self, ins):
        n = ins["n"]
        self.limit("n", n, self.c.max_n, "the engine's max_n: ARGMAX reads LOGITS' rows")
        acc = torch.from_numpy(self.read("addr0", ins["addr0"], _I32, self.T * n)).view(self.T, n)
        S1 = torch.from_numpy(self.read("addr1", ins["addr1"], _I32, n))
        tok = argmax(acc * S1.unsqueeze(0))
        self.write("addr2", ins["addr2"], _I32, tok)
        return {"out": tok}

    # ----------------------------------------------------------------- linear engine
    def _acc(self, ins, n: int, k: int, g: int):
        buf = self.get("src", ins["src"], 0, k, "a8")
        a = buf.data[:self.T, :k]
        G = k // g
        q = self.read("addr0", ins["addr0"], np.dtype(np.uint8), n * k).reshape(n, k)
        s2 = self.read("addr1", ins["addr1"], np.dtype(np.uint8), n * G).reshape(n, G)
        z = self.read("addr2", ins["addr2"], np.dtype(np.uint8), n * G).reshape(n, G)
        w8 = dequant_w8(torch.from_numpy(q), torch.from_numpy(s2), torch.from_numpy(z), g)
        wmax = int(w8.abs().max()) if w8.numel() else 0
        acc = linear_acc(a, w8.to(torch.float32), _chunk_k(k, wmax))
        if acc.numel() and int(acc.abs().max()) >= 1 << (X_BITS - 1):
            el = tuple(int(j) for j in (acc.abs() >= 1 << (X_BITS - 1)).nonzero()[0])
            self.err("addr0", f"the int32 accumulator overflows at {list(el)} "
                              f"(acc = {int(acc[el])}); the weights at addr0..addr2 break "
                              f"the INT8 reconstruction bound")
        return acc, buf

    def op_linear(self, ins):
        n, k, g = self.linear_shape(ins)
        if ins["flags"] & ~FLAG_RES:
            self.err("flags", f"flags=0x{ins['flags']:x} sets bits LINEAR does not define "
                              f"(FLAG_RES = {FLAG_RES})")
        res = bool(ins["flags"] & FLAG_RES)
        if not res and ins["src2"]:
            self.err("src2", f"src2={ins['src2']} without FLAG_RES; set the flag or leave "
                             f"src2 = 0")
        if ins["dst"] == ins["src"]:
            self.err("dst", f"dst = src = {ins['dst']}: the engine re-reads the A8 rows for "
                            f"every column tile while it writes dst")
        self.cols("n", 0, n)
        acc, buf = self._acc(ins, n, k, g)
        S1 = torch.from_numpy(self.read("addr3", ins["addr3"], _I32, n))
        y = dequant(acc, S1, ins["e"], buf.mn[:self.T], buf.L[:self.T],
                    in_frac=ins["in_frac"], out_frac=ins["out_frac"])
        if res:
            y = residual_add(self.x32("src2", ins["src2"], 0, n), y)
        self.put(ins["dst"], 0, y)
        return {"acc": acc, "out": y}

    def op_logits(self, ins):
        n, k, g = self.linear_shape(ins)
        acc, _ = self._acc(ins, n, k, g)
        self.write("addr3", ins["addr3"], _I32, acc)
        return {"acc": acc}

    # ----------------------------------------------------------------- KV4 unit
    def op_kv_append(self, ins):
        kv4, D, col = self.c.kv4, self.c.kv4.head_dim, ins["col"]
        ctx, lay = self.kv_region(ins)
        Xk = requant(self.x32("src", ins["src"], col, D), ins["in_frac"], ins["frac_k"],
                     kv4.x_bits)
        Xv = requant(self.x32("src2", ins["src2"], col, D), ins["in_frac2"], ins["frac_v"],
                     kv4.x_bits)
        new = append_fixed(Xk, Xv, kv4, frac_k=ins["frac_k"], frac_v=ins["frac_v"])
        planes = {"k4": _pack4(new.kcodes), "v4": _pack4(new.vcodes), "ks": new.ks,
                  "vs": new.vs, "kz": new.kz, "vz": new.vz, "k8": new.kcodes8,
                  "v8": new.vcodes8, "kz8": new.kz8, "vz8": new.vz8}
        out = {}
        for name, (off, per, _) in lay.items():
            v = planes[name]
            self.write("addr0", ins["addr0"] + off + self.regs.pos * per,
                       _U32 if name in ("ks", "vs") else np.dtype(np.uint8), v)
            out[name] = v
        return out

    def _cache(self, ins, lay: dict, T: int) -> KV4Cache:
        """The first T tokens of the cache region at addr0 as golden's KV4Cache."""
        kv4, D = self.c.kv4, self.c.kv4.head_dim
        base = ins["addr0"]

        def plane(name, dtype, width):
            off, per, _ = lay[name]
            v = self.read("addr0", base + off, dtype, T * per)
            return torch.from_numpy(v).view(T, width) if width else torch.from_numpy(v)

        u8 = np.dtype(np.uint8)
        p = {"kcodes": _unpack4(plane("k4", u8, D // 2)), "vcodes": _unpack4(plane("v4", u8, D // 2)),
             "ks": plane("ks", _U32, 0), "vs": plane("vs", _U32, 0),
             "kz": plane("kz", u8, 0), "vz": plane("vz", u8, 0)}
        if kv4.recent:
            p.update(kcodes8=plane("k8", u8, D), vcodes8=plane("v8", u8, D),
                     kz8=plane("kz8", u8, 0), vz8=plane("vz8", u8, 0))
        else:          # no 8-bit planes: -1 marks codes the cache does not keep
            none = torch.full((T, D), -1, dtype=torch.int64)
            p.update(kcodes8=none, vcodes8=none.clone(),
                     kz8=torch.full((T,), -1, dtype=torch.int64),
                     vz8=torch.full((T,), -1, dtype=torch.int64))
        return KV4Cache(**p, frac_k=ins["frac_k"], frac_v=ins["frac_v"], rotated=kv4.rotate)

    def op_attend(self, ins):
        H, col = ins["heads"], ins["col"]
        self.positive("heads", H)
        self.limit("heads", H, self.c.kv4.heads, "the KV4 unit's query heads, kv4.heads")
        if ins["dst"] == ins["src"]:
            self.err("dst", f"dst = src = {ins['dst']}: the unit writes outputs while later "
                            f"queries of the block are still to be read")
        # the unit's numerics do not depend on how many of its heads a call uses
        kv4 = dataclasses.replace(self.c.kv4, heads=H)
        D, T, pos = kv4.head_dim, self.T, self.regs.pos
        ctx, lay = self.kv_region(ins)
        q = self.x32("src", ins["src"], col, H * D).view(T, H, D)
        q8, mn, L = quant_a8(q)
        C, lsh = logit_multiplier_fixed(mn, L, in_frac=ins["in_frac"], frac_k=ins["frac_k"],
                                        config=kv4)
        cache = self._cache(ins, lay, pos + T)
        out = kv4_decode_many(q8, C, lsh, cache, torch.arange(pos + 1, pos + T + 1), kv4)
        y = requant(out, ins["frac_v"] + kv4.out_frac, ins["out_frac"], X_BITS).reshape(T, H * D)
        self.put(ins["dst"], col, y)
        return {"q8": q8.reshape(T, H * D), "out": y}


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """[T, D] 4-bit codes -> [T, D/2] bytes, element 2j in the low nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _unpack4(b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(b.shape[0], 2 * b.shape[1], dtype=torch.int64)
    out[:, 0::2], out[:, 1::2] = b & 15, b >> 4
    return out


def execute(program_words: Sequence[int], memory: bytearray | memoryview, config: CoreConfig,
            registers: Registers) -> list[Step]:
    """Run a program (a sequence of INSTR_BITS-bit ints) on `memory` (a writable
    bytes-like object: the flat memory holding the model image, the KV cache, the I/O
    region) with the run-time `registers`, up to and including its HALT. Returns one
    Step per executed instruction; `memory` holds every write (KV cache, I/O) after
    it. ProgramError (a ValueError) for a bad program, naming instruction and field."""
    expect_type("config", config, CoreConfig)
    expect_type("registers", registers, Registers)
    return _Machine(config, memory, registers).run(list(program_words))


# --------------------------------------------------------------------------- cycle model
#: Decode and dispatch of one instruction; the sequencer prefetches the next word
#: while the current one runs, so fetch adds nothing.
ISSUE_CYCLES = 2
#: Per token (buffered SFU ops) or per instruction (streaming ones): the scalar work
#: between a token's passes (quant_a8's MANT_BITS + 1-step divider, rmsnorm's gain
#: by table and Newton steps) and the pipeline's fill. hdl.sfu's block needs 25 at
#: most (tests hold the core's target at or above hdl.sfu.cycle_model).
SFU_TOKEN_CYCLES = 32
#: Reads of each token's vector by the SFU: rmsnorm's max|x|, sum of squares and
#: outputs; quant_a8's max|x| and codes; rope's two halves of each head.
SFU_PASSES = {"RMSNORM": 3, "QUANT": 2, "ROPE": 2}
#: Per query of an ATTEND besides its K/V stream (kv4 beats): the query's beats in
#: and its outputs through the normaliser (4 beats per head-chunk), the reciprocal
#: (recip_width) and this fixed part for the pipeline (hdl.kv4_attention's K_LATENCY
#: and control; tests hold the target at or above hdl.kv4_attention.cycle_model).
KV4_QUERY_CYCLES = 16
#: Per appended token besides 8 cycles per chunk (buffer in, min/max, the shared
#: lane dividers, codes out) and the butterfly's log2 D stages.
KV4_APPEND_CYCLES = 8
#: The linear engine's fill per column tile: the DQ lanes' walk (at most a group)
#: plus the rows' drain plus this (hdl.mixpe's PIPELINE_LATENCY and the output
#: bank).
ENGINE_FILL = 8


@dataclass(frozen=True)
class InstrCycles:
    """One instruction's cycle budget: bytes its memory streams move, the cycles
    they take (bytes / mem_bytes_per_cycle, plus the read latency once), the cycles
    of its compute units, and `cycles` = ISSUE_CYCLES + max of the two."""
    index: int
    op: str
    mem_bytes: int
    mem_cycles: int
    compute_cycles: int
    cycles: int

    @property
    def bound(self) -> str:
        """Which side sets the cycles ("compute" on a tie: HALT, zero-byte ops)."""
        return "memory" if self.mem_cycles > self.compute_cycles else "compute"


@dataclass(frozen=True)
class ProgramCycles:
    """Cycle-model totals of one program: one InstrCycles per executed instruction and their sum."""
    steps: tuple
    total: int

    def by_op(self) -> dict[str, int]:
        """Cycles summed per opcode mnemonic."""
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.op] = out.get(s.op, 0) + s.cycles
        return out

    def by_bound(self) -> dict[str, int]:
        """Cycles summed by what bounds each step, "memory" or "compute"."""
        out = {"memory": 0, "compute": 0}
        for s in self.steps:
            out[s.bound] += s.cycles
        return out

    @property
    def mem_bytes(self) -> int:
        """Bytes the whole program moves to and from memory."""
        return sum(s.mem_bytes for s in self.steps)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _attend_work(config: CoreConfig, ins: Instr, regs: Registers) -> tuple[int, int]:
    """(bytes, cycles) of an ATTEND: each query t streams tokens 0..pos+t of the
    cache (4-bit planes, scales, zeros; the 8-bit planes for its recent window)."""
    kv4 = config.kv4
    D, H = kv4.head_dim, ins["heads"]
    tok4 = 2 * (D // 2 + 4 + 1)
    tok8 = 2 * (D + 1)
    chunks = kv4.chunks
    per_query = (H * chunks * 4 + kv4.recip_width + KV4_QUERY_CYCLES
                 + (H * (kv4.log2_d + 2) if kv4.rotate else 0))
    nbytes = cycles = 0
    for t in range(regs.tokens):
        Tq = regs.pos + t + 1
        R = kv4.recent_tokens(Tq)
        nbytes += Tq * tok4 + R * tok8
        cycles += (Tq + R) * chunks + per_query
    return nbytes, cycles


def instruction_cycles(ins: Instr, config: CoreConfig, registers: Registers,
                       index: int = 0) -> InstrCycles:
    """The analytic cycles of one instruction (module docstring, docs/core.md)."""
    c, T = config, registers.tokens
    op, lanes = ins.op, config.sfu.lanes
    nbytes = compute = 0
    n = ins.fields.get("n", 0)
    beats = _ceil(n, lanes)
    if op in ("LOAD", "STORE"):
        nbytes, compute = T * n * 4, T * beats + SFU_TOKEN_CYCLES
    elif op == "EMBED":
        nbytes = T * 4 + T * (n + n // ins["group"] * 4)
        compute = T * beats + SFU_TOKEN_CYCLES
    elif op in SFU_PASSES:
        width = ins["heads"] * c.kv4.head_dim if op == "ROPE" else n
        # NW int16 [n]; RoPE's cos and sin rows (int16 [D/2] per position, shared by
        # every head)
        nbytes = 2 * n if op == "RMSNORM" else (2 * T * c.kv4.head_dim if op == "ROPE" else 0)
        compute = T * (SFU_PASSES[op] * _ceil(width, lanes) + SFU_TOKEN_CYCLES)
    elif op in ("SWIGLU", "ADD"):
        compute = T * beats + SFU_TOKEN_CYCLES
    elif op == "ARGMAX":
        nbytes, compute = T * n * 4 + n * 4 + T * 4, T * beats + SFU_TOKEN_CYCLES
    elif op in ("LINEAR", "LOGITS"):
        k, g = ins["k"], ins["group"]
        nbytes = n * k + 2 * n * (k // g) + (4 * n if op == "LINEAR" else 4 * T * n)
        tiles = _ceil(T, c.rows) * _ceil(n, c.cols)
        fill = g + c.rows + ENGINE_FILL
        compute = tiles * max(k, fill) + fill
        if op == "LINEAR":          # the fused dequant streams the results through the SFU
            compute = max(compute, T * beats + SFU_TOKEN_CYCLES)
    elif op == "KV_APPEND":
        kv4 = c.kv4
        per = 2 * (kv4.head_dim // 2 + 4 + 1) + (2 * (kv4.head_dim + 1) if kv4.recent else 0)
        nbytes = T * per
        compute = T * (8 * kv4.chunks + (kv4.log2_d if kv4.rotate else 0) + KV4_APPEND_CYCLES)
    elif op == "ATTEND":
        nbytes, compute = _attend_work(c, ins, registers)
    elif op == "SYNC":
        compute = c.mem_latency           # the last write's response
    mem = _ceil(nbytes, c.mem_bytes_per_cycle) + (c.mem_latency if nbytes else 0)
    return InstrCycles(index, op, nbytes, mem, compute, ISSUE_CYCLES + max(mem, compute))


def cycle_model(program_words: Sequence[int], config: CoreConfig,
                registers: Registers) -> ProgramCycles:
    """Cycles of one program run, instruction by instruction, up to its HALT: the
    instructions run one after another (the target hdl.core is held to)."""
    expect_type("config", config, CoreConfig)
    expect_type("registers", registers, Registers)
    steps = []
    for i, w in enumerate(program_words):
        try:
            ins = decode(w)
        except ISAError as e:
            raise ProgramError(i, "-", e.field, str(e)) from None
        steps.append(instruction_cycles(ins, config, registers, i))
        if ins.op == "HALT":
            break
    return ProgramCycles(tuple(steps), sum(s.cycles for s in steps))


def tokens_per_second(cycles: int, tokens: int, clock_hz: float) -> float:
    """Tokens a second at `clock_hz` for a run of `cycles` that produces `tokens`."""
    if cycles <= 0 or tokens <= 0 or not math.isfinite(clock_hz) or clock_hz <= 0:
        raise ValueError(f"cycles, tokens and clock_hz must be positive, got {cycles}, "
                         f"{tokens}, {clock_hz}")
    return tokens * clock_hz / cycles
