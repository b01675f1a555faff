"""A design space: a YAML file naming the board, the model and a grid of deployment
and core settings; its points are every combination of the grid.

    name: small                 # results go to build/dse/<name>/
    board: u280
    model: llama2-7b            # fpga_boards.model_shapes name or a config.json path
    accuracy_model: smollm2     # whose `quantflow eval` reports give the perplexity
    objective: decode_tokens_per_s   # or aggregate_tokens_per_s
    prefill: false              # also price a prefill of the context (slower)
    fixed: {context: 1024, packed: true}
    grid:
      w_bits: [4, 2]
      rows: [1, 4]
      ports: [16, 32]

A point's keys (`fixed` and `grid` together):
  SystemConfig (golden.system_config): w_bits, group, sparsity, engine, context, prompt,
      batch, attention, packed, ports, kv_units, instances, clock_mhz
  CoreConfig (golden.core_config): rows, cols, max_tokens, buffers, beat_bytes,
      mem_latency; lanes (the SFU's and the KV4 unit's, which the RTL ties)
  kv: "hadamard" (the KV4 unit's Hadamard + 8-bit window, as w4a8kv4-g64) or "plain"
      (as w4a8kv4-g64-plain)
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from golden.validate import check_bool, check_choice

__all__ = ["SYSTEM_KEYS", "CORE_KEYS", "POINT_KEYS", "OBJECTIVES", "DSEError", "Space",
           "load_space", "point_id"]

SYSTEM_KEYS = ("w_bits", "group", "sparsity", "engine", "context", "prompt", "batch",
               "attention", "packed", "ports", "kv_units", "instances", "clock_mhz")
CORE_KEYS = ("rows", "cols", "max_tokens", "buffers", "beat_bytes", "mem_latency", "lanes")
POINT_KEYS = SYSTEM_KEYS + CORE_KEYS + ("kv",)
OBJECTIVES = ("decode_tokens_per_s", "aggregate_tokens_per_s")
KV_FLAVOURS = ("hadamard", "plain")


class DSEError(ValueError):
    """A space file or sweep a user can fix (one message: what, why, the fix)."""


@dataclass(frozen=True)
class Space:
    """A design space from its YAML file: board, models, objective, the fixed settings
    and the grid to sweep."""
    name: str
    board: str
    model: str
    accuracy_model: str
    objective: str
    prefill: bool
    fixed: tuple          # ((key, value), ...)
    grid: tuple           # ((key, (values...)), ...)
    path: str = ""

    def __post_init__(self):
        for key in ("name", "board", "model", "accuracy_model"):
            v = getattr(self, key)
            if not isinstance(v, str) or not v:
                raise DSEError(f"space {key} must be a non-empty string, got {v!r}")
        if "/" in self.name or self.name.startswith("."):
            raise DSEError(f"space name {self.name!r} names a folder under build/dse/; use "
                           f"letters, digits, '-' and '_'")
        try:
            check_choice("objective", self.objective, OBJECTIVES)
            check_bool("prefill", self.prefill)
        except (TypeError, ValueError) as e:
            raise DSEError(f"space {self.path or self.name}: {e}") from None
        keys = [k for k, _ in self.fixed] + [k for k, _ in self.grid]
        bad = sorted(set(keys) - set(POINT_KEYS))
        if bad:
            raise DSEError(f"space {self.path or self.name}: unknown key(s) {bad}; a point "
                           f"takes {', '.join(POINT_KEYS)}")
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise DSEError(f"space {self.path or self.name}: {dup} both fixed and swept; "
                           f"keep each in one of `fixed` and `grid`")
        for k, vals in self.grid:
            if not vals:
                raise DSEError(f"space {self.path or self.name}: grid {k!r} has no values; "
                               f"give a list of at least one")

    def points(self) -> list[dict]:
        """Every combination of the grid, with the fixed settings."""
        keys = [k for k, _ in self.grid]
        return [{**dict(self.fixed), **dict(zip(keys, combo))}
                for combo in itertools.product(*(v for _, v in self.grid))]

    def settings(self) -> dict:
        """What every point's evaluation depends on besides the point itself."""
        return {"board": self.board, "model": self.model,
                "accuracy_model": self.accuracy_model, "prefill": self.prefill}

    def as_dict(self) -> dict:
        """The space as a plain dict, as its YAML file states it."""
        return {"name": self.name, **self.settings(), "objective": self.objective,
                "fixed": dict(self.fixed), "grid": {k: list(v) for k, v in self.grid},
                "path": self.path}


def point_id(space: Space, point: dict) -> str:
    """A point's key in the results: its settings and the space's, hashed (a changed
    space gives new keys, so a resumed sweep never reuses a stale row)."""
    blob = json.dumps({"space": space.settings(), "point": point}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(v, where: str):
    if isinstance(v, (str, int, float, bool)):
        return v
    raise DSEError(f"{where}: values are strings, numbers or booleans, got {v!r}")


def load_space(path: Path | str) -> Space:
    """The Space of a YAML file (DSEError naming the problem)."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise DSEError(f"space file {p} does not exist; see dse/spaces/small.yaml")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DSEError(f"{p} is not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DSEError(f"{p}: a space is a YAML mapping (name, board, model, fixed, grid)")
    known = {"name", "board", "model", "accuracy_model", "objective", "prefill", "fixed",
             "grid"}
    bad = sorted(set(doc) - known)
    if bad:
        raise DSEError(f"{p}: unknown top-level key(s) {bad}; a space has {sorted(known)}")
    fixed, grid = doc.get("fixed") or {}, doc.get("grid") or {}
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise DSEError(f"{p}: `fixed` and `grid` are mappings of point keys")
    g = []
    for k, v in grid.items():
        vals = v if isinstance(v, list) else [v]
        g.append((k, tuple(_plain(x, f"{p}: grid {k}") for x in vals)))
    return Space(name=str(doc.get("name") or p.stem), board=doc.get("board", "u280"),
                 model=str(doc.get("model", "llama2-7b")),
                 accuracy_model=str(doc.get("accuracy_model", "smollm2")),
                 objective=doc.get("objective", "decode_tokens_per_s"),
                 prefill=doc.get("prefill", False),
                 fixed=tuple((k, _plain(v, f"{p}: fixed {k}")) for k, v in fixed.items()),
                 grid=tuple(g), path=str(p))
