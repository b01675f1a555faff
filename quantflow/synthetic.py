"""Seeded synthetic operands with LLM-like outliers, for `make sim` and tests.
Deterministic for a given seed (torch CPU RNG)."""
from __future__ import annotations

import torch

from golden.validate import check_int

from .errors import QuantflowError

__all__ = ["random_linear_weights", "random_activations"]


def _pick(gen: torch.Generator, total: int, count: int, what: str) -> torch.Tensor:
    if count > total:
        raise QuantflowError(f"{what}={count} exceeds the {total} available; lower it")
    return torch.randperm(total, generator=gen)[:count]


def random_linear_weights(N: int, K: int, *, seed: int, outlier_channels: int = 2,
                          outlier_scale: float = 8.0) -> torch.Tensor:
    """float32 [N, K] ~ Normal(0, 1/K) (a Linear layer's scale), with
    `outlier_channels` output channels scaled by `outlier_scale`, and one large
    weight (4 sigma of its channel, signed) per channel so that every channel's
    max|W| is set by an outlier, as in trained LLMs."""
    N, K = check_int("N", N, 1), check_int("K", K, 1)
    check_int("seed", seed, 0)
    check_int("outlier_channels", outlier_channels, 0)
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn((N, K), generator=gen) / K ** 0.5
    spike = torch.randint(0, K, (N,), generator=gen)
    sign = torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0)
    W[torch.arange(N), spike] = sign * 4.0 / K ** 0.5
    W[_pick(gen, N, outlier_channels, "outlier_channels")] *= float(outlier_scale)
    return W


def random_activations(M: int, K: int, *, seed: int, outlier_features: int = 4,
                       outlier_scale: float = 20.0) -> torch.Tensor:
    """float32 [M, K] ~ Normal(0, 1) with `outlier_features` feature columns scaled
    by `outlier_scale` (the channel outliers SmoothQuant describes)."""
    M, K = check_int("M", M, 1), check_int("K", K, 1)
    check_int("seed", seed, 0)
    check_int("outlier_features", outlier_features, 0)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn((M, K), generator=gen)
    X[:, _pick(gen, K, outlier_features, "outlier_features")] *= float(outlier_scale)
    return X
