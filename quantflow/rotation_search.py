"""Choose a residual rotation's random draw on calibration text.

    python -m quantflow rotation-search --model smollm2 --scheme w4a8kv4-g64 --seeds 8

A randomised Hadamard rotation (quantflow.rotation) is exact in float, but how much
it helps the quantized model depends on its sign draw (SpinQuant reports the same
for random rotations; on SmolLM2 two draws differ by ~3 % perplexity). This
quantizes the scheme once per seed 0..seeds-1 with the draw `seed` (and once
unrotated, the reference) and measures each on windows of a *calibration* text:
the draw is never chosen on the evaluation text, which stays an independent test.
Writes build/quant/<model>/<scheme>/rotation-search.json (atomically).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from quattro_fs import atomic_write_json

from .errors import QuantflowError
from .evaluate import EVAL_SEED, perplexity, quant_dir
from .fakequant import quantize_model
from .models.loaders import LoadedModel, load_model
from .schemes import DEFAULT_SCHEME, QuantScheme, RotationScheme, get_scheme
from .text import (CALIB_LENGTH, CALIB_SAMPLES, DEFAULT_CALIB, calibration_tokens, get_text,
                   text_description)

__all__ = ["search_rotation", "with_rotation_seed"]


def with_rotation_seed(scheme: QuantScheme, seed: int | None) -> QuantScheme:
    """`scheme` with its rotation's draw set to `seed` (a randomised Hadamard when the
    scheme has no rotation), or with no rotation at all for seed None."""
    if seed is None:
        return dataclasses.replace(scheme, name=f"{scheme.name}.norot", rotation=None)
    base = scheme.rotation or RotationScheme(kind="random-hadamard")
    if not base.kind.startswith(("random", "kron-random")):
        raise QuantflowError(f"scheme {scheme.name!r} rotates by {base.kind!r}, which has no "
                             f"random draw to search; use a random kind (random-hadamard)")
    return dataclasses.replace(scheme, name=f"{scheme.name}.seed{seed}",
                               rotation=dataclasses.replace(base, seed=seed))


def search_rotation(model: str | LoadedModel = "smollm2",
                    scheme: str | QuantScheme = DEFAULT_SCHEME, *, seeds: int = 8,
                    text: str = DEFAULT_CALIB, windows: int = 8, length: int = 512,
                    calib_text: str = DEFAULT_CALIB, calib_samples: int = CALIB_SAMPLES,
                    calib_length: int = CALIB_LENGTH, out: Path | str | None = None,
                    progress: bool = True, log: Callable[[str], object] = print) -> dict:
    """Perplexity on `windows` x `length` tokens of the calibration-role `text` of the
    fake-quant `scheme` unrotated and with the rotation drawn from each seed
    0..seeds-1; returns (and writes) the report with the best seed."""
    t0 = time.perf_counter()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise QuantflowError(f"seeds must be a positive number of draws, got {seeds!r}")
    torch.manual_seed(EVAL_SEED)
    sch = get_scheme(scheme)
    with_rotation_seed(sch, 0)                  # a rotation without a draw is refused here
    # role="calib": the evaluation texts are refused by name, before the model loads
    get_text(text, role="calib")
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    if lm.arch != "llama":
        raise QuantflowError(f"a rotation search needs a Llama model; {lm.name!r} is "
                             f"{lm.arch!r}")
    # the search windows are calibration-role text, cut as calibration_tokens cuts it
    sel = calibration_tokens(lm.tokenizer, text=text, samples=windows, length=length)
    cal = calibration_tokens(lm.tokenizer, text=calib_text, samples=calib_samples,
                             length=calib_length)
    outdir = Path(out) if out is not None else quant_dir(lm.name, sch.name)
    ppl_fp32 = perplexity(lm.model, sel, progress=progress, desc="ppl fp32")
    log(f"{text}: ppl fp32 = {ppl_fp32:.3f}")
    runs = []
    for seed in [None, *range(seeds)]:
        ts = time.perf_counter()
        qm = quantize_model(lm, with_rotation_seed(sch, seed), calib_ids=cal,
                            progress=progress, keep_reference=False)
        p = perplexity(qm.model, sel, progress=progress,
                       desc="ppl unrotated" if seed is None else f"ppl seed {seed}")
        del qm
        runs.append({"seed": seed, "ppl": p, "ppl_ratio": p / ppl_fp32,
                     "seconds": round(time.perf_counter() - ts, 2)})
        log(f"{'unrotated' if seed is None else f'seed {seed}'}: ppl {p:.3f} "
            f"({p / ppl_fp32:.4f} x FP32)")
    best = min((r for r in runs if r["seed"] is not None), key=lambda r: r["ppl"])
    report = {
        "model": lm.name, "scheme": sch.name,
        "rotation": dataclasses.asdict(sch.rotation or RotationScheme(kind="random-hadamard")),
        "text": {"name": text, "description": text_description(text), "windows": windows,
                 "length": length},
        "calibration": {"name": calib_text, "description": text_description(calib_text),
                        "samples": calib_samples, "length": calib_length},
        "ppl_fp32": ppl_fp32, "runs": runs, "best_seed": best["seed"],
        "best_ppl_ratio": best["ppl_ratio"],
        "seconds": round(time.perf_counter() - t0, 2),
        "torch_threads": torch.get_num_threads(), "seed": EVAL_SEED,
    }
    atomic_write_json(outdir / "rotation-search.json", report, indent=2)
    report["path"] = str(outdir / "rotation-search.json")
    log(f"best: seed {best['seed']}, {best['ppl_ratio']:.4f} x FP32 on {text} "
        f"({report['path']})")
    return report
