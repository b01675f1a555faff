"""Seeded synthetic operands with LLM-like outliers, for `make sim` and tests.
Deterministic for a given seed (torch CPU RNG)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from golden.validate import check_int

from .errors import QuantflowError

if TYPE_CHECKING:
    from .fakequant import QuantizedModel
    from .models import LlamaConfig, LlamaForCausalLM
    from .program import CompiledImage

__all__ = ["random_linear_weights", "random_activations", "small_llama_config", "token_ids",
           "random_llama", "random_llama_quantized", "compiled_image"]


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


# --------------------------------------------------------------------------- small Llamas
def small_llama_config(*, heads: int = 2, kv_heads: int = 1, hidden: int = 128,
                       intermediate: int = 192, layers: int = 2, vocab: int = 61) -> LlamaConfig:
    """A small Llama configuration (quantflow.models.LlamaConfig): `heads` query heads
    sharing `kv_heads` KV heads, head_dim = hidden / heads."""
    from .models import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, rope_theta=10000.0)


def token_ids(config: LlamaConfig, batch: int, length: int, *, seed: int) -> torch.Tensor:
    """Seeded random token ids [batch, length] of config's vocabulary."""
    return torch.randint(0, config.vocab_size, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def random_llama(config: LlamaConfig, *, seed: int = 0) -> LlamaForCausalLM:
    """A seeded random LlamaForCausalLM: weights ~N(0, 0.1), norm weights in [0.5, 1.5)."""
    from .models import LlamaForCausalLM
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
    return m


def random_llama_quantized(config: LlamaConfig, scheme: str, calib_ids: torch.Tensor, *,
                           seed: int = 0) -> QuantizedModel:
    """random_llama(config, seed) quantized with `scheme`, calibrated on calib_ids."""
    from .fakequant import quantize_model
    return quantize_model(random_llama(config, seed=seed), scheme, calib_ids=calib_ids,
                          progress=False)


def compiled_image(qm: QuantizedModel, calib_ids: torch.Tensor, outdir: Path | str, *,
                   context: int, name: str = "tiny") -> CompiledImage:
    """A quantized model compiled into the model image directory `outdir` (fracs
    calibrated on calib_ids), read back as quantflow.program.CompiledImage."""
    from .compile import compile_quantized
    from .program import CompiledImage
    compile_quantized(qm, calib_ids, outdir, context=context, model_name=name)
    return CompiledImage.from_dir(outdir)
