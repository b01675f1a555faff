"""Helpers shared by the test modules (importable as `helpers`: pytest puts
tests/ on sys.path for the test files in it)."""
