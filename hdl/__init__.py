"""quattro hardware: Amaranth 0.5 components, one block per module.

  hdl.mixpe, hdl.lut, hdl.sparse_dsp, hdl.pim, hdl.kv4_attention   the blocks
  hdl.baselines     the hardware the blocks are compared with (BaselinePE, ...)
  hdl.rtl, hdl.streams, hdl.dq_lane   shared pieces
  hdl.generate      Verilog generation and the table of blocks (BLOCKS)
  python -m hdl     writes Verilog of any block (see hdl/__main__.py)

Import rules (enforced by tests/test_layering.py): hdl imports amaranth,
quattro_fs and golden's torch-free modules only (golden/*_config.py,
golden/formats.py, golden/validate.py); never torch, quantflow, cosim or
fpga_boards.
"""
