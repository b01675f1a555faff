"""quattro co-simulation: cocotb testbenches (cosim/tb/), the Verilator/Icarus
runner, the per-block flows of `make sim`, the report, lint, bench, and the
simulated XRT device (xrt_sim.py).

Import rules (enforced by tests/test_layering.py): cosim sits on top and may
import every package (golden, hdl, quantflow, quattro_fs and fpga_boards);
nothing of quattro imports cosim.
"""
