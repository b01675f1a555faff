"""Golden model of the KV4 decode-attention unit (DESIGN §3.7): every fixed-point
step of hdl.kv4_attention, bit for bit, plus the float references.

Number formats and steps (widths from golden.kv4_attention_config.KV4Config; the names
below are the ones docs/kv4_attention.md and the RTL use):

KV append (per token, per KV head; `append_cache`):
  X  signed x_bits fixed point, X = clamp(round_half_even(x * 2**frac)) (`to_fixed`)
  K only, with config.rotate: Xk = rshift_round(fwht(X), rot_shift)   (k_bits wide)
     fwht = log2(D) constant-geometry butterfly stages, exact integers (`fwht`)
  lo, hi = min X, max X;  S = hi - lo  (or 15*|lo| for a constant token, 15 if all 0)
  for levels L = 15 (4-bit codes) and L = 240 (8-bit codes, the recent window):
    scale = S * 2**-frac / L   (exact: S is the stored scale numerator, shared)
    t(X)  = sign(X) * min(round_half_even(L |X| / S), L + 1)   (exact rational rounding)
    zero  = clamp(-t(lo), 0, L);   code = clamp(t(X) + zero, 0, L)
  which is DESIGN §3.7's zero = clamp(round(-min/scale)), code = clamp(round(x/scale)+zero).

Decode (one query vector per head of a GQA group, T cached tokens; `kv4_decode`):
  8-bit domain: token t < T - R (R = min(recent, T)) reads c = 16*c4, z = 16*z4; the
           last R tokens read their 8-bit codes c8, z8; value = (c - z) * S * u / 240
  q8, s_q  per-vector symmetric INT8 of the un-rotated query (DESIGN §3.1, host)
  with rotate: qr = fwht(q8); e = max(0, bitlen(max|qr|) - 7);
           q8 <- clamp(rshift_round(qr, e), -128, 127)        (`rotate_query`)
  sumq = sum q8
  dot_t  = sum_i q8_i c_ti - z_t * sumq                           (exact)
  l_t    = sat_logit(rshift_round(dot_t * Sk_t * C, lsh - e))     base-2 logit, logit_frac bits
           with C * 2**-lsh = 2**logit_frac * s_q * u_k * log2(e) * 2**(rot_shift - log2 D
           if rotate) / (240 sqrt(D)), lsh >= min_lsh
  m_t    = max(m_{t-1}, ceil(l_t))  (integer running max; m_0 = ceil(l_0))
  sh_t   = min(m_t - m_{t-1}, 63)   (0 for t = 0)
  e_t    = m_t * 2**logit_frac - l_t >= 0;  p_t = rshift_round(TABLE[e_t mod 2**lf], e_t >> lf)
  d_t    = rshift_round(d_{t-1}, sh_t) + p_t
  w_t    = p_t * Sv_t
  acc_i  = rshift_round(acc_i, sh_t) + w_t * cv_ti ;  wz = rshift_round(wz, sh_t) + w_t * zv_t
  out_i  = sat_out(rshift_round((acc_i - wz) * R, s))  ~= (acc_i - wz) * 2**out_frac / (240 d)
           dd = 240 d normalised left by sd bits into [2**(dd_bits-1), 2**dd_bits),
           R = floor(2**(dd_bits-1+recip_bits) / dn),  s = dd_bits-1+recip_bits-sd-out_frac
  output value = out * 2**-(frac_v + out_frac)   (`output_frac`)
rshift_round(x, s) = floor((x + 2**(s-1)) / 2**s) for s > 0 (round half up), x for s = 0.

Many queries (`kv4_decode_many`): N query sets over one cache, each with its own T
(prefill runs one decode per position), the same integers as kv4_decode, vectorised.
Integer-model queries (`logit_multiplier_fixed`): (C, lsh) from the A8 token scale
(mn, L) in integer arithmetic, one compile-time constant (`logit_constant`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from golden.formats import ACT_BITS, ACT_MAX, ACT_MIN, ACT_QMAX
from golden.kv4_attention_config import (C_BITS, CODE8_MAX, CODE_SHIFT, KV8_LEVELS, KV_LEVELS,
                                         LSH_BITS, SHIFT_SAT, KV4Config, exp2_table)
from golden.tensors import check_dims, check_range, check_shape, int_tensor
from golden.validate import check_int, expect_type

__all__ = ["KV4Cache", "DecodeResult", "to_fixed", "choose_frac", "quantize_token",
           "fwht", "fwht_matrix", "rotate_k", "rotate_query", "effective_query", "decode_codes",
           "scheme_kv", "append_fixed", "append_cache", "quantize_query", "logit_multiplier",
           "logit_constant", "logit_multiplier_fixed", "KM_BITS", "MN_BITS", "LOGIT_FIXED_REL_ERR",
           "rshift_round",
           "logits", "online_softmax", "pv_accumulate", "normalise", "kv4_decode",
           "kv4_decode_many", "output_frac",
           "dequantize", "float_attention", "cosine", "decode_float"]

LOG2E = 1.0 / math.log(2.0)


def _cfg(config) -> KV4Config:
    return expect_type("config", config, KV4Config)


def _bit_length(x: torch.Tensor) -> torch.Tensor:
    """int.bit_length of every element of an int64 tensor 0 <= x < 2**53 (exact:
    float64 holds x exactly and frexp's exponent is the bit length)."""
    return torch.frexp(x.double()).exponent.to(torch.int64)


def rshift_round(x: int | torch.Tensor, s: int | torch.Tensor) -> int | torch.Tensor:
    """Round-half-up right shift of int64 x by s >= 0 (int or int64 tensor)."""
    if isinstance(x, int) and isinstance(s, int):
        return (x + ((1 << s) >> 1)) >> s
    s = torch.as_tensor(s, dtype=torch.int64)
    half = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))
    return (x + half) >> s


# --------------------------------------------------------------------------- KV append
def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got "
                        f"{x.dtype if torch.is_tensor(x) else type(x).__name__}; "
                        f"convert it with .float() or torch.as_tensor(..., dtype=torch.float32)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or Inf (the KV4 quantizer input must be "
                         f"finite); fix the producer of {name} before quantizing")


def choose_frac(x: torch.Tensor, config: KV4Config) -> int:
    """Fraction bits of the append input format for tensor x: the largest f with
    max|x| * 2**f <= 2**(x_bits-1) - 1 (one unit per KV head and tensor)."""
    c = _cfg(config)
    _check_finite("x", x)
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0.0:
        return 0
    f = math.floor(math.log2(((1 << (c.x_bits - 1)) - 1) / amax))
    while amax * 2.0 ** f > (1 << (c.x_bits - 1)) - 1:
        f -= 1
    return f


def to_fixed(x: torch.Tensor, frac: int, config: KV4Config) -> torch.Tensor:
    """X = clamp(round_half_even(x * 2**frac), -2**(x_bits-1), 2**(x_bits-1)-1) int64."""
    c = _cfg(config)
    _check_finite("x", x)
    lim = 1 << (c.x_bits - 1)
    return torch.clamp(torch.round(x.double() * 2.0 ** frac), -lim, lim - 1).to(torch.int64)


def _t(X: torch.Tensor, S: torch.Tensor, levels: int = KV_LEVELS) -> torch.Tensor:
    """sign(X) * min(round_half_even(levels |X| / S), levels + 1), exact."""
    a = levels * X.abs()
    q, r = a // S, a % S
    up = (2 * r > S) | ((2 * r == S) & (q % 2 == 1))
    return torch.sign(X) * torch.clamp(q + up.to(torch.int64), max=levels + 1)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dim (a power of two),
    exact on integers: log2(D) identical constant-geometry stages
    y[i] = x[2i] + x[2i+1], y[i + D/2] = x[2i] - x[2i+1] (the RTL's butterfly).
    Equals x @ H_D up to a fixed permutation of the outputs, H_D Sylvester's
    +-1 matrix, so fwht(a) . fwht(b) = D * (a . b)."""
    D = x.shape[-1]
    if D < 1 or D & (D - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {D}")
    for _ in range(D.bit_length() - 1):
        a, b = x[..., 0::2], x[..., 1::2]
        x = torch.cat([a + b, a - b], -1)
    return x


def fwht_matrix(D: int) -> torch.Tensor:
    """F [D, D] float64 with fwht(x) = x @ F; F @ F.T = D * I."""
    return fwht(torch.eye(D, dtype=torch.float64))


def rotate_k(X: torch.Tensor, config: KV4Config) -> torch.Tensor:
    """The K append rotation: rshift_round(fwht(X), rot_shift) (identity if not rotate)."""
    c = _cfg(config)
    X = torch.as_tensor(X).to(torch.int64)
    return rshift_round(fwht(X), c.rot_shift) if c.rotate else X


def rotate_query(q8: torch.Tensor, config: KV4Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The query path: (q8 [..., D] as the K side reads it, e [...]). With rotate:
    qr = fwht(q8), e = max(0, bitlen(max|qr|) - 7), q8' = clamp(rshift_round(qr, e),
    -128, 127); otherwise (q8, 0)."""
    c = _cfg(config)
    q8 = torch.as_tensor(q8, dtype=torch.int64)
    if not c.rotate:
        return q8, torch.zeros(q8.shape[:-1], dtype=torch.int64)
    qr = fwht(q8)
    e = (_bit_length(qr.abs().amax(-1)) - (ACT_BITS - 1)).clamp(min=0)
    return torch.clamp(rshift_round(qr, e.unsqueeze(-1)), ACT_MIN, ACT_MAX), e


def effective_query(q8: torch.Tensor, s_q: torch.Tensor, config: KV4Config) -> torch.Tensor:
    """The float query [..., D] (original frame) the K side multiplies: the host's
    q8 * s_q after the query path's rotation and power-of-two requantization."""
    c = _cfg(config)
    q8r, e = rotate_query(q8, c)
    s_q = torch.as_tensor(s_q, dtype=torch.float64).unsqueeze(-1)
    if not c.rotate:
        return q8r.double() * s_q
    qr = q8r.double() * (2.0 ** e.double()).unsqueeze(-1)
    return qr @ fwht_matrix(c.head_dim).T / c.head_dim * s_q


def quantize_token(X: torch.Tensor, config: KV4Config, *, levels: int = KV_LEVELS,
                   width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token asymmetric quantization of fixed-point X [..., head_dim] with
    `levels` (15: 4-bit codes, 240: 8-bit recent-window codes) (module docstring).
    X must fit signed `width` bits (default x_bits). Returns (codes [..., D],
    S [...], zero [...]) int64."""
    c = _cfg(config)
    if levels not in (KV_LEVELS, KV8_LEVELS):
        raise ValueError(f"levels must be {KV_LEVELS} or {KV8_LEVELS}, got {levels}")
    X = torch.as_tensor(X).to(torch.int64)
    if X.shape[-1] != c.head_dim:
        raise ValueError(f"last dim must be head_dim={c.head_dim}, got {tuple(X.shape)}")
    width = c.x_bits if width is None else width
    lim = 1 << (width - 1)
    if X.numel() and (int(X.min()) < -lim or int(X.max()) >= lim):
        raise ValueError(f"X exceeds signed {width}-bit fixed point; use to_fixed")
    lo = X.amin(-1)
    hi = X.amax(-1)
    rng = hi - lo
    S = torch.where(rng > 0, rng, torch.where(lo != 0, KV_LEVELS * lo.abs(),
                                              torch.full_like(lo, KV_LEVELS)))
    zero = torch.clamp(-_t(lo, S, levels), 0, levels)
    codes = torch.clamp(_t(X, S.unsqueeze(-1), levels) + zero.unsqueeze(-1), 0, levels)
    return codes, S, zero


@dataclass(frozen=True, kw_only=True)
class KV4Cache:
    """One KV head's cache: 4-bit codes [T, D] (0..15), scale numerators S [T],
    zeros [T]; 8-bit codes kcodes8/vcodes8 [T, D] (0..240) and zeros kz8/vz8 [T]
    for the recent window (-1 where a token's 8-bit codes were not kept, e.g. an
    image holds only the last `recent`); the fixed-point units u_k = 2**-frac_k,
    u_v = 2**-frac_v. K is stored in the rotated frame when config.rotate."""
    kcodes: torch.Tensor
    ks: torch.Tensor
    kz: torch.Tensor
    vcodes: torch.Tensor
    vs: torch.Tensor
    vz: torch.Tensor
    kcodes8: torch.Tensor
    kz8: torch.Tensor
    vcodes8: torch.Tensor
    vz8: torch.Tensor
    frac_k: int
    frac_v: int
    rotated: bool = False

    @property
    def T(self) -> int:
        """Tokens held in the cache."""
        return int(self.kcodes.shape[0])

    def v_dequant(self, bits: int = 4) -> torch.Tensor:
        """V [T, D] as float64 from its 4-bit (bits=4) or 8-bit codes."""
        if bits == 4:
            return dequantize(self.vcodes, self.vs, self.vz, self.frac_v)
        return dequantize(self.vcodes8, self.vs, self.vz8, self.frac_v, KV8_LEVELS)


def append_cache(k: torch.Tensor, v: torch.Tensor, config: KV4Config, *,
                 frac_k: int | None = None, frac_v: int | None = None) -> KV4Cache:
    """Quantize float K, V [T, D] of one KV head token by token (the append path)."""
    c = _cfg(config)
    for name, x in (("k", k), ("v", v)):
        _check_finite(name, x)
        if x.dim() != 2 or x.shape[1] != c.head_dim:
            raise ValueError(f"{name} must be [T, {c.head_dim}], got {tuple(x.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if k.shape[0] > c.max_t:
        raise ValueError(f"T={k.shape[0]} exceeds max_t={c.max_t}; raise max_t or "
                         f"shorten the context")
    fk = choose_frac(k, c) if frac_k is None else frac_k
    fv = choose_frac(v, c) if frac_v is None else frac_v
    return append_fixed(to_fixed(k, fk, c), to_fixed(v, fv, c), c, frac_k=fk, frac_v=fv)


def append_fixed(Xk: torch.Tensor, Xv: torch.Tensor, config: KV4Config, *, frac_k: int,
                 frac_v: int) -> KV4Cache:
    """The append path on fixed-point K, V [T, D] (x_bits): K rotated (if the
    scheme rotates), both quantized to 4 and 8 bits with one shared S."""
    c = _cfg(config)
    Xk = rotate_k(Xk, c)
    kc, ks, kz = quantize_token(Xk, c, width=c.k_bits)
    kc8, _, kz8 = quantize_token(Xk, c, levels=KV8_LEVELS, width=c.k_bits)
    vc, vs, vz = quantize_token(Xv, c)
    vc8, _, vz8 = quantize_token(Xv, c, levels=KV8_LEVELS)
    return KV4Cache(kcodes=kc, ks=ks, kz=kz, vcodes=vc, vs=vs, vz=vz, kcodes8=kc8, kz8=kz8,
                    vcodes8=vc8, vz8=vz8, frac_k=frac_k, frac_v=frac_v, rotated=c.rotate)


def dequantize(codes: torch.Tensor, S: torch.Tensor, zero: torch.Tensor, frac: int,
               levels: int = KV_LEVELS) -> torch.Tensor:
    """(code - zero) * S * 2**-frac / levels in float64."""
    return ((codes - zero.unsqueeze(-1)).double() * S.unsqueeze(-1).double()
            * 2.0 ** -frac / levels)


def _unrotate(k: torch.Tensor) -> torch.Tensor:
    """Inverse of rotate_k in float: Xk = fwht(X) / 2**rot_shift, F F^T = D I."""
    D = k.shape[-1]
    return k @ fwht_matrix(D).T * (2.0 ** ((D.bit_length() - 1) // 2) / D)


def scheme_kv(cache: KV4Cache, T: int, config: KV4Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The float K [T, D] (original frame) and V [T, D] a T-token decode reads:
    the 4-bit values, the last min(recent, T) tokens at 8 bits (float64)."""
    c = _cfg(config)
    kc, kz, vc, vz = decode_codes(cache, T, c)
    k = dequantize(kc, cache.ks[:T], kz, cache.frac_k, KV8_LEVELS)
    v = dequantize(vc, cache.vs[:T], vz, cache.frac_v, KV8_LEVELS)
    return (_unrotate(k) if cache.rotated else k), v


def decode_codes(cache: KV4Cache, T: int, config: KV4Config) -> tuple[torch.Tensor, torch.Tensor,
                 torch.Tensor, torch.Tensor]:
    """The 8-bit-domain operands of a decode over T tokens (module docstring):
    (kc [T, D], kz [T], vc [T, D], vz [T]) int64: 16*c4 and 16*z4 for the first
    T - R tokens, the 8-bit codes for the last R = min(recent, T)."""
    c = _cfg(config)
    n4 = T - c.recent_tokens(T)
    out = []
    for c4, z4, c8, z8 in ((cache.kcodes, cache.kz, cache.kcodes8, cache.kz8),
                           (cache.vcodes, cache.vz, cache.vcodes8, cache.vz8)):
        if bool((c8[n4:T] < 0).any()) or bool((z8[n4:T] < 0).any()):
            raise ValueError(f"the cache does not hold 8-bit codes for tokens {n4}..{T - 1} "
                             f"(the recent window of a T={T} decode); decode at the cache's "
                             f"own length or keep 8-bit codes for every token")
        out += [torch.cat([c4[:n4] << CODE_SHIFT, c8[n4:T]]),
                torch.cat([z4[:n4] << CODE_SHIFT, z8[n4:T]])]
    return tuple(out)


# --------------------------------------------------------------------------- query
def quantize_query(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vector symmetric INT8 of q [..., D] (DESIGN §3.1): (q8 int64, s_q float64)."""
    _check_finite("q", q)
    s = q.double().abs().amax(-1) / ACT_QMAX
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q8 = torch.clamp(torch.round(q.double() / safe.unsqueeze(-1)), -ACT_QMAX, ACT_QMAX)
    return q8.to(torch.int64), s


def _logit_scale(x: float, c: KV4Config) -> float:
    """x * log2(e) / (240 sqrt(head_dim)) * 2**(rot_shift - log2 D if rotate) in
    float64: from a query-scale times K-unit product to the base-2 logit factor."""
    m = x * LOG2E / (KV8_LEVELS * math.sqrt(c.head_dim))
    if c.rotate:
        m *= 2.0 ** (c.rot_shift - c.log2_d)
    return m


def _zero_multiplier_lsh(c: KV4Config) -> int:
    """The shift sent with C = 0 (an all-zero query): any legal one gives logits 0."""
    return max(c.logit_frac, c.min_lsh)


def logit_multiplier(s_q: float, frac_k: int, config: KV4Config) -> tuple[int, int]:
    """(C, lsh) with C * 2**-lsh ~= 2**logit_frac * s_q * 2**-frac_k * log2(e) *
    2**(rot_shift - log2 D if rotate) / (240 sqrt(head_dim)), C < 2**C_BITS,
    lsh >= min_lsh and as large as fits (most precise)."""
    c = _cfg(config)
    s_q = float(s_q)
    if not math.isfinite(s_q) or s_q < 0:
        raise ValueError(f"s_q must be finite and >= 0, got {s_q}")
    mult = _logit_scale(s_q * 2.0 ** -frac_k, c)
    if mult == 0.0:
        return 0, _zero_multiplier_lsh(c)
    for lsh in range((1 << LSH_BITS) - 1, c.min_lsh - 1, -1):
        C = int(round(mult * 2.0 ** (lsh + c.logit_frac)))
        if C < (1 << C_BITS):
            if C == 0:
                break
            return C, lsh
    raise ValueError(f"logit multiplier {mult:.3g} does not fit C_BITS={C_BITS} with a "
                     f"shift in [{c.min_lsh}, {(1 << LSH_BITS) - 1}]; rescale K (frac_k) or "
                     f"the query")


#: Bits of the compile-time mantissa KM of logit_constant.
KM_BITS = 24
#: Token-scale mantissa of the integer model's A8 quantizer: mn in [2**15, 2**16), or 0.
MN_BITS = 16
#: Relative error of logit_multiplier_fixed's C * 2**-lsh against the exact multiplier
#: while lsh is not saturated: C = RHU(mn KM, t) >= 2**(C_BITS-1) errs by <= 2**-C_BITS,
#: KM >= 2**(KM_BITS-1) by <= 2**-KM_BITS (plus float64 ulps); the product of the
#: two (1 + e) factors stays below 1 + this.
LOGIT_FIXED_REL_ERR = 2.0 ** -C_BITS + 2.0 ** -(KM_BITS - 1)


def logit_constant(config: KV4Config, *, in_frac: int, frac_k: int) -> tuple[int, int]:
    """(KM, KE): every constant of the logit multiplier of an integer-model query in
    one mantissa/exponent pair, KM * 2**-KE ~= 2**logit_frac * log2(e) / (127 * 240
    sqrt(D)) * 2**(rot_shift - log2 D if rotate) * 2**-frac_k * 2**-in_frac, KM in
    [2**(KM_BITS-1), 2**KM_BITS), round to nearest. Compile time: floats only here."""
    c = _cfg(config)
    check_int("in_frac", in_frac)
    check_int("frac_k", frac_k)
    m, ex = math.frexp(_logit_scale(2.0 ** c.logit_frac / ACT_QMAX, c))    # m in [1/2, 1)
    KM, KE = round(m * 2.0 ** KM_BITS), KM_BITS - ex
    if KM == 1 << KM_BITS:                       # m rounded up to 1
        KM, KE = KM >> 1, KE - 1
    return KM, KE + in_frac + frac_k


def logit_multiplier_fixed(mn: torch.Tensor, L: torch.Tensor, *, in_frac: int, frac_k: int,
                           config: KV4Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, lsh) int64 tensors shaped like mn: logit_multiplier in integers for queries
    whose INT8 codes came from the integer model's A8 quantizer (docs/integer-model.md):
    token scale (mn, L), max|q| ~= mn * 2**L units of 2**-in_frac, so s_q = mn * 2**L *
    2**-in_frac / 127; K in units of 2**-frac_k.

      P   = mn * KM                     (exact, < 2**(MN_BITS + KM_BITS); logit_constant)
      t   = bitlen(P) - C_BITS, plus 1 where RHU(P, t) rounds up to 2**C_BITS
      C   = RHU(P, t) in [2**(C_BITS-1), 2**C_BITS)   (the most precise C, as
            logit_multiplier chooses it)
      lsh = KE - L - t
    so C * 2**-lsh = P * 2**(L - KE) within LOGIT_FIXED_REL_ERR of the exact multiplier.
    Saturation: lsh > 2**LSH_BITS - 1 (a multiplier below about 2**-48) becomes lsh =
    2**LSH_BITS - 1 with C = RHU(P, t + excess), precision lost down to C = 0 (logits 0,
    uniform weights; logit_multiplier raises there instead). lsh < min_lsh (a
    multiplier too large for C_BITS) has no legal value: ValueError.
    mn == 0 (an all-zero query): C = 0."""
    c = _cfg(config)
    mn, L = _index_tensor("mn", mn), _index_tensor("L", L)
    if mn.shape != L.shape:
        raise ValueError(f"mn {list(mn.shape)} and L {list(L.shape)} must have one shape "
                         f"(one token scale per query head)")
    zero = mn == 0
    bad = ~zero & ((mn < 1 << (MN_BITS - 1)) | (mn >= 1 << MN_BITS))
    if bool(bad.any()):
        i = tuple(int(j) for j in bad.nonzero()[0])
        raise ValueError(f"mn{list(i)} = {int(mn[i])} is not a normalised {MN_BITS}-bit "
                         f"mantissa in [2**{MN_BITS - 1}, 2**{MN_BITS}) or 0; take (mn, L) "
                         f"from the A8 quantizer")
    KM, KE = logit_constant(c, in_frac=in_frac, frac_k=frac_k)
    P = mn * KM
    t = (_bit_length(P) - C_BITS).clamp(min=0)
    t = t + torch.bitwise_right_shift(rshift_round(P, t), C_BITS)
    lsh_max = (1 << LSH_BITS) - 1
    lsh = KE - L - t
    # a shift past the field: C shifts right by the excess (RHU(P, s) = 0 for s >= 62)
    t = (t + (lsh - lsh_max).clamp(min=0)).clamp(max=62)
    lsh = lsh.clamp(max=lsh_max)
    low = ~zero & (lsh < c.min_lsh)
    if bool(low.any()):
        i = tuple(int(j) for j in low.nonzero()[0])
        raise ValueError(f"the logit multiplier of mn{list(i)} = {int(mn[i])}, L = "
                         f"{int(L[i])} (in_frac={in_frac}, frac_k={frac_k}) needs a shift "
                         f"{int(lsh[i])} < min_lsh={c.min_lsh} with C < 2**{C_BITS}: the "
                         f"query times the K unit 2**-frac_k is too large; raise frac_k (a "
                         f"finer K unit) or check the token scale")
    C = torch.where(zero, 0, rshift_round(P, t))
    return C, torch.where(zero, _zero_multiplier_lsh(c), lsh)


# --------------------------------------------------------------------------- decode
def _sat(x, bits: int):
    lim = 1 << (bits - 1)
    return torch.clamp(x, -lim, lim - 1)


def _check_lsh(lsh, c: KV4Config) -> torch.Tensor:
    lsh = torch.as_tensor(lsh, dtype=torch.int64).reshape(-1, 1)
    if bool((lsh < c.min_lsh).any()) or bool((lsh >= (1 << LSH_BITS)).any()):
        raise ValueError(f"lsh must be in [{c.min_lsh}, {(1 << LSH_BITS) - 1}] (min_lsh: the "
                         f"query requantization shift is subtracted from it), got "
                         f"{lsh.flatten().tolist()}; use logit_multiplier")
    return lsh


def logits(q8: torch.Tensor, C: torch.Tensor, lsh: torch.Tensor, cache: KV4Cache, T: int,
           config: KV4Config) -> torch.Tensor:
    """Base-2 logits l [H, T] (logit_frac fraction bits, saturating logit_bits) of
    the host's un-rotated INT8 queries q8 [H, D]."""
    c = _cfg(config)
    lsh = _check_lsh(lsh, c)
    q8, e = rotate_query(q8, c)
    kc, kz, _, _ = decode_codes(cache, T, c)
    sumq = q8.sum(-1, keepdim=True)                                   # [H, 1]
    P = q8 @ kc.T                                                     # [H, T]
    dot = P - sumq * kz.unsqueeze(0)
    C = torch.as_tensor(C, dtype=torch.int64).reshape(-1, 1)
    prod = dot * cache.ks[:T].unsqueeze(0) * C
    return _sat(rshift_round(prod, lsh - e.reshape(-1, 1)), c.logit_bits)


def online_softmax(l: torch.Tensor, config: KV4Config) -> tuple[torch.Tensor, torch.Tensor,
                   torch.Tensor, torch.Tensor]:
    """Streaming softmax over t (module docstring). Returns p [H, T], sh [H, T],
    m [H] (final integer max) and d [H] (denominator), all int64."""
    c = _cfg(config)
    table = exp2_table(c)
    lf, mask = c.logit_frac, (1 << c.logit_frac) - 1
    H, T = l.shape
    p = [[0] * T for _ in range(H)]
    sh = [[0] * T for _ in range(H)]
    ms, ds = [], []
    for h in range(H):
        m = d = 0
        row, prow, srow = l[h].tolist(), p[h], sh[h]
        for t, lt in enumerate(row):
            ce = -((-lt) >> lf)          # ceil(l / 2**lf)
            if t == 0:
                mn, s = ce, 0
            else:
                mn = max(m, ce)
                s = min(mn - m, SHIFT_SAT)
            e = (mn << lf) - lt
            ei = e >> lf
            pt = (table[e & mask] + ((1 << ei) >> 1)) >> ei if ei < SHIFT_SAT else 0
            d = ((d + ((1 << s) >> 1)) >> s) + pt
            m, prow[t], srow[t] = mn, pt, s
        ms.append(m)
        ds.append(d)
    t64 = torch.int64
    return (torch.tensor(p, dtype=t64), torch.tensor(sh, dtype=t64),
            torch.tensor(ms, dtype=t64), torch.tensor(ds, dtype=t64))


def pv_accumulate(p: torch.Tensor, sh: torch.Tensor, cache: KV4Cache, T: int,
                  config: KV4Config) -> tuple[torch.Tensor, torch.Tensor]:
    """acc [H, D] = rescaled sum_t w_t v_t and wz [H] = rescaled sum_t w_t zv_t."""
    _cfg(config)
    H = p.shape[0]
    w = p * cache.vs[:T].unsqueeze(0)                                 # [H, T]
    acc = torch.zeros(H, cache.vcodes.shape[1], dtype=torch.int64)
    wz = torch.zeros(H, dtype=torch.int64)
    _, _, vc, vz = decode_codes(cache, T, config)
    for t in range(T):
        s = sh[:, t]
        if bool((s > 0).any()):
            acc = rshift_round(acc, s.unsqueeze(1))
            wz = rshift_round(wz, s)
        acc = acc + w[:, t:t + 1] * vc[t].unsqueeze(0)
        wz = wz + w[:, t] * vz[t]
    return acc, wz


def normalise(acc: torch.Tensor, wz: torch.Tensor, d: torch.Tensor,
              config: KV4Config) -> torch.Tensor:
    """out [H, D] = sat(rshift_round((acc - wz) * R, s)) (module docstring); the
    product exceeds 64 bits, so this step runs on Python ints."""
    c = _cfg(config)
    out = []
    lim = 1 << (c.out_bits - 1)
    for h in range(acc.shape[0]):
        dd = KV8_LEVELS * int(d[h])
        sd = c.dd_bits - dd.bit_length()
        R = (1 << (c.dd_bits - 1 + c.recip_bits)) // (dd << sd)
        s = c.dd_bits - 1 + c.recip_bits - sd - c.out_frac
        row = []
        for a in acc[h].tolist():
            y = ((a - int(wz[h])) * R + (1 << (s - 1))) >> s
            row.append(min(max(y, -lim), lim - 1))
        out.append(row)
    return torch.tensor(out, dtype=torch.int64)


@dataclass(frozen=True, kw_only=True)
class DecodeResult:
    """Every stage of one decode step (for locating a mismatch)."""
    l: torch.Tensor
    p: torch.Tensor
    sh: torch.Tensor
    m: torch.Tensor
    d: torch.Tensor
    acc: torch.Tensor
    wz: torch.Tensor
    out: torch.Tensor
    frac_out: int      # output value = out * 2**-frac_out

    def value(self) -> torch.Tensor:
        """The output as float64: out * 2**-frac_out."""
        return self.out.double() * 2.0 ** -self.frac_out


def _check_t_range(lo: int, hi: int, cache: KV4Cache, c: KV4Config, *, at_lo: str = "",
                   at_hi: str = "") -> None:
    """Decode lengths lo..hi: at least 1, at most max_t (the unit flags more as an
    overflow) and at most the cached tokens; at_lo / at_hi name the offending entry."""
    if lo < 1:
        raise ValueError(f"T must be an int >= 1, got T{at_lo} = {lo}")
    if hi > c.max_t:
        raise ValueError(f"T{at_hi}={hi} exceeds max_t={c.max_t}; the unit flags this as an "
                         f"overflow: raise max_t or shorten the context")
    if hi > cache.T:
        raise ValueError(f"T{at_hi}={hi} exceeds the {cache.T} cached tokens")


def kv4_decode(q8: torch.Tensor, C: torch.Tensor, lsh: torch.Tensor, cache: KV4Cache, T: int,
               config: KV4Config) -> DecodeResult:
    """One decode step: q8 [H, D] int (H = config.heads query heads of the GQA
    group), per-head C and lsh, over the first T tokens of the cache."""
    c = _cfg(config)
    if not isinstance(T, int) or isinstance(T, bool):
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    _check_t_range(T, T, cache, c)
    l = logits(q8, C, lsh, cache, T, c)
    p, sh, m, d = online_softmax(l, c)
    acc, wz = pv_accumulate(p, sh, cache, T, c)
    out = normalise(acc, wz, d, c)
    return DecodeResult(l=l, p=p, sh=sh, m=m, d=d, acc=acc, wz=wz, out=out,
                        frac_out=output_frac(cache, c))


def output_frac(cache: KV4Cache, config: KV4Config) -> int:
    """Fraction bits of a decode's output: value = out * 2**-output_frac."""
    return cache.frac_v + _cfg(config).out_frac


# --------------------------------------------------------------------------- many queries
#: float64 holds every integer of magnitude below 2**53 exactly: a BLAS product whose
#: terms and partial sums all stay below it is exact in any summation order.
_F64_EXACT_BITS = 53
#: Token block of the P.V prefix sums (kv4_decode_many): block sums are one batched
#: product, a segment boundary inside a block costs one block-sized product.
_PV_BLOCK = 32
#: Elements of one vectorised pass of kv4_decode_many (rows x tokens of the logit
#: planes plus rows x window x (head_dim + 1) of the 8-bit window's terms): bounds
#: the working set and lets a causal batch skip the tokens beyond its longest context.
_PASS_ELEMS = 1 << 20
#: Limb width of the normaliser's exact (acc - wz) * R (two's complement pieces).
_LIMB = 31
#: |acc - wz| * R below 2**88 keeps every limb product and sum of _normalise_many
#: inside int64 (proof there); larger products take the Python-int normalise.
_NORM_LIMB_BOUND = 2.0 ** 88


def _index_tensor(name: str, x) -> torch.Tensor:
    """An int64 tensor from an integer tensor or array, or a (nested) sequence of ints."""
    if isinstance(x, (list, tuple)):
        # an empty sequence has no dtype to check (torch would make it float)
        x = torch.as_tensor(x) if len(x) else torch.zeros(0, dtype=torch.int64)
    return int_tensor(name, x)


def _many_inputs(q8, C, lsh, cache, T, c: KV4Config):
    expect_type("cache", cache, KV4Cache)
    if tuple(cache.kcodes.shape[1:]) != (c.head_dim,):
        raise ValueError(f"the cache holds [T, {list(cache.kcodes.shape[1:])}] K codes, the "
                         f"config head_dim={c.head_dim}; decode with the cache's own config")
    q8 = _index_tensor("q8", q8)
    check_dims("q8", q8, 3, "[N, heads, head_dim]")
    N = q8.shape[0]
    check_shape("q8", q8, (N, c.heads, c.head_dim), "[N, heads, head_dim]")
    check_range("q8", q8, ACT_MIN, ACT_MAX, "INT8 query codes")
    C, lsh, T = _index_tensor("C", C), _index_tensor("lsh", lsh), _index_tensor("T", T)
    check_shape("C", C, (N, c.heads), "[N, heads]")
    check_shape("lsh", lsh, (N, c.heads), "[N, heads]")
    check_shape("T", T, (N,), "[N]")
    check_range("C", C, 0, (1 << C_BITS) - 1,
                f"an unsigned {C_BITS}-bit multiplier: use logit_multiplier")
    check_range("lsh", lsh, c.min_lsh, (1 << LSH_BITS) - 1,
                "min_lsh: the query requantization shift is subtracted from it; use "
                "logit_multiplier")
    if N:
        _check_t_range(int(T.min()), int(T.max()), cache, c,
                       at_lo=f"[{int(T.argmin())}]", at_hi=f"[{int(T.argmax())}]")
    return q8, C, lsh, T


def _tokens(cache: KV4Cache, T, c: KV4Config) -> dict:
    """The per-token operands every query of a kv4_decode_many call shares (first
    max T tokens): K as [codes | zero] rows in the 4-bit (16 c4, 16 z4) and 8-bit
    (c8, z8) readings, the V side alike, both scales and the p lookup (_p_table)."""
    n4 = T - T.clamp(max=c.recent)
    Tc = int(T.max())
    sl = slice(0, Tc)
    # the recent window of every query must have its 8-bit codes (decode_codes)
    miss = ((cache.kcodes8[sl] < 0).any(1) | (cache.kz8[sl] < 0) | (cache.vcodes8[sl] < 0).any(1)
            | (cache.vz8[sl] < 0)).long()
    cm = torch.cat([miss.new_zeros(1), miss.cumsum(0)])
    bad = (cm[T] - cm[n4]) > 0
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"the cache does not hold 8-bit codes for tokens {int(n4[i])}.."
                         f"{int(T[i]) - 1} (the recent window of query {i}, T={int(T[i])}); "
                         f"decode at the cache's own length or keep 8-bit codes for every token")
    # widths the exact float64 products below rely on (a cache of this config meets them)
    for name, hi in (("ks", (1 << c.scale_bits) - 1), ("vs", (1 << c.scale_bits) - 1),
                     ("kcodes", KV_LEVELS), ("vcodes", KV_LEVELS), ("kz", KV_LEVELS),
                     ("vz", KV_LEVELS), ("kcodes8", CODE8_MAX), ("vcodes8", CODE8_MAX),
                     ("kz8", CODE8_MAX), ("vz8", CODE8_MAX)):
        check_range(f"cache.{name}", getattr(cache, name)[sl], -1 if name.endswith("8") else 0,
                    hi, "a cache appended with this config")

    def rows(codes, zero, shift):
        return torch.cat([codes[sl] << shift, zero[sl].unsqueeze(1) << shift], 1)

    nb = -(-Tc // _PV_BLOCK)
    v4 = torch.zeros(nb * _PV_BLOCK, c.head_dim + 1, dtype=torch.float64)
    v4[:Tc] = rows(cache.vcodes, cache.vz, CODE_SHIFT).double()
    return dict(k4=rows(cache.kcodes, cache.kz, CODE_SHIFT).double(),
                k8=rows(cache.kcodes8, cache.kz8, 0).clamp(min=0).double(),
                ks=cache.ks[sl].double(), vs=cache.vs[sl], v4=v4,
                v8=rows(cache.vcodes8, cache.vz8, 0).clamp(min=0).double(),
                ptab=_p_table(c))


def _p_table(c: KV4Config) -> torch.Tensor:
    """p as a function of e = m 2**lf - l >= 0, one lookup: P[e] = RHU(TABLE[e mod
    2**lf], e >> lf) for e < (p_frac + 2) 2**lf, then one 0 that every larger e reads
    (TABLE <= 2**p_frac: a shift by p_frac + 2 or more, up to SHIFT_SAT, gives 0)."""
    lf = c.logit_frac
    e = torch.arange((c.p_frac + 2) << lf)
    tab = torch.tensor(exp2_table(c), dtype=torch.int64)
    p = rshift_round(tab[e & ((1 << lf) - 1)], torch.bitwise_right_shift(e, lf))
    return torch.cat([p, p.new_zeros(1)])


def _normalise_many(acc: torch.Tensor, wz: torch.Tensor, d: torch.Tensor,
                    c: KV4Config) -> torch.Tensor:
    """normalise() vectorised, bit for bit: out = sat_out(RHU((acc - wz) * R, s)).

    R = floor(2**P / dn), P = dd_bits - 1 + recip_bits may exceed 62 bits: with
    g = max(0, P - 62), 2**(P-g) = q0 dn + r0 gives R = q0 2**g + floor(r0 2**g / dn)
    (r0 2**g < dn 2**g < 2**63).
    The product a R (a = acc - wz, |a| < 2**62, R <= 2**recip_bits <= 2**32) exceeds
    64 bits. Limbs: a = ah 2**31 + al, R = Rh 2**31 + Rl with 0 <= al, Rl < 2**31
    (ah = a >> 31 floors, so this holds for negative a), then
      al Rl = c1 2**31 + x0,  0 <= x0 < 2**31,
      u = ah Rh 2**31 + ah Rl + al Rh + c1 = floor(a R / 2**31),  a R = u 2**31 + x0.
    Where |a| R < 2**88: |ah Rh 2**31| <= (|a| / 2**31 + 1) R < 2**57 + 2**32, |ah Rl| <
    2**62, al Rh < 2**33, c1 < 2**31, so u and every partial sum fit int64.
    RHU(a R, s) = floor((u 2**31 + x0 + 2**(s-1)) / 2**s):
      s >= 32: = floor((u + 2**(s-32)) / 2**(s-31))  (x0 < 2**31 cannot carry into
               floor(. / 2**31) once 2**(s-1) is a multiple of 2**31; floors nest),
               i.e. RHU(u, s - 31);
      s <= 31: = u 2**(31-s) + floor((x0 + 2**(s-1)) / 2**s)  (u 2**31 is a multiple
               of 2**s); u is first clamped to +-2**(out_bits+1): a clamped u gives
               |y| >= 2**(out_bits+1) - 2**(31-s) on the same side, so the saturated
               output is unchanged, and the shifted value stays below 2**55.
    s >= 8 - 1 + recip_bits - out_frac >= 7 (dd = 240 d >= 240). Rows with a larger
    |a| R (none for the shipped widths: acc_bits + recip_bits <= 80 at d64) run the
    Python-int normalise()."""
    P = c.dd_bits - 1 + c.recip_bits
    g = max(0, P - 62)
    dd = KV8_LEVELS * d
    sd = c.dd_bits - _bit_length(dd)
    dn = dd << sd
    top = torch.full_like(dn, 1 << (P - g))
    q0 = top // dn
    R = (q0 << g) + (((top - q0 * dn) << g) // dn)
    s = (P - sd - c.out_frac).unsqueeze(1)
    a = acc - wz.unsqueeze(1)
    lim = 1 << (c.out_bits - 1)
    M = (1 << _LIMB) - 1
    shr = torch.bitwise_right_shift                # floors, like >>, and fast for int64
    ah, al = shr(a, _LIMB), a & M
    Rc = R.unsqueeze(1)
    Rh, Rl = shr(Rc, _LIMB), Rc & M
    lo = al * Rl
    u = ((ah * Rh) << _LIMB) + ah * Rl + al * Rh + shr(lo, _LIMB)
    one = torch.ones_like(s)
    sA = (s - _LIMB).clamp(min=1)
    yA = (u + (one << (sA - 1))) >> sA
    sB = s.clamp(max=_LIMB)
    yB = ((u.clamp(-4 * lim, 4 * lim) << (_LIMB - sB))
          + (((lo & M) + (one << (sB - 1))) >> sB))
    out = torch.where(s > _LIMB, yA, yB).clamp(-lim, lim - 1)
    big = (a.abs().amax(1).double() * R.double()) >= _NORM_LIMB_BOUND
    if bool(big.any()):
        rows = big.nonzero().squeeze(1)
        out[rows] = normalise(acc[rows], wz[rows], d[rows], c)
    return out


def _pv_prefix(w, pr, px, n4, Tr, tw, twq, tok: dict) -> torch.Tensor:
    """sum_{t < x} w[r, t] V_r[t] [points, D+1] at the points (r = pr, x = px) for
    integer-valued float64 w [rows, Tm], V_r = [codes | zero] of V as row r reads
    it: 4-bit codes (16 c4) for tokens < y = min(x, n4_r), 8-bit codes (c8) for its
    window tokens n4_r .. x - 1. The caller bounds every sum below 2**53 (exact).
    Whole blocks of _PV_BLOCK tokens come from a block prefix, the rest of y's block
    from one product per block; the window from one product per row at its end point
    x = T_r and one per point inside a window."""
    rows, Tm = w.shape
    n, W = twq.shape
    H = rows // n
    B = _PV_BLOCK
    nb = -(-Tm // B)
    v4 = tok["v4"][:nb * B]
    D1 = v4.shape[1]
    wp = torch.nn.functional.pad(w, (0, nb * B - Tm))
    bs = torch.matmul(wp.view(rows, nb, B).transpose(0, 1), v4.view(nb, B, D1))
    for b in range(1, nb):                 # in place: cheaper than cumsum over dim 0
        bs[b] += bs[b - 1]
    y = torch.minimum(px, n4[pr, 0])
    yb, yo = y // B, y % B
    pref = torch.where((yb > 0).unsqueeze(1), bs[(yb - 1).clamp(min=0), pr], 0.0)
    part = yo > 0
    for b in yb[part].unique().tolist():
        sel = (part & (yb == b)).nonzero().squeeze(1)
        wb = wp[pr[sel], b * B:(b + 1) * B] * (torch.arange(B) < yo[sel].unsqueeze(1))
        pref[sel] += wb @ v4[b * B:(b + 1) * B]
    if W:
        ww = w.gather(1, tw) * (tw < Tr)                              # [rows, W]
        v8 = tok["v8"][twq]                                            # [n, W, D+1]
        end = px == Tr[pr, 0]
        pref[end] += (ww.view(n, H, W) @ v8).view(rows, D1)[pr[end]]
        jx = px - n4[pr, 0]
        sel = ((jx > 0) & ~end).nonzero().squeeze(1)
        if sel.numel():
            wm = ww[pr[sel]] * (torch.arange(W) < jx[sel].unsqueeze(1))
            pref[sel] += (wm.unsqueeze(1) @ v8[pr[sel] // H]).squeeze(1)
    return pref


def _decode_pass(q, e, C, lsh, T, tok: dict, c: KV4Config) -> torch.Tensor:
    """kv4_decode_many on one pass: rotated queries q [n, H, D] (shifts e [n, H]);
    rows r = (i, h) query-major."""
    n, H, D = q.shape
    rows, lf = n * H, c.logit_frac
    Tm = int(T.max())
    Tr = T.repeat_interleave(H).unsqueeze(1)                          # [rows, 1]
    n4 = Tr - Tr.clamp(max=c.recent)                                  # first 8-bit token
    valid = torch.arange(Tm) < Tr
    W = min(c.recent, Tm)
    # a row's window tokens n4 + j; where T_r < recent, j >= T_r lies beyond the
    # context but still below W <= Tm, and is masked like every token t >= T_r
    tw = n4 + torch.arange(W)                                         # [rows, W]
    twq = tw.view(n, H, W)[:, 0]                                      # heads share it
    # logits: [q | -sum q] . [c | z] = dot_t, float64 products of integers whose
    # terms and partial sums stay below 2**dot_bits (exact); dot * S_k < 2**(prod_bits
    # - C_BITS) <= 2**47 (exact); * C in int64 (prod_bits <= 63)
    qa = torch.cat([q, -q.sum(-1, keepdim=True)], -1).double()        # [n, H, D+1]
    dot = qa.view(rows, D + 1) @ tok["k4"][:Tm].T
    if W:
        dot.scatter_(1, tw, (qa @ tok["k8"][twq].transpose(1, 2)).view(rows, W))
    prod = (dot * tok["ks"][:Tm]).to(torch.int64) * C.reshape(rows, 1)
    l = _sat(rshift_round(prod, (lsh - e).reshape(rows, 1)), c.logit_bits)
    # online softmax, all tokens at once: the running integer max m_t = max ceil(l)
    # by cummax (torch.bitwise_right_shift: a tensor shift, fast for int64)
    m = torch.cummax(torch.bitwise_right_shift(l + ((1 << lf) - 1), lf), 1).values
    sh = torch.zeros_like(m)
    sh[:, 1:] = (m[:, 1:] - m[:, :-1]).clamp(max=SHIFT_SAT)
    ptab = tok["ptab"]
    p = ptab.take((m * (1 << lf) - l).clamp(max=ptab.numel() - 1)).masked_fill_(~valid, 0)
    w = p * tok["vs"][:Tm]
    wmax = int(w.max())
    # The rounding of d, acc and wz only acts where the max increases (sh > 0): between
    # two increases (a segment) they are plain sums. Row r's segments end at its
    # points x: every increase's token and the end x = T_r, in order. Prefix sums
    # over the tokens < x give every segment sum exactly.
    pts = torch.arange(Tm + 1) == Tr
    pts[:, :Tm] |= (sh > 0) & valid
    K = pts.sum(1)                                                     # segments per row
    if n > 1 and int(K.sum()) * (D + 2) > 4 * _PASS_ELEMS:
        # logits that rise token after token make a point of almost every token: halve
        # the pass to bound the [points, D + 2] prefix sums
        h = n // 2
        return torch.cat([_decode_pass(q[:h], e[:h], C[:h], lsh[:h], T[:h], tok, c),
                          _decode_pass(q[h:], e[h:], C[h:], lsh[h:], T[h:], tok, c)])
    pr, px = pts.nonzero(as_tuple=True)                               # by row, then x
    # P.V prefix sums at the points, in float64: exact while every sum, at most
    # Tm * wmax * CODE8_MAX, stays below 2**53; a wider w runs in limbs
    limb = _F64_EXACT_BITS - CODE8_MAX.bit_length() - Tm.bit_length()
    if wmax < 1 << limb:
        pref = _pv_prefix(w.double(), pr, px, n4, Tr, tw, twq, tok).to(torch.int64)
    else:
        pref = 0
        for j in range(-(-wmax.bit_length() // limb)):
            wj = torch.bitwise_right_shift(w, j * limb) & ((1 << limb) - 1)
            pref = pref + (_pv_prefix(wj.double(), pr, px, n4, Tr, tw, twq, tok)
                           .to(torch.int64) << (j * limb))
    pc = torch.cat([p.new_zeros(rows, 1), p.cumsum(1)], 1)
    pref = torch.cat([pref, pc[pr, px].unsqueeze(1)], 1)               # [acc | wz | d]
    first = torch.ones_like(pr, dtype=torch.bool)
    first[1:] = pr[1:] != pr[:-1]
    seg = pref - torch.where(first.unsqueeze(1), 0, pref.roll(1, 0))
    segsh = torch.where(first, 0, sh[pr, px.roll(1).clamp(max=Tm - 1)])
    # state = RHU(state, sh at the segment's first token) + segment sum, over the
    # segment index k; rows sorted by segment count, so the rows still running are a prefix
    off = K.cumsum(0) - K
    order = torch.argsort(K, descending=True, stable=True)
    offs = off[order]
    live = (rows - torch.bincount(K).cumsum(0)).tolist()               # rows with K > k
    state = seg[offs]
    for k in range(1, len(live)):
        if not live[k]:
            break
        j = offs[:live[k]] + k
        state[:live[k]] = rshift_round(state[:live[k]], segsh[j].unsqueeze(1)) + seg[j]
    final = torch.empty_like(state)
    final[order] = state
    out = _normalise_many(final[:, :D], final[:, D], final[:, D + 1], c)
    return out.view(n, H, D)


def kv4_decode_many(q8: torch.Tensor, C: torch.Tensor, lsh: torch.Tensor, cache: KV4Cache,
                    T: torch.Tensor | Sequence[int], config: KV4Config) -> torch.Tensor:
    """N decode steps at once over one KV head's cache: out [N, H, D] int64 with
    out[i] == kv4_decode(q8[i], C[i], lsh[i], cache, int(T[i]), config).out bit for
    bit (output value = out * 2**-output_frac(cache, config)).

    q8 [N, heads, head_dim] int (INT8 codes), C and lsh [N, heads] int, T [N] int
    (tensor or sequence; 1 <= T_i <= min(max_t, cache.T)): query i reads tokens
    0..T_i - 1, its last min(recent, T_i) at 8 bits (its own recent window), as the
    hardware's prefill runs one decode per position.

    Same integer steps as kv4_decode, vectorised: logits of every (i, h, t) by float64
    products that are exact (every integer below 2**53); the running integer max by
    cummax; the RHU rescaling of d, acc and wz applied once per increase of the max
    (between increases they are plain sums, taken from exact prefix sums), looping
    over the segment index, not over t; the normalisation in 31-bit limbs
    (_normalise_many). Queries run in passes of similar T (_PASS_ELEMS)."""
    c = _cfg(config)
    q8, C, lsh, T = _many_inputs(q8, C, lsh, cache, T, c)
    N, H, D = q8.shape
    out = torch.zeros(N, H, D, dtype=torch.int64)
    if N == 0:
        return out
    tok = _tokens(cache, T, c)
    q8r, e = rotate_query(q8, c)
    order = torch.argsort(T, stable=True)
    Ts = T[order].tolist()
    W = min(c.recent, Ts[-1])
    start = 0
    while start < N:
        stop = start + 1
        while stop < N and (stop + 1 - start) * H * (Ts[stop] + W * (D + 1)) <= _PASS_ELEMS:
            stop += 1
        i = order[start:stop]
        out[i] = _decode_pass(q8r[i], e[i], C[i], lsh[i], T[i], tok, c)
        start = stop
    return out


def decode_float(q: torch.Tensor, cache: KV4Cache, T: int, config: KV4Config) -> DecodeResult:
    """Fixed-point decode of float queries q [H, D]: INT8 query, (C, lsh) per head."""
    q8, s_q = quantize_query(q)
    Cs, ls = zip(*(logit_multiplier(float(s), cache.frac_k, config) for s in s_q))
    return kv4_decode(q8, list(Cs), list(ls), cache, T, config)


# --------------------------------------------------------------------------- float refs
def float_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in float64; q [H, D], k and v [T, D]."""
    q, k, v = q.double(), k.double(), v.double()
    a = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
    return a @ v


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-300))
