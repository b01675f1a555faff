"""The core's Vitis RTL kernel (fpga_boards.kernel_core) as a simulated card
(cosim.kernel_core.SimCoreDevice: Verilator, cocotbext-axi AxiRam and
AxiLiteMaster, XRT's register protocol): a whole greedy generation of a small
random Llama through fpga_boards.host_core.generate, every start's LM-head
accumulators and the tokens equal to the integer model; the register map after
reset; refused runs with their error status; polling under back-pressure without
the status record; the comparison catching a corrupted weight.

One Verilator build of the kernel (about 2 minutes cold on 2 cores, cached after)
serves the module; one simulation serves every test but the polling one."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cosim.runner import SimulatorUnavailable
from fpga_boards.kernel_core import OFFSETS, PC_NONE

AP_IDLE = 0x4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from cosim import kernel_core as kc
    img, core, prog, mem, ids = kc.random_generation(tmp_path_factory.mktemp("kcore"))
    try:
        kc.kernel_build(core)
    except SimulatorUnavailable as e:
        pytest.skip(str(e))
    dev = kc.SimCoreDevice(core, wait="irq", p_stall=0.2, mem_bytes=len(mem)).start()
    # the register map before anything ran (a test's order must not matter)
    after_reset = {off: dev.reg_read(off) for off in (0x00, 0x04, 0x08, 0x0C)}
    after_reset.update({name: dev.reg_read(OFFSETS[name])
                        for name in ("error", "err_pc", "cycles", "runs", "state")})
    pattern = {OFFSETS["mem"]: 0x1234_5000, OFFSETS["mem"] + 4: 0x4, OFFSETS["prog"]: 0x77,
               OFFSETS["pos"]: 5, OFFSETS["tokens"]: 3, OFFSETS["status"]: 0xABCD_0040,
               OFFSETS["status"] + 4: 0x3}
    for off, v in pattern.items():
        dev.reg_write(off, v)
    readback = {off: dev.reg_read(off) for off in pattern}
    dev.reg_write(OFFSETS["error"], 0xFFFF_FFFF)        # read-only: ignored
    ro_after_write = dev.reg_read(OFFSETS["error"])
    dev.load(mem)
    yield SimpleNamespace(kc=kc, img=img, core=core, prog=prog, mem=mem, ids=ids, dev=dev,
                          after_reset=after_reset, pattern=pattern, readback=readback,
                          ro_after_write=ro_after_write)
    dev.close()


def test_register_map_after_reset_and_readback(env):
    r = env.after_reset
    assert r[0x00] == AP_IDLE                       # only ap_idle
    assert r[0x04] == r[0x08] == r[0x0C] == 0        # GIE, IER, ISR
    assert (r["error"], r["err_pc"], r["cycles"], r["runs"], r["state"]) == (0, 0, 0, 0, 0)
    assert OFFSETS == {"mem": 0x10, "prog": 0x18, "pos": 0x1C, "tokens": 0x20, "status": 0x28,
                       "error": 0x30, "err_pc": 0x34, "cycles": 0x38, "runs": 0x3C,
                       "state": 0x40}
    assert env.readback == env.pattern
    assert env.ro_after_write == 0


def test_generation_equals_integer_golden(env):
    """The host loop on the simulated card: a 10-token prompt in two prefill blocks
    (max_tokens 8), then greedy decode steps; every start's logits accumulators
    read back from the I/O region equal the integer model's, and so do the tokens."""
    before = env.dev.reg_read(OFFSETS["runs"])
    chk = env.kc.checked_generation(env.dev, env.img, env.prog, env.ids, 4)
    assert chk["mismatches"] == 0, chk["first_mismatch"]
    assert chk["tokens"] == chk["expected"] and len(chk["tokens"]) == 4
    assert len(set(chk["tokens"])) > 1               # not one token repeated
    runs = chk["result"].runs
    assert [(r.kind, r.pos, len(r.ids)) for r in runs] == \
        [("prefill", 0, 8), ("prefill", 8, 2), ("decode", 10, 1), ("decode", 11, 1),
         ("decode", 12, 1)]
    assert chk["acc_elements"] == (8 + 2 + 3) * env.prog.decoder.vocab
    for i, r in enumerate(runs):
        rep = r.report
        assert rep["error"] == 0 and rep["state"] == "DONE" and rep["cycles"] > 1000
        assert rep["runs"] == before + i + 1        # the registers' and record's count
    assert env.dev.reg_read(0x00) == AP_IDLE


def test_refused_runs_report_their_error(env):
    from fpga_boards.host_core import CoreDeviceError, generate
    from golden.core_config import OPCODES, decode, encode
    dev, prog = env.dev, env.prog
    base = prog.memory_map.program.base
    r = dev.run(base, 0, 0)
    assert (r["error_name"], r["err_pc"]) == ("tokens", 0)
    r = dev.run(base, 0, 2**31 - 1)                 # saturates, not truncated
    assert (r["error_name"], r["err_pc"]) == ("tokens", 0)
    r = dev.run(base, 1 << 24, 1)                   # beyond the 20-bit pos: refused
    assert r["error_name"] == "ctx" and decode(prog.words[r["err_pc"]]).op == "ROPE"
    assert prog.words[:r["err_pc"]] and all(
        decode(w).op != "ROPE" for w in prog.words[:r["err_pc"]])
    r = dev.run_registers(mem=dev.base + 64, prog=base, pos=0, tokens=1)
    assert (r["error_name"], r["err_pc"], r["cycles"]) == ("align", PC_NONE, 0)
    assert r["refused_by_kernel"]
    # a bad opcode in the program: the host loop raises with the error's name
    unknown = next(c for c in range(1, 256) if c not in OPCODES)
    first = env.mem[base:base + 64]
    dev.write(base, unknown.to_bytes(64, "little"))
    with pytest.raises(CoreDeviceError, match=r"error 'opcode' at instruction 0 \("):
        generate(dev, prog, env.ids, 1)
    dev.write(base, bytes(first))
    assert int.from_bytes(first, "little") == prog.words[0] != encode("HALT")
    # the core starts cleanly after every refusal
    golden = env.kc.golden_runs(env.img, env.ids[:8], 1, 8)
    dev.write(prog.memory_map.ids, np.asarray(env.ids[:8], "<i4").tobytes())
    r = dev.run(base, 0, 8)
    assert r["error"] == 0
    nxt = int(np.frombuffer(dev.read(prog.memory_map.next + 4 * 7, 4), "<i4")[0])
    assert nxt == golden[0]["next"]


def test_comparison_catches_a_corrupted_weight(env):
    """One LM-head weight code changed in device memory: the next checked
    generation names the first logit that differs."""
    from golden.core_config import decode
    dev, prog = env.dev, env.prog
    logits = next(decode(w) for w in prog.words if decode(w).op == "LOGITS")
    codes = logits["addr0"]
    old = env.mem[codes]
    dev.write(codes, bytes([old ^ 0x5]))
    try:
        chk = env.kc.checked_generation(dev, env.img, prog, env.ids, 1)
    finally:
        dev.write(codes, bytes([old]))
    assert chk["mismatches"] > 0
    assert "start 0 (prefill@0): logits acc[" in chk["first_mismatch"]
    assert ", 0] = " in chk["first_mismatch"]        # output 0's first code


def test_poll_under_backpressure_without_record(env):
    """Polling ap_done, 30 % random pauses on every AXI channel, no status record
    (status = 0): the first prefill block's accumulators equal the integer model's."""
    kc, prog, vocab = env.kc, env.prog, env.prog.decoder.vocab
    golden = kc.golden_runs(env.img, env.ids[:8], 1, 8)[0]
    with kc.SimCoreDevice(env.core, wait="poll", p_stall=0.3, seed=7, record=False,
                          poll=64, mem_bytes=len(env.mem)) as dev:
        dev.load(env.mem)
        dev.write(prog.memory_map.ids, np.asarray(env.ids[:8], "<i4").tobytes())
        r = dev.run(prog.memory_map.program.base, 0, 8)
        assert r["error"] == 0 and r["runs"] == 1
        acc = np.frombuffer(dev.read(prog.memory_map.logits, 4 * 8 * vocab), "<i4")
        assert (acc.reshape(8, vocab) == golden["acc"].numpy()).all()
        with pytest.raises(ValueError, match="beyond the"):
            dev.read(len(env.mem) - 4, 8)


def test_make_sim_plan(env):
    items = env.kc.sim_items(sim="verilator")
    assert [(i.block, i.path) for i in items] == [("kernel_core", "kernel")]
    assert items[0].config["p_stall"] > 0 and items[0].config["wait"] == "irq"
