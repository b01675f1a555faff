"""quantflow: quantizers, packers and memory-image emitters (DESIGN §3.1, §3.2, §3.8).

Imports golden (the numeric specification), never hdl or cosim.
"""
from .errors import QuantflowError
from .images import (FORMAT, FORMAT_VERSION, MixPEImages, export_mixpe, load_mixpe,
                     read_hex, read_manifest, write_hex, write_mixpe_images)
from .pack import (pack_act_words, pack_code_words, pack_result_words, pack_scale_words,
                   pack_words, pad_to_multiple, unpack_act_words, unpack_code_words,
                   unpack_result_words, unpack_scale_words, unpack_words)
from .qoq import QoQWeights, quantize_act, quantize_groups, quantize_qoq
from .synthetic import random_activations, random_linear_weights

__all__ = [
    "QuantflowError",
    "QoQWeights", "quantize_qoq", "quantize_groups", "quantize_act",
    "pack_words", "unpack_words", "pad_to_multiple",
    "pack_act_words", "unpack_act_words", "pack_code_words", "unpack_code_words",
    "pack_scale_words", "unpack_scale_words", "pack_result_words", "unpack_result_words",
    "FORMAT", "FORMAT_VERSION", "MixPEImages", "export_mixpe", "write_mixpe_images",
    "load_mixpe", "read_manifest", "read_hex", "write_hex",
    "random_linear_weights", "random_activations",
]
