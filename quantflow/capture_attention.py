"""Capture real attention tensors from SmolLM2 (quantflow.models) on real text
(quantflow.text): Q and K after RoPE, V, and the attention output, per layer.

    python -m quantflow.capture_attention --layer 10 \
        --out cosim/data/kv4_smollm2_layer10.npz

writes the KV4 attention fixture (float16, ~0.5 MB): q [Hq, queries, D] (the
last `queries` positions), k and v [Hkv, tokens, D], o [Hq, queries, D] (the
model's causal attention output for those queries), and `meta` (JSON: model,
text, layer, positions). Deterministic on one machine: the same command rewrites
the same file (the capture runs on one torch thread). Another CPU may order the
float32 reductions differently and round a few values to the neighbouring float16.
"""
from __future__ import annotations

import argparse
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from quattro_fs import atomic_write_bytes

from .errors import QuantflowError

if TYPE_CHECKING:
    from .models.llama import LlamaForCausalLM

__all__ = ["capture_layers", "capture_fixture", "load_fixture", "real_tokens"]

DEFAULT_MODEL = "smollm2"
DEFAULT_TEXT = "hamlet"


def real_tokens(tokenizer: object, *, tokens: int = 512, text: str = DEFAULT_TEXT) -> torch.Tensor:
    """The first evaluation window [1, tokens] of a real text."""
    from .text import evaluation_tokens
    return evaluation_tokens(tokenizer, text=text, windows=1, length=tokens)


@torch.no_grad()
def capture_layers(model: LlamaForCausalLM, ids: torch.Tensor,
                   layers: Iterable[int] | None = None) -> dict[int, tuple]:
    """{layer: (q [Hq, T, D], k [Hkv, T, D], v [Hkv, T, D])} float32 for batch 0 of
    ids [1, T], from one float forward pass (RoPE applied, no quantization)."""
    from .models.llama import LlamaForCausalLM
    if not isinstance(model, LlamaForCausalLM):
        raise QuantflowError(f"capture needs a quantflow Llama model, got {type(model).__name__}")
    n = len(model.model.layers)
    want = range(n) if layers is None else list(layers)
    for i in want:
        if not 0 <= i < n:
            raise QuantflowError(f"layer {i} does not exist (the model has {n}); pick 0..{n - 1}")
    out: dict[int, tuple] = {}
    hooks = []

    def hook(i):
        def f(mod, args):
            q, k, v = mod.qkv(*args)
            out[i] = (q[0].float().clone(), k[0].float().clone(), v[0].float().clone())
        return f

    for i in want:
        hooks.append(model.model.layers[i].self_attn.register_forward_pre_hook(hook(i)))
    try:
        model.hidden_states(ids)
    finally:
        for h in hooks:
            h.remove()
    return out


def _causal_out(q, k, v, positions) -> torch.Tensor:
    """Causal attention output [Hq, len(positions), D] (GQA: k/v repeated)."""
    g = q.shape[0] // k.shape[0]
    kk = k.repeat_interleave(g, 0).double()
    vv = v.repeat_interleave(g, 0).double()
    qq = q[:, positions].double()
    s = qq @ kk.transpose(1, 2) / q.shape[-1] ** 0.5
    mask = torch.arange(k.shape[1]).unsqueeze(0) > torch.as_tensor(positions).unsqueeze(1)
    s = s.masked_fill(mask.unsqueeze(0), float("-inf"))
    return F.softmax(s, -1) @ vv


@contextmanager
def _one_thread():
    """torch on one thread, the caller's thread count restored after: how a
    float reduction is split depends on the threads (and on the load when they
    are many), and with it the last bits of the captured tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def capture_fixture(out_path: Path | str, *, layer: int = 10, tokens: int = 512, queries: int = 64,
                    model_name: str = DEFAULT_MODEL, text: str = DEFAULT_TEXT) -> dict:
    """Write the fixture (module docstring) atomically; returns its meta dict."""
    from .models import load_model
    if not 1 <= queries <= tokens:
        raise QuantflowError(f"queries must be in [1, tokens={tokens}], got {queries}")
    pos = list(range(tokens - queries, tokens))
    with _one_thread():
        lm = load_model(model_name, progress=False)
        ids = real_tokens(lm.tokenizer, tokens=tokens, text=text)
        q, k, v = capture_layers(lm.model, ids, [layer])[layer]
        o = _causal_out(q, k, v, pos)
    meta = {"model": model_name, "model_description": "SmolLM2-135M-Instruct (GGUF Q4_1 "
            "dequantized, quantflow.models)", "text": text, "layer": layer, "tokens": tokens,
            "query_positions": [pos[0], pos[-1]], "head_dim": int(q.shape[-1]),
            "q_heads": int(q.shape[0]), "kv_heads": int(k.shape[0]),
            "generator": "python -m quantflow.capture_attention"}
    npz = io.BytesIO()
    np.savez_compressed(npz, q=q[:, pos].numpy().astype(np.float16),
                        k=k.numpy().astype(np.float16), v=v.numpy().astype(np.float16),
                        o=o.numpy().astype(np.float16), meta=np.array(json.dumps(meta)))
    atomic_write_bytes(out_path, npz.getvalue())
    return meta


def load_fixture(path: Path | str) -> dict:
    """{q, k, v, o: float32 tensors, meta: dict} of a captured fixture."""
    path = Path(path)
    if not path.is_file():
        raise QuantflowError(f"{path} is missing; regenerate it with "
                             f"python -m quantflow.capture_attention --out {path}")
    with np.load(path, allow_pickle=False) as z:
        d = {n: torch.from_numpy(z[n].astype(np.float32)) for n in ("q", "k", "v", "o")}
        d["meta"] = json.loads(str(z["meta"]))
    return d


def main(argv: list[str] | None = None) -> int:
    """`python -m quantflow.capture_attention`: capture the fixture into --out;
    returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--text", default=DEFAULT_TEXT)
    a = ap.parse_args(argv)
    meta = capture_fixture(a.out, layer=a.layer, tokens=a.tokens, queries=a.queries,
                           model_name=a.model, text=a.text)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1024:.0f} KiB): {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
