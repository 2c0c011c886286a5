"""Numbers over seeds, as every table of a report shows them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single value."""
        return statistics.stdev(self.values) if self.n > 1 else None

    def text(self, full_n: int) -> str:
        out = f"{100 * self.mean:.1f}"
        if self.std is not None:
            out += f" ± {100 * self.std:.1f}"
        return out if self.n >= full_n else f"{out} (n={self.n})"


def percent(
    x: float | None, *, digits: int = 1, width: int = 5, suffix: str = "%", missing: str = "–"
) -> str:
    """A fraction as a percentage, as every summary and table prints one."""
    if x is None:
        return missing.rjust(width)
    return f"{100 * x:{width}.{digits}f}{suffix}"
