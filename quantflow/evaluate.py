"""Accuracy of a quantization scheme on a real model (issue 3).

    python -m quantflow eval --model smollm2 --scheme w4a8kv4-g64

Perplexity on fixed windows of an evaluation text for FP32, the scheme and each
of its components alone (W only, A only, KV only); the output SQNR of every
linear layer in the quantized model, measured locally: each linear's output
against the float weight it approximates (in the folded frame) on the very input
it sees in the quantized model, so the number isolates that layer's weight and
activation quantization. Writes build/quant/<model>/<scheme>/report.json
(atomically) and sqnr.png, and returns the report.
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from quattro_fs import atomic_write_bytes, atomic_write_json

from .errors import QuantflowError
from .fakequant import QuantizedModel, quantize_model
from .models.loaders import LoadedModel, build_dir, load_model, require
from .schemes import DEFAULT_SCHEME, QuantScheme, get_scheme
from .text import (CALIB_LENGTH, CALIB_SAMPLES, DEFAULT_CALIB, DEFAULT_EVAL,
                   calibration_tokens, evaluation_tokens, text_description)

if TYPE_CHECKING:
    from golden.decoder import IntegerDecoder

    from .models.llama import LlamaForCausalLM

__all__ = ["perplexity", "layer_sqnr", "evaluate", "format_table", "plot_sqnr", "quant_dir"]


def quant_dir(model: str, scheme: str) -> Path:
    """build/quant/<model>/<scheme>: where the evaluation report (and export) of `model`
    under `scheme` go."""
    return build_dir() / "quant" / model / scheme


def _bar(it, *, desc, total=None, enabled=True):
    if not enabled:
        return it
    return require("tqdm").tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)


@torch.no_grad()
def perplexity(model: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, *,
               progress: bool = False, desc: str = "perplexity",
               top1: list | None = None) -> float:
    """exp(mean next-token NLL) over windows [W, T] (each window its own sequence);
    `model(ids [1, T])` gives logits [1, T, vocab]. With `top1` (a list), each
    window's greedy predictions [T - 1] are appended to it."""
    nll, n = 0.0, 0
    for w in _bar(windows, desc=desc, enabled=progress):
        logits = model(w[None])[0]
        nll += float(F.cross_entropy(logits[:-1].double(), w[1:], reduction="sum"))
        n += w.numel() - 1
        if top1 is not None:
            top1.append(logits[:-1].argmax(-1))
    return math.exp(nll / n)


@torch.no_grad()
def layer_sqnr(qm: QuantizedModel, windows: torch.Tensor, *, progress: bool = False,
               with_ppl: bool = True, top1: list | None = None) -> tuple[list[dict], float | None]:
    """Per block linear: SQNR (dB) of its output in the quantized model against
    x @ w_ref.T on the same input x. Returns (layers list, perplexity or None)."""
    m = qm.model
    sig: dict[str, float] = {}
    noise: dict[str, float] = {}
    hooks = []
    mods = dict(m.named_modules())
    for short, w in qm.w_ref.items():
        full = "model." + short if ("model." + short) in mods else short
        lin = mods[full]
        box: dict = {}

        def pre(mod, args, box=box):
            box["x"] = args[0]

        def post(mod, args, out, box=box, short=short, w=w):
            ref = box.pop("x") @ w.T
            sig[short] = sig.get(short, 0.0) + float(ref.double().pow(2).sum())
            noise[short] = noise.get(short, 0.0) + float((out - ref).double().pow(2).sum())

        hooks.append(lin.register_forward_pre_hook(pre, prepend=True))  # raw x, before A8
        hooks.append(lin.register_forward_hook(post))
    try:
        ppl = perplexity(m, windows, progress=progress, desc="ppl + layer SQNR",
                         top1=top1) if with_ppl else None
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for short in qm.w_ref:
        s, e = sig.get(short, 0.0), noise.get(short, 0.0)
        db = 10 * math.log10(s / e) if e > 0 and s > 0 else float("inf")
        st = qm.weights[short].stats if short in qm.weights else {}
        layers.append({"name": short, "shape": list(qm.w_ref[short].shape),
                       "sqnr_db": round(db, 3),
                       "weight_sqnr_db": (round(st["sqnr_db"], 3) if "sqnr_db" in st
                                          else None)})
    return layers, ppl


def plot_sqnr(layers: list, path: Path, title: str) -> None:
    """Bar chart of per-layer SQNR (Agg backend), written atomically."""
    mpl = require("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for kind in kinds:
        pts = [(i, l["sqnr_db"]) for i, l in enumerate(layers) if l["name"].endswith(kind)]
        if pts:
            ax.bar([p[0] for p in pts], [min(p[1], 99) for p in pts], label=kind, width=0.9)
    ax.set_xlabel("linear layer (block order)")
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title(title)
    ax.legend(ncol=7, fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


#: Seed of every random draw an evaluation makes (weight searches included).
EVAL_SEED = 0
ENGINES = ("fakequant", "integer")


def evaluate(model: str | LoadedModel = "smollm2", scheme: str | QuantScheme = DEFAULT_SCHEME, *,
             text: str = DEFAULT_EVAL, windows: int = 8, length: int = 512,
             calib_text: str = DEFAULT_CALIB, calib_samples: int = CALIB_SAMPLES,
             calib_length: int = CALIB_LENGTH,
             components: bool = True, engine: str = "fakequant", out: Path | str | None = None,
             progress: bool = True, log: Callable[[str], object] = print) -> dict:
    """Measure `scheme` on `model` (module docstring); returns the report dict.
    engine="integer" also compiles the quantized model (quantflow.compile) and
    measures golden.decoder's integer model on the same windows: ppl_integer,
    its top-1 agreement with the fake-quant engine, and its per-layer error."""
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise QuantflowError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    torch.manual_seed(EVAL_SEED)
    sch = get_scheme(scheme)
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    if lm.arch != "llama":
        raise QuantflowError(f"perplexity needs a causal LM; {lm.name!r} is {lm.arch!r} "
                             f"(supported for eval: llama)")
    ev = evaluation_tokens(lm.tokenizer, text=text, windows=windows, length=length)
    cal = calibration_tokens(lm.tokenizer, text=calib_text, samples=calib_samples,
                             length=calib_length)
    outdir = Path(out) if out is not None else quant_dir(lm.name, sch.name)
    ppl_fp32 = perplexity(lm.model, ev, progress=progress, desc="ppl fp32")
    log(f"ppl fp32 = {ppl_fp32:.3f}")
    comps = {}
    if components and len(sch.components()) > 1:
        for key, c in sch.components().items():
            qc = quantize_model(lm, c, calib_ids=cal, progress=progress)
            p = perplexity(qc.model, ev, progress=progress, desc=f"ppl {key}")
            comps[key] = {"label": c.label, "ppl": p, "ppl_ratio": p / ppl_fp32,
                          "quantize_seconds": round(qc.seconds["quantize"], 2)}
            log(f"ppl {key} only = {p:.3f} ({p / ppl_fp32:.4f} x)")
            del qc
    qm = quantize_model(lm, sch, calib_ids=cal, progress=progress)
    top1_fq: list = []
    t_fq = time.perf_counter()
    layers, ppl = layer_sqnr(qm, ev, progress=progress, top1=top1_fq)
    t_fq = time.perf_counter() - t_fq
    log(f"ppl {sch.name} = {ppl:.3f} ({ppl / ppl_fp32:.4f} x)")
    integer = None
    if engine == "integer":
        integer = _integer_engine(lm, qm, cal, ev, top1_fq, outdir / "image",
                                  progress=progress, log=log)
        integer["fakequant_seconds"] = round(t_fq, 2)
        log(f"ppl integer = {integer['ppl']:.3f} ({integer['ppl'] / ppl:.4f} x fake quant), "
            f"top-1 agreement {integer['top1_agreement']:.4f}")
    worst = sorted(layers, key=lambda l: l["sqnr_db"])[:5]
    report = {
        "model": lm.name,
        "scheme": sch.name,
        "scheme_label": sch.label,
        "text": {"name": text, "description": text_description(text), "windows": windows,
                 "length": length},
        "calibration": {"name": calib_text, "description": text_description(calib_text),
                        "samples": calib_samples, "length": calib_length},
        "tokens": int(ev.numel()),
        "ppl_fp32": ppl_fp32,
        "ppl": ppl,
        "ppl_ratio": ppl / ppl_fp32,
        "components": comps,
        "layers": layers,
        "worst_layers": [l["name"] for l in worst],
        "quantize_seconds": round(qm.seconds["quantize"], 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "torch_threads": torch.get_num_threads(),
        "seed": EVAL_SEED,
        "engine": engine,
    }
    if integer is not None:
        report["ppl_integer"] = integer.pop("ppl")
        report["ppl_integer_ratio"] = report["ppl_integer"] / ppl_fp32
        report["integer_vs_fakequant"] = report["ppl_integer"] / ppl
        report["integer"] = integer
    atomic_write_json(outdir / "report.json", report, indent=2)
    plot_sqnr(layers, outdir / "sqnr.png",
              f"{lm.name} {sch.name}: per-layer output SQNR (ppl {ppl:.2f}, "
              f"{ppl / ppl_fp32:.3f}x FP32)")
    report["path"] = str(outdir / "report.json")
    return report


def _integer_engine(lm, qm: QuantizedModel, cal, ev, top1_fq: list, image: Path, *,
                    progress: bool, log) -> dict:
    """Compile `qm`, run golden.decoder on the evaluation windows: perplexity, top-1
    agreement with the fake-quant predictions, per-layer residual error of window 0
    against the fake-quant model, and timings."""
    from golden.decoder import IntegerDecoder
    from .compile import compile_quantized, load_image
    t0 = time.perf_counter()
    compile_quantized(qm, cal, image, context=ev.shape[1], model_name=lm.name)
    config, tensors = load_image(image)
    dec = IntegerDecoder(config, tensors)
    t_compile = time.perf_counter() - t0
    top1: list = []
    t1 = time.perf_counter()
    ppl = perplexity(dec.logits, ev, progress=progress, desc="ppl integer", top1=top1)
    t_int = time.perf_counter() - t1
    agree = float(torch.cat(top1).eq(torch.cat(top1_fq)).double().mean())
    return {"ppl": ppl, "top1_agreement": agree, "image": str(image),
            "compile_seconds": round(t_compile, 2), "seconds": round(t_int, 2),
            "layers": residual_error(dec, qm.model, ev[0]),
            "decoder": config.as_dict()}


@torch.no_grad()
def residual_error(dec: IntegerDecoder, model: LlamaForCausalLM, ids: torch.Tensor) -> list[dict]:
    """Per layer: the integer model's residual stream after the layer against the
    fake-quant model's on the same tokens: relative RMS error and cosine."""
    ref = []
    hooks = [layer.register_forward_hook(lambda m, a, out: ref.append(out[0].double()))
             for layer in model.model.layers]
    try:
        model(ids[None])
    finally:
        for h in hooks:
            h.remove()
    got: dict = {}
    dec.step(ids, dec.new_state(), trace=lambda n, t, frac: got.__setitem__(n, (t, frac))
             if n.endswith(".residual") else None)
    out = []
    for i, r in enumerate(ref):
        t, frac = got[f"layers.{i}.residual"]
        x = t.double() * 2.0 ** -frac
        err = float((x - r).norm() / r.norm().clamp(min=1e-30))
        cos = float((x * r).sum() / (x.norm() * r.norm()).clamp(min=1e-30))
        out.append({"layer": i, "rel_rms_error": round(err, 6), "cosine": round(cos, 6)})
    return out


def format_table(report: dict) -> str:
    """The perplexity table and the worst layers, as printed by the CLI."""
    rows = [("FP32", "float", report["ppl_fp32"], 1.0)]
    for k, c in report["components"].items():
        rows.append((f"{k} only", c["label"], c["ppl"], c["ppl_ratio"]))
    rows.append((report["scheme"], report["scheme_label"], report["ppl"], report["ppl_ratio"]))
    if "ppl_integer" in report:
        rows.append((f"{report['scheme']} integer", "golden.decoder on the compiled image",
                     report["ppl_integer"], report["ppl_integer_ratio"]))
    w = max(len(r[0]) for r in rows)
    t = report["text"]
    out = [f"{report['model']} on {t['name']} ({t['windows']} x {t['length']} tokens)",
           f"{'config':<{w}}  {'perplexity':>10}  {'x FP32':>7}  scheme"]
    for name, label, p, r in rows:
        out.append(f"{name:<{w}}  {p:>10.3f}  {r:>7.4f}  {label}")
    by = {l["name"]: l for l in report["layers"]}
    out.append("worst layers (output SQNR, dB): " + ", ".join(
        f"{n} {by[n]['sqnr_db']:.1f}" for n in report["worst_layers"]))
    return "\n".join(out)
