"""The accelerator core's linear engine (docs/core.md §1, DESIGN §3.3) in Amaranth 0.5:
one LINEAR row tile, acc[t, n] = sum_k a[t, k] * w8[n, k], with the QoQ weights
w8 = (q - z[g]) * s2[g] (golden.mixpe.dequant_w8) streamed from memory exactly as the
AXI read port delivers them, bit-exact with golden.core (`_Machine._acc`).

MixPE's arithmetic (hdl.mixpe) with the PEs along K instead of along N: a decode step
is memory-bound, so the engine takes one read beat per cycle, and a beat is
`beat_bytes` (B) consecutive codes of ONE output n. rows x B multiplier-free PEs form
a . q for that beat (shift-and-add: one gated shifted copy of a per code bit), an
adder tree per token row sums them, and the per-group dequantisation is applied once
per group to the group's sums, per row:

    acc[t] += s2 * (P - z * A),  P = sum_{k in g} a[t, k] q[k],  A = sum_{k in g} a[t, k]

(z * A is a shift-and-add product too; s2 * (...) is the engine's one multiplier per
row.) The sums are exact: acc is as wide as max_k products |a (q - z) s2| need, and
its low 32 bits leave with an `overflow` flag where golden.core raises.

Ports (the core is written against them):
  cmd   {n, k, group, tokens}       one LINEAR row tile (tokens = valid rows, 1..rows)
  act   {row, beat, data[lanes]}    A8 codes of token `row`, elements beat*lanes ..;
                                    into the activation file (rows x max_k int8);
                                    ready only while the engine is idle
  mem   B bytes, little-endian      raw read beats, per column tile (below)
  acc   {n, acc[rows], overflow}    one beat per output n = 0 .. n-1; acc[t] = 0 for
                                    t >= tokens; overflow: a valid row's exact sum
                                    has |acc| >= 2**31
  error a refused cmd (sticky until the next good cmd); busy from the cmd's transfer
        to the last acc transfer

mem beat order, for column tile j = 0, 1, .. (n0 = j cols, nt = min(cols, n - n0),
G = k / group), with no gap anywhere (tiles back to back):
  1. s2 block: ceil(nt G / B) beats from byte n0 G of the s2 tensor [n, G] (the bytes
     past the block in the last beat are ignored)
  2. z block: the same from the z tensor
  3. codes: nt k bytes from byte n0 k of the codes tensor [n, k], k / B beats per
     output, outputs in order
`cols % B == 0` puts every block on a beat boundary and `group % B == 0` keeps a beat
inside one group; `mem_words` lays a tile's tensors out in this order.

Control. A cmd is checked before it is taken: its group divides k (a restoring
divider, `accept_delay` cycles while cmd.valid is held) and every field is in range
(k in 1..max_k, n in 1..max_n, group in [32, 256] (golden.core's range; the
s2/z memories hold k / 32 groups) and a multiple of B, tokens in 1..rows); a bad cmd transfers with `error` set and nothing else happens. The s2 and z
blocks go into two on-chip memories of cols * (max_k // 32) bytes (one beat-wide word
per beat); the codes go straight into the pipeline. Per code beat a byte pointer
names the (output, group) of its s2 and z: the pointer is (output in tile) G + group,
so it just counts group ends.

Pipeline (cycle t = the cycle a code beat transfers; every stage moves together, adv
= ~acc.valid | acc.ready, so back-pressure on acc freezes it and holds mem.ready low):
  t    F   mem beat; the activation file is read at its k, s2/z at the byte pointer
  t+1  S1  pp[t][i] = a[t][i] * q[i] by shift-and-add; Ab = sum_i a[t][i]; the s2, z
           bytes picked out of their words (registered)
  t+2  S2  Pb = adder tree over the beat's B products per row (registered)
  t+3  S3  group sums P += Pb, A += Ab (restart on a group's first beat); at the
           group's last beat (P, A, s2, z) go on to the dequant stages
  t+4  D1  d = P - z * A (shift-and-add)
  t+5  D2  m = s2 * d (one multiplier per row)
  t+6  D3  acc = (first group ? 0 : acc) + m; at the output's last group this
           register is the acc beat (valid from t+7)
so an output's acc beat leaves LATENCY = 7 cycles after its last code beat, while
the next output's codes stream. The s2/z read for a beat happens in its F cycle, so
the next tile's s2 block may overwrite the memory from the very next cycle.

Cycle model (`cycle_model`, ideal streams, from the cmd's transfer to the last acc
transfer inclusive): the first mem beat transfers the cycle after the cmd, then one
beat per cycle,
    cycles = sum over tiles (2 ceil(nt G / B) + nt k / B) + LATENCY + 1,
and the cmd itself is held `accept_delay(config)` cycles (the divider) before its
transfer when the engine is idle.

Resources: rows x B shift-and-add PEs (w_bits gated adds each), rows adder trees of
B terms, rows group accumulators, rows 8-term shift-and-add z * A, rows s2 x d
multipliers (unsigned 8 x signed 25 bits: one DSP each), rows exact accumulators of
ceil(log2(max_k 128 255 255)) + 1 bits (36 at max_k 4096); memories: rows activation
files of max_k bytes (words of max(B, lanes) bytes, lanes-wide byte enables), s2 and
z of cols * (max_k // 32) bytes each (B-byte words, one per beat).
Only the low w_bits of a code byte enter a PE: the compiler refuses codes wider than
the core's w_bits (quantflow.program.check_core); z is a full byte (its product with
A is outside the PEs).
"""
from __future__ import annotations

from typing import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden.core_config import FIELDS, CoreConfig
from golden.formats import ACC_BITS, ACT_BITS, ACT_MAX, ACT_MIN
from golden.mixpe_config import MIXPE_GROUP_RANGE
from golden.validate import expect_type

from .mixpe import shift_add_product
from .rtl import FSM, count_width, is_const, tree_sum, wire

__all__ = ["LATENCY", "BYTE", "LinearEngine", "cmd_layout", "act_layout", "acc_layout",
           "refusal", "tile_shapes", "mem_beats", "cycle_model", "accept_delay",
           "quotient_bits", "mem_words", "pack_cmd", "pack_act", "unpack_acc"]

#: Cycles from a tile's (an output's) last code beat transfer to its acc beat being
#: valid (module docstring: S1 S2 S3 D1 D2 D3).
LATENCY = 7
#: s2, z and the codes are one byte each in memory (quantflow.compile).
BYTE = 8
_N_BITS = FIELDS["n"].width
_K_BITS = FIELDS["k"].width
_GROUP_BITS = FIELDS["group"].width
_GROUP_MIN, _GROUP_MAX = MIXPE_GROUP_RANGE
#: |a (q - z) s2| for one k: INT8 activation, byte codes, zeros and scales.
_TERM_MAX = -ACT_MIN * 255 * 255


def _cfg(config) -> CoreConfig:
    c = expect_type("config", config, CoreConfig)
    B, lanes = c.beat_bytes, c.sfu.lanes
    if c.cols % B:
        raise ValueError(f"LinearEngine: cols={c.cols} is not a multiple of beat_bytes={B}, "
                         f"so a column tile's s2/z block would not start on a beat; choose "
                         f"cols as a multiple of {B} (e.g. {-(-c.cols // B) * B})")
    word = max(B, lanes)
    if c.max_k % word:
        raise ValueError(f"LinearEngine: max_k={c.max_k} is not a multiple of "
                         f"max(beat_bytes, sfu.lanes)={word} (the activation file holds "
                         f"whole beats of both); round max_k up to "
                         f"{-(-c.max_k // word) * word}")
    return c


# --------------------------------------------------------------------------- layouts
def cmd_layout(config: CoreConfig) -> data.StructLayout:
    """Layout of the engine's cmd word: output channels n, depth k, group size, tokens."""
    c = _cfg(config)
    return data.StructLayout({"n": unsigned(_N_BITS), "k": unsigned(_K_BITS),
                              "group": unsigned(_GROUP_BITS),
                              "tokens": Shape.cast(range(c.rows + 1))})


def act_layout(config: CoreConfig) -> data.StructLayout:
    """Layout of an act write: token row, beat index along k, sfu.lanes INT8 values."""
    c = _cfg(config)
    return data.StructLayout({"row": Shape.cast(range(c.rows)),
                              "beat": Shape.cast(range(c.max_k // c.sfu.lanes)),
                              "data": data.ArrayLayout(signed(ACT_BITS), c.sfu.lanes)})


def acc_layout(config: CoreConfig) -> data.StructLayout:
    """Layout of an acc beat: output channel n, one int32 per row, overflow flag."""
    c = _cfg(config)
    return data.StructLayout({"n": unsigned(_N_BITS),
                              "acc": data.ArrayLayout(signed(ACC_BITS), c.rows),
                              "overflow": unsigned(1)})


# --------------------------------------------------------------------------- model
def quotient_bits(config: CoreConfig) -> int:
    """Bits of G = k / group: G <= max_k // 32 (the smallest group)."""
    return count_width(_cfg(config).max_k // _GROUP_MIN)


def accept_delay(config: CoreConfig) -> int:
    """Cycles an idle engine holds a valid cmd before its transfer: one per quotient
    bit of k / group (the divider), then the accept cycle."""
    return quotient_bits(config) + 1


def refusal(config: CoreConfig, n: int, k: int, group: int, tokens: int) -> str | None:
    """Why the engine refuses this cmd (it sets `error`), or None: the RTL's checks."""
    c = _cfg(config)
    if not 1 <= k <= c.max_k:
        return f"k={k} outside 1..max_k={c.max_k}"
    if not 1 <= n <= c.max_n:
        return f"n={n} outside 1..max_n={c.max_n}"
    if not _GROUP_MIN <= group <= _GROUP_MAX or group % c.beat_bytes:
        return (f"group={group} must lie in [{_GROUP_MIN}, {_GROUP_MAX}] and be a multiple "
                f"of beat_bytes={c.beat_bytes}")
    if k % group:
        return f"group={group} does not divide k={k}"
    if not 1 <= tokens <= c.rows:
        return f"tokens={tokens} outside 1..rows={c.rows}"
    return None


def tile_shapes(config: CoreConfig, n: int, k: int, group: int) -> list[tuple[int, int]]:
    """(nt, scale block beats) of each column tile."""
    c = _cfg(config)
    G, B = k // group, c.beat_bytes
    return [(min(c.cols, n - n0), -(-min(c.cols, n - n0) * G // B))
            for n0 in range(0, n, c.cols)]


def mem_beats(config: CoreConfig, n: int, k: int, group: int) -> int:
    """mem beats of one cmd: per tile the s2 and z blocks and nt k / B code beats."""
    c = _cfg(config)
    return sum(2 * blk + nt * k // c.beat_bytes for nt, blk in tile_shapes(c, n, k, group))


def cycle_model(config: CoreConfig, n: int, k: int, group: int, tokens: int) -> int:
    """Cycles from the cmd's transfer to the last acc transfer, both inclusive, with
    an always-valid mem stream and an always-ready acc sink: the beats back to back
    from the cycle after the cmd, the last output LATENCY cycles behind its last
    beat. ValueError for a cmd the engine refuses."""
    why = refusal(config, n, k, group, tokens)
    if why:
        raise ValueError(f"the engine refuses this cmd: {why}")
    return mem_beats(config, n, k, group) + LATENCY + 1


def mem_words(config: CoreConfig, codes: bytes, s2: bytes, z: bytes, n: int, k: int,
              group: int) -> list[int]:
    """The mem beats of one cmd, as ints, in the order the engine takes them (module
    docstring). codes, s2 and z are the bytes of the tensors [n, k], [n, G], [n, G]
    row-major as they sit in memory; s2 and z may run on (the bytes that follow them
    in memory fill a block's last beat; zeros past their end)."""
    c = _cfg(config)
    B, G = c.beat_bytes, k // group
    codes, s2, z = bytes(codes), bytes(s2), bytes(z)
    if len(codes) < n * k or len(s2) < n * G or len(z) < n * G:
        raise ValueError(f"need {n * k} code bytes and {n * G} s2 and z bytes, got "
                         f"{len(codes)}, {len(s2)}, {len(z)}")
    words = []

    def beats(raw: bytes, start: int, count: int):
        block = raw[start:start + count * B].ljust(count * B, b"\0")
        words.extend(int.from_bytes(block[i:i + B], "little") for i in range(0, len(block), B))

    for j, (nt, blk) in enumerate(tile_shapes(c, n, k, group)):
        n0 = j * c.cols
        beats(s2, n0 * G, blk)
        beats(z, n0 * G, blk)
        beats(codes, n0 * k, nt * k // B)
    return words


def _put(layout, values: dict) -> int:
    word = 0
    for name, v in values.items():
        f = layout[name]
        word |= (int(v) & ((1 << f.width) - 1)) << f.offset
    return word


def pack_cmd(config: CoreConfig, n: int, k: int, group: int, tokens: int) -> int:
    """The cmd word (fields cut to their widths, as the core's wires would)."""
    return _put(cmd_layout(config), {"n": n, "k": k, "group": group, "tokens": tokens})


def pack_act(config: CoreConfig, row: int, beat: int, values: Sequence[int]) -> int:
    """The act word writing `lanes` int8 `values` of token `row` at elements
    beat*lanes .. ."""
    c = _cfg(config)
    values = [int(v) for v in values]
    if len(values) != c.sfu.lanes or any(not ACT_MIN <= v <= ACT_MAX for v in values):
        raise ValueError(f"an act beat is {c.sfu.lanes} int8 values, got {values}")
    lay = act_layout(c)
    word = _put(lay, {"row": row, "beat": beat})
    for i, v in enumerate(values):
        word |= (v & 0xFF) << (lay["data"].offset + ACT_BITS * i)
    return word


def unpack_acc(config: CoreConfig, word: int) -> tuple[int, list[int], int]:
    """(n, acc[rows] as signed ints, overflow) of an acc beat."""
    c = _cfg(config)
    lay = acc_layout(c)
    word = int(word)
    accs = []
    for t in range(c.rows):
        v = (word >> (lay["acc"].offset + ACC_BITS * t)) & ((1 << ACC_BITS) - 1)
        accs.append(v - (1 << ACC_BITS) if v >> (ACC_BITS - 1) else v)
    n = (word >> lay["n"].offset) & ((1 << _N_BITS) - 1)
    return n, accs, (word >> lay["overflow"].offset) & 1


# --------------------------------------------------------------------------- RTL
def _pick(index, values):
    """values[index] by a binary tree of 2:1 muxes (log depth, where rtl.select is a
    chain): len(values) == 2 ** len(index)."""
    values = list(values)
    assert len(values) == 1 << len(index), (len(values), len(index))
    for b in range(len(index)):
        values = [Mux(index[b], values[2 * i + 1], values[2 * i])
                  for i in range(len(values) // 2)]
    return values[0]


def _range(lo: int, hi: int) -> Shape:
    return Shape.cast(range(lo, hi + 1))


class LinearEngine(wiring.Component):
    """The linear engine of the core (module docstring): cmd, act, mem in; acc out;
    error, busy flags."""

    def __init__(self, config: CoreConfig):
        self.config = c = _cfg(config)
        self.lb = exact_log2(c.beat_bytes)
        self.word_bytes = max(c.beat_bytes, c.sfu.lanes)   # activation file word
        self.g_max = c.max_k // _GROUP_MIN                 # groups per output at most
        self.sz_bytes = c.cols * self.g_max                # s2 / z memory bytes each
        self.qbits = quotient_bits(c)
        self.kb_shape = Shape.cast(range(max(2, c.max_k // c.beat_bytes)))
        self.bg_shape = Shape.cast(range(max(2, _GROUP_MAX // c.beat_bytes)))
        levels = (1 << c.w_bits) - 1
        B, gm = c.beat_bytes, _GROUP_MAX
        self.shapes = {
            "pp": _range(ACT_MIN * levels, ACT_MAX * levels),          # a * q
            "pb": _range(ACT_MIN * levels * B, ACT_MAX * levels * B),  # one beat's sum
            "ab": _range(ACT_MIN * B, ACT_MAX * B),
            "P": _range(ACT_MIN * levels * gm, ACT_MAX * levels * gm),
            "A": _range(ACT_MIN * gm, ACT_MAX * gm),
            # d = P - z A = sum a (q - z), |q - z| <= 255
            "d": _range(-_TERM_MAX // 255 * gm, _TERM_MAX // 255 * gm),
            "m": _range(-_TERM_MAX * gm, _TERM_MAX * gm),
            "acc": _range(-_TERM_MAX * c.max_k, _TERM_MAX * c.max_k),
        }
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(c))),
            "act": In(stream.Signature(act_layout(c))),
            "mem": In(stream.Signature(unsigned(BYTE * B))),
            "acc": Out(stream.Signature(acc_layout(c))),
            "error": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the engine: cmd decode, weight stream from mem, MixPE arithmetic, acc output."""
        m = Module()
        c = self.config
        fsm = FSM(m, ("IDLE", "DIV", "ACCEPT", "S2", "Z", "CODE", "DRAIN"), "state")
        adv = Signal()          # every pipeline stage moves (the acc register is free)
        out_valid = Signal()
        m.d.comb += adv.eq(~out_valid | self.acc.ready)
        idle = wire(m, fsm.is_("IDLE") | fsm.is_("DIV") | fsm.is_("ACCEPT"), "idle")
        m.d.comb += self.busy.eq(~idle)
        ctl = self._command(m, fsm)
        self._activations(m, idle)
        f = self._stream(m, fsm, adv, ctl)
        s1 = self._front(m, adv, f)
        self._back(m, fsm, adv, out_valid, ctl, s1)
        return m

    # ----------------------------------------------------------------- command
    def _command(self, m, fsm):
        """IDLE -> DIV (k / group, one quotient bit a cycle, while cmd.valid holds)
        -> ACCEPT (the transfer: refused, or latched and the first tile loaded)."""
        c, q = self.config, self.qbits
        p = self.cmd.payload
        # One width for both (Verilog operands of equal width): k > max_k is refused
        # whatever its low bits divide to.
        dw = max(count_width(c.max_k), _GROUP_BITS + q - 1)
        rem = Signal(dw)
        dsh = Signal(dw)                         # group << (remaining quotient bits)
        quot = Signal(q)                         # G of the accepted cmd
        step = Signal(range(q))
        # The counters' last values (n - 1, k / B - 1, group / B - 1), so that every
        # compare is between equal widths.
        ctl = {"G": quot, "n_last": Signal(_N_BITS, name="n_last"),
               "kb_last": Signal(self.kb_shape, name="kb_last"),
               "bg_last": Signal(self.bg_shape, name="bg_last"),
               "tok": Signal(c.rows, name="tok_mask"),
               "accept": Signal(name="accept")}
        m.d.comb += [self.cmd.ready.eq(fsm.is_("ACCEPT")),
                     ctl["accept"].eq(self.cmd.valid & self.cmd.ready)]
        with fsm.state("IDLE"):
            with m.If(self.cmd.valid):
                m.d.sync += [rem.eq(p.k), quot.eq(0), step.eq(q - 1),
                             dsh.eq(Cat(Const(0, q - 1), p.group) if q > 1 else p.group)]
                fsm.next("DIV")
        with fsm.state("DIV"):
            # Restoring division: k < group * 2**q whenever k <= max_k and group >= 32;
            # otherwise the remainder stays >= group and the cmd is refused anyway.
            ge = wire(m, rem >= dsh, "div_ge")
            with m.If(ge):
                m.d.sync += rem.eq(rem - dsh)
            m.d.sync += [quot.eq(Cat(ge, quot[:q - 1]) if q > 1 else ge),
                         dsh.eq(dsh >> 1), step.eq(step - 1)]
            with m.If(is_const(step, 0)):
                fsm.next("ACCEPT")
        lb = self.lb
        bad = wire(m, is_const(p.k, 0) | (p.k > c.max_k) | is_const(p.n, 0) | (p.n > c.max_n)
                   | (p.group < _GROUP_MIN) | (p.group > _GROUP_MAX) | p.group[:lb].any()
                   | rem.any() | is_const(p.tokens, 0) | (p.tokens > c.rows), "cmd_bad")
        ctl["bad"] = bad
        with fsm.state("ACCEPT"):
            with m.If(~self.cmd.valid):
                fsm.next("IDLE")     # the source broke the stream contract: start over
            with m.Elif(bad):
                m.d.sync += self.error.eq(1)
                fsm.next("IDLE")
            with m.Else():
                m.d.sync += [self.error.eq(0), ctl["n_last"].eq(p.n - 1),
                             ctl["kb_last"].eq(p.k[lb:] - 1),
                             ctl["bg_last"].eq(p.group[lb:] - 1),
                             ctl["tok"].eq(Cat(p.tokens > r for r in range(c.rows)))]
                fsm.next("S2")
        return ctl

    # ----------------------------------------------------------------- act file
    def _activations(self, m, idle):
        """rows memories of max_k int8, one word = max(B, lanes) bytes: an act beat
        writes its lanes bytes of a word (byte-lane enables), a code beat reads B."""
        c = self.config
        W, lanes = self.word_bytes, c.sfu.lanes
        slots = W // lanes
        p = self.act.payload
        m.d.comb += self.act.ready.eq(idle)
        fire = wire(m, self.act.valid & self.act.ready, "act_fire")
        self.act_rd = []
        sb = exact_log2(slots)
        for r in range(c.rows):
            mem = memory.Memory(shape=unsigned(BYTE * W), depth=c.max_k // W, init=[])
            m.submodules[f"act_{r}"] = mem
            wp = mem.write_port(granularity=BYTE * lanes) if slots > 1 else mem.write_port()
            hit = fire & (p.row == r) if c.rows > 1 else fire
            m.d.comb += [wp.addr.eq(p.beat[sb:]),
                         wp.data.eq(Cat(*[p.data.as_value()] * slots))]
            if slots > 1:
                m.d.comb += wp.en.eq(Cat(hit & (p.beat[:sb] == j) for j in range(slots)))
            else:
                m.d.comb += wp.en.eq(hit)
            self.act_rd.append(mem.read_port())

    # ----------------------------------------------------------------- mem stream
    def _stream(self, m, fsm, adv, ctl):
        """mem.ready, the scale blocks into their memories, the code beat counters
        and the tile sequence. Returns the F stage: fire, the payload and the beat's
        flags and read addresses."""
        c, lb = self.config, self.lb
        B = c.beat_bytes
        fire = Signal(name="mem_fire")
        m.d.comb += [self.mem.ready.eq(adv & (fsm.is_("S2") | fsm.is_("Z") | fsm.is_("CODE"))),
                     fire.eq(self.mem.valid & self.mem.ready)]
        sz_depth = self.sz_bytes // B
        n_left = Signal(_N_BITS)                       # outputs of the tiles not begun
        nl = Signal(range(c.cols), name="output_in_tile")
        blk_i = Signal(range(sz_depth), name="scale_beat")
        nl_last = Signal(len(nl), name="nl_last")           # this tile's nt - 1
        blk_last_i = Signal(len(blk_i), name="blk_last_i")  # its scale block beats - 1
        # The next tile's shape, from n (at the cmd) or n_left (at a tile's end).
        n_src = wire(m, Mux(ctl["accept"], self.cmd.payload.n, n_left), "n_src")
        full = wire(m, n_src >= c.cols, "full_tile")
        nt_nx = Signal(range(c.cols + 1), name="nt_next")
        blk_nx = Signal(range(sz_depth + 1), name="blk_next")
        m.d.comb += [nt_nx.eq(Mux(full, c.cols, n_src)),
                     blk_nx.eq((nt_nx * ctl["G"] + (B - 1)) >> lb)]

        def load_tile():
            m.d.sync += [nl_last.eq(nt_nx - 1), blk_last_i.eq(blk_nx - 1),
                         n_left.eq(Mux(full, n_src - c.cols, 0)), blk_i.eq(0)]

        with m.If(ctl["accept"] & ~ctl["bad"]):
            load_tile()

        # Scale blocks: one memory word per beat.
        blk_last = wire(m, blk_i == blk_last_i, "blk_last")
        self.sz_rd = {}
        for name in ("s2", "z"):
            mem = memory.Memory(shape=unsigned(BYTE * B), depth=sz_depth, init=[])
            m.submodules[f"{name}_mem"] = mem
            wp = mem.write_port()
            st = name.upper()
            m.d.comb += [wp.addr.eq(blk_i), wp.data.eq(self.mem.payload),
                         wp.en.eq(fire & fsm.is_(st))]
            self.sz_rd[name] = mem.read_port()
            with fsm.state(st):
                with m.If(fire):
                    m.d.sync += blk_i.eq(Mux(blk_last, 0, blk_i + 1))
                    with m.If(blk_last):
                        fsm.next("Z" if name == "s2" else "CODE")

        # Code beats: position in group, output, tile; the s2/z byte pointer.
        bg = Signal(self.bg_shape, name="beat_in_group")
        kb = Signal(self.kb_shape, name="beat_in_output")
        fo = Signal(init=1, name="first_group")
        sz_ptr = Signal(range(self.sz_bytes), name="sz_ptr")
        lg = wire(m, bg == ctl["bg_last"], "last_beat_of_group")
        lo = wire(m, kb == ctl["kb_last"], "last_beat_of_output")
        lt = wire(m, lo & (nl == nl_last), "last_beat_of_tile")
        with fsm.state("CODE"):
            with m.If(fire):
                m.d.sync += [bg.eq(Mux(lg, 0, bg + 1)), kb.eq(Mux(lo, 0, kb + 1)),
                             fo.eq(lo | (fo & ~lg)),
                             sz_ptr.eq(Mux(lt, 0, Mux(lg, sz_ptr + 1, sz_ptr))),
                             nl.eq(Mux(lt, 0, Mux(lo, nl + 1, nl)))]
                with m.If(lt):
                    with m.If(is_const(n_left, 0)):
                        fsm.next("DRAIN")
                    with m.Else():
                        load_tile()
                        fsm.next("S2")
        sl = exact_log2(self.word_bytes // B)
        for rp in self.act_rd:
            m.d.comb += [rp.addr.eq(kb[sl:]), rp.en.eq(adv)]
        for rp in self.sz_rd.values():
            m.d.comb += [rp.addr.eq(sz_ptr[lb:]), rp.en.eq(adv)]
        # Only the low w_bits of each code byte enter the PEs (codes wider than the
        # PEs are refused by the compiler: quantflow.program.check_core).
        q = Cat(self.mem.payload[i * BYTE:i * BYTE + c.w_bits] for i in range(B))
        f = {"fire": wire(m, fire & fsm.is_("CODE"), "code_fire"), "q": q,
             "fg": is_const(bg, 0), "lg": lg, "fo": fo, "lo": lo, "byte": sz_ptr[:lb]}
        if sl:
            f["slice"] = kb[:sl]
        return f

    # ----------------------------------------------------------------- S1 .. S3
    def _front(self, m, adv, f):
        """S1 (shift-and-add products), S2 (adder tree), S3 (group sums). Returns the
        D1 stage's registers."""
        c, B, sh = self.config, self.config.beat_bytes, self.shapes

        def stage(name, values: dict, valid):
            """Registers `<name>_<key>` of `values`, loaded when the pipeline moves."""
            regs = {}
            for key, v in values.items():
                if isinstance(v, list):
                    regs[key] = [Signal(x.shape(), name=f"{name}_{key}{i}")
                                 for i, x in enumerate(v)]
                    src = list(zip(regs[key], v))
                else:
                    regs[key] = Signal(v.shape(), name=f"{name}_{key}")
                    src = [(regs[key], v)]
                with m.If(adv):
                    m.d.sync += [r.eq(x) for r, x in src]
            regs["v"] = Signal(name=f"{name}_valid")
            with m.If(adv):
                m.d.sync += regs["v"].eq(valid)
            return regs

        flags = ("fg", "lg", "fo", "lo")
        s1 = stage("s1", {k: v for k, v in f.items() if k != "fire"}, f["fire"])
        self.stage = stage
        # S1: the activation words arrive from the file; products and the beat's A.
        nsl = self.word_bytes // B
        a = []
        for r, rp in enumerate(self.act_rd):
            words = [rp.data[i * BYTE * B:(i + 1) * BYTE * B] for i in range(nsl)]
            word = wire(m, _pick(s1["slice"], words) if nsl > 1 else words[0], f"a_word{r}")
            a.append([word[i * BYTE:(i + 1) * BYTE].as_signed() for i in range(B)])
        pp, ab = [], []
        for r in range(c.rows):
            for i in range(B):
                x = Signal(sh["pp"], name=f"pp_{r}_{i}")
                wb = c.w_bits
                m.d.comb += x.eq(shift_add_product(a[r][i], s1["q"][i * wb:(i + 1) * wb], wb))
                pp.append(x)
            x = Signal(sh["ab"], name=f"ab_{r}")
            m.d.comb += x.eq(tree_sum(a[r]))
            ab.append(x)
        picks = {}
        for name, rp in self.sz_rd.items():
            picks[name] = wire(m, _pick(s1["byte"], [rp.data[i * BYTE:(i + 1) * BYTE]
                                                     for i in range(B)]), f"{name}_byte")
        s2 = stage("s2", {"pp": pp, "ab": ab, **picks, **{k: s1[k] for k in flags}}, s1["v"])
        # S2: one adder tree per row over the beat's B products.
        pb = []
        for r in range(c.rows):
            x = Signal(sh["pb"], name=f"pb_{r}")
            m.d.comb += x.eq(tree_sum(s2["pp"][r * B:(r + 1) * B]))
            pb.append(x)
        s3 = stage("s3", {"pb": pb, "ab": s2["ab"], "s2": s2["s2"], "z": s2["z"],
                          **{k: s2[k] for k in flags}}, s2["v"])
        # S3: group sums; the finished ones (with the group's s2, z) go to D1.
        pn, an = [], []
        for r in range(c.rows):
            P = Signal(sh["P"], name=f"P_{r}")
            A = Signal(sh["A"], name=f"A_{r}")
            pn.append(Signal(sh["P"], name=f"P_next{r}"))
            an.append(Signal(sh["A"], name=f"A_next{r}"))
            m.d.comb += [pn[r].eq(Mux(s3["fg"], 0, P) + s3["pb"][r]),
                         an[r].eq(Mux(s3["fg"], 0, A) + s3["ab"][r])]
            with m.If(adv & s3["v"]):
                m.d.sync += [P.eq(pn[r]), A.eq(an[r])]
        return stage("d1", {"P": pn, "A": an, "s2": s3["s2"], "z": s3["z"], "fo": s3["fo"],
                            "lo": s3["lo"]}, s3["v"] & s3["lg"])

    # ----------------------------------------------------------------- D1 .. D3
    def _back(self, m, fsm, adv, out_valid, ctl, d1):
        """D1 d = P - z A, D2 m = s2 d, D3 the exact accumulator = the acc register."""
        c, sh, stage = self.config, self.shapes, self.stage
        d = []
        for r in range(c.rows):
            x = Signal(sh["d"], name=f"d_{r}")
            m.d.comb += x.eq(d1["P"][r] - shift_add_product(d1["A"][r], d1["z"], BYTE))
            d.append(x)
        d2 = stage("d2", {"d": d, "s2": d1["s2"], "fo": d1["fo"], "lo": d1["lo"]}, d1["v"])
        prod = []
        for r in range(c.rows):
            x = Signal(sh["m"], name=f"m_{r}")
            m.d.comb += x.eq(d2["s2"] * d2["d"][r])
            prod.append(x)
        d3 = stage("d3", {"m": prod, "fo": d2["fo"], "lo": d2["lo"]}, d2["v"])
        acc = [Signal(sh["acc"], name=f"acc_{r}") for r in range(c.rows)]
        ovf = Signal(c.rows, name="acc_overflow")
        for r in range(c.rows):
            nxt = Signal(sh["acc"], name=f"acc_next{r}")
            m.d.comb += nxt.eq(Mux(d3["fo"], 0, acc[r]) + d3["m"][r])
            with m.If(adv & d3["v"]):
                m.d.sync += [acc[r].eq(nxt),
                             ovf[r].eq((nxt >= 1 << (ACC_BITS - 1))
                                       | (nxt <= -(1 << (ACC_BITS - 1))))]
        with m.If(adv):
            m.d.sync += out_valid.eq(d3["v"] & d3["lo"])
        # The acc beat: the accumulator itself (the pipeline holds while it waits).
        out_n = Signal(_N_BITS, name="out_n")
        xfer = wire(m, self.acc.valid & self.acc.ready, "acc_xfer")
        tok = ctl["tok"]
        m.d.comb += [self.acc.valid.eq(out_valid), self.acc.payload.n.eq(out_n),
                     self.acc.payload.overflow.eq((ovf & tok).any())]
        for r in range(c.rows):
            m.d.comb += self.acc.payload.acc[r].eq(Mux(tok[r], acc[r][:ACC_BITS], 0))
        with m.If(ctl["accept"]):
            m.d.sync += out_n.eq(0)
        with m.Elif(xfer):
            m.d.sync += out_n.eq(out_n + 1)
        with fsm.state("DRAIN"):
            with m.If(xfer & (out_n == ctl["n_last"])):
                fsm.next("IDLE")
