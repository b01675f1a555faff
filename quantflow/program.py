"""Compile a model image into the accelerator core's memory map and program
(docs/core.md; the ISA in golden.core_config, its executor golden.core).

    img  = CompiledImage.from_dir("build/compiled/smollm2-w4a8kv4-g64")
    core = core_for(img.config)                      # or any CoreConfig that fits
    prog = compile_program(img, core)                # the whole model; layer=i: one layer
    mem  = build_memory(img, prog)                   # image + KV cache + I/O + program
    write_tokens(mem, prog, ids)
    execute(prog.words, mem, core, Registers(pos=0, tokens=len(ids)))   # prefill
    read_next_tokens(mem, prog, len(ids))

Memory map (one flat byte space; every region REGION_ALIGN-aligned, every tensor
MEM_ALIGN-aligned):
  image    image.bin as quantflow.compile wrote it, at image_base
  kv       one region per (layer, KV head), golden.core_config.kv_layout for the
           model's max_context tokens, layer-major
  io       ids int32 [max_tokens] in; next int32 [max_tokens] out (ARGMAX);
           x_in, x_out int32 [max_tokens, hidden] (a layer program's LOAD / STORE);
           logits int32 [max_tokens, vocab] (LOGITS' accumulators)
  program  the instruction words, INSTR_BYTES each

One program serves prefill and every decode step: the block's tokens and its first
position are the run-time registers (golden.core_config.Registers), every address
and shape is in the words. Buffers are allocated by linear scan over the program's
values (an SFU op may write over the input it reads last; a LINEAR only over its
residual), so a layer needs five. The tiling of a linear onto the engine is the
hardware's (`linear_tiling` reports it); the compiler refuses what the engine,
the buffers, the SFU or the KV4 unit cannot hold.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from golden.core_config import (FLAG_RES, INSTR_BYTES, MEM_ALIGN, CoreConfig, ISAError, encode,
                                kv_region_bytes, words_to_bytes)
from golden.decoder_config import FRAC_SLOTS, DecoderConfig
from golden.mixpe_config import MIXPE_GROUP_RANGE
from golden.sfu import silu_table
from golden.sfu_config import SFUHWConfig, rms_eps, sqrt_k

from .compile import load_image
from .errors import QuantflowError

__all__ = ["REGION_ALIGN", "Region", "MemoryMap", "LinearTiling", "CoreProgram",
           "CompiledImage", "core_for", "sim_core_for", "check_core", "linear_tiling", "model_tiling",
           "memory_map", "compile_program", "build_memory", "write_tokens",
           "read_next_tokens", "read_logits", "write_hidden", "read_hidden"]

#: Regions start on a 4 KiB page, so the host can map each as its own buffer object.
REGION_ALIGN = 4096
#: KV4Config fields that shape the numbers (the others, lanes / max_t / heads, are the
#: unit's size: a core may be larger than the model needs).
_KV4_NUMERICS = ("head_dim", "x_bits", "logit_frac", "p_frac", "out_frac", "recip_bits",
                 "logit_bits", "rotate", "recent")
#: The instructions' trace names and buffers follow golden.decoder's trace names.
_QKV = ("q_proj", "k_proj", "v_proj")


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


# --------------------------------------------------------------------------- image
@dataclass(frozen=True)
class CompiledImage:
    """A model image: its DecoderConfig, tensors (checksums verified by
    quantflow.compile.load_image), each tensor's offset in image.bin, and the raw
    bytes."""
    config: DecoderConfig
    tensors: Mapping[str, torch.Tensor]
    offsets: Mapping[str, int]
    raw: bytes

    @classmethod
    def from_dir(cls, path: Path | str) -> "CompiledImage":
        """Load a compiled image directory (quantflow.compile), checksums verified."""
        d = Path(path)
        config, tensors = load_image(d)
        man = json.loads((d / "manifest.json").read_text())
        return cls(config=config, tensors=tensors,
                   offsets={n: e["offset"] for n, e in man["tensors"].items()},
                   raw=(d / "image.bin").read_bytes())

    def scalar(self, name: str, i: int = 0) -> int:
        """Element i of the flattened tensor `name`, as an int."""
        return int(self.tensors[name].flatten()[i])


# --------------------------------------------------------------------------- core fit
def core_for(decoder: DecoderConfig, **overrides: object) -> CoreConfig:
    """The default CoreConfig with the model's SFU and KV4 numerics (the formats a
    core is generated with), and `overrides`."""
    if not isinstance(decoder, DecoderConfig):
        raise TypeError(f"decoder must be a DecoderConfig, got {type(decoder).__name__}")
    base = CoreConfig()
    sfu = SFUHWConfig(**dataclasses.asdict(decoder.sfu), lanes=base.sfu.lanes,
                      max_k=base.sfu.max_k)
    return CoreConfig(**{"sfu": sfu, "kv4": decoder.kv4, **overrides})


def sim_core_for(decoder: DecoderConfig, **overrides: object) -> CoreConfig:
    """The core the co-simulation and the board flow's small builds use for a model:
    the image's numerics (core_for), one memory port of 32-byte beats (the RTL's one
    AXI read and one write master), buffers and vectors sized to the model's widest
    vector, a small engine (rows 4, cols 64) so that a layer simulates in seconds."""
    L = 16
    widest = max(decoder.hidden, decoder.intermediate, decoder.heads * decoder.head_dim)
    widest = -(-widest // L) * L
    sfu = SFUHWConfig(**dataclasses.asdict(decoder.sfu), lanes=L, max_k=widest)
    kw = dict(rows=4, cols=64, max_k=widest, buffers=6, max_tokens=8, buf_elems=widest,
              sfu=sfu, beat_bytes=32, mem_ports=1, mem_latency=20)
    kw.update(overrides)
    return core_for(decoder, **kw)


def check_core(core: CoreConfig, decoder: DecoderConfig) -> None:
    """QuantflowError naming the first thing `core` cannot run of the model `decoder`
    (formats, context, a linear's K or N, a buffer or SFU width)."""
    c, d = core, decoder
    why = None
    numerics = c.sfu.numerics()
    bad_kv = [f for f in _KV4_NUMERICS if getattr(c.kv4, f) != getattr(d.kv4, f)]
    linears = [(f"{lin}", *d.linear_shape(lin), d.group, d.w_bits)
               for lin in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj")]
    linears.append(("lm_head", d.vocab, d.hidden, d.head_group, d.head_bits))
    if numerics != d.sfu:
        why = (f"its SFU formats {d.sfu} differ from the core's {numerics}; generate the "
               f"core with the image's SFUConfig (core_for)")
    elif bad_kv:
        why = (f"its KV4 scheme differs from the core's KV4 unit in "
               + ", ".join(f"{f} ({getattr(d.kv4, f)} vs {getattr(c.kv4, f)})" for f in bad_kv)
               + "; generate the core with the image's KV4Config (core_for)")
    elif d.kv_groups > c.kv4.heads:
        why = (f"its {d.kv_groups} query heads per KV head exceed the KV4 unit's "
               f"kv4.heads={c.kv4.heads}")
    elif d.max_context > c.kv4.max_t:
        why = (f"its context of {d.max_context} tokens exceeds the KV4 unit's "
               f"kv4.max_t={c.kv4.max_t}; compile the image with a shorter --context or "
               f"generate a larger unit")
    for name, N, K, group, bits in linears:
        if why:
            break
        lo, hi = MIXPE_GROUP_RANGE
        if K > c.max_k:
            why = f"{name} has K={K} > the engine's max_k={c.max_k}"
        elif N > c.max_n:
            why = f"{name} has N={N} > the engine's max_n={c.max_n}"
        elif not lo <= group <= hi:
            why = f"{name} has group={group} outside the engine's [{lo}, {hi}]"
        elif bits > c.w_bits:
            why = f"{name} has {bits}-bit codes > the engine's w_bits={c.w_bits}"
    widths = (("hidden", d.hidden), ("intermediate", d.intermediate),
              ("heads * head_dim", d.heads * d.head_dim))
    for name, w in widths:
        if why:
            break
        if w > c.buf_elems:
            why = f"{name}={w} exceeds the buffers' buf_elems={c.buf_elems}"
        elif name != "heads * head_dim" and w > c.sfu.max_k:
            why = f"{name}={w} exceeds the SFU's vector buffer sfu.max_k={c.sfu.max_k}"
    if why:
        raise QuantflowError(f"the core {c.name()} cannot run this model: {why}")


# --------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class LinearTiling:
    """How one linear runs on the engine (docs/core.md): column tiles of `cols`
    outputs (outer), each over K in groups whose weights (cols x group codes and
    scales) are read once and applied to every row tile of `rows` tokens (inner),
    with T x cols int32 partial sums in the accumulator RAM. So the weights stream
    from memory exactly once per LINEAR whatever T."""
    name: str
    N: int
    K: int
    group: int
    rows: int
    cols: int

    @property
    def n_tiles(self) -> int:
        """Column tiles of cols output channels (the last may be partial)."""
        return -(-self.N // self.cols)

    @property
    def last_cols(self) -> int:
        """Output channels of the last column tile (cols when N is a multiple)."""
        return self.N - (self.n_tiles - 1) * self.cols

    @property
    def k_groups(self) -> int:
        """Quantization groups along K."""
        return self.K // self.group

    def m_tiles(self, T: int) -> int:
        """Row tiles of `rows` tokens that a T-token block takes."""
        return -(-T // self.rows)

    @property
    def weight_bytes(self) -> int:
        """Codes (one byte each in the image) and the s2 / z bytes per group."""
        return self.N * self.K + 2 * self.N * self.k_groups

    def utilisation(self, T: int) -> float:
        """Useful MACs / the array's MAC slots over the tiles of a T-token block."""
        return (T * self.N) / (self.m_tiles(T) * self.rows * self.n_tiles * self.cols)


def linear_tiling(core: CoreConfig, name: str, N: int, K: int, group: int) -> LinearTiling:
    """The tiling of one linear [N, K] on `core`'s rows x cols array."""
    return LinearTiling(name=name, N=N, K=K, group=group, rows=core.rows, cols=core.cols)


def model_tiling(core: CoreConfig, decoder: DecoderConfig) -> tuple[LinearTiling, ...]:
    """The tiling of every distinct linear of the model (a layer's seven, the LM head)."""
    out = [linear_tiling(core, lin, *decoder.linear_shape(lin), decoder.group)
           for lin in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj")]
    out.append(linear_tiling(core, "lm_head", decoder.vocab, decoder.hidden,
                             decoder.head_group))
    return tuple(out)


# --------------------------------------------------------------------------- memory map
@dataclass(frozen=True)
class Region:
    """A named memory region: [base, base + size) bytes."""
    name: str
    base: int
    size: int

    @property
    def end(self) -> int:
        """First byte after the region."""
        return self.base + self.size


@dataclass(frozen=True)
class MemoryMap:
    """Every region and I/O address of one compiled program (module docstring)."""
    image: Region
    kv: Region
    io: Region
    program: Region
    kv_head_bytes: int
    kv_heads: tuple            # kv_heads[layer][head] -> address of its cache region
    ids: int
    next: int
    x_in: int
    x_out: int
    logits: int

    @property
    def total(self) -> int:
        """Bytes of the whole memory: up to the end of the program region."""
        return self.program.end

    def regions(self) -> tuple[Region, ...]:
        """The image, KV, I/O and program regions, in address order."""
        return (self.image, self.kv, self.io, self.program)


def memory_map(core: CoreConfig, decoder: DecoderConfig, image_bytes: int, program_words: int,
               *, image_base: int = 0) -> MemoryMap:
    """The memory map of a program of `program_words` words over an image of
    `image_bytes` bytes placed at image_base (REGION_ALIGN-aligned)."""
    if image_base % REGION_ALIGN or image_base < 0:
        raise QuantflowError(f"image_base=0x{image_base:x} must be a non-negative multiple of "
                             f"0x{REGION_ALIGN:x}")
    d, T = decoder, core.max_tokens
    image = Region("image", image_base, image_bytes)
    head = kv_region_bytes(d.max_context, d.head_dim, d.kv4.recent)
    kv = Region("kv", _align(image.end, REGION_ALIGN), d.layers * d.kv_heads * head)
    heads = tuple(tuple(kv.base + (i * d.kv_heads + h) * head for h in range(d.kv_heads))
                  for i in range(d.layers))
    io, off = {}, _align(kv.end, REGION_ALIGN)
    base = off
    for name, nbytes in (("ids", 4 * T), ("next", 4 * T), ("x_in", 4 * T * d.hidden),
                         ("x_out", 4 * T * d.hidden), ("logits", 4 * T * d.vocab)):
        io[name] = off
        off = _align(off + nbytes, MEM_ALIGN)
    io_region = Region("io", base, off - base)
    program = Region("program", _align(io_region.end, REGION_ALIGN), program_words * INSTR_BYTES)
    if program.end > 1 << core.addr_bits:
        raise QuantflowError(f"the memory map needs {program.end} bytes, beyond the core's "
                             f"{core.addr_bits}-bit addresses")
    return MemoryMap(image=image, kv=kv, io=io_region, program=program, kv_head_bytes=head,
                     kv_heads=heads, **io)


# --------------------------------------------------------------------------- program
@dataclass(frozen=True)
class CoreProgram:
    """A compiled program: its words, one label per word, and per word the
    golden.decoder trace names of its outputs (output -> (name, (col_lo, col_hi) or
    None)): the mismatch locator's map from the core to the integer model. `buffers`
    maps each program value to its physical buffer; `tiling` every linear's."""
    words: tuple
    labels: tuple
    golden: tuple
    memory_map: MemoryMap
    core: CoreConfig
    decoder: DecoderConfig
    scope: str
    buffers: Mapping[str, int]
    buffers_used: int
    tiling: tuple

    def to_bytes(self) -> bytes:
        """The program as it sits in memory (golden.core_config.words_to_bytes)."""
        return words_to_bytes(self.words)

    def index(self, label: str) -> int:
        """Index of the instruction labelled `label`."""
        return self.labels.index(label)


@dataclass
class _Op:
    op: str
    label: str
    golden: dict
    fields: dict
    dst: str | None = None
    srcs: dict = dataclasses.field(default_factory=dict)   # field -> value
    inplace: tuple = ()                                     # src fields dst may overwrite


# Which inputs an op may overwrite with its output (docs/core.md, buffer model): the
# SFU's row-buffered and elementwise ops read a token's row before writing it; a
# LINEAR re-reads its A8 rows for every column tile, so only its residual; ATTEND
# reads later queries while it writes earlier outputs.
_INPLACE = {"RMSNORM": ("src",), "QUANT": ("src",), "ROPE": ("src",),
            "SWIGLU": ("src", "src2"), "ADD": ("src", "src2"), "LINEAR": ("src2",)}


class _Builder:
    def __init__(self, img: CompiledImage, core: CoreConfig, mm: MemoryMap, base: int):
        self.img, self.core, self.mm, self.base = img, core, mm, base
        self.d = img.config
        self.ops: list[_Op] = []
        self.count: dict[str, int] = {}

    def addr(self, tensor: str) -> int:
        return self.base + self.img.offsets[tensor]

    def value(self, name: str) -> str:
        self.count[name] = self.count.get(name, 0) + 1
        return f"{name}{self.count[name]}"

    def emit(self, op: str, label: str, golden: dict | None = None, *, dst=None, src=None,
             src2=None, **fields) -> str | None:
        srcs = {k: v for k, v in (("src", src), ("src2", src2)) if v is not None}
        self.ops.append(_Op(op, label, golden or {}, fields, dst, srcs, _INPLACE.get(op, ())))
        return dst

    # ----------------------------------------------------------------- pieces
    def linear(self, a: str, prefix: str, name: str, *, in_frac: int, out_frac: int,
               golden: dict, residual: str | None = None) -> str:
        N, K = self.d.linear_shape(name)
        dst = self.value("x" if residual else name)
        self.emit("LINEAR", prefix + "." + name, golden, dst=dst, src=a, src2=residual,
                  flags=FLAG_RES if residual else 0, n=N, k=K, group=self.d.group,
                  e=self.img.scalar(f"{prefix}.{name}.e"), in_frac=in_frac, out_frac=out_frac,
                  addr0=self.addr(f"{prefix}.{name}.q"), addr1=self.addr(f"{prefix}.{name}.s2"),
                  addr2=self.addr(f"{prefix}.{name}.z"), addr3=self.addr(f"{prefix}.{name}.S1"))
        return dst

    def norm(self, x: str, tensor: str, label: str) -> str:
        d, F = self.d, self.d.sfu.frac
        SK, es = sqrt_k(d.hidden)
        return self.emit("RMSNORM", label, {"out": (label, None)}, dst=self.value("h"), src=x,
                         n=d.hidden, e=self.img.scalar(f"{tensor}.e"),
                         E=rms_eps(d.rms_eps, d.hidden, F), SK=SK, es=es,
                         addr0=self.addr(f"{tensor}.w"))

    def quant(self, x: str, n: int, label: str, golden: str) -> str:
        return self.emit("QUANT", label, {"out": (golden, None)}, dst=self.value("a"), src=x, n=n)

    def layer(self, i: int, x: str) -> str:
        d, F, img = self.d, self.d.sfu.frac, self.img
        p = f"layers.{i}"
        fr = dict(zip(FRAC_SLOTS, (img.scalar(f"{p}.fracs", j) for j in range(len(FRAC_SLOTS)))))
        D, g = d.head_dim, d.kv_groups
        h = self.norm(x, f"{p}.input_norm", f"{p}.input_norm")
        a = self.quant(h, d.hidden, f"{p}.attn_quant", f"{p}.q_proj.a")
        qkv = {n: self.linear(a, p, n, in_frac=F, out_frac=fr[n],
                              golden={"acc": (f"{p}.{n}.acc", None), "out": (f"{p}.{n}", None)})
               for n in _QKV}
        rot = {}
        for n, heads, tag in (("q_proj", d.heads, "rope_q"), ("k_proj", d.kv_heads, "rope_k")):
            rot[n] = self.emit("ROPE", f"{p}.{tag}", {"out": (f"{p}.{tag}", None)},
                               dst=self.value(tag), src=qkv[n], heads=heads, ctx=d.max_context,
                               addr0=self.addr("rope.cos"), addr1=self.addr("rope.sin"))
        fk = [img.scalar(f"{p}.frac_k", h) for h in range(d.kv_heads)]
        fv = [img.scalar(f"{p}.frac_v", h) for h in range(d.kv_heads)]
        for h in range(d.kv_heads):
            self.emit("KV_APPEND", f"{p}.kv_append.{h}", src=rot["k_proj"], src2=qkv["v_proj"],
                      col=h * D, in_frac=fr["k_proj"], in_frac2=fr["v_proj"], frac_k=fk[h],
                      frac_v=fv[h], ctx=d.max_context, addr0=self.mm.kv_heads[i][h])
        # ATTEND reads the tokens the appends wrote: their writes must be complete
        self.emit("SYNC", f"{p}.kv_sync")
        att = self.value("attn")
        for h in range(d.kv_heads):
            cols = (h * g * D, (h + 1) * g * D)
            self.emit("ATTEND", f"{p}.attn.{h}", {"out": (f"{p}.attn", cols)}, dst=att,
                      src=rot["q_proj"], col=cols[0], heads=g, in_frac=fr["q_proj"],
                      frac_k=fk[h], frac_v=fv[h], out_frac=fr["attn"], ctx=d.max_context,
                      addr0=self.mm.kv_heads[i][h])
        a = self.quant(att, d.hidden, f"{p}.o_quant", f"{p}.o_proj.a")
        x = self.linear(a, p, "o_proj", in_frac=fr["attn"], out_frac=F, residual=x,
                        golden={"acc": (f"{p}.o_proj.acc", None),
                                "out": (f"{p}.attn_residual", None)})
        h = self.norm(x, f"{p}.post_norm", f"{p}.post_norm")
        a = self.quant(h, d.hidden, f"{p}.mlp_quant", f"{p}.gate_proj.a")
        gate = self.linear(a, p, "gate_proj", in_frac=F, out_frac=F,
                           golden={"acc": (f"{p}.gate_proj.acc", None),
                                   "out": (f"{p}.gate_proj", None)})
        up = self.linear(a, p, "up_proj", in_frac=F, out_frac=fr["up_proj"],
                         golden={"acc": (f"{p}.up_proj.acc", None), "out": (f"{p}.up_proj", None)})
        s = self.emit("SWIGLU", f"{p}.swiglu", {"out": (f"{p}.swiglu", None)},
                      dst=self.value("swiglu"), src=gate, src2=up, n=d.intermediate,
                      in_frac2=fr["up_proj"], out_frac=fr["swiglu"])
        a = self.quant(s, d.intermediate, f"{p}.down_quant", f"{p}.down_proj.a")
        return self.linear(a, p, "down_proj", in_frac=fr["swiglu"], out_frac=F, residual=x,
                           golden={"acc": (f"{p}.down_proj.acc", None),
                                   "out": (f"{p}.residual", None)})

    def model(self) -> None:
        d, F = self.d, self.d.sfu.frac
        x = self.emit("EMBED", "embed", {"out": ("embed", None)}, dst=self.value("x"),
                      n=d.hidden, group=d.embed_group, e=self.img.scalar("embed.e"), out_frac=F,
                      ctx=d.vocab, addr0=self.mm.ids, addr1=self.addr("embed.codes"),
                      addr2=self.addr("embed.S"))
        for i in range(d.layers):
            x = self.layer(i, x)
        h = self.norm(x, "norm", "norm")
        a = self.quant(h, d.hidden, "lm_head.quant", "lm_head.a")
        self.emit("LOGITS", "lm_head", {"acc": ("lm_head.acc", None)}, src=a, n=d.vocab,
                  k=d.hidden, group=d.head_group, addr0=self.addr("lm_head.q"),
                  addr1=self.addr("lm_head.s2"), addr2=self.addr("lm_head.z"),
                  addr3=self.mm.logits)
        # ARGMAX reads the accumulators LOGITS wrote
        self.emit("SYNC", "lm_head.sync")
        self.emit("ARGMAX", "next_token", {"out": ("next_tokens", None)}, n=d.vocab,
                  addr0=self.mm.logits, addr1=self.addr("lm_head.S1"), addr2=self.mm.next)
        self.emit("HALT", "halt")

    def one_layer(self, i: int) -> None:
        d = self.d
        x = self.emit("LOAD", "input", {"out": (f"layers.{i - 1}.residual" if i else "embed",
                                                None)},
                      dst=self.value("x"), n=d.hidden, addr0=self.mm.x_in)
        x = self.layer(i, x)
        self.emit("STORE", "output", {"out": (f"layers.{i}.residual", None)}, src=x,
                  n=d.hidden, addr0=self.mm.x_out)
        self.emit("HALT", "halt")


def _allocate(ops: list[_Op], buffers: int | None) -> tuple[dict, int]:
    """Linear scan: each value gets the lowest free buffer at its definition (or the
    buffer of an input the op may overwrite and reads for the last time); a buffer is
    freed after its value's last use. ATTEND's later heads write into the value the
    first one defined. Returns (value -> buffer, buffers used); QuantflowError when
    more than `buffers` are live at once."""
    last: dict[str, int] = {}
    for i, o in enumerate(ops):
        for v in o.srcs.values():
            last[v] = i
        if o.dst is not None:
            last[o.dst] = max(last.get(o.dst, i), i)
    where: dict[str, int] = {}
    free = list(range(buffers if buffers is not None else len(ops) + 1))
    peak = 0
    for i, o in enumerate(ops):
        phys = None
        if o.dst is not None:
            if o.dst in where:
                phys = where[o.dst]
            else:
                for key in o.inplace:
                    v = o.srcs.get(key)
                    if v is not None and last[v] == i:
                        phys = where[v]
                        break
                if phys is None:
                    if not free:
                        _, need = _allocate(ops, None)
                        raise QuantflowError(
                            f"the program needs {need} activation buffers at once (at "
                            f"{o.label}), the core has {buffers}; generate it with more")
                    phys = free.pop(0)
                where[o.dst] = phys
        peak = max(peak, len({where[v] for v in where if last[v] >= i}))
        # values read (or written and never read) for the last time here free their
        # buffer, unless the op's output now lives in it
        for v in set(o.srcs.values()) | ({o.dst} if o.dst is not None else set()):
            if last[v] == i and (v == o.dst or where[v] != phys):
                free.append(where[v])
                free.sort()
    return where, peak


def compile_program(image: CompiledImage | Path | str, core: CoreConfig, *,
                    layer: int | None = None, image_base: int = 0) -> CoreProgram:
    """The program (and memory map) of the whole model (layer=None: EMBED, every
    layer, the final norm, LOGITS, ARGMAX) or of one decoder layer (LOAD x_in, the
    layer, STORE x_out) for `core`. `image`: a CompiledImage or an image directory.
    QuantflowError for a model or config the core cannot run."""
    img = image if isinstance(image, CompiledImage) else CompiledImage.from_dir(image)
    if not isinstance(core, CoreConfig):
        raise TypeError(f"core must be a CoreConfig, got {type(core).__name__}")
    d = img.config
    check_core(core, d)
    if not torch.equal(img.tensors["sfu.sigmoid"].to(torch.int64), silu_table(core.sfu)):
        raise QuantflowError("the image's sigmoid table differs from the core SFU's ROM "
                             "(golden.sfu.silu_table of its SFUConfig); recompile the image")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)
                              or not 0 <= layer < d.layers):
        raise QuantflowError(f"layer must be an int in [0, {d.layers}), got {layer!r}")
    # the program region comes last, so the program's addresses do not depend on its size
    mm0 = memory_map(core, d, len(img.raw), 0, image_base=image_base)
    b = _Builder(img, core, mm0, image_base)
    if layer is None:
        b.model()
    else:
        b.one_layer(layer)
    where, used = _allocate(b.ops, core.buffers)
    words, labels, golden = [], [], []
    for o in b.ops:
        f = dict(o.fields)
        if o.dst is not None:
            f["dst"] = where[o.dst]
        for key, v in o.srcs.items():
            f[key] = where[v]
        try:
            words.append(encode(o.op, **f))
        except ISAError as e:
            raise QuantflowError(f"the core cannot run this model: {o.label} ({o.op}): "
                                 f"{e}") from None
        labels.append(o.label)
        golden.append(o.golden)
    mm = memory_map(core, d, len(img.raw), len(words), image_base=image_base)
    names = ("kv_heads", "ids", "next", "x_in", "x_out", "logits")
    assert all(getattr(mm, n) == getattr(mm0, n) for n in names)
    return CoreProgram(words=tuple(words), labels=tuple(labels), golden=tuple(golden),
                       memory_map=mm, core=core, decoder=d,
                       scope="model" if layer is None else f"layer {layer}",
                       buffers=where, buffers_used=used, tiling=model_tiling(core, d))


# --------------------------------------------------------------------------- memory
def build_memory(image: CompiledImage | Path | str, program: CoreProgram) -> bytearray:
    """The whole memory of a run: the image at its base, a zeroed KV cache and I/O
    region, the program's words. `image`: the CompiledImage (or directory) the
    program was compiled from."""
    img = image if isinstance(image, CompiledImage) else CompiledImage.from_dir(image)
    mm = program.memory_map
    if len(img.raw) != mm.image.size:
        raise QuantflowError(f"the image has {len(img.raw)} bytes, the program was compiled "
                             f"for one of {mm.image.size}; recompile the program")
    mem = bytearray(mm.total)
    mem[mm.image.base:mm.image.end] = img.raw
    mem[mm.program.base:mm.program.end] = program.to_bytes()
    return mem


def _rows(program: CoreProgram, T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= program.core.max_tokens:
        raise QuantflowError(f"a block holds 1..{program.core.max_tokens} tokens (the core's "
                             f"max_tokens), got {T!r}")
    return T


def write_tokens(memory: bytearray, program: CoreProgram,
                 ids: Sequence[int] | torch.Tensor | np.ndarray) -> None:
    """Token ids into the I/O region (EMBED reads them)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    _rows(program, len(ids))
    if ids.min() < 0 or ids.max() >= program.decoder.vocab:
        raise QuantflowError(f"token ids must lie in [0, {program.decoder.vocab})")
    a = program.memory_map.ids
    memory[a:a + 4 * len(ids)] = ids.astype("<i4").tobytes()


def read_next_tokens(memory: bytes | bytearray, program: CoreProgram, T: int) -> list[int]:
    """The ARGMAX results of a T-token block: the next token after each position."""
    a = program.memory_map.next
    return np.frombuffer(memory, "<i4", _rows(program, T), a).astype(np.int64).tolist()


def read_logits(memory: bytes | bytearray, program: CoreProgram, T: int) -> torch.Tensor:
    """LOGITS' int32 accumulators [T, vocab] (logits = acc * S1 * token scale)."""
    V = program.decoder.vocab
    a = program.memory_map.logits
    return torch.from_numpy(np.frombuffer(memory, "<i4", _rows(program, T) * V, a)
                            .astype(np.int64)).view(T, V)


def write_hidden(memory: bytearray, program: CoreProgram, x: torch.Tensor) -> None:
    """A layer program's input rows x [T, hidden] (X32) into x_in."""
    x = torch.as_tensor(x)
    H = program.decoder.hidden
    if x.dim() != 2 or x.shape[1] != H:
        raise QuantflowError(f"x must be [T, {H}], got {list(x.shape)}")
    _rows(program, x.shape[0])
    a = program.memory_map.x_in
    raw = x.to(torch.int64).numpy().astype("<i4").tobytes()
    memory[a:a + len(raw)] = raw


def read_hidden(memory: bytes | bytearray, program: CoreProgram, T: int) -> torch.Tensor:
    """A layer program's output rows [T, hidden] from x_out."""
    H = program.decoder.hidden
    a = program.memory_map.x_out
    return torch.from_numpy(np.frombuffer(memory, "<i4", _rows(program, T) * H, a)
                            .astype(np.int64)).view(T, H)
