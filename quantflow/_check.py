"""The float-tensor check every quantizer starts with: one clear error per
problem (a wrong type is a TypeError, a bad value a QuantflowError). Integer
and configuration checks are golden.validate's."""
from __future__ import annotations

import numpy as np
import torch

from .errors import QuantflowError


def as_float_tensor(name: str, x, dims: int, what: str) -> torch.Tensor:
    """Return `x` as a float32 torch tensor, refusing non-float dtypes, wrong
    dimensionality and non-finite values (the first bad index is named)."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise QuantflowError(f"{name} must be a floating-point tensor, got numpy dtype "
                                 f"{x.dtype}; pass the float weights/activations")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got "
                        f"{type(x).__name__}")
    if not x.is_floating_point():
        raise QuantflowError(f"{name} must be a floating-point tensor, got {x.dtype}; pass "
                             f"the float weights/activations (cast with .float())")
    if x.dim() != dims:
        raise QuantflowError(f"{name} must be {dims}-D {what}, got shape {list(x.shape)}")
    x = x.detach().to("cpu")
    # amax propagates NaN and keeps inf: one cheap reduction instead of an
    # elementwise isfinite mask over every call (the mask only to name the index)
    if x.numel() and not bool(torch.isfinite(x.abs().amax())):
        bad = ~torch.isfinite(x)
        idx = [int(i) for i in bad.nonzero()[0]]
        raise QuantflowError(f"{name} contains a non-finite value ({float(x[tuple(idx)])}) "
                             f"at index {idx}; clean the tensor before quantizing")
    return x.to(torch.float32)
