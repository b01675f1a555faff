"""KV4 scheme fidelity on a real model (issue 7 targets): for every layer, the
last `queries` query positions of a `tokens`-long window of real text, the
cosine between causal attention on the quantized K/V (per variant) and float
attention on the original K/V. Layers are measured in isolation (each from the
float model's own Q/K/V), so the number is the attention unit's fidelity.

    python -m quantflow.kv4_fidelity [--tokens 512 --queries 64 --fixed-point]

Variants (the KV quantizer is quantflow.fakequant.quantize_kv, DESIGN §3.7):
  kv4            per-token, per-head asymmetric 4-bit K and V, integer zero
  kv4-fraczero   the same with QServe's fractional zero
  smooth         + SmoothAttention (lambda = max|K|^0.5 from calibration text)
  hadamard       + Walsh-Hadamard rotation of K and Q per head
  smooth+hadamard
  hadamard+v     + V rotated too (inverse after P.V)
  hadamard+v+sink4       + the first 4 tokens kept at full precision
  hadamard+v+sink4-int8  + the first 4 tokens at 8 bits instead
  hadamard+v+sink4+fraczero  + QServe's fractional zero
With --fixed-point, the chosen hardware scheme (hadamard+v+sink4-int8 K/V through
golden.kv4_attention's bit-exact pipeline, INT8 queries) is measured as well
(slow: a few minutes).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .fakequant import fake_quant_kv, hadamard, smooth_attention_lambdas

__all__ = ["VARIANTS", "attention_cosine", "measure", "summarise", "main"]

VARIANTS = ("kv4", "kv4-fraczero", "smooth", "hadamard", "smooth+hadamard", "hadamard+v",
            "hadamard+v+sink4", "hadamard+v+sink4-int8", "hadamard+v+sink4+fraczero")


def _attend(q, k, v, positions):
    g = q.shape[0] // k.shape[0]
    kk, vv = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
    s = q.double() @ kk.double().transpose(1, 2) / q.shape[-1] ** 0.5
    mask = torch.arange(k.shape[1]).unsqueeze(0) > torch.as_tensor(positions).unsqueeze(1)
    s = s.masked_fill(mask.unsqueeze(0), float("-inf"))
    return F.softmax(s, -1) @ vv.double()


def _cos(a, b) -> float:
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def attention_cosine(q, k, v, variant: str, *, queries: int, lam=None) -> float:
    """Cosine of the variant's attention output vs float attention, over the last
    `queries` positions of q [Hq, T, D], k and v [Hkv, T, D]."""
    T, D = k.shape[1], k.shape[2]
    pos = list(range(T - queries, T))
    ref = _attend(q[:, pos], k, v, pos)
    qq, kk, vv = q[:, pos], k, v
    parts = set(variant.replace("-", "+").split("+"))
    g = q.shape[0] // k.shape[0]
    if "smooth" in parts:
        kk = kk / lam.unsqueeze(1)
        qq = qq * lam.repeat_interleave(g, 0).unsqueeze(1)
    H = hadamard(D).double() if "hadamard" in parts else None
    if H is not None:
        qq, kk = qq.double() @ H, kk.double() @ H
        if "v" in parts:
            vv = vv.double() @ H
    kw = {"integer_zero": "fraczero" not in parts}
    sinks = 4 if "sink4" in parts else 0
    if sinks and "int8" in parts:
        kw.update(sink_tokens=sinks, sink_bits=8)
    kq = fake_quant_kv(kk.double(), **kw)
    vq = fake_quant_kv(vv.double(), **kw)
    if sinks and "int8" not in parts:
        kq[:, :sinks], vq[:, :sinks] = kk[:, :sinks], vv[:, :sinks]
    out = _attend(qq, kq, vq, pos)
    if H is not None and "v" in parts:
        out = out @ H.T
    return _cos(out, ref)


def _fixed_point_cosine(q, k, v, *, queries: int) -> float:
    """hadamard+v+sink4-int8 ... through the bit-exact pipeline for the 4-bit part:
    the hardware keeps K/V codes at 4 bits for every token; sinks are not modelled
    in the fixed-point unit, so this measures hadamard+v with 4-bit sinks."""
    from golden.kv4_attention import append_cache, decode_float
    from golden.kv4_config import KV4Config
    T, D = k.shape[1], k.shape[2]
    g = q.shape[0] // k.shape[0]
    H = hadamard(D)
    cfg = KV4Config(head_dim=D, heads=g, max_t=max(T, 1))
    pos = list(range(T - queries, T))
    ref = _attend(q[:, pos], k, v, pos)
    out = torch.zeros_like(ref)
    for h in range(k.shape[0]):
        cache = append_cache(k[h] @ H, v[h] @ H, cfg)
        for j, p in enumerate(pos):
            qh = q[h * g:(h + 1) * g, p] @ H
            r = decode_float(qh, cache, p + 1, cfg)
            out[h * g:(h + 1) * g, j] = r.value() @ H.T.double()
    return _cos(out, ref)


def measure(*, model_name: str = "smollm2", tokens: int = 512, queries: int = 64,
            variants=VARIANTS, fixed_point: bool = False, progress: bool = True) -> dict:
    from .capture_attention import capture_layers, real_tokens
    from .fakequant import collect_llama_stats
    from .models import load_model
    from .text import calibration_tokens
    lm = load_model(model_name, progress=False)
    ids = real_tokens(lm.tokenizer, tokens=tokens)
    t0 = time.perf_counter()
    layers = capture_layers(lm.model, ids)
    lams = None
    if any("smooth" in v for v in variants):
        calib = calibration_tokens(lm.tokenizer, samples=4, length=256)
        stats = collect_llama_stats(lm.model, calib, progress=False)
        lams = [smooth_attention_lambdas(km) for km in stats["kmax"]]
    res = {v: [] for v in variants}
    if fixed_point:
        res["fixed-point(hadamard+v)"] = []
    for i in sorted(layers):
        q, k, v = layers[i]
        for var in variants:
            res[var].append(attention_cosine(q, k, v, var, queries=queries,
                                             lam=None if lams is None else lams[i]))
        if fixed_point:
            res["fixed-point(hadamard+v)"].append(_fixed_point_cosine(q, k, v, queries=queries))
        if progress:
            print(f"layer {i:2d}: " + " ".join(f"{var}={res[var][-1]:.4f}" for var in res),
                  flush=True)
    return {"model": model_name, "tokens": tokens, "queries": queries, "text": "hamlet",
            "per_layer": res, "summary": summarise(res),
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise(per_layer: dict) -> dict:
    return {v: {"mean": sum(c) / len(c), "worst": min(c),
                "worst_layer": int(min(range(len(c)), key=c.__getitem__))}
            for v, c in per_layer.items() if c}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--fixed-point", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="build/kv4_fidelity.json")
    a = ap.parse_args(argv)
    r = measure(model_name=a.model, tokens=a.tokens, queries=a.queries,
                fixed_point=a.fixed_point, variants=tuple(a.variants.split(",")))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(r, indent=1))
    for v, s in r["summary"].items():
        print(f"{v:28s} mean {s['mean']:.4f}  worst {s['worst']:.4f} (layer {s['worst_layer']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
