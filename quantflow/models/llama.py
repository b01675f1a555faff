"""A plain PyTorch Llama (decoder-only causal LM) whose projections are nn.Linear.

Parameter names equal Hugging Face's LlamaForCausalLM state dict
(model.layers.N.self_attn.q_proj.weight, ...), so the same tensors load into both
and tests can compare logits. RoPE uses the Hugging Face channel pairing
(channel i with i + D/2, "rotate_half"); GGUF files store the llama.cpp
interleaved order, which the GGUF loader undoes. The rotation frequencies are
transformers' default or Llama 3 scaled ones (rope_inv_freq, LlamaConfig.rope_inv_freq);
LlamaConfig.from_dict reads a Hugging Face config.json and refuses any field whose
meaning this Llama does not implement.

Quantization hooks, all None (float) by default, set by quantflow.fakequant:
  LlamaAttention.qk_rotation  [D, D] orthonormal matrix applied to each head's Q
                              and K after RoPE (Walsh-Hadamard; q.k is unchanged)
  LlamaAttention.kv_quant     callable (k, v) -> (k, v) on [B, Hkv, T, D] after RoPE
                              (and after the rotation): the KV-cache quantizer.
                              If it has an int attribute `window` > 0 it also has
                              recent(k, v) -> (k8, v8), the 8-bit copies of the same
                              K/V (quantflow.fakequant.KVQuantizer), and attention
                              reads k8/v8 for each query's last `window` tokens and
                              the kv_quant output for the older ones
                              (window_attention; the KV4 unit's recent window).
                              Without a window attention is
                              F.scaled_dot_product_attention on the kv_quant output.

LlamaAttention.qkv keeps one contract for every kv_quant: Q and the quantized cache
K, V (the kv_quant output), which calibration and capture read; project() gives the
K, V before the quantizer, from which the windowed forward takes both precisions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantflowError

__all__ = ["LlamaConfig", "RopeScaling", "ROPE_TYPES", "LlamaForCausalLM", "RMSNorm",
           "rope_inv_freq", "rope_cos_sin", "apply_rope", "window_attention"]


#: rope types rope_inv_freq implements (transformers' names); config.json may name
#: the type under "rope_type" or the older key "type".
ROPE_TYPES = ("default", "llama3")


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama 3 (3.1, 3.2) frequency-dependent RoPE scaling, transformers' rope_type
    "llama3": wavelengths longer than original_max_position_embeddings /
    low_freq_factor are stretched by `factor`, those shorter than
    original_max_position_embeddings / high_freq_factor are kept, and the band
    between interpolates smoothly (rope_inv_freq)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self):
        if self.rope_type != "llama3":
            raise QuantflowError(f"RopeScaling holds rope_type 'llama3' only, got "
                                 f"{self.rope_type!r}")
        for k in ("factor", "low_freq_factor", "high_freq_factor"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not math.isfinite(v) or v <= 0:
                raise QuantflowError(f"rope scaling {k} must be a positive number, got {v!r}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise QuantflowError(f"rope scaling high_freq_factor ({self.high_freq_factor}) "
                                 f"must exceed low_freq_factor ({self.low_freq_factor})")
        m = self.original_max_position_embeddings
        if isinstance(m, bool) or not isinstance(m, int) or m <= 0:
            raise QuantflowError(f"rope scaling original_max_position_embeddings must be a "
                                 f"positive integer, got {m!r}")


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """The Llama architecture's hyperparameters (Hugging Face config.json names)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192
    rope_scaling: RopeScaling | None = None

    @property
    def head_dim(self) -> int:
        """Channels per attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_groups(self) -> int:
        """Query heads sharing one KV head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    def rope_inv_freq(self) -> torch.Tensor:
        """The model's RoPE inverse frequencies, float32 [head_dim / 2]: what the
        float model rotates by and what a fixed-point cos/sin table must be built
        from."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    def as_dict(self) -> dict:
        """A Hugging Face style config.json dict (from_dict reads it back)."""
        return {"model_type": "llama", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Read a Hugging Face Llama config.json dict (or as_dict's output). A field
        that would change what the model computes and that this Llama does not
        implement is refused by name, never dropped (QuantflowError)."""
        return _config_from_hf(cls, d)


# --------------------------------------------------------------------------- config.json
#: transformers' LlamaConfig values for optional fields a config.json omits.
_HF_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                "max_position_embeddings": 2048}
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
#: config.json fields that do not change what the model computes at inference:
#: metadata, token ids, training-only settings (dropout is inactive in eval mode).
_HF_IGNORED = frozenset({
    "architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
    "attention_dropout", "is_llama_config"})
#: fields accepted only at the value this Llama implements (transformers' meaning).
_HF_FIXED = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
             "mlp_bias": False, "pretraining_tp": 1, "rope_interleaved": False,
             "partial_rotary_factor": 1.0}
_ROPE_KEYS = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor",
                        "factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"})


def _int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise QuantflowError(f"config field {name!r} must be a positive integer, got {v!r}")
    return v


def _num(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise QuantflowError(f"config field {name!r} must be a finite number, got {v!r}")
    return float(v)


def _rope_from_hf(d: dict, max_pos: int) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from the top-level rope_theta and the rope dict, which
    older configs call rope_scaling and transformers >= 5 rope_parameters."""
    scaling, params = d.get("rope_scaling"), d.get("rope_parameters")
    if scaling is not None and params is not None and scaling != params:
        raise QuantflowError("config.json gives both rope_scaling and rope_parameters and "
                             "they differ; keep one of them")
    p = params if params is not None else (scaling if scaling is not None else {})
    if not isinstance(p, dict):
        raise QuantflowError(f"config field rope_scaling/rope_parameters must be an object, "
                             f"got {p!r}")
    unknown = sorted(set(p) - _ROPE_KEYS)
    if unknown:
        raise QuantflowError(f"config.json rope parameters {unknown} are not understood "
                             f"(known: {sorted(_ROPE_KEYS)}); per-layer-type RoPE and "
                             f"other rope variants are not supported by this Llama")
    rtype = p.get("rope_type", p.get("type", "default"))
    if rtype not in ROPE_TYPES:
        raise QuantflowError(f"rope type {rtype!r} is not supported (supported: "
                             f"{', '.join(map(repr, ROPE_TYPES))}); use a checkpoint "
                             f"with one of these, or implement it in "
                             f"quantflow.models.llama.rope_inv_freq")
    # transformers: the rope dict's own rope_theta wins over the top-level field
    theta = _num("rope_theta", p.get("rope_theta", d.get("rope_theta",
                                                          _HF_DEFAULTS["rope_theta"])))
    prf = p.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if prf != _HF_FIXED["partial_rotary_factor"]:
        raise QuantflowError(f"partial_rotary_factor {prf!r} (RoPE on part of each head) is "
                             f"not supported; only 1.0")
    if rtype == "default":
        return theta, None
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in p]
    if missing:
        raise QuantflowError(f"llama3 rope scaling lacks {missing}; config.json is incomplete")
    # transformers falls back to max_position_embeddings when the key is absent
    return theta, RopeScaling(
        factor=float(p["factor"]), low_freq_factor=float(p["low_freq_factor"]),
        high_freq_factor=float(p["high_freq_factor"]),
        original_max_position_embeddings=p.get("original_max_position_embeddings", max_pos))


def _config_from_hf(cls, d: dict) -> LlamaConfig:
    if not isinstance(d, dict):
        raise TypeError(f"a config dict is needed, got {type(d).__name__}")
    own = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - own - _HF_IGNORED - set(_HF_FIXED)
                     - {"rope_parameters", "head_dim"})
    if unknown:
        raise QuantflowError(
            f"config.json fields {unknown} are not understood by quantflow's Llama; they "
            f"may change what the model computes, so the model is refused rather than run "
            f"without them. If a field does not affect inference, remove it from "
            f"config.json; otherwise the model needs support in quantflow.models.llama")
    for k, want in _HF_FIXED.items():
        if k in d and d[k] is not None and d[k] != want:
            raise QuantflowError(f"config field {k!r} = {d[k]!r} is not supported; this "
                                 f"Llama implements {k} = {want!r} only")
    archs = d.get("architectures") or []
    bad = [a for a in archs if a != "LlamaForCausalLM"]
    if bad:
        raise QuantflowError(f"architectures {bad} are not supported; only "
                             f"LlamaForCausalLM (a causal LM head on the Llama decoder)")
    missing = [k for k in _HF_REQUIRED if k not in d]
    if missing:
        raise QuantflowError(f"config.json lacks {missing}; it is not a complete Llama config")
    shape = {k: _int(k, d[k]) for k in _HF_REQUIRED}
    kv = d.get("num_key_value_heads")
    shape["num_key_value_heads"] = shape["num_attention_heads"] if kv is None else \
        _int("num_key_value_heads", kv)
    hd = d.get("head_dim")
    if hd is not None and hd != shape["hidden_size"] // shape["num_attention_heads"]:
        raise QuantflowError(f"head_dim {hd!r} differs from hidden_size / "
                             f"num_attention_heads; this Llama needs head_dim = "
                             f"{shape['hidden_size']} / {shape['num_attention_heads']}")
    max_pos = _int("max_position_embeddings",
                   d.get("max_position_embeddings", _HF_DEFAULTS["max_position_embeddings"]))
    tie = d.get("tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])
    if not isinstance(tie, bool):
        raise QuantflowError(f"config field 'tie_word_embeddings' must be true or false, "
                             f"got {tie!r}")
    theta, scaling = _rope_from_hf(d, max_pos)
    return cls(**shape, rope_theta=theta, max_position_embeddings=max_pos,
               rms_norm_eps=_num("rms_norm_eps", d.get("rms_norm_eps",
                                                       _HF_DEFAULTS["rms_norm_eps"])),
               tie_word_embeddings=tie, rope_scaling=scaling)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned per-channel weight."""
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """weight * x / sqrt(mean(x**2) + eps) over the last dim."""
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_inv_freq(D: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """RoPE inverse frequencies, float32 [D / 2], computed op for op as transformers
    does (modeling_rope_utils: the default rope, and _compute_llama3_parameters for
    `scaling`), so both models rotate by the same float32 numbers."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    lo_f, hi_f, factor = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
    low_freq_wavelen = old_len / lo_f
    high_freq_wavelen = old_len / hi_f
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo_f) / (hi_f - lo_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(T: int, D: int, theta: float, *, offset: int = 0,
                 scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] for positions offset..offset+T-1 (HF layout: freqs repeated)."""
    inv_freq = rope_inv_freq(D, theta, scaling)
    pos = torch.arange(offset, offset + T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]: channel i rotates with channel i + D/2."""
    return x * cos + _rotate_half(x) * sin


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k8: torch.Tensor,
                     v8: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention of q [B, H, T, D] over a cache read at two precisions:
    query position p reads tokens p-window+1..p from k8, v8 and tokens < p-window+1
    from k, v (all [B, Hkv, T, D], H a multiple of Hkv: GQA). Scores and P.V are
    split per (query, token) pair, so every query sees its own window, as the KV4
    unit's decode does (golden.kv4_attention.decode_codes). Returns [B, H, T, D]."""
    g = q.shape[1] // k.shape[1]
    k, v, k8, v8 = (x.repeat_interleave(g, dim=1) for x in (k, v, k8, v8))
    T = q.shape[2]
    p = torch.arange(T, device=q.device).unsqueeze(1)
    t = torch.arange(k.shape[2], device=q.device).unsqueeze(0)
    win = (t > p - window) & (t <= p)                                    # [T, T]
    s = torch.where(win, q @ k8.transpose(-1, -2), q @ k.transpose(-1, -2))
    s = (s / math.sqrt(q.shape[-1])).masked_fill(t > p, float("-inf"))
    a = F.softmax(s, dim=-1)
    return a.masked_fill(win, 0.0) @ v + a.masked_fill(~win, 0.0) @ v8


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE, an optional Q/K rotation and an
    optional KV quantizer."""
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, Hkv * D, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=False)
        self.qk_rotation: torch.Tensor | None = None
        self.kv_quant = None

    def project(self, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q [B, H, T, D], K and V [B, Hkv, T, D] after RoPE and rotation, before the
        KV quantizer."""
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_rotation is not None:
            q, k = q @ self.qk_rotation, k @ self.qk_rotation
        return q, k, v

    def qkv(self, x: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, and K and V after the KV quantizer: the cache attention consumes (all of
        it without a window; the tokens older than each query's window with one);
        used for calibration and capture too."""
        q, k, v = self.project(x, cos, sin)
        if self.kv_quant is not None:
            k, v = self.kv_quant(k, v)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal attention of x [B, T, hidden] -> [B, T, hidden]; windowed
        (window_attention) when the KV quantizer keeps a recent window."""
        B, T, _ = x.shape
        window = getattr(self.kv_quant, "window", 0)
        if window:
            q, k, v = self.project(x, cos, sin)
            k8, v8 = self.kv_quant.recent(k, v)
            k, v = self.kv_quant(k, v)
            out = window_attention(q, k, v, k8, v8, window)
        else:
            q, k, v = self.qkv(x, cos, sin)
            g = self.cfg.kv_groups
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class LlamaMLP(nn.Module):
    """The SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate_proj(x)) * up_proj(x))."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """One pre-norm decoder layer: attention and MLP, each with its RMSNorm and residual."""
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x + attention(norm(x)), then + mlp(norm(x))."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The token embedding, the decoder layers and the final RMSNorm."""
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """forward(ids [B, T] int64) -> logits [B, T, vocab] float32."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos, sin [T, head_dim] for positions 0..T-1."""
        c = self.config
        return rope_cos_sin(T, c.head_dim, c.rope_theta, scaling=c.rope_scaling)

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, hidden] of ids [B, T]."""
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[1])
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] of ids [B, T]."""
        return self.lm_head(self.hidden_states(ids))

    def block_linears(self) -> dict[str, nn.Linear]:
        """The quantizable linears (all but lm_head), short names 'layers.N.self_attn.q_proj'."""
        return {n[len("model."):]: m for n, m in self.named_modules()
                if isinstance(m, nn.Linear) and n.startswith("model.layers.")}

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.config.head_dim


def _init_check(cfg: LlamaConfig) -> None:  # used by loaders before allocating
    if cfg.hidden_size % cfg.num_attention_heads or \
            cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"inconsistent Llama config {cfg}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim {cfg.head_dim} must be even for RoPE")
    if not math.isfinite(cfg.rope_theta) or cfg.rope_theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {cfg.rope_theta}")
