"""Compile a quantized Llama into the model image the integer model and the
accelerator core read (docs/integer-model.md):

    python -m quantflow compile --model smollm2 --scheme w4a8kv4-g64 \
        --out build/compiled/smollm2-w4a8kv4-g64 [--context 1024] [--head-bits 8]

The image directory (written beside its destination and renamed into place):
  image.bin      every tensor of golden.decoder.image_spec, little-endian, each at
                 a 64-byte aligned offset of one flat memory map
  manifest.json  format, model, scheme, the DecoderConfig, and per tensor its
                 offset, bytes, shape, dtype and sha256; the sha256 of image.bin

`load_image` reads it back (one read, numpy views, checksums verified) into
(DecoderConfig, tensors): golden.decoder.IntegerDecoder runs from that alone.

What the compile does, per tensor:
  linears     QoQ codes, s2, z of the scheme's weights (quantflow.fakequant), and
              s1 / 127 as a 15-bit mantissa + one shift per linear (golden.sfu)
  norms       RMSNorm weights after the SmoothQuant/AWQ folds, 16-bit mantissa +
              one exponent per norm
  fracs       per layer, the X32 fraction bits of q, k (after RoPE), v, up, the
              SwiGLU product and the attention output: the largest that holds
              HEADROOM (4) times the calibration text's max (larger values saturate)
  frac_k/v    the same for the KV4 unit's x_bits input per layer and KV head
  embed       INT8 per row and group of embed_group, 15-bit scale mantissas
  lm_head     QoQ codes at --head-bits (a separate tensor even when tied)
  rope        cos / sin tables of the model's own inverse frequencies
  sigmoid     the SFU's SiLU table
"""
from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from golden.decoder import image_spec
from golden.decoder_config import ACT_FRAC_MAX, FRAC_SLOTS, LINEARS, DecoderConfig
from golden.kv4_attention_config import KV4Config
from golden.sfu import embed_quantize, norm_weight, rope_table, silu_table, weight_scale
from golden.sfu_config import X_BITS, SFUConfig
from quattro_fs import build_root, replace_dir

from .errors import QuantflowError
from .fakequant import CALIB_BATCH, QuantizedModel, quantize_model
from .models.llama import LlamaForCausalLM, apply_rope
from .models.loaders import LoadedModel, load_model
from .qoq import quantize_qoq
from .schemes import DEFAULT_SCHEME, QuantScheme, get_scheme
from .text import CALIB_LENGTH, CALIB_SAMPLES, DEFAULT_CALIB, calibration_tokens

__all__ = ["IMAGE_FORMAT", "IMAGE_FORMAT_VERSION", "compile_model", "compile_quantized",
           "load_image", "decoder_config", "compiled_dir", "image_layout"]

IMAGE_FORMAT = "quattro-model-image"
IMAGE_FORMAT_VERSION = 1
#: Tensor offsets in image.bin are multiples of this (an AXI burst / cache line).
ALIGN = 64
_FIX = "recompile it with `python -m quantflow compile`"


def compiled_dir(model: str, scheme: str) -> Path:
    """Where the compiled image of `model` under `scheme` goes: build/compiled/<model>-<scheme>."""
    return build_root() / "compiled" / f"{model}-{scheme}"


# --------------------------------------------------------------------------- checks
def _check_scheme(s: QuantScheme) -> None:
    """The integer model runs QoQ weights, A8 activations and the KV4 unit's scheme."""
    why = None
    if s.weight is None or s.weight.method != "qoq":
        why = "QoQ weights (the MixPE format)"
    elif s.act is None or s.act.bits != 8:
        why = "A8 activations"
    elif s.kv is None or s.kv.bits != 4 or s.kv.sink_tokens or not s.kv.integer_zero:
        why = "the KV4 unit's cache (4 bits, integer zero points, no sink tokens)"
    if why:
        raise QuantflowError(f"scheme {s.name!r} cannot run on the integer model: it needs "
                             f"{why}; use w4a8kv4-g64 or w4a8kv4-g64-plain")


def decoder_config(model: LlamaForCausalLM, scheme: QuantScheme, *, context: int,
                   head_bits: int, sfu: SFUConfig | None = None) -> DecoderConfig:
    """The DecoderConfig of a Llama model under `scheme` (refuses what the KV4 unit
    or MixPE cannot run, with the reason)."""
    _check_scheme(scheme)
    c = model.config
    try:
        kv4 = KV4Config(head_dim=c.head_dim, heads=c.kv_groups, max_t=context,
                        rotate=bool(scheme.kv.hadamard), recent=scheme.kv.window)
        return DecoderConfig(
            vocab=c.vocab_size, hidden=c.hidden_size, intermediate=c.intermediate_size,
            layers=c.num_hidden_layers, heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads, head_dim=c.head_dim, max_context=context,
            rms_eps=float(c.rms_norm_eps), w_bits=scheme.weight.bits,
            group=scheme.weight.group, head_bits=head_bits, head_group=scheme.weight.group,
            sfu=sfu or SFUConfig(), kv4=kv4)
    except (TypeError, ValueError) as e:
        raise QuantflowError(f"this model/scheme cannot be compiled for the integer model: "
                             f"{e}") from None


# --------------------------------------------------------------------------- tensors
def _linear_tensors(prefix: str, qw) -> dict[str, np.ndarray]:
    S1, e = weight_scale(qw.s1.to(torch.float32))
    return {f"{prefix}.q": qw.q.numpy().astype(np.uint8),
            f"{prefix}.s2": qw.s2.numpy().astype(np.uint8),
            f"{prefix}.z": qw.z.numpy().astype(np.uint8),
            f"{prefix}.S1": S1.numpy().astype(np.int32),
            f"{prefix}.e": np.array([e], dtype=np.int32)}


def _norm_tensors(prefix: str, w: torch.Tensor) -> dict[str, np.ndarray]:
    NW, e = norm_weight(w.detach().to(torch.float32))
    return {f"{prefix}.w": NW.numpy().astype(np.int16), f"{prefix}.e": np.array([e], np.int32)}


#: Calibration maxima are scaled by this before a format is chosen: two bits of
#: headroom, because text the calibration never saw (and the integer model's own
#: rounding) can exceed them, and saturation costs far more than a lost low bit.
HEADROOM = 4.0


def _frac(amax: float, bits: int, cap: int) -> int:
    """Largest fraction-bit count f <= cap with HEADROOM * amax * 2**f inside
    signed `bits`."""
    lim = (1 << (bits - 1)) - 1
    if amax <= 0.0:
        return cap
    top = HEADROOM * amax
    f = math.floor(math.log2(lim / top))
    while top * 2.0 ** f > lim:
        f -= 1
    return min(f, cap)


@torch.no_grad()
def calibrate_fracs(model: LlamaForCausalLM, calib_ids: torch.Tensor,
                    config: DecoderConfig) -> list[dict]:
    """Per layer, from the quantized model on the calibration tokens: the X32
    fraction bits of every FRAC_SLOTS activation (q and k after RoPE) and the KV4
    unit's input fractions frac_k / frac_v per KV head (max |K| after RoPE, max |V|),
    each with HEADROOM."""
    c = model.config
    Hkv, D = c.num_key_value_heads, c.head_dim
    n = c.num_hidden_layers
    amax = {slot: torch.zeros(n) for slot in FRAC_SLOTS}
    kmax, vmax = torch.zeros(n, Hkv), torch.zeros(n, Hkv)
    T = calib_ids.shape[1]
    cos, sin = model.rope(T)

    def heads(out, H):
        return out.view(out.shape[0], T, H, D).transpose(1, 2)          # [B, H, T, D]

    def rec(i, slot):
        def hook(mod, args, out):
            x = args[0] if slot in ("attn", "swiglu") else out
            if slot in ("q_proj", "k_proj"):
                x = apply_rope(heads(x, x.shape[-1] // D), cos, sin)
            if slot == "k_proj":
                kmax[i] = torch.maximum(kmax[i], x.abs().amax(dim=(0, 2, 3)))
            if slot == "v_proj":
                vmax[i] = torch.maximum(vmax[i], heads(x, Hkv).abs().amax(dim=(0, 2, 3)))
            amax[slot][i] = max(float(amax[slot][i]), float(x.abs().max()))
        return hook

    hooks = []
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        mods = {"q_proj": a.q_proj, "k_proj": a.k_proj, "v_proj": a.v_proj,
                "up_proj": m.up_proj}
        for slot, mod in mods.items():
            hooks.append(mod.register_forward_hook(rec(i, slot)))
        hooks.append(a.o_proj.register_forward_hook(rec(i, "attn")))
        hooks.append(m.down_proj.register_forward_hook(rec(i, "swiglu")))
    try:
        # CALIB_BATCH sequences per forward: every hooked maximum is per element, and
        # the fake-quant model quantizes per token (A8) and per token and head (KV)
        for b in range(0, calib_ids.shape[0], CALIB_BATCH):
            model.hidden_states(calib_ids[b:b + CALIB_BATCH])
    finally:
        for h in hooks:
            h.remove()
    xb = config.kv4.x_bits
    return [{"fracs": [_frac(float(amax[s][i]), X_BITS, ACT_FRAC_MAX) for s in FRAC_SLOTS],
             "frac_k": [_frac(float(x), xb, ACT_FRAC_MAX) for x in kmax[i]],
             "frac_v": [_frac(float(x), xb, ACT_FRAC_MAX) for x in vmax[i]]}
            for i in range(n)]


def build_tensors(qm: QuantizedModel, config: DecoderConfig, calib_ids: torch.Tensor,
                  *, progress: bool = False) -> dict[str, np.ndarray]:
    """Every image tensor of the quantized Llama `qm` (module docstring)."""
    m = qm.model
    c = config
    codes, S, e = embed_quantize(m.model.embed_tokens.weight.detach(), c.embed_group)
    out: dict[str, np.ndarray] = {"embed.codes": codes.numpy().astype(np.int8),
                                  "embed.S": S.numpy().astype(np.int32),
                                  "embed.e": np.array([e], dtype=np.int32)}
    out.update(_linear_tensors("lm_head", quantize_qoq(m.lm_head.weight.detach(),
                                                       bits=c.head_bits, group=c.head_group)))
    fracs = calibrate_fracs(m, calib_ids, c)
    for i, layer in enumerate(m.model.layers):
        p = f"layers.{i}"
        out.update(_norm_tensors(f"{p}.input_norm", layer.input_layernorm.weight))
        out.update(_norm_tensors(f"{p}.post_norm", layer.post_attention_layernorm.weight))
        for lin in LINEARS:
            part = "self_attn" if lin.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) \
                else "mlp"
            out.update(_linear_tensors(f"{p}.{lin}", qm.qoq(f"{p}.{part}.{lin}")))
        for name in ("fracs", "frac_k", "frac_v"):
            out[f"{p}.{name}"] = np.array(fracs[i][name], dtype=np.int32)
    out.update(_norm_tensors("norm", m.model.norm.weight))
    cos, sin = rope_table(m.config.rope_inv_freq().tolist(), c.max_context)
    out["rope.cos"] = cos.numpy().astype(np.int16)
    out["rope.sin"] = sin.numpy().astype(np.int16)
    out["sfu.sigmoid"] = silu_table(c.sfu).numpy().astype(np.int32)
    return out


# --------------------------------------------------------------------------- image file
def image_layout(config: DecoderConfig) -> tuple[dict, int]:
    """(name -> {offset, bytes, shape, dtype}, image bytes) of every tensor of
    golden.decoder.image_spec, as image.bin holds them: in spec order, each at the
    next ALIGN-aligned offset. Needs no data (quantflow.shape_image lowers a model
    from its shape alone with it)."""
    entries, off = {}, 0
    for name, (shape, dtype) in image_spec(config).items():
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        off = -(-off // ALIGN) * ALIGN
        entries[name] = {"offset": off, "bytes": nbytes, "shape": list(shape),
                         "dtype": dtype}
        off += nbytes
    return entries, off


def _layout(config: DecoderConfig, tensors: dict[str, np.ndarray]) -> tuple[dict, int]:
    entries, total = image_layout(config)
    for name, e in entries.items():
        a = tensors[name]
        if list(a.shape) != e["shape"] or a.dtype != np.dtype(e["dtype"]):
            raise QuantflowError(f"internal: {name} is {a.dtype}{list(a.shape)}, the image "
                                 f"spec says {e['dtype']}{e['shape']}")
    return entries, total


def write_image(outdir: Path | str, config: DecoderConfig, tensors: dict[str, np.ndarray],
                meta: dict) -> dict:
    """image.bin + manifest.json into `outdir`, atomically; returns the manifest."""
    entries, total = _layout(config, tensors)

    def fill(tmp: Path) -> dict:
        buf = bytearray(total)
        for name, e in entries.items():
            raw = np.ascontiguousarray(tensors[name]).astype(
                np.dtype(e["dtype"]).newbyteorder("<"), copy=False).tobytes()
            buf[e["offset"]:e["offset"] + len(raw)] = raw
            e["sha256"] = hashlib.sha256(raw).hexdigest()
        (tmp / "image.bin").write_bytes(buf)
        manifest = {"format": IMAGE_FORMAT, "format_version": IMAGE_FORMAT_VERSION, **meta,
                    "decoder": config.as_dict(), "align": ALIGN, "image_bytes": total,
                    "image_sha256": hashlib.sha256(buf).hexdigest(), "tensors": entries}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest

    return replace_dir(outdir, fill)


def load_image(outdir: Path | str) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    """(DecoderConfig, tensors) of a compiled image, every checksum verified."""
    d = Path(outdir)
    mpath, ipath = d / "manifest.json", d / "image.bin"
    if not mpath.is_file() or not ipath.is_file():
        raise QuantflowError(f"{d} is not a compiled model image (manifest.json and "
                             f"image.bin expected); {_FIX}")
    try:
        man = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise QuantflowError(f"{mpath} is not valid JSON ({e}); {_FIX}") from None
    if man.get("format") != IMAGE_FORMAT or man.get("format_version") != IMAGE_FORMAT_VERSION:
        raise QuantflowError(f"{d} holds format {man.get('format')!r} version "
                             f"{man.get('format_version')!r}, expected {IMAGE_FORMAT!r} "
                             f"version {IMAGE_FORMAT_VERSION}; {_FIX}")
    try:
        config = DecoderConfig.from_dict(man["decoder"])
    except (KeyError, TypeError, ValueError) as e:
        raise QuantflowError(f"{mpath}: bad decoder configuration ({e}); {_FIX}") from None
    raw = ipath.read_bytes()
    if len(raw) != man.get("image_bytes"):
        raise QuantflowError(f"{ipath} has {len(raw)} bytes, the manifest says "
                             f"{man.get('image_bytes')}; {_FIX}")
    spec = image_spec(config)
    entries = man.get("tensors", {})
    missing = [n for n in spec if n not in entries]
    if missing:
        raise QuantflowError(f"{d}: the manifest lacks tensor(s) {missing[:3]}; {_FIX}")
    tensors = {}
    for name, (shape, dtype) in spec.items():
        e = entries[name]
        if e["shape"] != list(shape) or e["dtype"] != dtype:
            raise QuantflowError(f"{d}: tensor {name} is {e['dtype']}{e['shape']}, this "
                                 f"configuration needs {dtype}{list(shape)}; {_FIX}")
        chunk = raw[e["offset"]:e["offset"] + e["bytes"]]
        if hashlib.sha256(chunk).hexdigest() != e.get("sha256"):
            raise QuantflowError(f"{d}: tensor {name} fails its checksum (the image was "
                                 f"altered or truncated); {_FIX}")
        a = np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        tensors[name] = torch.from_numpy(a.astype(np.dtype(dtype)))
    return config, tensors


# --------------------------------------------------------------------------- entry
def compile_quantized(qm: QuantizedModel, calib_ids: torch.Tensor, outdir: Path | str, *,
                      context: int, head_bits: int = 8, model_name: str = "model",
                      sfu: SFUConfig | None = None) -> dict:
    """Write the image of an already quantized Llama; returns the manifest."""
    if not isinstance(qm.model, LlamaForCausalLM):
        raise QuantflowError(f"the integer model runs Llama-architecture decoders, got "
                             f"{type(qm.model).__name__}")
    config = decoder_config(qm.model, qm.scheme, context=context, head_bits=head_bits, sfu=sfu)
    tensors = build_tensors(qm, config, calib_ids)
    return write_image(outdir, config, tensors,
                       {"model": model_name, "scheme": qm.scheme.name,
                        "scheme_label": qm.scheme.label})


def compile_model(model: str | LoadedModel = "smollm2", scheme: str | QuantScheme = DEFAULT_SCHEME,
                  *, out: Path | str | None = None, context: int = 1024, head_bits: int = 8,
                  calib_text: str = DEFAULT_CALIB, calib_samples: int = CALIB_SAMPLES,
                  calib_length: int = CALIB_LENGTH,
                  progress: bool = True, log: Callable[[str], object] = print) -> dict:
    """Load, quantize (fake-quant flow, calibrated) and compile `model`; returns the
    manifest with the compile's wall/CPU seconds and peak memory."""
    t0, c0 = time.perf_counter(), time.process_time()
    sch = get_scheme(scheme)
    _check_scheme(sch)
    own = not isinstance(model, LoadedModel)
    lm = load_model(model, progress=progress) if own else model
    if not isinstance(lm.model, LlamaForCausalLM):
        raise QuantflowError(f"the integer model runs Llama-architecture decoders; "
                             f"{lm.name!r} is {lm.arch!r}")
    cal = calibration_tokens(lm.tokenizer, text=calib_text, samples=calib_samples,
                             length=calib_length)
    # a model loaded here is quantized in place: no second copy in memory
    qm = quantize_model(lm, sch, calib_ids=cal, progress=progress, keep_reference=False,
                        copy_model=not own)
    outdir = Path(out) if out is not None else compiled_dir(lm.name, sch.name)
    man = compile_quantized(qm, cal, outdir, context=context, head_bits=head_bits,
                            model_name=lm.name)
    stats = {"seconds": round(time.perf_counter() - t0, 2),
             "cpu_seconds": round(time.process_time() - c0, 2),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
             "quantize_seconds": round(qm.seconds.get("quantize", 0.0), 2)}
    log(f"compiled {lm.name} {sch.name} -> {outdir} ({man['image_bytes'] / 2**20:.1f} MiB, "
        f"{len(man['tensors'])} tensors) in {stats['seconds']} s")
    return {**man, "path": str(outdir), "stats": stats}
