"""Model shapes the system performance model (fpga_boards.perf) knows by name: the
Hugging Face config.json fields that shape a Llama decoder, copied from each model's
own config.json (the address is in `source`). No weights are read: the model is
lowered to the core's program from its shape alone (quantflow.shape_image).

Any other Llama config.json is accepted by path (`load_shape`), read by
quantflow.models.llama.LlamaConfig.from_dict, which refuses fields it does not
implement.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantflow.models.llama import LlamaConfig

__all__ = ["ModelShape", "MODELS", "ALIASES", "load_shape"]


@dataclass(frozen=True)
class ModelShape:
    """A model's architecture as its config.json gives it (no weights): name, source and fields."""
    name: str
    source: str          # where the config.json fields come from
    config: dict         # the config.json fields (Hugging Face names)

    def llama_config(self) -> LlamaConfig:
        """The shape as a quantflow LlamaConfig."""
        from quantflow.models.llama import LlamaConfig
        return LlamaConfig.from_dict(self.config)


MODELS = {m.name: m for m in (
    ModelShape(
        "llama2-7b", "https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json",
        {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
         "rms_norm_eps": 1e-05, "max_position_embeddings": 4096,
         "tie_word_embeddings": False}),
    ModelShape(
        "llama3.2-1b", "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
        {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
         "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
         "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
         "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"},
         "max_position_embeddings": 131072, "tie_word_embeddings": True}),
    ModelShape(
        "smollm2-135m",
        "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json",
        {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "rms_norm_eps": 1e-05, "rope_theta": 100000, "max_position_embeddings": 8192,
         "tie_word_embeddings": True}),
)}
#: The project's own model names (quantflow's loaders, cosim generate's records).
ALIASES = {"smollm2": "smollm2-135m"}


def load_shape(name_or_path: str) -> ModelShape:
    """A known model by name (MODELS, ALIASES), or a Hugging Face config.json (a file,
    or a folder holding one). ValueError naming the known models otherwise."""
    key = ALIASES.get(str(name_or_path).lower(), str(name_or_path).lower())
    if key in MODELS:
        return MODELS[key]
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"unknown model {name_or_path!r}: neither a known model "
                         f"({', '.join(sorted(MODELS))}) nor a config.json file; pass a "
                         f"Hugging Face config.json path for another Llama")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e})") from None
    return ModelShape(p.parent.name or p.stem, str(p), cfg)
