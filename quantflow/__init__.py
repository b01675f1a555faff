"""quantflow: quantizers, packers and memory-image emitters (DESIGN §3.1, §3.2, §3.8).

Import rules (enforced by tests/test_layering.py): quantflow imports golden
(the numeric specification) and quattro_fs, never hdl, cosim or fpga_boards.
"""
from .errors import QuantflowError
from .imagedir import read_hex, read_manifest, write_hex
from .mixpe import (FORMAT, FORMAT_VERSION, MixPEImages, export_mixpe, load_mixpe,
                    pack_act_words, pack_code_words, pack_result_words, pack_scale_words,
                    unpack_act_words, unpack_code_words, unpack_result_words,
                    unpack_scale_words, write_mixpe_images)
from .pack import pack_words, pad_to_multiple, unpack_words
from .qoq import QoQWeights, quantize_act, quantize_groups, quantize_qoq
from .schemes import SCHEMES, ActScheme, KVScheme, QuantScheme, WeightScheme, get_scheme
from .synthetic import random_activations, random_linear_weights

# The real-model flow lives in submodules that load heavier packages
# (tokenizers, gguf, matplotlib) only when used: quantflow.models, .text, .fakequant,
# .evaluate, .export_model. These names resolve to them on first access.
_LAZY = {
    "load_model": "models", "prepare_model": "models", "quantize_model": "fakequant",
    "QuantizedModel": "fakequant", "use_integer_path": "fakequant",
    "evaluate": "evaluate", "export_model": "export_model",
    "export_real_layer": "export_model", "load_model_export": "export_model",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'quantflow' has no attribute {name!r}")

__all__ = [
    "QuantflowError",
    "QoQWeights", "quantize_qoq", "quantize_groups", "quantize_act",
    "pack_words", "unpack_words", "pad_to_multiple",
    "pack_act_words", "unpack_act_words", "pack_code_words", "unpack_code_words",
    "pack_scale_words", "unpack_scale_words", "pack_result_words", "unpack_result_words",
    "FORMAT", "FORMAT_VERSION", "MixPEImages", "export_mixpe", "write_mixpe_images",
    "load_mixpe", "read_manifest", "read_hex", "write_hex",
    "random_linear_weights", "random_activations",
    "QuantScheme", "WeightScheme", "ActScheme", "KVScheme", "SCHEMES", "get_scheme",
    *_LAZY,
]
