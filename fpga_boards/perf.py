"""System performance model: tokens/s of a Llama decoder on an Alveo card, built from
the accelerator core's cycle model (DESIGN §7, §9; docs/system.md).

    python -m fpga_boards perf --board u280 --model llama2-7b --scheme w4a8kv4-g128 \\
        [--core-config JSON] [--context 1024] [--batch 1] [--packed] [--ports N] ...

How a figure is made:
  1. the model's shape (fpga_boards.model_shapes, or any HF config.json) and the
     scheme give a DecoderConfig (quantflow.compile.decoder_config); it is lowered
     to the core's whole-model program by the compiler itself (quantflow.program.
     compile_program on quantflow.shape_image: no weights needed);
  2. every instruction is priced by hdl.core.cycle_model, the RTL's own cycle model
     (tests hold it equal to the co-simulated RTL), on the RTL's core (one AXI read
     port); the LINEAR / LOGITS weight stream inside it is the engine's one beat a
     cycle (hdl.core_linear.mem_beats);
  3. the board turns cycles into seconds: the kernel clock, and each port's share of
     its memory bank (fpga_boards.boards: HBM pseudo-channels, DDR channels); the
     what-ifs (golden.system_config) change only what they name: packed codes and N:M
     sparse weights shrink the weight stream's beats and bytes, N ports split a
     linear's column tiles over N engine slices, KV4 units run KV heads at once, a
     batch shares the linears, PIM banks take the attention (golden.pim.schedule's
     measured MACs a cycle, two sub-batches interleaved);
  4. instances: as many cores as the part holds (fpga_boards.resources_system, an
     analytic lower bound scaled from the units' last Yosys figures) and the memory
     holds (weights once, a KV cache per sequence); each serves its own sequences,
     and together they cannot move more than the board's bandwidth.

The bound a decode token is held to is the bytes it moves over the board's peak
bandwidth (weights, scales, KV cache, instructions: what the core reads and writes).
Not modelled: the host's round trip per token (XRT start / wait), refresh and
bank conflicts (peak bandwidth), overlap between instructions (the RTL has none).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from golden.core_config import (FIELDS, INSTR_BYTES, MAX_MEM_PORTS, CoreConfig, Registers,
                                decode, encode)
from golden.kv4_attention_config import KV4Config
from golden.sfu_config import SFUHWConfig
from golden.sparse_dsp_config import parse_pattern
from golden.system_config import SystemConfig
from quattro_fs import build_root

from .boards import BOARDS, Board
from .fit import Fit, FitError, check, fit_of, fit_table
from .host_core import GENERATE_DIR
from .model_shapes import MODELS, ModelShape, load_shape
from .resources_system import SOURCE_NOTE

if TYPE_CHECKING:
    from golden.decoder_config import DecoderConfig
    from golden.pim_config import PIMConfig
    from quantflow.schemes import QuantScheme

__all__ = ["PERF_DIR", "GENERATE_DIR", "AGREEMENT_TOLERANCE", "UNITS", "BOUNDS", "PerfError",
           "parse_scheme", "decoder_for", "default_core", "core_from_json", "rtl_core", "lower",
           "Format", "Totals", "SystemModel", "Scenario", "scenarios", "agreement",
           "evaluate", "render", "roofline", "main"]

PERF_DIR = build_root() / "perf"
#: `python -m cosim generate` writes the co-simulated core's measured cycles here.
#: The model must agree with the co-simulated core within this (cycles per token).
AGREEMENT_TOLERANCE = 0.02
#: An HBM2 pseudo-channel moves 64 data bits on both clock edges: 16 bytes a clock.
#: The PIM banks' commands run on that clock (golden.pim's timing is in its cycles).
HBM_PC_BYTES_PER_CLOCK = 16
#: The published figures docs/system.md compares with (DESIGN §8): LLaMA-2-7B decode.
PUBLISHED = (("FlightLLM (U280, 225 MHz, W4 + N:M sparse)", "u280", 55.0),
             ("AccLLM (U280, simulated, W2 pruned)", "u280", 164.0),
             ("llama-fpga (U250, ~85 % of its DDR bound)", "u250", 18.5))

UNITS = ("linear", "logits", "sfu", "kv4", "pim", "sequencer")
BOUNDS = ("memory", "engine", "linear overhead", "sfu", "attention", "sequencer")
_KV_OPS = ("KV_APPEND", "ATTEND")
_SFU_OPS = ("EMBED", "RMSNORM", "QUANT", "ROPE", "SWIGLU", "ADD", "ARGMAX")
_UNIT_OF = {"LINEAR": "linear", "LOGITS": "logits", "KV_APPEND": "kv4", "ATTEND": "kv4",
            **{op: "sfu" for op in _SFU_OPS}}
_WHERE = ("addr0", "addr1", "addr2", "addr3", "col")


class PerfError(ValueError):
    """A model, scheme, board or configuration the system model cannot take (one
    message naming the value, the cause and the fix)."""


# --------------------------------------------------------------------------- inputs
_SCHEME_RE = re.compile(r"^w(\d)a8kv4-g(\d+)(-plain)?$")


def parse_scheme(name: str) -> QuantScheme:
    """A quantflow QuantScheme by name (quantflow.schemes.SCHEMES), or one spelled
    w<bits>a8kv4-g<group>[-plain]: QoQ weights of that width and group, A8, and the
    KV4 unit's scheme of w4a8kv4-g64 (Hadamard + 8-bit window) or, with -plain, of
    w4a8kv4-g64-plain."""
    from quantflow.errors import QuantflowError
    from quantflow.schemes import SCHEMES, QuantScheme, WeightScheme, get_scheme
    if name in SCHEMES:
        return get_scheme(name)
    m = _SCHEME_RE.match(str(name))
    if not m:
        raise PerfError(f"unknown scheme {name!r}: spell it w<bits>a8kv4-g<group>[-plain] "
                        f"(e.g. w4a8kv4-g128, w2a8kv4-g64-plain) or name a quantflow scheme")
    base = get_scheme("w4a8kv4-g64-plain" if m.group(3) else "w4a8kv4-g64")
    try:
        weight = WeightScheme(method="qoq", bits=int(m.group(1)), group=int(m.group(2)))
    except QuantflowError as e:
        raise PerfError(f"scheme {name!r}: {e}") from None
    return QuantScheme(name=name, weight=weight, act=base.act, kv=base.kv,
                       description=f"QoQ W{m.group(1)} g{m.group(2)}, {base.name}'s A8 and KV4")


def decoder_for(shape: ModelShape, scheme: QuantScheme, context: int, *,
                layers: int | None = None) -> DecoderConfig:
    """The DecoderConfig of `shape` under `scheme` with a KV cache of `context` tokens
    (quantflow.compile.decoder_config, the compiler's own mapping); `layers` keeps
    the first ones only (a depth-reduced model, as cosim generate --layers)."""
    from quantflow.compile import decoder_config
    from quantflow.errors import QuantflowError
    try:
        lc = shape.llama_config()
        # decoder_config reads only the model's configuration
        d = decoder_config(types.SimpleNamespace(config=lc), scheme, context=context,
                           head_bits=8)
    except (QuantflowError, ValueError, TypeError) as e:
        raise PerfError(f"model {shape.name} with scheme {scheme.name}: {e}") from None
    return d if layers is None else dataclasses.replace(d, layers=layers)


def default_core(decoder: DecoderConfig, **overrides: object) -> CoreConfig:
    """The core the model is priced on unless --core-config says otherwise: the
    co-simulated core's RTL-legal shape (quantflow.program.sim_core_for: one 32-byte
    port, 16 SFU / KV4 lanes, buffers and vectors as wide as the model's widest) with
    the default core's engine (rows 4, cols 512) and memory latency, five buffers
    (the fewest a layer needs) of 8 token rows."""
    from quantflow.program import sim_core_for
    base = CoreConfig()
    kw = dict(rows=base.rows, cols=base.cols, buffers=5, max_tokens=8,
              mem_latency=base.mem_latency)
    kw.update(overrides)
    return sim_core_for(decoder, **kw)


def core_from_json(decoder: DecoderConfig, text: str | dict | None) -> CoreConfig:
    """default_core(decoder) with the fields of a JSON object (nested "sfu" and "kv4"
    objects override those units' fields)."""
    if text is None:
        return default_core(decoder)
    try:
        over = json.loads(text) if isinstance(text, str) else dict(text)
    except json.JSONDecodeError as e:
        raise PerfError(f"--core-config is not valid JSON ({e})") from None
    if not isinstance(over, dict):
        raise PerfError(f"--core-config must be a JSON object of CoreConfig fields, got "
                        f"{type(over).__name__}")
    base = default_core(decoder)
    known = {f.name for f in dataclasses.fields(CoreConfig)}
    bad = sorted(set(over) - known)
    if bad:
        raise PerfError(f"--core-config: unknown field(s) {bad}; CoreConfig has "
                        f"{sorted(known)}")
    try:
        for unit, cls in (("sfu", SFUHWConfig), ("kv4", KV4Config)):
            if unit in over:
                over[unit] = cls(**{**dataclasses.asdict(getattr(base, unit)), **over[unit]})
        return dataclasses.replace(base, **over)
    except (TypeError, ValueError) as e:
        raise PerfError(f"--core-config: {e}") from None


def lower(decoder: DecoderConfig, core: CoreConfig) -> tuple[tuple, tuple]:
    """(words, notes): the whole-model program of `decoder` for `core`, by the
    compiler (quantflow.program.compile_program on a shape-only image). Models with
    more query heads than the ISA's 5-bit `heads` field holds (LLaMA-2-7B: 32) are
    refused by the compiler; they are lowered by the compiler's own builder with the
    query RoPE priced as ROPEs of at most 31 heads each, and a note says so (an ISA
    what-if: the RTL cannot run that program)."""
    from quantflow import program as qp
    from quantflow.errors import QuantflowError
    from quantflow.shape_image import shape_image
    img = shape_image(decoder)
    hmax = FIELDS["heads"].max
    try:
        return qp.compile_program(img, core).words, ()
    except QuantflowError as e:
        if decoder.heads <= hmax or "heads" not in str(e):
            raise PerfError(str(e)) from None
    qp.check_core(core, decoder)
    b = qp._Builder(img, core, qp.memory_map(core, decoder, len(img.raw), 0), 0)
    b.model()
    where, _ = qp._allocate(b.ops, core.buffers)
    words = []
    for o in b.ops:
        f = dict(o.fields)
        if o.dst is not None:
            f["dst"] = where[o.dst]
        f.update({key: where[v] for key, v in o.srcs.items()})
        if o.op == "ROPE" and f["heads"] > hmax:
            parts = -(-f["heads"] // hmax)
            for i in range(parts):
                words.append(encode("ROPE", **{**f, "heads": (f["heads"] + i) // parts}))
            continue
        words.append(encode(o.op, **f))
    note = (f"ISA what-if: {decoder.heads} query heads exceed the ISA's {FIELDS['heads'].width}"
            f"-bit heads field (at most {hmax}); the compiler refuses the program, so its "
            f"query RoPE is priced as {-(-decoder.heads // hmax)} ROPEs (the RTL cannot run "
            f"this program until the field is widened)")
    return tuple(words), (note,)


# --------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    """How the weights stream: bits of one kept code of a block linear (LINEAR) in
    its stream (index bits included), the fraction of codes kept, and the LM head's
    (LOGITS) bits a code."""
    code_bits: int
    keep: float
    head_bits: int

    @classmethod
    def of(cls, system: SystemConfig, decoder: DecoderConfig) -> "Format":
        """How `decoder`'s weights stream under `system`: packed or in the image's
        containers, and for a sparse engine its N:M pattern and index bits."""
        from golden.decoder import image_spec
        from .resources_system import sparse_stage_config
        import numpy as np
        # the image stores a code in this container (quantflow.compile: uint8 codes)
        container = np.dtype(image_spec(decoder)["lm_head.q"][1]).itemsize * 8
        head = decoder.head_bits if system.packed else container
        if system.engine_kind == "mixpe":
            return cls(system.w_bits if system.packed else container, 1.0, head)
        n, m = parse_pattern(system.sparsity)
        if system.packed:
            bits = system.w_bits + (m - 1).bit_length()
        else:   # the sparse DSP chain's weight lane: a byte value and its index
            bits = sparse_stage_config().weight_lane_bits
        return cls(bits, n / m, head)

    def bits(self, op: str) -> float:
        """Stream bits per dense weight of a LINEAR or LOGITS."""
        return self.code_bits * self.keep if op == "LINEAR" else self.head_bits

    def codes_per_beat(self, beat_bytes: int) -> int:
        """Kept codes of a block linear in one beat: what one engine slice takes a cycle."""
        return beat_bytes * 8 // self.code_bits


# --------------------------------------------------------------------------- totals
@dataclass
class Totals:
    """One program run (or decode step): seconds on the board, the RTL's cycles (the
    instructions one after another), bytes moved, MACs, seconds by unit and by bound."""
    seconds: float = 0.0
    cycles: int = 0
    bytes: int = 0
    macs: int = 0
    by_unit: dict = field(default_factory=lambda: dict.fromkeys(UNITS, 0.0))
    by_bound: dict = field(default_factory=lambda: dict.fromkeys(BOUNDS, 0.0))

    def add(self, other: "Totals", scale: float = 1.0) -> None:
        """Add `other` times `scale` (seconds, cycles, bytes, MACs and both breakdowns)."""
        self.seconds += other.seconds * scale
        self.cycles += round(other.cycles * scale)
        self.bytes += round(other.bytes * scale)
        self.macs += round(other.macs * scale)
        for k, v in other.by_unit.items():
            self.by_unit[k] += v * scale
        for k, v in other.by_bound.items():
            self.by_bound[k] += v * scale

    def as_dict(self) -> dict:
        """The totals as a plain dict."""
        return {"seconds": self.seconds, "cycles": self.cycles, "bytes": self.bytes,
                "macs": self.macs, "by_unit": dict(self.by_unit),
                "by_bound": dict(self.by_bound)}


def _canonical(word: int) -> int:
    """The word with its addresses and buffer column zeroed: no cycle count depends on
    where an operand sits, so a program's instructions price as a few dozen distinct
    words."""
    ins = decode(word)
    return encode(ins.op, **{k: (0 if k in _WHERE else v) for k, v in ins.fields.items()})


@functools.lru_cache(maxsize=None)
def pim_macs_per_cycle(config: PIMConfig | None = None) -> tuple[float, int, int]:
    """(MACs a cycle, cycles, MACs) of one PIM channel on a GEMV job of max_job_rows
    rows in every bank (golden.pim.schedule, the block's cycle model, held equal to
    its RTL)."""
    from golden.pim import schedule
    from golden.pim_config import GemvJob, PIMConfig
    c = config or PIMConfig()
    vec = (0,) * c.columns
    jobs = [GemvJob(bank=b, row=0, nrows=c.max_job_rows, vector=vec) for b in range(c.banks)]
    r = schedule(c, [], jobs)
    macs = c.banks * c.max_job_rows * c.columns
    return macs / r.cycles, r.cycles, macs


# --------------------------------------------------------------------------- the model
class SystemModel:
    """One model on one board with one core and one SystemConfig (module docstring).
    `latency`: the memory's read latency in cycles (default the core's mem_latency)."""

    def __init__(self, decoder: DecoderConfig, core: CoreConfig, system: SystemConfig,
                 board: Board, *, latency: int | None = None, lowered: tuple | None = None):
        from hdl.core import check_rtl_config
        self.decoder, self.system, self.board = decoder, system, board
        self.ports = system.ports
        try:
            self.core = check_rtl_config(core.replace(mem_ports=1))
        except ValueError as e:
            raise PerfError(str(e)) from None
        self.latency = core.mem_latency if latency is None else latency
        self.clock_hz = (system.clock_mhz or board.kernel_clock_mhz) * 1e6
        self.mem = board.banks
        if system.batch > self.core.max_tokens:
            raise PerfError(f"batch={system.batch} exceeds the core's max_tokens="
                            f"{self.core.max_tokens} token rows (a batch's linears run on "
                            f"one row per sequence); lower batch or raise max_tokens")
        if system.context > decoder.max_context:
            raise PerfError(f"context={system.context} exceeds the decoder's KV cache of "
                            f"{decoder.max_context} tokens")
        self.words, self.notes = lowered if lowered is not None else lower(decoder, self.core)
        canon = {}
        self.canon = tuple(canon.setdefault(w, _canonical(w)) for w in self.words)
        self.ops = {w: decode(w).op for w in set(self.canon)}
        # the program as (word, count) of the instructions outside the KV4 unit, and
        # the runs of consecutive KV instructions of one op (one per layer and op)
        plain, runs, prev = {}, [], None
        for w in self.canon:
            op = self.ops[w]
            if op in _KV_OPS:
                if op != prev:
                    runs.append((op, []))
                runs[-1][1].append(w)
            else:
                plain[w] = plain.get(w, 0) + 1
            prev = op
        self._plain, self._kv_runs = tuple(plain.items()), tuple(runs)
        self.fmt = Format.of(system, decoder)
        # one core's ports spread over the banks; a bank's bandwidth is shared by its ports
        per_bank = -(-self.ports // self.mem.count)
        self.port_bw = min(self.core.beat_bytes * self.clock_hz,
                           self.mem.gbps_per_bank * 1e9 / per_bank)
        self._cycles: dict = {}
        self._costs: dict = {}

    # ----------------------------------------------------------------- pricing
    def cycles(self, word: int, T: int, pos: int) -> int:
        """hdl.core.cycle_model of one (canonical) word at registers (pos, T)."""
        from hdl.core import cycle_model
        key = (word, T, pos if self.ops[word] in _KV_OPS else 0)
        if key not in self._cycles:
            self._cycles[key] = cycle_model([word], self.core, Registers(pos=key[2], tokens=T),
                                            latency=self.latency)[0]
        return self._cycles[key]

    def _slices(self, n: int, k: int, g: int, bits: float) -> list[int]:
        """Beats of each engine slice for one row tile: the column tiles
        (hdl.core_linear.tile_shapes) dealt round robin, each its s2 and z blocks and
        its codes at `bits` a weight."""
        from hdl import core_linear
        B = self.core.beat_bytes
        out = [0] * self.ports
        for j, (nt, blk) in enumerate(core_linear.tile_shapes(self.core, n, k, g)):
            out[j % self.ports] += 2 * blk + math.ceil(nt * k * bits / 8 / B)
        return out

    def cost(self, word: int, T: int, pos: int) -> Totals:
        """One (canonical) instruction at registers (pos, T), priced on the board."""
        op = self.ops[word]
        key = (word, T, pos if op in _KV_OPS else 0)
        if key in self._costs:
            return self._costs[key]
        from golden.core import instruction_cycles
        from hdl import core_linear
        ins = decode(word)
        cyc = self.cycles(word, T, pos)
        regs = Registers(pos=key[2], tokens=T)
        f = self.clock_hz
        t = Totals(cycles=cyc)
        # golden.core counts what the instruction moves (a byte a code); + its fetch
        t.bytes = instruction_cycles(ins, self.core, regs).mem_bytes + INSTR_BYTES
        unit = _UNIT_OF.get(op, "sequencer")
        if op in ("LINEAR", "LOGITS"):
            n, k, g = ins["n"], ins["k"], ins["group"]
            bits = self.fmt.bits(op)
            t.bytes += math.ceil(n * k * bits / 8) - n * k
            tiles = -(-T // self.core.rows)
            worst = max(self._slices(n, k, g, bits))
            eng, mem = worst / f, worst * self.core.beat_bytes / self.port_bw
            stream = tiles * max(eng, mem)
            rest = (cyc - tiles * core_linear.mem_beats(self.core, n, k, g)) / f
            t.seconds = stream + rest
            t.by_bound["memory" if mem > eng else "engine"] = stream
            t.by_bound["linear overhead"] = rest
            t.macs = T * n * k
        else:
            t.seconds = cyc / f
            bound = {"kv4": "attention", "sfu": "sfu"}.get(unit, "sequencer")
            t.by_bound[bound] = t.seconds
            if op == "ATTEND":
                D = self.core.kv4.head_dim
                t.macs = sum(2 * (key[2] + i + 1) * D * ins["heads"] for i in range(T))
        t.by_unit[unit] = t.seconds
        self._costs[key] = t
        return t

    def run(self, T: int, pos: int, *, kv_T: int | None = None, kv_copies: int = 1,
            skip_attend: bool = False) -> Totals:
        """One run of the program: every instruction at (pos, T), the KV4 unit's at
        (pos, kv_T) kv_copies times (a batch's sequences each attend on their own);
        each run of consecutive KV instructions of one op shared by kv_units units.
        Plus the start cycle."""
        kv_T = T if kv_T is None else kv_T
        total = Totals()
        for w, n in self._plain:               # no cycle count depends on pos here
            total.add(self.cost(w, T, 0), n)
        U = self.system.kv_units
        for op, words in self._kv_runs:
            if skip_attend and op == "ATTEND":
                continue
            costs = [self.cost(w, kv_T, pos) for w in words]
            n = len(costs) * kv_copies
            if len(set(words)) == 1:        # equal instructions: the busiest unit's share
                busiest = -(-n // U) * costs[0].seconds
            else:                           # dealt round robin to the units
                units = [0.0] * U
                for i in range(n):
                    units[i % U] += costs[i // kv_copies].seconds
                busiest = max(units)
            for c in costs:
                total.cycles += c.cycles * kv_copies
                total.bytes += c.bytes * kv_copies
                total.macs += c.macs * kv_copies
            total.seconds += busiest
            total.by_unit["kv4"] += busiest
            total.by_bound["attention"] += busiest
        total.cycles += 1
        total.seconds += 1 / self.clock_hz
        total.by_bound["sequencer"] += 1 / self.clock_hz
        total.by_unit["sequencer"] += 1 / self.clock_hz
        return total

    def pim_seconds(self, seqs: int, pos: int) -> tuple[float, int]:
        """(seconds, MACs) of `seqs` sequences' attention GEMVs (q.K and P.V of every
        query head over pos + 1 tokens) in PIM banks, one PIM channel per memory bank."""
        d = self.decoder
        macs = seqs * d.layers * d.heads * 2 * (pos + 1) * d.head_dim
        per_cycle = pim_macs_per_cycle()[0]
        clock = self.mem.gbps_per_bank * 1e9 / HBM_PC_BYTES_PER_CLOCK
        return macs / (self.mem.count * per_cycle * clock), macs

    def decode_step(self, pos: int | None = None) -> Totals:
        """One decode step of `batch` sequences at position pos (default context - 1:
        the attention reads the whole context)."""
        from golden.pim_config import PIMConfig
        s = self.system
        pos = s.context - 1 if pos is None else pos
        if s.attention == "kv4":
            return self.run(s.batch, pos, kv_T=1, kv_copies=s.batch)
        a = -(-s.batch // 2)
        halves = []
        for n in (a, s.batch - a):
            lin = self.run(n, pos, kv_T=1, kv_copies=n, skip_attend=True)
            sec, macs = self.pim_seconds(n, pos)
            halves.append((lin, sec, macs))
        (la, pa, ma), (lb, pb, mb) = halves
        total = Totals()
        total.add(la)
        total.add(lb)
        if PIMConfig().mode == "dual":   # sub-batch A's linears beside B's attention
            step = max(la.seconds, pb) + max(lb.seconds, pa)
        else:
            step = la.seconds + lb.seconds + pa + pb
        pim = step - la.seconds - lb.seconds
        total.seconds = step
        total.by_unit["pim"] += pim
        total.by_bound["attention"] += pim
        total.macs += ma + mb
        return total

    def prefill(self, tokens: int | None = None) -> Totals:
        """A prompt of `tokens` (default the system's prefill_tokens) in blocks of the
        core's max_tokens, one run each."""
        n = self.system.prefill_tokens if tokens is None else tokens
        T = self.core.max_tokens
        total = Totals()
        for p in range(0, n, T):
            total.add(self.run(min(T, n - p), p))
        return total

    # ----------------------------------------------------------------- the part
    def resources(self) -> tuple[dict, str, dict]:
        """Resource estimate of one core on the part (resources_system.core_estimate): counts,
        source, details."""
        from .resources_system import core_estimate
        return core_estimate(self.core, self.system,
                             self.fmt.codes_per_beat(self.core.beat_bytes))

    def memory_bytes(self) -> dict:
        """Bytes in the board's memory: the weights once (in the stream's format), one
        KV cache per sequence, the I/O and program of one core."""
        from golden.core_config import kv_region_bytes
        from golden.decoder import image_spec
        from quantflow.compile import image_layout
        d = self.decoder
        entries, image = image_layout(d)
        spec = image_spec(d)
        for name, e in entries.items():
            if name.endswith(".q"):
                N, K = spec[name][0]
                op = "LOGITS" if name.startswith("lm_head") else "LINEAR"
                image += math.ceil(N * K * self.fmt.bits(op) / 8) - e["bytes"]
        kv = d.layers * d.kv_heads * kv_region_bytes(d.max_context, d.head_dim, d.kv4.recent)
        if self.system.attention == "pim":
            # PIM lanes multiply INT8: a token's D 4-bit K and V codes take D more bytes
            kv += d.layers * d.kv_heads * d.max_context * d.head_dim
        return {"weights": image, "kv_per_sequence": kv,
                "per_core": len(self.words) * INSTR_BYTES}

    def max_instances(self) -> tuple[int, str]:
        """(instances, what limits them): the part's resources (analytic estimate)
        and the memory (weights once, batch KV caches per instance)."""
        counts = self.resources()[0]
        cap = self.board.capacity.as_dict()
        by_part = min((cap[k] // counts[k], k) for k in cap if counts[k])
        mb = self.memory_bytes()
        per = self.system.batch * mb["kv_per_sequence"] + mb["per_core"]
        by_mem = (self.mem.bytes - mb["weights"]) // per if mb["weights"] <= self.mem.bytes \
            else 0
        if by_mem < by_part[0]:
            return int(by_mem), f"{self.mem.kind} capacity"
        return int(by_part[0]), f"{by_part[1]} of the part"

    def fit(self, instances: int) -> Fit:
        """The fit check of `instances` cores (FitError when they do not fit)."""
        counts, src, _ = self.resources()
        used = {k: v * instances for k, v in counts.items()}
        return check(fit_of(f"core x {instances}", used, self.board, source=src))


# --------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    """One SystemConfig evaluated: a decode step, a prefill, instances, bounds."""
    label: str
    system: SystemConfig
    decode: Totals
    prefill: Totals
    instances: int
    limited_by: str
    fit: Fit | None
    bandwidth: float              # board peak bytes/s
    clock_hz: float
    resources: dict
    resources_source: str

    @property
    def batch(self) -> int:
        """Sequences decoded together by one instance."""
        return self.system.batch

    @property
    def decode_tps(self) -> float:
        """Tokens/s of one instance (its batch's tokens per step)."""
        return self.batch / self.decode.seconds

    @property
    def bytes_per_token(self) -> float:
        """Memory bytes one decode step moves per token of the batch."""
        return self.decode.bytes / self.batch

    @property
    def bound_tps(self) -> float:
        """Tokens/s if every byte a token moves came at the board's peak bandwidth."""
        return self.bandwidth / self.bytes_per_token

    @property
    def pct_of_bound(self) -> float:
        """Decode tokens/s as a fraction of the bandwidth bound."""
        return self.decode_tps / self.bound_tps

    @property
    def aggregate_tps(self) -> float:
        """All instances together, held to the board's bandwidth."""
        return min(self.instances * self.decode_tps, self.bound_tps)

    @property
    def prefill_tps(self) -> float:
        """Prefill tokens/s of one instance."""
        return self.system.prefill_tokens / self.prefill.seconds

    def as_dict(self) -> dict:
        """The scenario as a plain dict (throughputs, totals, fit and resources)."""
        return {"label": self.label, "system": self.system.as_dict(),
                "whatifs": list(self.system.whatifs), "rtl": self.system.rtl,
                "decode_tokens_per_s": self.decode_tps,
                "decode_cycles_per_step": self.decode.cycles,
                "decode_seconds_per_step": self.decode.seconds,
                "bytes_per_token": self.bytes_per_token, "bound_tokens_per_s": self.bound_tps,
                "pct_of_bound": self.pct_of_bound, "instances": self.instances,
                "instances_limited_by": self.limited_by,
                "aggregate_tokens_per_s": self.aggregate_tps,
                "prefill_tokens_per_s": self.prefill_tps, "prefill": self.prefill.as_dict(),
                "decode": self.decode.as_dict(), "resources_per_core": self.resources,
                "resources_source": self.resources_source,
                "fit": self.fit.as_dict() if self.fit else None}


def evaluate_system(decoder: DecoderConfig, core: CoreConfig, system: SystemConfig, board: Board,
                    *, label: str = "", latency: int | None = None, lowered: tuple | None = None,
                    prefill: bool = True, strict: bool = True) -> Scenario:
    """One Scenario. When the requested instances (or one) do not fit: FitError naming
    the resource (the part) or PerfError (the memory); with strict=False the Scenario
    instead, its one instance's figures and `limited_by` saying what does not fit."""
    m = SystemModel(decoder, core, system, board, latency=latency, lowered=lowered)
    counts, src, _ = m.resources()
    most, why = m.max_instances()
    n = system.instances or most
    fit, limited = None, why if not system.instances else "requested"
    try:
        if n < 1 or n > most:
            if why.endswith("capacity"):
                mb = m.memory_bytes()
                raise PerfError(
                    f"{'one instance' if n <= 1 else f'{n} instances'} with batch "
                    f"{system.batch} do not fit the {board.name.upper()}'s "
                    f"{m.mem.bytes / 2**30:.0f} GiB of {m.mem.kind}: the weights take "
                    f"{mb['weights'] / 2**30:.2f} GiB, each sequence's KV cache "
                    f"{mb['kv_per_sequence'] / 2**30:.3f} GiB; use a shorter context, a "
                    f"smaller batch, packed codes or fewer instances")
            m.fit(max(n, 1))        # raises FitError naming the resource
        fit = m.fit(n)
    except (FitError, PerfError) as e:
        if strict:
            raise
        n, limited = 0, f"does not fit: {e}"
        used = {k: v for k, v in counts.items()}
        fit = fit_of("core x 1", used, board, source=src)
    return Scenario(label=label or (", ".join(system.whatifs) or "RTL as built"),
                    system=system, decode=m.decode_step(),
                    prefill=m.prefill() if prefill else Totals(seconds=math.inf),
                    instances=n, limited_by=limited, fit=fit, bandwidth=m.mem.gbps * 1e9,
                    clock_hz=m.clock_hz, resources=counts, resources_source=src)


def saturating_ports(board: Board, core: CoreConfig, clock_mhz: float = 0.0) -> int:
    """Ports that reach the board's memory bandwidth (each at most a bank's), capped at
    MAX_MEM_PORTS."""
    per = core.beat_bytes * (clock_mhz or board.kernel_clock_mhz) * 1e6
    need = board.banks.count * -(-board.banks.gbps_per_bank * 1e9 // per)
    return int(min(MAX_MEM_PORTS, need))


def scenarios(system: SystemConfig, board: Board, core: CoreConfig) -> list[tuple[str, SystemConfig]]:
    """The table's rows: the RTL as built, packed codes, N ports, both, and the
    requested configuration when it is none of these."""
    rtl = system.replace(packed=False, ports=1, sparsity="dense", engine="", kv_units=1,
                         batch=1, attention="kv4")
    P = system.ports if system.ports > 1 else saturating_ports(board, core, system.clock_mhz)
    rows = [("RTL as built", rtl), ("what-if: packed", rtl.replace(packed=True)),
            (f"what-if: {P} ports", rtl.replace(ports=P)),
            (f"what-if: packed + {P} ports", rtl.replace(packed=True, ports=P))]
    if all(s != system for _, s in rows):
        rows.append(("requested: " + (", ".join(system.whatifs) or "RTL"), system))
    return rows


# --------------------------------------------------------------------------- agreement
def _generate_records() -> list[dict]:
    out = []
    for p in sorted(GENERATE_DIR.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("model") == "smollm2" and rec.get("cycles_decode") and rec.get("core"):
            out.append({**rec, "path": str(p.relative_to(GENERATE_DIR.parent.parent.parent))})
    return out


def agreement(board: Board | None = None) -> dict:
    """The model against the co-simulated core on SmolLM2: cycles per decode token of
    the model's RTL pricing against hdl.core.cycle_model (the RTL's model, held equal
    to the simulation by tests/test_hdl_core.py) on the same core and latency, and
    against every `python -m cosim generate` record (build/sim/generate/*.json,
    measured in Verilator). Within AGREEMENT_TOLERANCE or not, and why."""
    from hdl.core import cycle_model
    from quantflow.program import sim_core_for
    board = board or BOARDS["u280"]
    shape = MODELS["smollm2-135m"]
    scheme = parse_scheme("w4a8kv4-g64-plain")
    checks = []
    recs = _generate_records()
    cases = []
    for rec in recs:
        c = rec["core"]
        core = CoreConfig(**{**c, "sfu": SFUHWConfig(**c["sfu"]), "kv4": KV4Config(**c["kv4"])})
        runs = [(r["pos"], r["tokens"], r["cycles"]) for r in rec["runs"] if r["kind"] == "decode"]
        sch = parse_scheme(rec.get("scheme", scheme.name))
        cases.append((rec["path"], sch, rec["layers"], core, rec["latency"], runs))
    if not cases:
        d = decoder_for(shape, scheme, 1024)
        core = sim_core_for(d)
        cases.append((None, scheme, d.layers, core, core.mem_latency,
                      [(5, 1, None), (6, 1, None)]))
    for path, sch, layers, core, latency, runs in cases:
        d = decoder_for(shape, sch, core.kv4.max_t, layers=layers)
        sys_ = SystemConfig(w_bits=d.w_bits, group=d.group, context=core.kv4.max_t)
        m = SystemModel(d, core, sys_, board, latency=latency)
        for pos, T, measured in runs:
            model = m.run(T, pos).cycles
            rtl = sum(cycle_model(list(m.words), m.core, Registers(pos=pos, tokens=T),
                                  latency=latency)) + 1
            ref = measured if measured is not None else rtl
            checks.append({"record": path, "scheme": sch.name, "layers": layers, "pos": pos,
                           "tokens": T,
                           "model_cycles": model, "hdl_cycle_model": rtl,
                           "cosim_cycles": measured, "error": (model - ref) / ref})
    worst = max(abs(c["error"]) for c in checks)
    cosim = [c for c in checks if c["cosim_cycles"] is not None]
    text = (f"agreement on SmolLM2 (cycles per decode token, {len(checks)} decode steps): "
            f"worst {worst:+.3%} against "
            + (f"the co-simulated core ({', '.join(sorted({c['record'] for c in cosim}))})"
               if cosim else "hdl.core.cycle_model (no `python -m cosim generate` record in "
                             "build/sim/generate/)")
            + f"; within {AGREEMENT_TOLERANCE:.0%}: {'yes' if worst <= AGREEMENT_TOLERANCE else 'NO'}")
    return {"checks": checks, "worst_error": worst, "tolerance": AGREEMENT_TOLERANCE,
            "within": worst <= AGREEMENT_TOLERANCE, "against_cosim": bool(cosim),
            "text": text}


# --------------------------------------------------------------------------- report
def evaluate(model: str, scheme: str, board: str, system: SystemConfig | None = None, *,
             core_config: str | dict | None = None, latency: int | None = None,
             targets: bool | None = None, with_agreement: bool = True) -> dict:
    """Every scenario of the table (`scenarios`), the breakdowns, the agreement check
    and (LLaMA-2-7B on the U280) the targets: the report `main` prints and writes."""
    b = _board(board)
    shape = _shape(model)
    sch = parse_scheme(scheme)
    system = system or SystemConfig()
    system = system.replace(w_bits=sch.weight.bits, group=sch.weight.group)
    d = decoder_for(shape, sch, system.context)
    core = core_from_json(d, core_config)
    if core.mem_ports > 1 and system.ports == 1:
        system = system.replace(ports=core.mem_ports)
    rcore = rtl_core(core.replace(mem_ports=1))
    lowered = lower(d, rcore)
    rows = []
    for label, s in scenarios(system, b, rcore):
        # the comparison rows may not fit (a row says so); the requested one must
        rows.append(evaluate_system(d, rcore, s, b, label=label, latency=latency,
                                    lowered=lowered, strict=s == system))
    requested = next(i for i, r in enumerate(rows) if r.system == system)
    out = {"board": b.as_dict(), "model": {"name": shape.name, "source": shape.source},
           "requested": requested,
           "scheme": sch.name, "decoder": d.as_dict(), "core": rcore.as_dict(),
           "latency": rcore.mem_latency if latency is None else latency,
           "clock_mhz": rows[0].clock_hz / 1e6, "notes": list(lowered[1]),
           "scenarios": [r.as_dict() for r in rows], "_rows": rows}
    if targets is None:
        targets = shape.name == "llama2-7b" and b.name == "u280"
    if targets:
        out["targets"] = _targets(d, rcore, system, b, rows, latency, lowered)
    if with_agreement:
        out["agreement"] = agreement(b)
    return out


def rtl_core(core: CoreConfig) -> CoreConfig:
    """`core` when hdl.core generates it (hdl.core.check_rtl_config), else PerfError."""
    from hdl.core import check_rtl_config
    try:
        return check_rtl_config(core)
    except ValueError as e:
        raise PerfError(str(e)) from None


def _targets(d, core, system, b, rows, latency, lowered) -> list[dict]:
    """The issue's targets for LLaMA-2-7B on the U280 (reported, whatever they say)."""
    fitting = [r for r in rows if r.instances >= 1]
    if not fitting:
        return [{"target": "W4 decode at >= 95 % of the HBM bound of its bytes per token",
                 "scenario": "-", "error": "no row of the table fits the part",
                 "met_single_stream": False, "met_aggregate": False}]
    best = max(fitting, key=lambda r: r.pct_of_bound)
    out = [{"target": "W4 decode at >= 95 % of the HBM bound of its bytes per token",
            "scenario": best.label, "single_stream_pct": best.pct_of_bound,
            "aggregate_pct": best.aggregate_tps / best.bound_tps,
            "instances": best.instances,
            "met_single_stream": best.pct_of_bound >= 0.95,
            "met_aggregate": best.aggregate_tps / best.bound_tps >= 0.95}]
    s2 = system.replace(w_bits=2, sparsity="2:4", engine="", packed=True,
                        ports=max(system.ports, saturating_ports(b, core, system.clock_mhz)),
                        batch=1, attention="kv4")
    d2 = dataclasses.replace(d, w_bits=2)
    target = "W2 + 2:4 sparse decode above 164 tokens/s"
    try:
        sc = evaluate_system(d2, core, s2, b, label="W2 + 2:4 (" + ", ".join(s2.whatifs) + ")",
                             latency=latency, lowered=lowered, prefill=False, strict=False)
    except PerfError as e:
        out.append({"target": target, "scenario": "W2 + 2:4", "error": str(e),
                    "met_single_stream": False, "met_aggregate": False})
        return out
    fits = sc.instances >= 1
    out.append({"target": target, "scenario": sc.label, "tokens_per_s": sc.decode_tps,
                "aggregate_tokens_per_s": sc.aggregate_tps, "instances": sc.instances,
                "pct_of_bound": sc.pct_of_bound, "fits": fits,
                "reason": "" if fits else sc.limited_by,
                "met_single_stream": fits and sc.decode_tps > 164,
                "met_aggregate": fits and sc.aggregate_tps > 164,
                "fit": sc.fit.as_dict() if sc.fit else None})
    return out


def _board(name: str) -> Board:
    from .boards import board
    try:
        return board(name)
    except ValueError as e:
        raise PerfError(str(e)) from None


def _shape(name: str) -> ModelShape:
    try:
        return load_shape(name)
    except ValueError as e:
        raise PerfError(str(e)) from None


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:,.3f} ms" if x < 1 else f"{x:,.3f} s"


def render(rep: dict) -> str:
    """The printed report: the table, the breakdowns, targets, agreement, assumptions."""
    rows: list[Scenario] = rep["_rows"]
    b = rep["board"]
    mem = b["memory"][0]
    lines = [f"{rep['model']['name']} ({rep['model']['source']}), {rep['scheme']}, "
             f"{b['name'].upper()} ({b['part']}), context {rows[0].system.context}, "
             f"kernel clock {rep['clock_mhz']:g} MHz, {mem['count']} x {mem['kind']} "
             f"at {mem['gbps_per_bank']:.3f} GB/s = {mem['count'] * mem['gbps_per_bank']:.0f} GB/s",
             ""]
    head = ("scenario", "decode tok/s", "ms/token", "MB/token", "bound tok/s", "% of bound",
            "instances", "aggregate tok/s", "prefill tok/s")
    body = []
    for r in rows:
        lim = "does not fit" if r.instances == 0 else r.limited_by
        body.append((r.label, f"{r.decode_tps:,.2f}", f"{1e3 / r.decode_tps:,.2f}",
                     f"{r.bytes_per_token / 1e6:,.1f}", f"{r.bound_tps:,.1f}",
                     f"{r.pct_of_bound:.1%}", f"{r.instances} ({lim})",
                     f"{r.aggregate_tps:,.1f}",
                     f"{r.prefill_tps:,.1f}" if math.isfinite(r.prefill.seconds) else "-"))
    lines.append(_table(head, body))
    lines.append("")
    lines.append("decode time per token by unit and by bound (ms):")
    head2 = ("scenario",) + UNITS + ("|",) + BOUNDS
    body2 = []
    for r in rows:
        s = 1e3 / r.batch
        body2.append((r.label, *(f"{r.decode.by_unit[u] * s:.3f}" for u in UNITS), "|",
                      *(f"{r.decode.by_bound[k] * s:.3f}" for k in BOUNDS)))
    lines.append(_table(head2, body2))
    for n in rep["notes"]:
        lines += ["", "note: " + n]
    if rep.get("targets"):
        lines += ["", "targets (LLaMA-2-7B on the U280):"]
        for t in rep["targets"]:
            if "error" in t:
                lines.append(f"  {t['target']}: not evaluated: {t['error']}")
            elif "single_stream_pct" in t:
                lines.append(f"  {t['target']}: best row '{t['scenario']}' reaches "
                             f"{t['single_stream_pct']:.1%} for one sequence "
                             f"({'met' if t['met_single_stream'] else 'NOT met'}), "
                             f"{t['aggregate_pct']:.1%} over {t['instances']} instances "
                             f"({'met' if t['met_aggregate'] else 'NOT met'})")
            elif not t["fits"]:
                lines.append(f"  {t['target']}: '{t['scenario']}' would give "
                             f"{t['tokens_per_s']:.1f} tok/s but NOT met: it "
                             f"{t['reason']}")
            else:
                lines.append(f"  {t['target']}: '{t['scenario']}' gives "
                             f"{t['tokens_per_s']:.1f} tok/s for one sequence "
                             f"({'met' if t['met_single_stream'] else 'NOT met'}), "
                             f"{t['aggregate_tokens_per_s']:.1f} over {t['instances']} "
                             f"instances ({'met' if t['met_aggregate'] else 'NOT met'})")
    if rep.get("agreement"):
        lines += ["", rep["agreement"]["text"]]
    chosen = rows[rep["requested"]]
    lines += ["", f"assumptions: kernel clock {rep['clock_mhz']:g} MHz (the platform's default; "
              f"the core's timing is not closed on a part), memory read latency "
              f"{rep['latency']} cycles, peak bank bandwidth (no refresh, no conflicts), "
              f"the image striped over the banks, no host time per token; resources: "
              f"{chosen.resources_source}: {SOURCE_NOTE}",
              "", f"fit of '{chosen.label}' ({chosen.instances} instances):",
              fit_table([chosen.fit]) if chosen.fit else "-"]
    return "\n".join(lines)


def _table(head, body) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda row: "  ".join(str(x).ljust(w[i]) if i == 0 else str(x).rjust(w[i])
                                for i, x in enumerate(row))
    return "\n".join([fmt(head), fmt(["-" * n for n in w])] + [fmt(r) for r in body])


def roofline(rep: dict, path: Path) -> Path:
    """The operating points (decode and prefill of every scenario, MACs per byte vs
    MAC/s of one instance) against the board's bandwidth roof, each scenario's port
    roof and its engines' peak."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows: list[Scenario] = rep["_rows"]
    core = rep["core"]
    bw = rows[0].bandwidth
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [10 ** (i / 20) for i in range(-20, 61)]
    ax.plot(xs, [bw * x for x in xs], "k-", lw=1.5, label=f"board bandwidth {bw / 1e9:.0f} GB/s")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dec = _decoder_of(rep)
    for i, r in enumerate(rows):
        c = colors[i % len(colors)]
        fmt = Format.of(r.system, dec)
        port = min(r.system.ports * core["beat_bytes"] * r.clock_hz, bw)
        peak = (r.system.ports * core["rows"] * fmt.codes_per_beat(core["beat_bytes"])
                * r.clock_hz)
        roof = [min(port * x, peak) for x in xs]
        ax.plot(xs, roof, "--", color=c, lw=1)
        for name, t, marker in (("decode", r.decode, "o"), ("prefill", r.prefill, "s")):
            if t.bytes and math.isfinite(t.seconds):
                ax.scatter([t.macs / t.bytes], [t.macs / t.seconds], color=c, marker=marker,
                           zorder=3, label=f"{r.label}: {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs per byte moved")
    ax.set_ylabel("MAC/s (one core instance)")
    ax.set_title(f"{rep['model']['name']} on {rep['board']['name'].upper()}: roofline "
                 f"(dashed: each scenario's ports and engines)", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _decoder_of(rep: dict):
    from golden.decoder_config import DecoderConfig
    return DecoderConfig.from_dict(rep["decoder"])


def output_stem(model: str, scheme: str, board: str, system: SystemConfig) -> str:
    """File stem of a report: board, model, scheme, context and the what-ifs."""
    tags = "-".join(re.sub(r"[^A-Za-z0-9.]+", "", w.replace(" ", "")) for w in system.whatifs)
    return f"{board}-{Path(model).stem if '/' in model else model}-{scheme}-ctx{system.context}" \
        + (f"-{tags}" if tags else "")


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """`python -m fpga_boards perf`: evaluate, print the table and write the report; returns the
    exit status."""
    ap = argparse.ArgumentParser(prog="python -m fpga_boards perf",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="u280", help=f"one of {', '.join(sorted(BOARDS))}")
    ap.add_argument("--model", default="llama2-7b",
                    help=f"{', '.join(sorted(MODELS))}, or a HF config.json path")
    ap.add_argument("--scheme", default="w4a8kv4-g128",
                    help="w<bits>a8kv4-g<group>[-plain] or a quantflow scheme name")
    ap.add_argument("--core-config", help="JSON object of CoreConfig fields over the default")
    ap.add_argument("--context", type=int, default=1024, help="tokens in the KV cache")
    ap.add_argument("--prompt", type=int, default=0, help="prefill tokens (0: the context)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (what-if > 1)")
    ap.add_argument("--sparsity", default="dense", help="dense or N:M (what-if: sparse DSP)")
    ap.add_argument("--engine", default="", help="mixpe or sparse_dsp ('': by --sparsity)")
    ap.add_argument("--packed", action="store_true", help="what-if: packed W codes")
    ap.add_argument("--ports", type=int, default=1, help="what-if: engine slices / ports")
    ap.add_argument("--kv-units", type=int, default=1, help="what-if: KV4 units at once")
    ap.add_argument("--attention", default="kv4", help="kv4 or pim (what-if, batch >= 2)")
    ap.add_argument("--instances", type=int, default=0, help="core instances (0: max)")
    ap.add_argument("--clock-mhz", type=float, default=0.0, help="0: the board's kernel clock")
    ap.add_argument("--latency", type=int, default=None, help="memory read latency, cycles")
    ap.add_argument("--out", type=Path, default=PERF_DIR)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-agreement", action="store_true")
    a = ap.parse_args(argv)
    try:
        system = SystemConfig(context=a.context, prompt=a.prompt, batch=a.batch,
                              sparsity=a.sparsity, engine=a.engine, packed=a.packed,
                              ports=a.ports,
                              kv_units=a.kv_units, attention=a.attention,
                              instances=a.instances, clock_mhz=a.clock_mhz,
                              **_scheme_fields(a.scheme))
        rep = evaluate(a.model, a.scheme, a.board, system, core_config=a.core_config,
                       latency=a.latency, with_agreement=not a.no_agreement)
    except FitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (PerfError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(rep))
    from quattro_fs import atomic_write_text
    stem = output_stem(a.model, a.scheme, rep["board"]["name"], system)
    jpath = a.out / f"{stem}.json"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(jpath, json.dumps({k: v for k, v in rep.items() if k != "_rows"},
                                        indent=1, default=str) + "\n")
    print(f"\nwrote {jpath}")
    if not a.no_plot:
        print(f"wrote {roofline(rep, a.out / f'{stem}-roofline.png')}")
    return 0


def _scheme_fields(scheme: str) -> dict:
    s = parse_scheme(scheme)
    return {"w_bits": s.weight.bits, "group": s.weight.group}


if __name__ == "__main__":
    sys.exit(main())
