"""quattro hardware: Amaranth 0.5 components, one block per module.

  hdl.mixpe         MixPE cell / array / fast-path system, cycle model
  hdl.streams  shared stream plumbing (memory reader, address generator)
  hdl.generate      Verilog generation and the default design set
  python -m hdl     CLI (see hdl/__main__.py)

Imports golden.config only (never torch or cosim).
"""
