"""What the co-simulation cases share: the seed and stream randomness of every
stream case; for the tiled GEMM blocks (MixPE, LUT) the compared-MAC floor, the
tiled workload, where a real model layer's data comes from, and the tile split
that meets the floor. Each block's own cases and plan live in its module
(cosim/mixpe.py, cosim/lut.py, cosim/kv4_attention.py, cosim/sfu.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from golden.lut_config import LUTConfig
from golden.mixpe_config import MixPEConfig
from golden.validate import check_counts, expect_type

from cosim.flow import is_ideal

__all__ = ["MIN_MACS", "StreamCase", "TiledCase", "RealLayer", "tiles_for"]

#: Compared MACs per configuration in `make sim`.
MIN_MACS = 100_000


@dataclass(frozen=True, kw_only=True)
class StreamCase:
    """A case driven through streams: `seed` draws its data and its streams'
    random patterns; p_idle / p_stall 0 make it ideal (the cycle model is then
    enforced)."""
    seed: int = 1
    #: probability that a source holds `valid` low in a cycle (each stream on its own)
    p_idle: float = 0.0
    #: probability that the result sink holds `ready` low in a cycle
    p_stall: float = 0.0

    @property
    def ideal(self) -> bool:
        """Whether the case runs without idle cycles or back-pressure."""
        return is_ideal({"p_idle": self.p_idle, "p_stall": self.p_stall})

    @property
    def path(self) -> str:
        """The records' path: "stream-ideal" or "stream"."""
        return "stream-ideal" if self.ideal else "stream"

    @property
    def pressure(self) -> str:
        """The case name's part for its streams: "ideal" or "bp<p_stall in %>"."""
        return "ideal" if self.ideal else f"bp{int(self.p_stall * 100)}"


@dataclass(frozen=True, kw_only=True)
class TiledCase(StreamCase):
    """A workload of m_tiles x n_tiles array tiles, M = m_tiles * config.rows
    activation rows, N = n_tiles * config.cols output channels, K = config.K;
    streams with idle cycles and back-pressure unless told otherwise."""
    config: object
    m_tiles: int
    n_tiles: int
    p_idle: float = 0.2
    p_stall: float = 0.3

    def _check_case(self, config_cls: type) -> None:
        """TypeError unless config is a `config_cls` and the tile counts ints;
        ValueError unless the tile counts are >= 1 and p_idle, p_stall
        probabilities below 1."""
        expect_type("config", self.config, config_cls)
        check_counts(self, "m_tiles", "n_tiles")
        for n in ("p_idle", "p_stall"):
            v = getattr(self, n)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{n} must be a probability in [0, 1), got {v!r}")

    @property
    def M(self) -> int:
        """Activation rows: m_tiles * rows."""
        return self.m_tiles * self.config.rows

    @property
    def N(self) -> int:
        """Output channels: n_tiles * cols."""
        return self.n_tiles * self.config.cols

    @property
    def tiles(self) -> int:
        """Output tiles: m_tiles * n_tiles."""
        return self.m_tiles * self.n_tiles

    @property
    def macs(self) -> int:
        """MACs of the whole product: M * N * K."""
        return self.M * self.N * self.config.K


@dataclass(frozen=True, kw_only=True)
class RealLayer:
    """Where a case's data comes from when it is a real model layer rather than
    seeded random tensors: quantflow.export_model.export_real_layer quantizes
    `layer` of `model` with `scheme` (calibrated on the calibration text) and
    captures its inputs on the first M tokens of the evaluation text `text`;
    the case keeps the layer's first N = n_tiles * cols output channels."""
    model: str = "smollm2"
    layer: str = "layers.0.self_attn.q_proj"
    scheme: str = "w4a8kv4-g64"
    text: str = "hamlet"

    @property
    def tag(self) -> str:
        """The model and layer as one name for files and cases."""
        return f"{self.model}_{self.layer.replace('.', '_')}"


def tiles_for(config: MixPEConfig | LUTConfig, min_macs: int = MIN_MACS) -> tuple[int, int]:
    """(m_tiles, n_tiles) of a `config` with rows, cols and K giving >= min_macs
    compared MACs, spread over both dimensions for a GEMM array so that several
    activation tiles meet each weight tile."""
    per_tile = config.rows * config.cols * config.K
    tiles = -(-min_macs // per_tile)
    if config.rows == 1:
        return 1, tiles
    m = max(1, min(4, round(tiles ** 0.5)))
    return m, -(-tiles // m)
