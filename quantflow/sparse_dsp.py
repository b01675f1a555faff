"""Sparse DSP chain formats: N:M-pruned, quantized layers, the chain's stream
words, and image directories (DESIGN §3.5, §3.8; layouts in
golden/sparse_dsp_config.py, docs/sparse_dsp.md).

    layer = quantize_sparse(W, config=cfg, mode=TileMode(pattern="2:4", mode="w4a8"),
                            method="wanda", X=calib)
    export_sparse_dsp(outdir, cfg, W, X, mode=..., method=..., calib=...)
    img = load_sparse_dsp(outdir, cfg)      # verified: checksums, indices, words

An image directory holds the compressed layer (values.npy [R, K*N/M], indices.npy
[R, K*N/M] with log2(M) meaningful bits), its scales, the quantized activations,
and the chain's stream images ctrl/act/weight/(scale)/result .hex in the order
the chain consumes them: tiles (row tile rt outer, activation row m inner), each
tile ctrl beat, K/window act+weight beats, one scale beat per quantization group
(W4A8), one result beat. Written atomically (quantflow.imagedir), checksummed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golden.formats import ACC_BITS, ACT_BITS, ACT_QMAX, SCALE_BITS
from golden.sparse_dsp import check_compressed, sparse_dsp_acc
from golden.sparse_dsp_config import (W4_BITS, W8_QMAX, SparseDSPConfig, TileMode)
from golden.validate import expect_type

from ._check import as_float_tensor
from .errors import QuantflowError
from .imagedir import (MANIFEST, hex_digits, read_manifest_for, read_npy, read_words,
                       write_hex, write_image_dir, write_side)
from .pack import pack_words
from .prune import compress, prune
from .qoq import quantize_act, quantize_qoq

__all__ = ["FORMAT", "FORMAT_VERSION", "SparseLayer", "quantize_w8", "quantize_sparse",
           "stream_words", "write_sparse_dsp_images", "export_sparse_dsp",
           "SparseDSPImages", "load_sparse_dsp"]

FORMAT = "quattro-sparse-dsp-images"
FORMAT_VERSION = 1
_FIX = "re-run quantflow's sparse_dsp export"


def _cfg(config) -> SparseDSPConfig:
    return expect_type("config", config, SparseDSPConfig)


def _mode(mode, config) -> TileMode:
    expect_type("mode", mode, TileMode)
    try:
        return mode.check(config)
    except ValueError as e:
        raise QuantflowError(str(e)) from None


@dataclass(frozen=True, kw_only=True)
class SparseLayer:
    """A pruned, quantized layer in the chain's compressed format.
    values [R, K*N/M]: W8A8 int8 weights / W4A8 4-bit codes; indices [R, K*N/M];
    s1 [R] float32 per-channel scale; s2, z [R, K/qgroup] (W4A8, else None)."""

    mode: TileMode
    values: torch.Tensor
    indices: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor | None = None
    z: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """Output channels R of the layer."""
        return int(self.values.shape[0])


def quantize_w8(W: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric INT8: s1 = max|W[n]| / 127, w8 = clamp(round(W / s1))
    (round half to even); a zero channel gets s1 = 0 and w8 = 0."""
    W = as_float_tensor("W", W, 2, "[N_out, K]")
    s1 = W.abs().amax(dim=1) / W8_QMAX
    zero = s1 == 0
    w8 = torch.round(W / torch.where(zero, 1.0, s1).unsqueeze(1))
    w8 = torch.clamp(w8, -W8_QMAX, W8_QMAX)
    return torch.where(zero.unsqueeze(1), 0.0, w8).to(torch.int64), s1


def quantize_sparse(W: torch.Tensor | np.ndarray, *, config: SparseDSPConfig, mode: TileMode,
                    method: str = "magnitude",
                    X: torch.Tensor | np.ndarray | None = None) -> SparseLayer:
    """Prune float W [R, K] to mode's N:M (method 'magnitude' or 'wanda' with
    calibration X [T, K]) along K, quantize (W8A8 per-channel int8; W4A8 QoQ
    with group=config.qgroup) and compress. Pruned weights are exact zeros of the
    integer weights (W4A8: q = z, so (q - z) * s2 = 0)."""
    cfg = _cfg(config)
    mode = _mode(mode, cfg)
    W = as_float_tensor("W", W, 2, "[N_out, K]")
    if W.shape[1] != cfg.K:
        raise QuantflowError(f"W has K={W.shape[1]} but config.K={cfg.K}; build the config "
                             f"with the layer's input features")
    Wp, mask = prune(W, mode.pattern, method=method, X=X)
    if mode.w4:
        qw = quantize_qoq(Wp, bits=W4_BITS, group=cfg.qgroup)
        zd = qw.z.repeat_interleave(cfg.qgroup, dim=1)
        if bool((qw.q[~mask] != zd[~mask]).any()):  # QoQ maps 0.0 to q = z exactly
            raise QuantflowError("internal: a pruned weight did not quantize to its zero "
                                 "point; report this")
        vals, idx = compress(qw.q.to(torch.int64), mask, mode.pattern)
        return SparseLayer(mode=mode, values=vals, indices=idx,
                           s1=qw.s1.to(torch.float32), s2=qw.s2.to(torch.int64),
                           z=qw.z.to(torch.int64))
    w8, s1 = quantize_w8(Wp)
    vals, idx = compress(w8, mask, mode.pattern)
    return SparseLayer(mode=mode, values=vals, indices=idx, s1=s1)


def _np(t) -> np.ndarray:
    return t.detach().cpu().to(torch.int64).numpy() if isinstance(t, torch.Tensor) \
        else np.asarray(t, dtype=np.int64)


def stream_words(config: SparseDSPConfig, layer: SparseLayer,
                 a: torch.Tensor | np.ndarray) -> dict[str, list[int]]:
    """The chain's stream words for `a` [Ma, K] against every row of `layer`,
    tiles ordered (row tile, activation row), plus the golden result words."""
    cfg = _cfg(config)
    mode = _mode(layer.mode, cfg)
    a = torch.as_tensor(a)
    try:
        check_compressed(layer.values, layer.indices, mode.nm, cfg.K)
        acc = sparse_dsp_acc(a, layer.values, layer.indices, config=cfg, mode=mode,
                             s2=layer.s2, z=layer.z)
    except ValueError as e:
        raise QuantflowError(str(e)) from None
    S, L, ng = mode.segments(cfg), cfg.L, cfg.n_groups
    W, B = mode.window(cfg), mode.beats(cfg)
    R, Ma = layer.rows, a.shape[0]
    RT = R // S
    an = _np(a)
    act = np.zeros((Ma, B, cfg.window_max), dtype=np.int64)
    act[:, :, :W] = an.reshape(Ma, B, W)
    act = np.broadcast_to(act[None], (RT, Ma, B, cfg.window_max))
    lane = (_np(layer.values) & 0xFF) | (_np(layer.indices) << ACT_BITS)
    lane = lane.reshape(RT, S, B, mode.seg_len(cfg)).transpose(0, 2, 1, 3).reshape(RT, B, L)
    weight = np.broadcast_to(lane[:, None], (RT, Ma, B, L))
    res = np.zeros((RT, Ma, ng), dtype=np.int64)
    res[:, :, :S] = _np(acc).reshape(Ma, RT, S).transpose(1, 0, 2)
    T = RT * Ma
    words = {
        "ctrl": [mode.ctrl_word(cfg)] * T,
        "act": pack_words(act.reshape(-1, cfg.window_max), ACT_BITS, cfg.window_max,
                          signed=True),
        "weight": pack_words(weight.reshape(-1, L), cfg.weight_lane_bits, L),
        "result": pack_words(res.reshape(-1, ng), ACC_BITS, ng, signed=True),
    }
    if mode.w4:
        Q = cfg.K // cfg.qgroup
        sc = np.zeros((RT, Q, ng), dtype=np.int64)
        sc[:, :, :S] = (_np(layer.s2) | (_np(layer.z) << SCALE_BITS)) \
            .reshape(RT, S, Q).transpose(0, 2, 1)
        sc = np.broadcast_to(sc[:, None], (RT, Ma, Q, ng))
        words["scale"] = pack_words(sc.reshape(-1, ng), cfg.scale_lane_bits, ng)
    return words


def _word_bits(cfg: SparseDSPConfig) -> dict[str, int]:
    return {"ctrl": cfg.ctrl_word_bits, "act": cfg.act_word_bits,
            "weight": cfg.weight_word_bits, "scale": cfg.scale_word_bits,
            "result": cfg.result_word_bits}


def _image_inputs(cfg: SparseDSPConfig, layer, a, s_a):
    """(mode, a, s_a) of an image directory, checked."""
    expect_type("layer", layer, SparseLayer)
    mode = _mode(layer.mode, cfg)
    a = torch.as_tensor(a)
    s_a = torch.as_tensor(s_a).to(torch.float32)
    if a.dim() != 2 or a.shape[1] != cfg.K:
        raise QuantflowError(f"a must be [Ma, K={cfg.K}], got {list(a.shape)}")
    S = mode.segments(cfg)
    if layer.rows % S:
        raise QuantflowError(f"{layer.rows} rows do not fill tiles of {S} segments (span="
                             f"{mode.span}); pad the layer to a multiple of {S} rows")
    if tuple(s_a.shape) != (a.shape[0],):
        raise QuantflowError(f"s_a must have shape [{a.shape[0]}], got {list(s_a.shape)}")
    return mode, a, s_a


def _side_arrays(cfg: SparseDSPConfig, mode: TileMode, layer: SparseLayer, a, s_a) -> dict:
    """The side .npy files: name -> (array, meaning); `result` is golden's acc."""
    m = mode.nm[1]
    result = sparse_dsp_acc(a, layer.values, layer.indices, config=cfg, mode=mode,
                            s2=layer.s2, z=layer.z).numpy().astype(np.int32)
    arrays = {
        "values": (_np(layer.values).astype(np.uint8 if mode.w4 else np.int8),
                   "kept weights in k order [R, K*N/M] (W8A8 int8, W4A8 4-bit codes)"),
        "indices": (_np(layer.indices).astype(np.uint8),
                    f"position of each kept weight in its block of M={m} [R, K*N/M]"),
        "s1": (layer.s1.numpy().astype(np.float32), "per-channel float32 scale [R]"),
        "act": (_np(a).astype(np.int8), "int8 activations [Ma, K]"),
        "s_a": (s_a.numpy().astype(np.float32), "per-token float32 scale [Ma]"),
        "result": (result, "golden acc [Ma, R] int32"),
        "ctrl": (np.array([mode.ctrl_word(cfg)], dtype=np.uint8), "the tile's ctrl word"),
    }
    if mode.w4:
        arrays["s2"] = (_np(layer.s2).astype(np.uint8), "integer group scale [R, K/qgroup]")
        arrays["z"] = (_np(layer.z).astype(np.uint8), "integer zero point [R, K/qgroup]")
    return arrays


def _manifest(cfg: SparseDSPConfig, mode: TileMode, layer: SparseLayer, Ma: int,
              provenance: dict | None) -> dict:
    """The manifest's fields but `tensors` and `side`."""
    n, m = mode.nm
    S = mode.segments(cfg)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "block": "sparse_dsp",
        "config": cfg.as_dict(), "config_name": cfg.name(), "mode": mode.as_dict(),
        "sparsity": {"pattern": mode.pattern, "N": n, "M": m,
                     "index_bits": (m - 1).bit_length(),
                     "stream_index_field_bits": cfg.weight_lane_bits - ACT_BITS},
        "dims": {"R": layer.rows, "Ma": Ma, "K": cfg.K, "segments": S,
                 "row_tiles": layer.rows // S, "tiles": layer.rows // S * Ma,
                 "beats_per_tile": mode.beats(cfg)},
        "quantization": {
            "weights": ({"scheme": "qoq", "bits": W4_BITS, "group": cfg.qgroup}
                        if mode.w4 else {"scheme": "per-channel-symmetric-int8",
                                         "qmax": W8_QMAX}),
            "activations": {"scheme": "per-token-symmetric-int8", "qmax": ACT_QMAX},
            "rounding": "half-even"},
        "provenance": provenance or {},
    }


def write_sparse_dsp_images(outdir: Path | str, config: SparseDSPConfig, *, layer: SparseLayer,
                            a: torch.Tensor | np.ndarray, s_a: torch.Tensor | np.ndarray,
                            provenance: dict | None = None) -> dict:
    """Write the image directory of `layer` against activations a [Ma, K] (int8,
    per-token scale s_a [Ma]). All words are computed (and all errors raised)
    before anything is written. Returns the manifest."""
    cfg = _cfg(config)
    mode, a, s_a = _image_inputs(cfg, layer, a, s_a)
    words = stream_words(cfg, layer, a)
    arrays = _side_arrays(cfg, mode, layer, a, s_a)
    manifest = _manifest(cfg, mode, layer, int(a.shape[0]), provenance)
    bits = _word_bits(cfg)
    #: stream image -> the tensor it is packed from (read_manifest pairs them)
    paired = {"ctrl": "ctrl", "act": "act", "weight": "values", "scale": "s2",
              "result": "result"}

    def fill(tmp: Path) -> dict:
        side = write_side(tmp, arrays)
        tensors = {}
        for name, w in words.items():
            write_hex(tmp / f"{name}.hex", w, bits[name])
            tensors[name] = dict(hex=f"{name}.hex", npy=f"{paired[name]}.npy", words=len(w),
                                 word_bits=bits[name], hex_digits=hex_digits(bits[name]),
                                 packing="lsb-first", layout=f"sparse_dsp_{name}")
        return {**manifest, "tensors": tensors, "side": side}

    return write_image_dir(outdir, fill)


def export_sparse_dsp(outdir: Path | str, config: SparseDSPConfig, W: torch.Tensor | np.ndarray,
                      X: torch.Tensor | np.ndarray, *, mode: TileMode, method: str = "magnitude",
                      calib: torch.Tensor | np.ndarray | None = None,
                      provenance: dict | None = None) -> dict:
    """Prune + quantize float W [R, K] (calibration `calib` [T, K] for Wanda),
    quantize activations X [Ma, K] per token, write the image directory."""
    cfg = _cfg(config)
    layer = quantize_sparse(W, config=cfg, mode=mode, method=method, X=calib)
    a, s_a = quantize_act(X)
    prov = {"method": method, **(provenance or {})}
    return write_sparse_dsp_images(outdir, cfg, layer=layer, a=a, s_a=s_a, provenance=prov)


@dataclass(frozen=True, kw_only=True)
class SparseDSPImages:
    """A verified image directory: the layer, activations, golden acc [Ma, R]
    and the stream words (ints, as in the .hex files)."""

    path: Path
    config: SparseDSPConfig
    manifest: dict
    layer: SparseLayer
    a: torch.Tensor
    s_a: torch.Tensor
    acc: torch.Tensor
    words: dict

    @property
    def mode(self) -> TileMode:
        """The tile mode the layer was compressed for."""
        return self.layer.mode

    @property
    def tiles(self) -> int:
        """Tiles the chain runs: one ctrl word each."""
        return len(self.words["ctrl"])

    @property
    def kept_macs(self) -> int:
        """MACs the chain does: L per weight beat (the kept weights only)."""
        return len(self.words["weight"]) * self.config.L

    @property
    def dense_macs(self) -> int:
        """MACs of the same product with dense weights: Ma * R * K."""
        return int(self.a.shape[0]) * self.layer.rows * self.config.K


def load_sparse_dsp(outdir: Path | str, config: SparseDSPConfig) -> SparseDSPImages:
    """Read and verify an image directory: checksums, configuration, the
    compressed format (indices in range, strictly increasing inside a block, so
    no block holds more than N values), and every .hex word against the words
    recomputed from the .npy tensors (which also re-derives golden's result)."""
    cfg = _cfg(config)
    outdir = Path(outdir)
    man = read_manifest_for(outdir, cfg, fmt=FORMAT, version=FORMAT_VERSION, fix=_FIX)
    mpath = outdir / MANIFEST
    try:
        mode = TileMode(**man["mode"]).check(cfg)
        arr = read_npy(outdir, man["side"])
        hexw = read_words(outdir, man)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, QuantflowError):
            raise
        raise QuantflowError(f"{mpath} is incomplete or inconsistent ({e}); {_FIX}") from None
    t = lambda k: torch.from_numpy(arr[k].astype(np.int64))  # noqa: E731
    try:
        values, indices = check_compressed(t("values"), t("indices"), mode.nm, cfg.K)
    except ValueError as e:
        raise QuantflowError(f"{outdir}: {e}") from None
    layer = SparseLayer(mode=mode, values=values, indices=indices,
                        s1=torch.from_numpy(arr["s1"].astype(np.float32)),
                        s2=t("s2") if mode.w4 else None, z=t("z") if mode.w4 else None)
    a = t("act")
    words = stream_words(cfg, layer, a)
    if set(words) != set(hexw):
        raise QuantflowError(f"{outdir}: streams {sorted(hexw)} do not match mode "
                             f"{mode.as_dict()}; {_FIX}")
    for name in words:
        if words[name] != hexw[name]:
            raise QuantflowError(f"{outdir / (name + '.hex')} disagrees with the tensors "
                                 f"(values/indices/scales/act); {_FIX}")
    acc = torch.from_numpy(arr["result"].astype(np.int32))
    return SparseDSPImages(path=outdir, config=cfg, manifest=man, layer=layer, a=a.to(torch.int8),
                           s_a=torch.from_numpy(arr["s_a"]), acc=acc, words=words)
