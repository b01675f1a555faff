"""Fake-quantized models: a float model transformed and quantized by a QuantScheme
so that PyTorch measures its accuracy, plus the exact integer path of one layer.

Pipeline of quantize_model for a Llama (quantflow.models.llama), in this order,
each fold exact in float arithmetic (tests check the output is unchanged):

0. Residual rotation (QuantScheme.rotation, quantflow.rotation): the RMSNorm weights
   fold into the linears that read them (the LM head is untied and takes the final
   norm), then the residual stream is rotated by an orthogonal Q: embedding E Q,
   q/k/v/gate/up/LM head W Q, o_proj/down_proj Q^T W. With RotationScheme.keep the
   channels with the most energy at the norms' inputs (calibration pass) stay out
   of the rotation and keep their norm weights. Everything below then works in the
   rotated frame (statistics, smoothing and AWQ scales fold on top of it).
1. Hadamard (KVScheme.hadamard): v_proj rows of each KV head become H^T W_v[h] and
   o_proj's columns of each query head W_o[:, h] H, so V is cached rotated and the
   rotation is undone inside o_proj; Q and K are rotated by H after RoPE at run time
   (q.k is unchanged because H is orthonormal).
2. One calibration pass records max|K| per channel (after RoPE) and max|x| per
   input channel of every linear.
3. SmoothAttention (KVScheme.smooth_attention, DESIGN §3.7): lambda = max|K|^0.5,
   channel i and i + D/2 share lambda (so RoPE still commutes), one lambda per KV
   head shared by its GQA group of query heads; k_proj rows / lambda, q_proj rows
   * lambda.
4. SmoothQuant (ActScheme.smooth_alpha): s_j = max|x_j|^a / max|W_j|^(1-a) per
   input channel; x / s folds into input_layernorm (q/k/v), post_attention_layernorm
   (gate/up), v_proj rows (o_proj, s tied across a GQA group) and up_proj rows
   (down_proj); the consumers' columns are multiplied by s.
5. Weights: quantflow.weightq.quantize_llama_weights (sequential, block by block).
6. A8: every block linear's input is fake-quantized per token (DESIGN §3.1);
   KV: K and V after RoPE (and rotation) per token and head (§3.7) by a KVQuantizer
   (LlamaAttention.kv_quant); with KVScheme.window each query reads its last
   `window` tokens from 8-bit copies (levels 240), as the KV4 attention unit does.
lm_head and the embedding stay float (as in QServe).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn

from golden.formats import ACT_QMAX
from golden.kv4_attention_config import KV8_LEVELS
from golden.mixpe import float_reference, mixpe_acc
from golden.mixpe_config import MixPEConfig
from golden.validate import check_int

from .errors import QuantflowError
from .models.llama import LlamaForCausalLM
from .models.loaders import LoadedModel, linear_layers
from .qoq import QoQWeights, quantize_act
from .rotation import massive_channels, rotate_model
from .schemes import KVScheme, QuantScheme, get_scheme

if TYPE_CHECKING:
    from .weightq import WeightQuantOptions

__all__ = ["fake_quant_act", "quantize_kv", "fake_quant_kv", "KVQuantizer", "hadamard",
           "fold_hadamard_v", "collect_llama_stats", "smooth_attention_lambdas",
           "fold_smooth_attention", "fold_smoothquant", "install_act_quant",
           "IntegerLinear", "use_integer_path", "QuantizedModel", "quantize_model",
           "set_submodule"]


# --------------------------------------------------------------------------- A8
def fake_quant_act(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric INT8 of the last dim, dequantized: the same numbers as
    quantflow.quantize_act (a * s_a), for any leading dims."""
    s = x.abs().amax(dim=-1, keepdim=True) / ACT_QMAX
    zero = s == 0
    a = torch.clamp(torch.round(x / torch.where(zero, 1.0, s)), -ACT_QMAX, ACT_QMAX)
    return torch.where(zero, 0.0, a) * s


def _act_hook(module, args):
    return (fake_quant_act(args[0]),) + tuple(args[1:])


def install_act_quant(model: nn.Module, names: Iterable[str]) -> list:
    """Fake-quantize the inputs of the named linears; returns the hook handles."""
    mods = dict(model.named_modules())
    return [mods[n].register_forward_pre_hook(_act_hook) for n in names]


# --------------------------------------------------------------------------- KV4
def quantize_kv(x: torch.Tensor, *, bits: int = 4, sink_tokens: int = 0, sink_bits: int = 8,
                integer_zero: bool = True, levels: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token, per head asymmetric quantization over the last dim (head_dim) of
    x [..., T, D] (DESIGN §3.7): scale = (max - min) / levels, zero =
    clamp(round(-min / scale), 0, levels) (unrounded, unclamped if not
    integer_zero), codes = clamp(round(x / scale) + zero, 0, levels), with
    levels = 2**bits - 1 unless `levels` is given (the KV4 unit's 8-bit window uses
    KV8_LEVELS = 240). The first `sink_tokens` tokens use 2**sink_bits - 1 levels.
    Returns (codes, scale, zero, levels [T])."""
    if levels is None:
        levels = (1 << bits) - 1
    else:
        check_int("levels", levels, 1)
    T = x.shape[-2]
    levels = torch.full((T, 1), float(levels))
    if sink_tokens:
        levels[:min(sink_tokens, T)] = float((1 << sink_bits) - 1)
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    # a constant token (hi == lo) is exact with scale |lo| (codes 0/1) or 1 when all 0
    const = torch.where(lo != 0, lo.abs(), torch.ones_like(lo))
    scale = torch.where(hi > lo, (hi - lo) / levels, const)
    zero = -lo / scale
    if integer_zero:
        zero = torch.minimum(torch.clamp(torch.round(zero), min=0), levels)
    q = torch.minimum(torch.clamp(torch.round(x / scale) + zero, min=0), levels)
    return q, scale, zero, levels.squeeze(-1)


def fake_quant_kv(x: torch.Tensor, **kw: Any) -> torch.Tensor:
    """quantize_kv's (q - zero) * scale: x with its per-token KV quantization error."""
    q, scale, zero, _ = quantize_kv(x, **kw)
    return (q - zero) * scale


class KVQuantizer:
    """LlamaAttention.kv_quant: fake-quantizes K and V [B, Hkv, T, D] (the cache at
    kv.bits). With kv.window > 0 it also gives the 8-bit copies recent(k, v) that the
    attention reads for each query's last `window` tokens (quantflow.models.llama:
    window_attention): the same per-token formula with KV8_LEVELS = 240 levels, i.e.
    the KV4 unit's append path, which keeps both codes of a token (golden.kv4_attention)."""

    def __init__(self, kv: KVScheme):
        self.kw = dict(bits=kv.bits, sink_tokens=kv.sink_tokens, sink_bits=kv.sink_bits,
                       integer_zero=kv.integer_zero)
        self.window = kv.window

    def __call__(self, k, v):
        return fake_quant_kv(k, **self.kw), fake_quant_kv(v, **self.kw)

    def recent(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V fake-quantized at 8 bits (KV8_LEVELS), as the recent window keeps them."""
        kw = dict(levels=KV8_LEVELS, integer_zero=self.kw["integer_zero"])
        return fake_quant_kv(k, **kw), fake_quant_kv(v, **kw)


# --------------------------------------------------------------------------- Hadamard
def hadamard(n: int) -> torch.Tensor:
    """Orthonormal, symmetric Walsh-Hadamard matrix [n, n] (Sylvester; n a power of 2)."""
    if n < 1 or n & (n - 1):
        raise QuantflowError(f"a Walsh-Hadamard rotation needs a power-of-two head size, "
                             f"got {n}; disable hadamard in the KV scheme")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return (H / math.sqrt(n)).to(torch.float32)


def _llama_layers(model):
    if not isinstance(model, LlamaForCausalLM):
        raise QuantflowError(f"KV quantization, SmoothAttention, SmoothQuant folding and "
                             f"residual rotations need a Llama model (quantflow.models.llama), got "
                             f"{type(model).__name__}; use a weight-only or A8-without-"
                             f"smoothing scheme")
    return model.model.layers


@torch.no_grad()
def fold_hadamard_v(model: LlamaForCausalLM) -> torch.Tensor:
    """Rotate V per KV head by H (folded into v_proj) and undo it in o_proj; the
    float output is unchanged. Returns H (also used for Q and K at run time)."""
    cfg = model.config
    D, Hkv, Hq = cfg.head_dim, cfg.num_key_value_heads, cfg.num_attention_heads
    R = hadamard(D)
    for layer in _llama_layers(model):
        a = layer.self_attn
        Wv = a.v_proj.weight.data.view(Hkv, D, -1)
        a.v_proj.weight.data.copy_(torch.einsum("de,hdk->hek", R, Wv).reshape(Hkv * D, -1))
        Wo = a.o_proj.weight.data.view(-1, Hq, D)
        a.o_proj.weight.data.copy_((Wo @ R).reshape(-1, Hq * D))
    return R


# --------------------------------------------------------------------------- calibration
#: Calibration sequences per forward of the statistics passes (collect_llama_stats,
#: quantflow.compile.calibrate_fracs): every statistic is a per-element maximum, so
#: batching changes nothing but the matmuls' float rounding; it bounds the
#: activations held at once
CALIB_BATCH = 8


@torch.no_grad()
def collect_llama_stats(model: LlamaForCausalLM, calib_ids: torch.Tensor, *,
                        progress: bool = True) -> dict:
    """One pass over calib_ids [B, T]: {"kmax": [L] of [Hkv, D] max|K| after RoPE,
    "xmax": {linear name: [K] max|x| per input channel}} (names 'layers.i.*')."""
    layers = _llama_layers(model)
    xmax: dict[str, torch.Tensor] = {}
    kmax: list = [None] * len(layers)
    hooks = []

    def rec_x(name):
        def hook(mod, args):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            xmax[name] = m if name not in xmax else torch.maximum(xmax[name], m)
        return hook

    for name, lin in model.block_linears().items():
        hooks.append(lin.register_forward_pre_hook(rec_x(name)))
    saved = [layer.self_attn.kv_quant for layer in layers]

    def rec_k(i):
        def f(k, v):
            m = k.abs().amax(dim=(0, 2))
            kmax[i] = m if kmax[i] is None else torch.maximum(kmax[i], m)
            return k, v
        return f

    for i, layer in enumerate(layers):
        layer.self_attn.kv_quant = rec_k(i)
    try:
        it = range(0, calib_ids.shape[0], CALIB_BATCH)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="calibration stats", unit="batch", leave=False)
        for b in it:
            model.hidden_states(calib_ids[b:b + CALIB_BATCH])
    finally:
        for h in hooks:
            h.remove()
        for layer, kv in zip(layers, saved):
            layer.self_attn.kv_quant = kv
    return {"kmax": kmax, "xmax": xmax}


def smooth_attention_lambdas(kmax: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    """lambda [Hkv, D] = max|K|^alpha with channel i and i + D/2 sharing the larger
    max (RoPE rotates those two together)."""
    D = kmax.shape[-1]
    pair = torch.maximum(kmax[..., :D // 2], kmax[..., D // 2:])
    lam = pair.clamp(min=1e-5).pow(alpha)
    return torch.cat([lam, lam], dim=-1)


@torch.no_grad()
def fold_smooth_attention(model: LlamaForCausalLM, lambdas: Iterable[torch.Tensor]) -> None:
    """K channels / lambda (k_proj rows), Q channels * lambda of the KV head their
    GQA group reads (q_proj rows): q.k and RoPE are unchanged."""
    cfg = model.config
    D, Hkv, g = cfg.head_dim, cfg.num_key_value_heads, cfg.kv_groups
    for layer, lam in zip(_llama_layers(model), lambdas):
        a = layer.self_attn
        a.k_proj.weight.data /= lam.reshape(Hkv * D, 1)
        a.q_proj.weight.data *= lam.repeat_interleave(g, dim=0).reshape(-1, 1)


def _sq_scale(xmax: torch.Tensor, ws, alpha: float) -> torch.Tensor:
    wmax = torch.stack([w.abs().amax(0) for w in ws]).amax(0)
    s = xmax.clamp(min=1e-5).pow(alpha) / wmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def fold_smoothquant(model: LlamaForCausalLM, xmax: dict, alpha: float) -> dict:
    """SmoothQuant migration (module docstring step 4); returns {linear group: s}."""
    cfg = model.config
    D, Hq, g = cfg.head_dim, cfg.num_attention_heads, cfg.kv_groups
    tie = (torch.arange(Hq) // g).repeat_interleave(D) * D + torch.arange(D).repeat(Hq)
    scales = {}
    for i, layer in enumerate(_llama_layers(model)):
        a, m = layer.self_attn, layer.mlp
        p = f"layers.{i}"
        # q/k/v after input_layernorm
        s = _sq_scale(xmax[f"{p}.self_attn.q_proj"],
                      [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], alpha)
        layer.input_layernorm.weight.data /= s
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            lin.weight.data *= s
        scales[f"{p}.qkv"] = s
        # o_proj after v_proj: one scale per v channel (shared by its GQA group)
        xo = xmax[f"{p}.self_attn.o_proj"]
        nv = cfg.num_key_value_heads * D
        xv = torch.zeros(nv).scatter_reduce(0, tie, xo, "amax")
        wv = torch.zeros(nv).scatter_reduce(0, tie, a.o_proj.weight.abs().amax(0), "amax")
        sv = (xv.clamp(min=1e-5).pow(alpha) / wv.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
        a.v_proj.weight.data /= sv.unsqueeze(1)
        a.o_proj.weight.data *= sv[tie]
        scales[f"{p}.o"] = sv
        # gate/up after post_attention_layernorm
        s = _sq_scale(xmax[f"{p}.mlp.gate_proj"], [m.gate_proj.weight, m.up_proj.weight], alpha)
        layer.post_attention_layernorm.weight.data /= s
        m.gate_proj.weight.data *= s
        m.up_proj.weight.data *= s
        scales[f"{p}.gate_up"] = s
        # down_proj after up_proj (silu(gate) * up is linear in up)
        s = _sq_scale(xmax[f"{p}.mlp.down_proj"], [m.down_proj.weight], alpha)
        m.up_proj.weight.data /= s.unsqueeze(1)
        m.down_proj.weight.data *= s
        scales[f"{p}.down"] = s
    return scales


# --------------------------------------------------------------------------- integer path
class IntegerLinear(nn.Module):
    """A QoQ linear computed through golden.mixpe: per-token INT8 activations
    (quantflow.quantize_act), acc = mixpe_acc(a, q, s2, z) (int32, shift-add form),
    y = acc * s1[n] * s_a[m] (golden.mixpe.float_reference), + bias."""

    def __init__(self, qoq: QoQWeights, bias: torch.Tensor | None = None, *, chunk: int = 256):
        super().__init__()
        self.qoq = qoq
        self.bias = bias
        self.chunk = chunk
        N, K = qoq.shape
        self.config = MixPEConfig(bits=qoq.bits, group=qoq.group, rows=1, cols=8, K=K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W.T (+ bias) by golden.mixpe.mixpe_acc on A8-quantized x, chunk by chunk."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = []
        for i in range(0, x2.shape[0], self.chunk):  # bounds golden's [M, N, G] int64
            a, s_a = quantize_act(x2[i:i + self.chunk])
            acc = mixpe_acc(a, self.qoq.q, self.qoq.s2, self.qoq.z, self.config)
            out.append(float_reference(acc, self.qoq.s1, s_a))
        y = torch.cat(out).reshape(*lead, -1)
        return y + self.bias if self.bias is not None else y


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule `name` of `model` by `new`; returns the old one."""
    parent, _, leaf = name.rpartition(".")
    p = model.get_submodule(parent) if parent else model
    old = getattr(p, leaf)
    setattr(p, leaf, new)
    return old


# --------------------------------------------------------------------------- model
@dataclass(kw_only=True)
class QuantizedModel:
    """A fake-quantized copy of a model. weights: {block linear name ('layers.i.…'):
    quantflow.weightq.WeightQuantResult}; w_ref: the float weight each linear
    approximates in the transformed frame (for per-layer SQNR); kv_lambda: [L] of
    SmoothAttention lambdas [Hkv, D]; rotation: the KV Hadamard matrix or None;
    residual_rotation: the residual stream's Q [hidden, hidden] (float64) or None."""

    model: nn.Module
    scheme: QuantScheme
    weights: dict = field(default_factory=dict)
    w_ref: dict = field(default_factory=dict)
    kv_lambda: list | None = None
    rotation: torch.Tensor | None = None
    residual_rotation: torch.Tensor | None = None
    smooth_scales: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def qoq(self, name: str) -> QoQWeights:
        """The QoQ weights of one linear (full or short name); QuantflowError if it has none."""
        name = _short(name)
        r = self.weights.get(name)
        if r is None or r.qoq is None:
            raise QuantflowError(f"layer {name!r} has no QoQ weights in scheme "
                                 f"{self.scheme.name!r}; known layers: "
                                 f"{sorted(self.weights)[:4]}... (method must be qoq)")
        return r.qoq


def _short(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def use_integer_path(qm: QuantizedModel, name: str) -> IntegerLinear:
    """Run linear `name` ('layers.0.self_attn.q_proj') through golden.mixpe instead of
    the fake-quant float path; returns the IntegerLinear put in its place."""
    if qm.scheme.act is None:
        raise QuantflowError("the integer path needs A8 activations; use a scheme with act")
    short = _short(name)
    lin = IntegerLinear(qm.qoq(short))
    set_submodule(qm.model, "model." + short if isinstance(qm.model, LlamaForCausalLM)
                  else short, lin)
    return lin


def _calib_needed(scheme: QuantScheme) -> bool:
    return bool((scheme.weight and scheme.weight.needs_calibration)
                or (scheme.rotation and scheme.rotation.keep)
                or (scheme.act and scheme.act.smooth_alpha is not None)
                or (scheme.kv and scheme.kv.smooth_attention))


def quantize_model(model: LoadedModel | nn.Module, scheme: str | QuantScheme, *,
                   calib_ids: torch.Tensor | None = None,
                   calib: Callable[[nn.Module], object] | None = None,
                   weight_options: WeightQuantOptions | None = None, progress: bool = True,
                   copy_model: bool = True, keep_reference: bool = True) -> QuantizedModel:
    """Quantize a copy of `model` (LoadedModel or nn.Module; left unchanged) with
    `scheme` (QuantScheme or registered name). Llama models take calib_ids [B, T]
    (calibration tokens); other modules take `calib`, a callable run(module) that
    runs calibration data through the module (needed only by calibrated schemes).
    copy_model=False quantizes `model` itself; keep_reference=False skips the float
    reference weights (w_ref, used only for per-layer SQNR): both save memory."""
    from .weightq import Calibration, quantize_llama_weights, quantize_shared

    scheme = get_scheme(scheme)
    base = model.model if isinstance(model, LoadedModel) else model
    if not isinstance(base, nn.Module):
        raise QuantflowError(f"expected a LoadedModel or nn.Module, got {type(base).__name__}")
    t0 = time.perf_counter()
    m = (copy.deepcopy(base) if copy_model else base).eval()
    qm = QuantizedModel(model=m, scheme=scheme)
    is_llama = isinstance(m, LlamaForCausalLM)
    if _calib_needed(scheme) and is_llama:
        if calib_ids is None or not isinstance(calib_ids, torch.Tensor) or \
                calib_ids.dim() != 2 or calib_ids.dtype != torch.int64:
            raise QuantflowError(f"scheme {scheme.name!r} needs calibration tokens: pass "
                                 f"calib_ids int64 [sequences, tokens] "
                                 f"(quantflow.text.calibration_tokens)")
    with torch.no_grad():
        if not is_llama:
            if scheme.kv is not None or scheme.rotation is not None or \
                    (scheme.act and scheme.act.smooth_alpha is not None):
                _llama_layers(m)  # raises the explanation
            names = list(linear_layers(m))
            if scheme.weight is not None:
                cal = _capture_calibration(m, names, calib) \
                    if scheme.weight.needs_calibration else {}
                for n in names:
                    lin = m.get_submodule(n)
                    if keep_reference:
                        qm.w_ref[n] = lin.weight.detach().clone()
                    (r,) = quantize_shared([lin.weight], scheme=scheme.weight,
                                           calib=cal.get(n), names=[n])
                    lin.weight.data.copy_(r.w_fake)
                    qm.weights[n] = r
            if scheme.act is not None:
                install_act_quant(m, names)
            qm.seconds["quantize"] = time.perf_counter() - t0
            return qm

        kv, act, rot = scheme.kv, scheme.act, scheme.rotation
        if rot is not None:
            keep = massive_channels(m, calib_ids, rot.keep) if rot.keep else None
            qm.residual_rotation = rotate_model(m, rot.kind, seed=rot.seed, block=rot.block,
                                                keep=keep)
        if kv is not None and kv.hadamard:
            qm.rotation = fold_hadamard_v(m)
        if (kv is not None and kv.smooth_attention) or (act and act.smooth_alpha is not None):
            stats = collect_llama_stats(m, calib_ids, progress=progress)
            qm.seconds["stats"] = time.perf_counter() - t0
            if kv is not None and kv.smooth_attention:
                qm.kv_lambda = [smooth_attention_lambdas(k) for k in stats["kmax"]]
                fold_smooth_attention(m, qm.kv_lambda)
            if act is not None and act.smooth_alpha is not None:
                qm.smooth_scales = fold_smoothquant(m, stats["xmax"], float(act.smooth_alpha))
        lins = m.block_linears()
        if keep_reference:
            qm.w_ref = {n: l.weight.detach().clone() for n, l in lins.items()}
        if scheme.weight is not None:
            t1 = time.perf_counter()
            if not scheme.weight.needs_calibration:
                # plain rounding reads no activations: no calibration pass, even when
                # calib_ids are given (for the other components or the image's formats)
                for n, lin in lins.items():
                    (r,) = quantize_shared([lin.weight], scheme=scheme.weight, names=[n],
                                           options=weight_options)
                    lin.weight.data.copy_(r.w_fake)
                    qm.weights[n] = r
            else:
                res = quantize_llama_weights(m, calib_ids, scheme=scheme.weight,
                                             options=weight_options, progress=progress)
                qm.weights = {_short(k): v for k, v in res.items()}
            qm.seconds["weights"] = time.perf_counter() - t1
            _weights_frame(m, qm)
        if act is not None:
            install_act_quant(m, ["model." + n for n in lins])
        if kv is not None:
            for layer in m.model.layers:
                layer.self_attn.kv_quant = KVQuantizer(kv)
                layer.self_attn.qk_rotation = qm.rotation
    qm.seconds["quantize"] = time.perf_counter() - t0
    return qm


def _weights_frame(m: LlamaForCausalLM, qm: QuantizedModel) -> None:
    """Move w_ref into the frame weightq left: its AWQ input scale s multiplies the
    columns (x / s is folded before the layer), and the next layer's scale divides
    v_proj / up_proj rows."""
    cfg = m.config
    D, Hq, g = cfg.head_dim, cfg.num_attention_heads, cfg.kv_groups
    tie = (torch.arange(Hq) // g).repeat_interleave(D) * D + torch.arange(D).repeat(Hq)
    if not qm.w_ref:
        return
    for n, r in qm.weights.items():
        if r.input_scale is not None:
            qm.w_ref[n] = qm.w_ref[n] * r.input_scale.unsqueeze(0)
    for i in range(len(m.model.layers)):
        p = f"layers.{i}"
        ro = qm.weights.get(f"{p}.self_attn.o_proj")
        if ro is not None and ro.input_scale is not None:
            sv = torch.empty(cfg.num_key_value_heads * D)
            sv[tie] = ro.input_scale
            qm.w_ref[f"{p}.self_attn.v_proj"] /= sv.unsqueeze(1)
        rd = qm.weights.get(f"{p}.mlp.down_proj")
        if rd is not None and rd.input_scale is not None:
            qm.w_ref[f"{p}.mlp.up_proj"] /= rd.input_scale.unsqueeze(1)


def _capture_calibration(m: nn.Module, names, calib) -> dict:
    from .weightq import Calibration
    if not callable(calib):
        raise QuantflowError("this scheme calibrates: pass calib=run, a callable that runs "
                             "calibration data through the module (e.g. lambda m: m(x))")
    cals: dict = {}
    hooks = []

    def rec(n):
        def hook(mod, args):
            c = Calibration.from_activations(args[0].detach(), name=n)
            cals[n] = c if n not in cals else cals[n].merge(c)
        return hook

    for n in names:
        hooks.append(m.get_submodule(n).register_forward_pre_hook(rec(n)))
    try:
        calib(m)
    finally:
        for h in hooks:
            h.remove()
    return cals
