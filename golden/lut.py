"""Golden model of the LUT-based mpGEMM block (DESIGN §3.4): pure PyTorch,
integer-exact, with the table and the accumulation exposed as separate stages
so that a mismatch names the stage that is wrong.

Numbers (the team contract, as golden.mixpe):
  a  [M, K]  int8 activations;   q [N, K] codes in [0, 2**bits - 1]
  s2, z [N, K/group] integer scale / zero point (z*s2 < 2**SCALE_BITS)
  acc[m, n] = sum_k a[m, k] * (q[n, k] - z) * s2     (int32, wrapping)

Stages:
  1. table     For every 4 activations a0..a3 of a row (a "chunk" c), the sums
               T[idx] = sum_l (bit l of idx ? +a_l : -a_l), idx in 0..15.
               Symmetry T[~idx] = -T[idx]: only E[e] = T[8 + e], e in 0..7 (the
               entries with a3 taken positive) are stored (`symmetric_table`).
  2. indices   Plane i of the 4 codes of a chunk forms idx (bit t = bit i of
               the code at k = 4c + t) (`bit_plane_indices`).
  3. lookup    T[idx] = idx[3] ? E[idx & 7] : -E[~idx & 7] (`table_lookup`).
  4. accumulate  Odd-code identity: q' = 2q - L = sum_i 2**i t_i with
               t_i = 2 q_i - 1 in {-1, +1}, L = 2**bits - 1, so per group j
                 Q'[m,n,j] = sum_i 2**i sum_{c in j} T_c[idx_i]   (= sum a q')
                 P = (Q' + L * A) / 2   (exact: Q' + L*A = 2 sum a q is even)
               with A[m,j] = sum_{k in j} a = sum_c E_c[7] (`lut_group_sums`).
  5. dequantize as MixPE (§3.3): acc = sum_j s2 * P - (z*s2) * A  (`lut_acc`).
P equals golden.mixpe.mixpe_group_sums' P, and acc equals mixpe_acc, for the
same quantized weights; tests/test_golden_lut.py holds both.

Ternary (BitNet b1.58): w in {-1, 0, 1} as 2-bit codes q = w + 1 with z = 1,
i.e. the W2 datapath (2 planes); only the code/zero-point checks differ.

Imports no amaranth and no package of ours except golden.
"""
from __future__ import annotations

import torch

from golden.formats import ACT_MAX, ACT_MIN, SCALE_BITS, SCALE_MAX
from golden.lut_config import LUT_K_CHUNK, LUT_STORED_ENTRIES, LUTConfig, LUTMode
from golden.tensors import check_dims, check_range, check_shape, int_tensor, wrap_int32
from golden.validate import check_int, expect_type

__all__ = ["odd_code", "full_table", "symmetric_table", "bit_plane_indices",
           "table_lookup", "lut_plane_sums", "lut_group_sums", "lut_acc"]


def _chunked(name: str, x, what: str) -> torch.Tensor:
    """x as int64 [rows, K] with K a whole number of 4-activation chunks."""
    x = int_tensor(name, x)
    check_dims(name, x, 2, what)
    if x.shape[1] % LUT_K_CHUNK:
        raise ValueError(f"{name} has K={x.shape[1]}, not a multiple of {LUT_K_CHUNK}; pad "
                         f"K with zeros to a multiple of {LUT_K_CHUNK}")
    return x


def _act(a) -> torch.Tensor:
    a = _chunked("a", a, "[M, K]")
    check_range("a", a, ACT_MIN, ACT_MAX, "activations are int8")
    return a


def _codes(q, mode: LUTMode) -> torch.Tensor:
    q = _chunked("q", q, "[N, K]")
    why = ("ternary codes are w + 1 in {0, 1, 2}" if mode.ternary
           else f"{mode.bits}-bit unsigned codes")
    check_range("q", q, 0, mode.max_code, why)
    return q


def odd_code(q: torch.Tensor, mode: LUTMode) -> torch.Tensor:
    """q' = 2q - (2**bits - 1), the odd symmetric code (int64)."""
    mode = expect_type("mode", mode, LUTMode)
    return 2 * _codes(q, mode) - mode.levels


# --------------------------------------------------------------------------- 1. table
def _signs(idx: torch.Tensor) -> torch.Tensor:
    """[..., 4] of +-1: bit l of idx set -> +1."""
    bits = (idx.unsqueeze(-1) >> torch.arange(LUT_K_CHUNK)) & 1
    return 2 * bits - 1


def full_table(a: torch.Tensor) -> torch.Tensor:
    """All 16 sums T[m, c, idx] = sum_l (bit l of idx ? +a : -a)[m, 4c + l]
    (int64 [M, K/4, 16]), computed directly (the reference for the symmetry)."""
    a = _act(a)
    M, K = a.shape
    chunks = a.reshape(M, K // LUT_K_CHUNK, LUT_K_CHUNK)
    signs = _signs(torch.arange(1 << LUT_K_CHUNK))  # [16, 4]
    return torch.einsum("mcl,il->mci", chunks, signs)


def symmetric_table(a: torch.Tensor) -> torch.Tensor:
    """The 8 stored entries E[m, c, e] = T[8 + e] (a3 positive), int64 [M, K/4, 8].
    These are what the hardware's table register holds."""
    a = _act(a)
    M, K = a.shape
    chunks = a.reshape(M, K // LUT_K_CHUNK, LUT_K_CHUNK)
    signs = _signs(torch.arange(LUT_STORED_ENTRIES) + LUT_STORED_ENTRIES)  # [8, 4]
    return torch.einsum("mcl,el->mce", chunks, signs)


# --------------------------------------------------------------------------- 2./3.
def bit_plane_indices(q: torch.Tensor, mode: LUTMode) -> torch.Tensor:
    """idx[i, n, c] = sum_t ((q[n, 4c + t] >> i) & 1) << t, int64 [planes, N, K/4]."""
    mode = expect_type("mode", mode, LUTMode)
    q = _codes(q, mode)
    N, K = q.shape
    chunks = q.reshape(N, K // LUT_K_CHUNK, LUT_K_CHUNK)
    weights = 1 << torch.arange(LUT_K_CHUNK)
    return torch.stack([(((chunks >> i) & 1) * weights).sum(-1)
                        for i in range(mode.planes)])


def table_lookup(stored: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """T[idx] through the symmetry: idx[3] ? E[idx & 7] : -E[~idx & 7].
    stored [M, C, 8], idx [N, C] (values 0..15) -> int64 [M, N, C]."""
    stored = int_tensor("stored", stored)
    idx = int_tensor("idx", idx)
    check_dims("stored", stored, 3, "[M, K/4, 8]")
    check_dims("idx", idx, 2, "[N, K/4]")
    if stored.shape[2] != LUT_STORED_ENTRIES or stored.shape[1] != idx.shape[1]:
        raise ValueError(f"stored {list(stored.shape)} and idx {list(idx.shape)} disagree: "
                         f"need [M, C, {LUT_STORED_ENTRIES}] and [N, C]")
    check_range("idx", idx, 0, (1 << LUT_K_CHUNK) - 1, "4-bit table index")
    top = (idx >> (LUT_K_CHUNK - 1)) & 1
    low = idx & (LUT_STORED_ENTRIES - 1)
    sel = torch.where(top == 1, low, (LUT_STORED_ENTRIES - 1) - low)  # ~idx & 7
    M, C, _ = stored.shape
    N = idx.shape[0]
    gathered = torch.gather(stored.unsqueeze(1).expand(M, N, C, LUT_STORED_ENTRIES), 3,
                            sel.unsqueeze(0).expand(M, N, C).unsqueeze(-1)).squeeze(-1)
    return torch.where(top.unsqueeze(0) == 1, gathered, -gathered)


# --------------------------------------------------------------------------- 4. accumulate
def lut_plane_sums(a: torch.Tensor, q: torch.Tensor, mode: LUTMode, group: int) -> torch.Tensor:
    """R[i, m, n, j] = sum_{chunks c of group j} T_c[idx_i]  (= sum_k a * t_i),
    int64 [planes, M, N, K/group]: the per-plane table accumulation."""
    mode = expect_type("mode", mode, LUTMode)
    a = _act(a)
    q = _codes(q, mode)
    if a.shape[1] != q.shape[1]:
        raise ValueError(f"a {list(a.shape)} and q {list(q.shape)} disagree on K")
    K = a.shape[1]
    check_int("group", group, 1)
    if group % LUT_K_CHUNK or K % group:
        raise ValueError(f"group={group!r} must be a positive multiple of {LUT_K_CHUNK} "
                         f"dividing K={K}")
    stored = symmetric_table(a)
    idx = bit_plane_indices(q, mode)
    M, N, G = a.shape[0], q.shape[0], K // group
    per = group // LUT_K_CHUNK
    return torch.stack([table_lookup(stored, idx[i]).reshape(M, N, G, per).sum(-1)
                        for i in range(mode.planes)])


def lut_group_sums(a: torch.Tensor, q: torch.Tensor, config: LUTConfig,
                   mode: LUTMode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Qodd, P, A): Qodd [M, N, G] = sum_i 2**i R_i (= sum a*q'), P = (Qodd + L*A)/2
    (= sum a*q, as golden.mixpe.mixpe_group_sums' P), A [M, G] = sum of the
    table's all-positive entries E[7] over the group's chunks. All int64."""
    config = expect_type("config", config, LUTConfig)
    mode = expect_type("mode", mode, LUTMode)
    a = _act(a)
    if a.shape[1] != config.K:
        raise ValueError(f"a has K={a.shape[1]} but config.K={config.K}; build the config "
                         f"with K={a.shape[1]} or slice a")
    R = lut_plane_sums(a, q, mode, config.group)
    Qodd = sum((1 << i) * R[i] for i in range(mode.planes))
    stored = symmetric_table(a)
    M, G = a.shape[0], config.groups
    A = stored[:, :, LUT_STORED_ENTRIES - 1].reshape(M, G, config.group_chunks).sum(-1)
    twice = Qodd + mode.levels * A.unsqueeze(1)
    assert bool(((twice & 1) == 0).all()), "odd-code identity violated: Q' + L*A is odd"
    return Qodd, twice >> 1, A


# --------------------------------------------------------------------------- 5. dequantize
def _check_scales(s2, z, N: int, config: LUTConfig, mode: LUTMode):
    s2 = int_tensor("s2", s2)
    z = int_tensor("z", z)
    check_shape("s2", s2, (N, config.groups), "[N, K/group]")
    check_shape("z", z, (N, config.groups), "[N, K/group]")
    check_range("s2", s2, 1, SCALE_MAX, f"s2 is a non-zero {SCALE_BITS}-bit unsigned scale")
    if mode.ternary:
        check_range("z", z, 1, 1, "ternary codes q = w + 1 have zero point 1")
    else:
        check_range("z", z, 0, mode.levels, f"zero point is a {mode.bits}-bit code")
    check_range("z*s2", z * s2, 0, SCALE_MAX,
                f"z*s2 is stored in {SCALE_BITS} bits of the scale word")
    return s2, z


def lut_acc(a: torch.Tensor, q: torch.Tensor, s2: torch.Tensor, z: torch.Tensor, config: LUTConfig,
            mode: LUTMode) -> torch.Tensor:
    """acc [M, N] int32 = wrap32( sum_j s2[n,j] * P[m,n,j] - (z*s2)[n,j] * A[m,j] ),
    P and A from the table path (`lut_group_sums`)."""
    config = expect_type("config", config, LUTConfig)
    mode = expect_type("mode", mode, LUTMode)
    q = _codes(q, mode)
    s2, z = _check_scales(s2, z, q.shape[0], config, mode)
    _, P, A = lut_group_sums(a, q, config, mode)
    acc = (s2.unsqueeze(0) * P).sum(dim=2) - A @ (z * s2).T
    return wrap_int32(acc)
