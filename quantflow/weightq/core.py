"""Output-aware weight quantization of one linear layer (issue 3): RTN baselines,
QoQ progressive group W4 (DESIGN §3.2) with an activation-aware clipping search,
AWQ-style input-channel scaling and GPTQ-style error compensation.

Entry point (stable; the model-level flow calls it once per linear layer)::

    res = quantize_weight(W, scheme=scheme, calib=Calibration.from_activations(X))
    res.w_fake       # float32 [N, K]: the weights the layer holds after quantization
    res.qoq          # QoQWeights (integer q, s2, z; fp16 s1) when scheme.method == "qoq"
    res.input_scale  # float32 [K] or None (only when scheme.awq)
    res.stats        # dict of plain numbers (errors, chosen alpha, clip ratios, seconds)

`W` is the nn.Linear weight [N = out_features, K = in_features]; `X` [T, K] are real
inputs of that layer (T tokens), so the layer computes y = X @ W.T.

**input_scale (AWQ) — which side.**  When `input_scale` (s, shape [K]) is returned,
`w_fake` quantizes W * s (column k multiplied by s[k]) and the layer must compute

    y = (x / s) @ w_fake.T              (≈ x @ W.T)

i.e. the op that *produces* x must be divided by s along its output features before
the layer: an RMSNorm/LayerNorm weight (and bias) ``norm.weight /= s``, or the rows of
the previous linear ``prev.weight /= s[:, None]`` (v_proj for o_proj, up_proj for
down_proj). With float activations the same layer is ``x @ res.effective_weight().T``
(no folding needed); with quantized activations the folding matters because x / s
is what gets quantized. Layers that share an input (q/k/v after one norm; gate/up)
must share one s: use `quantize_shared`, which searches one s for all of them.

`scheme` is any object with attributes ``method`` ("rtn-sym", "rtn-asym", "qoq"),
``bits``, ``group`` (int dividing K, or None for per-channel), ``clip_search``,
``awq``, ``gptq`` (bools) — quantflow.schemes.WeightScheme. Search grids, damping and
GPTQ options are in `WeightQuantOptions` (defaults are the tuned values).

Objective of every search: the layer-output error on calibration data,
||X W^T - X Wq^T||_F^2 = sum_n (W - Wq)[n] H (W - Wq)[n]^T with H = X^T X, computed
from the Hessian so all calibration tokens count and X is never kept.

**Integer range (QoQ).**  Every path returns codes with |q - z| <= round(119 / s2) in
each group, the codes plain QoQ reaches (quantflow.qoq step 3), so at 4 bits the
reconstruction (q - z) * s2 stays in INT8 (|w8| <= 127). The clip search only narrows
the range (s2, z) are fitted to; GPTQ re-rounds with fixed (s2, z) and is limited to
that code range (its error updates can push a weight past the channel maximum).

Deterministic: no randomness is used anywhere (ties resolve to the first grid point,
which is always "no clipping" / "no scaling").
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from golden.formats import QOQ_W8_QMAX
from golden.mixpe_config import MIXPE_WEIGHT_BITS, suggest_group
from golden.validate import check_int

from .._check import as_float_tensor
from ..errors import QuantflowError
from ..qoq import QoQWeights, qoq_step1, quantize_groups

if TYPE_CHECKING:
    import numpy as np

    from ..schemes import WeightScheme

__all__ = [
    "METHODS", "MIN_CALIB_TOKENS", "GPTQ_DAMP", "GPTQ_DAMP_FEW", "GPTQ_TOKENS_PER_FEATURE",
    "Calibration", "WeightQuantOptions",
    "WeightQuantResult", "quantize_weight", "quantize_shared", "output_error",
    "fold_output_scale",
]

METHODS = ("rtn-sym", "rtn-asym", "qoq")
#: Fewer calibration tokens than this give a Hessian too poor to search on.
MIN_CALIB_TOKENS = 64
#: GPTQ's damping (a fraction of mean diag H added to the diagonal) by calibration
#: tokens per input feature. With few (a K = 1536 down_proj from 2048 tokens) H is
#: poorly estimated and GPTQ's usual 0.01 overfits it: held-out output SQNR below
#: plain rounding, so GPTQ_DAMP_FEW. From GPTQ_TOKENS_PER_FEATURE tokens per input
#: (SmolLM2's 32 x 256 calibration: 5.3 for K = 1536) the lighter GPTQ_DAMP measured
#: better model-wide (docs/quantize-a-model.md, "Calibration set and damping").
GPTQ_DAMP_FEW, GPTQ_DAMP, GPTQ_TOKENS_PER_FEATURE = 0.1, 0.03, 4


# ------------------------------------------------------------------ calibration
@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What the algorithms need about one layer's inputs X [T, K]:
    xtx = X^T X (float64 [K, K]), abs_sum = sum_t |X[t]| (float64 [K]), tokens = T.
    Build with `from_activations` (one or more batches: `merge`)."""

    xtx: torch.Tensor
    abs_sum: torch.Tensor
    tokens: int

    @classmethod
    def from_activations(cls, X: torch.Tensor | np.ndarray, *, name: str = "X") -> "Calibration":
        """X: float [..., K] real inputs of the layer (leading dims are tokens)."""
        if isinstance(X, torch.Tensor) and X.dim() > 2:
            X = X.reshape(-1, X.shape[-1])
        X = as_float_tensor(name, X, 2, "[T, K] layer inputs (tokens x in_features)")
        if X.shape[1] == 0:
            raise QuantflowError(f"{name} has K=0 features; pass the layer's inputs")
        # float32 product (fast; ample precision for searches), stored as float64
        return cls(xtx=(X.T @ X).to(torch.float64), abs_sum=X.abs().sum(0, dtype=torch.float64),
                   tokens=int(X.shape[0]))

    def merge(self, other: "Calibration") -> "Calibration":
        """The calibration of both token sets together (same K)."""
        if other.K != self.K:
            raise QuantflowError(f"cannot merge calibrations with K={self.K} and "
                                 f"K={other.K}; they belong to different layers")
        return Calibration(xtx=self.xtx + other.xtx, abs_sum=self.abs_sum + other.abs_sum,
                           tokens=self.tokens + other.tokens)

    @property
    def K(self) -> int:
        """Input features of the layer."""
        return int(self.abs_sum.shape[0])

    @property
    def hessian(self) -> torch.Tensor:
        """X^T X / T, float64 [K, K]."""
        return self.xtx / max(self.tokens, 1)

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean_t |X[t, k]|, float64 [K]."""
        return self.abs_sum / max(self.tokens, 1)


@dataclass(frozen=True, kw_only=True)
class WeightQuantOptions:
    """Search grids and algorithm knobs (defaults are the tuned values)."""

    clip_grid: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
    alpha_grid: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
    # fraction of mean(diag H) added to the diagonal; None: by calibration tokens per
    # input feature (damping())
    gptq_damp: float | None = None
    gptq_block: int = 128            # lazy-update block (rounded to a group multiple)
    act_order: bool = False          # GPTQ column order by diag(H) (static groups)
    min_tokens: int = MIN_CALIB_TOKENS

    def __post_init__(self):
        d = self.gptq_damp
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float))
                              or not math.isfinite(d) or d <= 0):
            raise QuantflowError(f"gptq_damp must be a positive number or None (by "
                                 f"calibration tokens), got {d!r}")

    def damping(self, tokens: int, K: int) -> float:
        """GPTQ's damping for a layer with K inputs calibrated on `tokens` tokens:
        gptq_damp when set, else GPTQ_DAMP_FEW below GPTQ_TOKENS_PER_FEATURE tokens per
        input and GPTQ_DAMP from there."""
        if self.gptq_damp is not None:
            return float(self.gptq_damp)
        return GPTQ_DAMP_FEW if tokens < GPTQ_TOKENS_PER_FEATURE * K else GPTQ_DAMP


@dataclass(frozen=True, kw_only=True)
class WeightQuantResult:
    """See the module docstring. stats holds plain floats/ints/strings only."""

    w_fake: torch.Tensor
    qoq: QoQWeights | None
    input_scale: torch.Tensor | None
    stats: dict = field(default_factory=dict)

    def effective_weight(self) -> torch.Tensor:
        """The float weight W' with x @ W'.T == (x / input_scale) @ w_fake.T (float
        activations, nothing folded)."""
        if self.input_scale is None:
            return self.w_fake
        return self.w_fake / self.input_scale.unsqueeze(0)


# ------------------------------------------------------------------ validation
@dataclass(frozen=True)
class _Scheme:
    method: str
    bits: int
    group: int | None
    clip_search: bool
    awq: bool
    gptq: bool


def _read_scheme(scheme) -> _Scheme:
    try:
        s = _Scheme(scheme.method, scheme.bits, scheme.group, bool(scheme.clip_search),
                    bool(scheme.awq), bool(scheme.gptq))
    except AttributeError as e:
        raise QuantflowError(f"scheme must have method, bits, group, clip_search, awq and "
                             f"gptq (quantflow.schemes.WeightScheme); {e}") from None
    if s.method not in METHODS:
        raise QuantflowError(f"scheme.method={s.method!r} is not supported; use one of "
                             f"{METHODS}")
    bits = check_int("scheme.bits", s.bits, 1)
    if s.method == "qoq" and bits not in MIXPE_WEIGHT_BITS:
        raise QuantflowError(f"qoq bits={bits} is not supported; use one of "
                             f"{MIXPE_WEIGHT_BITS}")
    if s.method != "qoq" and not 2 <= bits <= 8:
        raise QuantflowError(f"{s.method} bits={bits} is not supported; use 2..8")
    group = None if s.group is None else check_int("scheme.group", s.group, 1)
    return _Scheme(s.method, bits, group, s.clip_search, s.awq, s.gptq)


def _group_for(sch: _Scheme, K: int, name: str) -> int:
    if sch.group is None:
        return K
    if K % sch.group:
        raise QuantflowError(f"{name}: K={K} is not a multiple of group={sch.group}; use a "
                             f"group that divides K, e.g. group={suggest_group(K, sch.group)}")
    return sch.group


def _check_calib(calib, K: int, sch: _Scheme, opts: WeightQuantOptions, name: str):
    needs = sch.clip_search or sch.awq or sch.gptq
    if calib is None:
        if needs:
            raise QuantflowError(f"{name}: scheme uses clip_search/awq/gptq, which need "
                                 f"calibration data; pass calib=Calibration."
                                 f"from_activations(X) with the layer's real inputs")
        return None
    if not isinstance(calib, Calibration):
        raise QuantflowError(f"{name}: calib must be a quantflow.weightq.Calibration, got "
                             f"{type(calib).__name__}; build it with "
                             f"Calibration.from_activations(X)")
    if calib.K != K:
        raise QuantflowError(f"{name}: calibration has K={calib.K} features but W has "
                             f"K={K} in_features; calibrate with this layer's inputs")
    if calib.tokens < opts.min_tokens:
        raise QuantflowError(f"{name}: calibration has {calib.tokens} tokens, fewer than "
                             f"{opts.min_tokens}; use more calibration text")
    for what, t in (("X^T X", calib.xtx), ("sum|X|", calib.abs_sum)):
        if not bool(torch.isfinite(t).all()):
            raise QuantflowError(f"{name}: calibration {what} is not finite; the layer "
                                 f"inputs contain NaN/Inf or overflow")
    return calib


# ------------------------------------------------------------------ number formats
def output_error(D: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-row output error sum_t (X D^T)[t, n]^2 / T = (D H D^T)[n, n] for D [N, K]."""
    D = D.to(H.dtype)
    return ((D @ H) * D).sum(1)


class _Format:
    """A weight format, vectorized over groups: params(Wg [N, G, g], clip [N]) -> P
    (tensors [N, G]); fake(w [N, G, c], P) -> (float fake [N, G, c], codes)."""

    levels: int

    def column(self, P):
        """w [N] -> (fake [N], codes [N]) of one column of a group with params P (tensors
        [N]): GPTQ rounds column by column, so what depends only on the group is
        prepared here once (a format may override this with a faster equivalent)."""
        Pv = tuple(p.view(-1, 1) for p in P)

        def one(w):
            f, c = self.fake(w.view(-1, 1, 1), Pv)
            return f.view(-1), c.view(-1)
        return one


class _RTN(_Format):
    def __init__(self, bits: int, sym: bool):
        self.sym = sym
        self.levels = (1 << bits) - 1
        self.qmax = (1 << (bits - 1)) - 1

    def params(self, Wg, clip):
        r = clip.view(-1, 1)
        if self.sym:
            scale = Wg.abs().amax(2) * r / self.qmax
            return (torch.where(scale > 0, scale, torch.ones_like(scale)),)
        # range includes 0 so the zero point is a valid code
        lo = Wg.amin(2).clamp(max=0) * r
        hi = Wg.amax(2).clamp(min=0) * r
        scale = (hi - lo) / self.levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        z = torch.clamp(torch.round(-lo / scale), 0, self.levels)
        return scale, z

    def fake(self, w, P):
        if self.sym:
            (scale,) = P
            q = torch.clamp(torch.round(w / scale.unsqueeze(2)), -self.qmax, self.qmax)
            return q * scale.unsqueeze(2), q
        scale, z = P
        q = torch.clamp(torch.round(w / scale.unsqueeze(2)) + z.unsqueeze(2), 0, self.levels)
        return (q - z.unsqueeze(2)) * scale.unsqueeze(2), q


class _QoQ(_Format):
    """QoQ with s1 fixed per channel from the matrix it is built on (step 1 of
    quantflow.qoq); params fix (s2, z) of a group with quantflow.qoq.quantize_groups
    on the (optionally clipped) integer codes."""

    def __init__(self, W: torch.Tensor, bits: int):
        self.bits = bits
        self.levels = (1 << bits) - 1
        # step 1 exactly as quantize_qoq does it
        self.s1, w8 = qoq_step1(W)
        self.s1f = self.s1.to(torch.float32)
        self.zero = self.s1f == 0
        self.w8 = w8.to(torch.int64)                      # int64 [N, K]
        self._div = torch.where(self.zero, 1.0, self.s1f).view(-1, 1, 1)

    def codes8(self, Wg):
        """Step 1 codes of (possibly GPTQ-updated) float weights Wg [N, G, g]."""
        w8 = torch.clamp(torch.round(Wg / self._div), -QOQ_W8_QMAX, QOQ_W8_QMAX)
        return torch.where(self.zero.view(-1, 1, 1), 0.0, w8).to(torch.int64)

    def groups_of(self, w8g, clip):
        """quantize_groups on codes w8g [N, G, g] clipped to clip*[min, max] per group."""
        N, G, g = w8g.shape
        if clip is not None:
            r = clip.view(-1, 1, 1).to(torch.float64)
            lo = torch.round(w8g.amin(2, keepdim=True) * r).to(torch.int64)
            hi = torch.round(w8g.amax(2, keepdim=True) * r).to(torch.int64)
            w8g = torch.minimum(torch.maximum(w8g, lo), hi)
        q, s2, z = quantize_groups(w8g.reshape(N, G * g).to(torch.int32), bits=self.bits,
                                   group=g)
        return q.view(N, G, g), s2, z

    def params(self, Wg, clip):
        _, s2, z = self.groups_of(self.codes8(Wg), clip)
        return s2, z

    def fake(self, w, P):
        """Nearest code of float w [N, G, c] on the group's grid (single rounding),
        limited to the codes plain QoQ reaches from step-1 codes in [-119, 119]:
        |q - z| <= round(119 / s2). GPTQ's error updates can push w past the channel
        maximum that s1 was set from; without the limit (q - z) * s2 reaches
        (levels - z) * s2 (up to 132 on SmolLM2 at 4 bits) and leaves INT8."""
        s2, z = P
        return self._grid(s2.unsqueeze(2), z.unsqueeze(2), self.s1f.view(-1, 1, 1),
                          self.zero.view(-1, 1, 1))(w)

    def column(self, P):
        """fake() of one column [N] of a group, its grid prepared once (_grid)."""
        s2, z = P
        return self._grid(s2.view(-1), z.view(-1), self.s1f, self.zero)

    def _grid(self, s2, z, s1f, zero):
        """w -> (fake, codes) on the grid of groups with integer scale s2 and zero point
        z, shaped to broadcast with w like the channels' s1f and zero flags: what
        depends on the group only is computed here, once."""
        s2f, zf = s2.to(torch.float32), z.to(torch.float32)
        step = s1f * s2f
        step = torch.where(step > 0, step, torch.ones_like(step))
        reach = torch.round(QOQ_W8_QMAX / s2f)
        lo, hi = (zf - reach).clamp(min=0), (zf + reach).clamp(max=self.levels)

        def quant(w):
            q = torch.minimum(torch.maximum(torch.round(w / step) + zf, lo), hi)
            q = torch.where(zero, 0.0, q)
            return s1f * ((q - z) * s2).to(torch.float32), q
        return quant

    def qoq_weights(self, q, s2, z, group) -> QoQWeights:
        z = torch.where(self.zero.view(-1, 1), 0, z)
        s2 = torch.where(self.zero.view(-1, 1), 1, s2)
        return QoQWeights(q=q.to(torch.int32), s1=self.s1, s2=s2.to(torch.int32),
                          z=z.to(torch.int32), bits=self.bits, group=group)


def _make_format(sch: _Scheme, W: torch.Tensor) -> _Format:
    if sch.method == "qoq":
        return _QoQ(W, sch.bits)
    return _RTN(sch.bits, sym=sch.method == "rtn-sym")


def _rtn_quant(fmt: _Format, W, group: int, clip):
    """Round-to-nearest of W [N, K] with per-channel clip ratios -> (fake, qoq|None)."""
    N, K = W.shape
    G = K // group
    Wg = W.view(N, G, group)
    if isinstance(fmt, _QoQ):
        q, s2, z = fmt.groups_of(fmt.w8.view(N, G, group), clip)
        qw = fmt.qoq_weights(q.reshape(N, K), s2, z, group)
        # qw.dequantize() without expanding s2 and z over k (the searches call this
        # per candidate): the integer (q - z) * s2, then one multiply by s1
        w8 = (q.to(torch.int64) - qw.z.unsqueeze(2)) * qw.s2.unsqueeze(2)
        return w8.reshape(N, K).to(torch.float32) * fmt.s1f.unsqueeze(1), qw
    if clip is None:
        clip = torch.ones(N)
    P = fmt.params(Wg, clip)
    fake, _ = fmt.fake(Wg, P)
    return fake.reshape(N, K), None


# ------------------------------------------------------------------ searches
def _clip_search(fmt, W, group, H, grid):
    """Per output channel clip ratio minimising the output error of RTN; grid[0]
    should be 1.0 so the result is never worse than no clipping (per channel)."""
    N = W.shape[0]
    errs = []
    for r in grid:
        fake, _ = _rtn_quant(fmt, W, group, torch.full((N,), float(r)))
        errs.append(output_error(W - fake, H))
    errs = torch.stack(errs)                       # [R, N]
    best = errs.argmin(0)                          # first minimum on ties
    clip = torch.tensor(grid, dtype=torch.float32)[best]
    return clip, errs[best, torch.arange(N)].sum()


def _awq_scale(sch, Ws, group, calib, opts, grid, tie=None):
    """One input scale s = mean|x|^alpha (normalised) for all layers in Ws, alpha
    chosen on `grid` by the summed output error of plain RTN/QoQ of W * s. With
    `tie` [K] (ids), channels with one id get one scale (their mean |x|)."""
    H = calib.hessian.to(torch.float32)
    xmean = calib.mean_abs.to(torch.float32)
    if tie is not None:
        n = int(tie.max()) + 1
        tot = torch.zeros(n).index_add_(0, tie, xmean)
        cnt = torch.zeros(n).index_add_(0, tie, torch.ones_like(xmean))
        xmean = (tot / cnt)[tie]
    xmean = xmean.clamp(min=1e-5)
    best = None
    for alpha in grid:
        s = xmean.pow(float(alpha))
        s = s / (s.max() * s.min()).sqrt()
        Hs = H / (s.view(-1, 1) * s.view(1, -1))
        err = 0.0
        for W in Ws:
            Wsc = W * s
            fake, _ = _rtn_quant(_make_format(sch, Wsc), Wsc, group, None)
            err += float(output_error(Wsc - fake, Hs).sum())
        if best is None or err < best[0]:
            best = (err, float(alpha), s)
    return best[2], best[1]


# ------------------------------------------------------------------ GPTQ
def _gptq(fmt: _Format, W, group, H, clip, opts: WeightQuantOptions, damp: float):
    """GPTQ (Frantar et al.) column by column with lazy block updates. Group
    parameters are fixed when the first column of a group is reached, from the
    error-updated weights of that group (with the channel's clip ratio); with
    act_order they are fixed up front from W (static groups) and columns go in order
    of decreasing diag(H). Returns (fake [N, K], codes [N, K], P list per group)."""
    N, K = W.shape
    G = K // group
    W = W.clone().to(torch.float32)
    H = H.clone().to(torch.float64)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(K, dtype=H.dtype)
    if clip is None:
        clip = torch.ones(N)
    perm = None
    params: list = [None] * G
    if opts.act_order:
        for j, P in enumerate(_split_params(fmt.params(W.view(N, G, group), clip))):
            params[j] = P
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        U = torch.linalg.cholesky(Hinv, upper=True).to(torch.float32)
    except RuntimeError as e:  # pragma: no cover - damping makes H positive definite
        raise QuantflowError(f"GPTQ: the calibration Hessian is not positive definite "
                             f"even after damping ({e}); raise gptq_damp") from None
    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    cols: list = [None] * G             # per group: its column quantizer (fmt.column)
    B = group * max(1, opts.gptq_block // group) if perm is None else opts.gptq_block
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if perm is None:
                j = col // group
                if col % group == 0:  # blocks are group-aligned: W1 holds the group
                    params[j] = _split_params(
                        fmt.params(W1[:, i:i + group].reshape(N, 1, group), clip))[0]
            else:
                j = int(perm[col]) // group
            if cols[j] is None or (perm is None and col % group == 0):
                cols[j] = fmt.column(params[j])
            w = W1[:, i]
            f, c = cols[j](w)
            Q[:, col] = f
            codes[:, col] = c
            err = (w - f) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    return Q, codes, params


def _gptq_shared(sch: _Scheme, prep: list, group: int, H: torch.Tensor,
                 opts: WeightQuantOptions, damp: float) -> list[tuple]:
    """GPTQ of the layers that read one input (one H) in a single pass over the
    columns: GPTQ treats every row alone given H, so stacking the layers' rows gives
    each the same codes as its own pass, with one Python loop over K instead of one
    per layer. prep: (W * s, format, clip, seconds) per layer; returns (fake, QoQWeights
    or None, seconds) per layer."""
    t0 = time.perf_counter()
    Wcat = torch.cat([Wsc for Wsc, _, _, _ in prep])
    clips = [clip for _, _, clip, _ in prep]
    clip = None if clips[0] is None else torch.cat(clips)
    fake, codes, params = _gptq(_make_format(sch, Wcat), Wcat, group, H, clip, opts, damp)
    out, r0 = [], 0
    for Wsc, fmt, _, _ in prep:
        r1 = r0 + Wsc.shape[0]
        f, qw = fake[r0:r1], None
        if isinstance(fmt, _QoQ):
            s2 = torch.stack([p[0][r0:r1] for p in params], 1)
            z = torch.stack([p[1][r0:r1] for p in params], 1)
            qw = fmt.qoq_weights(codes[r0:r1], s2, z, group)
            f_int = qw.dequantize()
            assert torch.equal(f_int, f), "GPTQ fake differs from integer form"
            f = f_int
        out.append((f, qw))
        r0 = r1
    secs = (time.perf_counter() - t0) / Wcat.shape[0]
    return [(f, qw, secs * Wsc.shape[0]) for (f, qw), (Wsc, _, _, _) in zip(out, prep)]


def _split_params(P):
    """Params with G groups ([N, G] each) -> list of per-group tuples of [N]."""
    G = P[0].shape[1]
    return [tuple(p[:, j] for p in P) for j in range(G)]


# ------------------------------------------------------------------ entry points
def quantize_weight(W: torch.Tensor | np.ndarray, *, scheme: WeightScheme,
                    calib: Calibration | None = None, options: WeightQuantOptions | None = None,
                    name: str = "W") -> WeightQuantResult:
    """Quantize one linear weight W [N, K] (out x in) with `scheme` (module docstring).
    `calib` (the layer's inputs) is required when scheme uses clip_search, awq or
    gptq; `name` names the tensor in error messages."""
    return quantize_shared([W], scheme=scheme, calib=calib, options=options,
                           names=[name])[0]


def quantize_shared(weights: Sequence, *, scheme: WeightScheme, calib: Calibration | None = None,
                    options: WeightQuantOptions | None = None,
                    names: Sequence[str] | None = None,
                    tie: torch.Tensor | None = None) -> list[WeightQuantResult]:
    """Quantize layers that read the same input x (q/k/v; gate/up) with one shared
    input_scale (AWQ), each otherwise as quantize_weight. Returns one result each.
    `tie` (int64 [K] channel ids, optional) forces equal input_scale on channels with
    the same id: o_proj under GQA, whose scale folds into the shared v_proj rows."""
    t0 = time.perf_counter()
    opts = options or WeightQuantOptions()
    sch = _read_scheme(scheme)
    weights = list(weights)
    if not weights:
        raise QuantflowError("quantize_shared needs at least one weight")
    names = list(names) if names is not None else [f"W[{i}]" for i in range(len(weights))]
    if len(names) != len(weights):
        raise QuantflowError(f"{len(names)} names for {len(weights)} weights")
    Ws = []
    for W, nm in zip(weights, names):
        W = as_float_tensor(nm, W, 2, "[N, K] weights (out_features x in_features)")
        if W.shape[0] == 0 or W.shape[1] == 0:
            raise QuantflowError(f"{nm} must be non-empty, got shape {list(W.shape)}")
        Ws.append(W)
    K = Ws[0].shape[1]
    for W, nm in zip(Ws, names):
        if W.shape[1] != K:
            raise QuantflowError(f"{nm} has K={W.shape[1]} in_features but {names[0]} has "
                                 f"K={K}; only layers reading the same input share a scale")
    group = _group_for(sch, K, names[0])
    calib = _check_calib(calib, K, sch, opts, names[0])
    if sch.clip_search and (not opts.clip_grid or opts.clip_grid[0] != 1.0):
        raise QuantflowError("options.clip_grid must start at 1.0 (no clipping)")
    H = calib.hessian.to(torch.float32) if calib is not None else None
    if tie is not None:
        if not isinstance(tie, torch.Tensor) or tie.dtype != torch.int64 or \
                tuple(tie.shape) != (K,) or bool((tie < 0).any()):
            raise QuantflowError(f"tie must be a non-negative int64 tensor of shape [{K}]")

    s, alpha = None, None
    if sch.awq:
        s, alpha = _awq_scale(sch, Ws, group, calib, opts, opts.alpha_grid, tie)
    t1 = time.perf_counter()                   # the AWQ search ends here
    Hs = H / (s.view(-1, 1) * s.view(1, -1)) if s is not None and H is not None else H
    prep = []                                  # per layer: (W * s, format, clip, seconds)
    for W in Ws:
        tw = time.perf_counter()
        Wsc = W * s if s is not None else W
        fmt = _make_format(sch, Wsc)
        clip = _clip_search(fmt, Wsc, group, Hs, opts.clip_grid)[0] if sch.clip_search \
            else None
        prep.append((Wsc, fmt, clip, time.perf_counter() - tw))
    if sch.gptq:
        damp = opts.damping(calib.tokens, K)
        quant = _gptq_shared(sch, prep, group, Hs, opts, damp)
    else:
        quant = []                             # per layer: (fake, QoQWeights | None, seconds)
        for Wsc, fmt, clip, _ in prep:
            tq = time.perf_counter()
            quant.append((*_rtn_quant(fmt, Wsc, group, clip), time.perf_counter() - tq))
    results = []
    for W, nm, (Wsc, fmt, clip, t_prep), (fake, qw, t_q) in zip(Ws, names, prep, quant):
        stats = {"name": nm, "method": sch.method, "bits": sch.bits, "group": group,
                 "clip_search": sch.clip_search, "awq": sch.awq, "gptq": sch.gptq,
                 "weight_err": float(((Wsc - fake).norm() / Wsc.norm().clamp(min=1e-30)))}
        if H is not None:
            ref = float(output_error(W, H).sum())
            err = float(output_error(Wsc - fake, Hs).sum())
            stats["out_err"] = err / ref if ref > 0 else 0.0
            stats["sqnr_db"] = (10 * math.log10(ref / err)) if err > 0 and ref > 0 \
                else float("inf")
        if sch.gptq:
            stats["gptq_damp"] = damp
        if alpha is not None:
            stats["awq_alpha"] = alpha
        if clip is not None:
            stats["clip_mean"] = float(clip.mean())
            stats["clip_min"] = float(clip.min())
        stats["seconds"] = t_prep + t_q + ((t1 - t0) / len(Ws) if sch.awq else 0.0)
        results.append(WeightQuantResult(w_fake=fake.contiguous(), qoq=qw,
                                         input_scale=s, stats=stats))
    return results


def fold_output_scale(res: WeightQuantResult, s: torch.Tensor) -> WeightQuantResult:
    """Divide the output channels (rows) of a quantized layer by s [N]: how the next
    layer's input_scale folds into this one (v_proj for o_proj, up_proj for
    down_proj). For QoQ the division goes into the fp16 s1 (the integer codes are
    unchanged), so w_fake stays exactly s1 * w8; s1 rounds to fp16 (rel. <= 2**-11)."""
    s = as_float_tensor("s", s, 1, "[N] per-output-channel scale")
    N = res.w_fake.shape[0]
    if s.shape[0] != N or not bool((s > 0).all()):
        raise QuantflowError(f"s must be {N} positive scales, one per output channel")
    stats = dict(res.stats, out_scale_folded=True)
    if res.qoq is None:
        return WeightQuantResult(w_fake=res.w_fake / s.unsqueeze(1), qoq=None,
                                 input_scale=res.input_scale, stats=stats)
    qw = res.qoq
    s1 = (qw.s1.to(torch.float32) / s).to(torch.float16)
    if not bool(torch.isfinite(s1).all()):
        raise QuantflowError("folding the scale overflows the fp16 s1; the scale is too "
                             "small")
    # a channel whose s1 underflows becomes a zero channel (codes 0) as quantize_qoq does
    zero = s1 == 0
    qw = QoQWeights(q=torch.where(zero.unsqueeze(1), 0, qw.q),
                    s1=s1, s2=torch.where(zero.unsqueeze(1), 1, qw.s2),
                    z=torch.where(zero.unsqueeze(1), 0, qw.z), bits=qw.bits, group=qw.group)
    return WeightQuantResult(w_fake=qw.dequantize(), qoq=qw, input_scale=res.input_scale,
                             stats=stats)
