"""N:M structured pruning along K (DESIGN §3.5; FlightLLM's sparse DSP chain).

Every block of M consecutive k of a weight row keeps exactly N entries:
  * magnitude: the N largest |W|;
  * Wanda (Sun et al. 2023): the N largest |W[n, k]| * ||X[:, k]||_2, with X the
    calibration activations [T, K] that feed the layer (activation-aware).
Ties go to the lower k (stable sort), so results are deterministic.

`compress(w, mask, pattern)` turns a dense tensor and its mask into the chain's
compressed format: values [R, K*N/M] in k order and indices [R, K*N/M] in
[0, M), strictly increasing inside each block (golden.sparse_dsp.check_compressed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from golden.sparse_dsp_config import parse_pattern

from ._check import as_float_tensor
from .errors import QuantflowError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["nm_mask", "check_nm_mask", "prune_magnitude", "wanda_score", "prune_wanda",
           "compress", "prune"]


def _pattern(pattern) -> tuple[int, int]:
    try:
        return parse_pattern(pattern)
    except ValueError as e:
        raise QuantflowError(str(e)) from None


def _check_k(K: int, n: int, m: int) -> None:
    if K % m:
        raise QuantflowError(f"pattern {n}:{m}: M={m} does not divide K={K}; pad the "
                             f"input features to a multiple of {m} or choose a pattern "
                             f"whose M divides K")


def nm_mask(score: torch.Tensor, pattern: str | tuple[int, int]) -> torch.Tensor:
    """Boolean [R, K] mask keeping the N highest scores of every block of M."""
    n, m = _pattern(pattern)
    score = as_float_tensor("score", score, 2, "[R, K]")
    R, K = score.shape
    _check_k(K, n, m)
    blk = score.reshape(R, K // m, m)
    order = torch.argsort(-blk, dim=-1, stable=True)[..., :n]
    mask = torch.zeros_like(blk, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(R, K)


def check_nm_mask(mask: torch.Tensor, pattern: str | tuple[int, int]) -> None:
    """Exactly N kept in every block of M (raises QuantflowError otherwise)."""
    n, m = _pattern(pattern)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise QuantflowError("mask must be a 2-D boolean torch tensor [R, K]")
    R, K = mask.shape
    _check_k(K, n, m)
    cnt = mask.reshape(R, K // m, m).sum(-1)
    bad = cnt != n
    if bool(bad.any()):
        r, b = (int(x) for x in bad.nonzero()[0])
        raise QuantflowError(f"row {r}, block {b} keeps {int(cnt[r, b])} weights, pattern "
                             f"{n}:{m} needs exactly {n}; build the mask with nm_mask()")


def prune_magnitude(W: torch.Tensor | np.ndarray,
                    pattern: str | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W with pruned entries set to 0, mask) keeping the N largest |W| per block."""
    W = as_float_tensor("W", W, 2, "[N_out, K]")
    mask = nm_mask(W.abs(), pattern)
    return W * mask, mask


def wanda_score(W: torch.Tensor | np.ndarray, X: torch.Tensor | np.ndarray) -> torch.Tensor:
    """|W[n, k]| * ||X[:, k]||_2 over the calibration tokens X [T, K]."""
    W = as_float_tensor("W", W, 2, "[N_out, K]")
    X = as_float_tensor("X", X, 2, "[T, K] calibration activations")
    if X.shape[1] != W.shape[1]:
        raise QuantflowError(f"calibration X {list(X.shape)} and W {list(W.shape)} disagree "
                             f"on K; capture the activations that feed this layer")
    if X.shape[0] < 1:
        raise QuantflowError("calibration X has no tokens; pass at least one row")
    norm = X.to(torch.float64).pow(2).sum(0).sqrt().to(torch.float32)
    return W.abs() * norm.unsqueeze(0)


def prune_wanda(W: torch.Tensor | np.ndarray, X: torch.Tensor | np.ndarray,
                pattern: str | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W pruned, mask) keeping the N largest Wanda scores per block."""
    W = as_float_tensor("W", W, 2, "[N_out, K]")
    mask = nm_mask(wanda_score(W, X), pattern)
    return W * mask, mask


def prune(W: torch.Tensor | np.ndarray, pattern: str | tuple[int, int], *,
          method: str = "magnitude",
          X: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: method 'magnitude' or 'wanda' (needs calibration X)."""
    if method == "magnitude":
        return prune_magnitude(W, pattern)
    if method == "wanda":
        if X is None:
            raise QuantflowError("method='wanda' needs calibration activations X [T, K]")
        return prune_wanda(W, X, pattern)
    raise QuantflowError(f"unknown pruning method {method!r}; use 'magnitude' or 'wanda'")


def compress(w: torch.Tensor, mask: torch.Tensor,
             pattern: str | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of a dense [R, K] tensor under an N:M mask: values keep
    w's dtype, indices int64 in [0, M), sorted inside each block."""
    n, m = _pattern(pattern)
    check_nm_mask(mask, pattern)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(mask.shape):
        raise QuantflowError(f"w must be a tensor shaped like mask {list(mask.shape)}")
    R, K = w.shape
    blk = mask.reshape(R, K // m, m)
    # kept positions first, each group in k order (stable sort of "not kept")
    idx = torch.argsort((~blk).to(torch.int8), dim=-1, stable=True)[..., :n]
    vals = w.reshape(R, K // m, m).gather(-1, idx)
    return vals.reshape(R, -1), idx.reshape(R, -1).to(torch.int64)
