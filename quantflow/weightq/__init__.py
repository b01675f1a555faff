"""Output-aware weight quantization (issue 3). The per-layer entry point is
`quantize_weight` (see quantflow.weightq.core's docstring for the contract, including
which side input_scale folds into); `quantize_llama_weights` applies a scheme to a
whole Llama-family model, sequentially block by block."""
from .core import (METHODS, MIN_CALIB_TOKENS, Calibration, WeightQuantOptions,
                   WeightQuantResult, fold_output_scale, output_error, quantize_shared,
                   quantize_weight)
from .llama import quantize_llama_weights

__all__ = ["METHODS", "MIN_CALIB_TOKENS", "Calibration", "WeightQuantOptions",
           "WeightQuantResult", "fold_output_scale", "output_error", "quantize_shared",
           "quantize_weight", "quantize_llama_weights"]
