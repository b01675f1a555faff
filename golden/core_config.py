"""The accelerator core (DESIGN §9, docs/core.md): its generation-time parameters
(`CoreConfig`), its instruction set (opcodes, one 512-bit word layout, encode /
decode on plain Python ints), its run-time registers and the KV4 cache's memory
layout. golden.core executes the ISA; quantflow.program compiles a model image into
it; hdl.core will implement it.

Standard library only, so that `hdl` reads the ISA without torch.

Instruction word: INSTR_BITS = 512 bits (one 64-byte line: the model image's
alignment and one beat of a 512-bit AXI bus), little-endian in memory. Every field
has one bit range for every opcode (FIELDS); an opcode uses a subset (OPS[op].fields)
and every other field must be zero, so a zeroed or mis-encoded word is refused
instead of running. Addresses are 64-bit byte addresses into one flat memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple

from golden.kv4_attention_config import KV4Config
from golden.mixpe_config import MIXPE_GROUP_RANGE, MIXPE_MAX_K, MIXPE_WEIGHT_BITS
from golden.sfu_config import SFUHWConfig
from golden.validate import check_choice, check_counts, check_int, check_pow2, expect_type

__all__ = ["INSTR_BITS", "INSTR_BYTES", "MEM_ALIGN", "FLAG_RES", "Field", "FIELDS", "OpSpec",
           "OPS", "OPCODES", "UNITS", "ISAError", "Instr", "encode", "decode", "words_to_bytes",
           "bytes_to_words", "MAX_BEAT_BYTES", "MAX_MEM_PORTS", "CoreConfig", "Registers",
           "KV_PLANES", "KV_PLANES_RECENT", "kv_layout", "kv_region_bytes"]

#: One instruction: 512 bits = 64 bytes (module docstring).
INSTR_BITS = 512
INSTR_BYTES = INSTR_BITS // 8
#: Every address field is a multiple of this: the model image's tensor alignment
#: (quantflow.compile.ALIGN) and one AXI burst line, so an address generator never
#: splits a beat. Rows inside a tensor (an embedding row, a cache token) are not.
MEM_ALIGN = 64
#: LINEAR's flags: RES adds the src2 buffer to the dequantized output (the fused
#: residual add of o_proj and down_proj).
FLAG_RES = 1


class Field(NamedTuple):
    """One instruction field: bits [lo, lo + width), two's complement if signed."""
    lo: int
    width: int
    signed: bool
    doc: str

    @property
    def min(self) -> int:
        """Smallest value the field holds (two's complement when signed)."""
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        """Largest value the field holds."""
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


def _fields(*rows) -> Mapping[str, Field]:
    out, lo = {}, 0
    for name, width, signed, doc in rows:
        if name is not None:
            out[name] = Field(lo, width, signed, doc)
        lo += width
    assert lo == INSTR_BITS, lo
    return MappingProxyType(out)


def _family(width: int, signed: bool, **docs: str) -> tuple:
    """The rows of fields that share one width and signedness, in order: the
    buffer selectors (CoreConfig bounds `buffers` by dst's), the fraction fields and
    the addresses (`addr_bits` bounded by addr0's)."""
    return tuple((name, width, signed, doc) for name, doc in docs.items())


_ADDRS = ("addr0", "addr1", "addr2", "addr3")
#: The field map, low bits first (a None row is reserved: must be zero).
FIELDS = _fields(
    ("op", 8, False, "opcode (OPCODES); 0 is no opcode, so zeroed memory traps"),
    ("flags", 8, False, "LINEAR: FLAG_RES (add src2)"),
    *_family(4, False, dst="destination buffer", src="source buffer",
             src2="second source buffer (SwiGLU's up, ADD's addend, LINEAR's residual, "
                  "KV_APPEND's V)"),
    (None, 4, False, "reserved"),
    ("n", 20, False, "elements per token written (a linear's N, a vector's length)"),
    ("k", 20, False, "a linear's reduction length K"),
    ("group", 9, False, "QoQ group of a linear / embedding group"),
    ("heads", 5, False, "heads of D = kv4.head_dim elements (ROPE, ATTEND)"),
    ("col", 16, False, "first buffer column (element) of a KV head's slice"),
    ("e", 12, True, "shift e of S1 (LINEAR), the embedding's e, RMSNorm's e_w"),
    *_family(8, True, in_frac="fraction bits of src (X32)",
             in_frac2="fraction bits of src2 (KV_APPEND's V, SWIGLU's up)",
             out_frac="fraction bits of the result (X32)",
             frac_k="the KV4 unit's K input fraction bits",
             frac_v="the KV4 unit's V input fraction bits"),
    ("ctx", 20, False, "rows of the table or cache at addr0/addr1: positions (ROPE, "
                       "KV_APPEND, ATTEND) or the vocabulary (EMBED)"),
    ("E", 52, False, "RMSNorm's eps in sum-of-squares units (golden.sfu_config.rms_eps)"),
    ("SK", 24, False, "RMSNorm's sqrt(K) mantissa (golden.sfu_config.sqrt_k)"),
    ("es", 6, True, "RMSNorm's sqrt(K) exponent"),
    *_family(64, False, **dict.fromkeys(_ADDRS, "byte address")),
)

#: Execution units by the opcode's high nibble: the sequencer dispatches on it.
UNITS = MappingProxyType({0: "sequencer", 1: "sfu", 2: "linear", 3: "kv4"})


class OpSpec(NamedTuple):
    """One opcode: its code, the fields it uses (all others must be zero), and what
    it reads and writes (T = the tokens register, D = kv4.head_dim, g = heads)."""
    code: int
    fields: tuple
    reads: str
    writes: str

    @property
    def unit(self) -> str:
        """The execution unit that runs the opcode (from its high nibble)."""
        return UNITS[self.code >> 4]


OPS = MappingProxyType({
    "HALT": OpSpec(0x01, (), "-", "done (after every outstanding write)"),
    "SYNC": OpSpec(0x02, (), "-", "waits until every earlier memory write is complete"),
    "LOAD": OpSpec(0x03, ("dst", "n", "addr0"),
                   "int32 [T, n] at addr0", "X32 dst[:T, :n]"),
    "STORE": OpSpec(0x04, ("src", "n", "addr0"),
                    "X32 src[:T, :n]", "int32 [T, n] at addr0"),
    "EMBED": OpSpec(0x10, ("dst", "n", "group", "e", "out_frac", "ctx", "addr0", "addr1",
                           "addr2"),
                    "token ids int32 [T] at addr0; rows of the INT8 table [ctx, n] at addr1 "
                    "and its scales int32 [ctx, n/group] at addr2",
                    "X32 dst[:T, :n] (golden.sfu.embed_rows)"),
    "RMSNORM": OpSpec(0x11, ("dst", "src", "n", "e", "E", "SK", "es", "addr0"),
                      "X32 src[:T, :n]; NW int16 [n] at addr0",
                      "X32 dst[:T, :n] (golden.sfu.rmsnorm)"),
    "QUANT": OpSpec(0x12, ("dst", "src", "n"), "X32 src[:T, :n]",
                    "A8 dst[:T, :n] and its token scales (mn, L) (golden.sfu.quant_a8)"),
    "ROPE": OpSpec(0x13, ("dst", "src", "heads", "ctx", "addr0", "addr1"),
                   "X32 src[:T, :g D]; cos, sin int16 [ctx, D/2] rows pos..pos+T-1 at "
                   "addr0, addr1", "X32 dst[:T, :g D] (golden.sfu.rope)"),
    "SWIGLU": OpSpec(0x14, ("dst", "src", "src2", "n", "in_frac2", "out_frac"),
                     "X32 gate src (at sfu.frac: the sigmoid table's units), up src2 "
                     "(at in_frac2) [:T, :n]",
                     "X32 dst[:T, :n] at out_frac (golden.sfu.swiglu, shift = sfu.frac + "
                     "in_frac2 - out_frac; the sigmoid table is a ROM)"),
    "ADD": OpSpec(0x15, ("dst", "src", "src2", "n"), "X32 src, src2 [:T, :n]",
                  "X32 dst[:T, :n] = sat32(src + src2)"),
    "ARGMAX": OpSpec(0x16, ("n", "addr0", "addr1", "addr2"),
                     "int32 acc [T, n] at addr0; S1 int32 [n] at addr1",
                     "int32 [T] at addr2: argmax_j acc[t, j] * S1[j], lowest j on ties"),
    "LINEAR": OpSpec(0x20, ("flags", "dst", "src", "src2", "n", "k", "group", "e", "in_frac",
                            "out_frac", "addr0", "addr1", "addr2", "addr3"),
                     "A8 src[:T, :k] + token scales; codes uint8 [n, k] at addr0, s2 and z "
                     "uint8 [n, k/group] at addr1, addr2, S1 int32 [n] at addr3; with "
                     "FLAG_RES X32 src2[:T, :n]",
                     "X32 dst[:T, :n] = dequant(a . w8) (+ src2)"),
    "LOGITS": OpSpec(0x21, ("src", "n", "k", "group", "addr0", "addr1", "addr2", "addr3"),
                     "A8 src[:T, :k]; codes, s2, z at addr0..addr2 (as LINEAR)",
                     "int32 acc [T, n] at addr3 (no dequant: ARGMAX and the host read it)"),
    "KV_APPEND": OpSpec(0x30, ("src", "src2", "col", "in_frac", "in_frac2", "frac_k",
                               "frac_v", "ctx", "addr0"),
                        "X32 K src[:T, col:col+D], V src2[:T, col:col+D]",
                        "tokens pos..pos+T-1 of the KV head's cache region (kv_layout(ctx)) "
                        "at addr0 (golden.kv4_attention.append_fixed)"),
    "ATTEND": OpSpec(0x31, ("dst", "src", "col", "heads", "in_frac", "frac_k", "frac_v",
                            "out_frac", "ctx", "addr0"),
                     "X32 queries src[:T, col:col+g D]; tokens 0..pos+t of the cache at addr0 "
                     "(query t)", "X32 dst[:T, col:col+g D] (kv4_decode_many, requant)"),
})
OPCODES = MappingProxyType({spec.code: name for name, spec in OPS.items()})
assert len(OPCODES) == len(OPS)
for _spec in OPS.values():
    assert set(_spec.fields) <= set(FIELDS) and "op" not in _spec.fields


class ISAError(ValueError):
    """A word or field the ISA cannot hold; `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Instr:
    """One decoded instruction: the opcode's name and every field it uses (ints)."""
    op: str
    fields: Mapping[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    @property
    def spec(self) -> OpSpec:
        """The OpSpec of this instruction's opcode."""
        return OPS[self.op]


def _get(word: int, f: Field) -> int:
    v = (word >> f.lo) & ((1 << f.width) - 1)
    return v - (1 << f.width) if f.signed and v >> (f.width - 1) else v


def encode(op: str, **fields: int) -> int:
    """The word of `op` with `fields` (others zero). ISAError naming the field for a
    field the opcode does not use, a non-int, or a value outside the field's bits."""
    if op not in OPS:
        raise ISAError("op", f"unknown opcode {op!r}; one of {sorted(OPS)}")
    spec = OPS[op]
    word = spec.code
    for name, v in fields.items():
        if name not in spec.fields:
            raise ISAError(name, f"{op} does not use field {name!r}; it takes "
                                 f"{', '.join(spec.fields) or 'no fields'}")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ISAError(name, f"{op} field {name} must be an int, got {v!r}")
        f = FIELDS[name]
        if not f.min <= v <= f.max:
            raise ISAError(name, f"{op} field {name}={v} does not fit its {f.width}-bit "
                                 f"{'signed' if f.signed else 'unsigned'} range "
                                 f"[{f.min}, {f.max}]")
        word |= (v & ((1 << f.width) - 1)) << f.lo
    return word


def decode(word: int) -> Instr:
    """The Instr of a 512-bit word. ISAError for an unknown opcode or a nonzero field
    (or reserved bit) the opcode does not use."""
    if isinstance(word, bool) or not isinstance(word, int) or word < 0 or word >> INSTR_BITS:
        raise ISAError("op", f"an instruction is an int in [0, 2**{INSTR_BITS}), got {word!r}")
    code = _get(word, FIELDS["op"])
    if code not in OPCODES:
        raise ISAError("op", f"unknown opcode 0x{code:02x}; the ISA has "
                             f"{', '.join(f'{n}=0x{s.code:02x}' for n, s in OPS.items())}")
    name = OPCODES[code]
    used = OPS[name].fields
    rest = word
    for fname, f in FIELDS.items():
        if fname in used or fname == "op":
            rest &= ~(((1 << f.width) - 1) << f.lo)
    if rest:
        bad = [fname for fname, f in FIELDS.items() if _get(rest, f)]
        field = bad[0] if bad else "reserved"
        raise ISAError(field, f"{name} does not use field {field!r} but the word sets it "
                              f"(bits {hex(rest)}); unused fields and reserved bits must be 0")
    return Instr(name, MappingProxyType({n: _get(word, FIELDS[n]) for n in used}))


def words_to_bytes(words: Iterable[int]) -> bytes:
    """The program as it sits in memory: INSTR_BYTES per word, little-endian."""
    return b"".join(int(w).to_bytes(INSTR_BYTES, "little") for w in words)


def bytes_to_words(raw: bytes | bytearray | memoryview) -> list[int]:
    """Inverse of words_to_bytes: INSTR_BITS-bit ints from little-endian program bytes."""
    raw = bytes(raw)
    if len(raw) % INSTR_BYTES:
        raise ValueError(f"a program is a whole number of {INSTR_BYTES}-byte words, got "
                         f"{len(raw)} bytes")
    return [int.from_bytes(raw[i:i + INSTR_BYTES], "little")
            for i in range(0, len(raw), INSTR_BYTES)]


# --------------------------------------------------------------------------- configuration
#: Widest AXI data bus the memory model takes (bytes per beat).
MAX_BEAT_BYTES = 128
#: Most AXI4 masters the core streams through at once (the U280's 32 HBM
#: pseudo-channels).
MAX_MEM_PORTS = 32


@dataclass(frozen=True, kw_only=True)
class CoreConfig:
    """One accelerator core (docs/core.md), fixed when the RTL is generated; every
    shape below these limits is a run-time field of an instruction.

    Linear engine (a MixPE array made programmable in K, N, group):
      rows       activation rows of the array: tokens per row tile
      cols       output channels per column tile
      max_k      longest reduction K (the K counters; int32-safe up to MIXPE_MAX_K)
      max_n      most output channels of one LINEAR / LOGITS (the n field's range)
      w_bits     widest weight code the PEs take (8: the W8 LM head runs too)
    Activation buffers (on-chip, 32-bit words):
      buffers    how many (the 4-bit dst/src fields address 16 at most)
      max_tokens token rows per buffer: the most tokens one program run (a block:
                 a prefill chunk, or 1 for decode) processes
      buf_elems  elements per token row
    Units:
      sfu        the special-function unit (golden.sfu_config.SFUHWConfig)
      kv4        the KV4 attention unit; its max_t bounds the context, its heads the
                 query heads of one ATTEND (a GQA group)
    Memory model (AXI4 masters to HBM/DDR):
      addr_bits  address width of the masters (64: Vitis m_axi pointers)
      beat_bytes data bytes per beat of one master
      mem_ports  masters one instruction's streams are spread over
      mem_latency cycles from a read request to its first beat
    """

    rows: int = 4
    cols: int = 512
    max_k: int = 4096
    max_n: int = 1 << 17
    w_bits: int = 8
    buffers: int = 8
    max_tokens: int = 32
    buf_elems: int = 2048
    sfu: SFUHWConfig = dataclasses.field(
        default_factory=lambda: SFUHWConfig(lanes=16, max_k=2048))
    kv4: KV4Config = dataclasses.field(default_factory=KV4Config)
    addr_bits: int = 64
    beat_bytes: int = 32
    mem_ports: int = 8
    mem_latency: int = 64

    def __post_init__(self):
        check_counts(self, "rows", "cols", "max_k", "max_n", "buffers", "max_tokens",
                     "buf_elems")
        check_int("max_k", self.max_k, MIXPE_GROUP_RANGE[0], MIXPE_MAX_K,
                  hint="the int32 accumulator holds at most MIXPE_MAX_K products")
        check_int("max_n", self.max_n, 1, FIELDS["n"].max, hint="the n field is 20 bits")
        check_choice("w_bits", self.w_bits, MIXPE_WEIGHT_BITS)
        check_int("buffers", self.buffers, 1, FIELDS["dst"].max + 1,
                  hint="the buffer fields are 4 bits")
        check_int("buf_elems", self.buf_elems, 1, FIELDS["col"].max + 1,
                  hint="the col field addresses 2**16 elements")
        check_int("max_tokens", self.max_tokens, 1, FIELDS["ctx"].max,
                  hint="a block's positions must fit the ctx field")
        expect_type("sfu", self.sfu, SFUHWConfig)
        expect_type("kv4", self.kv4, KV4Config)
        if self.kv4.max_t > FIELDS["ctx"].max:
            raise ValueError(f"kv4.max_t={self.kv4.max_t} exceeds the ctx field's "
                             f"{FIELDS['ctx'].max}; lower kv4.max_t")
        if self.kv4.heads > FIELDS["heads"].max:
            raise ValueError(f"kv4.heads={self.kv4.heads} exceeds the heads field's "
                             f"{FIELDS['heads'].max}; lower kv4.heads")
        check_int("addr_bits", self.addr_bits, 32, FIELDS["addr0"].width,
                  hint="the address fields are 64 bits")
        check_pow2("beat_bytes", self.beat_bytes, 4, MAX_BEAT_BYTES,
                   hint="AXI data buses are 32 .. 1024 bits")
        check_int("mem_ports", self.mem_ports, 1, MAX_MEM_PORTS)
        check_int("mem_latency", self.mem_latency, 0, 1 << 16)

    @property
    def mem_bytes_per_cycle(self) -> int:
        """Peak bytes per cycle of the memory model: mem_ports x beat_bytes."""
        return self.mem_ports * self.beat_bytes

    @property
    def peak_macs_per_cycle(self) -> int:
        """MACs the linear engine's rows x cols array does per cycle."""
        return self.rows * self.cols

    @property
    def buffer_bytes(self) -> int:
        """On-chip activation storage: buffers x max_tokens x buf_elems 32-bit words."""
        return self.buffers * self.max_tokens * self.buf_elems * 4

    def replace(self, **kw: Any) -> "CoreConfig":
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> dict:
        """The configuration as nested plain dicts (dataclasses.asdict)."""
        return dataclasses.asdict(self)

    def name(self) -> str:
        """A name that encodes every field, for generated files and build caches."""
        return (f"core_r{self.rows}_c{self.cols}_k{self.max_k}_b{self.buffers}"
                f"x{self.max_tokens}x{self.buf_elems}_{self.sfu.name()}_{self.kv4.name()}"
                f"_m{self.mem_ports}x{self.beat_bytes}")


@dataclass(frozen=True, kw_only=True)
class Registers:
    """The run-time registers one program run reads (the host writes them through
    the control slave before each start):
      pos     position of the block's first token (the tokens before it are in the
              KV cache)
      tokens  tokens in the block (T): a prefill chunk, or 1 for a decode step
    One program serves every step: prefill is (0, T), decode step p is (p, 1)."""
    pos: int = 0
    tokens: int = 1

    def __post_init__(self):
        check_int("pos", self.pos, 0, FIELDS["ctx"].max,
                  hint="a position inside the context")
        check_int("tokens", self.tokens, 1, FIELDS["ctx"].max)


# --------------------------------------------------------------------------- KV4 cache
#: The planes of one KV head's cache region, in address order, with the bytes one
#: token takes in each (D = head_dim): the 4-bit codes two per byte (element 2j in
#: the low nibble), the scale numerator S as uint32, the 4-bit zero in a byte; with a
#: recent window also the 8-bit codes and zeros (levels 0..240) of every token (a
#: query reads the last `recent` of its own context from them, so prefill needs them
#: all). Structure of arrays: a decode streams each plane contiguously.
KV_PLANES = (("k4", lambda D: D // 2), ("v4", lambda D: D // 2), ("ks", lambda D: 4),
             ("vs", lambda D: 4), ("kz", lambda D: 1), ("vz", lambda D: 1))
KV_PLANES_RECENT = (("k8", lambda D: D), ("v8", lambda D: D), ("kz8", lambda D: 1),
                    ("vz8", lambda D: 1))


def kv_layout(ctx: int, head_dim: int, recent: int) -> dict[str, tuple[int, int, int]]:
    """One KV head's cache region for `ctx` tokens: plane -> (offset, bytes per token,
    bytes), each plane MEM_ALIGN-aligned."""
    check_int("ctx", ctx, 1)
    check_int("head_dim", head_dim, 2)
    check_int("recent", recent, 0)
    out, off = {}, 0
    for name, per in KV_PLANES + (KV_PLANES_RECENT if recent else ()):
        b = per(head_dim)
        out[name] = (off, b, b * ctx)
        off = -(-(off + b * ctx) // MEM_ALIGN) * MEM_ALIGN
    return out


def kv_region_bytes(ctx: int, head_dim: int, recent: int) -> int:
    """Bytes of one KV head's region (a multiple of MEM_ALIGN)."""
    off, _, size = list(kv_layout(ctx, head_dim, recent).values())[-1]
    return -(-(off + size) // MEM_ALIGN) * MEM_ALIGN
