"""make sim's run of the sparse DSP chain on a real pruned layer: SmolLM2-135M
layer 0 q_proj (576 x 576), 2:4 Wanda-pruned with the activations it sees on the
calibration text, QoQ W4A8 (g64), against real activations of the evaluation
text, through a K=576 chain (8 DSPs, one 8-stage dot product per tile).

Like MixPE's real-layer runs, it prepares the model (build/models/smollm2,
as `make models`) when it is missing, so a fresh clone's `make sim` has it.
"""
from __future__ import annotations

from pathlib import Path

from golden.sparse_dsp_config import SparseDSPConfig, TileMode

from cosim.flow import DATA_ROOT, cached_export, with_build
from cosim.sparse_dsp import SparseDSPCase, build, run_dirs, to_record

__all__ = ["REAL_CONFIG", "REAL_MODE", "REAL_ROWS", "REAL_TOKENS", "real_items",
           "prepare_real"]

REAL_CONFIG = SparseDSPConfig(L=8, group_len=4, K=576, qgroup=64)
REAL_MODE = TileMode(pattern="2:4", mode="w4a8", span=2)
REAL_LAYER = "model.layers.0.self_attn.q_proj"
REAL_ROWS = 48      # output channels of q_proj (the first 48)
REAL_TOKENS = 8     # activation rows: 48 x 8 tiles x 288 kept MACs = 110,592


def prepare_real(root: Path | None = None) -> Path:
    """Export the real pruned layer's images (reused when they verify)."""
    from quantflow.sparse_dsp import load_sparse_dsp
    return cached_export(
        Path(root or DATA_ROOT) / f"{REAL_CONFIG.name()}_smollm2_l0_q_proj_2of4_w4a8",
        load=lambda d: load_sparse_dsp(d, REAL_CONFIG), export=_export_real)


def _export_real(outdir: Path) -> None:
    """The layer's first REAL_ROWS rows, Wanda-pruned with the activations it
    sees on the calibration text, against the last tokens of an evaluation window."""
    import torch

    from quantflow.models.loaders import load_model
    from quantflow.sparse_dsp import export_sparse_dsp
    from quantflow.text import calibration_tokens, evaluation_tokens

    lm = load_model("smollm2", progress=False)
    lin = dict(lm.model.named_modules())[REAL_LAYER]
    seen = []
    h = lin.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(
        -1, args[0].shape[-1]).detach().float()))
    try:
        with torch.no_grad():
            for row in calibration_tokens(lm.tokenizer, samples=2, length=256):
                lm.model(row[None])
            calib = torch.cat(seen)
            seen.clear()
            lm.model(evaluation_tokens(lm.tokenizer, windows=1, length=64)[:1])
            X = seen[0][-REAL_TOKENS:]
    finally:
        h.remove()
    W = lin.weight.detach().float()[:REAL_ROWS]
    export_sparse_dsp(outdir, REAL_CONFIG, W, X, mode=REAL_MODE, method="wanda",
                      calib=calib, provenance={"source": "smollm2", "layer": REAL_LAYER,
                                               "rows": f"0..{REAL_ROWS - 1}",
                                               "tokens": "last 8 of eval window 0"})


def _run(sim: str) -> dict:
    d = prepare_real()
    b = build(REAL_CONFIG, sim=sim)
    res = run_dirs(REAL_CONFIG, [d], build_=b, p_idle=0.2, p_stall=0.3, seed=5)
    case = SparseDSPCase(config=REAL_CONFIG, mode=REAL_MODE, rows=REAL_ROWS, ma=REAL_TOKENS,
                         method="wanda", seed=5)
    rec = to_record(case, res, label="stream smollm2-l0-q_proj")
    rec["case"] = d.name
    return with_build(rec, b)


def real_items(*, sim: str) -> list:
    """make sim's item of a real SmolLM2 layer on the sparse DSP block (2:4, W4A8), run on `sim`."""
    from cosim.blocks import SimItem
    case = SparseDSPCase(config=REAL_CONFIG, mode=REAL_MODE, rows=REAL_ROWS, ma=REAL_TOKENS)
    return [SimItem(block="sparse_dsp", name="sparse_dsp_smollm2_l0_q_proj_2of4_w4a8",
                    path="stream", config=case.record_config(), macs=case.macs,
                    peak_macs_per_cycle=REAL_CONFIG.peak_macs_per_cycle("2:4"),
                    run=lambda: _run(sim))]
