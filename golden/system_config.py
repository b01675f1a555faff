"""How the accelerator core is deployed on a card, for the system performance model
(fpga_boards.perf) and the design-space sweep (dse): the weight format, the
sequence's shape, how many core instances, and the what-ifs the RTL does not build.

Standard library only.

What the RTL builds (hdl.core) is the baseline: W codes one per byte, one AXI read
port, dense weights, the KV4 unit, one sequence. Every field below that departs from
it is a what-if (`SystemConfig.whatifs` names them; every output of the model labels
its figures with them):

  packed     W codes packed w_bits to a byte lane (two W4 codes a byte); the engine
             takes beat_bytes * 8 / w_bits codes a beat
  ports      engine slices, each with its own AXI read port on its own memory bank,
             a linear's column tiles interleaved over them (docs/core.md section 10)
  engine     "sparse_dsp": the sparse DSP chain (golden.sparse_dsp_config) as the
             core's linear engine, with N:M weights (`sparsity`) or dense ones; the
             default "" is the core's own MixPE engine for dense weights and the chain
             for N:M ones
  kv_units   KV4 units working on different KV heads' ATTEND / KV_APPEND at once
  batch      `batch` sequences per step: the linears on `batch` token rows, the
             attention of each sequence on its own
  attention  "pim": the attention GEMVs in NeuPIMs-style PIM banks (golden.pim),
             two sub-batches interleaved with the linears (needs batch >= 2)

`instances` (core instances serving independent sequences) and `clock_mhz` are not
what-ifs: any number of generated cores can be linked, at any clock they close.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from golden.core_config import MAX_MEM_PORTS
from golden.kv4_attention_config import KV4_MAX_T
from golden.mixpe_config import MIXPE_GROUP_RANGE, MIXPE_WEIGHT_BITS
from golden.sparse_dsp_config import PATTERN_NAMES
from golden.validate import check_bool, check_choice, check_int

__all__ = ["ATTENTION_KINDS", "ENGINE_KINDS", "SystemConfig"]

#: Where a decode step's attention runs: the core's KV4 unit, or PIM banks.
ATTENTION_KINDS = ("kv4", "pim")
#: The linear engine: the core's (MixPE arithmetic, hdl.core_linear) or the sparse
#: DSP chain (hdl.sparse_dsp); "" picks by `sparsity`.
ENGINE_KINDS = ("", "mixpe", "sparse_dsp")


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    """One deployment (module docstring). context: tokens in the KV cache at the
    decode step modelled (its attention reads them all); prompt: prefill tokens
    (0: context); instances 0: as many as the part and the memory hold; clock_mhz 0:
    the board's kernel clock."""

    w_bits: int = 4
    group: int = 128
    sparsity: str = "dense"
    engine: str = ""
    context: int = 1024
    prompt: int = 0
    batch: int = 1
    attention: str = "kv4"
    packed: bool = False
    ports: int = 1
    kv_units: int = 1
    instances: int = 0
    clock_mhz: float = 0.0

    def __post_init__(self):
        check_choice("w_bits", self.w_bits, MIXPE_WEIGHT_BITS,
                     hint="the engine's QoQ weight widths")
        lo, hi = MIXPE_GROUP_RANGE
        check_int("group", self.group, lo, hi, hint="the engine's QoQ group range")
        check_choice("sparsity", self.sparsity, PATTERN_NAMES,
                     hint="the sparse DSP chain's N:M patterns")
        check_choice("engine", self.engine, ENGINE_KINDS,
                     hint="'' picks mixpe for dense weights, sparse_dsp for N:M")
        if self.engine == "mixpe" and self.sparsity != "dense":
            raise ValueError(f"engine='mixpe' streams dense weights, sparsity="
                             f"{self.sparsity!r} needs engine='sparse_dsp' (or '')")
        check_int("context", self.context, 1, KV4_MAX_T,
                  hint="the KV4 unit holds at most KV4_MAX_T tokens")
        check_int("prompt", self.prompt, 0, self.context,
                  hint="prefill at most the context (0: the whole context)")
        check_int("batch", self.batch, 1, hint="sequences per decode step")
        check_choice("attention", self.attention, ATTENTION_KINDS)
        check_bool("packed", self.packed)
        check_int("ports", self.ports, 1, MAX_MEM_PORTS,
                  hint="engine slices with their own AXI read port")
        check_int("kv_units", self.kv_units, 1, hint="KV4 units working at once")
        check_int("instances", self.instances, 0, hint="0: as many as fit")
        if (isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float))
                or not math.isfinite(self.clock_mhz) or self.clock_mhz < 0):
            raise ValueError(f"clock_mhz must be a finite number >= 0 (0: the board's kernel "
                             f"clock), got {self.clock_mhz!r}")
        if self.attention == "pim" and self.batch < 2:
            raise ValueError(f"attention='pim' interleaves two sub-batches of sequences, "
                             f"batch={self.batch} has none to interleave; use batch >= 2 "
                             f"or attention='kv4'")

    @property
    def engine_kind(self) -> str:
        """The linear engine in effect (`engine`, or picked by `sparsity`)."""
        return self.engine or ("mixpe" if self.sparsity == "dense" else "sparse_dsp")

    @property
    def prefill_tokens(self) -> int:
        """Tokens of the prefill: `prompt`, or the whole context when it is 0."""
        return self.prompt or self.context

    @property
    def whatifs(self) -> tuple[str, ...]:
        """The departures from the RTL in effect (module docstring), as labels."""
        out = []
        if self.packed:
            out.append(f"W{self.w_bits} codes packed")
        if self.ports > 1:
            out.append(f"{self.ports} ports")
        if self.engine_kind == "sparse_dsp":
            out.append(f"sparse DSP engine ({self.sparsity})")
        if self.kv_units > 1:
            out.append(f"{self.kv_units} KV4 units")
        if self.batch > 1:
            out.append(f"batch {self.batch}")
        if self.attention == "pim":
            out.append("attention in PIM banks")
        return tuple(out)

    @property
    def rtl(self) -> bool:
        """Whether this is what the RTL builds (no what-if)."""
        return not self.whatifs

    def replace(self, **kw: Any) -> "SystemConfig":
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> dict:
        """The configuration as a plain dict (dataclasses.asdict)."""
        return dataclasses.asdict(self)
