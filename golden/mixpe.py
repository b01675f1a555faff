"""Golden model of MixPE (DESIGN §3.2/§3.3): pure PyTorch, integer-exact.

This is the executable specification the RTL is compared against bit for bit.
All integer arithmetic is done in int64 (no overflow is possible for the K
that `MixPEConfig` admits) and the accumulator is then wrapped to int32 two's
complement, exactly as the hardware's 32-bit adders do.

Names follow the team contract:
  a  [M, K]     activations, int8 range [-128, 127] (quantflow emits [-127, 127])
  q  [N, K]     unsigned weight codes in [0, levels], levels = 2**bits - 1
  s2 [N, G]     integer per-group scale, 1 <= s2 < 2**SCALE_BITS
  z  [N, G]     integer zero point in [0, levels], with z*s2 < 2**SCALE_BITS
  w8 = (q - z) * s2,  acc[m, n] = sum_k a[m, k] * w8[n, k]   (int32, wrapping)
MixPE's form:  acc = sum_j ( s2[n,j] * P[m,n,j] - zs2[n,j] * A[m,j] ),
  P[m,n,j] = sum_{k in group j} a[m,k] * q[n,k]   (shift-add, no multiplier)
  A[m,j]   = sum_{k in group j} a[m,k]            (shared by all columns n)
Float reference: y[m, n] = (acc[m, n] * s1[n]) * s_a[m] in float32.

Imports no amaranth and no other package of ours except golden.config.
"""
from __future__ import annotations

import torch

from golden.formats import ACC_BITS, ACT_BITS, SCALE_BITS, ACT_MIN, ACT_MAX

from golden.mixpe_config import MixPEConfig

__all__ = [
    "shift_add_product",
    "dequant_w8",
    "mixpe_group_sums",
    "mixpe_acc",
    "reference_acc",
    "float_reference",
    "wrap_int32",
]

_SCALE_MAX = (1 << SCALE_BITS) - 1


# --------------------------------------------------------------------------- checks
def _int_tensor(name: str, x) -> torch.Tensor:
    """Accept a torch tensor or numpy array of an integer dtype; return int64."""
    if not isinstance(x, torch.Tensor):
        try:
            import numpy as np  # numpy arrays are what quantflow's .npy files hold
        except ImportError:  # pragma: no cover - numpy is a dependency
            np = None
        if np is not None and isinstance(x, np.ndarray):
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"{name} must hold integers, got numpy dtype {x.dtype}; "
                                 f"quantize it first (quantflow)")
            x = torch.from_numpy(x.astype(np.int64))
        else:
            raise ValueError(f"{name} must be a torch.Tensor of integers, got "
                             f"{type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name} must have an integer dtype, got {x.dtype}; quantize it "
                         f"first (quantflow) or cast with .to(torch.int64)")
    return x.to(torch.int64)


def _check_range(name: str, x: torch.Tensor, lo: int, hi: int, why: str) -> None:
    if x.numel() == 0:
        return
    bad = (x < lo) | (x > hi)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(idx)} = {int(x[idx])} is outside [{lo}, {hi}] "
                         f"({why})")


def _check_dims(name: str, x: torch.Tensor, dims: int, what: str) -> None:
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {what}, got shape {tuple(x.shape)}")


def _check_config(config) -> MixPEConfig:
    if not isinstance(config, MixPEConfig):
        raise ValueError(f"config must be a golden.config.MixPEConfig, got "
                         f"{type(config).__name__}")
    return config


def _check_operands(a, q, s2, z, config: MixPEConfig):
    config = _check_config(config)
    a = _int_tensor("a", a)
    q = _int_tensor("q", q)
    s2 = _int_tensor("s2", s2)
    z = _int_tensor("z", z)
    _check_dims("a", a, 2, "[M, K]")
    _check_dims("q", q, 2, "[N, K]")
    _check_dims("s2", s2, 2, "[N, K/group]")
    _check_dims("z", z, 2, "[N, K/group]")
    K = config.K
    if a.shape[1] != K:
        raise ValueError(f"a has K={a.shape[1]} but config.K={K}; build the config with "
                         f"K={a.shape[1]} or slice a")
    if q.shape[1] != K:
        raise ValueError(f"q has K={q.shape[1]} but config.K={K}; build the config with "
                         f"K={q.shape[1]} or slice q")
    N = q.shape[0]
    want = (N, config.groups)
    for name, t in (("s2", s2), ("z", z)):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape [N, K/group] = {list(want)}, got "
                             f"{list(t.shape)}")
    _check_range("a", a, ACT_MIN, ACT_MAX, "activations are int8")
    _check_range("q", q, 0, config.levels, f"{config.bits}-bit unsigned codes")
    _check_range("s2", s2, 1, _SCALE_MAX, f"s2 is a non-zero {SCALE_BITS}-bit unsigned scale")
    _check_range("z", z, 0, config.levels, f"zero point is a {config.bits}-bit code")
    _check_range("z*s2", z * s2, 0, _SCALE_MAX,
                 f"z*s2 is stored in {SCALE_BITS} bits of the scale word")
    return a, q, s2, z


# --------------------------------------------------------------------------- model
def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement wrap of an integer tensor to ACC_BITS (=32) bits -> int32."""
    x = x.to(torch.int64)
    half = 1 << (ACC_BITS - 1)
    return (((x + half) & ((1 << ACC_BITS) - 1)) - half).to(torch.int32)


def shift_add_product(a, q, bits: int) -> torch.Tensor:
    """Elementwise a*q computed as sum_i q_i * (a << i) over the `bits` bits q_i of
    the unsigned code q: the PE's multiplier-free datapath. Broadcasts; int64 result.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    a = _int_tensor("a", a)
    q = _int_tensor("q", q)
    _check_range("q", q, 0, (1 << bits) - 1, f"{bits}-bit unsigned codes")
    out = torch.zeros(torch.broadcast_shapes(a.shape, q.shape), dtype=torch.int64)
    for i in range(bits):
        q_i = (q >> i) & 1
        out = out + q_i * torch.bitwise_left_shift(a, i)
    return out


def dequant_w8(q, s2, z, group: int) -> torch.Tensor:
    """Integer reconstruction w8 = (q - z) * s2 with s2, z expanded over each group
    of `group` consecutive k. q [N, K], s2/z [N, K/group] -> int64 [N, K]."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be a positive int, got {group!r}")
    q = _int_tensor("q", q)
    s2 = _int_tensor("s2", s2)
    z = _int_tensor("z", z)
    _check_dims("q", q, 2, "[N, K]")
    N, K = q.shape
    if K % group:
        raise ValueError(f"K={K} is not a multiple of group={group}; choose a group that "
                         f"divides K")
    for name, t in (("s2", s2), ("z", z)):
        if tuple(t.shape) != (N, K // group):
            raise ValueError(f"{name} must have shape [N, K/group] = {[N, K // group]}, "
                             f"got {list(t.shape)}")
    return (q - z.repeat_interleave(group, dim=1)) * s2.repeat_interleave(group, dim=1)


def mixpe_group_sums(a, q, config: MixPEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group partial sums, for localising a mismatch:
    P [M, N, G] = sum_{k in group} a*q  (built from the bit planes of q: the
    shift-add form, sum_i 2**i * sum_k a * q_i), A [M, G] = sum_{k in group} a.
    Both int64 (no wrap; the hardware's group registers are wide enough)."""
    config = _check_config(config)
    a = _int_tensor("a", a)
    q = _int_tensor("q", q)
    _check_dims("a", a, 2, "[M, K]")
    _check_dims("q", q, 2, "[N, K]")
    if a.shape[1] != config.K or q.shape[1] != config.K:
        raise ValueError(f"a and q must have K=config.K={config.K}, got a {list(a.shape)}, "
                         f"q {list(q.shape)}")
    _check_range("a", a, ACT_MIN, ACT_MAX, "activations are int8")
    _check_range("q", q, 0, config.levels, f"{config.bits}-bit unsigned codes")
    M, N, G, g = a.shape[0], q.shape[0], config.groups, config.group
    ag = a.reshape(M, G, g)
    qg = q.reshape(N, G, g)
    P = torch.zeros((M, N, G), dtype=torch.int64)
    for i in range(config.bits):
        plane = (qg >> i) & 1  # q_i: the i-th bit of every code
        P += torch.einsum("mjk,njk->mnj", torch.bitwise_left_shift(ag, i), plane)
    A = ag.sum(dim=2)
    return P, A


def mixpe_acc(a, q, s2, z, config: MixPEConfig) -> torch.Tensor:
    """acc [M, N] int32 = wrap32( sum_j s2[n,j]*P[m,n,j] - (z*s2)[n,j]*A[m,j] ).

    a [M, K] int8-range, q [N, K] in [0, levels], s2/z [N, K/group]; M and N are
    unrestricted (tiling is the driver's business); K must equal config.K.
    """
    a, q, s2, z = _check_operands(a, q, s2, z, config)
    P, A = mixpe_group_sums(a, q, config)
    zs2 = z * s2
    acc = (s2.unsqueeze(0) * P).sum(dim=2) - A @ zs2.T  # [M, N] int64
    return wrap_int32(acc)


def reference_acc(a, w8) -> torch.Tensor:
    """Plain integer GEMM acc [M, N] = a @ w8.T (int64, then wrapped to int32):
    DESIGN §3.2 step 4, against which mixpe_acc is proven."""
    a = _int_tensor("a", a)
    w8 = _int_tensor("w8", w8)
    _check_dims("a", a, 2, "[M, K]")
    _check_dims("w8", w8, 2, "[N, K]")
    if a.shape[1] != w8.shape[1]:
        raise ValueError(f"a {list(a.shape)} and w8 {list(w8.shape)} disagree on K")
    return wrap_int32(a @ w8.T)


def float_reference(acc, s1, s_a) -> torch.Tensor:
    """y [M, N] float32 = (acc[m, n] * s1[n]) * s_a[m], evaluated in float32 in that
    order (s1 is fp16 per output channel, s_a float per token)."""
    acc = _int_tensor("acc", acc)
    _check_dims("acc", acc, 2, "[M, N]")
    s1 = torch.as_tensor(s1)
    s_a = torch.as_tensor(s_a)
    M, N = acc.shape
    if tuple(s1.shape) != (N,):
        raise ValueError(f"s1 must have shape [N] = [{N}], got {list(s1.shape)}")
    if tuple(s_a.shape) != (M,):
        raise ValueError(f"s_a must have shape [M] = [{M}], got {list(s_a.shape)}")
    return (acc.to(torch.float32) * s1.to(torch.float32).unsqueeze(0)) \
        * s_a.to(torch.float32).unsqueeze(1)
