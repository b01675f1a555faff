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
  ...+winW       KIVI-style recent window: for query position p, the tokens
                 p-W+1..p of its causal context are read at 8 bits (levels 240,
                 the hardware's; same per-token asymmetric quantizer), the rest
                 at 4 bits (e.g. hadamard+win8, the adopted scheme, kv4+win8)
With --fixed-point, the adopted hardware scheme (KV4Config defaults: Hadamard K/Q,
V unrotated, recent window 8) is measured through golden.kv4_attention's bit-exact
pipeline with INT8 queries, as "fixed-point(rot-k+win8)" (~1.5 s a layer on CPU).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from golden.kv4_attention import append_cache, decode_float
from golden.kv4_attention_config import KV8_LEVELS, KV4Config
from quattro_fs import build_root

from .fakequant import fake_quant_kv, hadamard, smooth_attention_lambdas

__all__ = ["VARIANTS", "FIXED_POINT", "attention_cosine", "fixed_point_cosine", "measure",
           "summarise", "main"]

VARIANTS = ("kv4", "kv4-fraczero", "smooth", "hadamard", "smooth+hadamard", "hadamard+v",
            "hadamard+v+sink4", "hadamard+v+sink4-int8", "hadamard+v+sink4+fraczero",
            "kv4+win8", "hadamard+win1", "hadamard+win4", "hadamard+win8", "hadamard+win16",
            "hadamard+v+win8")
FIXED_POINT = "fixed-point(rot-k+win8)"
_PARTS = {"kv4", "fraczero", "smooth", "hadamard", "v", "sink4", "int8"}


def _attend(q, k, v, positions, recent=None):
    """Causal attention of q [Hq, Q, D] at `positions` over k, v [Hkv, T, D] (GQA).
    recent = (k8, v8, W): for query position p the tokens p-W+1..p read k8, v8."""
    g = q.shape[0] // k.shape[0]
    rep = lambda x: x.repeat_interleave(g, 0).double()  # noqa: E731
    pos = torch.as_tensor(positions).unsqueeze(1)
    t = torch.arange(k.shape[1]).unsqueeze(0)
    s = q.double() @ rep(k).transpose(1, 2)
    if recent:
        k8, v8, W = recent
        win = (t > pos - W) & (t <= pos)                                  # [Q, T]
        s = torch.where(win, q.double() @ rep(k8).transpose(1, 2), s)
    s = (s / q.shape[-1] ** 0.5).masked_fill((t > pos).unsqueeze(0), float("-inf"))
    a = F.softmax(s, -1)
    if recent:
        return torch.where(win, 0.0, a) @ rep(v) + torch.where(win, a, 0.0) @ rep(v8)
    return a @ rep(v)


def _fake_quant_levels(x, levels: int, *, integer_zero: bool = True):
    """quantize_kv's per-token quantizer with any number of levels (quantize_kv
    takes bits, i.e. 2**bits - 1 levels; the hardware's 8-bit window uses 240)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = torch.where(hi > lo, (hi - lo) / levels,
                        torch.where(lo != 0, lo.abs(), torch.ones_like(lo)))
    zero = -lo / scale
    if integer_zero:
        zero = torch.round(zero).clamp(0, levels)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale


def _parse(variant: str) -> tuple[set, int]:
    """The variant's parts and its recent window W (0: none)."""
    parts = set(variant.replace("-", "+").split("+"))
    wins = {p for p in parts if p[:3] == "win" and p[3:].isdigit() and int(p[3:]) > 0}
    if parts - wins - _PARTS or len(wins) > 1:
        raise ValueError(f"unknown KV4 variant {variant!r}: combine {sorted(_PARTS)} and "
                         f"one winW (W >= 1) with '+', e.g. {', '.join(VARIANTS[-3:])}")
    return parts - wins, int(wins.pop()[3:]) if wins else 0


def _cos(a, b) -> float:
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def attention_cosine(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: str, *,
                     queries: int, lam: torch.Tensor | None = None) -> float:
    """Cosine of the variant's attention output vs float attention, over the last
    `queries` positions of q [Hq, T, D], k and v [Hkv, T, D]."""
    T, D = k.shape[1], k.shape[2]
    pos = list(range(T - queries, T))
    ref = _attend(q[:, pos], k, v, pos)
    qq, kk, vv = q[:, pos], k, v
    parts, W = _parse(variant)
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
    recent = None
    if W:
        iz = kw["integer_zero"]
        recent = (_fake_quant_levels(kk.double(), KV8_LEVELS, integer_zero=iz),
                  _fake_quant_levels(vv.double(), KV8_LEVELS, integer_zero=iz), W)
    out = _attend(qq, kq, vq, pos, recent)
    if H is not None and "v" in parts:
        out = out @ H.T
    return _cos(out, ref)


def fixed_point_cosine(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, queries: int) -> float:
    """FIXED_POINT: the adopted hardware scheme through golden's bit-exact pipeline.
    Per KV head, the append path quantizes the original-frame K/V (rotating K
    itself); each of the last `queries` positions p decodes over its own causal
    context T = p + 1 (so its last 8 tokens are the 8-bit window) with INT8
    queries rotated in hardware; V is not rotated, so the output needs no inverse."""
    T, D = k.shape[1], k.shape[2]
    g = q.shape[0] // k.shape[0]
    # explicit (they are the defaults) so that the name FIXED_POINT stays true
    cfg = KV4Config(head_dim=D, heads=g, max_t=T, rotate=True, recent=8)
    pos = list(range(T - queries, T))
    ref = _attend(q[:, pos], k, v, pos)
    out = torch.zeros_like(ref)
    for h in range(k.shape[0]):
        cache = append_cache(k[h], v[h], cfg)
        for j, p in enumerate(pos):
            out[h * g:(h + 1) * g, j] = decode_float(q[h * g:(h + 1) * g, p], cache, p + 1,
                                                     cfg).value()
    return _cos(out, ref)


def measure(*, model_name: str = "smollm2", tokens: int = 512, queries: int = 64,
            variants: Sequence[str] = VARIANTS, fixed_point: bool = False,
            layers: Iterable[int] | None = None, progress: bool = True) -> dict:
    """Per-layer cosines of `variants` (and FIXED_POINT if fixed_point) over `layers`
    (default all), with their summary; per_layer lists follow result["layers"]."""
    from .capture_attention import capture_layers, real_tokens
    from .fakequant import collect_llama_stats
    from .models import load_model
    from .text import calibration_tokens
    for var in variants:
        _parse(var)                    # a misspelt variant fails before the model loads
    lm = load_model(model_name, progress=False)
    ids = real_tokens(lm.tokenizer, tokens=tokens)
    t0 = time.perf_counter()
    captured = capture_layers(lm.model, ids, layers)
    lams = None
    if any("smooth" in v for v in variants):
        calib = calibration_tokens(lm.tokenizer, samples=4, length=256)
        stats = collect_llama_stats(lm.model, calib, progress=False)
        lams = [smooth_attention_lambdas(km) for km in stats["kmax"]]
    res = {v: [] for v in variants}
    if fixed_point:
        res[FIXED_POINT] = []
    layer_ids = sorted(captured)
    for i in layer_ids:
        q, k, v = captured[i]
        for var in variants:
            res[var].append(attention_cosine(q, k, v, var, queries=queries,
                                             lam=None if lams is None else lams[i]))
        if fixed_point:
            res[FIXED_POINT].append(fixed_point_cosine(q, k, v, queries=queries))
        if progress:
            print(f"layer {i:2d}: " + " ".join(f"{var}={res[var][-1]:.4f}" for var in res),
                  flush=True)
    return {"model": model_name, "tokens": tokens, "queries": queries, "text": "hamlet",
            "layers": layer_ids, "per_layer": res, "summary": summarise(res, layer_ids),
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise(per_layer: dict, layers: Sequence[int] | None = None) -> dict:
    """Mean, worst and worst layer (an index of `layers`, default 0..n-1) per variant."""
    return {v: {"mean": sum(c) / len(c), "worst": min(c),
                "worst_layer": int((layers or range(len(c)))[min(range(len(c)),
                                                                 key=c.__getitem__)])}
            for v, c in per_layer.items() if c}


def main(argv: list[str] | None = None) -> int:
    """`python -m quantflow.kv4_fidelity`: measure, write the JSON to --out and print
    each variant's mean and worst cosine; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--fixed-point", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--layers", default="", help="comma-separated layer indices (default all)")
    ap.add_argument("--out", default=str(build_root() / "kv4_fidelity.json"))
    a = ap.parse_args(argv)
    r = measure(model_name=a.model, tokens=a.tokens, queries=a.queries,
                fixed_point=a.fixed_point, variants=tuple(a.variants.split(",")),
                layers=[int(x) for x in a.layers.split(",")] if a.layers else None)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(r, indent=1))
    for v, s in r["summary"].items():
        print(f"{v:28s} mean {s['mean']:.4f}  worst {s['worst']:.4f} (layer {s['worst_layer']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
