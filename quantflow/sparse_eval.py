"""Perplexity cost of N:M pruning on a real model (issue 5), alone and together
with a quantization scheme (default W4A8KV4).

    python -m quantflow.sparse_eval --model smollm2 --pattern 2:4 --method wanda

Every nn.Linear inside the decoder layers (q/k/v/o, gate/up/down) is pruned to
N:M along its input features; embeddings and lm_head stay dense. Wanda scores
|W| * ||X||_2 use the inputs each linear sees in the *dense* model on the
calibration text (one-shot, not Wanda's layer-by-layer variant). The pruned
model is then quantized with the scheme's own flow (QoQ zeros stay exact zeros,
q = z). Writes build/quant/<model>/sparse-<N>of<M>-<method>/report.json atomically.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from quattro_fs import atomic_write_json

from .errors import QuantflowError
from .evaluate import perplexity, quant_dir
from .prune import prune
from .schemes import get_scheme
from .text import CALIB_LENGTH, CALIB_SAMPLES

if TYPE_CHECKING:
    from .models.loaders import LoadedModel

#: The default scheme after pruning: the target without its residual rotation, which
#: would make the pruned N:M weights dense again (W <- W Q mixes every input channel)
SPARSE_SCHEME = "w4a8kv4-g64-norot"

__all__ = ["linear_input_norms", "prune_model", "evaluate_sparse", "main"]


def _targets(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".layers." in f".{n}"}


@torch.no_grad()
def linear_input_norms(model: nn.Module, calib_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """||X[:, k]||_2 of every target linear's input over the calibration tokens."""
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    for name, lin in _targets(model).items():
        def hook(mod, args, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float64)
            sq[name] = sq.get(name, 0) + x.pow(2).sum(0)
        hooks.append(lin.register_forward_pre_hook(hook))
    try:
        for row in calib_ids:
            model(row[None])
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt().to(torch.float32) for k, v in sq.items()}


@torch.no_grad()
def prune_model(model: nn.Module, pattern: str | tuple[int, int], *, method: str = "wanda",
                calib_ids: torch.Tensor | None = None) -> nn.Module:
    """A pruned copy of `model` (the original is left unchanged)."""
    m = copy.deepcopy(model).eval()
    norms = None
    if method == "wanda":
        if calib_ids is None:
            raise QuantflowError("method='wanda' needs calibration tokens calib_ids [B, T]")
        norms = linear_input_norms(m, calib_ids)
    targets = _targets(m)
    if not targets:
        raise QuantflowError("no nn.Linear inside decoder layers ('.layers.') to prune")
    for name, lin in targets.items():
        X = norms[name].unsqueeze(0) if norms is not None else None  # ||x|| as one row
        Wp, _ = prune(lin.weight.float(), pattern, method=method, X=X)
        lin.weight.copy_(Wp.to(lin.weight.dtype))
    return m


def _scheme_report(model: str, scheme: str, *, windows: int, length: int,
                   ppl_fp32: float) -> dict | None:
    """The dense scheme's `quantflow eval` report when it used the same
    evaluation windows (same text, count, length and FP32 perplexity)."""
    import json
    from .text import DEFAULT_EVAL
    path = quant_dir(model, scheme) / "report.json"
    try:
        r = json.loads(path.read_text())
        same = (r["text"]["name"] == DEFAULT_EVAL and r["text"]["windows"] == windows
                and r["text"]["length"] == length
                and abs(r["ppl_fp32"] - ppl_fp32) <= 1e-6 * ppl_fp32)
        return {"ppl": float(r["ppl"]), "path": str(path)} if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate_sparse(model: str | LoadedModel = "smollm2", *, pattern: str = "2:4",
                    method: str = "wanda", scheme: str = SPARSE_SCHEME, windows: int = 8,
                    length: int = 512, calib_samples: int = CALIB_SAMPLES,
                    calib_length: int = CALIB_LENGTH,
                    progress: bool = False, log: Callable[[str], object] = print) -> dict:
    """Perplexity of the float model, pruned to `pattern`, quantized with `scheme`,
    and both; writes the report to build/quant and returns it."""
    from .fakequant import quantize_model
    from .models.loaders import LoadedModel, load_model
    from .text import DEFAULT_CALIB, DEFAULT_EVAL, calibration_tokens, evaluation_tokens

    if get_scheme(scheme).rotation is not None:
        # W <- W Q mixes every input channel: the pruned N:M pattern would be lost
        raise QuantflowError(f"scheme {scheme!r} rotates the residual stream, which makes "
                             f"the pruned {pattern} weights dense again; use an unrotated "
                             f"scheme (e.g. {SPARSE_SCHEME})")
    t0 = time.perf_counter()
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    ev = evaluation_tokens(lm.tokenizer, text=DEFAULT_EVAL, windows=windows, length=length)
    cal = calibration_tokens(lm.tokenizer, text=DEFAULT_CALIB, samples=calib_samples,
                             length=calib_length)
    ppl = {"fp32": perplexity(lm.model, ev)}
    log(f"ppl fp32 = {ppl['fp32']:.3f}")
    pruned = prune_model(lm.model, pattern, method=method, calib_ids=cal)
    ppl["sparse"] = perplexity(pruned, ev)
    log(f"ppl {pattern} ({method}) = {ppl['sparse']:.3f}")
    prior = _scheme_report(lm.name, scheme, windows=windows, length=length,
                           ppl_fp32=ppl["fp32"])
    if prior is not None:  # `quantflow eval` measured the dense scheme on the same windows
        ppl["quant"] = prior["ppl"]
        quant_from = prior["path"]
    else:
        qd = quantize_model(lm, scheme, calib_ids=cal, progress=progress)
        ppl["quant"] = perplexity(qd.model, ev)
        quant_from = "measured here"
        del qd
    log(f"ppl {scheme} = {ppl['quant']:.3f} ({quant_from})")
    qs = quantize_model(dataclasses.replace(lm, model=pruned), scheme, calib_ids=cal,
                        progress=progress)
    ppl["sparse_quant"] = perplexity(qs.model, ev)
    log(f"ppl {pattern} + {scheme} = {ppl['sparse_quant']:.3f}")
    name = f"sparse-{pattern.replace(':', 'of')}-{method}"
    report = {
        "model": lm.name, "pattern": pattern, "method": method, "scheme": scheme,
        "text": {"eval": DEFAULT_EVAL, "windows": windows, "length": length,
                 "calib": DEFAULT_CALIB, "calib_samples": calib_samples,
                 "calib_length": calib_length},
        "ppl": ppl, "quant_ppl_from": quant_from, "ppl_ratio": {k: v / ppl["fp32"] for k, v in ppl.items()},
        "pruned": "every nn.Linear in the decoder layers; embeddings and lm_head dense",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = quant_dir(lm.name, name) / "report.json"
    atomic_write_json(out, report, indent=2)
    report["path"] = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m quantflow.sparse_eval`: run evaluate_sparse with the options given;
    returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m quantflow.sparse_eval", description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--method", default="wanda", choices=("wanda", "magnitude"))
    ap.add_argument("--scheme", default=SPARSE_SCHEME)
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args(argv)
    try:
        evaluate_sparse(args.model, pattern=args.pattern, method=args.method,
                        scheme=args.scheme, windows=args.windows)
    except QuantflowError as e:
        print(f"quantflow.sparse_eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
