"""A plain PyTorch Llama (decoder-only causal LM) whose projections are nn.Linear.

Parameter names equal Hugging Face's LlamaForCausalLM state dict
(model.layers.N.self_attn.q_proj.weight, ...), so the same tensors load into both
and tests can compare logits. RoPE uses the Hugging Face channel pairing
(channel i with i + D/2, "rotate_half"); GGUF files store the llama.cpp
interleaved order, which the GGUF loader undoes.

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

__all__ = ["LlamaConfig", "LlamaForCausalLM", "RMSNorm", "rope_cos_sin", "apply_rope",
           "window_attention"]


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def as_dict(self) -> dict:
        return {"model_type": "llama", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_cos_sin(T: int, D: int, theta: float, *, offset: int = 0):
    """cos, sin [T, D] for positions offset..offset+T-1 (HF layout: freqs repeated)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
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


def window_attention(q, k, v, k8, v8, window: int) -> torch.Tensor:
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

    def project(self, x: torch.Tensor, cos, sin):
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

    def qkv(self, x: torch.Tensor, cos, sin):
        """Q, and K and V after the KV quantizer: the cache attention consumes (all of
        it without a window; the tokens older than each query's window with one);
        used for calibration and capture too."""
        q, k, v = self.project(x, cos, sin)
        if self.kv_quant is not None:
            k, v = self.kv_quant(k, v)
        return q, k, v

    def forward(self, x: torch.Tensor, cos, sin) -> torch.Tensor:
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
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, cos, sin) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
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

    def rope(self, T: int):
        return rope_cos_sin(T, self.config.head_dim, self.config.rope_theta)

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[1])
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(ids))

    def block_linears(self) -> dict[str, nn.Linear]:
        """The quantizable linears (all but lm_head), short names 'layers.N.self_attn.q_proj'."""
        return {n[len("model."):]: m for n, m in self.named_modules()
                if isinstance(m, nn.Linear) and n.startswith("model.layers.")}

    @property
    def head_dim(self) -> int:
        return self.config.head_dim


def _init_check(cfg: LlamaConfig) -> None:  # used by loaders before allocating
    if cfg.hidden_size % cfg.num_attention_heads or \
            cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"inconsistent Llama config {cfg}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim {cfg.head_dim} must be even for RoPE")
    if not math.isfinite(cfg.rope_theta) or cfg.rope_theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {cfg.rope_theta}")
