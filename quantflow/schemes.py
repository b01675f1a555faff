"""Named, composable quantization schemes (issue 3).

A QuantScheme combines up to three independent components, each a frozen
dataclass (None = that tensor stays float):

  weight  WeightScheme  linear weights: RTN sym/asym per channel or group, or QoQ
                        progressive group (DESIGN §3.2); options: output-aware clip
                        search, AWQ-style input scaling, GPTQ error compensation
                        (implemented in quantflow.weightq)
  act     ActScheme     linear inputs: per-token dynamic symmetric INT8 (§3.1) with
                        SmoothQuant migration (alpha) folded into the norm / linear
                        that produces the input
  kv      KVScheme      K and V after RoPE: per token, per head, asymmetric 4-bit
                        with integer zero point (§3.7), SmoothAttention folded into
                        q_proj/k_proj, optional Walsh-Hadamard rotation, sink tokens,
                        a recent window (each query reads its last `window` tokens
                        at 8 bits, levels 240, as the KV4 attention unit does)

    get_scheme("w4a8kv4-g64")                 # the registry (SCHEMES)
    get_scheme("w4a8kv4-g64").components()    # {"W4": ..., "A8": ..., "KV4": ...}
    QuantScheme(name="mine", weight=WeightScheme(method="rtn-asym", group=32))

A fourth, optional field is no quantizer but a float-exact transform applied first:

  rotation  RotationScheme  an orthogonal rotation of the residual stream (QuaRot /
                        SpinQuant style) folded into the weights after the RMSNorm
                        weights are folded into their readers (quantflow.rotation);
                        every component of the scheme carries it
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.mixpe_config import MIXPE_WEIGHT_BITS
from golden.kv4_attention_config import KV4_MAX_RECENT, KV8_LEVELS
from golden.validate import check_bool, check_int

from .errors import QuantflowError

__all__ = ["DEFAULT_SCHEME", "WeightScheme", "ActScheme", "KVScheme", "RotationScheme", "QuantScheme",
           "SCHEMES", "get_scheme", "WEIGHT_METHODS", "ROTATION_KINDS"]

WEIGHT_METHODS = ("rtn-sym", "rtn-asym", "qoq")
#: quantflow.rotation.rotation_matrix's kinds (kept here so schemes import no torch code)
ROTATION_KINDS = ("hadamard", "random-hadamard", "block-hadamard", "random",
                  "kron-random-hadamard")


@dataclass(frozen=True, kw_only=True)
class WeightScheme:
    """How weights are quantized: method, bits and group size, with the clip search,
    AWQ and GPTQ options."""
    method: str = "qoq"
    bits: int = 4
    group: int | None = 64          # None: one scale per output channel
    clip_search: bool = False       # per-channel clip ratio minimising layer-output error
    awq: bool = False               # activation-aware input-channel scaling
    gptq: bool = False              # error-compensating rounding (Hessian of inputs)

    def __post_init__(self):
        if self.method not in WEIGHT_METHODS:
            raise QuantflowError(f"weight method {self.method!r} is not supported; use one "
                                 f"of {WEIGHT_METHODS}")
        check_int("bits", self.bits, 2)
        if self.method == "qoq" and self.bits not in MIXPE_WEIGHT_BITS:
            raise QuantflowError(f"qoq bits must be one of {MIXPE_WEIGHT_BITS}")
        if self.bits > 8:
            raise QuantflowError(f"weight bits must be <= 8, got {self.bits}")
        if self.group is not None:
            check_int("group", self.group, 1)
        if self.method == "qoq" and self.group is None:
            raise QuantflowError("qoq needs a group size (it is a group format); pass "
                                 "group=64 or use rtn-sym/rtn-asym per channel")
        for n in ("clip_search", "awq", "gptq"):
            check_bool(n, getattr(self, n))

    @property
    def needs_calibration(self) -> bool:
        """Whether quantizing needs calibration data (clip search, AWQ or GPTQ)."""
        return self.clip_search or self.awq or self.gptq

    @property
    def label(self) -> str:
        """A short description, e.g. "W4 qoq g64+awq"."""
        g = f"g{self.group}" if self.group else "ch"
        opts = "".join(f"+{n}" for n in ("clip", "awq", "gptq")
                       if getattr(self, {"clip": "clip_search"}.get(n, n)))
        return f"W{self.bits} {self.method} {g}{opts}"


@dataclass(frozen=True, kw_only=True)
class ActScheme:
    """How activations are quantized: INT8 per token, with optional SmoothQuant."""
    bits: int = 8
    smooth_alpha: float | None = 0.5   # SmoothQuant migration strength; None: off

    def __post_init__(self):
        if self.bits != 8:
            raise QuantflowError(f"activations are INT8 in MixPE (DESIGN §3.1); bits="
                                 f"{self.bits} is not supported")
        if self.smooth_alpha is not None and not (
                isinstance(self.smooth_alpha, (int, float)) and 0 <= self.smooth_alpha <= 1):
            raise QuantflowError(f"smooth_alpha must be in [0, 1] or None, got "
                                 f"{self.smooth_alpha!r}")

    @property
    def label(self) -> str:
        """A short description, e.g. "A8 per-token SmoothQuant a=0.5"."""
        sq = f" SmoothQuant a={self.smooth_alpha}" if self.smooth_alpha is not None else ""
        return f"A{self.bits} per-token{sq}"


@dataclass(frozen=True, kw_only=True)
class KVScheme:
    """window: for query position p, the tokens p-window+1..p are read from a second,
    8-bit copy of the cache with KV8_LEVELS = 240 levels (15 * 16: the KV4 unit's
    recent window, golden.kv4_attention_config.KV4Config.recent), the older ones at `bits`;
    0 = no window."""
    bits: int = 4
    smooth_attention: bool = True
    hadamard: bool = False
    sink_tokens: int = 0
    sink_bits: int = 8
    integer_zero: bool = True          # QServe keeps a fractional zero; §3.7 integer
    window: int = 0

    def __post_init__(self):
        check_int("kv bits", self.bits, 2)
        check_int("sink_bits", self.sink_bits, 2)
        check_int("sink_tokens", self.sink_tokens, 0)
        if self.bits > 8 or self.sink_bits > 8:
            raise QuantflowError("KV bits and sink_bits must be <= 8")
        for n in ("smooth_attention", "hadamard", "integer_zero"):
            check_bool(n, getattr(self, n))
        check_int("window", self.window, 0)
        if self.window > KV4_MAX_RECENT:
            raise QuantflowError(f"window must be in [0, {KV4_MAX_RECENT}] (the KV4 unit's "
                                 f"largest recent window), got {self.window}")

    @property
    def label(self) -> str:
        """A short description of the KV-cache quantization."""
        parts = [f"KV{self.bits} per-token-head asym"]
        if self.smooth_attention:
            parts.append("SmoothAttention")
        if self.hadamard:
            parts.append("Hadamard")
        if self.sink_tokens:
            parts.append(f"{self.sink_tokens} sink tokens @{self.sink_bits}b")
        if not self.integer_zero:
            parts.append("fractional zero")
        if self.window:
            parts.append(f"recent {self.window} @8b ({KV8_LEVELS} levels)")
        return " + ".join(parts)


@dataclass(frozen=True, kw_only=True)
class RotationScheme:
    """The residual stream rotated by quantflow.rotation.rotation_matrix(kind, hidden,
    seed=seed, block=block), after the RMSNorm weights are folded into the linears
    that read them (the LM head is then untied from the embedding). Exact in float;
    free in hardware (the rotation lives in the weights and the embedding)."""
    kind: str = "hadamard"
    seed: int = 0           # random kinds only
    block: int = 64         # block-hadamard / kron-random-hadamard only
    keep: int = 0           # channels left unrotated: the `keep` with the most energy at
                            # the norms' inputs on the calibration text (their norm
                            # weights stay in the norms); the rest get a rotation of
                            # order hidden - keep

    def __post_init__(self):
        if self.kind not in ROTATION_KINDS:
            raise QuantflowError(f"rotation kind {self.kind!r} is not supported; use one "
                                 f"of {ROTATION_KINDS}")
        check_int("rotation seed", self.seed, 0)
        check_int("rotation block", self.block, 1)
        check_int("rotation keep", self.keep, 0)

    @property
    def label(self) -> str:
        """A short description of the rotation."""
        k = self.kind
        if k in ("block-hadamard", "kron-random-hadamard"):
            k += f" {self.block}"
        if k.startswith(("random", "kron-random")):
            k += f" seed {self.seed}"
        if self.keep:
            k += f", {self.keep} massive channels kept"
        return f"rotated ({k})"


@dataclass(frozen=True, kw_only=True)
class QuantScheme:
    """A named quantization scheme: its weight, activation, KV and rotation components
    (each None when that part stays float)."""
    name: str
    weight: WeightScheme | None = None
    act: ActScheme | None = None
    kv: KVScheme | None = None
    rotation: RotationScheme | None = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise QuantflowError(f"scheme name must be a non-empty string without '/', got "
                                 f"{self.name!r}")
        for n, t in (("weight", WeightScheme), ("act", ActScheme), ("kv", KVScheme),
                     ("rotation", RotationScheme)):
            v = getattr(self, n)
            if v is not None and not isinstance(v, t):
                raise TypeError(f"{n} must be a {t.__name__} or None, got "
                                f"{type(v).__name__}")

    @property
    def is_float(self) -> bool:
        """Whether nothing is quantized (no weight, activation or KV component)."""
        return self.weight is None and self.act is None and self.kv is None

    def components(self) -> dict[str, "QuantScheme"]:
        """Each present component alone, keyed 'W<bits>', 'A<bits>', 'KV<bits>'
        (each with the scheme's rotation, a float-exact transform)."""
        out = {}
        r = self.rotation
        if self.weight is not None:
            out[f"W{self.weight.bits}"] = QuantScheme(name=f"{self.name}.W", weight=self.weight,
                                                      rotation=r)
        if self.act is not None:
            out[f"A{self.act.bits}"] = QuantScheme(name=f"{self.name}.A", act=self.act,
                                                   rotation=r)
        if self.kv is not None:
            out[f"KV{self.kv.bits}"] = QuantScheme(name=f"{self.name}.KV", kv=self.kv,
                                                   rotation=r)
        return out

    @property
    def label(self) -> str:
        """The components' labels joined, or "float"."""
        parts = [c.label for c in (self.rotation, self.weight, self.act, self.kv)
                 if c is not None]
        return ", ".join(parts) or "float"


def _reg(*schemes: QuantScheme) -> dict[str, QuantScheme]:
    return {s.name: s for s in schemes}


_QOQ64 = WeightScheme(method="qoq", bits=4, group=64, clip_search=True, awq=True, gptq=True)
_A8 = ActScheme(bits=8, smooth_alpha=0.5)
# the KV4 attention unit's scheme (golden.kv4_attention_config.KV4Config defaults): Hadamard K/Q
# (V's rotation folded into v_proj / o_proj, free in hardware), the last 8 tokens of
# each query at 8 bits, no sinks. SmoothAttention is off by measurement: on top of this
# it raises SmolLM2's KV-only perplexity (docs/quantize-a-model.md).
_KV4 = KVScheme(bits=4, smooth_attention=False, hadamard=True, window=8)
# the previous KV scheme, kept so that its figures stay reproducible
_KV4_SMOOTH_SINKS = KVScheme(bits=4, smooth_attention=True, hadamard=True, sink_tokens=4)
# the default's residual-stream rotation (docs/quantize-a-model.md, "Residual
# rotations"): QuaRot's randomised Hadamard of the full width (576 = H12 x H12 x H4),
# its signs drawn from seed 0, the draw `quantflow rotation-search` picks on the
# calibration text (8 draws; never chosen on the evaluation text)
_ROT = RotationScheme(kind="random-hadamard", seed=0)
# measured, not adopted: a seeded random rotation of all but the 16 channels with the
# most normalized energy at the norms' inputs (those keep their norm weights)
_ROT_KEEP16 = RotationScheme(kind="random", seed=0, keep=16)

#: The scheme every command uses when none is named (a rotated residual stream, W4 g64
#: QoQ with clip search, AWQ and GPTQ, A8, KV4 with Hadamard K/Q and the recent window).
DEFAULT_SCHEME = "w4a8kv4-g64"

SCHEMES = _reg(
    QuantScheme(name="fp32", description="float reference (the dequantized GGUF)"),
    # the target: a rotated residual stream, QoQ W4 g64 (output-aware), A8 SmoothQuant,
    # the KV4 unit's KV scheme
    QuantScheme(name="w4a8kv4-g64", weight=_QOQ64, act=_A8, kv=_KV4, rotation=_ROT,
                description="residual stream rotated by a randomised Hadamard (QuaRot; "
                            "norms folded, LM head untied), QoQ W4 g64 (clip search + AWQ + "
                            "GPTQ), A8 per-token with SmoothQuant, KV4 with Hadamard and an "
                            "8-token 8-bit window"),
    # the target before the rotation was adopted, kept so that its figures stay reproducible
    QuantScheme(name="w4a8kv4-g64-norot", weight=_QOQ64, act=_A8, kv=_KV4,
                description="w4a8kv4-g64 without the residual rotation"),
    QuantScheme(name="w4a8kv4-g64-smooth-sinks", weight=_QOQ64, act=_A8, kv=_KV4_SMOOTH_SINKS,
                description="w4a8kv4-g64 with the previous KV scheme (SmoothAttention, "
                            "Hadamard, 4 sink tokens)"),
    QuantScheme(name="w4a8kv4-g64-rot-keep16", weight=_QOQ64, act=_A8, kv=_KV4,
                rotation=_ROT_KEEP16,
                description="w4a8kv4-g64 with a seeded random rotation of all but the "
                            "16 most energetic channels instead"),
    QuantScheme(name="w4a8kv4-g64-rot-seed1", weight=_QOQ64, act=_A8, kv=_KV4,
                rotation=RotationScheme(kind="random-hadamard", seed=1),
                description="w4a8kv4-g64 with the rotation's signs drawn from seed 1 "
                            "(how much the figure depends on the draw)"),
    QuantScheme(name="w4a8kv4-g64-rot-keep16-seed1", weight=_QOQ64, act=_A8, kv=_KV4,
                rotation=RotationScheme(kind="random", seed=1, keep=16),
                description="w4a8kv4-g64-rot-keep16 with the random rotation drawn from "
                            "seed 1"),
    # W2 under the same flow: the accuracy axis of the design-space sweeps (dse, issue 16)
    QuantScheme(name="w2a8kv4-g64", weight=dataclasses.replace(_QOQ64, bits=2), act=_A8,
                kv=_KV4, rotation=_ROT, description="w4a8kv4-g64 with QoQ W2 codes"),
    # the quick evaluation (make eval's default): the target's A8 and KV4 with only the
    # clip search of the weights, a small share of the clip + AWQ + GPTQ search's time;
    # unrotated (the rotation pays only with the full search: with plain rounding it
    # costs SmolLM2 1.33 -> 1.72 x FP32, docs/quantize-a-model.md)
    QuantScheme(name="w4a8kv4-g64-clip", weight=dataclasses.replace(_QOQ64, awq=False,
                                                                    gptq=False),
                act=_A8, kv=_KV4,
                description="w4a8kv4-g64-norot with the weights' clip search only (no "
                            "AWQ, no GPTQ): make eval's quick default"),
    QuantScheme(name="w4a8kv4-g64-plain", weight=WeightScheme(method="qoq", group=64),
                act=ActScheme(smooth_alpha=None),
                kv=KVScheme(smooth_attention=False),
                description="QoQ W4 g64 RTN, A8 without smoothing, plain KV4"),
    # its components alone
    QuantScheme(name="w4-g64", weight=_QOQ64, description="QoQ W4 g64, output-aware"),
    QuantScheme(name="w4-g64-rot", weight=_QOQ64, rotation=_ROT,
                description="QoQ W4 g64, output-aware, on the residual stream of "
                            "w4a8kv4-g64 (its W4 component)"),
    QuantScheme(name="a8", act=_A8, description="A8 per-token with SmoothQuant 0.5"),
    QuantScheme(name="a8-rot", act=_A8, rotation=_ROT,
                description="A8 per-token with SmoothQuant 0.5 on the residual stream of "
                            "w4a8kv4-g64 (its A8 component)"),
    QuantScheme(name="kv4", kv=_KV4, description="KV4 Hadamard + 8-token 8-bit window "
                                                 "(the KV4 unit's scheme)"),
    # weight baselines (float activations)
    QuantScheme(name="w4-rtn-sym-ch", weight=WeightScheme(method="rtn-sym", group=None),
                description="RTN symmetric per channel"),
    QuantScheme(name="w4-rtn-asym-ch", weight=WeightScheme(method="rtn-asym", group=None),
                description="RTN asymmetric per channel"),
    QuantScheme(name="w4-rtn-sym-g64", weight=WeightScheme(method="rtn-sym", group=64),
                description="RTN symmetric per group of 64"),
    QuantScheme(name="w4-rtn-asym-g64", weight=WeightScheme(method="rtn-asym", group=64),
                description="RTN asymmetric per group of 64"),
    QuantScheme(name="w4-qoq-g64", weight=WeightScheme(method="qoq", group=64),
                description="QoQ progressive g64, round to nearest"),
    QuantScheme(name="w4-qoq-g32", weight=WeightScheme(method="qoq", group=32),
                description="QoQ progressive g32, round to nearest"),
    # the cheap weight-only pair for residual rotations (docs/quantize-a-model.md,
    # "Residual rotations"): plain QoQ g64 rounding on the rotated residual stream
    QuantScheme(name="w4-qoq-g64-rot", weight=WeightScheme(method="qoq", group=64),
                rotation=_ROT,
                description="QoQ progressive g64, round to nearest, on a residual stream "
                            "rotated by a randomised Hadamard of the full width"),
    QuantScheme(name="w4-qoq-g64-rot-keep16", weight=WeightScheme(method="qoq", group=64),
                rotation=_ROT_KEEP16,
                description="QoQ progressive g64, round to nearest, on a residual stream "
                            "rotated by a seeded random rotation except its 16 most "
                            "energetic channels"),
    QuantScheme(name="w4-qoq-g64-clip", weight=WeightScheme(method="qoq", group=64,
                                                            clip_search=True),
                description="QoQ g64 with output-aware clip search"),
    QuantScheme(name="w4-qoq-g64-gptq", weight=WeightScheme(method="qoq", group=64,
                                                            clip_search=True, gptq=True),
                description="QoQ g64 with clip search and GPTQ"),
    # KV variants
    QuantScheme(name="kv4-plain", kv=KVScheme(smooth_attention=False),
                description="KV4 without SmoothAttention, rotation or sinks"),
    QuantScheme(name="kv4-smooth", kv=KVScheme(smooth_attention=True),
                description="KV4 with SmoothAttention only"),
    QuantScheme(name="kv4-smooth-sinks", kv=_KV4_SMOOTH_SINKS,
                description="the previous KV scheme: SmoothAttention + Hadamard + sinks"),
    QuantScheme(name="a8-plain", act=ActScheme(smooth_alpha=None),
                description="A8 per-token without SmoothQuant"),
)


def get_scheme(name: str | QuantScheme) -> QuantScheme:
    """A registered scheme by name (or a QuantScheme passed through)."""
    if isinstance(name, QuantScheme):
        return name
    if name not in SCHEMES:
        raise QuantflowError(f"unknown scheme {name!r}; known schemes: {', '.join(SCHEMES)}")
    return SCHEMES[name]
