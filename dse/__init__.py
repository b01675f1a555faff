"""Design-space exploration of the accelerator core on a card (issue 16): a space of
core configurations and deployments (dse.space), each point evaluated for resources,
performance (fpga_boards.perf) and accuracy (quantflow eval reports) as a Ray task
(dse.sweep), with its Pareto fronts. `python -m dse sweep SPACE.yaml`; docs/system.md.

dse sits on top, beside cosim: it imports fpga_boards, quantflow, golden and quattro_fs;
nothing imports it.
"""
