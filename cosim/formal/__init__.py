"""Formal proofs of quattro's RTL (`make formal`, docs/verification.md): the
stream interfaces and invariants of every block, proven with SymbiYosys
(`yowasp-sby`, engine smtbmc with the Yices solver from PyPI) by
k-induction, or checked by BMC to a stated depth where induction does not
close.

  monitors       the pieces of a harness: free stream sources under assumed
                 protocol, sinks whose protocol is asserted, taps that inject
                 port-level faults, the previous cycle's values, a block's
                 internal signals read by name
  harness        the Harness base class (property groups, faults, checks)
  mixpe, lut, sparse_dsp, pim, kv4_attention, sfu, core   one harness per block
                 (core: the AXI4 read master and the sequencer)
  checks         the table of proofs and fault demonstrations (all_checks), run_check
  sby            one sby task: RTLIL, the .sby file, the result and solver time
  python -m cosim.formal   runs them all, prints the table, writes
                 build/formal/report.json

Every harness instantiates the unmodified block (a fault demonstration
subclasses it to break one thing, or injects the fault at a port).
"""
from .checks import Check, all_checks, formal_root, run_check, select
from .sby import solver_missing

__all__ = ["Check", "all_checks", "formal_root", "run_check", "select", "solver_missing"]
