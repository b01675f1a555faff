"""cocotb testbenches. Each module is a cocotb test module run by cosim.runner.run()
with a JSON job (see cosim.runner.read_job) and writes a JSON result."""
