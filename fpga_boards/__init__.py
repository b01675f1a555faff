"""quattro on Alveo cards: boards, the XRT kernel shell and its AXI plumbing,
build trees, the fit check, host code (real XRT only), and Yosys resource
estimates (resources.py, the engine; resources_<block>.py, the tables).

Import rules (enforced by tests/test_layering.py): fpga_boards imports golden,
hdl, quantflow and quattro_fs, never cosim; cosim imports fpga_boards (the
simulated XRT device, cosim.xrt_sim, runs the kernel in cocotb).
"""
