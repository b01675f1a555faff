"""The default co-simulation plan of `make sim` (`python -m cosim sim`).

A case is one MixPE configuration plus a workload: M = m_tiles * rows activation
rows, N = n_tiles * cols output channels, K = config.K, quantized by quantflow
from seeded random weights (with a few outlier channels) and activations.
Every case compares >= MIN_MACS multiply-accumulates bit for bit; the stream
testbench drives it with random idle cycles and back-pressure, the fast path
(MixPESystem, memories + sequencer) where `fast` is set.
"""
from __future__ import annotations

from dataclasses import dataclass

from golden.mixpe_config import MixPEConfig

__all__ = ["MIN_MACS", "TiledCase", "MixPECase", "RealLayer", "default_plan", "real_plan",
           "tiles_for"]

#: Compared MACs per configuration in `make sim` (the brief's floor).
MIN_MACS = 100_000


@dataclass(frozen=True, kw_only=True)
class TiledCase:
    """What the cases of the tiled GEMM blocks (MixPE, LUT) share: a workload of
    m_tiles x n_tiles array tiles, M = m_tiles * config.rows activation rows,
    N = n_tiles * config.cols output channels, K = config.K."""
    config: object
    m_tiles: int
    n_tiles: int
    seed: int = 1
    #: probability that a source holds `valid` low in a cycle (each stream on its own)
    p_idle: float = 0.2
    #: probability that the result sink holds `ready` low in a cycle
    p_stall: float = 0.3

    def _check_case(self, config_cls: type) -> None:
        """ValueError naming the field unless config is a `config_cls`, the tile
        counts ints >= 1 and p_idle, p_stall probabilities below 1."""
        if not isinstance(self.config, config_cls):
            raise ValueError(f"config must be a {config_cls.__name__}, "
                             f"got {type(self.config).__name__}")
        for n in ("m_tiles", "n_tiles"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{n} must be an int >= 1, got {v!r}")
        for n in ("p_idle", "p_stall"):
            v = getattr(self, n)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{n} must be a probability in [0, 1), got {v!r}")

    @property
    def M(self) -> int:
        return self.m_tiles * self.config.rows

    @property
    def N(self) -> int:
        return self.n_tiles * self.config.cols

    @property
    def tiles(self) -> int:
        return self.m_tiles * self.n_tiles

    @property
    def macs(self) -> int:
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
        return f"{self.model}_{self.layer.replace('.', '_')}"


@dataclass(frozen=True, kw_only=True)
class MixPECase(TiledCase):
    config: MixPEConfig
    #: weight channels made outliers (x ~8) so that quantization sees real spread
    outlier_channels: int = 2
    #: also run the MixPESystem fast path on this case
    fast: bool = False
    #: a real model layer instead of seeded random data (seed then only drives
    #: the testbench's idle/back-pressure pattern)
    real: RealLayer | None = None

    def __post_init__(self):
        self._check_case(MixPEConfig)
        if self.real is not None and not isinstance(self.real, RealLayer):
            raise ValueError(f"real must be a RealLayer, got {type(self.real).__name__}")

    @property
    def workload(self) -> str:
        if self.real is not None:
            return f"{self.real.tag}_M{self.M}_N{self.N}_s{self.seed}"
        return f"M{self.M}_N{self.N}_s{self.seed}"

    @property
    def name(self) -> str:
        """Directory name of the case's quantflow data (build/sim/data/<name>)."""
        return f"{self.config.name()}_{self.workload}"


def tiles_for(config: MixPEConfig, min_macs: int = MIN_MACS) -> tuple[int, int]:
    """(m_tiles, n_tiles) giving >= min_macs compared MACs, spread over both
    dimensions for a GEMM array so that several activation tiles meet each weight tile."""
    per_tile = config.rows * config.cols * config.K
    tiles = -(-min_macs // per_tile)
    if config.rows == 1:
        return 1, tiles
    m = max(1, min(4, round(tiles ** 0.5)))
    return m, -(-tiles // m)


def _case(seed: int, fast: bool = False, **cfg) -> MixPECase:
    config = MixPEConfig(**cfg)
    m, n = tiles_for(config)
    return MixPECase(config=config, m_tiles=m, n_tiles=n, seed=seed, fast=fast)


def default_plan() -> list[MixPECase]:
    """Bits 2/3/4/8; groups 32/64/128; array shapes 1x8, 1x16, 2x4, 4x8;
    GEMV (rows = 1) and GEMM (rows > 1); each >= MIN_MACS compared MACs."""
    return [
        _case(11, bits=4, group=64, rows=1, cols=8, K=1024, fast=True),    # GEMV, W4 g64
        _case(12, bits=4, group=128, rows=4, cols=8, K=1024, fast=True),   # GEMM, W4 g128
        _case(13, bits=2, group=128, rows=4, cols=8, K=512),               # GEMM, W2
        _case(14, bits=8, group=32, rows=1, cols=16, K=256),               # GEMV, W8 g32
        _case(15, bits=3, group=64, rows=2, cols=4, K=384),                # GEMM, W3
        _case(16, bits=8, group=64, rows=2, cols=8, K=512, fast=True),     # GEMM, W8
        _case(17, bits=2, group=32, rows=1, cols=8, K=768),                # GEMV, W2 g32
    ]


#: MixPE configurations of the real-layer runs: K = the layer's in_features,
#: group 64 (divides 576 and 1536), cols = 8 divides every SmolLM2 out_features.
REAL_Q_PROJ = MixPEConfig(bits=4, group=64, rows=4, cols=8, K=576)
REAL_DOWN_PROJ = MixPEConfig(bits=4, group=64, rows=4, cols=8, K=1536)


def real_plan() -> list[MixPECase]:
    """`make sim`'s real SmolLM2 layers, whole (every output channel), on the
    first 8 tokens of the evaluation text: layer 0 q_proj (576 x 576, stream
    and fast path, 2.65 M MACs) and layer 0 down_proj (1536 -> 576, stream)."""
    return [
        MixPECase(config=REAL_Q_PROJ, m_tiles=2, n_tiles=576 // REAL_Q_PROJ.cols, seed=21,
                  fast=True, real=RealLayer(layer="layers.0.self_attn.q_proj")),
        MixPECase(config=REAL_DOWN_PROJ, m_tiles=2, n_tiles=576 // REAL_DOWN_PROJ.cols,
                  seed=22, real=RealLayer(layer="layers.0.mlp.down_proj")),
    ]
