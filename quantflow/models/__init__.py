"""Real models for quantflow (DESIGN §4): loaders and a plain PyTorch Llama.

    from quantflow.models import load_model
    lm = load_model("smollm2")        # prepared once into build/models/smollm2
    logits = lm.model(lm.encode("To be, or not to be")[None])
"""
from .llama import LlamaConfig, LlamaForCausalLM, RMSNorm, apply_rope, rope_cos_sin
from .loaders import (KNOWN_MODELS, SUPPORTED_ARCHITECTURES, LoadedModel, ModelSource,
                      build_dir, check_finite, gguf_unpermute, linear_layers, load_gguf,
                      load_hf_folder, load_model, models_dir, prepare_model, require,
                      wrap_module)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "RMSNorm", "apply_rope", "rope_cos_sin",
           "KNOWN_MODELS", "SUPPORTED_ARCHITECTURES", "LoadedModel", "ModelSource",
           "build_dir", "check_finite", "gguf_unpermute", "linear_layers", "load_gguf",
           "load_hf_folder", "load_model", "models_dir", "prepare_model", "require",
           "wrap_module"]
