"""quantflow.models loaders on the folders real checkpoints ship as: bf16/fp16
safetensors, sharded safetensors with an index, Llama 3 rope scaling (against
transformers), and config.json fields the Llama does not implement (refused by
name). Every folder is a tiny random Llama built here in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantflow.errors import QuantflowError
from quantflow.models import LlamaConfig, LlamaForCausalLM, load_gguf, load_model
from quantflow.models.llama import RopeScaling, rope_cos_sin, rope_inv_freq

st = pytest.importorskip("safetensors.torch")
torch.set_num_threads(1)

TINY = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
IDS = torch.randint(0, TINY.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))


def _randomize(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights large enough that the logits depend visibly on every detail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    return m.eval()


def _state(seed=0) -> dict:
    return _randomize(LlamaForCausalLM(TINY), seed).state_dict()


def _save(folder: Path, cfg: dict, sd: dict, *, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.contiguous() for k, v in sd.items()}
    if shards == 1:
        st.save_file(sd, str(folder / "model.safetensors"))
        return folder
    names = sorted(sd)
    weight_map = {}
    for i in range(shards):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        st.save_file({k: sd[k] for k in part}, str(folder / fn))
        weight_map.update({k: fn for k in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


def _logits(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return load_model(str(folder), progress=False).model(IDS)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_folder_loads_as_float32(tmp_path, dtype):
    low = {k: v.to(dtype) for k, v in _state().items()}
    _save(tmp_path / "half", TINY.as_dict(), low)
    _save(tmp_path / "f32", TINY.as_dict(), {k: v.float() for k, v in low.items()})
    lm = load_model(str(tmp_path / "half"), progress=False)
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    ours = _logits(tmp_path / "half")
    assert bool(torch.isfinite(ours).all())
    assert torch.equal(ours, _logits(tmp_path / "f32"))


def test_quantized_tensor_dtype_refused(tmp_path):
    sd = _state()
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"].to(
        torch.float8_e4m3fn)
    _save(tmp_path / "f8", TINY.as_dict(), sd)
    with pytest.raises(QuantflowError, match=r"'model.layers.0.mlp.up_proj.weight' is "
                                             r"torch.float8_e4m3fn.*bfloat16 release"):
        load_model(str(tmp_path / "f8"), progress=False)


# --------------------------------------------------------------------------- shards
def test_sharded_folder_equals_single_file(tmp_path):
    sd = _state(1)
    _save(tmp_path / "one", TINY.as_dict(), sd)
    _save(tmp_path / "three", TINY.as_dict(), {k: v.to(torch.bfloat16) for k, v in sd.items()},
          shards=3)
    _save(tmp_path / "three32", TINY.as_dict(),
          {k: v.to(torch.bfloat16).float() for k, v in sd.items()})
    assert len(list((tmp_path / "three").glob("model-0000?-of-00003.safetensors"))) == 3
    assert torch.equal(_logits(tmp_path / "three"), _logits(tmp_path / "three32"))
    _save(tmp_path / "three_f32", TINY.as_dict(), sd, shards=3)
    assert torch.equal(_logits(tmp_path / "three_f32"), _logits(tmp_path / "one"))


def test_missing_shard_names_file_and_fix(tmp_path):
    f = _save(tmp_path / "m", TINY.as_dict(), _state(), shards=3)
    (f / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(QuantflowError, match=r"model-00002-of-00003\.safetensors is missing:"
                                             r".*download every shard \(3 files"):
        load_model(str(f), progress=False)


def test_index_names_tensor_no_shard_holds(tmp_path):
    f = _save(tmp_path / "m", TINY.as_dict(), _state(), shards=3)
    idx = json.loads((f / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    (f / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(QuantflowError, match=r"maps tensor 'model.layers.9.mlp.up_proj.weight'"
                                             r" to model-00001-of-00003.*re-download"):
        load_model(str(f), progress=False)


def test_no_weights_at_all(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text(json.dumps(TINY.as_dict()))
    with pytest.raises(QuantflowError, match=r"model.safetensors does not exist.*"
                                             r"model.safetensors.index.json"):
        load_model(str(tmp_path / "e"), progress=False)


# --------------------------------------------------------------------------- rope scaling
def _transformers_folder(folder: Path, rope: dict | None, seed=2):
    tr = pytest.importorskip("transformers")
    c = TINY
    hcfg = tr.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                          intermediate_size=c.intermediate_size,
                          num_hidden_layers=c.num_hidden_layers,
                          num_attention_heads=c.num_attention_heads,
                          num_key_value_heads=c.num_key_value_heads, rope_theta=c.rope_theta,
                          rms_norm_eps=1e-5, max_position_embeddings=256,
                          tie_word_embeddings=False, rope_scaling=rope)
    hf = _randomize(tr.LlamaForCausalLM(hcfg), seed)
    hf.save_pretrained(str(folder))
    return hf


def test_llama3_rope_matches_transformers(tmp_path):
    hf = _transformers_folder(tmp_path / "hf", dict(LLAMA3))
    lm = load_model(str(tmp_path / "hf"), progress=False)
    cfg = lm.model.config
    assert cfg.rope_scaling == RopeScaling(factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=64)
    # the frequencies the integer model's cos/sin table is built from
    assert torch.equal(cfg.rope_inv_freq(), hf.model.rotary_emb.inv_freq)
    with torch.no_grad():
        ours, theirs = lm.model(IDS), hf(IDS).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    # the scaling matters on this sequence: unscaled RoPE is far off
    plain = LlamaForCausalLM(LlamaConfig.from_dict({**cfg.as_dict(), "rope_scaling": None}))
    plain.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        assert (plain.eval()(IDS) - theirs).abs().max() > 100 * 1e-4


def test_llama3_rope_old_config_keys(tmp_path):
    """Checkpoints written before transformers 5 hold rope_theta and rope_scaling with
    the older key "type"; they load to the same model."""
    _transformers_folder(tmp_path / "hf", dict(LLAMA3))
    cpath = tmp_path / "hf" / "config.json"
    cfg = json.loads(cpath.read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    cfg["rope_scaling"] = params
    new = load_model(str(tmp_path / "hf"), progress=False).model.config
    cpath.write_text(json.dumps(cfg))
    old = load_model(str(tmp_path / "hf"), progress=False).model.config
    assert old == new and old.rope_scaling is not None


def test_default_rope_folder_from_transformers(tmp_path):
    """transformers >= 5 writes rope_theta inside rope_parameters; it must not fall back
    to the default theta."""
    tr = pytest.importorskip("transformers")
    hcfg = tr.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          rope_theta=500.0)
    hf = _randomize(tr.LlamaForCausalLM(hcfg), 3)
    hf.save_pretrained(str(tmp_path / "hf"))
    lm = load_model(str(tmp_path / "hf"), progress=False)
    assert lm.model.config.rope_theta == 500.0 and lm.model.config.rope_scaling is None
    with torch.no_grad():
        ours, theirs = lm.model(IDS), hf(IDS).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_rope_cos_sin_uses_the_config_frequencies():
    sc = RopeScaling(**{k: v for k, v in LLAMA3.items() if k != "rope_type"})
    cfg = LlamaConfig(**{**TINY.__dict__, "rope_scaling": sc})
    cos, sin = LlamaForCausalLM(cfg).rope(5)
    pos = torch.arange(5, dtype=torch.float32).unsqueeze(1)
    ang = torch.cat([pos * cfg.rope_inv_freq()] * 2, dim=1)
    assert torch.equal(cos, ang.cos()) and torch.equal(sin, ang.sin())
    assert not torch.equal(cfg.rope_inv_freq(), rope_inv_freq(16, cfg.rope_theta))
    c2, s2 = rope_cos_sin(3, 16, cfg.rope_theta, offset=2, scaling=sc)
    assert torch.equal(c2, cos[2:]) and torch.equal(s2, sin[2:])


def test_config_round_trip_with_scaling():
    sc = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=8192)
    cfg = LlamaConfig(**{**TINY.__dict__, "rope_scaling": sc, "rope_theta": 500000.0})
    d = json.loads(json.dumps(cfg.as_dict()))
    assert d["rope_scaling"]["rope_type"] == "llama3"
    assert LlamaConfig.from_dict(d) == cfg
    assert LlamaConfig.from_dict(json.loads(json.dumps(TINY.as_dict()))) == TINY


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"type": "dynamic", "factor": 2.0},
                                  {"rope_type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 64}])
def test_unsupported_rope_type_refused_by_name(tmp_path, rope):
    name = rope.get("rope_type", rope.get("type"))
    _save(tmp_path / "r", {**TINY.as_dict(), "rope_scaling": rope}, _state())
    with pytest.raises(QuantflowError, match=rf"config.json: rope type '{name}' is not "
                                             rf"supported \(supported: 'default', 'llama3'\)"):
        load_model(str(tmp_path / "r"), progress=False)


# --------------------------------------------------------------------------- config fields
def test_unknown_field_refused_by_name(tmp_path):
    _save(tmp_path / "u", {**TINY.as_dict(), "sliding_window": 4096, "qk_layernorm": True},
          _state())
    with pytest.raises(QuantflowError, match=r"fields \['qk_layernorm', 'sliding_window'\] "
                                             r"are not understood.*remove it from config.json"):
        load_model(str(tmp_path / "u"), progress=False)


@pytest.mark.parametrize("field,value", [("hidden_act", "gelu"), ("attention_bias", True),
                                         ("mlp_bias", True), ("pretraining_tp", 2),
                                         ("model_type", "llama")])
def test_fixed_fields(tmp_path, field, value):
    _save(tmp_path / "f", {**TINY.as_dict(), field: value}, _state())
    if field == "model_type":  # the one value this Llama implements loads
        load_model(str(tmp_path / "f"), progress=False)
        return
    with pytest.raises(QuantflowError, match=rf"'{field}' = {value!r} is not supported"):
        load_model(str(tmp_path / "f"), progress=False)


def test_real_checkpoint_metadata_is_accepted(tmp_path):
    """The fields a real Hugging Face Llama config.json carries (SmolLM2's, with its
    nanotron extras) load; head_dim must agree; omitted optional fields take
    transformers' defaults."""
    sd = _state(4)
    real = {"architectures": ["LlamaForCausalLM"], "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0,
            "hidden_act": "silu", "initializer_range": 0.04, "is_llama_config": True,
            "mlp_bias": False, "pretraining_tp": 1, "rope_interleaved": False,
            "rope_scaling": None, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
            "use_cache": True, "head_dim": 16, "pad_token_id": None}
    _save(tmp_path / "a", TINY.as_dict(), sd)
    _save(tmp_path / "b", {**TINY.as_dict(), **real}, sd)
    assert torch.equal(_logits(tmp_path / "a"), _logits(tmp_path / "b"))
    _save(tmp_path / "hd", {**TINY.as_dict(), "head_dim": 32}, sd)
    with pytest.raises(QuantflowError, match="head_dim 32 differs"):
        load_model(str(tmp_path / "hd"), progress=False)
    short = {k: v for k, v in TINY.as_dict().items()
             if k not in ("rms_norm_eps", "max_position_embeddings", "rope_theta",
                          "num_key_value_heads", "rope_scaling")}
    c = LlamaConfig.from_dict({**short, "tie_word_embeddings": True})
    assert (c.rms_norm_eps, c.max_position_embeddings, c.rope_theta,
            c.num_key_value_heads) == (1e-6, 2048, 10000.0, 4)
    assert LlamaConfig.from_dict(short).tie_word_embeddings is False


# --------------------------------------------------------------------------- GGUF
def _gguf(path: Path, extra_tensor: str):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    w.add_tensor(extra_tensor, np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("tensor,match", [
    ("rope_freqs.weight", r"RoPE scaling \(rope_freqs\) in a GGUF file is not supported"),
    ("blk.0.attn_q.bias", r"tensors \['blk.0.attn_q.bias'\].*not supported")])
def test_gguf_features_not_silently_dropped(tmp_path, tensor, match):
    with pytest.raises(QuantflowError, match=match):
        load_gguf(_gguf(tmp_path / "m.gguf", tensor), progress=False)
