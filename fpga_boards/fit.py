"""Resource fit of a kernel on an Alveo board (DESIGN §5).

    fit = kernel_fit(spec, board("u280"))     # Yosys synth_xilinx -family xcup, cached
    print(fit_table([fit])); fit.as_dict()    # table / JSON

`precheck(spec, board)` refuses, without synthesis, a configuration whose
known lower bounds (`min_resources`, e.g. MixPE's DSPs = 2 per DQ lane)
already exceed the device; `check(fit)` refuses one whose estimate does. Both
raise `FitError` naming the resource and by how much. The estimate is the
kernel's `resources()` (fpga_boards.kernel.BoardKernel): for MixPE Yosys's
(fpga_boards.resources), not Vivado's -- a rough figure that keeps some DSP
pipeline registers in fabric; for the core the analytic BRAM of its memories
plus the units Yosys measured (fpga_boards.kernel_core). The device totals
include what the Vitis shell occupies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .boards import Board

if TYPE_CHECKING:
    from .kernel import BoardKernel

__all__ = ["FitError", "Fit", "RESOURCE_NAMES", "precheck", "kernel_resources", "fit_of",
           "check", "kernel_fit", "fit_table"]

RESOURCE_NAMES = {"lut": "LUT", "ff": "FF", "dsp": "DSP48E2", "bram36": "BRAM36",
                  "uram": "URAM288"}


class FitError(ValueError):
    """The kernel does not fit the board."""


@dataclass(frozen=True, kw_only=True)
class Fit:
    """Resources a kernel uses against a board's capacity, and where the figures come from."""
    board: str
    kernel: str
    used: dict          # resource -> count
    capacity: dict      # resource -> device total
    source: str         # "yosys synth_xilinx -family xcup" or "lower bound"

    @property
    def utilisation(self) -> dict:
        """Fraction of the board's capacity used, per resource."""
        return {k: self.used.get(k, 0) / self.capacity[k] for k in self.capacity}

    @property
    def over(self) -> dict:
        """resource -> amount over capacity (only those that do not fit)."""
        return {k: self.used[k] - self.capacity[k] for k in self.capacity
                if self.used.get(k, 0) > self.capacity[k]}

    @property
    def fits(self) -> bool:
        """Whether every resource is within capacity."""
        return not self.over

    def as_dict(self) -> dict:
        """The fit as a plain dict (utilisation and overruns included)."""
        return {"board": self.board, "kernel": self.kernel, "source": self.source,
                "fits": self.fits, "used": dict(self.used), "capacity": dict(self.capacity),
                "utilisation": {k: round(v, 6) for k, v in self.utilisation.items()},
                "over": self.over}


def _refusal(fit: Fit) -> FitError:
    parts = [f"{RESOURCE_NAMES[k]} needs {fit.used[k]:,} but {fit.board.upper()} has "
             f"{fit.capacity[k]:,} ({n:,} over, {fit.used[k] / fit.capacity[k]:.0%})"
             for k, n in fit.over.items()]
    return FitError(f"kernel {fit.kernel!r} does not fit {fit.board.upper()} ({fit.source}): "
                    + "; ".join(parts) + ". Use a smaller configuration (fewer rows/cols, "
                    "a larger group for fewer DQ lanes) or a larger board")


def precheck(spec: BoardKernel, b: Board) -> Fit:
    """Instant refusal from the spec's lower bounds (no synthesis)."""
    cap = b.capacity.as_dict()
    used = {k: int(spec.min_resources.get(k, 0)) for k in cap}
    fit = Fit(board=b.name, kernel=spec.name, used=used, capacity=cap, source="lower bound")
    if not fit.fits:
        raise _refusal(fit)
    return fit


def kernel_resources(spec: BoardKernel) -> dict:
    """Yosys estimate of the whole RTL kernel (shell + block), cached by Verilog hash."""
    from .kernel import RtlKernel
    from .resources import estimate
    r = estimate(RtlKernel(spec), spec.name)
    return {"lut": r.lut + r.lutram, "ff": r.ff, "dsp": r.dsp, "bram36": r.bram36,
            "uram": r.uram}


def fit_of(spec_name: str, used: dict, b: Board,
           source: str = "yosys synth_xilinx -family xcup") -> Fit:
    """The Fit of a kernel that uses `used` on board `b`."""
    return Fit(board=b.name, kernel=spec_name, used=dict(used),
               capacity=b.capacity.as_dict(), source=source)


def check(fit: Fit) -> Fit:
    """`fit` itself when it fits; FitError naming every resource over capacity otherwise."""
    if not fit.fits:
        raise _refusal(fit)
    return fit


def kernel_fit(spec: BoardKernel, b: Board, *, used: dict | None = None) -> Fit:
    """Precheck, estimate (spec.resources(), unless `used` is given), check.
    Raises FitError."""
    precheck(spec, b)
    if used is not None:
        return check(fit_of(spec.name, used, b, source="given"))
    counts, source = spec.resources()
    return check(fit_of(spec.name, counts, b, source=source))


def fit_table(fits: Iterable[Fit]) -> str:
    """A Markdown table of fits: per board and kernel, each resource's use and share."""
    lines = ["| board | kernel | " + " | ".join(RESOURCE_NAMES.values()) + " |",
             "|---|---|" + "--:|" * len(RESOURCE_NAMES)]
    for f in fits:
        cells = [f"{f.used.get(k, 0):,} / {f.capacity[k]:,} ({f.utilisation[k]:.2%})"
                 for k in RESOURCE_NAMES]
        lines.append(f"| {f.board} | {f.kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
