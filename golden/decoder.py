"""The integer model of a whole Llama-architecture decoder (docs/integer-model.md):
every operation is the one the accelerator performs, so this is the reference the
core's co-simulation compares against, instruction by instruction and token by
token.

It runs from a model image alone (a mapping name -> integer tensor, written by
quantflow.compile and described by `image_spec`): weights as QoQ codes, scales
and zero points; the embedding as an INT8 table; norms, RoPE, the sigmoid table
and every activation's fraction bits as integers. Nothing is read from a float
model.

Per token block (prefill of T tokens, or T = 1 decode), per layer:
  x (X32) -> rmsnorm -> quant_a8 -> q/k/v: acc = a . w8 (golden.mixpe's integer
  GEMM, exact) -> dequant (each to its own fraction bits) -> rope(q, k) ->
  K, V requant to the KV4 unit's x_bits (frac_k / frac_v per KV head) -> append ->
  q quant_a8 per head -> (C, lsh) -> KV4 decode of each query over positions 0..p
  -> requant to X32 -> quant_a8 -> o_proj -> dequant -> residual_add ->
  rmsnorm -> quant_a8 -> gate, up -> dequant -> swiglu -> quant_a8 -> down ->
  dequant -> residual_add.
Then rmsnorm -> quant_a8 -> LM head acc; the next token is the argmax of
acc[n] * S1[n] (the per-token scale is common to every n, so no rounding
decides it).

The linears use acc = a @ w8^T, which golden.mixpe proves equal to MixPE's
group-wise form (mixpe_acc == reference_acc); here it runs as float32 BLAS
products over K-chunks short enough that every partial sum is an integer below
2**24 (exact), summed in float64, then checked into int32.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import torch

from golden.decoder_config import FRAC_SLOTS, LINEARS, DecoderConfig
from golden.formats import ACT_QMAX
from golden.kv4_attention import KV4Cache, append_fixed, kv4_decode_many, logit_multiplier_fixed
from golden.mixpe import dequant_w8
from golden.sfu import (argmax, dequant, embed_rows, quant_a8, requant, residual_add, rmsnorm,
                        rope, silu_table, swiglu)
from golden.tensors import int_tensor
from golden.validate import check_int, expect_type

__all__ = ["IntegerDecoder", "DecoderState", "StepResult", "image_spec", "linear_acc"]

#: float32 holds every integer below 2**24 exactly.
_F32_EXACT = 1 << 24


# --------------------------------------------------------------------------- image
def _qoq_spec(prefix: str, N: int, K: int, group: int) -> dict:
    G = K // group
    return {f"{prefix}.q": ((N, K), "uint8"), f"{prefix}.s2": ((N, G), "uint8"),
            f"{prefix}.z": ((N, G), "uint8"), f"{prefix}.S1": ((N,), "int32"),
            f"{prefix}.e": ((1,), "int32")}


def image_spec(config: DecoderConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of a model image: name -> (shape, numpy dtype name). The one
    list quantflow.compile writes, its loader checks and this model reads."""
    c = expect_type("config", config, DecoderConfig)
    spec = {"embed.codes": ((c.vocab, c.hidden), "int8"),
            "embed.S": ((c.vocab, c.hidden // c.embed_group), "int32"),
            "embed.e": ((1,), "int32")}
    spec.update(_qoq_spec("lm_head", c.vocab, c.hidden, c.head_group))
    for i in range(c.layers):
        p = f"layers.{i}"
        for n in ("input_norm", "post_norm"):
            spec[f"{p}.{n}.w"] = ((c.hidden,), "int16")
            spec[f"{p}.{n}.e"] = ((1,), "int32")
        for lin in LINEARS:
            N, K = c.linear_shape(lin)
            spec.update(_qoq_spec(f"{p}.{lin}", N, K, c.group))
        spec[f"{p}.fracs"] = ((len(FRAC_SLOTS),), "int32")
        spec[f"{p}.frac_k"] = ((c.kv_heads,), "int32")
        spec[f"{p}.frac_v"] = ((c.kv_heads,), "int32")
    spec["norm.w"] = ((c.hidden,), "int16")
    spec["norm.e"] = ((1,), "int32")
    spec["rope.cos"] = ((c.max_context, c.head_dim // 2), "int16")
    spec["rope.sin"] = ((c.max_context, c.head_dim // 2), "int16")
    spec["sfu.sigmoid"] = ((len(silu_table(c.sfu)),), "int32")
    return spec


def _check_image(config: DecoderConfig, tensors: Mapping) -> dict[str, torch.Tensor]:
    spec = image_spec(config)
    missing = [n for n in spec if n not in tensors]
    if missing:
        raise ValueError(f"the model image lacks {len(missing)} tensor(s), first "
                         f"{missing[:3]}; recompile it (python -m quantflow compile)")
    extra = sorted(set(tensors) - set(spec))
    if extra:
        raise ValueError(f"the model image holds tensors this decoder does not read: "
                         f"{extra[:3]}; it was compiled for another configuration")
    out = {}
    for n, (shape, _) in spec.items():
        t = int_tensor(n, torch.as_tensor(tensors[n]))
        if tuple(t.shape) != shape:
            raise ValueError(f"image tensor {n} has shape {list(t.shape)}, expected "
                             f"{list(shape)}; recompile the image")
        out[n] = t
    return out


# --------------------------------------------------------------------------- linear
def _chunk_k(K: int, wmax: int) -> int:
    """Longest K-chunk whose partial sums of |a| <= 127 times |w| <= wmax stay
    below 2**24."""
    return max(1, min(K, (_F32_EXACT - 1) // (ACT_QMAX * max(1, wmax))))


def linear_acc(a: torch.Tensor, w8f: torch.Tensor, chunk: int) -> torch.Tensor:
    """acc [M, N] int64 = a [M, K] . w8f [N, K]^T, exact: float32 products over
    K-chunks of `chunk` (every partial sum an integer < 2**24), summed in float64."""
    K = a.shape[-1]
    af = a.to(torch.float32)
    acc = None
    for k0 in range(0, K, chunk):
        part = (af[:, k0:k0 + chunk] @ w8f[:, k0:k0 + chunk].T).to(torch.float64)
        acc = part if acc is None else acc + part
    return acc.to(torch.int64)


@dataclass(frozen=True)
class _Linear:
    w8f: torch.Tensor      # [N, K] float32 holding the integers (q - z) * s2
    S1: torch.Tensor       # [N] int64
    e: int
    chunk: int

    @classmethod
    def from_image(cls, t: dict, prefix: str, group: int) -> "_Linear":
        w8 = dequant_w8(t[f"{prefix}.q"], t[f"{prefix}.s2"], t[f"{prefix}.z"], group)
        wmax = int(w8.abs().max()) if w8.numel() else 0
        return cls(w8f=w8.to(torch.float32), S1=t[f"{prefix}.S1"], e=int(t[f"{prefix}.e"][0]),
                   chunk=_chunk_k(w8.shape[1], wmax))

    def acc(self, a: torch.Tensor) -> torch.Tensor:
        acc = linear_acc(a, self.w8f, self.chunk)
        if acc.numel() and int(acc.abs().max()) >= 1 << 31:
            raise ValueError("a linear's accumulator left int32; the image's weights "
                             "break the INT8 reconstruction bound (recompile it)")
        return acc


# --------------------------------------------------------------------------- state
@dataclass
class DecoderState:
    """One sequence's KV caches (caches[layer][kv_head], None before the first
    token) and the next position."""
    caches: list
    pos: int = 0


@dataclass(frozen=True)
class StepResult:
    """The LM head of a token block: acc [T, vocab] int64 and the token scale
    (mn, L) of its input, from which `logits()` (float64) and `next_tokens()`
    (argmax of acc * S1) follow."""
    acc: torch.Tensor
    mn: torch.Tensor
    L: torch.Tensor
    S1: torch.Tensor
    e: int
    frac: int

    def logits(self) -> torch.Tensor:
        """acc * s1[n] * s_a[t] in float64 (the value the integers stand for)."""
        scale = self.mn.double() * torch.pow(2.0, (self.L - self.e - self.frac).double())
        return self.acc.double() * self.S1.double().unsqueeze(0) * scale.unsqueeze(1)

    def next_tokens(self) -> torch.Tensor:
        """Greedy next token per row: argmax of acc * S1 (the logits without their scale)."""
        return argmax(self.acc * self.S1.unsqueeze(0))


#: trace(name, tensor, frac): every op's output; frac is its X32 fraction-bit count,
#: None for codes and accumulators.
Trace = Callable[[str, torch.Tensor, "int | None"], None]


# --------------------------------------------------------------------------- model
class IntegerDecoder:
    """The integer decoder of `config` over the image `tensors` (image_spec).

    new_state() -> DecoderState; step(ids, state) runs a token block (prefill or
    one decode token) and returns its StepResult; generate() is greedy decoding;
    logits() scores whole sequences (perplexity). An optional trace(name, tensor,
    frac) callback receives every op's output, named 'layers.<i>.<op>' (the core's
    mismatch locator compares against these)."""

    def __init__(self, config: DecoderConfig, tensors: Mapping):
        self.config = c = expect_type("config", config, DecoderConfig)
        t = _check_image(c, tensors)
        if not torch.equal(t["sfu.sigmoid"], silu_table(c.sfu).to(torch.int64)):
            raise ValueError("the image's sigmoid table differs from its SFU config's; "
                             "recompile the image")
        self.frac = c.sfu.frac
        self.embed = (t["embed.codes"], t["embed.S"], int(t["embed.e"][0]))
        self.head = _Linear.from_image(t, "lm_head", c.head_group)
        self.layers = []
        for i in range(c.layers):
            p = f"layers.{i}"
            self.layers.append({
                **{lin: _Linear.from_image(t, f"{p}.{lin}", c.group) for lin in LINEARS},
                "input_norm": (t[f"{p}.input_norm.w"], int(t[f"{p}.input_norm.e"][0])),
                "post_norm": (t[f"{p}.post_norm.w"], int(t[f"{p}.post_norm.e"][0])),
                "fracs": dict(zip(FRAC_SLOTS, (int(f) for f in t[f"{p}.fracs"]))),
                "frac_k": [int(f) for f in t[f"{p}.frac_k"]],
                "frac_v": [int(f) for f in t[f"{p}.frac_v"]],
            })
        self.norm = (t["norm.w"], int(t["norm.e"][0]))
        self.cos, self.sin = t["rope.cos"], t["rope.sin"]

    # ----------------------------------------------------------------- pieces
    def new_state(self) -> DecoderState:
        """An empty decoding state: position 0 and no KV cache in any layer."""
        c = self.config
        return DecoderState(caches=[[None] * c.kv_heads for _ in range(c.layers)])

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """X32 rows of the INT8 embedding table (golden.sfu.embed_rows)."""
        codes, S, e = self.embed
        return embed_rows(codes[ids], S[ids], e, out_frac=self.frac)

    def _linear(self, lin: _Linear, x: torch.Tensor, name: str, trace, *, in_frac: int,
                out_frac: int) -> torch.Tensor:
        a, mn, L = quant_a8(x)
        acc = lin.acc(a)
        y = dequant(acc, lin.S1, lin.e, mn, L, in_frac=in_frac, out_frac=out_frac)
        if trace:
            trace(f"{name}.a", a, None)
            trace(f"{name}.acc", acc, None)
            trace(name, y, out_frac)
        return y

    def _norm(self, x, w_e, name, trace):
        w, e = w_e
        y = rmsnorm(x, w, e, eps=self.config.rms_eps, config=self.config.sfu)
        if trace:
            trace(name, y, self.frac)
        return y

    def _attention(self, i: int, x: torch.Tensor, state: DecoderState, pos: torch.Tensor,
                   trace) -> torch.Tensor:
        c, F, kv4 = self.config, self.frac, self.config.kv4
        L_ = self.layers[i]
        fr = L_["fracs"]
        p = f"layers.{i}"
        T, D, g = x.shape[0], c.head_dim, c.kv_groups
        lin = {n: self._linear(L_[n], x, f"{p}.{n}", trace, in_frac=F, out_frac=fr[n])
               for n in ("q_proj", "k_proj", "v_proj")}
        q = lin["q_proj"].view(T, c.heads, D)
        k = lin["k_proj"].view(T, c.kv_heads, D)
        v = lin["v_proj"].view(T, c.kv_heads, D)
        q = rope(q.transpose(0, 1), self.cos, self.sin, pos).transpose(0, 1)
        k = rope(k.transpose(0, 1), self.cos, self.sin, pos).transpose(0, 1)
        if trace:
            trace(f"{p}.rope_q", q, fr["q_proj"])
            trace(f"{p}.rope_k", k, fr["k_proj"])
        q8, mn, L = quant_a8(q)                                            # per head
        outs = []
        for h in range(c.kv_heads):
            fk, fv = L_["frac_k"][h], L_["frac_v"][h]
            Xk = requant(k[:, h], fr["k_proj"], fk, kv4.x_bits)
            Xv = requant(v[:, h], fr["v_proj"], fv, kv4.x_bits)
            new = append_fixed(Xk, Xv, kv4, frac_k=fk, frac_v=fv)
            cache = state.caches[i][h] = _cat_cache(state.caches[i][h], new)
            hs = slice(h * g, (h + 1) * g)
            C, lsh = logit_multiplier_fixed(mn[:, hs], L[:, hs], in_frac=fr["q_proj"],
                                            frac_k=fk, config=kv4)
            out = kv4_decode_many(q8[:, hs], C, lsh, cache, pos + 1, kv4)
            outs.append(requant(out, cache.frac_v + kv4.out_frac, fr["attn"], 32))
        att = torch.cat(outs, dim=1).reshape(T, c.hidden)
        if trace:
            trace(f"{p}.attn", att, fr["attn"])
        return self._linear(L_["o_proj"], att, f"{p}.o_proj", trace, in_frac=fr["attn"],
                            out_frac=F)

    def _mlp(self, i: int, x: torch.Tensor, trace) -> torch.Tensor:
        L_ = self.layers[i]
        F, fu, fh = self.frac, L_["fracs"]["up_proj"], L_["fracs"]["swiglu"]
        p = f"layers.{i}"
        gate = self._linear(L_["gate_proj"], x, f"{p}.gate_proj", trace, in_frac=F, out_frac=F)
        up = self._linear(L_["up_proj"], x, f"{p}.up_proj", trace, in_frac=F, out_frac=fu)
        h = swiglu(gate, up, config=self.config.sfu, shift=F + fu - fh)
        if trace:
            trace(f"{p}.swiglu", h, fh)
        return self._linear(L_["down_proj"], h, f"{p}.down_proj", trace, in_frac=fh,
                            out_frac=F)

    # ----------------------------------------------------------------- runs
    def step(self, ids: torch.Tensor | Sequence[int], state: DecoderState, *,
             trace: Trace | None = None) -> StepResult:
        """Run token ids [T] (int) at positions state.pos.. through every layer and
        the LM head; the KV caches and state.pos advance."""
        c = self.config
        ids = int_tensor("ids", torch.as_tensor(ids))
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"ids must be a non-empty 1-D token tensor, got shape "
                             f"{list(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= c.vocab:
            raise ValueError(f"token ids must lie in [0, {c.vocab}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        T = ids.numel()
        if state.pos + T > c.max_context:
            raise ValueError(f"{state.pos + T} tokens exceed the context of "
                             f"{c.max_context} the image was compiled for; compile with a "
                             f"larger --context or shorten the prompt")
        pos = torch.arange(state.pos, state.pos + T, dtype=torch.int64)
        x = self.embed_tokens(ids)
        if trace:
            trace("embed", x, self.frac)
        for i in range(c.layers):
            h = self._norm(x, self.layers[i]["input_norm"], f"layers.{i}.input_norm", trace)
            x = residual_add(x, self._attention(i, h, state, pos, trace))
            if trace:
                trace(f"layers.{i}.attn_residual", x, self.frac)
            h = self._norm(x, self.layers[i]["post_norm"], f"layers.{i}.post_norm", trace)
            x = residual_add(x, self._mlp(i, h, trace))
            if trace:
                trace(f"layers.{i}.residual", x, self.frac)
        state.pos += T
        h = self._norm(x, self.norm, "norm", trace)
        a, mn, L = quant_a8(h)
        acc = self.head.acc(a)
        if trace:
            trace("lm_head.a", a, None)
            trace("lm_head.acc", acc, None)
        return StepResult(acc=acc, mn=mn, L=L, S1=self.head.S1, e=self.head.e, frac=self.frac)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Float64 logits [B, T, vocab] of whole sequences ids [B, T] (each from an
        empty cache): the perplexity path."""
        ids = int_tensor("ids", torch.as_tensor(ids))
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, T], got shape {list(ids.shape)}")
        return torch.stack([self.step(row, self.new_state()).logits() for row in ids])

    def generate(self, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int, *,
                 on_token: Callable[[int], object] | None = None) -> list[int]:
        """Greedy decoding: prefill `prompt` (token ids), then up to max_new_tokens
        decode steps; on_token(id) is called as each token appears. Returns the new
        token ids."""
        check_int("max_new_tokens", max_new_tokens, 0)
        state = self.new_state()
        out: list[int] = []
        if max_new_tokens == 0:
            return out
        r = self.step(torch.as_tensor(prompt), state)
        nxt = int(r.next_tokens()[-1])
        while True:
            out.append(nxt)
            if on_token is not None:
                on_token(nxt)
            if len(out) == max_new_tokens or state.pos >= self.config.max_context:
                return out
            nxt = int(self.step(torch.tensor([nxt]), state).next_tokens()[-1])


def _cat_cache(old: KV4Cache | None, new: KV4Cache) -> KV4Cache:
    """The cache with `new`'s tokens appended (same units: one frac per KV head)."""
    if old is None:
        return new
    names = ("kcodes", "ks", "kz", "vcodes", "vs", "vz", "kcodes8", "kz8", "vcodes8", "vz8")
    return replace(old, **{n: torch.cat([getattr(old, n), getattr(new, n)]) for n in names})
