"""Integer-tensor checks and the int32 wrap shared by the golden models.

Same exception policy as golden.validate: an argument of the wrong type (not a
tensor, or a tensor whose dtype is not an integer) raises TypeError; a tensor
of the right type with the wrong dimensionality, shape or an element out of
range raises ValueError. Each message names the argument, the cause and the
fix; a range error also names the first offending index and its value.

  int_tensor(name, x)                     torch / numpy integer tensor -> int64
  check_dims(name, x, dims, what)         x.dim() == dims ("what" e.g. "[M, K]")
  check_shape(name, x, shape, what)       tuple(x.shape) == shape
  check_range(name, x, lo, hi, why)       lo <= x <= hi elementwise
  wrap_int32(x)                           two's-complement wrap to ACC_BITS -> int32

Imports torch (and numpy, whose arrays are what quantflow's .npy files hold),
so configuration modules and `hdl` must not import it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from golden.formats import ACC_BITS

__all__ = ["int_tensor", "check_dims", "check_shape", "check_range", "wrap_int32"]


def int_tensor(name: str, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`x` (a torch tensor or numpy array of an integer dtype) as int64."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got numpy dtype {x.dtype}; "
                            f"quantize it first (quantflow)")
        return torch.from_numpy(x.astype(np.int64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of integers, got "
                        f"{type(x).__name__}; convert it with torch.as_tensor(...)")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}; quantize it "
                        f"first (quantflow) or cast with .to(torch.int64)")
    return x.to(torch.int64)


def check_dims(name: str, x: torch.Tensor, dims: int, what: str) -> None:
    """Raise ValueError unless x has `dims` dimensions (`what` names the expected shape)."""
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {what}, got shape {list(x.shape)}")


def check_shape(name: str, x: torch.Tensor, shape: Sequence[int], what: str) -> None:
    """`x` has exactly `shape`; `what` spells it symbolically (e.g. "[N, K/group]")."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {what} = {list(shape)}, got "
                         f"{list(x.shape)}")


def check_range(name: str, x: torch.Tensor, lo: int, hi: int, why: str) -> None:
    """Every element in [lo, hi]; `why` says where the bound comes from."""
    if x.numel() == 0:
        return
    bad = (x < lo) | (x > hi)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(idx)} = {int(x[idx])} is outside [{lo}, {hi}] "
                         f"({why})")


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement wrap of an integer tensor to ACC_BITS (= 32) bits, as the
    hardware's 32-bit adders do -> int32."""
    x = x.to(torch.int64)
    half = 1 << (ACC_BITS - 1)
    return (((x + half) & ((1 << ACC_BITS) - 1)) - half).to(torch.int32)
