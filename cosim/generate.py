"""Text generation through the co-simulated accelerator core, checked against the
integer golden token by token and instruction by instruction.

    python -m cosim generate --model smollm2 --prompt "The capital of France is" \
        --max-new-tokens 8 [--layers N] [--scheme w4a8kv4-g64-plain] [--device verilator]

The model's compiled image (quantflow.compile; compiled once into build/compiled/)
is lowered to the whole-model program (quantflow.program.compile_program: EMBED,
every layer, the final norm, LOGITS, ARGMAX; the KV cache in memory) for the
co-simulated core (quantflow.program.sim_core_for), and the host loop
(fpga_boards.host_core.generate: prompt blocks of max_tokens, then one decode
step per token) runs it on a device:

  verilator  the Verilated core and its AXI4 memory model, driven from Python over
             pipes (cosim.core_device.VerilatedCore: the clock runs in C++, the
             image loads as one binary copy). Every start of the core is compared
             with golden.core.execute of the same program on the same memory: every
             instruction's outputs (each layer's residual stream, the KV cache
             writes, the logits' accumulators, the argmax), bit for bit; the first
             difference is named (cosim.core.compare_runs). The comparison of a run
             overlaps the simulation of the next.
  sim        the Vitis kernel around the core under cocotb (cosim.kernel_core)
  xrt        a card (fpga_boards.host_core_xrt; needs XRT and an xclbin)

The generated tokens are also compared with the integer model's own greedy
decoding (quantflow.generate.integer_greedy on golden.decoder.IntegerDecoder, the
engine of `python -m quantflow generate --engine integer`). `--layers N` runs the
first N decoder layers only (a depth-reduced model: same image, same LM head),
for quick checks. The result goes to
build/sim/generate/<model>-<scheme>[-L<layers>]-<new tokens>.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from fpga_boards.host import XrtUnavailable
from fpga_boards.host_core import GENERATE_DIR
from golden.core import execute
from golden.core_config import Registers
from quantflow.schemes import DEFAULT_SCHEME
from quattro_fs import atomic_write_json

from . import runner
from .core import (REAL_MODEL, REAL_SCHEME, SIM_LATENCY, CoreCase, compare_runs, real_image,
                   rtl_steps)

if TYPE_CHECKING:
    from quantflow.program import CompiledImage

__all__ = ["GENERATE_DIR", "DEVICES", "depth_reduced", "generate_image", "run_generate", "main"]

DEVICES = ("verilator", "sim", "xrt")
#: U280 kernel clock the tokens/s figure assumes (the core's timing is not closed on a
#: part: docs/generate.md says so).
ASSUMED_CLOCK_MHZ = 300
DEFAULT_PROMPT = "The capital of France is"


def depth_reduced(image: CompiledImage, layers: int | None) -> CompiledImage:
    """`image` with only its first `layers` decoder layers in the program and the
    golden (the same bytes: later layers' tensors stay in memory, unread)."""
    from quantflow.program import CompiledImage
    d = image.config
    if layers is None or layers == d.layers:
        return image
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= d.layers:
        raise ValueError(f"--layers must be an int in [1, {d.layers}], got {layers!r}")
    keep = {k: v for k, v in image.tensors.items()
            if not k.startswith("layers.") or int(k.split(".")[1]) < layers}
    return CompiledImage(config=dataclasses.replace(d, layers=layers), tensors=keep,
                         offsets=image.offsets, raw=image.raw)


class _Checker:
    """Runs golden.core.execute on its own copy of the memory for every start the
    device made and compares the device's trace with it (in a worker thread, while
    the device simulates the next start)."""

    def __init__(self, program, memory, device):
        self.program = program
        self.mem = bytearray(memory)
        self.device = device
        self.pool = cf.ThreadPoolExecutor(max_workers=1)
        self.futures = []
        self.mismatch = None

    def submit(self, info) -> None:
        records, writes = self.device.take_records()
        self.futures.append(self.pool.submit(self._check, info, records, writes))

    def _check(self, info, records, writes) -> dict:
        from quantflow.program import write_tokens
        prog, core = self.program, self.program.core
        write_tokens(self.mem, prog, list(info.ids))
        before = bytes(self.mem)
        regs = Registers(pos=info.pos, tokens=len(info.ids))
        expected = execute(list(prog.words), self.mem, core, regs)
        name = f"{info.kind}@{info.pos}"
        case = CoreCase(config=core, memory=before,
                        runs=[{"prog": prog.memory_map.program.base, "pos": info.pos,
                               "tokens": len(info.ids), "name": name,
                               "words": [hex(w) for w in prog.words]}],
                        expected=[expected], memory_after=self.mem, name=name)
        recs = [(1,) + r[1:] for r in records]          # this run is the case's run 1
        got = rtl_steps(case, recs, writes)
        mm = compare_runs(case, got, [info.report])
        golden_next = int(expected[-1].outputs["out"][-1]) if expected[-1].op == "ARGMAX" \
            else None
        if mm is not None:
            mm["label"] = prog.labels[mm["index"]] if isinstance(mm.get("index"), int) else None
        return {"run": info.index, "name": name, "instructions": len(expected),
                "mismatch": mm, "golden_next": golden_next,
                "instructions_compared": len(got[0])}

    def results(self) -> list[dict]:
        out = [f.result() for f in self.futures]
        self.pool.shutdown()
        return out


def _device(kind: str, core, memory, run_dir: Path, *, latency: int, trace: bool, log):
    if kind == "verilator":
        from .core_device import VerilatedCore
        return VerilatedCore(core, mem_bytes=len(memory), run_dir=run_dir, latency=latency,
                             trace=trace, log=log)
    if kind == "sim":
        from .kernel_core import SimCoreDevice  # noqa: PLC0415 (cocotb only when asked)
        return SimCoreDevice(core, mem_bytes=len(memory), run_dir=run_dir)
    if kind == "xrt":
        from fpga_boards.host_core_xrt import XrtCoreDevice  # noqa: PLC0415
        return XrtCoreDevice.open_default(core, mem_bytes=len(memory))
    raise ValueError(f"unknown device {kind!r}; choose one of {', '.join(DEVICES)}")


def generate_image(img: CompiledImage, ids: list[int], max_new_tokens: int, *,
                   device: str = "verilator", check: bool = True, latency: int = SIM_LATENCY,
                   run_dir: Path, on_token: Callable[[int], object] | None = None,
                   poke: Iterable[tuple[int, bytes]] = (),
                   log: Callable[[str], object] = print) -> dict:
    """Greedy generation of `max_new_tokens` after `ids` on the whole-model program of
    the CompiledImage `img`, on `device`, compared with the integer golden (module
    doc). Returns the record's numeric part (tokens, checks, cycles, timings).
    `poke`: (address, bytes) written into the device's memory only, after the load
    (fault injection: the comparison must name the first instruction they change)."""
    from fpga_boards.host_core import generate
    from quantflow.generate import integer_greedy
    from quantflow.program import build_memory, compile_program, sim_core_for

    from golden.decoder import IntegerDecoder
    from hdl.core import cycle_model
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    d = img.config
    core = sim_core_for(d)
    prog = compile_program(img, core)
    memory = build_memory(img, prog)
    log(f"{d.layers} layers, {len(ids)} prompt tokens, {len(prog.words)} instructions, "
        f"memory {len(memory) / 2**20:.1f} MiB; core rows {core.rows} cols {core.cols} "
        f"lanes {core.sfu.lanes}, {core.beat_bytes}-B port, read latency {latency}")
    est = sum(cycle_model(list(prog.words), core, Registers(pos=len(ids), tokens=1), latency=latency))
    log(f"simulating the prefill of {len(ids)} tokens, then about {est / 1e6:.2f} M cycles "
        f"a token")

    # the integer golden's own greedy tokens (quantflow generate --engine integer)
    t0 = time.perf_counter()
    golden_tokens = integer_greedy(IntegerDecoder(d, img.tensors), torch.tensor(ids),
                                   max_new_tokens, lambda t: None, progress=False)
    t_golden = time.perf_counter() - t0

    t0 = time.perf_counter()
    dev = _device(device, core, memory, Path(run_dir), latency=latency, trace=check, log=log)
    t_build = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        dev.load(memory)
        t_load = time.perf_counter() - t0
        for addr, data in poke:
            dev.write(addr, data)
        checker = _Checker(prog, memory, dev) if check and device == "verilator" else None

        def on_run(info):
            r = info.report
            log(f"  run {info.index} {info.kind} pos {info.pos} T {len(info.ids)}: "
                f"{info.cycles:,} cycles in {r.get('sim_seconds', info.seconds):.1f} s")
            if checker is not None:
                checker.submit(info)

        res = generate(dev, prog, ids, max_new_tokens, on_token=on_token, on_run=on_run)
        checks = checker.results() if checker is not None else []
    finally:
        if hasattr(dev, "close"):
            dev.close()
    runs = res.runs
    sim_s = sum(r.report.get("sim_seconds", r.seconds) for r in runs)
    sim_c = sum(r.report.get("sim_cycles", r.cycles) for r in runs)
    mismatch = next((c["mismatch"] for c in checks if c["mismatch"] is not None), None)
    decode = res.cycles_per_token
    model_c = [sum(cycle_model(list(prog.words), core, Registers(pos=r.pos, tokens=len(r.ids)),
                               latency=latency)) + 1 for r in runs]
    dec_s = [r.report.get("sim_seconds", r.seconds) for r in runs if r.kind == "decode"]
    return {
        "layers": d.layers, "device": device, "prompt_ids": list(ids),
        "tokens_rtl": res.tokens, "tokens_golden": golden_tokens,
        # tokens equal and, where the device has a trace (verilator), every instruction
        "equal": res.tokens == golden_tokens and mismatch is None,
        "tokens_equal": res.tokens == golden_tokens,
        "checked": bool(checks),
        "instructions_checked": sum(c["instructions_compared"] for c in checks),
        "mismatch": mismatch,
        "cycles_prefill": res.cycles_prefill,
        "cycles_per_token": round(sum(decode) / len(decode)) if decode else None,
        "cycles_decode": decode,
        "cycles_model": model_c,
        # the model is of the Verilog memory model (read latency `latency`); a kernel's
        # memory (AxiRam, a card's HBM) has other timing
        "cycles_equal_model": [r.cycles for r in runs] == model_c
        if device == "verilator" else None,
        "sim_seconds": round(sim_s, 3),
        "sim_cycles_per_second": round(sim_c / sim_s) if sim_s > 0 else None,
        "sim_seconds_per_token": round(sum(dec_s) / len(dec_s), 3) if dec_s else None,
        "assumed_clock_mhz": ASSUMED_CLOCK_MHZ,
        "tokens_per_second_at_clock": round(ASSUMED_CLOCK_MHZ * 1e6 * len(decode) / sum(decode), 2)
        if decode else None,
        "core": dataclasses.asdict(core), "latency": latency, "instructions": len(prog.words),
        "runs": [{"kind": r.kind, "pos": r.pos, "tokens": len(r.ids), "cycles": r.cycles,
                  "sim_seconds": round(r.report.get("sim_seconds", r.seconds), 3),
                  "next": r.next_token} for r in runs],
        "golden_seconds": round(t_golden, 2), "build_seconds": round(t_build, 1),
        "load_seconds": round(t_load, 3), "run_dir": str(run_dir),
    }


def run_generate(model: str = REAL_MODEL, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 8,
                 scheme: str = DEFAULT_SCHEME, layers: int | None = None,
                 device: str = "verilator", check: bool = True, latency: int = SIM_LATENCY,
                 out: Path | None = None, stream: Callable[[str], object] | None = None,
                 log: Callable[[str], object] = print) -> dict:
    """Generate through the co-simulated core (module doc); returns the JSON record
    (also written to `out`, default
    build/sim/generate/<model>-<scheme>[-L<layers>]-<n>.json)."""
    from quantflow.models.loaders import load_model
    t_start = time.perf_counter()
    lm = load_model(model, progress=False)
    ids = lm.encode(prompt).tolist()
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt")
    img = depth_reduced(real_image(model, scheme, log=log), layers)
    tag = f"{model}-{scheme}" + (f"-L{img.config.layers}" if layers is not None else "") \
        + f"-{max_new_tokens}"
    out = Path(out) if out is not None else GENERATE_DIR / f"{tag}.json"
    log(f"{model} ({scheme}): {prompt!r}")
    shown, toks = "", []

    def on_token(t: int) -> None:
        nonlocal shown
        toks.append(t)
        text = lm.tokenizer.decode(toks)
        if stream is not None and text.startswith(shown):
            stream(text[len(shown):])
        shown = text

    g = generate_image(img, ids, max_new_tokens, device=device, check=check, latency=latency,
                       run_dir=GENERATE_DIR / "runs" / f"{tag}-{time.time_ns()}",
                       on_token=on_token, log=log)
    if stream is not None:
        stream("\n")
    rec = {"model": model, "scheme": scheme, "prompt": prompt, **g,
           "text_rtl": lm.tokenizer.decode(g["tokens_rtl"]),
           "text_golden": lm.tokenizer.decode(g["tokens_golden"]),
           "wall_seconds": round(time.perf_counter() - t_start, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, rec)
    rec["path"] = str(out)
    return rec


#: make sim's generation: the full model, a few tokens of the real prompt.
SIM_NEW_TOKENS = 3


def sim_record(rec: dict, *, name: str) -> dict:
    """A generation as a make-sim record (block "core")."""
    from .report import make_record
    core = rec["core"]
    passed = rec["equal"] and rec["cycles_equal_model"] and rec["checked"]
    errors = []
    if not rec["tokens_equal"]:
        errors.append(f"tokens: RTL {rec['tokens_rtl']} != golden {rec['tokens_golden']}")
    if rec["mismatch"]:
        errors.append(f"first mismatch: {rec['mismatch'].get('message')}")
    if not rec["cycles_equal_model"]:
        errors.append(f"cycles {[r['cycles'] for r in rec['runs']]} != hdl.core.cycle_model "
                      f"{rec['cycles_model']}")
    cycles = sum(r["cycles"] for r in rec["runs"])
    return make_record(
        block="core", test=name, config={k: core[k] for k in ("rows", "cols", "beat_bytes",
                                                              "buffers", "max_tokens")},
        passed=passed, mismatches=0 if rec["mismatch"] is None else 1,
        vectors=rec["instructions_checked"], cycles=cycles, macs=0,
        peak_macs_per_cycle=core["rows"] * core["beat_bytes"],
        sim_seconds=rec["sim_seconds"], expected_cycles=sum(rec["cycles_model"]),
        path="generate", errors=errors, json=rec.get("path"),
        **{k: rec.get(k) for k in ("model", "scheme", "layers", "prompt", "tokens_rtl",
                                   "tokens_golden", "text_rtl", "equal", "cycles_prefill",
                                   "cycles_per_token", "sim_seconds_per_token",
                                   "instructions_checked", "mismatch")})


def sim_items(*, sim: str) -> list:
    """`python -m cosim sim --block generate` (cosim.blocks.ON_REQUEST, not in make
    sim): SmolLM2 (all layers) generates SIM_NEW_TOKENS tokens of the real prompt
    through the Verilated core (the C++ device harness: Verilator only)."""
    from quantflow.models.loaders import models_dir
    from .blocks import SimItem
    if sim != "verilator" or not (models_dir() / REAL_MODEL).is_dir():
        return []
    name = f"core-generate-{REAL_MODEL}-{SIM_NEW_TOKENS}"

    def run():
        rec = run_generate(REAL_MODEL, DEFAULT_PROMPT, max_new_tokens=SIM_NEW_TOKENS,
                           scheme=REAL_SCHEME, log=lambda m: None)
        return sim_record(rec, name=f"generate-{REAL_MODEL}-{SIM_NEW_TOKENS}-tokens")
    return [SimItem(block="generate", name=name, path="generate",
                    config={"model": REAL_MODEL, "max_new_tokens": SIM_NEW_TOKENS},
                    macs=0, peak_macs_per_cycle=0, run=run)]


def main(argv: list[str] | None = None) -> int:
    """`python -m cosim generate`: generate on the simulated core, print the text and write the
    record; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m cosim generate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=REAL_MODEL)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--scheme", default=DEFAULT_SCHEME,
                   help="quantization scheme of the compiled image (default %(default)s, "
                        "as quantflow generate; compiled once on first use, about 10 min "
                        "on 2 cores; w4a8kv4-g64-plain compiles in under a minute)")
    p.add_argument("--layers", type=int, default=None,
                   help="run only the first N decoder layers (a depth-reduced model)")
    p.add_argument("--device", choices=DEVICES, default="verilator")
    p.add_argument("--no-check", action="store_true",
                   help="skip the per-instruction comparison with golden.core (tokens are "
                        "still compared with the integer model)")
    p.add_argument("--latency", type=int, default=SIM_LATENCY,
                   help="memory model read latency in cycles (default %(default)s)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="a line per start of the core (cycles, simulated seconds)")
    a = p.parse_args(argv)
    if a.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if a.layers is not None and a.layers < 1:
        p.error(f"--layers must be >= 1, got {a.layers}")

    def log(m: str) -> None:
        # per-start lines would split the streamed text: only with --verbose
        if a.verbose or not m.startswith("  run "):
            print(m, file=sys.stderr, flush=True)
    try:
        rec = run_generate(a.model, a.prompt, max_new_tokens=a.max_new_tokens, scheme=a.scheme,
                           layers=a.layers, device=a.device, check=not a.no_check,
                           latency=a.latency, out=a.out,
                           stream=lambda s: print(s, end="", flush=True), log=log)
    except (ValueError, runner.CosimError, XrtUnavailable, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tokens (RTL):    {rec['tokens_rtl']}")
    print(f"tokens (golden): {rec['tokens_golden']}")
    if rec["mismatch"]:
        print(f"first mismatch: {rec['mismatch']['message']}")
    per_tok = (f"decode {rec['cycles_per_token']:,} cycles/token "
               f"({rec['sim_seconds_per_token']} s/token simulated)"
               if rec["cycles_per_token"] else "no decode step")
    print(f"equal: {str(rec['equal']).lower()}; prefill {rec['cycles_prefill']:,} cycles, "
          f"{per_tok}; {rec['sim_cycles_per_second']:,} simulated cycles/s; "
          + (f"cycles = hdl.core.cycle_model: {str(rec['cycles_equal_model']).lower()}; "
             if rec["cycles_equal_model"] is not None else "")
          + f"-> {rec['path']}")
    return 0 if rec["equal"] else 1
