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

Imports no amaranth and no package of ours except golden.
"""
from __future__ import annotations

import torch

from golden.formats import ACT_MAX, ACT_MIN, SCALE_BITS, SCALE_MAX
from golden.mixpe_config import MixPEConfig
from golden.tensors import check_dims, check_range, check_shape, int_tensor, wrap_int32
from golden.validate import check_int, check_multiple, expect_type

__all__ = [
    "shift_add_product",
    "dequant_w8",
    "mixpe_group_sums",
    "mixpe_acc",
    "reference_acc",
    "float_reference",
]


# --------------------------------------------------------------------------- checks
def _check_k(name: str, x: torch.Tensor, K: int) -> None:
    if x.shape[1] != K:
        raise ValueError(f"{name} has K={x.shape[1]} but config.K={K}; build the config "
                         f"with K={x.shape[1]} or slice {name}")


def _check_codes(a, q, config: MixPEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """a [M, K] int8 and q [N, K] codes of `config`, as int64."""
    expect_type("config", config, MixPEConfig)
    a = int_tensor("a", a)
    q = int_tensor("q", q)
    check_dims("a", a, 2, "[M, K]")
    check_dims("q", q, 2, "[N, K]")
    _check_k("a", a, config.K)
    _check_k("q", q, config.K)
    check_range("a", a, ACT_MIN, ACT_MAX, "activations are int8")
    check_range("q", q, 0, config.levels, f"{config.bits}-bit unsigned codes")
    return a, q


def _check_scales(s2, z, N: int, config: MixPEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """s2, z [N, K/group] as the scale word holds them, as int64."""
    s2 = int_tensor("s2", s2)
    z = int_tensor("z", z)
    check_shape("s2", s2, (N, config.groups), "[N, K/group]")
    check_shape("z", z, (N, config.groups), "[N, K/group]")
    check_range("s2", s2, 1, SCALE_MAX, f"s2 is a non-zero {SCALE_BITS}-bit unsigned scale")
    check_range("z", z, 0, config.levels, f"zero point is a {config.bits}-bit code")
    check_range("z*s2", z * s2, 0, SCALE_MAX,
                f"z*s2 is stored in {SCALE_BITS} bits of the scale word")
    return s2, z


# --------------------------------------------------------------------------- model
def shift_add_product(a: torch.Tensor, q: torch.Tensor, bits: int) -> torch.Tensor:
    """Elementwise a*q computed as sum_i q_i * (a << i) over the `bits` bits q_i of
    the unsigned code q: the PE's multiplier-free datapath. Broadcasts; int64 result.
    """
    check_int("bits", bits, 1)
    a = int_tensor("a", a)
    q = int_tensor("q", q)
    check_range("q", q, 0, (1 << bits) - 1, f"{bits}-bit unsigned codes")
    out = torch.zeros(torch.broadcast_shapes(a.shape, q.shape), dtype=torch.int64)
    for i in range(bits):
        q_i = (q >> i) & 1
        out = out + q_i * torch.bitwise_left_shift(a, i)
    return out


def dequant_w8(q: torch.Tensor, s2: torch.Tensor, z: torch.Tensor, group: int) -> torch.Tensor:
    """Integer reconstruction w8 = (q - z) * s2 with s2, z expanded over each group
    of `group` consecutive k. q [N, K], s2/z [N, K/group] -> int64 [N, K]."""
    check_int("group", group, 1)
    q = int_tensor("q", q)
    s2 = int_tensor("s2", s2)
    z = int_tensor("z", z)
    check_dims("q", q, 2, "[N, K]")
    N, K = q.shape
    check_multiple("K", K, "group", group, hint="choose a group that divides K")
    check_shape("s2", s2, (N, K // group), "[N, K/group]")
    check_shape("z", z, (N, K // group), "[N, K/group]")
    return (q - z.repeat_interleave(group, dim=1)) * s2.repeat_interleave(group, dim=1)


def mixpe_group_sums(a: torch.Tensor, q: torch.Tensor,
                     config: MixPEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group partial sums, for localising a mismatch:
    P [M, N, G] = sum_{k in group} a*q  (built from the bit planes of q: the
    shift-add form, sum_i 2**i * sum_k a * q_i), A [M, G] = sum_{k in group} a.
    Both int64 (no wrap; the hardware's group registers are wide enough)."""
    a, q = _check_codes(a, q, config)
    M, N, G, g = a.shape[0], q.shape[0], config.groups, config.group
    ag = a.reshape(M, G, g)
    qg = q.reshape(N, G, g)
    P = torch.zeros((M, N, G), dtype=torch.int64)
    for i in range(config.bits):
        plane = (qg >> i) & 1  # q_i: the i-th bit of every code
        P += torch.einsum("mjk,njk->mnj", torch.bitwise_left_shift(ag, i), plane)
    A = ag.sum(dim=2)
    return P, A


def mixpe_acc(a: torch.Tensor, q: torch.Tensor, s2: torch.Tensor, z: torch.Tensor,
              config: MixPEConfig) -> torch.Tensor:
    """acc [M, N] int32 = wrap32( sum_j s2[n,j]*P[m,n,j] - (z*s2)[n,j]*A[m,j] ).

    a [M, K] int8-range, q [N, K] in [0, levels], s2/z [N, K/group]; M and N are
    unrestricted (tiling is the driver's business); K must equal config.K.
    """
    a, q = _check_codes(a, q, config)
    s2, z = _check_scales(s2, z, q.shape[0], config)
    P, A = mixpe_group_sums(a, q, config)
    zs2 = z * s2
    acc = (s2.unsqueeze(0) * P).sum(dim=2) - A @ zs2.T  # [M, N] int64
    return wrap_int32(acc)


def reference_acc(a: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """Plain integer GEMM acc [M, N] = a @ w8.T (int64, then wrapped to int32):
    DESIGN §3.2 step 4, against which mixpe_acc is proven."""
    a = int_tensor("a", a)
    w8 = int_tensor("w8", w8)
    check_dims("a", a, 2, "[M, K]")
    check_dims("w8", w8, 2, "[N, K]")
    if a.shape[1] != w8.shape[1]:
        raise ValueError(f"a {list(a.shape)} and w8 {list(w8.shape)} disagree on K")
    return wrap_int32(a @ w8.T)


def float_reference(acc: torch.Tensor, s1: torch.Tensor, s_a: torch.Tensor) -> torch.Tensor:
    """y [M, N] float32 = (acc[m, n] * s1[n]) * s_a[m], evaluated in float32 in that
    order (s1 is fp16 per output channel, s_a float per token)."""
    acc = int_tensor("acc", acc)
    check_dims("acc", acc, 2, "[M, N]")
    s1 = torch.as_tensor(s1)
    s_a = torch.as_tensor(s_a)
    M, N = acc.shape
    check_shape("s1", s1, (N,), "[N]")
    check_shape("s_a", s_a, (M,), "[M]")
    return (acc.to(torch.float32) * s1.to(torch.float32).unsqueeze(0)) \
        * s_a.to(torch.float32).unsqueeze(1)
