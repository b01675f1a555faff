"""quattro's numeric specification: one frozen configuration dataclass per block
(golden/<block>_config.py), the shared number formats (formats.py), validation
(validate.py), and the integer-exact PyTorch model of each block (<block>.py).

Import rules (enforced by tests/test_layering.py): golden imports only the
standard library, quattro_fs, torch and numpy; the configuration modules,
formats.py and validate.py import the standard library and each other only, so
that hdl reads a configuration without pulling in torch.
"""
