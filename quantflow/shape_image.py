"""A model image described by its shape alone, for lowering a model that was never
quantized (LLaMA-2-7B on a laptop) to the core's program:

    img  = shape_image(decoder_config)           # no weights, no image.bin
    prog = compile_program(img, core)             # the same lowering as a real image

Tensor offsets are the ones quantflow.compile would write (`image_layout`), so
every address of the program is where a compiled image would put it. The only
values the compiler reads from an image are per-layer scalars that land in
instruction fields (the shift e of each linear and norm, the fraction bits) and
the SFU's sigmoid table (checked against the core's ROM): here the shifts and
fractions are 0 and the table is the SFU's own. No instruction's cycles depend on
those fields (hdl.core.cycle_model and golden.core.cycle_model read shapes,
groups, heads, flags and the registers), and tests/test_fpga_boards_perf.py holds a
shape-only program to a compiled one's cycles instruction by instruction.

The image has no bytes: `raw` only knows its length (the memory map needs it), and
anything that reads the data (build_memory, golden.core.execute) refuses it.
"""
from __future__ import annotations

import numpy as np
import torch

from golden.decoder import image_spec
from golden.decoder_config import DecoderConfig
from golden.sfu import silu_table
from golden.validate import expect_type

from .compile import image_layout
from .errors import QuantflowError
from .program import CompiledImage

__all__ = ["ShapeOnlyBytes", "shape_image"]


class ShapeOnlyBytes:
    """Stands in for image.bin's bytes: it has a length and no data."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def _refuse(self, *_):
        raise QuantflowError("a shape-only image (quantflow.shape_image) has no data: it "
                             "lowers a model to its program and cycle counts only; compile "
                             "the model (python -m quantflow compile) to run it")

    __getitem__ = __iter__ = __bytes__ = __buffer__ = _refuse


def shape_image(config: DecoderConfig) -> CompiledImage:
    """The CompiledImage of `config` without weights (module docstring)."""
    expect_type("config", config, DecoderConfig)
    entries, total = image_layout(config)
    tensors = {}
    for name, (shape, dtype) in image_spec(config).items():
        # the scalars the compiler copies into instruction fields; weights stay absent
        if name.endswith((".e", ".fracs", ".frac_k", ".frac_v")):
            tensors[name] = torch.from_numpy(np.zeros(shape, dtype=dtype))
    tensors["sfu.sigmoid"] = silu_table(config.sfu)
    return CompiledImage(config=config, tensors=tensors,
                         offsets={n: e["offset"] for n, e in entries.items()},
                         raw=ShapeOnlyBytes(total))
