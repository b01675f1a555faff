"""The QoQ image set that MixPE and the LUT block share (DESIGN §3.2, §3.8):
the memory images act/code/scale/result (.hex + .npy) of QoQ weights
(q, s1, s2, z) and per-token INT8 activations, plus the side tensors
s1 [N] fp16, s_a [M] float32, s2 [N, G] uint8, z [N, G] uint8.

The blocks differ only in their word layouts: each passes its own words,
layout fields and unpackers (quantflow.mixpe, quantflow.lut).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from golden.formats import SCALE_BITS, SCALE_PAIR_BITS

from .errors import QuantflowError
from .imagedir import FIX, hex_digits, write_hex, write_image_dir, write_side
from .qoq import QoQWeights

__all__ = ["SCALE_FIELDS", "qoq_operands", "write_qoq_images", "QoQImages",
           "check_qoq_images", "qoq_fields", "agree"]

#: The manifest's bit fields of one scale element (golden.formats.SCALE_PAIR_BITS).
SCALE_FIELDS = {"s2": [0, SCALE_BITS], "zs2": [SCALE_BITS, SCALE_PAIR_BITS]}


def qoq_operands(weights: QoQWeights, a: torch.Tensor | np.ndarray, s_a: torch.Tensor | np.ndarray,
                 *, K: int, bits: int, group: int,
                 quantize: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(a, s_a as float32, M, N) once `weights` [N, K] are QoQWeights of `bits`
    and `group`, and a [M, K] and s_a [M] fit them and the configuration's K.
    `quantize`: the call that makes fitting weights (named in the errors)."""
    if not isinstance(weights, QoQWeights):
        raise TypeError(f"weights must be a QoQWeights, got {type(weights).__name__}; "
                        f"quantize them with {quantize}")
    if (weights.bits, weights.group) != (bits, group):
        raise QuantflowError(f"weights were quantized with bits={weights.bits}, "
                             f"group={weights.group} but the block reads bits={bits}, "
                             f"group={group}; quantize with {quantize}")
    a = torch.as_tensor(a)
    s_a = torch.as_tensor(s_a).to(torch.float32)
    N, Kw = weights.shape
    if a.dim() != 2 or a.shape[1] != Kw or Kw != K:
        raise QuantflowError(f"a {list(a.shape)} and weights {[N, Kw]} must share "
                             f"K = config.K = {K}")
    M = a.shape[0]
    if tuple(s_a.shape) != (M,):
        raise QuantflowError(f"s_a must have shape [{M}], got {list(s_a.shape)}")
    return a, s_a, M, N


def write_qoq_images(outdir: Path | str, *, weights: QoQWeights, a: torch.Tensor | np.ndarray,
                     s_a: torch.Tensor | np.ndarray, acc: torch.Tensor | np.ndarray, words: dict,
                     desc: dict, manifest: dict) -> dict:
    """Write a QoQ image set: the memory images act/code/scale/result (.hex of
    `words`, .npy of the tensors they pack; `desc`: each one's layout fields) and
    the side tensors s1, s_a, s2, z. `manifest`: the block's own fields, to which
    `tensors` and `side` are added. Returns the manifest."""
    s2 = weights.s2.numpy().astype(np.uint8)
    z = weights.z.numpy().astype(np.uint8)
    zs2 = (weights.z * weights.s2).numpy().astype(np.uint8)
    arrays = {
        "act": a.numpy().astype(np.int8),
        "code": weights.q.numpy().astype(np.uint8),
        "scale": np.stack([s2, zs2], axis=-1),
        "result": acc.numpy().astype(np.int32),
    }
    side = {
        "s1": (weights.s1.numpy().astype(np.float16), "per-channel fp16 scale [N]"),
        "s_a": (s_a.numpy().astype(np.float32), "per-token float32 scale [M]"),
        "s2": (s2, "integer group scale [N, G]"),
        "z": (z, "integer zero point [N, G]"),
    }

    def fill(tmp: Path) -> dict:
        tensors = {}
        for name, d in desc.items():
            write_hex(tmp / f"{name}.hex", words[name], d["word_bits"])
            np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
            tensors[name] = dict(hex=f"{name}.hex", npy=f"{name}.npy",
                                 shape=list(arrays[name].shape),
                                 dtype=str(arrays[name].dtype), words=len(words[name]),
                                 hex_digits=hex_digits(d["word_bits"]), packing="lsb-first",
                                 **d)
        return {**manifest, "tensors": tensors, "side": write_side(tmp, side)}

    return write_image_dir(outdir, fill)


@dataclass(frozen=True, kw_only=True)
class QoQImages:
    """A verified QoQ image set (quantflow.mixpe.MixPEImages, quantflow.lut.LUTImages).
    Tensors as torch: a int8 [M,K]; q, s2, z int32; s1 fp16 [N]; s_a float32 [M];
    acc int32 [M,N] (golden's expected result). *_words: the memory words (Python
    ints) exactly as in the .hex files."""

    path: Path
    config: object
    manifest: dict
    M: int
    N: int
    a: torch.Tensor
    q: torch.Tensor
    s2: torch.Tensor
    z: torch.Tensor
    s1: torch.Tensor
    s_a: torch.Tensor
    acc: torch.Tensor
    act_words: tuple[int, ...]
    code_words: tuple[int, ...]
    scale_words: tuple[int, ...]
    result_words: tuple[int, ...]

    @property
    def m_tiles(self) -> int:
        """Row tiles of the activations: M / rows."""
        return self.M // self.config.rows

    @property
    def n_tiles(self) -> int:
        """Column tiles of the weights: N / cols."""
        return self.N // self.config.cols

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the whole GEMM: M * N * K."""
        return self.M * self.N * self.config.K


def agree(outdir: Path, fname: str, ok: bool) -> None:
    """QuantflowError naming `fname` unless `ok` (a file disagrees with the others)."""
    if not ok:
        raise QuantflowError(f"{outdir / fname} disagrees with the other image files; {FIX}")


def check_qoq_images(outdir: Path, words: dict, arrays: dict, side: dict, *,
                     act: Callable[[list[int]], np.ndarray],
                     code: Callable[[list[int]], np.ndarray],
                     scale: Callable[[list[int]], tuple[np.ndarray, np.ndarray]],
                     result: Callable[[list[int]], np.ndarray]) -> None:
    """Every memory image's words, decoded by the block's unpacker (act, code,
    result: words -> array; scale: words -> (s2, zs2)), equal its .npy, and the
    side s2 and z agree with the scale words; the first file that disagrees is
    named."""
    agree(outdir, "act.hex", np.array_equal(act(words["act"]), arrays["act"]))
    agree(outdir, "code.hex", np.array_equal(code(words["code"]), arrays["code"]))
    s2w, zs2w = scale(words["scale"])
    agree(outdir, "scale.hex", np.array_equal(np.stack([s2w, zs2w], -1), arrays["scale"]))
    agree(outdir, "s2.npy", np.array_equal(side["s2"], s2w))
    agree(outdir, "z.npy", np.array_equal(side["z"].astype(np.int64) * s2w, zs2w))
    agree(outdir, "result.hex", np.array_equal(result(words["result"]), arrays["result"]))


def qoq_fields(words: dict, arrays: dict, side: dict) -> dict:
    """QoQImages' tensor and word fields from checked files."""
    return dict(
        a=torch.from_numpy(arrays["act"].astype(np.int8)),
        q=torch.from_numpy(arrays["code"].astype(np.int32)),
        s2=torch.from_numpy(side["s2"].astype(np.int32)),
        z=torch.from_numpy(side["z"].astype(np.int32)),
        s1=torch.from_numpy(side["s1"]),
        s_a=torch.from_numpy(side["s_a"].astype(np.float32)),
        acc=torch.from_numpy(arrays["result"].astype(np.int32)),
        act_words=tuple(words["act"]), code_words=tuple(words["code"]),
        scale_words=tuple(words["scale"]), result_words=tuple(words["result"]))
