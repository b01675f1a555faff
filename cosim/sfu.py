"""SFU co-simulation: op calls (random, edge cases, real SmolLM2 activations) ->
golden.sfu's expected words -> Verilator (hdl.sfu.SFU) -> records (`block: "sfu"`).

A call is one cmd with its operands; a case is a list of calls that one StreamRun
drives back to back (cmd and x sources with random idle cycles, the out sink with
random back-pressure). One build per SFUHWConfig serves every case of that config.

    calls = case_calls(case)                 # SFUCall per cmd
    res = run_cases(config, [case_job(case)])
    rec = to_record(case, res["cases"][0])

A record's `macs` are the case's elements and `peak_macs_per_cycle` the lanes: the
SFU's rate is elements per cycle.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable
from pathlib import Path

from golden.sfu_config import ROPE_BITS, X_BITS, SFUHWConfig, rms_eps, sqrt_k
from golden.validate import check_choice, expect_type
from quattro_fs import atomic_write_bytes

from cosim import runner
from cosim.cases import StreamCase
from cosim.flow import DATA_ROOT, build_design, case_item, first_case, run_case_list, with_build
from cosim.report import make_record

__all__ = ["SFUCall", "SFUCase", "PLAN_CONFIG", "REAL_MODEL", "call_cmd", "bad_jobs",
           "golden_values", "call_words", "random_call", "edge_calls", "real_calls", "case_calls", "case_job",
           "unit_build", "run_cases", "to_record", "default_plan", "sim_items", "config_items",
           "SOURCES"]

STREAM_TB = "cosim.tb.sfu_stream"
REAL_MODEL = "smollm2"
SOURCES = ("random", "edge", "real")
_I32 = (-(1 << (X_BITS - 1)), (1 << (X_BITS - 1)) - 1)


@dataclass(frozen=True, kw_only=True)
class SFUCall:
    """One cmd: `op`, the elements' a (and b) fields and the op's parameters in the
    golden's terms: dequant mn, L, e, in_frac, out_frac (b = S1); rmsnorm e_w, eps
    (b = NW); rope d, cos, sin (lists of d/2; b of each head's first half = cos | sin
    << 16, the second half's b is ignored); swiglu shift (default frac: h in u's
    units, golden.sfu.swiglu); requant from_frac, to_frac, bits;
    argmax b = S1 (1 for a plain argmax)."""
    op: str
    a: tuple
    b: tuple | None = None
    params: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Elements of the call: the length of `a`."""
        return len(self.a)


def call_cmd(config: SFUHWConfig, call: SFUCall) -> int:
    """The cmd word of `call` (rmsnorm's E, SK, es from eps and k at compile time)."""
    from hdl.sfu import pack_cmd
    P = call.params
    if call.op == "dequant":
        return pack_cmd("dequant", call.k, **{n: P[n] for n in ("mn", "L", "e", "in_frac",
                                                                   "out_frac")})
    if call.op == "rmsnorm":
        SK, es = sqrt_k(call.k)
        return pack_cmd("rmsnorm", call.k, E=rms_eps(P["eps"], call.k, config.frac), SK=SK,
                        es=es, e_w=P["e_w"])
    if call.op == "rope":
        return pack_cmd("rope", call.k, d=P["d"])
    if call.op == "swiglu":
        return pack_cmd("swiglu", call.k, shift=P.get("shift", config.frac))
    if call.op == "requant":
        return pack_cmd("requant", call.k, **{n: P[n] for n in ("from_frac", "to_frac",
                                                                   "bits")})
    return pack_cmd(call.op, call.k)


def golden_values(config: SFUHWConfig, call: SFUCall) -> list[int]:
    """The out elements golden.sfu gives for `call`, scalar beats padded to lanes."""
    import torch

    from golden import sfu as g
    from hdl.sfu import ts_value
    c = expect_type("config", config, SFUHWConfig)
    a = torch.tensor(call.a, dtype=torch.int64)
    b = torch.tensor(call.b if call.b is not None else [0] * call.k, dtype=torch.int64)
    P, pad = call.params, [0] * (c.lanes - 1)
    op = call.op
    if op == "quant_a8":
        q, mn, L = g.quant_a8(a[None])
        return [ts_value(int(mn[0]), int(L[0]))] + pad + q[0].tolist()
    if op == "dequant":
        y = g.dequant(a[None], b, P["e"], torch.tensor([P["mn"]]), torch.tensor([P["L"]]),
                      in_frac=P["in_frac"], out_frac=P["out_frac"])
        return y[0].tolist()
    if op == "rmsnorm":
        return g.rmsnorm(a[None], b, P["e_w"], eps=P["eps"], config=c.numerics())[0].tolist()
    if op == "rope":
        d = P["d"]
        cos, sin = (torch.tensor(P[n], dtype=torch.int64)[None] for n in ("cos", "sin"))
        return g.rope(a.view(-1, 1, d), cos, sin, torch.tensor([0])).reshape(-1).tolist()
    if op == "swiglu":
        return g.swiglu(a, b, config=c.numerics(), shift=P.get("shift")).tolist()
    if op == "residual_add":
        return g.residual_add(a, b).tolist()
    if op == "requant":
        return g.requant(a, P["from_frac"], P["to_frac"], P["bits"]).tolist()
    check_choice("op", op, ("argmax",))
    return [int(g.argmax(a * b))] + pad


def call_words(config: SFUHWConfig, call: SFUCall) -> tuple[int, list[int], list[int]]:
    """(cmd word, x words, expected out words) of one call."""
    from hdl.sfu import pack_elems, pack_out
    return (call_cmd(config, call), pack_elems(config, call.a, call.b),
            pack_out(config, golden_values(config, call)))


# --------------------------------------------------------------------------- operands
def _clip(v: int) -> int:
    return max(_I32[0], min(_I32[1], int(v)))


def _x32(rng: random.Random, k: int, frac: int, lo: int = -3, hi: int = 8) -> list[int]:
    """X32 values with a random per-vector scale 2**[lo, hi] and a few outliers."""
    scale = 2.0 ** (frac + rng.uniform(lo, hi))
    out = []
    for _ in range(k):
        v = rng.gauss(0.0, 1.0) * scale
        if rng.random() < 0.03:
            v *= 2.0 ** rng.randint(2, 9)
        out.append(_clip(round(v)))
    return out


def _norm_mn(rng: random.Random) -> int:
    return rng.randrange(1 << 15, 1 << 16)


def random_call(config: SFUHWConfig, op: str, k: int, rng: random.Random) -> SFUCall:
    """A seeded random call of `op` over k elements (shifts across their ranges,
    saturating values included; rope rounds k down to whole pairs of beats)."""
    c = config
    F = c.frac
    if op == "quant_a8":
        return SFUCall(op=op, a=tuple(_x32(rng, k, F, -10, 3)))
    if op == "dequant":
        a = [_clip(round(rng.gauss(0, 1) * 2.0 ** rng.uniform(4, 30))) for _ in range(k)]
        top = rng.randrange(1 << 14, 1 << 15)
        S1 = [rng.randrange(0, top + 1) for _ in range(k)]
        L = rng.randint(-15, 16)
        in_frac = rng.choice((F, F, 0))
        e = rng.randint(-4, 40)
        return SFUCall(op=op, a=tuple(a), b=tuple(S1),
                       params=dict(mn=_norm_mn(rng), L=L, e=e, in_frac=in_frac, out_frac=F))
    if op == "rmsnorm":
        NW = [rng.randint(-32767, 32767) for _ in range(k)]
        return SFUCall(op=op, a=tuple(_x32(rng, k, F, -6, 12)), b=tuple(NW),
                       params=dict(e_w=rng.randint(8, 18), eps=rng.choice((1e-5, 1e-6, 0.0))))
    if op == "rope":                                 # whole pairs of beats
        k = 2 * c.lanes * max(1, k // (2 * c.lanes))
        return _rope_call(c, k, rng, _x32(rng, k, F, -2, 10))
    if op == "swiglu":
        g = _x32(rng, k, F, -3, 5)
        return SFUCall(op=op, a=tuple(g), b=tuple(_x32(rng, k, F, -3, 9)),
                       params=dict(shift=rng.choice((F, rng.randint(F - 10, F + 10)))))
    if op == "residual_add":
        return SFUCall(op=op, a=tuple(_x32(rng, k, F, 0, 17)), b=tuple(_x32(rng, k, F, 0, 17)))
    if op == "requant":
        bits = rng.choice((2, 8, 16, 20, 32))
        return SFUCall(op=op, a=tuple(_x32(rng, k, F, -4, 17)),
                       params=dict(from_frac=F, to_frac=rng.randint(F - 20, F + 20), bits=bits))
    check_choice("op", op, ("argmax",))
    span = rng.choice((8, 1 << 20))                # few distinct values: ties
    S1 = [1] * k if rng.random() < 0.5 else [rng.randrange(1, 1 << 15) for _ in range(k)]
    return SFUCall(op=op, a=tuple(rng.randint(-span, span) for _ in range(k)), b=tuple(S1))


def _rope_call(c: SFUHWConfig, k: int, rng: random.Random, x, d: int | None = None,
               cos=None, sin=None) -> SFUCall:
    """rope over k = heads * d elements at one position: the table row (cos, sin) of
    a random position of the Llama tables unless given."""
    from golden.sfu import rope_inv_freq, rope_table
    if d is None:
        ds = [d for d in range(2 * c.lanes, k + 1, 2 * c.lanes) if k % d == 0]
        d = rng.choice(ds)
    if cos is None:
        pos = rng.randrange(0, 4096)
        ct, st = rope_table(rope_inv_freq(10000.0, d), pos + 1)
        cos, sin = ct[pos].tolist(), st[pos].tolist()
    h = d // 2
    mask = (1 << ROPE_BITS) - 1
    b = []
    for i in range(k):
        n = i % d
        b.append((cos[n] & mask) | (sin[n] << ROPE_BITS) if n < h else rng.randint(*_I32))
    return SFUCall(op="rope", a=tuple(x), b=tuple(b), params=dict(d=d, cos=cos, sin=sin))


def edge_calls(config: SFUHWConfig, rng: random.Random) -> list[SFUCall]:
    """Zeros, int32 extremes, saturation, k = lanes and k = max_k for every op."""
    c = config
    F, L, K = c.frac, c.lanes, c.max_k
    lo, hi = _I32
    ext = [lo, hi, hi, lo] * K
    calls = [
        SFUCall(op="quant_a8", a=(0,) * L),
        SFUCall(op="quant_a8", a=(-1,) * L),                                      # |-1| = 1
        SFUCall(op="quant_a8", a=tuple(ext[:K])),
        SFUCall(op="quant_a8", a=tuple(rng.randint(-5, 5) for _ in range(L))),   # L = -13..
        SFUCall(op="quant_a8", a=tuple(_x32(rng, K, F, -12, 4))),
        SFUCall(op="dequant", a=tuple(ext[:2 * L]), b=(32767, 1) * L,
                params=dict(mn=65535, L=16, e=-30, in_frac=F, out_frac=F)),      # saturates
        SFUCall(op="dequant", a=tuple(ext[:2 * L]), b=(32767,) * (2 * L),
                params=dict(mn=0, L=0, e=20, in_frac=F, out_frac=F)),            # mn = 0
        SFUCall(op="dequant", a=(lo,) * L, b=(32767,) * L,
                params=dict(mn=65535, L=-64, e=1024, in_frac=64, out_frac=-64)),  # s >= 63
        SFUCall(op="rmsnorm", a=(0,) * L, b=(32767,) * L, params=dict(e_w=15, eps=1e-5)),
        SFUCall(op="rmsnorm", a=(0,) * L, b=(32767,) * L, params=dict(e_w=15, eps=0.0)),
        SFUCall(op="rmsnorm", a=tuple(ext[:K]), b=tuple(rng.choice((32767, -32767))
                                                         for _ in range(K)),
                params=dict(e_w=-10, eps=1e-6)),                                  # saturates
        SFUCall(op="rmsnorm", a=tuple(rng.randint(-3, 3) for _ in range(L)), b=(1,) * L,
                params=dict(e_w=0, eps=0.0)),
        # |x| over 2**20 with eps 0: the pre-shifted sum of squares (kx > 0), a power of two
        SFUCall(op="rmsnorm", a=(1 << 21,) * L, b=(32767,) * L, params=dict(e_w=15, eps=0.0)),
        _rope_call(c, 2 * L, rng, ext[:2 * L], d=2 * L, cos=[-(1 << 15)] * L,
                   sin=[(1 << 15) - 1] * L),                                     # saturates
        _rope_call(c, K, rng, _x32(rng, K, F)),
        SFUCall(op="swiglu", a=tuple(ext[:2 * L]), b=tuple(ext[1:2 * L + 1])),
        SFUCall(op="swiglu", a=tuple(ext[1:2 * L + 1]), b=tuple(ext[:2 * L]),
                params=dict(shift=-5)),                                          # left
        SFUCall(op="swiglu", a=tuple(ext[1:2 * L + 1]), b=tuple(ext[:2 * L]),
                params=dict(shift=64)),
        SFUCall(op="swiglu", a=tuple(rng.randint(-(20 << F), 20 << F) for _ in range(K)),
                b=tuple(_x32(rng, K, F, 0, 16))),
        SFUCall(op="residual_add", a=tuple(ext[:2 * L]), b=tuple(ext[:2 * L])),
        SFUCall(op="requant", a=tuple(ext[:2 * L]), params=dict(from_frac=-64, to_frac=64,
                                                                 bits=32)),
        SFUCall(op="requant", a=tuple(ext[1:2 * L + 1]), params=dict(from_frac=64,
                                                                      to_frac=-64, bits=2)),
        SFUCall(op="requant", a=(1, -1, 0, 3) * L, params=dict(from_frac=0, to_frac=40,
                                                               bits=20)),
        SFUCall(op="argmax", a=(7,) * L, b=(1,) * L),                             # all ties
        SFUCall(op="argmax", a=tuple(ext[:K]), b=(32767,) * K),
        SFUCall(op="argmax", a=(lo,) * (L - 1) + (lo + 1,), b=(1,) * L),
    ]
    return calls


# --------------------------------------------------------------------------- real data
REAL_LAYER = 12                       # inside SmolLM2's massive-activation layers
REAL_TOKENS = 4
REAL_DATA = DATA_ROOT / f"sfu_real_{REAL_MODEL}_l{REAL_LAYER}.npz"


def capture_real(path: Path = REAL_DATA) -> Path:
    """SmolLM2's float activations of layer REAL_LAYER on REAL_TOKENS tokens of the
    evaluation text (as tests/test_golden_sfu.py captures them), the layer's norm
    weights and q_proj, saved once to `path` (the model is prepared on first use)."""
    import io

    import numpy as np
    import torch

    from quantflow.models.loaders import load_model
    from quantflow.text import evaluation_tokens
    if path.is_file():
        return path
    lm = load_model(REAL_MODEL, progress=False)
    m = lm.model
    ids = evaluation_tokens(lm.tokenizer, windows=1, length=32)
    layer = m.model.layers[REAL_LAYER]
    out = {}

    def keep(name, post=False):
        def hook(mod, args, result=None):
            t = result if post else args[0]
            out[name] = t.detach().double().reshape(-1, t.shape[-1])[-REAL_TOKENS:]
        return hook
    hooks = [layer.input_layernorm.register_forward_pre_hook(keep("res")),
             layer.self_attn.q_proj.register_forward_pre_hook(keep("ln")),
             layer.self_attn.q_proj.register_forward_hook(keep("q", True)),
             layer.mlp.gate_proj.register_forward_hook(keep("g", True)),
             layer.mlp.up_proj.register_forward_hook(keep("u", True))]
    try:
        with torch.no_grad():
            m.hidden_states(ids[:1])
    finally:
        for h in hooks:
            h.remove()
    buf = io.BytesIO()
    np.savez(buf, **{k: v.numpy() for k, v in out.items()},
             norm_w=layer.input_layernorm.weight.detach().double().numpy(),
             wq=layer.self_attn.q_proj.weight.detach().double().numpy(),
             eps=np.float64(m.config.rms_norm_eps), theta=np.float64(m.config.rope_theta),
             head_dim=np.int64(m.config.head_dim), positions=np.int64(ids.shape[-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def real_calls(config: SFUHWConfig, token: int, path: Path = REAL_DATA) -> list[SFUCall]:
    """One token of the captured layer through the SFU ops of a decoder layer:
    rmsnorm of the residual, quant_a8 of the q_proj input, dequant of its q_proj
    accumulators (QoQ step-1 scales), rope of q, swiglu of gate/up, residual_add,
    requant to a 16-bit KV format and argmax."""
    import numpy as np
    import torch

    from golden import sfu as g
    arr = np.load(path)
    F = config.frac

    def fx(name):
        return g.to_fixed(torch.from_numpy(arr[name][token]), F)
    res, ln, q = fx("res"), fx("ln"), fx("q")
    NW, e_w = g.norm_weight(torch.from_numpy(arr["norm_w"]))
    a8, mn, L = g.quant_a8(ln[None])
    W = torch.from_numpy(arr["wq"])
    s1 = (W.abs().amax(1) / 119).half().double()
    w8 = torch.clamp(torch.round(W / s1[:, None]), -119, 119).long()
    acc = (a8[0] @ w8.T).tolist()
    S1, e = g.weight_scale(s1)
    d = int(arr["head_dim"])
    pos = int(arr["positions"]) - REAL_TOKENS + token
    ct, st = g.rope_table(g.rope_inv_freq(float(arr["theta"]), d), pos + 1)
    rng = random.Random(token)
    calls = [SFUCall(op="rmsnorm", a=tuple(res.tolist()), b=tuple(NW.tolist()),
                     params=dict(e_w=e_w, eps=float(arr["eps"]))),
             SFUCall(op="quant_a8", a=tuple(ln.tolist())),
             SFUCall(op="dequant", a=tuple(acc), b=tuple(S1.tolist()),
                     params=dict(mn=int(mn[0]), L=int(L[0]), e=e, in_frac=F, out_frac=F)),
             _rope_call(config, len(q), rng, q.tolist(), d=d, cos=ct[pos].tolist(),
                        sin=st[pos].tolist()),
             SFUCall(op="swiglu", a=tuple(fx("g").tolist()), b=tuple(fx("u").tolist())),
             SFUCall(op="residual_add", a=tuple(res.tolist()), b=tuple(q.tolist())),
             SFUCall(op="requant", a=tuple(q.tolist()), params=dict(from_frac=F, to_frac=10,
                                                                    bits=16)),
             SFUCall(op="argmax", a=tuple(acc), b=tuple(S1.tolist()))]
    return calls


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True, kw_only=True)
class SFUCase(StreamCase):
    """A list of calls run back to back: `source` "random" (every op at random k,
    `rounds` times), "edge" (edge_calls) or "real" (real_calls of `tokens` tokens).
    p_idle / p_stall: random source idle cycles and sink back-pressure (0: ideal,
    the cycle model is then enforced)."""
    config: SFUHWConfig
    source: str = "random"
    rounds: int = 1
    tokens: int = 1

    def __post_init__(self):
        expect_type("config", self.config, SFUHWConfig)
        check_choice("source", self.source, SOURCES)

    @property
    def name(self) -> str:
        """The case's name: configuration, data source, seed and rounds (or real layer and
        tokens)."""
        src = f"real-{REAL_MODEL}-l{REAL_LAYER}-t{self.tokens}" if self.source == "real" \
            else f"{self.source}-s{self.seed}-r{self.rounds}"
        return f"{self.config.name()}_{src}_{self.pressure}"


def _random_k(c: SFUHWConfig, op: str, rng: random.Random) -> int:
    from hdl.sfu import BUFFERED
    top = c.max_k if op in BUFFERED else 4 * c.max_k
    return c.lanes * rng.randint(1, top // c.lanes)


def case_calls(case: SFUCase) -> list[SFUCall]:
    """The SFU calls of a case: edge cases, the real layer's calls per token, or
    `rounds` of every op in seeded random order on random data."""
    from hdl.sfu import OPS
    c = case.config
    rng = random.Random(case.seed)
    if case.source == "edge":
        return edge_calls(c, rng)
    if case.source == "real":
        path = capture_real()
        return [call for t in range(case.tokens) for call in real_calls(c, t, path)]
    calls = []
    for _ in range(case.rounds):
        ops = list(OPS)
        rng.shuffle(ops)
        calls += [random_call(c, op, _random_k(c, op, rng), rng) for op in ops]
    return calls


def case_job(case: SFUCase, *, corrupt_expected: Iterable[tuple[int, int]] = ()) -> dict:
    """The testbench's job for one case: the calls' words and their golden outputs."""
    from hdl.sfu import cycle_model
    c = case.config
    cmds, xs, exp, ops, model = [], [], [], [], 0
    for call in case_calls(case):
        cmd, x, o = call_words(c, call)
        cmds.append(cmd)
        xs += x
        exp += o
        ops.append([call.op, call.k])
        model += cycle_model(c, call.op, call.k)
    return {"name": case.name, "cmd": cmds, "x": xs, "expected": exp, "ops": ops,
            "p_idle": case.p_idle, "p_stall": case.p_stall, "model_cycles": model,
            "elements": sum(k for _, k in ops),
            "corrupt_expected": [list(x) for x in corrupt_expected]}


def bad_jobs(config: SFUHWConfig) -> list[dict]:
    """One cmd per rule of the unit's cmd check that it must refuse (raise `error`,
    emit nothing): k = 0; a buffered k over max_k; k not a multiple of lanes; rope
    d = 0, d > k, d not a multiple of 2 * lanes; requant bits below 2 or above 32."""
    from hdl.sfu import pack_cmd
    L, K = config.lanes, config.max_k
    rms = dict(E=0, SK=1 << 23, es=0, e_w=0)
    cmds = [pack_cmd("swiglu", 0, shift=14),
            pack_cmd("rmsnorm", K + L, **rms),
            pack_cmd("rope", 2 * L, d=0),
            pack_cmd("rope", 2 * L, d=4 * L),
            pack_cmd("rope", 4 * L, d=L if L > 1 else 1),
            pack_cmd("requant", L, from_frac=0, to_frac=0, bits=1),
            pack_cmd("requant", L, from_frac=0, to_frac=0, bits=X_BITS + 1)]
    if L > 1:
        cmds.append(pack_cmd("residual_add", L + 1))
    return [{"kind": "bad", "cmd": c} for c in cmds]


def unit_build(config: SFUHWConfig, *, sim: str | None = None) -> runner.Build:
    """The Verilated SFU of `config` (cached)."""
    from hdl.generate import sfu_factory
    return build_design(sfu_factory, config, sim=sim)


def run_cases(config: SFUHWConfig, jobs: list[dict], *, build: runner.Build | None = None,
              seed: int = 1, sim: str | None = None) -> dict:
    """One simulation of `jobs` (case_job dicts, or {"kind": "bad", "cmd": word})."""
    return run_case_list(build or unit_build(config, sim=sim), STREAM_TB, config, jobs, seed)


def to_record(case: SFUCase, r: dict, *, simulator: str | None = None) -> dict:
    """The make-sim record of one SFU case: pass/fail, cycles against the cycle model, ops."""
    c = case.config
    extra = {"path": case.path, "case": case.name,
             "source": case.source, "seed": case.seed, "simulator": simulator,
             "model_cycles_ideal": r.get("model_cycles"), "ops": r.get("ops"),
             "p_idle": case.p_idle, "p_stall": case.p_stall,
             "stall_cycles": r.get("stall_cycles"), "errors": r.get("errors", [])}
    if case.source == "real":
        extra["model"] = REAL_MODEL
        extra["real"] = {"layer": REAL_LAYER, "tokens": case.tokens}
    if case.ideal:
        extra["expected_cycles"] = r.get("model_cycles")
    return make_record(
        block="sfu", test=f"{extra['path']} {case.source} s{case.seed}",
        config=c.as_dict(), passed=bool(r.get("passed")),
        mismatches=int(r.get("mismatches", 0)), vectors=int(r.get("vectors", 0)),
        cycles=int(r.get("cycles", 0)), macs=int(r.get("elements", 0)),
        peak_macs_per_cycle=c.lanes, sim_seconds=float(r.get("sim_seconds", 0.0)),
        sim_cycles=int(r.get("sim_cycles", 0)), **extra)


#: make sim's hardware: one lane, SmolLM2's intermediate size fits the buffer.
PLAN_CONFIG = SFUHWConfig(max_k=2048, lanes=1)


def default_plan() -> list[SFUCase]:
    """Every op at random k (ideal and with back-pressure), the edge cases, and
    two real SmolLM2 tokens (the model is prepared on first use, so a fresh clone
    runs the same plan)."""
    c = PLAN_CONFIG
    plan = [SFUCase(config=c, source="random", seed=3, rounds=2),
            SFUCase(config=c, source="random", seed=4, rounds=2, p_idle=0.2, p_stall=0.3),
            SFUCase(config=c, source="edge", seed=5),
            SFUCase(config=c, source="edge", seed=6, p_idle=0.3, p_stall=0.4)]
    plan.append(SFUCase(config=c, source="real", tokens=2, p_idle=0.1, p_stall=0.2))
    return plan


def _run_item(case: SFUCase, sim: str) -> dict:
    b = unit_build(case.config, sim=sim)
    jobs = [case_job(case)]
    if case.source == "edge" and case.ideal:     # refused cmds ride along with the edge cases
        jobs += bad_jobs(case.config)
    res = run_cases(case.config, jobs, build=b, seed=case.seed)
    return with_build(to_record(case, first_case(res), simulator=res.get("sim")), b)


def sim_items(*, sim: str) -> list:
    """make sim's items of the SFU: default_plan's cases, run on `sim`."""
    return _plan_items(default_plan(), sim)


def config_items(config: SFUHWConfig, *, sim: str) -> list:
    """`quattro sim --block sfu --config ...`: every op at random k and the edge
    cases on `config`, ideal and with back-pressure."""
    c = config
    return _plan_items([SFUCase(config=c, source="random", seed=3, rounds=2),
                        SFUCase(config=c, source="random", seed=4, rounds=2, p_idle=0.2,
                                p_stall=0.3),
                        SFUCase(config=c, source="edge", seed=5),
                        SFUCase(config=c, source="edge", seed=6, p_idle=0.3, p_stall=0.4)],
                       sim)


def _plan_items(cases: list[SFUCase], sim: str) -> list:
    return [case_item("sfu", case, lambda case=case: _run_item(case, sim), macs=0,
                      peak=case.config.lanes)
            for case in cases]
