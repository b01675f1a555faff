"""Greedy text generation on three engines:

    python -m quantflow generate --model smollm2 --prompt "..." --max-new-tokens 32 \
        --engine {float,fakequant,integer} [--scheme w4a8kv4-g64] [--image DIR]

  float      the model as loaded (the "FP32" reference)
  fakequant  the model quantized by the scheme in float arithmetic (quantflow.fakequant)
  integer    golden.decoder.IntegerDecoder on the compiled model image
             (quantflow.compile; compiled on first use when --image is absent)

The text is printed as it appears, then the token ids. The float engines have no
KV cache (each step recomputes the sequence); the integer engine prefills in
chunks (a progress bar for long prompts) and decodes one token per step, as the
hardware does; chunked prefill computes the same numbers as one block, because
each query reads the cache only up to its own position.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from golden.decoder import IntegerDecoder

from .compile import compile_model, compiled_dir, load_image
from .errors import QuantflowError
from .fakequant import quantize_model
from .models.loaders import LoadedModel, load_model, require
from .schemes import DEFAULT_SCHEME
from .text import calibration_tokens

__all__ = ["ENGINES", "Generation", "generate", "integer_decoder", "integer_greedy", "PREFILL_CHUNK"]

ENGINES = ("float", "fakequant", "integer")
#: Prompt tokens per integer prefill step (the progress bar's unit).
PREFILL_CHUNK = 64


@dataclass
class Generation:
    """The result of one generate() call: the engine, the prompt's and the new token
    ids, the new text and the seconds it took."""
    engine: str
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0


def integer_decoder(model: str, scheme: str, *, image: Path | str | None = None,
                    context: int = 1024, progress: bool = True,
                    log: Callable[[str], object] = print) -> IntegerDecoder:
    """The integer model of `model` under `scheme` from its compiled image
    (compiled into build/compiled/ first when `image` is None and none exists)."""
    d = Path(image) if image is not None else compiled_dir(model, scheme)
    if image is None and not (d / "manifest.json").is_file():
        log(f"no compiled image at {d}: compiling {model} {scheme} (once)")
        compile_model(model, scheme, out=d, context=context, progress=progress, log=log)
    config, tensors = load_image(d)
    return IntegerDecoder(config, tensors)


def _check_prompt(ids: torch.Tensor, context: int | None) -> None:
    if ids.numel() == 0:
        raise QuantflowError("the prompt is empty (no tokens); give some text with --prompt")
    if context is not None and ids.numel() > context:
        raise QuantflowError(f"the prompt has {ids.numel()} tokens, longer than the "
                             f"{context}-token context the image was compiled for; shorten "
                             f"it or recompile with a larger --context")


@torch.no_grad()
def _float_greedy(model, ids: torch.Tensor, n: int, on_token) -> list[int]:
    seq = ids.clone()
    out = []
    for _ in range(n):
        nxt = int(model(seq[None])[0, -1].argmax())
        out.append(nxt)
        on_token(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    return out


def integer_greedy(dec: IntegerDecoder, ids: torch.Tensor, n: int,
                   on_token: Callable[[int], object], progress: bool) -> list[int]:
    """Greedy decoding of n tokens after `ids` on the integer model: prefill in
    PREFILL_CHUNK blocks, then one token per step; `on_token(id)` as each appears."""
    state = dec.new_state()
    chunks = list(torch.split(ids, PREFILL_CHUNK))
    it = chunks
    if progress and len(chunks) > 1:
        it = require("tqdm").tqdm(chunks, desc="prefill", unit="chunk", leave=False,
                                  dynamic_ncols=True, file=sys.stderr)
    for chunk in it:
        r = dec.step(chunk, state)
    out = []
    while len(out) < n:
        nxt = int(r.next_tokens()[-1])
        out.append(nxt)
        on_token(nxt)
        if len(out) == n or state.pos >= dec.config.max_context:
            break
        r = dec.step(torch.tensor([nxt]), state)
    return out


def generate(model: str | LoadedModel = "smollm2", prompt: str = "", *, max_new_tokens: int = 32,
             engine: str = "integer", scheme: str = DEFAULT_SCHEME,
             image: Path | str | None = None, stream: Callable[[str], object] | None = None,
             progress: bool = True, log: Callable[[str], object] = print) -> Generation:
    """Greedy generation (module docstring); `stream(text_piece)` receives the text
    as it appears."""
    if engine not in ENGINES:
        raise QuantflowError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise QuantflowError(f"--max-new-tokens must be a positive integer, got "
                             f"{max_new_tokens!r}")
    lm = model if isinstance(model, LoadedModel) else load_model(model, progress=progress)
    ids = lm.encode(prompt)
    _check_prompt(ids, None)
    dec = None
    if engine == "integer":
        dec = integer_decoder(lm.name, scheme, image=image, progress=progress, log=log)
        _check_prompt(ids, dec.config.max_context)
    g = Generation(engine=engine, prompt_ids=ids.tolist())
    shown = ""

    def on_token(t: int) -> None:
        nonlocal shown
        g.token_ids.append(t)
        text = lm.tokenizer.decode(g.token_ids)
        if stream is not None and text.startswith(shown):
            stream(text[len(shown):])
        shown = text

    t0 = time.perf_counter()
    if dec is not None:
        integer_greedy(dec, ids, max_new_tokens, on_token, progress)
    else:
        net = lm.model
        if engine == "fakequant":
            cal = calibration_tokens(lm.tokenizer)
            net = quantize_model(lm, scheme, calib_ids=cal, progress=progress,
                                 keep_reference=False).model
        _float_greedy(net, ids, max_new_tokens, on_token)
    g.seconds = time.perf_counter() - t0
    g.text = lm.tokenizer.decode(g.token_ids)
    return g
