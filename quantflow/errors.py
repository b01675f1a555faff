"""Errors a quantflow user can cause."""
from __future__ import annotations


class QuantflowError(ValueError):
    """A bad input or a damaged image directory. The message names the problem and
    the fix; it is a ValueError so callers may catch either."""
