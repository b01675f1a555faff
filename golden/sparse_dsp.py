"""Golden model of the sparse DSP chain (DESIGN §3.5): pure PyTorch, integer-exact.

Compressed N:M weights (FlightLLM): every block of M consecutive k of a weight
row keeps N values; a row of K dense weights is stored as K*N/M kept `values`
(in k order) and `indices` [0, M) giving each value's position in its block
(strictly increasing inside a block). Dense is the 1:1 pattern (index 0).

One tile of the chain (config: L stages in DSP groups of group_len; mode: pattern
N:M, W8A8/W4A8, span) computes `S = n_groups / span` output rows at once, one per
segment of seg_len = group_len * span stages. Beat b feeds the activation window
a[b*W : (b+1)*W], W = seg_len * M/N, and to stage j of segment s the kept value
b*seg_len + j of row s; that stage multiplies it by the activation at
window[(j // N) * M + index] (the sparse multiplexer). Each DSP group sums its
group_len products through its cascade; the reduction node at each group end
adds the previous group's sum when it passes (not the first group of a segment)
and the segment's last node emits the beat sum. Beat sums accumulate per W4A8
quantization group; W4A8 multiplies (q - z) in the stages (zero point in the DSP
pre-adder) and the group sum by s2 once per group (DESIGN §3.3's per-group
dequantization):
    acc[m, r] = sum_j s2[r, j] * sum_{kept k in group j} a[m, k] * (q[r, k] - z[r, j])
which equals golden.mixpe.mixpe_acc on the dense codes with q = z at pruned k.
W8A8: acc[m, r] = sum_kept a[m, k] * w[r, k]. The hardware accumulates in 48
bits; the result is wrapped to int32 (two's complement) as every quattro block.

Imports no amaranth and nothing of ours outside golden.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from golden.formats import ACT_MAX, ACT_MIN, SCALE_BITS, SCALE_MAX
from golden.sparse_dsp_config import W4_BITS, SparseDSPConfig, TileMode, parse_pattern
from golden.tensors import check_dims, check_range, check_shape, int_tensor, wrap_int32
from golden.validate import check_int, expect_type

__all__ = ["check_compressed", "expand", "compress_dense", "kept_k", "stage_weights",
           "ChainStages", "chain_stages", "sparse_dsp_acc", "dense_weights"]

_W4_MAX = (1 << W4_BITS) - 1


def check_compressed(values: torch.Tensor, indices: torch.Tensor, pattern: str | tuple[int, int],
                     K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a compressed N:M tensor: values/indices [R, K*N/M], M divides K,
    indices in [0, M), strictly increasing (sorted and unique) inside each block
    of N (so no block holds more than N values). Returns int64 tensors."""
    n, m = parse_pattern(pattern)
    check_int("K", K, 1)
    if K % m:
        raise ValueError(f"pattern {n}:{m}: M={m} does not divide K={K}; pad K to a "
                         f"multiple of {m} or choose a pattern whose M divides K")
    values = int_tensor("values", values)
    indices = int_tensor("indices", indices)
    check_dims("values", values, 2, "[R, K*N/M]")
    check_dims("indices", indices, 2, "[R, K*N/M]")
    kept = K // m * n
    if values.shape[1] != kept or indices.shape != values.shape:
        raise ValueError(f"values {list(values.shape)} and indices {list(indices.shape)} "
                         f"must both be [R, K*N/M] = [R, {kept}] for K={K}, pattern {n}:{m}")
    check_range("indices", indices, 0, m - 1, f"an index addresses a block of M={m}")
    if n > 1 and indices.numel():
        blk = indices.reshape(indices.shape[0], -1, n)
        bad = blk[:, :, 1:] <= blk[:, :, :-1]
        if bool(bad.any()):
            r, b, i = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"indices of row {r}, block {b} are {blk[r, b].tolist()}: indices must be "
                f"strictly increasing inside a block (duplicates would put more than "
                f"{n} values in one block of {m}); re-run quantflow's N:M compression")
    return values, indices


def kept_k(indices: torch.Tensor, pattern: str | tuple[int, int], K: int) -> torch.Tensor:
    """Dense position k of every kept value [R, K*N/M] (indices already checked)."""
    n, m = parse_pattern(pattern)
    indices = int_tensor("indices", indices)
    c = torch.arange(indices.shape[1], dtype=torch.int64)
    return (c // n * m).unsqueeze(0) + indices


def expand(values: torch.Tensor, indices: torch.Tensor, pattern: str | tuple[int, int], K: int, *,
           fill: int | torch.Tensor = 0) -> torch.Tensor:
    """Dense [R, K] int64 tensor: kept values scattered to their k, `fill`
    elsewhere (an int, or an [R, K] tensor giving the pruned entries)."""
    values, indices = check_compressed(values, indices, pattern, K)
    R = values.shape[0]
    if isinstance(fill, torch.Tensor):
        out = int_tensor("fill", fill).clone()
        if tuple(out.shape) != (R, K):
            raise ValueError(f"fill must have shape [{R}, {K}], got {list(out.shape)}")
    else:
        out = torch.full((R, K), int(fill), dtype=torch.int64)
    out.scatter_(1, kept_k(indices, pattern, K), values)
    return out


def compress_dense(w: torch.Tensor,
                   pattern: str | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of expand for a dense [R, K] tensor that has at most N non-zeros
    per block (exactly N kept: zeros are kept at the lowest free positions).
    The pruning itself (choosing what to keep) is quantflow.prune's business."""
    n, m = parse_pattern(pattern)
    w = int_tensor("w", w)
    check_dims("w", w, 2, "[R, K]")
    R, K = w.shape
    if K % m:
        raise ValueError(f"pattern {n}:{m}: M={m} does not divide K={K}")
    blk = w.reshape(R, K // m, m)
    nz = (blk != 0).sum(-1)
    if bool((nz > n).any()):
        r, b = (int(x) for x in (nz > n).nonzero()[0])
        raise ValueError(f"row {r}, block {b} has {int(nz[r, b])} non-zeros, more than "
                         f"N={n} for pattern {n}:{m}; prune it first (quantflow.prune)")
    # non-zeros first (stable), then zeros, keep N, then sort the N indices
    key = (blk == 0).to(torch.int64) * m + torch.arange(m)
    idx = key.argsort(dim=-1)[..., :n].sort(dim=-1).values
    vals = blk.gather(-1, idx)
    return vals.reshape(R, -1), idx.reshape(R, -1)


def _check_quant(values, s2, z, config: SparseDSPConfig, mode: TileMode, R: int):
    if mode.w4:
        check_range("values", values, 0, _W4_MAX, f"W4A8 values are {W4_BITS}-bit codes")
        if s2 is None or z is None:
            raise ValueError("W4A8 needs s2 and z [R, K/qgroup]")
        s2 = int_tensor("s2", s2)
        z = int_tensor("z", z)
        want = (R, config.K // config.qgroup)
        for name, t in (("s2", s2), ("z", z)):
            check_shape(name, t, want, "[R, K/qgroup]")
        check_range("s2", s2, 1, SCALE_MAX, f"{SCALE_BITS}-bit non-zero scale")
        check_range("z", z, 0, _W4_MAX, f"zero point is a {W4_BITS}-bit code")
        return s2, z
    check_range("values", values, ACT_MIN, ACT_MAX, "W8A8 values are int8")
    return None, None


def stage_weights(values: torch.Tensor, indices: torch.Tensor, *, config: SparseDSPConfig,
                  mode: TileMode, z: torch.Tensor | None = None) -> torch.Tensor:
    """The B operand of every stage: W8A8 the int8 value, W4A8 q - z of the kept
    value's quantization group (the DSP pre-adder). [R, K*N/M] int64."""
    values, indices = check_compressed(values, indices, mode.nm, config.K)
    if not mode.w4:
        return values
    z = int_tensor("z", z)
    qg = kept_k(indices, mode.nm, config.K) // config.qgroup
    return values - z.gather(1, qg)


@dataclass(frozen=True)
class ChainStages:
    """Intermediate sums of a whole workload, for locating a mismatch.
    a [Ma, K] against R rows; T = R / segments row tiles; B beats per tile.
      group_sums [Ma, R, B, span]  each DSP group's cascade output per beat
      beat_sums  [Ma, R, B]        what the segment's emitting reduction node sees
      qgroup_sums[Ma, R, Q]        per quantization group (W8A8: Q = 1, whole tile)
      acc        [Ma, R] int32     wrap32(sum_j s2 * qgroup_sums) (W8A8: s2 = 1)
    """
    group_sums: torch.Tensor
    beat_sums: torch.Tensor
    qgroup_sums: torch.Tensor
    acc: torch.Tensor


def chain_stages(a: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, *,
                 config: SparseDSPConfig, mode: TileMode, s2: torch.Tensor | None = None,
                 z: torch.Tensor | None = None) -> ChainStages:
    """The chain's arithmetic, stage by stage (see the module docstring)."""
    expect_type("config", config, SparseDSPConfig)
    expect_type("mode", mode, TileMode)
    mode.check(config)
    a = int_tensor("a", a)
    check_dims("a", a, 2, "[Ma, K]")
    K = config.K
    if a.shape[1] != K:
        raise ValueError(f"a has K={a.shape[1]} but config.K={K}")
    check_range("a", a, ACT_MIN, ACT_MAX, "activations are int8")
    values, indices = check_compressed(values, indices, mode.nm, K)
    R = values.shape[0]
    S = mode.segments(config)
    if R % S:
        raise ValueError(f"R={R} rows do not fill whole tiles of {S} segments (span="
                         f"{mode.span}); pad the rows to a multiple of {S}")
    s2, z = _check_quant(values, s2, z, config, mode, R)
    bw = stage_weights(values, indices, config=config, mode=mode, z=z)      # [R, C]
    k = kept_k(indices, mode.nm, K)                                       # [R, C]
    prod = a[:, k] * bw.unsqueeze(0)                                      # [Ma, R, C]
    Ma = a.shape[0]
    B = mode.beats(config)
    group_sums = prod.reshape(Ma, R, B, mode.span, config.group_len).sum(-1)
    beat_sums = group_sums.sum(-1)
    qb = mode.qgroup_beats(config)
    qgroup_sums = beat_sums.reshape(Ma, R, B // qb, qb).sum(-1)
    if mode.w4:
        total = (qgroup_sums * s2.unsqueeze(0)).sum(-1)
    else:
        total = qgroup_sums.sum(-1)
    return ChainStages(group_sums, beat_sums, qgroup_sums, wrap_int32(total))


def sparse_dsp_acc(a: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, *,
                   config: SparseDSPConfig, mode: TileMode, s2: torch.Tensor | None = None,
                   z: torch.Tensor | None = None) -> torch.Tensor:
    """acc [Ma, R] int32 of the chain (module docstring)."""
    return chain_stages(a, values, indices, config=config, mode=mode, s2=s2, z=z).acc


def dense_weights(values: torch.Tensor, indices: torch.Tensor, *, config: SparseDSPConfig,
                  mode: TileMode, s2: torch.Tensor | None = None,
                  z: torch.Tensor | None = None) -> torch.Tensor:
    """The dense integer weights the chain multiplies by, [R, K] int64:
    W8A8 the int8 weights with 0 at pruned k; W4A8 w8 = (q - z) * s2 with q = z
    (so w8 = 0) at pruned k. golden.mixpe.reference_acc(a, dense) == acc."""
    values, indices = check_compressed(values, indices, mode.nm, config.K)
    s2, z = _check_quant(values, s2, z, config, mode, values.shape[0])
    if not mode.w4:
        return expand(values, indices, mode.nm, config.K)
    zd = z.repeat_interleave(config.qgroup, dim=1)
    q = expand(values, indices, mode.nm, config.K, fill=zd)
    return (q - zd) * s2.repeat_interleave(config.qgroup, dim=1)
