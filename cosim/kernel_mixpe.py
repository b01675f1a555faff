"""Co-simulation of the MixPE Vitis RTL kernel (fpga_boards.kernel) under
Verilator with cocotbext-axi, driven as XRT drives it (cosim/tb/kernel_axi.py).

    b = kernel_build(spec)                       # cached Verilator model of the kernel
    res = run_case(case, wait="irq", p_stall=0.3, runs=2)   # back-to-back runs
    rec = to_record(case, res)                   # cosim.report record, block "kernel_mixpe"

The data path is the host code's (fpga_boards.host.run_kernel on cosim.xrt_sim.SimDevice);
here several runs are put into one simulation (back to back) and the register
map is checked as well.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cosim import runner
from cosim.mixpe import MixPECase, prepare_data
from cosim.report import make_record

if TYPE_CHECKING:
    from fpga_boards.kernel import KernelSpec
    from golden.mixpe_config import MixPEConfig

__all__ = ["BLOCK", "kernel_build", "run_case", "to_record", "sim_items", "config_items",
           "default_cases"]

BLOCK = "kernel_mixpe"
TB = "cosim.tb.kernel_axi"


def kernel_build(spec: KernelSpec, *, sim: str | None = None,
                 waves: bool | None = None) -> runner.Build:
    """The Verilated Vitis RTL kernel of `spec` (cached by Verilog hash)."""
    from fpga_boards.kernel import RtlKernel
    from hdl.generate import verilog
    return runner.build(verilog(RtlKernel(spec), spec.name), spec.name, sim=sim, waves=waves)


def run_case(case: MixPECase, *, wait: str = "poll", p_stall: float = 0.0, runs: int = 1,
             checks: bool = True, seed: int | None = None, sim: str | None = None,
             corrupt: bool = False, offset: int = 0) -> dict:
    """Quantize the case with quantflow, load the buffers like the host code,
    run `runs` back-to-back kernel runs in one simulation (the result buffer is
    cleared before each is read back: each run must write it again), compare
    each run's result words with golden."""
    from cosim.xrt_sim import SimDevice
    from fpga_boards.host import mixpe_expected, mixpe_inputs, register_writes
    from fpga_boards.kernel import bytes_to_words, mixpe_kernel, words_to_bytes
    from quantflow import load_mixpe

    spec = mixpe_kernel(case.config)
    images = load_mixpe(prepare_data(case), case.config)
    inputs, scalars = mixpe_inputs(images)
    dev = SimDevice(spec, wait=wait, p_stall=p_stall, checks=checks,
                    seed=case.seed if seed is None else seed, sim=sim, offset=offset)
    bufs = []
    for i, b in enumerate(spec.buffers):
        if b.direction == "in":
            raw = words_to_bytes(inputs[b.name], b.word_bits)
            buf = dev.alloc(i, len(raw))
            buf.write(raw)
            buf.sync_to_device()
        else:
            # Fill the result buffer with a pattern: stale words would show up.
            buf = dev.alloc(i, b.words(scalars) * b.word_bytes)
            buf.write(bytes([0xA5]) * buf.nbytes)
            buf.sync_to_device()
        bufs.append(buf)
    regs = register_writes(spec, {**{b.name: buf.address for b, buf in zip(spec.buffers, bufs)},
                                  **scalars})
    res = dev.execute([regs] * runs)
    res["build_cached"] = dev.build().cached
    res["build_seconds"] = dev.build().build_seconds
    expected = mixpe_expected(images)
    if corrupt:
        expected[0] ^= 1  # proves the comparison can fail
    out_idx = [i for i, b in enumerate(spec.buffers) if b.direction == "out"][0]
    rb = spec.buffers[out_idx]
    mismatches = 0
    errors = list(res.get("errors", []))
    for r, run in enumerate(res["runs"]):
        got = bytes_to_words(bytes.fromhex(run["readback"][out_idx]), rb.word_bits)
        bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        mismatches += len(bad)
        if bad:
            errors.append(f"run {r}: {len(bad)} result word(s) differ from golden, first "
                          f"word {bad[0]}: got 0x{got[bad[0]]:x} expected 0x{expected[bad[0]]:x}")
    res.update(mismatches=mismatches, errors=errors, vectors=len(expected) * runs,
               passed=bool(res.get("passed")) and mismatches == 0, wait=wait, p_stall=p_stall,
               n_runs=runs, macs=case.macs * runs)
    return res


def to_record(case: MixPECase, res: dict) -> dict:
    """The make-sim record of one kernel case: pass/fail, mismatches, each run's cycles and
    the ideal cycle model's."""
    from hdl.mixpe import cycle_model
    cfg = case.config
    cycles = [r["cycles"] for r in res["runs"]]
    return make_record(
        block=BLOCK, test=f"kernel {res['wait']} p_stall={res['p_stall']} x{res['n_runs']} "
                          f"{case.M}x{case.N}x{cfg.K}",
        config=cfg.as_dict(), passed=res["passed"], mismatches=res["mismatches"],
        vectors=res["vectors"], cycles=cycles[-1], macs=case.macs,
        peak_macs_per_cycle=cfg.peak_macs_per_cycle, sim_seconds=res.get("sim_seconds", 0.0),
        sim_cycles=res.get("sim_cycles"), path="kernel", case=case.name, seed=res.get("seed"),
        simulator=res.get("sim"), wait=res["wait"], p_stall=res["p_stall"],
        run_cycles=cycles, model_cycles_ideal=cycle_model(cfg, case.tiles),
        workload={"M": case.M, "N": case.N, "K": cfg.K, "tiles": case.tiles},
        errors=res.get("errors", []))


def default_cases() -> list[MixPECase]:
    """`make sim`'s kernel runs: the default W4A8 GEMV kernel at >= 100,000 MACs."""
    from golden.mixpe_config import MixPEConfig
    cfg = MixPEConfig(bits=4, group=64, rows=1, cols=8, K=1024)
    return [MixPECase(config=cfg, m_tiles=1, n_tiles=16, seed=11)]


def sim_items(*, sim: str) -> list:
    """make sim's items of the MixPE kernel: each default case with an interrupt wait on ideal
    memory and with polling under back-pressure; run on `sim`."""
    return _plan_items(default_cases(), sim)


def config_items(config: MixPEConfig, *, sim: str) -> list:
    """`quattro sim --block kernel_mixpe --config ...`: the kernel of MixPE
    `config` on a seeded random workload (>= 100,000 MACs), both waits."""
    from cosim.cases import tiles_for
    m, n = tiles_for(config)
    return _plan_items([MixPECase(config=config, m_tiles=m, n_tiles=n, seed=11)], sim)


def _plan_items(cases: list[MixPECase], sim: str) -> list:
    from cosim.blocks import SimItem
    items = []
    for case in cases:
        # ideal memory + interrupt; random back-pressure + polling with buffers
        # straddling 4 KB boundaries
        for wait, p, off in (("irq", 0.0, 0), ("poll", 0.3, 4096 - 128)):
            def run(case=case, wait=wait, p=p, off=off):
                return to_record(case, run_case(case, wait=wait, p_stall=p, runs=2, sim=sim,
                                                offset=off))
            items.append(SimItem(block=BLOCK, name=f"{case.name}-{wait}", path="kernel",
                                 config=case.config.as_dict(), macs=case.macs * 2,
                                 peak_macs_per_cycle=case.config.peak_macs_per_cycle, run=run))
    return items
