"""A small random Llama for the whole-model tests (quantflow.synthetic builds it):
weights ~N(0, 0.1), norm weights in [0.5, 1.5), seeded; its configuration, seeded
token ids, the quantized model and its compiled model image."""
from __future__ import annotations

from quantflow.synthetic import compiled_image, random_llama, random_llama_quantized, \
    small_llama_config, token_ids

__all__ = ["tiny_config", "token_ids", "tiny_llama", "tiny_quantized", "tiny_image"]


def tiny_config(*, heads: int = 2, kv_heads: int = 1):
    """Vocabulary 61, hidden 128, intermediate 192, two layers; `heads` query heads
    sharing `kv_heads` KV heads."""
    return small_llama_config(heads=heads, kv_heads=kv_heads)


tiny_llama = random_llama
tiny_quantized = random_llama_quantized


def tiny_image(qm, calib_ids, outdir, *, context: int):
    return compiled_image(qm, calib_ids, outdir, context=context)
