"""Export a quantized model in the MixPE memory-image formats (DESIGN §3.8).

    python -m quantflow export --model smollm2 --scheme w4a8kv4-g64 [--out DIR]

Layout of the export directory (written to a temp dir, renamed into place):
  manifest.json                  format "quattro-model-export", model, scheme, the
                                 MixPE configuration of every linear, KV4 and
                                 smoothing parameters, sha256 of every file
  layers/<name>/code.hex|.npy    packed 4-bit codes (quantflow.mixpe.pack_code_words)
  layers/<name>/scale.hex|.npy   packed (s2, z*s2) words (quantflow.mixpe.pack_scale_words)
  layers/<name>/{s1,s2,z}.npy    fp16 per-channel scale, integer group scale/zero
  norms/<name>.npy               RMSNorm weights after the SmoothQuant/AWQ folds
  kv/lambda.npy                  SmoothAttention lambda [layers, Hkv, D] (if the scheme
                                 uses it; w4a8kv4-g64 does not)
  kv/hadamard.npy                the Q/K rotation [D, D] (if used)
  residual/rotation.npy          the residual stream's rotation Q [hidden, hidden]
                                 (float64; rotating schemes, e.g. w4a8kv4-g64)
The embedding/lm_head stay float: the source model's, or for a rotating scheme the
source's E Q and (lm_head with the final norm folded in) Q, as the manifest says. `load_model_export` verifies every checksum and that each .hex equals
its .npy, and returns the QoQWeights.

`export_real_layer` writes one real linear layer, fed with activations captured
from the model on real text, as a MixPE image directory (quantflow.mixpe) for
the RTL co-simulation.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from golden.formats import SCALE_BITS

from golden.mixpe_config import MixPEConfig
from golden.validate import expect_type

from .errors import QuantflowError
from .evaluate import quant_dir
from .fakequant import QuantizedModel, quantize_model
from .imagedir import hex_digits, read_hex, verify_checksums, write_hex, write_image_dir
from .models.llama import LlamaForCausalLM
from .models.loaders import LoadedModel, load_model, require
from .mixpe import (pack_code_words, pack_scale_words, unpack_code_words,
                    unpack_scale_words, write_mixpe_images)
from .qoq import QoQWeights, quantize_act
from .schemes import DEFAULT_SCHEME, QuantScheme, get_scheme
from .text import (CALIB_LENGTH, CALIB_SAMPLES, DEFAULT_CALIB, DEFAULT_EVAL, calibration_tokens,
                   evaluation_tokens)

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "export_quantized", "export_model",
           "load_model_export", "export_real_layer", "capture_layer_inputs"]

MODEL_FORMAT = "quattro-model-export"
MODEL_FORMAT_VERSION = 1
_FIX = "re-run `python -m quantflow export`"


def _layer_config(qw: QoQWeights, cols: int) -> MixPEConfig:
    return MixPEConfig(bits=qw.bits, group=qw.group, rows=1, cols=cols, K=qw.shape[1])


def _need_qoq(scheme: QuantScheme) -> None:
    if scheme.weight is None or scheme.weight.method != "qoq":
        raise QuantflowError(f"scheme {scheme.name!r} has no QoQ weights; MixPE images need "
                             f"a qoq weight scheme (e.g. w4a8kv4-g64 or w4-qoq-g64)")


def export_quantized(outdir: Path | str, qm: QuantizedModel, *, cols: int = 8,
                     model_name: str = "model", progress: bool = True) -> dict:
    """Write an already quantized model (quantize_model) to `outdir`; returns the
    manifest."""
    _need_qoq(qm.scheme)
    m = qm.model
    layers = {n: r.qoq for n, r in qm.weights.items()}
    for n, qw in layers.items():
        if qw.shape[0] % cols:
            raise QuantflowError(f"layer {n} has N={qw.shape[0]} output channels, not a "
                                 f"multiple of cols={cols}; pick cols dividing every N")

    def fill(tmp: Path) -> dict:
        entries = {}
        it = layers.items()
        if progress:
            it = require("tqdm").tqdm(it, desc="export layers", total=len(layers),
                                      leave=False, dynamic_ncols=True)
        for n, qw in it:
            c = _layer_config(qw, cols)
            d = tmp / "layers" / n
            d.mkdir(parents=True)
            # numpy words (no Python int per word): write_hex formats them vectorised
            code = pack_code_words(qw.q, c, as_array=True)
            scale = pack_scale_words(qw.s2, qw.z, c, as_array=True)
            write_hex(d / "code.hex", code, c.code_word_bits)
            write_hex(d / "scale.hex", scale, c.scale_word_bits)
            s2 = qw.s2.numpy().astype(np.uint8)
            zs2 = (qw.z * qw.s2).numpy().astype(np.uint8)
            np.save(d / "code.npy", qw.q.numpy().astype(np.uint8), allow_pickle=False)
            np.save(d / "scale.npy", np.stack([s2, zs2], -1), allow_pickle=False)
            np.save(d / "s1.npy", qw.s1.numpy().astype(np.float16), allow_pickle=False)
            np.save(d / "s2.npy", s2, allow_pickle=False)
            np.save(d / "z.npy", qw.z.numpy().astype(np.uint8), allow_pickle=False)
            entries[n] = {"dir": f"layers/{n}", "N": qw.shape[0], "K": qw.shape[1],
                          "config": c.as_dict(), "config_name": c.name(),
                          "code_words": len(code), "scale_words": len(scale),
                          "code_hex_digits": hex_digits(c.code_word_bits),
                          "scale_hex_digits": hex_digits(c.scale_word_bits)}
        norms = {}
        if isinstance(m, LlamaForCausalLM):
            (tmp / "norms").mkdir()
            for n, mod in m.named_modules():
                if n.endswith("layernorm") or n == "model.norm":
                    short = n[len("model."):]
                    np.save(tmp / "norms" / f"{short}.npy",
                            mod.weight.detach().numpy().astype(np.float32), allow_pickle=False)
                    norms[short] = f"norms/{short}.npy"
        kv = None
        if qm.scheme.kv is not None:
            (tmp / "kv").mkdir()
            kv = {"scheme": asdict(qm.scheme.kv), "granularity": "per token, per head",
                  "formula": "scale=(max-min)/levels; zero=clamp(round(-min/scale),0,levels); "
                             "q=clamp(round(x/scale)+zero,0,levels); after RoPE (and the "
                             "Hadamard rotation of K/Q); levels=2**bits-1, and 240 for the "
                             "8-bit copies of each query's last `window` tokens",
                  "files": {}}
            if qm.kv_lambda is not None:
                np.save(tmp / "kv" / "lambda.npy",
                        torch.stack(qm.kv_lambda).numpy().astype(np.float32), allow_pickle=False)
                kv["files"]["lambda"] = "kv/lambda.npy"
            if qm.rotation is not None:
                np.save(tmp / "kv" / "hadamard.npy", qm.rotation.numpy().astype(np.float32),
                        allow_pickle=False)
                kv["files"]["hadamard"] = "kv/hadamard.npy"
        residual = None
        float_tensors = "model.embed_tokens / lm_head are unchanged from the source"
        if qm.residual_rotation is not None:
            # the rotated frame: without Q the exported layers cannot be used
            (tmp / "residual").mkdir()
            np.save(tmp / "residual" / "rotation.npy", qm.residual_rotation.numpy(),
                    allow_pickle=False)
            residual = {"scheme": asdict(qm.scheme.rotation), "rotation": "residual/rotation.npy"}
            float_tensors = ("model.embed_tokens = the source's E @ Q; lm_head = the source's "
                             "lm_head with the final norm's weight folded into its columns "
                             "(quantflow.rotation.fuse_norms), @ Q; Q = residual/rotation.npy "
                             "(float64 [hidden, hidden])")
        return {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "model": model_name, "scheme": qm.scheme.name, "scheme_label": qm.scheme.label,
            "weight_scheme": asdict(qm.scheme.weight),
            "act_scheme": asdict(qm.scheme.act) if qm.scheme.act else None,
            "scale_bits": SCALE_BITS, "cols": cols,
            "layers": entries, "norms": norms, "kv": kv, "residual_rotation": residual,
            "float_tensors": float_tensors,
        }

    return write_image_dir(outdir, fill)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def export_model(model: str | LoadedModel = "smollm2", scheme: str | QuantScheme = DEFAULT_SCHEME,
                 *, out: Path | str | None = None, cols: int = 8, calib_text: str = DEFAULT_CALIB,
                 calib_samples: int = CALIB_SAMPLES, calib_length: int = CALIB_LENGTH, progress: bool = True) -> dict:
    """Quantize `model` with `scheme` and export it; returns the manifest plus
    'timing' (seconds of load / quantize / write, peak RSS in MB)."""
    sch = get_scheme(scheme)
    _need_qoq(sch)
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    t1 = time.perf_counter()
    cal = calibration_tokens(lm.tokenizer, text=calib_text, samples=calib_samples,
                             length=calib_length) if lm.tokenizer is not None else None
    # the model was loaded for this export only: quantize it in place, no references
    qm = quantize_model(lm, sch, calib_ids=cal, progress=progress,
                        copy_model=isinstance(model, LoadedModel), keep_reference=False)
    t2 = time.perf_counter()
    outdir = Path(out) if out is not None else quant_dir(lm.name, sch.name) / "export"
    man = export_quantized(outdir, qm, cols=cols, model_name=lm.name, progress=progress)
    t3 = time.perf_counter()
    man = dict(man)
    man["path"] = str(outdir)
    man["timing"] = {"load_s": round(t1 - t0, 2), "quantize_s": round(t2 - t1, 2),
                     "write_s": round(t3 - t2, 2), "quantize_export_s": round(t3 - t1, 2),
                     "total_s": round(t3 - t0, 2),
                     # CPU seconds of all threads: comparable across machine loads
                     "cpu_s": round(_cpu_seconds() - cpu0, 2),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF)
                                          .ru_maxrss / 1024, 1),
                     "torch_threads": torch.get_num_threads()}
    return man


def load_model_export(outdir: Path | str, *, check_words: bool = True) -> dict:
    """Read an export directory: verify the manifest, every sha256 and (check_words)
    that each .hex equals its .npy. Returns {"manifest", "layers": {name:
    QoQWeights}, "norms": {name: tensor}, "kv_lambda", "hadamard", "residual_rotation"}
    (the optional tensors None when the scheme has none)."""
    outdir = Path(outdir)
    mpath = outdir / "manifest.json"
    if not mpath.is_file():
        raise QuantflowError(f"{mpath} is missing: {outdir} is not a model export; {_FIX}")
    try:
        man = json.loads(mpath.read_text(encoding="utf-8"))
    except ValueError as e:
        raise QuantflowError(f"{mpath} is not valid JSON ({e}); {_FIX}") from None
    if man.get("format") != MODEL_FORMAT or man.get("format_version") != MODEL_FORMAT_VERSION:
        raise QuantflowError(f"{mpath} is not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} "
                             f"manifest; {_FIX}")
    verify_checksums(outdir, man["sha256"], _FIX)
    layers = {}
    for n, e in man["layers"].items():
        d = outdir / e["dir"]
        for f in ("code.hex", "scale.hex", "code.npy", "scale.npy", "s1.npy", "s2.npy", "z.npy"):
            if f"{e['dir']}/{f}" not in man["sha256"]:
                raise QuantflowError(f"manifest.json has no checksum for {e['dir']}/{f}; {_FIX}")
        c = MixPEConfig(**e["config"])
        q = np.load(d / "code.npy", allow_pickle=False)
        s2 = np.load(d / "s2.npy", allow_pickle=False)
        z = np.load(d / "z.npy", allow_pickle=False)
        if check_words:
            code = read_hex(d / "code.hex", c.code_word_bits, e["code_words"])
            scale = read_hex(d / "scale.hex", c.scale_word_bits, e["scale_words"])
            s2w, zs2w = unpack_scale_words(scale, c)
            if not np.array_equal(unpack_code_words(code, c), q) or \
                    not np.array_equal(s2w, s2) or \
                    not np.array_equal(zs2w, z.astype(np.int64) * s2):
                raise QuantflowError(f"{d}: the .hex words disagree with the .npy arrays; {_FIX}")
        layers[n] = QoQWeights(q=torch.from_numpy(q.astype(np.int32)),
                               s1=torch.from_numpy(np.load(d / "s1.npy", allow_pickle=False)),
                               s2=torch.from_numpy(s2.astype(np.int32)),
                               z=torch.from_numpy(z.astype(np.int32)),
                               bits=c.bits, group=c.group)
    norms = {n: torch.from_numpy(np.load(outdir / f, allow_pickle=False))
             for n, f in man.get("norms", {}).items()}
    kvf = (man.get("kv") or {}).get("files", {})
    load = lambda k: torch.from_numpy(np.load(outdir / kvf[k])) if k in kvf else None  # noqa
    res = man.get("residual_rotation")
    Q = torch.from_numpy(np.load(outdir / res["rotation"], allow_pickle=False)) if res else None
    return {"manifest": man, "layers": layers, "norms": norms,
            "kv_lambda": load("lambda"), "hadamard": load("hadamard"), "residual_rotation": Q}


# --------------------------------------------------------------------------- one layer
@torch.no_grad()
def capture_layer_inputs(model: torch.nn.Module, layer: str, ids: torch.Tensor) -> torch.Tensor:
    """The float inputs [B*T, K] of linear `layer` when `model` runs on ids [B, T];
    the forward stops right after the layer (nothing beyond it is computed)."""
    full = layer if layer.startswith("model.") or not isinstance(model, LlamaForCausalLM) \
        else "model." + layer
    try:
        lin = model.get_submodule(full)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        raise QuantflowError(f"model has no linear layer {layer!r}; e.g. "
                             f"{', '.join(names[:3])} ...") from None
    got = []

    class _Stop(Exception):
        pass

    def hook(mod, args):
        got.append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
        raise _Stop

    h = lin.register_forward_pre_hook(hook)
    try:
        for b in range(ids.shape[0]):
            try:
                model(ids[b:b + 1])
            except _Stop:
                pass
    finally:
        h.remove()
    return torch.cat(got)


def export_real_layer(outdir: Path | str, config: MixPEConfig, *,
                      model: str | LoadedModel = "smollm2",
                      layer: str = "layers.0.self_attn.q_proj", tokens: int | None = None,
                      channels: int | None = None, scheme: str | QuantScheme = DEFAULT_SCHEME,
                      text: str = DEFAULT_EVAL, calib_text: str = DEFAULT_CALIB,
                      calib_samples: int = 4, calib_length: int = 128,
                      progress: bool = False) -> dict:
    """One real linear layer as MixPE images: its weight quantized with the scheme's
    QoQ weight component (calibrated on `calib_text`), fed with the activations the
    model produces for the first `tokens` (default config.rows) tokens of a fixed
    window of `text`. config.K must equal the layer's in_features and its bits/group
    the scheme's; N must be a multiple of config.cols. `channels` keeps only the
    first output channels of the quantized layer (a multiple of config.cols; the
    whole layer is quantized and calibrated first, so the slice's codes equal the
    full layer's). Returns the manifest, with 'source' (model, layer, scheme, text)
    also written to source.json."""
    from .weightq import Calibration, quantize_weight

    sch = get_scheme(scheme)
    _need_qoq(sch)
    expect_type("config", config, MixPEConfig)
    ws = sch.weight
    if (ws.bits, ws.group) != (config.bits, config.group):
        raise QuantflowError(f"scheme {sch.name!r} quantizes weights to {ws.bits} bits, group "
                             f"{ws.group}, but config has bits={config.bits}, group="
                             f"{config.group}; make them equal")
    M = config.rows if tokens is None else int(tokens)
    if M < 1 or M % config.rows:
        raise QuantflowError(f"tokens={M} must be a positive multiple of config.rows="
                             f"{config.rows}")
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    W = dict(lm.model.named_modules()).get(
        layer if layer.startswith("model.") else "model." + layer)
    if W is None or not isinstance(W, torch.nn.Linear):
        capture_layer_inputs(lm.model, layer, torch.zeros(1, 1, dtype=torch.int64))  # raises
    N, K = W.weight.shape
    if K != config.K:
        raise QuantflowError(f"{layer} has K={K} in_features but config.K={config.K}; build "
                             f"the config with K={K}")
    if N % config.cols:
        raise QuantflowError(f"{layer} has N={N} outputs, not a multiple of config.cols="
                             f"{config.cols}; pick cols dividing {N}")
    keep = N if channels is None else int(channels)
    if not 1 <= keep <= N or keep % config.cols:
        raise QuantflowError(f"channels={channels} must be a multiple of config.cols="
                             f"{config.cols} in [{config.cols}, {N}] ({layer} has N={N})")
    cal_ids = calibration_tokens(lm.tokenizer, text=calib_text, samples=calib_samples,
                                 length=calib_length)
    Xc = capture_layer_inputs(lm.model, layer, cal_ids)
    res = quantize_weight(W.weight.detach(), scheme=ws,
                          calib=Calibration.from_activations(Xc, name=layer), name=layer)
    ev = evaluation_tokens(lm.tokenizer, text=text, windows=1, length=max(M, 2))
    X = capture_layer_inputs(lm.model, layer, ev)[:M]
    if res.input_scale is not None:  # AWQ: the layer consumes x / s (folded upstream)
        X = X / res.input_scale.unsqueeze(0)
    a, s_a = quantize_act(X)
    qw = res.qoq
    if keep < N:
        qw = QoQWeights(q=qw.q[:keep], s1=qw.s1[:keep], s2=qw.s2[:keep], z=qw.z[:keep],
                        bits=qw.bits, group=qw.group)
    man = write_mixpe_images(outdir, config, weights=qw, a=a, s_a=s_a)
    source = {"model": lm.name, "layer": layer, "scheme": sch.name,
              "weight_scheme": asdict(ws), "text": text, "tokens": M,
              "channels": keep, "layer_shape": [N, K],
              "token_ids": ev[0, :M].tolist(), "calibration": calib_text,
              "awq_scaled_inputs": res.input_scale is not None}
    tmp = Path(outdir) / ".source.json.tmp"
    tmp.write_text(json.dumps(source, indent=2) + "\n")
    tmp.replace(Path(outdir) / "source.json")
    man = dict(man)
    man["source"] = source
    return man
