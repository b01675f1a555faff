"""Shape and number formats of an integer Llama-architecture decoder
(docs/integer-model.md): the single description that golden.decoder, the model
image (quantflow.compile) and the accelerator core share.

Standard library only, so that `hdl` reads it without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.kv4_attention_config import KV4Config
from golden.mixpe_config import MIXPE_MAX_K, MIXPE_WEIGHT_BITS, check_reduction
from golden.sfu_config import SFUConfig
from golden.validate import (check_choice, check_counts, check_int, check_multiple,
                            expect_type)

__all__ = ["DecoderConfig", "LINEARS", "ATTN_LINEARS", "MLP_LINEARS", "FRAC_SLOTS",
           "ACT_FRAC_MAX"]

#: The linears of one decoder layer, in execution order, with their
#: (output, input) dimensions named by DecoderConfig attributes.
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTN_LINEARS + MLP_LINEARS
#: Activations with a fraction-bit count of their own per layer (a layer's `fracs`
#: tensor, in this order): their ranges differ from the residual stream's by orders
#: of magnitude (SmoothQuant divides v_proj and up_proj rows). Every other X32
#: tensor (residual, norms, gate, o_proj and down_proj outputs) uses sfu.frac; gate
#: stays there because the sigmoid table is indexed in those units.
FRAC_SLOTS = ("q_proj", "k_proj", "v_proj", "up_proj", "swiglu", "attn")
#: Largest per-tensor fraction-bit count the compiler assigns.
ACT_FRAC_MAX = 24


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """A decoder-only Llama network as the integer model runs it.

    vocab, hidden, intermediate, layers, heads, kv_heads, head_dim: the network's
        shape (head_dim * heads == hidden; heads a multiple of kv_heads).
    max_context: positions the RoPE table and the KV cache hold (<= kv4.max_t).
    rms_eps: the RMSNorm epsilon (a compile-time float, folded into an integer).
    w_bits, group: QoQ weights of every block linear (golden.mixpe).
    head_bits, head_group: QoQ weights of the LM head.
    embed_group: the embedding table's INT8 groups (one scale per row and group).
    sfu: the special-function unit's formats (golden.sfu_config).
    kv4: the attention unit; its heads are the query heads of one KV head.
    """

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    max_context: int
    rms_eps: float
    w_bits: int = 4
    group: int = 64
    head_bits: int = 8
    head_group: int = 64
    embed_group: int = 32
    sfu: SFUConfig = dataclasses.field(default_factory=SFUConfig)
    kv4: KV4Config = dataclasses.field(default_factory=KV4Config)

    def __post_init__(self):
        check_counts(self, "vocab", "hidden", "intermediate", "layers", "heads", "kv_heads",
                     "head_dim", "max_context")
        if not isinstance(self.rms_eps, float) or not 0.0 < self.rms_eps < 1.0:
            raise ValueError(f"rms_eps must be a float in (0, 1), got {self.rms_eps!r}; "
                             f"use the model config's rms_norm_eps")
        if self.heads * self.head_dim != self.hidden:
            raise ValueError(f"heads * head_dim = {self.heads} * {self.head_dim} != hidden "
                             f"= {self.hidden}; the integer model needs head_dim = "
                             f"hidden / heads")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads="
                             f"{self.kv_heads} (GQA groups must be whole)")
        check_choice("w_bits", self.w_bits, MIXPE_WEIGHT_BITS)
        check_choice("head_bits", self.head_bits, MIXPE_WEIGHT_BITS)
        for K in (self.hidden, self.intermediate):
            check_reduction(K, self.group, MIXPE_MAX_K)
        check_reduction(self.hidden, self.head_group, MIXPE_MAX_K)
        check_int("embed_group", self.embed_group, 1, self.hidden)
        check_multiple("hidden", self.hidden, "embed_group", self.embed_group,
                       hint="choose a divisor of hidden")
        expect_type("sfu", self.sfu, SFUConfig)
        expect_type("kv4", self.kv4, KV4Config)
        if self.kv4.head_dim != self.head_dim:
            raise ValueError(f"kv4.head_dim={self.kv4.head_dim} differs from head_dim="
                             f"{self.head_dim}; build the KV4Config with head_dim="
                             f"{self.head_dim}")
        if self.kv4.heads != self.kv_groups:
            raise ValueError(f"kv4.heads={self.kv4.heads} must equal the GQA group "
                             f"heads / kv_heads = {self.kv_groups}")
        check_int("max_context", self.max_context, 1, self.kv4.max_t,
                  hint="the KV4 unit holds at most kv4.max_t tokens per head")

    @property
    def kv_groups(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(N, K) of block linear `name` (one of LINEARS)."""
        check_choice("linear", name, LINEARS)
        h, i, q, kv = self.hidden, self.intermediate, self.heads, self.kv_heads
        d = self.head_dim
        return {"q_proj": (q * d, h), "k_proj": (kv * d, h), "v_proj": (kv * d, h),
                "o_proj": (h, q * d), "gate_proj": (i, h), "up_proj": (i, h),
                "down_proj": (h, i)}[name]

    def as_dict(self) -> dict:
        """The configuration as nested plain dicts (a manifest's "decoder" entry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        """Inverse of as_dict (a manifest's "decoder" entry)."""
        d = dict(d)
        d["sfu"] = SFUConfig(**d["sfu"])
        d["kv4"] = KV4Config(**d["kv4"])
        return cls(**d)
