"""Whole-model weight quantization of a Llama-family model (quantflow.models.llama
layout: model.model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}), block by block.

Sequential (as GPTQ does): each block is calibrated on the outputs of the blocks
before it *after* they were quantized, so later layers compensate earlier errors.
Within a block: q/k/v (one shared input, AWQ scale folded into input_layernorm),
then o_proj (scale tied across a GQA group, folded into v_proj's output rows), then
gate/up (folded into post_attention_layernorm), then down_proj (folded into up_proj's
output rows). lm_head and the embedding stay float.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import QuantflowError
from .core import (Calibration, WeightQuantOptions, WeightQuantResult, fold_output_scale,
                   quantize_shared)

if TYPE_CHECKING:
    from ..models.llama import LlamaForCausalLM
    from ..schemes import WeightScheme

__all__ = ["quantize_llama_weights"]


def _capture_input(module, fn):
    got = []
    h = module.register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
    try:
        fn()
    finally:
        h.remove()
    return got[0]


def _set(linear, res: WeightQuantResult):
    linear.weight.data.copy_(res.w_fake)


def quantize_llama_weights(model: LlamaForCausalLM, calib_ids: torch.Tensor, *,
                           scheme: WeightScheme, options: WeightQuantOptions | None = None,
                           progress: bool = True,
                           prefix: str = "model.layers" ) -> dict[str, WeightQuantResult]:
    """Quantize every decoder linear of `model` in place with `scheme`; folds AWQ
    input scales into the norms / previous linears so the float model computes
    (x / s) @ w_fake.T. calib_ids: int64 [B, T] calibration tokens (B*T >= the
    options' min_tokens). Returns {"model.layers.i.self_attn.q_proj": result, ...};
    results of v_proj/up_proj already include the folded next-layer scale."""
    if not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or \
            calib_ids.dtype != torch.int64:
        raise QuantflowError("calib_ids must be an int64 tensor [batches, tokens]; encode "
                             "the calibration text and reshape it")
    try:
        layers = model.model.layers
        embed = model.model.embed_tokens
        cfg = model.config
    except AttributeError:
        raise QuantflowError(f"{type(model).__name__} is not a Llama-family model "
                             f"(quantflow.models.llama layout)") from None
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    g = H // Hkv
    # o_proj input channel h*D + d is produced by v channel (h // g)*D + d
    tie = ((torch.arange(H) // g).repeat_interleave(D) * D + torch.arange(D).repeat(H))
    results: dict[str, WeightQuantResult] = {}
    it = range(len(layers))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"quantize weights", unit="block")
    t0 = time.perf_counter()
    with torch.no_grad():
        x = embed(calib_ids)
        cos, sin = model.rope(calib_ids.shape[1])
        for i in it:
            layer = layers[i]
            attn, mlp = layer.self_attn, layer.mlp
            p = f"{prefix}.{i}"
            # q, k, v
            h = layer.input_layernorm(x)
            names = [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]
            rs = quantize_shared([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight],
                                 scheme=scheme, calib=Calibration.from_activations(h),
                                 options=options, names=names)
            if rs[0].input_scale is not None:
                layer.input_layernorm.weight.data /= rs[0].input_scale
            for lin, nm, r in zip((attn.q_proj, attn.k_proj, attn.v_proj), names, rs):
                _set(lin, r)
                results[nm] = r
            # o_proj
            o_in = _capture_input(attn.o_proj,
                                  lambda: attn(layer.input_layernorm(x), cos, sin))
            nm = f"{p}.self_attn.o_proj"
            (r,) = quantize_shared([attn.o_proj.weight], scheme=scheme,
                                   calib=Calibration.from_activations(o_in),
                                   options=options, names=[nm], tie=tie)
            if r.input_scale is not None:
                sv = torch.empty(Hkv * D)
                sv[tie] = r.input_scale
                vn = f"{p}.self_attn.v_proj"
                results[vn] = fold_output_scale(results[vn], sv)
                _set(attn.v_proj, results[vn])
            _set(attn.o_proj, r)
            results[nm] = r
            x = x + attn(layer.input_layernorm(x), cos, sin)
            # gate, up
            h = layer.post_attention_layernorm(x)
            names = [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"]
            rs = quantize_shared([mlp.gate_proj.weight, mlp.up_proj.weight], scheme=scheme,
                                 calib=Calibration.from_activations(h), options=options,
                                 names=names)
            if rs[0].input_scale is not None:
                layer.post_attention_layernorm.weight.data /= rs[0].input_scale
            for lin, nm, r in zip((mlp.gate_proj, mlp.up_proj), names, rs):
                _set(lin, r)
                results[nm] = r
            # down
            h = layer.post_attention_layernorm(x)
            d_in = F.silu(mlp.gate_proj(h)) * mlp.up_proj(h)
            nm = f"{p}.mlp.down_proj"
            (r,) = quantize_shared([mlp.down_proj.weight], scheme=scheme,
                                   calib=Calibration.from_activations(d_in),
                                   options=options, names=[nm])
            if r.input_scale is not None:
                un = f"{p}.mlp.up_proj"
                results[un] = fold_output_scale(results[un], r.input_scale)
                _set(mlp.up_proj, results[un])
            _set(mlp.down_proj, r)
            results[nm] = r
            x = x + mlp(layer.post_attention_layernorm(x))
    for r in results.values():
        r.stats.setdefault("model_seconds", time.perf_counter() - t0)
    return results
