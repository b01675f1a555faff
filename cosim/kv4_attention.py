"""KV4 decode-attention co-simulation: cases -> quantflow cache images ->
Verilator (hdl.kv4_attention.KV4Unit) -> records (`block: "kv4_attention"`).

One build per KV4Config serves every case of that config (one simulation runs
a list of cases: append through the hardware quantizer, decode, bad inputs).

    case = KV4Case(config=..., source="random", T=512, seed=3)
    res = run_cases(config, [case, ...])
    rec = to_record(case, case_result)
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from golden.kv4_attention_config import KV4Config
from golden.validate import check_bool, check_choice, check_int, expect_type
from quattro_fs import atomic_write_bytes

from cosim import runner
from cosim.cases import StreamCase
from cosim.flow import DATA_ROOT, build_design, case_item, first_case, run_case_list, with_build
from cosim.report import make_record

__all__ = ["KV4Case", "FIXTURE", "REAL_MODEL", "PLAN_CONFIGS", "default_plan", "prepare_data",
           "unit_build", "run_cases", "to_record", "sim_items", "config_items", "case_job",
           "load_decode_case", "tb_job", "after_overflow"]

STREAM_TB = "cosim.tb.kv4_attention_stream"
#: Captured SmolLM2 attention (quantflow.capture_attention), shipped with the package:
#: make sim's real-layer cases read it wherever quattro is installed.
FIXTURE = Path(__file__).resolve().parent / "data" / "kv4_smollm2_layer10.npz"
REAL_MODEL = "smollm2"


@dataclass(frozen=True, kw_only=True)
class KV4Case(StreamCase):
    """One decode step: `source` "random" (seeded K/V with outlier channels and
    a large first token) or "real" (the SmolLM2 fixture: KV head `kv_head`, the
    query at position T-1). p_idle / p_stall: random source idle cycles and
    sink back-pressure (0 = ideal, the cycle model is then enforced).
    overflow_check (T = max_t): one token too many right behind the last and one
    after the append has drained, both dropped.
    crafted: tokens 1 and 2 replaced by quantizer edge cases (_craft).
    busy_cmd: the same decode runs twice, its second cmd offered while the
    first decode is still busy (the record's cycles are the first decode's)."""
    config: KV4Config
    source: str = "random"
    T: int = 64
    kv_head: int = 0
    overflow_check: bool = False
    crafted: bool = False
    busy_cmd: bool = False

    def __post_init__(self):
        expect_type("config", self.config, KV4Config)
        check_choice("source", self.source, ("random", "real"))
        check_int("T", self.T, 1, self.config.max_t, hint="T is a token count up to max_t")
        check_bool("overflow_check", self.overflow_check)
        check_bool("crafted", self.crafted)
        check_bool("busy_cmd", self.busy_cmd)
        if self.crafted and (self.source != "random" or self.T < 3 or self.config.head_dim < 4):
            raise ValueError("crafted tokens replace tokens 1 and 2 of a random case: "
                             "source='random', T >= 3, head_dim >= 4")
        if self.overflow_check and self.T != self.config.max_t:
            raise ValueError(f"overflow_check needs a full cache: T={self.T} but "
                             f"max_t={self.config.max_t}; set T=max_t")

    @property
    def macs(self) -> int:
        """K side and V side: 2 * heads * T * head_dim."""
        return 2 * self.config.heads * self.T * self.config.head_dim

    @property
    def name(self) -> str:
        """The case's name: configuration, data source, T and pressure."""
        src = f"real-{REAL_MODEL}-kvh{self.kv_head}" if self.source == "real" else \
            f"rand-s{self.seed}"
        edge = "_crafted" if self.crafted else ""
        return f"{self.config.name()}_{src}{edge}_T{self.T}_{self.pressure}"


def _craft(k, v, c: KV4Config) -> None:
    """Overwrite tokens 1 and 2 (in place) with the quantizer's exact edge cases, in
    units of the fraction the random tokens choose (they are small, so the choice
    stays): K token 1 rotates to small values with -1 in lanes of as many of the
    time-shared quantizer units as a seeded search finds (the K sign test at
    exactly -1, with a non-zero code); V token 2 spans -15..15 with +-1 elsewhere,
    so 15 |X| / S = 1/2 exactly (the 4-bit round-half-even tie) in every unit."""
    import torch

    from golden.kv4_attention import choose_frac, quantize_token, rotate_k
    from hdl.kv4_attention import _quant_split
    fk, fv = 2.0 ** -choose_frac(k, c), 2.0 ** -choose_frac(v, c)
    D, L = c.head_dim, c.lanes
    ql = _quant_split(c)[0]
    g = torch.Generator().manual_seed(7)
    x = torch.zeros(4096, D, dtype=torch.int64)
    x[:, :4] = torch.randint(-12, 13, (4096, 4), generator=g)
    y = rotate_k(x, c)
    codes = quantize_token(y, c, width=c.k_bits)[0]
    hit = (y == -1) & (codes != 0)
    units = torch.stack([hit[:, [i for i in range(D) if i % L % ql == u]].any(1)
                         for u in range(ql)], 1).sum(1)
    best = int(torch.argmax(units))         # the first candidate covering the most units
    k[1] = x[best].double() * fk
    xv = [(-1.0) ** i for i in range(D)]
    xv[0], xv[2] = -15.0, 15.0
    v[2] = v.new_tensor(xv) * fv


def _inputs(case: KV4Case):
    """Float q [heads, D], k, v [T, D] of the case (real: the fixture)."""
    import torch
    c = case.config
    if case.source == "real":
        from quantflow.capture_attention import load_fixture
        fx = load_fixture(FIXTURE)
        meta = fx["meta"]
        g = meta["q_heads"] // meta["kv_heads"]
        if c.head_dim != meta["head_dim"] or c.heads != g:
            raise ValueError(f"the real case needs head_dim={meta['head_dim']} and heads={g}")
        if case.T > meta["tokens"]:
            raise ValueError(f"the fixture holds {meta['tokens']} tokens, T={case.T}")
        # the query at position T-1 (fixture queries cover the last positions)
        qi = case.T - 1 - meta["query_positions"][0]
        if qi < 0:
            raise ValueError(f"the fixture's queries start at {meta['query_positions'][0]}")
        h = case.kv_head
        q = fx["q"][h * g:(h + 1) * g, qi]
        return q, fx["k"][h, :case.T], fx["v"][h, :case.T]
    g = torch.Generator().manual_seed(case.seed)
    k = torch.randn(case.T, c.head_dim, generator=g)
    k[:, :2] *= 8                      # outlier channels, as real K has
    v = torch.randn(case.T, c.head_dim, generator=g)
    k[0] *= 3                          # an attention-sink-like first token
    q = torch.randn(c.heads, c.head_dim, generator=g) * 0.5
    if case.crafted:
        _craft(k, v, c)
    return q, k, v


def prepare_data(case: KV4Case, *, root: Path | None = None) -> Path:
    """Quantize the case's K/V with golden into a cache image plus case.npz
    (fixed-point K/V for the append path, q8, C, lsh, T, float q/k/v)."""
    import numpy as np

    from golden.kv4_attention import append_cache, logit_multiplier, quantize_query, to_fixed
    from quantflow.kv4_attention import export_kv4_cache
    c = case.config
    outdir = Path(root or DATA_ROOT) / case.name
    q, k, v = _inputs(case)
    cache = append_cache(k, v, c)
    q8, s_q = quantize_query(q)
    C, lsh = zip(*(logit_multiplier(float(s), cache.frac_k, c) for s in s_q))
    export_kv4_cache(outdir, cache, c)
    buf = io.BytesIO()
    np.savez(buf, T=np.int64(case.T), q8=q8.numpy(), C=np.array(C, dtype=np.int64),
             lsh=np.array(lsh, dtype=np.int64),
             Xk=to_fixed(k, cache.frac_k, c).numpy(), Xv=to_fixed(v, cache.frac_v, c).numpy(),
             q=q.numpy(), k=k.numpy(), v=v.numpy(),
             frac_out=np.int64(cache.frac_v + c.out_frac))
    atomic_write_bytes(outdir / "case.npz", buf.getvalue())
    return outdir


def unit_build(config: KV4Config, *, sim: str | None = None) -> runner.Build:
    """The Verilated KV4 unit of `config` (cached)."""
    from hdl.generate import kv4_factory
    return build_design(kv4_factory, config, sim=sim)


def case_job(case: KV4Case, *, root: Path | None = None) -> dict:
    """The testbench job of one decode case: its data directory and stream pressures
    (run_cases adds the words to drive and expect, tb_job)."""
    return {"kind": "decode", "data_dir": str(prepare_data(case, root=root)),
            "p_idle": case.p_idle, "p_stall": case.p_stall,
            "overflow_check": case.overflow_check, "busy_cmd": case.busy_cmd}


def load_decode_case(data_dir: str | Path, config: KV4Config) -> dict:
    """The words of one decode case, computed here so that the simulator's Python
    never imports torch: T, the append words of its fixed-point K/V tokens
    (`append`; `extra_append`, token 0 again, is the token one too many), the cmd,
    query, k and v words, the expected out words (golden.kv4_attention's decode of
    the cache image) and the expected cache words (golden's append path: the 4-
    and 8-bit codes of every token)."""
    import numpy as np
    import torch

    from golden.kv4_attention import append_fixed, kv4_decode
    from quantflow.kv4_attention import (load_kv4_cache, pack_append_words, pack_cache_words,
                                         pack_cmd_word, pack_query_words)
    from quantflow.pack import pack_words
    img = load_kv4_cache(data_dir, config)
    arr = np.load(Path(data_dir) / "case.npz", allow_pickle=False)
    T = int(arr["T"])
    C, lsh = arr["C"].tolist(), arr["lsh"].tolist()
    res = kv4_decode(torch.from_numpy(arr["q8"]), C, lsh, img.cache, T, config)
    full = append_fixed(torch.from_numpy(arr["Xk"][:T]), torch.from_numpy(arr["Xv"][:T]),
                        config, frac_k=img.cache.frac_k, frac_v=img.cache.frac_v)

    def ints(words) -> list[int]:       # JSON: plain Python ints
        return [int(w) for w in words]
    return {"T": T, "append": ints(pack_append_words(arr["Xk"][:T], arr["Xv"][:T], config)),
            "extra_append": ints(pack_append_words(arr["Xk"][:1], arr["Xv"][:1], config)),
            "cmd_word": int(pack_cmd_word(T, C, lsh, config)),
            "query": ints(pack_query_words(arr["q8"], config)),
            "k": ints(img.k_words), "v": ints(img.v_words),
            "expected": ints(pack_words(res.out.numpy().reshape(-1), config.out_bits,
                                        config.lanes, signed=True)),
            "expected_cache": ints(pack_cache_words(full, config))}


def tb_job(job: dict, config: KV4Config) -> dict:
    """`job` (a case_job dict or {"kind": "bad_t", "t": T, "lsh": ...}) with the words
    the testbench drives and expects: a decode case's load_decode_case fields, a
    bad cmd's word (C = 1; lsh defaults to max(8, min_lsh)). Other kinds pass
    unchanged."""
    if job.get("kind") == "decode":
        return {**job, **load_decode_case(job["data_dir"], config)}
    if job.get("kind") == "bad_t":
        from quantflow.kv4_attention import pack_cmd_word
        lsh = int(job.get("lsh", max(8, config.min_lsh)))
        return {**job, "lsh": lsh, "cmd_word": int(pack_cmd_word(
            int(job["t"]), [1] * config.heads, [lsh] * config.heads, config))}
    return job          # an unknown kind: the testbench fails that case alone


def run_cases(config: KV4Config, jobs: list[dict], *, build: runner.Build | None = None,
              seed: int = 1, sim: str | None = None) -> dict:
    """One simulation of `jobs` (case_job dicts or {"kind": "bad_t", "t": T}); each
    decode case's result gets `out`, its received out values [heads, D]."""
    from quantflow.kv4_attention import unpack_out_words
    res = run_case_list(build or unit_build(config, sim=sim), STREAM_TB, config,
                        [tb_job(j, config) for j in jobs], seed)
    for r in res.get("cases") or []:
        # the testbench returns the raw words: unpacking them needs quantflow (torch)
        words = r.pop("out_words", None)
        if words is not None:
            r["out"] = unpack_out_words(words, config).tolist() if words else []
    return res


def cosines(case: KV4Case, out_values: Sequence[int], data_dir: Path) -> dict:
    """Output cosine of the hardware's values vs float attention on the original
    K/V, and of the float-domain KV4 scheme (dequantized K/V; float q, and the
    same INT8 q the hardware reads)."""
    import numpy as np
    import torch

    from golden.kv4_attention import (cosine, effective_query, float_attention,
                                      quantize_query, scheme_kv)
    from quantflow.kv4_attention import load_kv4_cache
    arr = np.load(data_dir / "case.npz")
    q, k, v = (torch.from_numpy(arr[n]) for n in ("q", "k", "v"))
    hw = torch.tensor(out_values, dtype=torch.float64) * 2.0 ** -int(arr["frac_out"])
    ref = float_attention(q, k, v)
    cache = load_kv4_cache(data_dir, case.config).cache
    kd, vd = scheme_kv(cache, case.T, case.config)     # 4-bit, the recent tokens at 8 bits
    kv4 = float_attention(q, kd, vd)
    q8, s_q = quantize_query(q)
    kv4q = float_attention(q8.double() * s_q.unsqueeze(-1), kd, vd)
    # the float query the K side really multiplies (rotated, power-of-two requantized)
    hwq = float_attention(effective_query(q8, s_q, case.config), kd, vd)
    return {"cosine": round(cosine(hw, ref), 6), "cosine_float_kv4": round(cosine(kv4, ref), 6),
            "cosine_float_kv4_q8": round(cosine(kv4q, ref), 6),
            "cosine_hw_vs_float_kv4_q8": round(cosine(hw, kv4q), 6),
            "cosine_hw_vs_float_scheme": round(cosine(hw, hwq), 6)}


def to_record(case: KV4Case, r: dict, *, simulator: str | None = None,
              data_root: Path | None = None) -> dict:
    """The make-sim record of one decode case: pass/fail, cycles against the cycle model,
    cosines."""
    from hdl.kv4_attention import cycle_model, k_beats
    from quantflow.kv4_attention import kv_bytes_per_token
    c = case.config
    model = cycle_model(c, case.T)
    extra = {"path": case.path, "case": case.name,
             "source": case.source, "T": case.T, "simulator": simulator,
             "model_cycles_ideal": model, "append_cycles": r.get("append_cycles"),
             "lanes_busy": round(k_beats(c, case.T) / r["cycles"], 4) if r.get("cycles") else 0.0,
             "p_idle": case.p_idle, "p_stall": case.p_stall,
             "kv_bytes_per_token": kv_bytes_per_token(c), "errors": r.get("errors", [])}
    if case.source == "real":
        from quantflow.capture_attention import load_fixture
        meta = load_fixture(FIXTURE)["meta"]
        extra["model"] = REAL_MODEL
        extra["real"] = {"model": meta["model_description"], "layer": meta["layer"],
                         "text": meta["text"], "kv_head": case.kv_head, "query_position": case.T - 1}
    if r.get("out") and r.get("passed"):
        extra.update(cosines(case, r["out"], Path(data_root or DATA_ROOT) / case.name))
    else:
        extra["cosine"] = None
    if case.ideal:
        extra["expected_cycles"] = model
    # the KV head tells the real layer's records apart (report.json keys on `test`)
    head = f"_kvh{case.kv_head}" if case.source == "real" else ""
    return make_record(
        block="kv4_attention", test=f"{extra['path']} {case.source} T{case.T}{head}",
        config=c.as_dict(), passed=bool(r.get("passed")),
        mismatches=int(r.get("mismatches", 0)), vectors=int(r.get("vectors", 0)),
        cycles=int(r.get("cycles", 0)), macs=case.macs,
        peak_macs_per_cycle=c.peak_macs_per_cycle, sim_seconds=float(r.get("sim_seconds", 0.0)),
        sim_cycles=int(r.get("sim_cycles", 0)), **extra)


#: make sim's hardware: SmolLM2's GQA group (head_dim 64, 3 query heads) and head_dim 128.
PLAN_CONFIGS = (KV4Config(head_dim=64, lanes=16, max_t=4096, heads=3),
                KV4Config(head_dim=128, lanes=16, max_t=4096, heads=1))


def default_plan() -> list[KV4Case]:
    """Random T from 1 to max_t (ideal and with back-pressure) on both configs,
    the real SmolLM2 layer (all three KV heads) on the GQA config; the full-cache
    case also appends one token too many."""
    a, b = PLAN_CONFIGS
    plan = []
    for cfg, seed in ((a, 11), (b, 21)):
        plan += [KV4Case(config=cfg, T=1, seed=seed),
                 KV4Case(config=cfg, T=37, seed=seed + 1, p_idle=0.2, p_stall=0.3,
                         crafted=True, busy_cmd=True),
                 KV4Case(config=cfg, T=512, seed=seed + 2),
                 KV4Case(config=cfg, T=1000, seed=seed + 3, p_idle=0.1, p_stall=0.3),
                 KV4Case(config=cfg, T=cfg.max_t, seed=seed + 4, overflow_check=True)]
    plan += [KV4Case(config=a, source="real", T=512, kv_head=h) for h in range(3)]
    plan += [KV4Case(config=a, source="real", T=480, kv_head=1, p_idle=0.2, p_stall=0.3)]
    return plan


def after_overflow(config: KV4Config) -> KV4Case:
    """The short decode that follows a full-cache case in the same simulation: a
    cleared cache must append and decode normally after a dropped token (a token
    half taken by the quantizer would misalign every later one)."""
    return KV4Case(config=config, T=2, seed=99)


def _run_item(case: KV4Case, sim: str) -> dict:
    b = unit_build(case.config, sim=sim)
    jobs = [case_job(case)]
    if case.overflow_check:
        jobs.append(case_job(after_overflow(case.config)))
    if case.T == 1:  # bad inputs ride along with the shortest case
        jobs += [{"kind": "bad_t", "t": case.config.max_t + 1}, {"kind": "bad_t", "t": 0}]
        if case.config.min_lsh:
            jobs.append({"kind": "bad_t", "t": 1, "lsh": case.config.min_lsh - 1})
    res = run_cases(case.config, jobs, build=b, seed=case.seed)
    return with_build(to_record(case, first_case(res), simulator=res.get("sim")), b)


def sim_items(*, sim: str) -> list:
    """make sim's items of this block: its default plan, run on simulator `sim`."""
    return _plan_items(default_plan(), sim)


def config_items(config: KV4Config, *, sim: str) -> list:
    """`quattro sim --block kv4_attention --config ...`: the plan's random cases
    on `config` (T from 1 to max_t, ideal and with back-pressure, the full cache
    with one token too many)."""
    Ts = sorted({1, min(37, config.max_t), min(512, config.max_t)})
    cases = [KV4Case(config=config, T=T, seed=11 + i,
                     **({"p_idle": 0.2, "p_stall": 0.3} if i % 2 else {}))
             for i, T in enumerate(Ts)]
    cases.append(KV4Case(config=config, T=config.max_t, seed=19, overflow_check=True))
    return _plan_items(cases, sim)


def _plan_items(cases: list[KV4Case], sim: str) -> list:
    return [case_item("kv4_attention", case, lambda case=case: _run_item(case, sim),
                      macs=case.macs, peak=case.config.peak_macs_per_cycle)
            for case in cases]
