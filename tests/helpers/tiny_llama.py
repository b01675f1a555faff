"""A small random Llama (quantflow.models.llama) for the whole-model tests: weights
~N(0, 0.1), norm weights in [0.5, 1.5), seeded; its configuration, seeded token ids,
the quantized model and its compiled model image."""
from __future__ import annotations

import torch

from quantflow.models import LlamaConfig, LlamaForCausalLM


def tiny_config(*, heads: int = 2, kv_heads: int = 1) -> LlamaConfig:
    """Vocabulary 61, hidden 128, intermediate 192, two layers; `heads` query heads
    sharing `kv_heads` KV heads."""
    return LlamaConfig(vocab_size=61, hidden_size=128, intermediate_size=192,
                       num_hidden_layers=2, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, rope_theta=10000.0)


def token_ids(config: LlamaConfig, batch: int, length: int, *, seed: int) -> torch.Tensor:
    """Seeded random token ids [batch, length] of config's vocabulary."""
    return torch.randint(0, config.vocab_size, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def tiny_llama(config: LlamaConfig, *, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
    return m


def tiny_quantized(config: LlamaConfig, scheme: str, calib_ids: torch.Tensor, *,
                   seed: int = 0):
    """tiny_llama(config, seed) quantized with `scheme`, calibrated on calib_ids
    (quantflow.fakequant.quantize_model)."""
    from quantflow.fakequant import quantize_model
    return quantize_model(tiny_llama(config, seed=seed), scheme, calib_ids=calib_ids,
                          progress=False)


def tiny_image(qm, calib_ids: torch.Tensor, outdir, *, context: int):
    """`qm` compiled into the model image directory `outdir` (quantflow.compile, fracs
    calibrated on calib_ids), read back as quantflow.program.CompiledImage."""
    from quantflow.compile import compile_quantized
    from quantflow.program import CompiledImage
    compile_quantized(qm, calib_ids, outdir, context=context, model_name="tiny")
    return CompiledImage.from_dir(outdir)
