"""A small random Llama (quantflow.models.llama) for the whole-model tests: weights
~N(0, 0.1), norm weights in [0.5, 1.5), seeded."""
from __future__ import annotations

import torch

from quantflow.models import LlamaConfig, LlamaForCausalLM


def tiny_llama(config: LlamaConfig, *, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
    return m
