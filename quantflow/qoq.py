"""QoQ progressive group quantization of weights (DESIGN §3.2) and per-token INT8
activations (DESIGN §3.1).

Every rounding is round-half-to-even (torch.round). Steps, for W [N, K]:

1. Per output channel n (computed in float32, then stored as fp16):
       s1[n] = fp16( max|W[n, :]| / QOQ_W8_QMAX )           QOQ_W8_QMAX = 119
       W8[n, k] = clamp( round(W[n, k] / float(s1[n])), -119, 119 )
   The division uses the *stored* fp16 s1, so the float reference y = acc*s1*s_a
   uses the same number. Zero channel: when s1 rounds to 0 in fp16 (the row is
   all zeros, or max|W| < 119 * 2**-25 so s1 underflows fp16) the channel is a
   zero channel: s1 = 0, W8 = 0 (so s2 = 1, z = 0, q = 0) and its outputs are
   exactly 0. A channel whose s1 overflows fp16 (max|W| > 119 * 65504) is refused.
2. Per group j of `group` consecutive k inside channel n, on the integers W8
   (computed in float64, exact for these small integers):
       lo, hi = min, max of W8 over the group
       s2 = max(1, round((hi - lo) / levels))               levels = 2**bits - 1
       z  = clamp(round(-lo / s2), 0, levels)
       q  = clamp(round(W8 / s2 + z), 0, levels)
   s2 and z*s2 must fit golden.formats.SCALE_BITS (unsigned), else refused.
   Note: because s2 is rounded to an integer it can be smaller than
   (hi - lo)/levels, and z is clamped, so a group's extreme values may saturate
   (error up to (levels + s2)/2 W8 units instead of s2/2). This is the contract.
3. Reconstruction is integer: w8 = (q - z) * s2 (golden.mixpe.dequant_w8). As z is
   an integer, q - z = round(W8 / s2) unless clamped, so per group
       |q - z| <= round(119 / s2)   and   |w8| <= 119 + s2/2;
   for bits = 4 (s2 <= 16) that is inside INT8 (|w8| <= 127), for bits = 8 (s2 = 1)
   within 119. quantflow.weightq keeps the same code range in every path (clip
   search, AWQ, GPTQ with or without act order), so every W4 scheme keeps |w8| <= 127.
   INT8 matters where w8 is an int8 multiplier operand (QServe's W4A8 GEMM); MixPE and
   the LUT block accumulate in int32 and accept |w8| <= golden.formats.W8_ABS_MAX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from golden.formats import ACT_QMAX, QOQ_W8_QMAX, SCALE_BITS

from golden.mixpe_config import MIXPE_WEIGHT_BITS, suggest_group
from golden.mixpe import dequant_w8
from golden.validate import check_int

from ._check import as_float_tensor
from .errors import QuantflowError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["QoQWeights", "quantize_qoq", "qoq_step1", "quantize_groups", "quantize_act"]

_FP16_MAX = float(torch.finfo(torch.float16).max)
_SCALE_MAX = (1 << SCALE_BITS) - 1


@dataclass(frozen=True, kw_only=True)
class QoQWeights:
    """Result of quantize_qoq. q, s2, z are torch.int32 (wide enough that q - z
    cannot wrap in user code); s1 is torch.float16."""

    q: torch.Tensor   # [N, K] codes in [0, 2**bits - 1]
    s1: torch.Tensor  # [N] fp16 per-channel scale (0 for a zero channel)
    s2: torch.Tensor  # [N, K/group] integer group scale in [1, 2**SCALE_BITS - 1]
    z: torch.Tensor   # [N, K/group] integer zero point in [0, 2**bits - 1]
    bits: int
    group: int

    @property
    def levels(self) -> int:
        """Largest code: 2**bits - 1."""
        return (1 << self.bits) - 1

    @property
    def shape(self) -> tuple[int, int]:
        """[N, K] of the codes."""
        return tuple(self.q.shape)

    def w8(self) -> torch.Tensor:
        """Integer reconstruction (q - z) * s2, int64 [N, K]."""
        return dequant_w8(self.q, self.s2, self.z, self.group)

    def dequantize(self) -> torch.Tensor:
        """Float32 weights s1[n] * w8[n, k] that the integer pipeline represents."""
        return self.w8().to(torch.float32) * self.s1.to(torch.float32).unsqueeze(1)


def _check_bits_group(bits, group, K: int, allowed=MIXPE_WEIGHT_BITS) -> tuple[int, int]:
    bits = check_int("bits", bits)
    if bits not in allowed:
        raise QuantflowError(f"bits={bits} is not supported; use one of {tuple(allowed)}")
    group = check_int("group", group, 1)
    if K % group:
        raise QuantflowError(f"K={K} is not a multiple of group={group}; use a group that "
                             f"divides K, e.g. group={suggest_group(K, group)}")
    return bits, group


def quantize_groups(w8: torch.Tensor, *, bits: int, group: int,
                    allowed_bits: Iterable[int] = MIXPE_WEIGHT_BITS
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 2 alone: asymmetric integer-scale group quantization of integer codes
    w8 [N, K] -> (q, s2, z) as torch.int32. Refuses s2 or z*s2 beyond SCALE_BITS.
    `allowed_bits`: the widths the caller's block reads (the LUT block adds 1)."""
    if not isinstance(w8, torch.Tensor) or w8.is_floating_point() or w8.dim() != 2:
        raise QuantflowError("w8 must be a 2-D integer torch.Tensor [N, K]")
    N, K = w8.shape
    bits, group = _check_bits_group(bits, group, K, allowed_bits)
    # Rows are independent: a large matrix (an LM head, 49152 x 576) goes in slices of
    # rows so that the float64 temporaries stay ~32 MB each (the same result).
    rows = max(1, _SLICE_ELEMS // K)
    parts = [_quantize_rows(w8[r:r + rows], (1 << bits) - 1, group, r)
             for r in range(0, N, rows)]
    return parts[0] if len(parts) == 1 else tuple(torch.cat(t) for t in zip(*parts))


#: Elements per slice of quantize_groups (float64: 32 MB per temporary).
_SLICE_ELEMS = 1 << 22


def _quantize_rows(w8: torch.Tensor, levels: int, group: int, row0: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_groups of rows row0.. of a matrix (row0 names the channel in errors)."""
    N, K = w8.shape
    G = K // group
    w = w8.to(torch.float64).reshape(N, G, group)
    lo = w.amin(dim=2)
    hi = w.amax(dim=2)
    s2 = torch.clamp(torch.round((hi - lo) / levels), min=1)
    z = torch.clamp(torch.round(-lo / s2), 0, levels)
    q = torch.clamp(torch.round(w / s2.unsqueeze(2) + z.unsqueeze(2)), 0, levels)
    for name, t in (("s2", s2), ("z*s2", z * s2)):
        bad = t > _SCALE_MAX
        if bool(bad.any()):
            n, j = (int(i) for i in bad.nonzero()[0])
            raise QuantflowError(
                f"{name} = {int(t[n, j])} at channel {row0 + n}, group {j} does not fit the "
                f"{SCALE_BITS}-bit scale word (max {_SCALE_MAX}); use more bits or keep "
                f"the per-channel codes within +-{QOQ_W8_QMAX}")
    return (q.reshape(N, K).to(torch.int32), s2.to(torch.int32), z.to(torch.int32))


def quantize_qoq(W: torch.Tensor | np.ndarray, *, bits: int = 4, group: int = 128,
                 allowed_bits: Iterable[int] = MIXPE_WEIGHT_BITS) -> QoQWeights:
    """QoQ progressive group quantization (module docstring) of float W [N, K].
    `allowed_bits`: the widths the caller's block reads (default MixPE's)."""
    W = as_float_tensor("W", W, 2, "[N, K] weights (out_features x in_features)")
    N, K = W.shape
    if N == 0 or K == 0:
        raise QuantflowError(f"W must be non-empty, got shape {[N, K]}")
    bits, group = _check_bits_group(bits, group, K, allowed_bits)
    s1, w8 = qoq_step1(W)
    q, s2, z = quantize_groups(w8, bits=bits, group=group, allowed_bits=allowed_bits)
    return QoQWeights(q=q, s1=s1, s2=s2, z=z, bits=bits, group=group)


def qoq_step1(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 of QoQ on float32 W [N, K]: (s1 fp16 [N], w8 int32 [N, K]) with
    s1 = fp16(max|W[n]| / 119) and w8 = clamp(round(W / s1), -119, 119) (round half
    to even); a channel whose s1 is 0 gets codes 0. The output-aware search
    (quantflow.weightq) calls it alone, many times per layer."""
    absmax = W.abs().amax(dim=1)
    s1_f32 = absmax / QOQ_W8_QMAX
    too_big = s1_f32 > _FP16_MAX
    if bool(too_big.any()):
        n = int(too_big.nonzero()[0])
        raise QuantflowError(f"W channel {n} has max|W| = {float(absmax[n]):.6g}, whose "
                             f"scale overflows fp16; rescale the layer")
    s1 = s1_f32.to(torch.float16)
    s1f = s1.to(torch.float32)
    zero = s1f == 0
    # zero channels: divide by 1 instead of 0 and force the codes to 0 below
    w8 = torch.round(W / torch.where(zero, 1.0, s1f).unsqueeze(1))
    w8 = torch.clamp(w8, -QOQ_W8_QMAX, QOQ_W8_QMAX)
    w8 = torch.where(zero.unsqueeze(1), 0.0, w8).to(torch.int32)
    s1 = torch.where(zero, torch.zeros((), dtype=torch.float16), s1)
    return s1, w8


def quantize_act(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric INT8 (DESIGN §3.1) of float x [M, K] -> (a, s_a):
    s_a[m] = max|x[m, :]| / 127 (float32), a = clamp(round(x / s_a), -127, 127)
    as torch.int8. A zero row (s_a == 0) gives s_a = 0 and a = 0."""
    x = as_float_tensor("x", x, 2, "[M, K] activations (tokens x features)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise QuantflowError(f"x must be non-empty, got shape {list(x.shape)}")
    s_a = x.abs().amax(dim=1) / ACT_QMAX
    zero = s_a == 0
    a = torch.round(x / torch.where(zero, 1.0, s_a).unsqueeze(1))
    a = torch.clamp(a, -ACT_QMAX, ACT_QMAX)
    a = torch.where(zero.unsqueeze(1), 0.0, a).to(torch.int8)
    return a, s_a
